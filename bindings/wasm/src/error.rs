//! Errors for JavaScript: an `Error` named after the core's [`ErrorKind`], with its message.

use adaptkit::{Error, ErrorKind};
use wasm_bindgen::prelude::wasm_bindgen;
use wasm_bindgen::{JsCast, JsValue};

/// A JS `Error` whose `name` is `KindError` (`InvalidArgumentError`, `ClosedError`, …).
pub(crate) fn js_error(kind: &str, message: &str) -> JsValue {
    let error = js_sys::Error::new(message);
    error.set_name(&format!("{kind}Error"));
    error.into()
}

pub(crate) fn to_js(error: Error) -> JsValue {
    js_error(error.kind().name(), &error.to_string())
}

/// An argument the runtime never saw: JSON that does not parse into its type.
pub(crate) fn bad_json(what: &str, error: serde_json::Error) -> JsValue {
    js_error(ErrorKind::InvalidArgument.name(), &format!("{what}: {error}"))
}

/// A named argument out of range.
pub(crate) fn invalid(field: &str, message: &str) -> JsValue {
    js_error(ErrorKind::InvalidArgument.name(), &format!("{field}: {message}"))
}

/// A call on a released model.
pub(crate) fn closed() -> JsValue {
    js_error("Closed", "the model is closed")
}

/// A JS callback that threw: its exception, named `Internal`.
pub(crate) fn callback_failed(thrown: JsValue) -> JsValue {
    let message =
        thrown.as_string().or_else(|| thrown.dyn_ref::<js_sys::Error>().map(|e| String::from(e.message())));
    js_error(
        "Internal",
        &format!("an event callback threw: {}", message.unwrap_or_else(|| format!("{thrown:?}"))),
    )
}

/// `value` as JSON text (reports are plain data: serialization cannot fail).
pub(crate) fn json(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_namespace = console, js_name = error)]
    fn console_error(message: &str);
}

/// A panic is a bug, and wasm aborts on it (the worker's call fails with `unreachable`): its
/// message and place go to the console first, where a bug report can quote them.
#[wasm_bindgen(start)]
fn report_panics() {
    std::panic::set_hook(Box::new(|info| console_error(&format!("adaptkit panicked: {info}"))));
}
