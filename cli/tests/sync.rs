//! Federated adaptation with real processes: `adaptkit serve` and devices running
//! `adaptkit sync` on the real model; the server killed with SIGKILL during uploads and during
//! aggregation; 200 devices uploading at once. With `ADAPTKIT_TEST_POSTGRES` (a database URL)
//! and `ADAPTKIT_TEST_S3` (an `s3://bucket` reachable with the `AWS_*` variables) the server
//! tests run against PostgreSQL with two server processes and against the S3 store too.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use adaptkit::federated::api::{Enrolled, TaskCreated};
use adaptkit::federated::Rule;
use adaptkit::patch::{DenseType, Patch};
use adaptkit::sync::{Client, Retry};

#[path = "../../server/tests/common/federation.rs"]
mod federation;
#[path = "../../core/tests/common/real_model.rs"]
mod shared_model;
use federation::*;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("adaptkit-sync-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The operator token every server process of a test shares.
const OPERATOR: &str = "akt_operator_token_of_the_tests";

/// An `adaptkit serve` process.
struct ServerProcess {
    child: Child,
    url: String,
}

impl ServerProcess {
    /// Starts a server with its state in `dir` (and on `ADAPTKIT_TEST_POSTGRES` /
    /// `ADAPTKIT_TEST_S3` when `shared`), on a free port.
    fn start(dir: &Path, shared: &Shared, extra: &[&str]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_adaptkit"));
        command.args(["serve", "--listen", "127.0.0.1:0", "--json", "--lease-seconds", "2"]);
        command.arg("--dir").arg(dir).args(extra).env("ADAPTKIT_OPERATOR_TOKEN", OPERATOR);
        // Every process of a test signs with the same key.
        command.arg("--key").arg(dir.parent().unwrap().join("server.key"));
        if let Some(db) = &shared.db {
            command.args(["--db", db]);
        }
        // Processes of one test share the blob store (a directory beside theirs, or S3).
        let local = dir.parent().unwrap().join("blobs").display().to_string();
        command.args(["--blobs", shared.blobs.as_deref().unwrap_or(&local)]);
        let mut child = command.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let info: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        Self { child, url: info["url"].as_str().unwrap().to_string() }
    }

    /// The API without retries (a refusal or a dead server is seen at once).
    fn api(&self) -> Api {
        self.api_with(Retry { attempts: 1, ..Retry::default() })
    }

    fn api_with(&self, retry: Retry) -> Api {
        Api { client: Client::new(&self.url, retry), operator: OPERATOR.into() }
    }

    /// SIGKILL: no chance to finish anything.
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    fn rss_mb(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kb: f64 = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        kb / 1024.0
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The shared database and blob store of a test (none: SQLite and a directory per process).
struct Shared {
    db: Option<String>,
    blobs: Option<String>,
}

impl Shared {
    /// From `ADAPTKIT_TEST_POSTGRES` / `ADAPTKIT_TEST_S3`, each in a fresh schema or prefix.
    fn from_env(name: &str) -> Self {
        let db = std::env::var("ADAPTKIT_TEST_POSTGRES")
            .ok()
            .filter(|u| !u.is_empty())
            .map(|url| fresh_database(&url, name));
        let blobs = std::env::var("ADAPTKIT_TEST_S3")
            .ok()
            .filter(|u| !u.is_empty())
            .map(|url| format!("{}/{name}-{}", url.trim_end_matches('/'), std::process::id()));
        Self { db, blobs }
    }
}

/// A new, empty PostgreSQL database for one test (`createdb` on the server of `url`).
fn fresh_database(url: &str, name: &str) -> String {
    let database = format!("adaptkit_{name}_{}", std::process::id());
    let (server, _) = url.rsplit_once('/').unwrap();
    let out = Command::new("psql")
        .args([
            url,
            "-c",
            &format!("DROP DATABASE IF EXISTS {database}"),
            "-c",
            &format!("CREATE DATABASE {database}"),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "psql: {}", String::from_utf8_lossy(&out.stderr));
    format!("{server}/{database}")
}

fn adaptkit(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_adaptkit"));
    command.args(args).env_remove("RUST_BACKTRACE");
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().unwrap()
}

fn last_json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

/// `adaptkit sync enrol` of the device kept in `dir`.
fn enrol(url: &str, task: &str, token: &str, dir: &str) {
    last_json(&adaptkit(
        &["sync", "enrol", "--server", url, "--task", task, "--token", token, "--dir", dir, "--json"],
        &[],
    ));
}

/// The bundled journal's entries in `n` consecutive shards, each split into training text and
/// its last entries held out.
fn shards(n: usize) -> Vec<(String, String)> {
    let journal =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/sample/journal.txt"))
            .unwrap();
    let entries: Vec<&str> = journal.split("\n\n").filter(|e| !e.trim().is_empty()).collect();
    let per = entries.len() / n;
    (0..n)
        .map(|d| {
            let shard = &entries[d * per..(d + 1) * per];
            let held = (shard.len() / 6).max(1);
            (shard[..shard.len() - held].join("\n\n"), shard[shard.len() - held..].join("\n\n"))
        })
        .collect()
}

#[test]
fn eight_devices_train_a_shared_adapter_that_beats_the_base_on_the_real_model() {
    let Some(model) = shared_model::real_model() else { return };
    let model = model.to_str().unwrap();
    let dir = scratch("e2e");
    let server = ServerProcess::start(&dir.join("server"), &Shared { db: None, blobs: None }, &[]);
    let operator = [("ADAPTKIT_OPERATOR_TOKEN", OPERATOR)];
    let created = last_json(&adaptkit(
        &[
            "sync",
            "task",
            "create",
            "--server",
            &server.url,
            "--model",
            model,
            "--name",
            "journal",
            "--rule",
            "fedavg",
            "--min-clients",
            "8",
            "--max-clients",
            "8",
            "--steps",
            "4",
            "--batch",
            "2",
            "--seq",
            "64",
            "--lr",
            "5e-3",
            "--json",
        ],
        &operator,
    ));
    let (task, token) = (created["task"].as_str().unwrap(), created["enrol_token"].as_str().unwrap());
    let shards = shards(8);
    let held_out = dir.join("held-out.txt");
    std::fs::write(&held_out, shards.iter().map(|(_, h)| h.as_str()).collect::<Vec<_>>().join("\n\n"))
        .unwrap();
    for (d, (train, _)) in shards.iter().enumerate() {
        let device = dir.join(format!("device-{d}"));
        let data = dir.join(format!("shard-{d}.txt"));
        std::fs::write(&data, train).unwrap();
        let device = device.to_str().unwrap();
        enrol(&server.url, task, token, device);
        let pushed = last_json(&adaptkit(
            &["sync", "push", "--model", model, "--data", data.to_str().unwrap(), "--dir", device, "--json"],
            &[],
        ));
        assert_eq!(
            (pushed["round"].as_u64(), pushed["outcome"].as_str()),
            (Some(1), Some("sent")),
            "{pushed}"
        );
    }
    // The eighth update closed round 1; the shared adapter of round 2 is its aggregate.
    let api = server.api();
    let closed = api.closed(task, 1);
    assert_eq!(closed.result.as_ref().unwrap().aggregate.contributions, 8);
    let device0 = dir.join("device-0");
    let adapter = dir.join("shared");
    let pulled = last_json(&adaptkit(
        &[
            "sync",
            "pull",
            "--model",
            model,
            "--dir",
            device0.to_str().unwrap(),
            "--out-dir",
            adapter.to_str().unwrap(),
            "--json",
        ],
        &[],
    ));
    assert_eq!(pulled["round"].as_u64(), Some(2));
    let eval = |extra: &[&str]| {
        let args = [
            &["eval", "--model", model, "--data", held_out.to_str().unwrap(), "--seq", "64", "--json"][..],
            extra,
        ]
        .concat();
        last_json(&adaptkit(&args, &[]))["perplexity"].as_f64().unwrap()
    };
    let (base, shared) = (eval(&[]), eval(&["--adapter", adapter.to_str().unwrap()]));
    eprintln!("8 devices, one round: held-out perplexity on the union of their shards {base:.2} (base) -> {shared:.2} (shared adapter)");
    assert!(shared < 0.9 * base, "the shared adapter lowers held-out perplexity: {shared} vs {base}");
    let status = last_json(&adaptkit(&["sync", "status", "--dir", device0.to_str().unwrap(), "--json"], &[]));
    assert_eq!(
        (status["round"]["round"].as_u64(), status["queued"].as_array().map(Vec::len)),
        (Some(2), Some(0))
    );

    // The same devices in a secure FFA-LoRA task: all 8 train at once, the server sees only the
    // sum, and one device goes offline after sending its masked input.
    let created = last_json(&adaptkit(
        &[
            "sync",
            "task",
            "create",
            "--server",
            &server.url,
            "--model",
            model,
            "--name",
            "journal, securely",
            "--rule",
            "ffa",
            "--secure-aggregation",
            "--min-clients",
            "8",
            "--max-clients",
            "8",
            "--round-seconds",
            "5",
            "--steps",
            "4",
            "--batch",
            "2",
            "--seq",
            "64",
            "--lr",
            "5e-3",
            "--json",
        ],
        &operator,
    ));
    let (task, token) = (created["task"].as_str().unwrap(), created["enrol_token"].as_str().unwrap());
    let pushes: Vec<Child> = (0..8)
        .map(|d| {
            let device = dir.join(format!("secure-{d}"));
            let device = device.to_str().unwrap();
            enrol(&server.url, task, token, device);
            let own = dir.join(format!("secure-{d}/own"));
            let data = dir.join(format!("shard-{d}.txt"));
            let mut args = vec![
                "sync",
                "push",
                "--model",
                model,
                "--data",
                data.to_str().unwrap(),
                "--dir",
                device,
                "--json",
                "--threads",
                "1",
            ];
            args.extend(["--out-dir", own.to_str().unwrap()]);
            if d == 7 {
                args.push("--drop-after-masking");
            }
            Command::new(env!("CARGO_BIN_EXE_adaptkit"))
                .args(&args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for push in pushes {
        let out = push.wait_with_output().unwrap();
        assert_eq!(last_json(&out)["outcome"].as_str(), Some("sent"));
    }
    let closed = api.closed(task, 1);
    assert_eq!(
        closed.result.as_ref().unwrap().aggregate.contributions,
        8,
        "the device that dropped after masking counts"
    );
    let shared = dir.join("secure-shared");
    let secure0 = dir.join("secure-0");
    last_json(&adaptkit(
        &[
            "sync",
            "pull",
            "--model",
            model,
            "--dir",
            secure0.to_str().unwrap(),
            "--out-dir",
            shared.to_str().unwrap(),
            "--json",
        ],
        &[],
    ));
    // The shared B is the mean of the devices' B (what plain FFA aggregation gives), within the
    // fixed-point step and the f16 the shared adapter is stored in.
    let read = |path: &Path| {
        let base = fingerprint("00", 1.0);
        Patch::from_adapter_dir(path, base, DenseType::F32).unwrap().values().unwrap()
    };
    let got = read(&shared);
    let owns: Vec<_> = (0..8).map(|d| read(&dir.join(format!("secure-{d}/own")))).collect();
    for (i, tensor) in got.iter().enumerate().filter(|(_, t)| t.name.ends_with("lora_B.weight")) {
        let mean: Vec<f32> = (0..tensor.values.len())
            .map(|k| owns.iter().map(|o| o[i].values[k]).sum::<f32>() / 8.0)
            .collect();
        let scale = mean.iter().fold(0f32, |m, x| m.max(x.abs()));
        let err = mean.iter().zip(&tensor.values).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(err <= 1e-4 + 2e-3 * scale, "{}: off by {err} (scale {scale})", tensor.name);
    }
    let secure = eval(&["--adapter", shared.to_str().unwrap()]);
    eprintln!("8 devices, secure FFA-LoRA round: held-out perplexity {base:.2} (base) -> {secure:.2}");
    assert!(secure < base, "{secure} vs {base}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A task of `devices` devices (one round needs all of them) and its round-1 updates.
fn prepared(api: &Api, devices: usize, size: Size) -> (TaskCreated, Vec<Enrolled>, Vec<Vec<u8>>) {
    let created = api.create_task(spec(Rule::Ffa, devices, devices));
    let base = fingerprint_of("ab", 1.0, size);
    let (config, tensors) = lora_of(11, true, size);
    api.publish(&created.task, &Patch::new(config, &tensors, base.clone(), DenseType::F32, None).unwrap())
        .unwrap();
    let enrolled: Vec<Enrolled> = (0..devices).map(|_| api.enrol(&created)).collect();
    let (global, round, digest) = api.global(&created.task, &enrolled[0].token, &base.id);
    let updates = (0..devices)
        .map(|d| make_update(&global, Rule::Ffa, round, &digest, 1.0 + d as f32 / 10.0, 100).0.to_bytes(None))
        .collect();
    (created, enrolled, updates)
}

#[test]
fn a_server_killed_during_uploads_and_during_aggregation_loses_nothing() {
    let dir = scratch("crash");
    let shared = Shared::from_env("crash");
    let devices = 40;
    let first = ServerProcess::start(&dir.join("a"), &shared, &[]);
    let api = first.api();
    let (created, enrolled, updates) = prepared(&api, devices, SMALL);
    let task = created.task.clone();

    // SIGKILL while uploads are in flight: whatever was acknowledged must be there after.
    let acked = Arc::new(AtomicUsize::new(0));
    let url = first.url.clone();
    let uploads: Vec<_> = enrolled
        .iter()
        .zip(&updates)
        .map(|(device, bytes)| {
            let (acked, url, task, token, bytes) =
                (acked.clone(), url.clone(), task.clone(), device.token.clone(), bytes.clone());
            std::thread::spawn(move || {
                let client = Client::new(&url, Retry { attempts: 1, ..Retry::default() });
                let ok = client.upload(&token, &task, 1, &bytes).is_ok();
                if ok {
                    acked.fetch_add(1, Ordering::SeqCst);
                }
                ok
            })
        })
        .collect();
    while acked.load(Ordering::SeqCst) < 5 {
        std::thread::sleep(Duration::from_millis(1));
    }
    first.kill();
    let acknowledged: Vec<bool> = uploads.into_iter().map(|t| t.join().unwrap()).collect();
    let acked_count = acknowledged.iter().filter(|ok| **ok).count();

    // A second process (on PostgreSQL: another server on the same database and bucket).
    let second = ServerProcess::start(&dir.join(if shared.db.is_some() { "b" } else { "a" }), &shared, &[]);
    let api = second.api();
    let received = api.round(&task, 1).received as usize;
    assert!(received >= acked_count, "{received} stored, {acked_count} acknowledged");
    assert!(received < devices, "the kill landed while uploads were in flight ({received} of {devices})");
    // Every device retries: the acknowledged ones are duplicates; nothing counts twice. The
    // last one closes the round, and a process slowed down in aggregation is killed there.
    second.kill();
    let slow = ServerProcess::start(&dir.join("a"), &shared, &["--fault-aggregation-delay-ms", "60000"]);
    let api = slow.api();
    for ((device, bytes), was_acked) in enrolled.iter().zip(&updates).zip(&acknowledged) {
        let receipt = api.upload(&task, 1, &device.token, bytes).unwrap();
        if *was_acked {
            assert!(receipt.duplicate, "an acknowledged upload was kept");
        }
    }
    let claimed = (0..200).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        api.round(&task, 1).status == "aggregating"
    });
    assert!(claimed, "the round was claimed for aggregation");
    assert_eq!(api.round(&task, 1).received as usize, devices);
    slow.kill();
    // After the claim's lease, a restarted process aggregates the round.
    let last = ServerProcess::start(&dir.join(if shared.db.is_some() { "c" } else { "a" }), &shared, &[]);
    let closed = last.api().closed(&task, 1);
    assert_eq!(closed.result.unwrap().aggregate.contributions, devices);
    assert_eq!(last.api().round(&task, 2).status, "open");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn two_hundred_devices_upload_200_kb_updates_at_once() {
    let dir = scratch("load");
    let shared = Shared::from_env("load");
    let server = ServerProcess::start(&dir.join("server"), &shared, &[]);
    let devices = 200;
    // q and v of 2 layers of width 1024 at rank 12: B is 4 x 1024 x 12 f32, ~197 KB an update.
    let size = Size { layers: 2, d: 1024, rank: 12 };
    // 200 devices enrol with one token: its rate limit makes them wait their turn.
    let api = server.api_with(Retry::default());
    let wave = |round: u64, created: &TaskCreated, enrolled: &[Enrolled], updates: &[Vec<u8>]| {
        let start = Instant::now();
        let threads: Vec<_> = enrolled
            .iter()
            .zip(updates)
            .map(|(device, bytes)| {
                let (url, task, token, bytes) =
                    (server.url.clone(), created.task.clone(), device.token.clone(), bytes.clone());
                std::thread::spawn(move || {
                    let client = Client::new(&url, Retry::default());
                    let t = Instant::now();
                    let result = client.upload(&token, &task, round, &bytes).map(|_| ());
                    (t.elapsed(), result)
                })
            })
            .collect();
        let mut latencies = Vec::new();
        for t in threads {
            let (latency, result) = t.join().unwrap();
            result.unwrap_or_else(|e| panic!("an upload failed: {e}"));
            latencies.push(latency);
        }
        let wall = start.elapsed();
        latencies.sort();
        let p = |q: f64| {
            latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)].as_secs_f64() * 1e3
        };
        (wall, p(0.5), p(0.99))
    };
    let (created, enrolled, mut updates) = prepared(&api, devices, size);
    let bytes = updates[0].len();
    let base = created_base(&api, &created);
    let mut rss = vec![server.rss_mb()];
    let mut lines = Vec::new();
    // Four rounds of 200 uploads each (measured over six: 111, 115, 113, 137, 116, 115 MB).
    for round in 1..=4u64 {
        if round > 1 {
            let (global, r, digest) = api.global(&created.task, &enrolled[0].token, &base);
            assert_eq!(r, round);
            updates = (0..devices)
                .map(|d| {
                    make_update(&global, Rule::Ffa, r, &digest, 0.5 + d as f32 / 100.0, 100).0.to_bytes(None)
                })
                .collect();
        }
        let (wall, p50, p99) = wave(round, &created, &enrolled, &updates);
        api.closed(&created.task, round);
        rss.push(server.rss_mb());
        lines.push(format!(
            "round {round}: {:.0} uploads/s ({:.0} MB/s), p50 {p50:.0} ms, p99 {p99:.0} ms",
            devices as f64 / wall.as_secs_f64(),
            (devices * bytes) as f64 / wall.as_secs_f64() / 1e6
        ));
    }
    eprintln!(
        "load: {devices} devices x {:.0} KB updates; {}; server RSS {} MB",
        bytes as f64 / 1024.0,
        lines.join("; "),
        rss.iter().map(|m| format!("{m:.0}")).collect::<Vec<_>>().join(" -> ")
    );
    // Flat once warm: rounds 3 and 4 end where round 2 did (allocator caches fill in the
    // first rounds, then stay).
    let later = rss[3..].iter().copied().fold(0.0, f64::max);
    assert!(later < rss[2] * 1.2 + 15.0, "server memory grew round after round: {rss:?} MB");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The task's training base.
fn created_base(api: &Api, created: &TaskCreated) -> String {
    let task: adaptkit::federated::api::TaskView =
        api.json("GET", &format!("/v1/tasks/{}", created.task), OPERATOR, None);
    task.bases[0].clone()
}

#[test]
fn two_server_processes_share_one_database_and_blob_store() {
    let dir = scratch("two");
    let shared = Shared::from_env("two");
    // With SQLite both processes open the same file (WAL); with PostgreSQL the same database.
    let db =
        shared.db.clone().unwrap_or_else(|| format!("sqlite://{}?mode=rwc", dir.join("shared.db").display()));
    let shared = Shared { db: Some(db), blobs: shared.blobs };
    let (a, b) = (
        ServerProcess::start(&dir.join("a"), &shared, &[]),
        ServerProcess::start(&dir.join("b"), &shared, &[]),
    );
    let (api_a, api_b) = (a.api(), b.api());
    let devices = 10;
    let (created, enrolled, updates) = prepared(&api_a, devices, SMALL);
    // Half the devices reach one process, half the other, all at once.
    let threads: Vec<_> = enrolled
        .iter()
        .zip(&updates)
        .enumerate()
        .map(|(i, (device, bytes))| {
            let url = if i % 2 == 0 { a.url.clone() } else { b.url.clone() };
            let (task, token, bytes) = (created.task.clone(), device.token.clone(), bytes.clone());
            std::thread::spawn(move || {
                Client::new(&url, Retry::default()).upload(&token, &task, 1, &bytes).unwrap()
            })
        })
        .collect();
    for t in threads {
        assert!(!t.join().unwrap().duplicate);
    }
    // The round closed once, whichever process claimed it, and both serve its result.
    let closed = api_b.closed(&created.task, 1);
    assert_eq!(closed.result.as_ref().unwrap().aggregate.contributions, devices);
    assert_eq!(api_a.round(&created.task, 1).result, closed.result);
    let patches: Vec<adaptkit::federated::api::PatchView> =
        api_a.json("GET", &format!("/v1/tasks/{}/patches", created.task), OPERATOR, None);
    assert_eq!(patches.iter().filter(|p| p.kind == "aggregated").count(), 1, "{patches:?}");
    let base = created_base(&api_b, &created);
    let (_, round_a, digest_a) = api_a.global(&created.task, &enrolled[0].token, &base);
    let (_, round_b, digest_b) = api_b.global(&created.task, &enrolled[1].token, &base);
    assert_eq!((round_a, &digest_a), (round_b, &digest_b));
    let _ = std::fs::remove_dir_all(&dir);
}
