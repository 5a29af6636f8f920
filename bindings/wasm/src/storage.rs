//! Where checkpoints and saved adapters go in the page: blobs in memory under plain keys, which
//! the `web/` package copies to and from OPFS (so a run survives a reload).

use std::sync::Arc;

use adaptkit::runtime::{MemoryStore, Store};
use wasm_bindgen::prelude::*;

use crate::error::to_js;

#[wasm_bindgen]
#[derive(Default)]
pub struct Storage {
    pub(crate) store: Arc<MemoryStore>,
}

#[wasm_bindgen]
impl Storage {
    #[wasm_bindgen(constructor)]
    pub fn new() -> Storage {
        Storage::default()
    }

    /// Every key, in order.
    pub fn keys(&self) -> Vec<String> {
        self.store.keys()
    }

    pub fn read(&self, key: &str) -> Result<Option<Vec<u8>>, JsValue> {
        self.store.read(key).map_err(to_js)
    }

    pub fn write(&self, key: &str, bytes: &[u8]) -> Result<(), JsValue> {
        self.store.write(key, bytes).map_err(to_js)
    }

    pub fn remove(&self, key: &str) -> Result<(), JsValue> {
        self.store.remove(key).map_err(to_js)
    }
}
