//! Flower's content-addressed objects: how a message travels between a node and the SuperLink.
//!
//! A message is cut into objects — `Message` → `RecordDict` → records (`ArrayRecord`,
//! `ConfigRecord`, `MetricRecord`) → `Array` → `ArrayChunk` — each stored as
//! `"<Type> <child ids, comma-separated> <body length>\0<body>"` and named by the SHA-256 of
//! those bytes, so a receiver checks every object against its name. Bodies are what flwr writes:
//! protobuf for the message's metadata and for config and metric records, Python-style JSON for
//! the dictionaries of names to child ids, raw `.npy` slices of at most 5 MiB for array data.
//! Bodies are written byte for byte as flwr writes them, so an object's id here is the id flwr
//! computes for the same content (`core/tests/flower_protocol.rs` checks it against flwr).

use std::collections::{BTreeMap, HashMap, HashSet};

use prost::Message as _;
use sha2::{Digest, Sha256};

use super::proto;

/// The largest slice of an array's data in one `ArrayChunk` (flwr's default).
pub const MAX_CHUNK: usize = 5 << 20;

/// One record of a message's content.
#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    Arrays(Vec<(String, proto::Array)>),
    Metrics(proto::MetricRecord),
    Config(proto::ConfigRecord),
}

/// A message's content: named records, in order.
pub type RecordDict = Vec<(String, Record)>;

/// What a message carries: content, or the error that replaced it.
#[derive(Clone, Debug, PartialEq)]
pub enum Body {
    Content(RecordDict),
    Error(proto::Error),
}

/// A message cut into objects: its id (the root's), the tree the SuperLink is told about, and
/// every object's bytes by id.
pub struct Deflated {
    pub id: String,
    pub tree: proto::ObjectTree,
    pub objects: HashMap<String, Vec<u8>>,
}

/// The parts of an object: its type, the ids of its children and its body.
#[derive(Debug)]
pub struct Head<'a> {
    pub kind: &'a str,
    pub children: Vec<&'a str>,
    pub body: &'a [u8],
}

/// The lowercase hex SHA-256 of an object's bytes: its id.
pub fn object_id(content: &[u8]) -> String {
    Sha256::digest(content).iter().map(|b| format!("{b:02x}")).collect()
}

/// An object's bytes from its parts.
pub fn object(kind: &str, children: &[&str], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{kind} {} {}\0", children.join(","), body.len()).into_bytes();
    out.extend_from_slice(body);
    out
}

/// Splits an object into its parts, checking that the head is well formed and the length right.
pub fn head(content: &[u8]) -> Result<Head<'_>, String> {
    let split = content.iter().position(|&b| b == 0).ok_or("an object without a head")?;
    let text = std::str::from_utf8(&content[..split]).map_err(|_| "an object head that is not UTF-8")?;
    let mut parts = text.splitn(3, ' ');
    let (kind, children, length) = match (parts.next(), parts.next(), parts.next()) {
        (Some(k), Some(c), Some(l)) => (k, c, l),
        _ => return Err(format!("an object head '{}' without its three parts", truncate(text))),
    };
    let body = &content[split + 1..];
    if length.parse::<usize>().ok() != Some(body.len()) {
        return Err(format!("a {kind} object whose head says {length} bytes but has {}", body.len()));
    }
    let children = if children.is_empty() { Vec::new() } else { children.split(',').collect() };
    Ok(Head { kind, children, body })
}

fn truncate(text: &str) -> String {
    text.chars().take(80).collect()
}

