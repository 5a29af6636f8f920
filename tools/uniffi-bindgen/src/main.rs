//! `uniffi-bindgen generate --library libadaptkit_ffi.so --language kotlin|swift --out-dir DIR`
//! (scripts/ffi-bindings.sh runs it).
fn main() {
    uniffi::uniffi_bindgen_main()
}
