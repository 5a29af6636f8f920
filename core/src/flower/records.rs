//! What adaptkit's messages carry in Flower's records, both ways.
//!
//! An instruction (`train` or `evaluate`) holds the global adapter as the ArrayRecord `arrays`
//! (PEFT tensor names, f32 `.npy`) and a ConfigRecord `config` with:
//! `adapter-config` (the PEFT `adapter_config.json`, as text), `base` (the fingerprint id of the
//! base model the adapter is for: a node on another base refuses), and optionally `steps`,
//! `lr`, `batch`, `seq` (training settings; the runtime's defaults otherwise) and `density`
//! (send the update ComPEFT-coded at this density). Flower adds `server-round`.
//!
//! A `train` reply holds the trained adapter as `arrays` — the same names, shapes and dtype,
//! so Flower's own FedAvg can average it — or, coded, three arrays per tensor
//! (`<name>#mask`: which entries are kept, bit-packed; `<name>#signs`: their signs, bit-packed;
//! `<name>#scale`: their one magnitude), which adaptkit's ServerApp decodes; and the
//! MetricRecord `metrics`: `num-examples` (training windows, Flower's weight), `train-loss`,
//! `eval-loss`, `eval-loss-before`, `tokens`, `steps`. An `evaluate` reply holds `metrics`:
//! `num-examples` (held-out tokens), `eval-loss`, `eval-ppl`.

use serde_json::Value;

use super::npy;
use super::objects::{Record, RecordDict};
use super::proto::{
    self, config_record_value::Value as ConfigValue, metric_record_value::Value as MetricValue,
};
use crate::patch::Values;

pub const ARRAYS: &str = "arrays";
pub const CONFIG: &str = "config";
pub const METRICS: &str = "metrics";
const NUMPY: &str = "numpy.ndarray";

/// A `train` or `evaluate` instruction, read.
#[derive(Clone, Debug)]
pub struct Instruction {
    pub round: Option<u64>,
    pub tensors: Vec<Values>,
    /// The PEFT `adapter_config.json`.
    pub adapter_config: Value,
    /// The fingerprint id of the base model the adapter is for.
    pub base: String,
    pub steps: Option<usize>,
    pub lr: Option<f32>,
    pub batch: Option<usize>,
    pub seq: Option<usize>,
    pub density: Option<f64>,
}

/// Reads an instruction's records; an error names the record or key that is missing or wrong.
pub fn read_instruction(records: &RecordDict) -> Result<Instruction, String> {
    let arrays = records
        .iter()
        .find_map(|(name, r)| match r {
            Record::Arrays(a) if name == ARRAYS => Some(a),
            _ => None,
        })
        .ok_or_else(|| format!("no ArrayRecord '{ARRAYS}' (the global adapter)"))?;
    let config = records
        .iter()
        .find_map(|(name, r)| match r {
            Record::Config(c) if name == CONFIG => Some(c),
            _ => None,
        })
        .ok_or_else(|| format!("no ConfigRecord '{CONFIG}'"))?;
    let tensors =
        arrays.iter().map(|(name, array)| read_array(name, array)).collect::<Result<Vec<_>, _>>()?;
    let config_text = string(config, "adapter-config")?.ok_or("the config has no 'adapter-config'")?;
    let adapter_config: Value = serde_json::from_str(&config_text)
        .map_err(|e| format!("config 'adapter-config' is not an adapter_config.json: {e}"))?;
    let positive = |key: &str| -> Result<Option<usize>, String> {
        match integer(config, key)? {
            Some(v) if v >= 1 => Ok(Some(v as usize)),
            Some(v) => Err(format!("config '{key}' is {v}; it must be at least 1")),
            None => Ok(None),
        }
    };
    let density = float(config, "density")?;
    if let Some(d) = density.filter(|d| !(*d > 0.0 && *d <= 1.0)) {
        return Err(format!("config 'density' is {d}; it must be in (0, 1]"));
    }
    let lr = float(config, "lr")?;
    if let Some(lr) = lr.filter(|lr| !(*lr > 0.0 && lr.is_finite())) {
        return Err(format!("config 'lr' is {lr}; it must be positive"));
    }
    Ok(Instruction {
        round: integer(config, "server-round")?.map(|r| r.max(0) as u64),
        tensors,
        adapter_config,
        base: string(config, "base")?.ok_or("the config has no 'base' (the base model's fingerprint id)")?,
        steps: positive("steps")?,
        lr: lr.map(|lr| lr as f32),
        batch: positive("batch")?,
        seq: positive("seq")?,
        density,
    })
}

