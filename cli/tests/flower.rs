//! adaptkit nodes in a real Flower federation (flwr 1.42 from scripts/flower-venv.sh, on
//! loopback): four nodes on shards of the journal train a LoRA over three rounds with adaptkit's
//! ServerApp, a node on another model refuses every message, the global adapter beats the base,
//! and it is the average this test computes itself from what the nodes sent; a node that misses
//! its heartbeats is dropped and comes back; a SuperLink that goes away and restarts is waited
//! for; a SuperLink that sends garbage gets one line and no update. Without
//! `ADAPTKIT_FLOWER_VENV` these skip, unless `ADAPTKIT_REQUIRE_FLOWER` is set (scripts/test.sh),
//! where they fail.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use adaptkit::federated::aggregate::{aggregate, Contribution};
use adaptkit::federated::Rule;
use adaptkit::format::peft::PeftDir;
use adaptkit::patch::Values;

#[path = "../../core/tests/common/real_model.rs"]
mod shared_model;
#[path = "../../core/tests/common/mod.rs"]
mod tiny;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("adaptkit-flower-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A tiny random model: a base no adapter of the real model fits.
fn tiny_model(dir: &Path) -> PathBuf {
    let path = dir.join("tiny.gguf");
    tiny::Weights::random(3).write_gguf(&path, adaptkit::quant::GgmlType::F32, None);
    path
}

fn tensors(dir: &Path) -> Vec<Values> {
    let peft = PeftDir::read(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    peft.tensors
        .tensors()
        .iter()
        .map(|t| Values {
            name: t.name.clone(),
            shape: t.shape.clone(),
            values: peft.tensors.tensor_f32(&t.name).unwrap(),
        })
        .collect()
}

/// `B·A` of every LoRA pair, by its prefix.
fn products(tensors: &[Values]) -> Vec<(String, Vec<f64>)> {
    let find = |name: &str| tensors.iter().find(|t| t.name == name).unwrap();
    let mut out = Vec::new();
    for a in tensors.iter().filter(|t| t.name.ends_with("lora_A.weight")) {
        let prefix = a.name.trim_end_matches("lora_A.weight");
        let b = find(&format!("{prefix}lora_B.weight"));
        let (r, cols, rows) = (a.shape[0], a.shape[1], b.shape[0]);
        let mut p = vec![0f64; rows * cols];
        for i in 0..rows {
            for k in 0..r {
                let bik = f64::from(b.values[i * r + k]);
                for j in 0..cols {
                    p[i * cols + j] += bik * f64::from(a.values[k * cols + j]);
                }
            }
        }
        out.push((prefix.to_string(), p));
    }
    out
}

#[test]
fn four_nodes_train_a_global_adapter_that_is_the_average_of_their_updates() {
    let (Some(venv), Some(model)) = (shared_model::flower_venv(), shared_model::real_model()) else { return };
    let work = scratch("federation");
    let other = tiny_model(&work);
    let out = Command::new(repo().join("scripts/demo-flower.sh"))
        .args(["4", "3"])
        .env("ADAPTKIT_FLOWER_VENV", &venv)
        .env("FLOWER_WORK", work.join("run"))
        .env("FLOWER_RECORD", "1")
        .env("FLOWER_EXTRA_NODE_MODEL", &other)
        .env("STEPS", "4")
        .env("ADAPTKIT_BIN", env!("CARGO_BIN_EXE_adaptkit"))
        .env("TARGETS", "q_proj,v_proj")
        .env("RANK", "4")
        .env("ADAPTKIT_TEST_MODEL", &model)
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprint!("{stdout}");
    assert!(out.status.success(), "the demo failed");
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let (base, global) =
        (report["base_perplexity"].as_f64().unwrap(), report["global_perplexity"].as_f64().unwrap());
    assert!(
        global < base * 0.95,
        "the global adapter's held-out perplexity {global} is not below the base's {base}"
    );

    // The last round's global adapter from the nodes' last updates, computed here.
    let run = work.join("run");
    let mut contributions = Vec::new();
    for node in 0..4 {
        let sent = run.join(format!("node-{node}/sent"));
        let run_dir = std::fs::read_dir(&sent).unwrap().next().unwrap().unwrap().path();
        let last = run_dir.join("round-3");
        let metrics: Vec<(String, f64)> =
            serde_json::from_slice(&std::fs::read(last.join("metrics.json")).unwrap()).unwrap();
        let weight = metrics.iter().find(|(k, _)| k == "num-examples").unwrap().1;
        contributions.push(Contribution { tensors: tensors(&last), weight });
    }
    let initial = tensors(&run.join("initial"));
    let (expected, _) = aggregate(Rule::FedAvg, &initial, &contributions).unwrap();
    let written = tensors(&run.join("global"));
    for ((site, want), (_, got)) in products(&expected).iter().zip(products(&written)) {
        let scale = want.iter().map(|v| v.abs()).fold(0.0, f64::max).max(1e-12);
        let worst = want.iter().zip(&got).map(|(w, g)| (w - g).abs()).fold(0.0, f64::max);
        assert!(
            worst <= 1e-4 * scale,
            "{site}: the ServerApp's B·A differs from this test's by {worst} (max {scale})"
        );
    }
    assert_eq!(products(&expected).len(), 60, "q and v of 30 layers");

    // The node on another model refused every message and sent nothing.
    let log = std::fs::read_to_string(run.join("node-other.log")).unwrap();
    assert!(log.contains("not training it"), "{log}");
    assert!(!log.contains("-> update"), "{log}");
    let rounds = std::fs::read_to_string(run.join("rounds.jsonl")).unwrap();
    assert!(rounds.contains("\"failures\": 1"), "the refusal reached the ServerApp: {rounds}");
    let _ = std::fs::remove_dir_all(work);
}

/// A SuperLink from the venv on `port`, its state in `dir`.
struct SuperLink {
    child: Child,
    venv: PathBuf,
    dir: PathBuf,
    port: u16,
}

impl SuperLink {
    fn start(venv: &Path, dir: &Path, port: u16) -> Self {
        use std::os::unix::process::CommandExt;
        let log =
            std::fs::File::create(dir.join(format!("superlink-{}.log", Instant::now().elapsed().as_nanos())))
                .unwrap();
        let child = Command::new(venv.join("bin/flower-superlink"))
            .args(["--insecure", "--host", "127.0.0.1", "--port", &port.to_string(), "--database"])
            .arg(dir.join("superlink.db"))
            .arg("--disable-runtime-dependency-installation")
            .env(
                "PATH",
                format!("{}:{}", venv.join("bin").display(), std::env::var("PATH").unwrap_or_default()),
            )
            .env("FLWR_HOME", dir.join("flwr-home"))
            .env("FLWR_TELEMETRY_ENABLED", "0")
            .env("FLWR_DISABLE_UPDATE_CHECK", "1")
            .process_group(0)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let link = Self { child, venv: venv.to_path_buf(), dir: dir.to_path_buf(), port };
        wait_for("the SuperLink to answer", Duration::from_secs(60), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        std::fs::create_dir_all(dir.join("flwr-home")).unwrap();
        std::fs::write(
            dir.join("flwr-home/config.toml"),
            format!("[superlink]\ndefault = \"local\"\n\n[superlink.local]\naddress = \"127.0.0.1:{port}\"\ninsecure = true\n"),
        )
        .unwrap();
        link
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The status (`online`, `offline`, …) of every node the SuperLink knows.
    fn nodes(&self) -> Vec<(u64, String)> {
        let out = Command::new(self.venv.join("bin/flwr"))
            .args(["supernode", "ls", "local", "--format", "json"])
            .env("FLWR_HOME", self.dir.join("flwr-home"))
            .output()
            .unwrap();
        let Ok(json) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else { return Vec::new() };
        json["nodes"]
            .as_array()
            .map(|nodes| {
                nodes
                    .iter()
                    .map(|n| {
                        // flwr writes the id as a string.
                        let id = n["node-id"].as_str().and_then(|s| s.parse().ok()).or(n["node-id"].as_u64());
                        (id.unwrap_or(0), n["status"].as_str().unwrap_or("").to_string())
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn stop(&mut self) {
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

impl Drop for SuperLink {
    fn drop(&mut self) {
        self.stop();
    }
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "waited {limit:?} for {what}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A process killed when the test ends, passed or not.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An `adaptkit flower-node` on the tiny model (nothing is trained: no run is started).
fn node(link: &SuperLink, work: &Path, heartbeat: &str) -> Process {
    let data = work.join("notes.txt");
    std::fs::write(&data, "a few words to train on\n\nand a second document\n").unwrap();
    Command::new(env!("CARGO_BIN_EXE_adaptkit"))
        .args(["flower-node", "--superlink", &link.url(), "--heartbeat", heartbeat, "--model"])
        .arg(tiny_model(work))
        .arg("--data")
        .arg(&data)
        .arg("--dir")
        .arg(work.join("node"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(work.join("node.log")).unwrap())
        .spawn()
        .map(Process)
        .unwrap()
}

fn status_of(link: &SuperLink, node_id: u64) -> String {
    link.nodes().into_iter().find(|(id, _)| *id == node_id).map(|(_, s)| s).unwrap_or_default()
}

fn node_id(work: &Path) -> u64 {
    let mut id = 0;
    wait_for("the node to come online", Duration::from_secs(60), || {
        let log = std::fs::read_to_string(work.join("node.log")).unwrap_or_default();
        id = log
            .lines()
            .find_map(|l| l.strip_prefix("flower: node ")?.split(' ').next()?.parse().ok())
            .unwrap_or(0);
        id != 0
    });
    id
}

#[test]
fn a_node_that_misses_its_heartbeats_is_dropped_and_comes_back() {
    let Some(venv) = shared_model::flower_venv() else { return };
    let work = scratch("heartbeat");
    let link = SuperLink::start(&venv, &work, free_port());
    let child = node(&link, &work, "10");
    let id = node_id(&work);
    wait_for("online", Duration::from_secs(30), || status_of(&link, id) == "online");
    // Stopped: no heartbeat for twice the interval, and the SuperLink drops it.
    unsafe { libc::kill(child.0.id() as i32, libc::SIGSTOP) };
    wait_for("offline", Duration::from_secs(40), || status_of(&link, id) == "offline");
    unsafe { libc::kill(child.0.id() as i32, libc::SIGCONT) };
    wait_for("back online", Duration::from_secs(30), || status_of(&link, id) == "online");
    drop(child);
    let _ = std::fs::remove_dir_all(work);
}

#[test]
fn a_node_waits_out_a_superlink_that_goes_away_and_restarts() {
    let Some(venv) = shared_model::flower_venv() else { return };
    let work = scratch("restart");
    let port = free_port();
    let mut link = SuperLink::start(&venv, &work, port);
    let mut child = node(&link, &work, "10");
    let id = node_id(&work);
    wait_for("online", Duration::from_secs(30), || status_of(&link, id) == "online");
    link.stop();
    std::thread::sleep(Duration::from_secs(8));
    assert!(child.0.try_wait().unwrap().is_none(), "the node exited while the SuperLink was away");
    // The same state: the node is known, and its next heartbeat brings it back.
    let link = SuperLink::start(&venv, &work, port);
    wait_for("online after the restart", Duration::from_secs(40), || status_of(&link, id) == "online");
    assert!(child.0.try_wait().unwrap().is_none(), "the node exited");
    drop(child);
    let log = std::fs::read_to_string(work.join("node.log")).unwrap();
    assert!(!log.contains("panicked"), "{log}");
    let _ = std::fs::remove_dir_all(work);
}

/// What a fake SuperLink was sent: replies with content (updates, evaluations) and error replies.
#[derive(Default)]
struct Pushed {
    content: std::sync::atomic::AtomicUsize,
    errors: std::sync::atomic::AtomicUsize,
}

/// A fake SuperLink on loopback: it knows the node, then answers pull-messages with `pull`
/// and pull-object with `object` (status, body); it counts the replies pushed.
fn fake_superlink(pull: Vec<u8>, object: (u16, Vec<u8>)) -> (u16, std::sync::Arc<Pushed>) {
    use adaptkit::flower::proto;
    use prost::Message;
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let pushed = std::sync::Arc::new(Pushed::default());
    let counter = pushed.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                if request.is_empty() {
                    request = line;
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            let mut status = 200;
            let answer = match request.split(' ').nth(1).unwrap_or("") {
                "/v1/fleet/register-node" => proto::RegisterNodeFleetResponse { node_id: 77 }.encode_to_vec(),
                "/v1/fleet/activate-node" => proto::ActivateNodeResponse { node_id: 77 }.encode_to_vec(),
                "/v1/fleet/send-node-heartbeat" => {
                    proto::SendNodeHeartbeatResponse { success: true }.encode_to_vec()
                }
                "/v1/fleet/pull-messages" => pull.clone(),
                "/v1/fleet/pull-object" => {
                    status = object.0;
                    object.1.clone()
                }
                "/v1/fleet/push-messages" => {
                    let request = proto::PushMessagesRequest::decode(body.as_slice()).unwrap_or_default();
                    let is_error = request.messages_list.first().is_some_and(|m| m.error.is_some());
                    let count = if is_error { &counter.errors } else { &counter.content };
                    count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    Vec::new()
                }
                _ => Vec::new(),
            };
            let mut stream = stream;
            let head = format!(
                "HTTP/1.1 {status} X\r\nContent-Type: application/protobuf\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                answer.len()
            );
            let _ = stream.write_all(head.as_bytes()).and_then(|_| stream.write_all(&answer));
        }
    });
    (port, pushed)
}

#[test]
fn a_superlink_that_sends_garbage_gets_one_line_and_no_update() {
    use adaptkit::flower::proto;
    use prost::Message;
    let work = scratch("garbage");
    let model = tiny_model(&work);
    std::fs::write(work.join("notes.txt"), "some words\n").unwrap();
    let run = |pull: Vec<u8>, object: (u16, Vec<u8>), name: &str, extra: &[&str]| {
        let (port, pushed) = fake_superlink(pull, object);
        let log = work.join(format!("{name}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_adaptkit"))
            .args(["flower-node", "--superlink", &format!("http://127.0.0.1:{port}"), "--model"])
            .arg(&model)
            .arg("--data")
            .arg(work.join("notes.txt"))
            .arg("--dir")
            .arg(work.join(name))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .map(Process)
            .unwrap();
        std::thread::sleep(Duration::from_secs(4));
        let text = std::fs::read_to_string(&log).unwrap();
        let mut still = child;
        assert!(still.0.try_wait().unwrap().is_none(), "the node exited: {text}");
        assert_eq!(
            pushed.content.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "no update from garbage: {text}"
        );
        assert!(!text.contains("panicked"), "{text}");
        (text, pushed.errors.load(std::sync::atomic::Ordering::SeqCst))
    };
    // Not protobuf at all.
    let (text, _) = run(b"\xff\xff\xff not protobuf".to_vec(), (200, Vec::new()), "malformed", &[]);
    assert!(text.contains("an answer that is not a pull-messages response"), "{text}");
    // A message whose only object is not what its id says.
    let id = "ab".repeat(32);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let metadata = proto::Metadata {
        run_id: 5,
        message_id: id.clone(),
        src_node_id: 1,
        dst_node_id: 77,
        message_type: "train".into(),
        created_at: now,
        ttl: 3600.0,
        ..Default::default()
    };
    let pull = proto::PullMessagesResponse {
        reconnect: None,
        messages_list: vec![proto::Message {
            metadata: Some(metadata),
            content: Some(Default::default()),
            error: None,
        }],
        message_object_trees: vec![proto::ObjectTree { object_id: id, children: vec![] }],
    };
    let object = proto::PullObjectResponse {
        object_found: true,
        object_available: true,
        object_content: b"Message  3\0abc".to_vec(),
    };
    let (text, errors) = run(pull.encode_to_vec(), (200, object.encode_to_vec()), "forged", &[]);
    assert!(text.contains("does not match its id"), "{text}");
    assert!(errors >= 1, "the ServerApp is told at once, with an error reply: {text}");
    // An object larger than the node takes.
    let big = proto::PullObjectResponse {
        object_found: true,
        object_available: true,
        object_content: adaptkit::flower::objects::object("ArrayChunk", &[], &vec![7u8; 3 << 20]),
    };
    let mut oversized = pull.clone();
    let big_id = adaptkit::flower::objects::object_id(&big.object_content);
    oversized.messages_list[0].metadata.as_mut().unwrap().message_id = big_id.clone();
    oversized.message_object_trees[0].object_id = big_id;
    let (text, errors) =
        run(oversized.encode_to_vec(), (200, big.encode_to_vec()), "oversized", &["--max-message-mb", "1"]);
    assert!(text.contains("the message exceeds 1048576 bytes"), "{text}");
    assert!(errors >= 1, "{text}");
    // A run that is over: the SuperLink's refusal, in one line, and the node goes on.
    let over = br#"{"code": 2007, "detail": "Run is not running."}"#.to_vec();
    let (text, errors) = run(pull.encode_to_vec(), (403, over), "finished", &[]);
    assert_eq!(errors, 0, "nothing is sent to a run that is over: {text}");
    assert!(text.contains("Run is not running. [code 2007] (HTTP 403)"), "{text}");
    let _ = std::fs::remove_dir_all(work);
}
