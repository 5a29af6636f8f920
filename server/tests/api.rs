//! The sync server's HTTP API, end to end on loopback with synthetic adapters (no model needed):
//! rounds and their aggregation, the registry and porting, idempotent uploads, privacy
//! accounting, and every kind of bad input answered with the right 4xx and nothing stored.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use adaptkit::federated::api::{BaseRegistered, Enrolled, PatchView, RoundView, ServerInfo, TaskView};
use adaptkit::federated::{aggregate, Contribution, Privacy, Rule};
use adaptkit::patch::{DenseType, Patch};
use adaptkit::sync::{Client, Retry};
use serde_json::{json, Value};

#[path = "common/federation.rs"]
mod federation;
use federation::*;

struct Server {
    api: Api,
    dir: PathBuf,
}

impl std::ops::Deref for Server {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("adaptkit-server-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A server on a free loopback port, in its own thread, state in a fresh directory.
fn start(name: &str, tweak: impl FnOnce(&mut adaptkit_server::Config)) -> Server {
    let dir = temp_dir(name);
    let mut config = adaptkit_server::Config::in_dir(&dir);
    config.limits.rate = 0.0;
    config.limits.tick = Duration::from_millis(200);
    config.limits.aggregation_lease = Duration::from_secs(2);
    tweak(&mut config);
    let (tx, rx) = std::sync::mpsc::channel();
    let thread_config = config.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async move {
            let state = Arc::new(adaptkit_server::AppState::open(&thread_config).await.unwrap());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            adaptkit_server::serve(listener, state).await.unwrap();
        });
    });
    let address = rx.recv().unwrap();
    let operator = std::fs::read_to_string(&config.operator_token_file).unwrap().trim().to_string();
    let retry = Retry { attempts: 1, ..Retry::default() };
    Server { api: Api { client: Client::new(&format!("http://{address}"), retry), operator }, dir }
}

#[test]
fn a_round_closes_at_quorum_and_publishes_the_signed_aggregate() {
    for rule in [Rule::FedAvg, Rule::Ffa] {
        let server = start(&format!("round-{}", rule.name()), |_| {});
        let info: ServerInfo =
            serde_json::from_slice(&server.call("GET", "/v1/server", None, None).unwrap().body).unwrap();
        let (created, base) = setup(&server, rule, 2, 3);
        let devices: Vec<Enrolled> = (0..3).map(|_| server.enrol(&created)).collect();
        let (global, round, digest) = server.global(&created.task, &devices[0].token, &base.id);
        assert_eq!(round, 1);
        assert_eq!(global.signer_hex().as_deref(), Some(info.public_key.as_str()), "signed by the server");
        let mut contributions = Vec::new();
        for (i, d) in devices.iter().enumerate() {
            let tokens = 100 * (i as u64 + 1);
            let (patch, trained) = make_update(&global, rule, round, &digest, 1.0 + i as f32, tokens);
            let receipt = server.upload(&created.task, round, &d.token, &patch.to_bytes(None)).unwrap();
            assert_eq!((receipt.received, receipt.duplicate), (i as u64 + 1, false));
            contributions.push(Contribution { tensors: trained, weight: tokens as f64 });
        }
        let closed = server.closed(&created.task, 1);
        let result = closed.result.unwrap();
        assert_eq!(result.aggregate.contributions, 3);
        let (next, round2, digest2) = server.global(&created.task, &devices[0].token, &base.id);
        assert_eq!((round2, &digest2), (2, &result.global));
        // What the server published is the aggregate of the devices' adapters (in f16).
        let (want, _) = aggregate(rule, &global.values().unwrap(), &contributions).unwrap();
        for (w, g) in want.iter().zip(next.values().unwrap()) {
            let scale = w.values.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-3);
            let err = w.values.iter().zip(&g.values).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(err <= 2e-3 * scale, "{}: {} off by {err}", rule.name(), w.name);
        }
        let round2_view: RoundView = server.json(
            "GET",
            &format!("/v1/tasks/{}/rounds/current", created.task),
            &devices[1].token,
            None,
        );
        assert_eq!((round2_view.round, round2_view.status.as_str(), round2_view.received), (2, "open", 0));
        let _ = std::fs::remove_dir_all(&server.dir);
    }
}