fn read_array(name: &str, array: &proto::Array) -> Result<Values, String> {
    if array.stype != NUMPY {
        return Err(format!("array '{name}' is of stype '{}', not {NUMPY}", array.stype));
    }
    let nd = npy::read(&array.data).map_err(|e| format!("array '{name}': {e}"))?;
    let npy::Values::F32(values) = nd.values else {
        return Err(format!("array '{name}' holds bytes, not an adapter tensor"));
    };
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(format!("array '{name}' has a non-finite value at {i}"));
    }
    Ok(Values { name: name.to_string(), shape: nd.shape, values })
}

fn value<'a>(config: &'a proto::ConfigRecord, key: &str) -> Option<&'a ConfigValue> {
    config.items.iter().find(|i| i.key == key).and_then(|i| i.value.as_ref()?.value.as_ref())
}

fn kind(v: &ConfigValue) -> &'static str {
    match v {
        ConfigValue::Double(_) => "a float",
        ConfigValue::Sint64(_) | ConfigValue::Uint64(_) => "an integer",
        ConfigValue::Bool(_) => "a bool",
        ConfigValue::String(_) => "a string",
        ConfigValue::Bytes(_) => "bytes",
        _ => "a list",
    }
}

fn string(config: &proto::ConfigRecord, key: &str) -> Result<Option<String>, String> {
    match value(config, key) {
        None => Ok(None),
        Some(ConfigValue::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!("config '{key}' is {}, not a string", kind(other))),
    }
}

fn integer(config: &proto::ConfigRecord, key: &str) -> Result<Option<i64>, String> {
    match value(config, key) {
        None => Ok(None),
        Some(ConfigValue::Sint64(v)) => Ok(Some(*v)),
        Some(ConfigValue::Uint64(v)) => Ok(Some(i64::try_from(*v).unwrap_or(i64::MAX))),
        Some(other) => Err(format!("config '{key}' is {}, not an integer", kind(other))),
    }
}

fn float(config: &proto::ConfigRecord, key: &str) -> Result<Option<f64>, String> {
    match value(config, key) {
        None => Ok(None),
        Some(ConfigValue::Double(v)) => Ok(Some(*v)),
        Some(ConfigValue::Sint64(v)) => Ok(Some(*v as f64)),
        Some(ConfigValue::Uint64(v)) => Ok(Some(*v as f64)),
        Some(other) => Err(format!("config '{key}' is {}, not a number", kind(other))),
    }
}

/// Tensors as Flower arrays (f32 `.npy`), in order.
pub fn arrays(tensors: &[Values]) -> Record {
    Record::Arrays(
        tensors.iter().map(|t| (t.name.clone(), array(npy::write_f32(&t.shape, &t.values)))).collect(),
    )
}

fn array(data: Vec<u8>) -> proto::Array {
    let nd = npy::read(&data).expect("our own .npy");
    let dtype = if matches!(nd.values, npy::Values::U8(_)) { "uint8" } else { "float32" };
    proto::Array {
        dtype: dtype.into(),
        shape: nd.shape.iter().map(|&d| d as i32).collect(),
        stype: NUMPY.into(),
        data,
    }
}

/// ComPEFT-coded tensors (every entry 0 or ±one magnitude) as three small arrays each; a tensor
/// that is not ternary (one the codec keeps dense) is sent as it is.
pub fn coded_arrays(tensors: &[Values]) -> Record {
    let mut out = Vec::new();
    for t in tensors {
        let magnitudes: Vec<f32> = t.values.iter().map(|v| v.abs()).filter(|&m| m > 0.0).collect();
        let scale = magnitudes.first().copied().unwrap_or(0.0);
        if magnitudes.iter().any(|&m| m != scale) {
            out.push((t.name.clone(), array(npy::write_f32(&t.shape, &t.values))));
            continue;
        }
        let kept: Vec<bool> = t.values.iter().map(|&v| v != 0.0).collect();
        let signs: Vec<bool> = t.values.iter().filter(|&&v| v != 0.0).map(|&v| v > 0.0).collect();
        let mask = pack_bits(&kept);
        let sign_bits = pack_bits(&signs);
        out.push((format!("{}#mask", t.name), array(npy::write_u8(&[mask.len()], &mask))));
        out.push((format!("{}#signs", t.name), array(npy::write_u8(&[sign_bits.len()], &sign_bits))));
        let shape: Vec<f32> = t.shape.iter().map(|&d| d as f32).collect();
        let header = [&[scale][..], &shape].concat();
        out.push((format!("{}#scale", t.name), array(npy::write_f32(&[header.len()], &header))));
    }
    Record::Arrays(out)
}

/// Bits packed most significant first, as NumPy's `packbits` does (so `unpackbits` reads them).
fn pack_bits(bits: &[bool]) -> Vec<u8> {
    bits.chunks(8)
        .map(|c| c.iter().enumerate().fold(0u8, |b, (i, &on)| b | (u8::from(on) << (7 - i))))
        .collect()
}