/// Cuts a message into objects. `metadata.message_id` is ignored (the id is the Message
/// object's); the returned metadata has it set.
pub fn deflate(metadata: &proto::Metadata, body: &Body) -> (Deflated, proto::Metadata) {
    let mut objects = HashMap::new();
    let mut blank = metadata.clone();
    blank.message_id.clear();
    let (error, children) = match body {
        Body::Content(records) => (None, vec![deflate_records(records, &mut objects)]),
        Body::Error(e) => (Some(e.clone()), Vec::new()),
    };
    let envelope = proto::Message { metadata: Some(blank), content: None, error }.encode_to_vec();
    let ids: Vec<&str> = children.iter().map(|t| t.object_id.as_str()).collect();
    let content = object("Message", &ids, &envelope);
    let id = object_id(&content);
    objects.insert(id.clone(), content);
    let mut metadata = metadata.clone();
    metadata.message_id = id.clone();
    (Deflated { tree: proto::ObjectTree { object_id: id.clone(), children }, id, objects }, metadata)
}

fn deflate_records(records: &RecordDict, objects: &mut HashMap<String, Vec<u8>>) -> proto::ObjectTree {
    let mut refs = Vec::new();
    let mut children = Vec::new();
    for (name, record) in records {
        let tree = match record {
            Record::Arrays(arrays) => {
                let mut array_refs = Vec::new();
                let mut array_trees = Vec::new();
                for (array_name, array) in arrays {
                    let tree = deflate_array(array, objects);
                    array_refs.push((array_name.as_str(), tree.object_id.clone()));
                    array_trees.push(tree);
                }
                leaf_with("ArrayRecord", json_object(&array_refs), unique(array_trees), objects)
            }
            Record::Config(c) => leaf_with("ConfigRecord", c.encode_to_vec(), Vec::new(), objects),
            Record::Metrics(m) => leaf_with("MetricRecord", m.encode_to_vec(), Vec::new(), objects),
        };
        refs.push((name.as_str(), tree.object_id.clone()));
        children.push(tree);
    }
    leaf_with("RecordDict", json_object(&refs), unique(children), objects)
}

fn deflate_array(array: &proto::Array, objects: &mut HashMap<String, Vec<u8>>) -> proto::ObjectTree {
    let mut chunk_trees: Vec<proto::ObjectTree> = Vec::new();
    let mut indices = Vec::new();
    for slice in array.data.chunks(MAX_CHUNK) {
        let tree = leaf_with("ArrayChunk", slice.to_vec(), Vec::new(), objects);
        let index = match chunk_trees.iter().position(|t| t.object_id == tree.object_id) {
            Some(i) => i,
            None => {
                chunk_trees.push(tree);
                chunk_trees.len() - 1
            }
        };
        indices.push(index.to_string());
    }
    let shape: Vec<String> = array.shape.iter().map(|d| d.to_string()).collect();
    let body = format!(
        "{{\"dtype\": {}, \"shape\": [{}], \"stype\": {}, \"arraychunk_ids\": [{}]}}",
        json_string(&array.dtype),
        shape.join(", "),
        json_string(&array.stype),
        indices.join(", ")
    );
    leaf_with("Array", body.into_bytes(), chunk_trees, objects)
}

/// Stores an object whose children are `children` (already stored) and returns its tree.
fn leaf_with(
    kind: &str,
    body: Vec<u8>,
    children: Vec<proto::ObjectTree>,
    objects: &mut HashMap<String, Vec<u8>>,
) -> proto::ObjectTree {
    let ids: Vec<&str> = children.iter().map(|t| t.object_id.as_str()).collect();
    let content = object(kind, &ids, &body);
    let id = object_id(&content);
    objects.insert(id.clone(), content);
    proto::ObjectTree { object_id: id, children }
}

/// The trees of distinct children, in order of first appearance (a head names each child once).
fn unique(trees: Vec<proto::ObjectTree>) -> Vec<proto::ObjectTree> {
    let mut seen = HashSet::new();
    trees.into_iter().filter(|t| seen.insert(t.object_id.clone())).collect()
}