#[test]
fn uploads_are_idempotent_and_bad_input_is_refused_with_nothing_stored() {
    let server = start("bad-input", |c| c.limits.max_upload = 64 << 10);
    let (created, base) = setup(&server, Rule::FedAvg, 2, 10);
    let device = server.enrol(&created);
    let other = server.create_task(spec(Rule::FedAvg, 1, 2));
    let foreign = server.enrol(&other);
    let (global, round, digest) = server.global(&created.task, &device.token, &base.id);
    let (patch, _) = make_update(&global, Rule::FedAvg, round, &digest, 1.0, 50);
    let good = patch.to_bytes(None);
    let task = created.task.as_str();
    let path = format!("/v1/tasks/{task}/rounds/1/update");
    let put = |p: &str, token: Option<&str>, body: &[u8]| {
        server.call("PUT", p, token, Some((body, "application/octet-stream"))).map(|_| ()).map_err(code)
    };

    // Malformed, truncated and oversized bodies; a patch for another base; wrong tensors.
    assert_eq!(put(&path, Some(&device.token), b"not a patch").unwrap_err(), (400, "bad_request".into()));
    assert_eq!(
        put(&path, Some(&device.token), &good[..good.len() / 2]).unwrap_err(),
        (400, "bad_request".into())
    );
    assert_eq!(
        put(&path, Some(&device.token), &vec![0u8; 100 << 10]).unwrap_err(),
        (413, "too_large".into())
    );
    let mut elsewhere = patch.clone();
    elsewhere.base = fingerprint("cd", 1.0);
    assert_eq!(
        put(&path, Some(&device.token), &elsewhere.to_bytes(None)).unwrap_err(),
        (422, "wrong_base".into())
    );
    let mut missing = patch.clone();
    missing.tensors.pop();
    assert_eq!(
        put(&path, Some(&device.token), &missing.to_bytes(None)).unwrap_err(),
        (400, "bad_request".into())
    );
    let mut nan = patch.values().unwrap();
    nan[0].values[0] = f32::NAN;
    let nan =
        Patch::new(patch.config.clone(), &nan, patch.base.clone(), DenseType::F32, patch.training.clone())
            .unwrap();
    assert_eq!(
        put(&path, Some(&device.token), &nan.to_bytes(None)).unwrap_err(),
        (400, "bad_request".into())
    );
    let (stale, _) = make_update(&global, Rule::FedAvg, round, &"0".repeat(64), 1.0, 50);
    assert_eq!(put(&path, Some(&device.token), &stale.to_bytes(None)).unwrap_err(), (409, "conflict".into()));
    // Unknown task and round, path tricks, no token, an unknown token, a foreign one, the operator.
    assert_eq!(put("/v1/tasks/t_nope/rounds/1/update", Some(&device.token), &good).unwrap_err().0, 403);
    assert_eq!(
        put(&format!("/v1/tasks/{task}/rounds/9/update"), Some(&device.token), &good).unwrap_err(),
        (404, "not_found".into())
    );
    assert_eq!(
        put(&format!("/v1/tasks/{task}/rounds/x/update"), Some(&device.token), &good).unwrap_err(),
        (400, "bad_request".into())
    );
    assert_eq!(
        put("/v1/tasks/..%2F..%2Fetc/rounds/1/update", Some(&device.token), &good).unwrap_err(),
        (400, "bad_request".into())
    );
    assert_eq!(put(&path, None, &good).unwrap_err(), (401, "unauthorized".into()));
    assert_eq!(put(&path, Some("akt_forged"), &good).unwrap_err(), (401, "unauthorized".into()));
    assert_eq!(put(&path, Some(&foreign.token), &good).unwrap_err(), (403, "forbidden".into()));
    assert_eq!(put(&path, Some(&server.operator), &good).unwrap_err(), (403, "forbidden".into()));
    assert_eq!(put(&path, Some(&created.enrol_token), &good).unwrap_err(), (403, "forbidden".into()));
    assert_eq!(server.round(task, 1).received, 0, "nothing was counted");

    // The good update counts once, however often it is retried; a different one is refused.
    let first = server.upload(task, 1, &device.token, &good).unwrap();
    let again = server.upload(task, 1, &device.token, &good).unwrap();
    assert!(!first.duplicate && again.duplicate);
    assert_eq!((first.received, again.received), (1, 1));
    let (different, _) = make_update(&global, Rule::FedAvg, round, &digest, 2.0, 50);
    assert_eq!(
        put(&path, Some(&device.token), &different.to_bytes(None)).unwrap_err(),
        (409, "conflict".into())
    );
    assert_eq!(server.round(task, 1).received, 1);

    // Bad JSON to the operator's endpoints, and a closed round.
    let bad_json = server.call(
        "POST",
        "/v1/tasks",
        Some(&server.operator),
        Some((b"{\"spec\": 3}", "application/json")),
    );
    assert_eq!(code(bad_json.unwrap_err()), (400, "bad_request".into()));
    let bad_spec =
        serde_json::to_vec(&json!({"spec": {"name": "x", "min_clients": 3, "max_clients": 2}})).unwrap();
    assert_eq!(
        code(
            server
                .call("POST", "/v1/tasks", Some(&server.operator), Some((&bad_spec, "application/json")))
                .unwrap_err()
        )
        .0,
        400
    );
    let second = server.enrol(&created);
    let (patch2, _) = make_update(&global, Rule::FedAvg, round, &digest, 3.0, 50);
    server.upload(task, 1, &second.token, &patch2.to_bytes(None)).unwrap();
    let closed: RoundView =
        server.json("POST", &format!("/v1/tasks/{task}/rounds/1/close"), &server.operator.clone(), None);
    assert_eq!(closed.status, "closed");
    let third = server.enrol(&created);
    let (late, _) = make_update(&global, Rule::FedAvg, round, &digest, 4.0, 50);
    assert_eq!(
        put(&path, Some(&third.token), &late.to_bytes(None)).unwrap_err(),
        (409, "round_closed".into())
    );
    assert_eq!(server.round(task, 1).received, 2);
    // Every refusal is JSON with a code and a message.
    let raw = ureq::get(&format!("{}/v1/tasks/{task}", server.client.server()))
        .config()
        .http_status_as_error(false)
        .build()
        .call()
        .unwrap();
    assert_eq!(raw.status().as_u16(), 401);
    let body: Value = serde_json::from_reader(raw.into_body().into_reader()).unwrap();
    assert!(body["error"]["code"].is_string() && body["error"]["message"].is_string(), "{body}");
    let _ = std::fs::remove_dir_all(&server.dir);
}

