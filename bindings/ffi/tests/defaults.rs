//! The defaults Kotlin and Swift callers get (uniffi writes them into the generated code as
//! literals) are the runtime's: read from the committed Swift bindings and compared with
//! `TrainConfig::default()` and `GenerateOptions::default()`, so that a default changed in the
//! runtime fails here until bindings/ffi follows.

use std::collections::BTreeMap;

use serde_json::{json, Value};

/// `name: Type = value` pairs of the generated Swift initializer of `record`, by snake_case name.
fn swift_defaults(record: &str) -> BTreeMap<String, Value> {
    let swift = include_str!("../../../ios/Sources/AdaptkitFFI/AdaptkitFFI.swift");
    let start = swift.find(&format!("public struct {record}:")).expect("the record is in the bindings");
    let body = &swift[start..];
    let init = &body[body.find("public init(").unwrap()..];
    let init = &init[..init.find(") {").unwrap()];
    let mut out = BTreeMap::new();
    for part in init.split(", ") {
        let part = part.rsplit("*/").next().unwrap().trim().trim_start_matches("public init(");
        let Some((name, rest)) = part.split_once(": ") else { continue };
        let Some((_, value)) = rest.split_once(" = ") else { continue };
        let value = match value.trim() {
            "nil" => Value::Null,
            "[]" => json!([]),
            "true" => json!(true),
            "false" => json!(false),
            v if v.starts_with('"') => json!(v.trim_matches('"')),
            v => {
                let number = v.split_once('(').map_or(v, |(_, n)| n.trim_end_matches(')'));
                json!(number.parse::<f64>().unwrap_or_else(|_| panic!("{name} = {v}")))
            }
        };
        let snake: String = name
            .chars()
            .flat_map(|c| if c.is_ascii_uppercase() { vec!['_', c.to_ascii_lowercase()] } else { vec![c] })
            .collect();
        out.insert(snake, value);
    }
    out
}

/// Numbers as f64 (so that 0.1f32 and 0.1 compare as the bindings print them).
fn normalized(value: Value) -> Value {
    match value {
        Value::Number(n) => json!((n.as_f64().unwrap() as f32).to_string()),
        other => other,
    }
}

fn assert_same(record: &str, runtime: BTreeMap<String, Value>) {
    let bindings = swift_defaults(record);
    for (field, value) in &bindings {
        let expected = runtime.get(field).cloned().unwrap_or(Value::Null);
        assert_eq!(normalized(value.clone()), normalized(expected), "{record}.{field}");
    }
    assert!(bindings.len() >= runtime.len(), "{record}: fields without a default in the bindings");
}

#[test]
fn train_config_defaults_are_the_runtimes() {
    let Value::Object(mut runtime) = serde_json::to_value(adaptkit::runtime::TrainConfig::default()).unwrap()
    else {
        unreachable!()
    };
    let Some(Value::Object(options)) = runtime.remove("options") else { panic!("options") };
    runtime.extend(options);
    runtime.insert("memory_budget_mb".into(), Value::Null);
    assert_same("TrainConfig", runtime.into_iter().collect());
}

#[test]
fn generate_options_defaults_are_the_runtimes() {
    let o = adaptkit::runtime::GenerateOptions::default();
    let s = &o.sampling;
    let runtime = [
        ("max_tokens", json!(o.max_tokens)),
        ("temperature", json!(s.temperature)),
        ("top_k", json!(s.top_k)),
        ("top_p", json!(s.top_p)),
        ("min_p", json!(s.min_p)),
        ("repetition_penalty", json!(s.repetition_penalty)),
        ("repeat_last_n", json!(s.repeat_last_n)),
        ("seed", json!(s.seed)),
        ("stop_strings", json!(o.stop_strings)),
        ("stop_at_eos", json!(o.stop_at_eos)),
    ];
    assert_same("GenerateOptions", runtime.into_iter().map(|(k, v)| (k.to_string(), v)).collect());
}
