//! adaptkit's Fleet protocol judged by Flower's own code (tests/flower/flwr_check.py, run with
//! the pinned flwr from scripts/flower-venv.sh): the objects adaptkit makes are byte for byte
//! the ones flwr makes for the same content (so their ids agree), flwr inflates them, a node's
//! signature verifies with flwr's verifier, and adaptkit reads what flwr's strategies send.
//! Without `ADAPTKIT_FLOWER_VENV` these skip, unless `ADAPTKIT_REQUIRE_FLOWER` is set
//! (scripts/test.sh), where they fail.
#![cfg(feature = "flower")]

use std::path::{Path, PathBuf};
use std::process::Command;

use adaptkit::flower::objects::{self, Body, Record};
use adaptkit::flower::{proto, records, NodeKey};
use adaptkit::patch::Values;

#[path = "common/real_model.rs"]
mod shared_model;

/// The venv's python.
fn flower_python() -> Option<PathBuf> {
    shared_model::flower_venv().map(|venv| venv.join("bin/python"))
}

fn check_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/flower/flwr_check.py")
}

fn run(python: &Path, verb: &str, dir: &Path) {
    let out = Command::new(python).arg(check_script()).arg(verb).arg(dir).output().expect("python runs");
    assert!(
        out.status.success(),
        "flwr_check.py {verb} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprint!("{}", String::from_utf8_lossy(&out.stdout));
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("adaptkit-flower-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn config_item(key: &str, value: proto::config_record_value::Value) -> proto::config_record::Item {
    proto::config_record::Item {
        key: key.into(),
        value: Some(proto::ConfigRecordValue { value: Some(value) }),
    }
}

#[test]
fn flwr_reads_our_objects_and_verifies_our_signature() {
    let Some(python) = flower_python() else { return };
    use proto::config_record_value::Value as V;
    let dir = temp_dir("ours");
    // A tensor over 5 MiB (two chunks), one repeated (stored once), and odd names.
    let big: Vec<f32> = (0..1_400_000).map(|i| (i % 1000) as f32 * 0.001 - 0.5).collect();
    let tensors = vec![
        Values {
            name: "layers.0.q_proj.lora_A.weight".into(),
            shape: vec![2, 3],
            values: vec![1.0, -2.0, 0.5, 0.0, 3.25, -0.125],
        },
        Values { name: "layers.0.q_proj.lora_B.weight".into(), shape: vec![3, 2], values: vec![0.0; 6] },
        Values { name: "same\u{e9}\"name".into(), shape: vec![3, 2], values: vec![0.0; 6] },
        Values { name: "big".into(), shape: vec![2, 700_000], values: big },
    ];
    let config = proto::ConfigRecord {
        items: vec![
            config_item("base", V::String("abc".into())),
            config_item("steps", V::Sint64(-3)),
            config_item("lr", V::Double(0.005)),
            config_item("flag", V::Bool(false)),
        ],
    };
    let content = vec![
        ("arrays".to_string(), records::arrays(&tensors)),
        ("config".to_string(), Record::Config(config)),
        (
            "metrics".to_string(),
            records::metrics(&[
                ("num-examples", records::Metric::Int(7)),
                ("loss", records::Metric::Float(0.5)),
            ]),
        ),
    ];
    let metadata = proto::Metadata {
        run_id: 123,
        src_node_id: 456,
        dst_node_id: 1,
        reply_to_message_id: "0".repeat(64),
        ttl: 3600.0,
        message_type: "train".into(),
        created_at: 1_750_000_001.0,
        dst_task_id: Some(7),
        ..Default::default()
    };
    let (deflated, stamped) = objects::deflate(&metadata, &Body::Content(content));
    assert_eq!(stamped.message_id, deflated.id);
    for (id, bytes) in &deflated.objects {
        std::fs::write(dir.join(id), bytes).expect("object written");
    }
    std::fs::write(dir.join("root.txt"), &deflated.id).expect("root");
    let expected = serde_json::json!({
        "arrays": tensors.iter().map(|t| (t.name.clone(), serde_json::json!(t.values))).collect::<serde_json::Map<_, _>>(),
        "config": {"base": "abc", "steps": -3, "lr": 0.005, "flag": false},
        "message_type": "train",
    });
    std::fs::write(dir.join("expected.json"), expected.to_string()).expect("expected");
    let key = NodeKey::generate().expect("a key");
    let signed = key.sign_now();
    let headers = serde_json::json!({
        "flwr-public-key": signed.public_key, "flwr-timestamp": signed.timestamp, "flwr-signature": signed.signature,
    });
    std::fs::write(dir.join("headers.json"), headers.to_string()).expect("headers");
    run(&python, "check", &dir);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn we_read_what_flwr_strategies_send() {
    let Some(python) = flower_python() else { return };
    let dir = temp_dir("theirs");
    run(&python, "make", &dir);
    let root = std::fs::read_to_string(dir.join("root.txt")).expect("root");
    let mut contents = std::collections::HashMap::new();
    for entry in std::fs::read_dir(&dir).expect("dir").flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.len() == 64 {
            let bytes = std::fs::read(entry.path()).expect("object");
            assert_eq!(objects::object_id(&bytes), name, "flwr's id is the SHA-256 of its bytes");
            contents.insert(name, bytes);
        }
    }
    let (metadata, body) = objects::inflate(root.trim(), &contents).expect("inflates");
    assert_eq!((metadata.message_type.as_str(), metadata.dst_node_id), ("train", 42));
    let Body::Content(content) = body else { panic!("content expected") };
    let instruction = records::read_instruction(&content).expect("an adaptkit instruction");
    assert_eq!((instruction.steps, instruction.round, instruction.lr), (Some(3), Some(2), Some(0.01)));
    assert_eq!(instruction.adapter_config["r"], 4);
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("expected.json")).expect("expected")).expect("json");
    for t in &instruction.tensors {
        let [shape, sum] =
            expected["arrays"][&t.name].as_array().expect("named").clone().try_into().expect("pair");
        let shape: Vec<usize> = serde_json::from_value(shape).expect("shape");
        assert_eq!(t.shape, shape, "{}", t.name);
        let ours: f64 = t.values.iter().map(|&v| f64::from(v)).sum();
        assert!((ours - sum.as_f64().expect("sum")).abs() < 1e-2, "{}: {ours} vs {sum}", t.name);
    }
    assert_eq!(instruction.tensors.len(), 3);
    let _ = std::fs::remove_dir_all(dir);
}