#[test]
fn a_round_waits_for_its_minimum_then_closes_at_the_deadline() {
    let server = start("deadline", |_| {});
    let mut s = spec(Rule::Ffa, 2, 10);
    s.round_seconds = 1;
    let created = server.create_task(s);
    let base = fingerprint("ab", 1.0);
    let (config, tensors) = lora(3, true);
    server
        .publish(&created.task, &Patch::new(config, &tensors, base.clone(), DenseType::F32, None).unwrap())
        .unwrap();
    let devices: Vec<Enrolled> = (0..2).map(|_| server.enrol(&created)).collect();
    let (global, round, digest) = server.global(&created.task, &devices[0].token, &base.id);
    let (patch, _) = make_update(&global, Rule::Ffa, round, &digest, 1.0, 10);
    server.upload(&created.task, 1, &devices[0].token, &patch.to_bytes(None)).unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    let waiting = server.round(&created.task, 1);
    assert_eq!(waiting.status, "open", "one update is below the minimum: the round waits");
    assert!(waiting.deadline_at > waiting.opened_at + 1, "its deadline moved on");
    let (patch, _) = make_update(&global, Rule::Ffa, round, &digest, 2.0, 10);
    server.upload(&created.task, 1, &devices[1].token, &patch.to_bytes(None)).unwrap();
    assert_eq!(server.closed(&created.task, 1).received, 2);
    let _ = std::fs::remove_dir_all(&server.dir);
}

