//! Arbitrary bytes into the GGUF reader. Whatever it accepts must be consistent: every tensor's
//! data lies in the file and has the size its type and shape say, and every lookup by name or
//! key finds the very entry the lists hold.
#![no_main]

use adaptkit::bytes::SharedBytes;
use adaptkit::format::gguf::GgufFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = GgufFile::from_bytes(SharedBytes::from_vec(data.to_vec())) else {
        return;
    };
    let mut checksum = 0u8;
    for info in file.tensors() {
        let bytes = file.tensor_data(info);
        assert_eq!(bytes.len() as u64, info.n_bytes(), "{}", info.name);
        checksum = bytes.iter().fold(checksum, |c, &b| c ^ b);
        // Identity, not equality: names are unique, so the lookup must land on this entry.
        assert!(file.tensor(&info.name).is_some_and(|found| std::ptr::eq(found, info)));
    }
    for (key, value) in file.metadata() {
        assert!(file.get(key).is_some_and(|found| std::ptr::eq(found, value)));
    }
    std::hint::black_box(checksum);
});