/// Every object id of `tree`, children before parents, each once (the order to fetch them in).
pub fn post_order(tree: &proto::ObjectTree) -> Vec<String> {
    fn walk(tree: &proto::ObjectTree, seen: &mut HashSet<String>, out: &mut Vec<String>) {
        for child in &tree.children {
            walk(child, seen, out);
        }
        if seen.insert(tree.object_id.clone()) {
            out.push(tree.object_id.clone());
        }
    }
    let mut out = Vec::new();
    walk(tree, &mut HashSet::new(), &mut out);
    out
}

/// Rebuilds a message's body from its objects (`objects` holds every object of its tree, each
/// already checked against its id).
pub fn inflate(id: &str, objects: &HashMap<String, Vec<u8>>) -> Result<(proto::Metadata, Body), String> {
    let message = expect(objects, id, "Message")?;
    let envelope = proto::Message::decode(message.body).map_err(|e| format!("the Message object: {e}"))?;
    let metadata = envelope.metadata.ok_or("a Message object without metadata")?;
    let body = match (envelope.error, message.children.as_slice()) {
        (Some(error), []) => Body::Error(error),
        (None, [records]) => Body::Content(inflate_records(records, objects)?),
        _ => return Err("a Message object with neither one content nor an error".into()),
    };
    Ok((metadata, body))
}

fn inflate_records(id: &str, objects: &HashMap<String, Vec<u8>>) -> Result<RecordDict, String> {
    let head = expect(objects, id, "RecordDict")?;
    let mut out = Vec::new();
    for (name, child) in json_refs(head.body, &head.children, "RecordDict")? {
        let record_head = head_of(objects, &child)?;
        let record = match record_head.kind {
            "ArrayRecord" => {
                let mut arrays = Vec::new();
                for (array_name, array_id) in
                    json_refs(record_head.body, &record_head.children, "ArrayRecord")?
                {
                    arrays.push((array_name, inflate_array(&array_id, objects)?));
                }
                Record::Arrays(arrays)
            }
            "ConfigRecord" => Record::Config(
                proto::ConfigRecord::decode(record_head.body)
                    .map_err(|e| format!("config record '{name}': {e}"))?,
            ),
            "MetricRecord" => Record::Metrics(
                proto::MetricRecord::decode(record_head.body)
                    .map_err(|e| format!("metric record '{name}': {e}"))?,
            ),
            other => return Err(format!("record '{name}' is a {other} object, not a record")),
        };
        out.push((name, record));
    }
    Ok(out)
}

fn inflate_array(id: &str, objects: &HashMap<String, Vec<u8>>) -> Result<proto::Array, String> {
    #[derive(serde::Deserialize)]
    struct Meta {
        dtype: String,
        shape: Vec<i32>,
        stype: String,
        arraychunk_ids: Vec<usize>,
    }
    let head = expect(objects, id, "Array")?;
    let meta: Meta =
        serde_json::from_slice(head.body).map_err(|e| format!("an Array object's description: {e}"))?;
    let mut data = Vec::new();
    for index in meta.arraychunk_ids {
        let chunk_id = head
            .children
            .get(index)
            .ok_or_else(|| format!("an Array names chunk {index} of {}", head.children.len()))?;
        data.extend_from_slice(expect(objects, chunk_id, "ArrayChunk")?.body);
    }
    Ok(proto::Array { dtype: meta.dtype, shape: meta.shape, stype: meta.stype, data })
}

fn head_of<'a>(objects: &'a HashMap<String, Vec<u8>>, id: &str) -> Result<Head<'a>, String> {
    head(objects.get(id).ok_or_else(|| format!("object {id} was not received"))?)
}

fn expect<'a>(objects: &'a HashMap<String, Vec<u8>>, id: &str, kind: &str) -> Result<Head<'a>, String> {
    let h = head_of(objects, id)?;
    if h.kind != kind {
        return Err(format!("object {id} is a {}, expected a {kind}", h.kind));
    }
    Ok(h)
}