#[test]
fn an_updated_base_gets_the_ported_adapter_and_the_registry_lists_fetches_and_deletes() {
    let server = start("registry", |_| {});
    let (created, base) = setup(&server, Rule::FedAvg, 1, 1);
    let task = created.task.as_str();
    let op = server.operator.clone();
    let device = server.enrol(&created);
    // Devices on a base the task does not know are told so.
    let newer = fingerprint("cd", 1.1);
    let unknown =
        server.call("GET", &format!("/v1/tasks/{task}/global?base={}", newer.id), Some(&device.token), None);
    assert_eq!(code(unknown.unwrap_err()), (422, "wrong_base".into()));
    let registered: BaseRegistered = server.json(
        "POST",
        &format!("/v1/tasks/{task}/bases"),
        &op,
        Some(serde_json::to_value(&newer).unwrap()),
    );
    let ported = registered.ported.unwrap();
    assert_eq!((ported.kind.as_str(), ported.base.as_str()), ("ported", newer.id.as_str()));
    let max_drift = registered.drift.unwrap()["weights"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["relative"].as_f64().unwrap())
        .fold(0.0, f64::max);
    assert!((max_drift - 0.1).abs() < 1e-6, "{max_drift}");
    let (on_new, round, digest) = server.global(task, &device.token, &newer.id);
    assert_eq!((on_new.base.id.as_str(), round), (newer.id.as_str(), 1));
    assert!(on_new.ported.is_some() && on_new.signer.is_some());
    // Another architecture cannot be registered; the same base twice neither.
    let mut wider = fingerprint("ef", 1.0);
    wider.d_model = 32;
    let refused = server.call(
        "POST",
        &format!("/v1/tasks/{task}/bases"),
        Some(&op),
        Some((&serde_json::to_vec(&wider).unwrap(), "application/json")),
    );
    assert_eq!(code(refused.unwrap_err()), (422, "wrong_base".into()));
    let twice = server.call(
        "POST",
        &format!("/v1/tasks/{task}/bases"),
        Some(&op),
        Some((&serde_json::to_vec(&newer).unwrap(), "application/json")),
    );
    assert_eq!(code(twice.unwrap_err()).0, 409);
    // A device on the new base trains from its ported adapter; the next adapter is published for both bases.
    let (update, _) = make_update(&on_new, Rule::FedAvg, round, &digest, 1.0, 10);
    server.upload(task, 1, &device.token, &update.to_bytes(None)).unwrap();
    server.closed(task, 1);
    let listed: Vec<PatchView> =
        server.json("GET", &format!("/v1/tasks/{task}/patches"), &device.token, None);
    let kinds: Vec<(u64, &str)> = listed.iter().map(|p| (p.round, p.kind.as_str())).collect();
    assert_eq!(kinds.iter().filter(|(r, _)| *r == 2).count(), 2, "{kinds:?}");
    assert!(
        kinds.contains(&(2, "aggregated"))
            && kinds.contains(&(2, "ported"))
            && kinds.contains(&(1, "published"))
    );
    let for_new: Vec<PatchView> =
        server.json("GET", &format!("/v1/tasks/{task}/patches?base={}", newer.id), &op, None);
    assert!(for_new.iter().all(|p| p.base == newer.id) && for_new.len() == 2);
    // Fetch by digest; the current adapter cannot be deleted, an old one can (then it is gone).
    let old = listed.iter().find(|p| p.round == 1 && p.base == base.id).unwrap();
    let fetched = server
        .call("GET", &format!("/v1/tasks/{task}/patches/{}", old.digest), Some(&device.token), None)
        .unwrap();
    assert_eq!(adaptkit_server::blobs::digest(&fetched.body), old.digest);
    let current = listed.iter().find(|p| p.round == 2 && p.base == base.id).unwrap();
    let refused =
        server.call("DELETE", &format!("/v1/tasks/{task}/patches/{}", current.digest), Some(&op), None);
    assert_eq!(code(refused.unwrap_err()).0, 409);
    assert_eq!(
        code(
            server
                .call(
                    "DELETE",
                    &format!("/v1/tasks/{task}/patches/{}", old.digest),
                    Some(&device.token),
                    None
                )
                .unwrap_err()
        )
        .0,
        403
    );
    server.call("DELETE", &format!("/v1/tasks/{task}/patches/{}", old.digest), Some(&op), None).unwrap();
    let gone = server.call("GET", &format!("/v1/tasks/{task}/patches/{}", old.digest), Some(&op), None);
    assert_eq!(code(gone.unwrap_err()).0, 404);
    // Publishing while a round is open is refused (its devices train the current adapter).
    let (config, tensors) = lora(9, false);
    let republish = server.publish(task, &Patch::new(config, &tensors, base, DenseType::F32, None).unwrap());
    assert_eq!(code(republish.unwrap_err()).0, 409);
    let _ = std::fs::remove_dir_all(&server.dir);
}

