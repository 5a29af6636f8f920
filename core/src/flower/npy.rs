//! NumPy's `.npy` bytes, the form Flower's arrays travel in (`stype = "numpy.ndarray"`): written
//! as `np.save` writes them (format 1.0, little-endian, C order), read in the forms a Python
//! sender produces for adapter tensors (f32, f16, f64; u8 for coded updates).

/// An array read from `.npy`: its shape and values (floats widened to f32).
#[derive(Clone, Debug, PartialEq)]
pub struct NdArray {
    pub shape: Vec<usize>,
    pub values: Values,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Values {
    F32(Vec<f32>),
    U8(Vec<u8>),
}

const MAGIC: &[u8] = b"\x93NUMPY";

/// `.npy` bytes of f32 values with `shape` (dtype `<f4`).
pub fn write_f32(shape: &[usize], values: &[f32]) -> Vec<u8> {
    let mut out = header("<f4", shape);
    out.reserve(values.len() * 4);
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// `.npy` bytes of bytes with `shape` (dtype `|u1`).
pub fn write_u8(shape: &[usize], values: &[u8]) -> Vec<u8> {
    let mut out = header("|u1", shape);
    out.extend_from_slice(values);
    out
}

/// The magic, version 1.0 and the header dictionary, padded with spaces and a newline so that
/// the data starts at a multiple of 64 bytes, as `np.save` does.
fn header(descr: &str, shape: &[usize]) -> Vec<u8> {
    let dims = match shape {
        [d] => format!("({d},)"),
        _ => format!("({})", shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    };
    let mut dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {dims}, }}");
    let unpadded = MAGIC.len() + 4 + dict.len() + 1;
    dict.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    dict.push('\n');
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out
}

/// Reads `.npy` bytes (versions 1-3; `<f4`, `<f2`, `<f8`, `|u1`; C order).
pub fn read(bytes: &[u8]) -> Result<NdArray, String> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err("not .npy data (no \\x93NUMPY magic)".into());
    }
    let (length, start) = match bytes[6] {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        2 | 3 if bytes.len() >= 12 => {
            (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12)
        }
        v => return Err(format!(".npy format version {v} is not one this reads (1-3)")),
    };
    let dict = bytes
        .get(start..start + length)
        .and_then(|d| std::str::from_utf8(d).ok())
        .ok_or(".npy header cut short or not text")?;
    let data = &bytes[start + length..];
    let descr = quoted_value(dict, "descr").ok_or_else(|| format!(".npy header without a dtype: {dict}"))?;
    if dict_value(dict, "fortran_order").is_some_and(|v| v.starts_with("True")) {
        return Err(".npy in Fortran order (send C-ordered arrays)".into());
    }
    let shape = parse_shape(dict).ok_or_else(|| format!(".npy header without a readable shape: {dict}"))?;
    let count = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).ok_or(".npy shape overflows")?;
    let width = match descr {
        "<f4" => 4,
        "<f2" => 2,
        "<f8" => 8,
        "|u1" => 1,
        other => return Err(format!(".npy dtype '{other}' is not one adapters use (<f4, <f2, <f8, |u1)")),
    };
    if count.checked_mul(width) != Some(data.len()) {
        return Err(format!(
            ".npy data has {} bytes; shape {shape:?} of {descr} needs {}",
            data.len(),
            count * width
        ));
    }
    let values = match descr {
        "<f4" => {
            Values::F32(data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
        }
        "<f2" => Values::F32(
            data.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        ),
        "<f8" => Values::F32(
            data.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32).collect(),
        ),
        _ => Values::U8(data.to_vec()),
    };
    Ok(NdArray { shape, values })
}

/// The text after `'key':` in the header dictionary.
fn dict_value<'a>(dict: &'a str, key: &str) -> Option<&'a str> {
    let at = dict.find(&format!("'{key}'"))?;
    let rest = &dict[at + key.len() + 2..];
    Some(rest.trim_start().strip_prefix(':')?.trim_start())
}

fn quoted_value<'a>(dict: &'a str, key: &str) -> Option<&'a str> {
    let rest = dict_value(dict, key)?.strip_prefix('\'')?;
    Some(&rest[..rest.find('\'')?])
}

fn parse_shape(dict: &str) -> Option<Vec<usize>> {
    let rest = dict_value(dict, "shape")?.strip_prefix('(')?;
    let inside = &rest[..rest.find(')')?];
    inside.split(',').map(str::trim).filter(|d| !d.is_empty()).map(|d| d.parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_what_numpy_writes() {
        // np.save of np.array([1, 2, 3], np.float32): a 128-byte header, then the data.
        let bytes = write_f32(&[3], &[1.0, 2.0, 3.0]);
        assert_eq!(bytes.len(), 140);
        assert_eq!(&bytes[..10], b"\x93NUMPY\x01\x00\x76\x00");
        assert!(bytes[10..].starts_with(b"{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }    "));
        assert_eq!(bytes[127], b'\n');
        assert_eq!(
            read(&bytes).expect("reads"),
            NdArray { shape: vec![3], values: Values::F32(vec![1.0, 2.0, 3.0]) }
        );
        let matrix = write_u8(&[2, 2], &[1, 2, 3, 4]);
        assert!(String::from_utf8_lossy(&matrix).contains("'shape': (2, 2), }"));
        assert_eq!(read(&matrix).expect("reads").values, Values::U8(vec![1, 2, 3, 4]));
        assert_eq!(read(&write_f32(&[], &[5.0])).expect("a scalar").shape, Vec::<usize>::new());
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        let mut short = write_f32(&[3], &[1.0, 2.0, 3.0]);
        short.pop();
        assert!(read(&short).unwrap_err().contains("has 11 bytes"));
        assert!(read(b"not npy at all").is_err());
        let int64 = [header("<i8", &[1]), vec![0; 8]].concat();
        assert!(read(&int64).unwrap_err().contains("'<i8'"));
        let mut fortran = write_u8(&[1], &[0]);
        let at = fortran.windows(5).position(|w| w == b"False").expect("the order");
        fortran[at..at + 5].copy_from_slice(b"True ");
        assert!(read(&fortran).unwrap_err().contains("Fortran"));
    }
}