/// A MetricRecord of numbers: integers as Flower's `sint64`, others as `double`.
pub fn metrics(pairs: &[(&str, Metric)]) -> Record {
    let items = pairs
        .iter()
        .map(|(key, m)| proto::metric_record::Item {
            key: key.to_string(),
            value: Some(proto::MetricRecordValue {
                value: Some(match *m {
                    Metric::Int(v) => MetricValue::Sint64(v),
                    Metric::Float(v) => MetricValue::Double(v),
                }),
            }),
        })
        .collect();
    Record::Metrics(proto::MetricRecord { items })
}

#[derive(Clone, Copy, Debug)]
pub enum Metric {
    Int(i64),
    Float(f64),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(items: Vec<(&str, ConfigValue)>) -> Record {
        Record::Config(proto::ConfigRecord {
            items: items
                .into_iter()
                .map(|(k, v)| proto::config_record::Item {
                    key: k.into(),
                    value: Some(proto::ConfigRecordValue { value: Some(v) }),
                })
                .collect(),
        })
    }

    fn instruction(extra: Vec<(&str, ConfigValue)>) -> RecordDict {
        let tensor = Values { name: "w".into(), shape: vec![2], values: vec![1.0, -2.0] };
        let mut items = vec![
            ("adapter-config", ConfigValue::String(r#"{"peft_type": "LORA", "r": 8}"#.into())),
            ("base", ConfigValue::String("abc".into())),
            ("server-round", ConfigValue::Sint64(3)),
        ];
        items.extend(extra);
        vec![(ARRAYS.into(), arrays(&[tensor])), (CONFIG.into(), config(items))]
    }

    #[test]
    fn instructions_are_read_and_wrong_fields_named() {
        let read = read_instruction(&instruction(vec![("steps", ConfigValue::Sint64(5))])).expect("reads");
        assert_eq!((read.round, read.steps, read.base.as_str()), (Some(3), Some(5), "abc"));
        assert_eq!(read.tensors[0].values, vec![1.0, -2.0]);
        for (extra, expected) in [
            (("steps", ConfigValue::String("5".into())), "config 'steps' is a string, not an integer"),
            (("steps", ConfigValue::Sint64(0)), "config 'steps' is 0"),
            (("density", ConfigValue::Double(1.5)), "config 'density' is 1.5"),
            (("lr", ConfigValue::Double(f64::NAN)), "config 'lr' is NaN"),
            (("base", ConfigValue::Bool(true)), "config 'base' is a bool"),
        ] {
            let mut records = instruction(vec![]);
            if let Record::Config(c) = &mut records[1].1 {
                c.items.retain(|i| i.key != extra.0);
            }
            let mut with = records.clone();
            if let Record::Config(c) = &mut with[1].1 {
                c.items.push(proto::config_record::Item {
                    key: extra.0.into(),
                    value: Some(proto::ConfigRecordValue { value: Some(extra.1) }),
                });
            }
            let error = read_instruction(&with).unwrap_err();
            assert!(error.contains(expected), "{error}");
        }
        let no_arrays: RecordDict = instruction(vec![]).into_iter().skip(1).collect();
        assert!(read_instruction(&no_arrays).unwrap_err().contains("no ArrayRecord 'arrays'"));
        let nan = Values { name: "w".into(), shape: vec![1], values: vec![f32::NAN] };
        let mut records = instruction(vec![]);
        records[0].1 = arrays(&[nan]);
        assert!(read_instruction(&records).unwrap_err().contains("array 'w' has a non-finite value"));
    }

    #[test]
    fn coded_tensors_pack_mask_signs_and_scale() {
        let ternary = Values {
            name: "t".into(),
            shape: vec![2, 5],
            values: vec![0.5, 0.0, -0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.5, 0.0],
        };
        let dense = Values { name: "d".into(), shape: vec![2], values: vec![0.1, 0.2] };
        let Record::Arrays(coded) = coded_arrays(&[ternary, dense]) else { panic!("arrays") };
        let names: Vec<&str> = coded.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["t#mask", "t#signs", "t#scale", "d"]);
        let bytes = |i: usize| match npy::read(&coded[i].1.data).expect("npy").values {
            npy::Values::U8(b) => b,
            npy::Values::F32(_) => panic!("bytes expected"),
        };
        assert_eq!(bytes(0), vec![0b1010_0000, 0b1000_0000]);
        assert_eq!(bytes(1), vec![0b1010_0000]);
        assert_eq!(npy::read(&coded[2].1.data).expect("npy").values, npy::Values::F32(vec![0.5, 2.0, 5.0]));
        assert_eq!(coded[1].1.dtype, "uint8");
    }
}