#[test]
fn a_private_task_reports_epsilon_and_stops_before_its_budget() {
    let server = start("privacy", |_| {});
    let privacy =
        Privacy { clip_norm: 1.0, noise_multiplier: 1.0, sample_rate: 1.0, delta: 1e-5, epsilon_budget: 8.0 };
    let mut s = spec(Rule::Ffa, 1, 1);
    s.privacy = Some(privacy.clone());
    let created = server.create_task(s);
    let base = fingerprint("ab", 1.0);
    let (config, tensors) = lora(3, true);
    server
        .publish(&created.task, &Patch::new(config, &tensors, base.clone(), DenseType::F32, None).unwrap())
        .unwrap();
    let device = server.enrol(&created);
    for round in 1..=2u64 {
        let (global, r, digest) = server.global(&created.task, &device.token, &base.id);
        assert_eq!(r, round);
        let (patch, _) = make_update(&global, Rule::Ffa, round, &digest, 0.1, 10);
        server.upload(&created.task, round, &device.token, &patch.to_bytes(None)).unwrap();
        let closed = server.closed(&created.task, round);
        let epsilon = closed.result.unwrap().epsilon.unwrap();
        assert!((epsilon - privacy.epsilon(round)).abs() < 1e-9);
    }
    // ε(1) ≈ 4.73 and ε(2) ≈ 7.08 fit the budget of 8; ε(3) ≈ 9.01 would not: round 3 never opens.
    let task: TaskView = server.json("GET", &format!("/v1/tasks/{}", created.task), &device.token, None);
    assert_eq!((task.status.as_str(), task.round), ("budget_spent", 2));
    assert!((task.epsilon.unwrap() - 7.077).abs() < 0.05, "{:?}", task.epsilon);
    let none = server.call("GET", &format!("/v1/tasks/{}/rounds/3", created.task), Some(&device.token), None);
    assert_eq!(code(none.unwrap_err()).0, 404);
    let _ = std::fs::remove_dir_all(&server.dir);
}

#[test]
fn every_documented_route_is_served() {
    let server = start("openapi", |_| {});
    let doc: Value =
        serde_json::from_slice(&server.call("GET", "/openapi.json", None, None).unwrap().body).unwrap();
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 12, "{}", paths.len());
    for (path, methods) in paths {
        let concrete = path.replace("{task}", "t_x").replace("{round}", "1").replace("{digest}", "ab");
        for method in methods.as_object().unwrap().keys() {
            let method = method.to_uppercase();
            let body: Option<(&[u8], &str)> =
                if method == "GET" || method == "DELETE" { None } else { Some((b"{}", "application/json")) };
            // With no token every route but the public ones answers 401 JSON: it exists and is guarded.
            match server.call(&method, &concrete, None, body) {
                Ok(r) => assert!(
                    path == "/v1/server" || path == "/health",
                    "{method} {path} answered {} without a token",
                    r.status
                ),
                Err(e) => assert_eq!(code(e), (401, "unauthorized".into()), "{method} {path}"),
            }
        }
    }
    let _ = std::fs::remove_dir_all(&server.dir);
}

