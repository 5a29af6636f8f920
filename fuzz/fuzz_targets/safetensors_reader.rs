//! Arbitrary bytes into the safetensors reader; whatever it accepts must hand out every tensor
//! with as many bytes as its dtype and shape say, and convert the float ones.
#![no_main]

use adaptkit::bytes::SharedBytes;
use adaptkit::format::safetensors::SafetensorsFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = SafetensorsFile::from_bytes(SharedBytes::from_vec(data.to_vec())) else {
        return;
    };
    for t in file.tensors() {
        let bytes = file.tensor_data(&t.name).expect("listed tensors exist");
        assert_eq!(bytes.len() * 8, t.n_elements() * t.dtype.bitsize(), "{}", t.name);
        if let Ok(values) = file.tensor_f32(&t.name) {
            assert_eq!(values.len(), t.n_elements());
        }
    }
});