/// A JSON object of names to child ids; every id must be one of the head's children.
fn json_refs(body: &[u8], children: &[&str], kind: &str) -> Result<Vec<(String, String)>, String> {
    let map: BTreeMap<String, String> =
        serde_json::from_slice(body).map_err(|e| format!("a {kind} object's references: {e}"))?;
    for id in map.values() {
        if !children.contains(&id.as_str()) {
            return Err(format!("a {kind} object refers to {id}, which its head does not name"));
        }
    }
    Ok(map.into_iter().collect())
}

/// `{"a": "x", "b": "y"}` as Python's `json.dumps` writes it.
fn json_object(pairs: &[(&str, String)]) -> Vec<u8> {
    let items: Vec<String> =
        pairs.iter().map(|(k, v)| format!("{}: {}", json_string(k), json_string(v))).collect();
    format!("{{{}}}", items.join(", ")).into_bytes()
}

/// A JSON string as `json.dumps` writes it (`ensure_ascii`: everything outside ' '..='~' escaped).
fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_written_as_python_writes_them() {
        assert_eq!(json_string("a\"b\\c\n"), "\"a\\\"b\\\\c\\n\"");
        assert_eq!(json_string("é\u{7f}😀"), "\"\\u00e9\\u007f\\ud83d\\ude00\"");
        assert_eq!(json_object(&[("w", "x".into()), ("v", "y".into())]), b"{\"w\": \"x\", \"v\": \"y\"}");
    }

    #[test]
    fn heads_are_checked() {
        let content = object("ArrayChunk", &[], b"ab\0c");
        let h = head(&content).expect("parses");
        assert_eq!((h.kind, h.children.len(), h.body), ("ArrayChunk", 0, &b"ab\0c"[..]));
        assert!(head(b"ArrayChunk  5\0ab").unwrap_err().contains("says 5 bytes but has 2"));
        assert!(head(b"no head").is_err());
        assert!(head(b"Array x\0").is_err());
    }

    #[test]
    fn a_message_survives_deflating_and_inflating() {
        let array = |n: usize| proto::Array {
            dtype: "uint8".into(),
            shape: vec![n as i32],
            stype: "numpy.ndarray".into(),
            data: (0..n).map(|i| (i % 7) as u8).collect(),
        };
        // A large array is chunked; equal arrays and equal chunks are stored once.
        let zeros = proto::Array { data: vec![0; 2 * MAX_CHUNK + 3], ..array(2 * MAX_CHUNK + 3) };
        let records: RecordDict = vec![
            (
                "arrays".into(),
                Record::Arrays(vec![("a".into(), array(5)), ("b".into(), array(5)), ("z".into(), zeros)]),
            ),
            ("config".into(), Record::Config(proto::ConfigRecord::default())),
        ];
        let metadata =
            proto::Metadata { run_id: 3, message_type: "train".into(), ttl: 10.0, ..Default::default() };
        let (deflated, stamped) = deflate(&metadata, &Body::Content(records.clone()));
        assert_eq!(stamped.message_id, deflated.id);
        let order = post_order(&deflated.tree);
        assert_eq!(order.last(), Some(&deflated.id));
        assert_eq!(order.len(), deflated.objects.len());
        for (id, content) in &deflated.objects {
            assert_eq!(&object_id(content), id);
        }
        let (back_metadata, body) = inflate(&deflated.id, &deflated.objects).expect("inflates");
        assert_eq!(back_metadata.run_id, 3);
        assert!(back_metadata.message_id.is_empty());
        let Body::Content(back) = body else { panic!("content expected") };
        // Names come back sorted (JSON objects are read into a map).
        let mut expected = records;
        if let Record::Arrays(a) = &mut expected[0].1 {
            a.sort_by(|x, y| x.0.cmp(&y.0));
        }
        assert_eq!(back, expected);

        let error = Body::Error(proto::Error { code: 2, reason: "boom".into() });
        let (deflated, _) = deflate(&metadata, &error);
        assert_eq!(deflated.objects.len(), 1);
        assert_eq!(inflate(&deflated.id, &deflated.objects).expect("inflates").1, error);
    }
}