#[test]
fn a_secure_round_reveals_only_the_sum_and_survives_devices_that_drop_out() {
    use adaptkit::federated::api::{SecAggKeys, SecAggShares, SecAggView};
    use adaptkit::federated::prg::Prg;
    use adaptkit::federated::secagg::{context, encode, PublicKeys, RoundSecrets};
    use adaptkit::federated::{Aggregator, Contribution};
    use adaptkit::format::patch_file::{hex, unhex};
    use adaptkit::sync::{SecureOptions, SecureRound};

    let server = start("secure", |_| {});
    let mut s = spec(Rule::Ffa, 4, 6);
    s.secure_aggregation = true;
    s.round_seconds = 2;
    let created = server.create_task(s);
    let base = fingerprint("ab", 1.0);
    let (config, tensors) = lora(3, true);
    server
        .publish(&created.task, &Patch::new(config, &tensors, base.clone(), DenseType::F32, None).unwrap())
        .unwrap();
    let devices: Vec<Enrolled> = (0..6).map(|_| server.enrol(&created)).collect();
    let (global, round, digest) = server.global(&created.task, &devices[0].token, &base.id);
    let updates: Vec<_> =
        (0..6).map(|d| make_update(&global, Rule::Ffa, round, &digest, 0.5 + d as f32 / 10.0, 10)).collect();
    // A plain upload is refused: this task's server must never see one update.
    let plain = server.upload(&created.task, 1, &devices[0].token, &updates[0].0.to_bytes(None));
    assert_eq!(code(plain.unwrap_err()).0, 409);
    let url = server.client.server().to_string();
    let options = SecureOptions {
        timeout: Duration::from_secs(60),
        poll: Duration::from_millis(50),
        drop_after_masking: false,
    };
    // Devices 0-4 take part; 4 goes offline after masking; 5 sends its keys and shares, then
    // goes offline before masking.
    let threads: Vec<_> = (0..5)
        .map(|d| {
            let (url, task, device) = (url.clone(), created.task.clone(), devices[d].clone());
            let values: Vec<f32> =
                updates[d].0.values().unwrap().iter().flat_map(|v| v.values.clone()).collect();
            let file = server.dir.join(format!("secrets-{d}.json"));
            let options = SecureOptions { drop_after_masking: d == 4, ..options };
            std::thread::spawn(move || {
                let client = Client::new(&url, Retry::default());
                let round = SecureRound {
                    client: &client,
                    token: &device.token,
                    task: &task,
                    round: 1,
                    device: &device.device,
                    max_devices: 6,
                };
                round.take_part(&values, &file, &options)
            })
        })
        .collect();
    {
        let me = &devices[5];
        let mut prg = Prg::new([5; 32]);
        let secrets = RoundSecrets::generate(&mut prg);
        let public = secrets.public();
        let path = |leaf: &str| format!("/v1/tasks/{}/rounds/1/secagg{leaf}", created.task);
        let keys = serde_json::to_vec(&SecAggKeys { c: hex(&public.c), s: hex(&public.s) }).unwrap();
        server.call("PUT", &path("/keys"), Some(&me.token), Some((&keys, "application/json"))).unwrap();
        let view = loop {
            let view: SecAggView = server.json("GET", &path(""), &me.token, None);
            if view.phase != "keys" {
                break view;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let participants: Vec<PublicKeys> = view
            .participants
            .iter()
            .map(|p| PublicKeys {
                c: unhex(&p.c).unwrap().try_into().unwrap(),
                s: unhex(&p.s).unwrap().try_into().unwrap(),
            })
            .collect();
        let at = view.participants.iter().position(|p| p.device == me.device).unwrap();
        let boxes =
            secrets.encrypted_shares(at, &participants, view.threshold, &context(&created.task, 1), &mut prg);
        let shares =
            serde_json::to_vec(&SecAggShares { boxes: boxes.iter().map(|b| hex(b)).collect() }).unwrap();
        server.call("PUT", &path("/shares"), Some(&me.token), Some((&shares, "application/json"))).unwrap();
    }
    for t in threads {
        t.join().unwrap().unwrap();
    }
    let closed = server.closed(&created.task, 1);
    assert_eq!(closed.result.unwrap().aggregate.contributions, 5, "devices 0-4 masked; 5 dropped before");
    // The same as plain FFA aggregation of the five, within the fixed-point step (and f16).
    let g = global.values().unwrap();
    let mut plain = Aggregator::new(Rule::Ffa, &g);
    for (_, trained) in &updates[..5] {
        plain.add(&Contribution { tensors: trained.clone(), weight: 1.0 }).unwrap();
    }
    let (want, _) = plain.finish().unwrap();
    let (next, _, _) = server.global(&created.task, &devices[0].token, &base.id);
    for (w, got) in want.iter().zip(next.values().unwrap()) {
        let err = w.values.iter().zip(&got.values).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        let scale = w.values.iter().fold(0f32, |m, x| m.max(x.abs()));
        assert!(err <= 1e-4 + 1e-3 * scale, "{}: off by {err}", w.name);
    }
    // What the server stored of device 0 is masked: nothing like its encoded update.
    let input =
        encode(&updates[0].0.values().unwrap().iter().flat_map(|v| v.values.clone()).collect::<Vec<_>>(), 6)
            .unwrap();
    let same = server.dir.join("blobs");
    let stored: Vec<Vec<u8>> = walk(&same)
        .into_iter()
        .map(|p| std::fs::read(p).unwrap())
        .filter(|b| b.len() == 4 * input.len())
        .collect();
    assert_eq!(stored.len(), 5);
    for bytes in stored {
        let equal = bytes
            .chunks_exact(4)
            .zip(&input)
            .filter(|(b, x)| u32::from_le_bytes((*b).try_into().unwrap()) == **x)
            .count();
        assert!(equal < input.len() / 100, "a stored masked input matches an update in {equal} places");
    }
    let _ = std::fs::remove_dir_all(&server.dir);
}

fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn compressed_updates_are_decoded_and_aggregated() {
    use adaptkit::patch::compress::compress;
    let server = start("compressed", |_| {});
    let (created, base) = setup(&server, Rule::FedAvg, 2, 2);
    let devices: Vec<Enrolled> = (0..2).map(|_| server.enrol(&created)).collect();
    let (global, round, digest) = server.global(&created.task, &devices[0].token, &base.id);
    let mut contributions = Vec::new();
    for (d, device) in devices.iter().enumerate() {
        let (patch, _) = make_update(&global, Rule::FedAvg, round, &digest, 1.0 + d as f32, 100);
        // ComPEFT at density 0.3: what the server gets is the coded update, and what it
        // aggregates is that update decoded, added to the round's adapter.
        let (coded, _) = compress(&patch, 0.3).unwrap();
        assert!(coded.payload_bytes() < patch.payload_bytes() / 4);
        server.upload(&created.task, round, &device.token, &coded.to_bytes(None)).unwrap();
        let tensors =
            adaptkit::federated::update::apply(&global.values().unwrap(), &coded.values().unwrap()).unwrap();
        contributions.push(Contribution { tensors, weight: 100.0 });
    }
    server.closed(&created.task, 1);
    let (want, _) = aggregate(Rule::FedAvg, &global.values().unwrap(), &contributions).unwrap();
    let (next, _, _) = server.global(&created.task, &devices[0].token, &base.id);
    for (w, g) in want.iter().zip(next.values().unwrap()) {
        let scale = w.values.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-3);
        let err = w.values.iter().zip(&g.values).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(err <= 2e-3 * scale, "{}: off by {err}", w.name);
    }
    let _ = std::fs::remove_dir_all(&server.dir);
}

#[test]
fn a_device_queues_what_it_cannot_send_and_sends_it_after_a_restart() {
    use adaptkit::sync::Device;
    let server = start("queue", |_| {});
    let (created, base) = setup(&server, Rule::FedAvg, 2, 2);
    let dir = server.dir.join("device");
    let retry = Retry { attempts: 1, ..Retry::default() };
    let device =
        Device::enrol(&dir, server.client.server(), &created.task, &created.enrol_token, None, None, retry)
            .unwrap();
    let token = device.enrolment().token.clone();
    let (global, round, digest) = server.global(&created.task, &token, &base.id);
    let (update, _) = make_update(&global, Rule::FedAvg, round, &digest, 1.0, 10);
    // The server is out of reach (the enrolment points at a closed port): the update is queued.
    let enrolment = dir.join("enrolment.json");
    let good = std::fs::read_to_string(&enrolment).unwrap();
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    std::fs::write(&enrolment, good.replace(server.client.server(), &format!("http://{closed_port}")))
        .unwrap();
    let offline = Device::open(&dir, retry).unwrap();
    let flushed = offline.send(round, &update, 1.0, false).unwrap();
    assert_eq!(flushed[0].outcome, "queued");
    drop(offline);
    // A new process (here: a new Device from the same directory) finds it and sends it once.
    std::fs::write(&enrolment, &good).unwrap();
    let online = Device::open(&dir, retry).unwrap();
    assert_eq!(online.queued().unwrap().len(), 1);
    let flushed = online.flush().unwrap();
    assert_eq!((flushed[0].outcome, flushed[0].receipt.as_ref().unwrap().received), ("sent", 1));
    assert!(online.queued().unwrap().is_empty());
    // Sending the same update again is a duplicate; a refused one leaves the queue too.
    assert_eq!(online.send(round, &update, 1.0, false).unwrap()[0].outcome, "duplicate");
    let mut other = update.clone();
    other.base = fingerprint("cd", 1.0);
    let refused = online.send(round, &other, 1.0, false).unwrap();
    assert_eq!(refused[0].outcome, "refused", "{:?}", refused[0].message);
    assert!(online.queued().unwrap().is_empty());
    assert_eq!(server.round(&created.task, 1).received, 1);
    let _ = std::fs::remove_dir_all(&server.dir);
}
