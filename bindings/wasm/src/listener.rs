//! A JS callback for a call's streamed events: each event goes to it as JSON text; a `true`
//! return cancels the call (a training run saves its checkpoint first); a throw fails the call
//! with the callback's exception.

use adaptkit::runtime::CancelToken;
use adaptkit::Error;
use serde_json::Value;
use wasm_bindgen::JsValue;

use crate::error::{callback_failed, to_js};

pub(crate) struct Listener {
    callback: Option<OneThread<js_sys::Function>>,
    failure: Option<OneThread<JsValue>>,
    pub(crate) cancel: CancelToken,
}

impl Listener {
    pub(crate) fn new(callback: Option<js_sys::Function>) -> Self {
        Self { callback: callback.map(OneThread), failure: None, cancel: CancelToken::new() }
    }

    pub(crate) fn send(&mut self, event: Value) {
        let Some(OneThread(callback)) = &self.callback else { return };
        if self.failure.is_some() {
            return;
        }
        match callback.call1(&JsValue::NULL, &JsValue::from_str(&event.to_string())) {
            Ok(answer) if answer.as_bool() == Some(true) => self.cancel.cancel(),
            Ok(_) => {}
            Err(thrown) => {
                self.failure = Some(OneThread(callback_failed(thrown)));
                self.cancel.cancel();
            }
        }
    }

    /// The call's result, or the callback's exception when it threw.
    pub(crate) fn finish<T>(self, result: Result<T, Error>) -> Result<T, JsValue> {
        match self.failure {
            Some(OneThread(thrown)) => Err(thrown),
            None => result.map_err(to_js),
        }
    }
}

/// A JS value the runtime's callbacks may hold: they must be `Send` for native threads, and
/// wasm32 without the `atomics` feature (how this crate is built) has one thread only.
pub(crate) struct OneThread<T>(pub(crate) T);

// SAFETY: built without `atomics`, wasm32 has a single thread, so the value never crosses one.
#[cfg(not(target_feature = "atomics"))]
unsafe impl<T> Send for OneThread<T> {}
