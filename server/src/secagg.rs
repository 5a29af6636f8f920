//! Secure rounds ([`adaptkit::federated::secagg`]): the server relays keys and encrypted shares,
//! collects masked inputs, and unmasks only their sum. Each phase ends when every expected
//! device has acted, or at its deadline with enough of them (at least the threshold and the
//! task's minimum; otherwise it waits another period). Phase changes are conditional updates
//! of the round's row, so one process makes each, whichever process the devices reach.

use adaptkit::federated::api::{
    ApiError as ErrorDoc, Participant, SecAggKeys, SecAggReveals, SecAggShares, SecAggView,
};
use adaptkit::federated::secagg::{context, reconstruct, unmask, PublicKeys, Reveals};
use adaptkit::format::patch_file::unhex;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::auth::authenticate;
use crate::db::now;
use crate::error::{ApiError, ApiResult};
use crate::patches::bytes_body;
use crate::rounds::{round_number, try_close};
use crate::tasks::{checked_id, json_body, load_task, TaskRow};

/// Who is in which phase, kept on the round's row as JSON.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Membership {
    pub threshold: usize,
    /// Device ids with keys, in order (the participants; indexes refer to this list).
    pub participants: Vec<String>,
    pub shared: Vec<usize>,
    pub masked: Vec<usize>,
}

struct SecRound {
    phase: String,
    deadline: i64,
    members: Membership,
}

async fn load(state: &crate::State, task: &str, round: i64) -> ApiResult<SecRound> {
    let row = sqlx::query(
        "SELECT phase, phase_deadline, members, status FROM rounds WHERE task = $1 AND number = $2",
    )
    .bind(task)
    .bind(round)
    .fetch_optional(&state.db.pool)
    .await?
    .ok_or_else(|| ApiError::not_found(format!("task {task} has no round {round}")))?;
    let phase: Option<String> = row.try_get("phase")?;
    let phase = phase.ok_or_else(|| ApiError::conflict(format!("round {round} is not a secure round")))?;
    let members: Option<String> = row.try_get("members")?;
    let members = members
        .map(|m| serde_json::from_str(&m))
        .transpose()
        .map_err(|e| ApiError::internal("reading a round", e))?
        .unwrap_or_default();
    Ok(SecRound { phase, deadline: row.try_get::<Option<i64>, _>("phase_deadline")?.unwrap_or(0), members })
}

fn hex32(text: &str, what: &str) -> ApiResult<[u8; 32]> {
    let bytes = unhex(text)
        .filter(|_| text.len() <= 64)
        .ok_or_else(|| ApiError::bad_request(format!("{what}: not hex")))?;
    bytes.try_into().map_err(|_| ApiError::bad_request(format!("{what}: not 32 bytes")))
}

fn in_phase(round: &SecRound, phase: &str) -> ApiResult<()> {
    if round.phase == phase {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::CONFLICT,
            "wrong_phase",
            format!("the round is in its '{}' phase, not '{phase}'", round.phase),
        ))
    }
}

fn index_of(members: &Membership, device: &str) -> ApiResult<usize> {
    members.participants.iter().position(|d| d == device).ok_or_else(|| {
        ApiError::new(StatusCode::CONFLICT, "round_closed", "this device is not a participant of the round")
    })
}

/// Where the secure round is; to a device in the unmask phase, the shares sent to it.
#[utoipa::path(get, path = "/v1/tasks/{task}/rounds/{round}/secagg", tag = "rounds", security(("bearer" = [])),
    params(("task" = String, Path, pattern = r"^[A-Za-z0-9_-]{1,100}$"), ("round" = u64, Path, minimum = 1)),
    responses((status = 200, body = SecAggView), (status = 400, body = ErrorDoc), (status = 401, body = ErrorDoc), (status = 403, body = ErrorDoc), (status = 404, body = ErrorDoc), (status = 409, body = ErrorDoc)))]
pub async fn view(
    State(state): State<crate::State>,
    headers: HeaderMap,
    Path((task, round)): Path<(String, String)>,
) -> ApiResult<Json<SecAggView>> {
    let who = authenticate(&state, &headers).await?;
    let device = who.member_of(checked_id(&task)?)?.map(str::to_string);
    let number = round_number(&round)?;
    advance(&state, &task, number).await?;
    let r = load(&state, &task, number).await?;
    let keys = sqlx::query("SELECT device, c_pk, s_pk FROM secagg_keys WHERE task = $1 AND round = $2")
        .bind(&task)
        .bind(number)
        .fetch_all(&state.db.pool)
        .await?;
    let mut participants = Vec::new();
    for id in &r.members.participants {
        let row = keys.iter().find(|k| k.try_get::<String, _>("device").ok().as_deref() == Some(id.as_str()));
        let row = row.ok_or_else(|| ApiError::internal("reading a round", format!("no keys for {id}")))?;
        participants.push(Participant {
            device: id.clone(),
            c: row.try_get("c_pk")?,
            s: row.try_get("s_pk")?,
        });
    }
    let mut inbox = Vec::new();
    if let (Some(device), "unmask" | "done") = (&device, r.phase.as_str()) {
        let rows = sqlx::query(
            "SELECT sender, ciphertext FROM secagg_shares WHERE task = $1 AND round = $2 AND receiver = $3",
        )
        .bind(&task)
        .bind(number)
        .bind(device)
        .fetch_all(&state.db.pool)
        .await?;
        for row in rows {
            let sender: String = row.try_get("sender")?;
            if let Some(i) = r.members.participants.iter().position(|d| *d == sender) {
                inbox.push((i, row.try_get("ciphertext")?));
            }
        }
        inbox.sort();
    }
    Ok(Json(SecAggView {
        phase: r.phase,
        deadline_at: r.deadline,
        threshold: r.members.threshold,
        participants,
        shared: r.members.shared,
        masked: r.members.masked,
        inbox,
    }))
}

/// A device's public keys for the round (key phase).
#[utoipa::path(put, path = "/v1/tasks/{task}/rounds/{round}/secagg/keys", tag = "rounds", request_body = SecAggKeys, security(("bearer" = [])),
    params(("task" = String, Path, pattern = r"^[A-Za-z0-9_-]{1,100}$"), ("round" = u64, Path, minimum = 1)),
    responses((status = 204), (status = 400, body = ErrorDoc), (status = 401, body = ErrorDoc), (status = 403, body = ErrorDoc), (status = 404, body = ErrorDoc), (status = 409, body = ErrorDoc)))]
pub async fn keys(
    State(state): State<crate::State>,
    headers: HeaderMap,
    Path((task, round)): Path<(String, String)>,
    body: Result<Json<SecAggKeys>, JsonRejection>,
) -> ApiResult<StatusCode> {
    let who = authenticate(&state, &headers).await?;
    let device = who.device_of(checked_id(&task)?)?.to_string();
    let number = round_number(&round)?;
    let keys = json_body(body)?;
    hex32(&keys.c, "c")?;
    hex32(&keys.s, "s")?;
    in_phase(&load(&state, &task, number).await?, "keys")?;
    let inserted = sqlx::query(
        "INSERT INTO secagg_keys (task, round, device, c_pk, s_pk, created_at) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (task, round, device) DO NOTHING",
    )
    .bind(&task)
    .bind(number)
    .bind(&device)
    .bind(&keys.c)
    .bind(&keys.s)
    .bind(now())
    .execute(&state.db.pool)
    .await?
    .rows_affected();
    if inserted == 0 {
        let row =
            sqlx::query("SELECT c_pk, s_pk FROM secagg_keys WHERE task = $1 AND round = $2 AND device = $3")
                .bind(&task)
                .bind(number)
                .bind(&device)
                .fetch_one(&state.db.pool)
                .await?;
        if row.try_get::<String, _>("c_pk")? != keys.c || row.try_get::<String, _>("s_pk")? != keys.s {
            return Err(ApiError::conflict("this device already sent other keys for this round"));
        }
    }
    advance(&state, &task, number).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A participant's encrypted shares, one box per participant (share phase).
#[utoipa::path(put, path = "/v1/tasks/{task}/rounds/{round}/secagg/shares", tag = "rounds", request_body = SecAggShares, security(("bearer" = [])),
    params(("task" = String, Path, pattern = r"^[A-Za-z0-9_-]{1,100}$"), ("round" = u64, Path, minimum = 1)),
    responses((status = 204), (status = 400, body = ErrorDoc), (status = 401, body = ErrorDoc), (status = 403, body = ErrorDoc), (status = 404, body = ErrorDoc), (status = 409, body = ErrorDoc)))]
pub async fn shares(
    State(state): State<crate::State>,
    headers: HeaderMap,
    Path((task, round)): Path<(String, String)>,
    body: Result<Json<SecAggShares>, JsonRejection>,
) -> ApiResult<StatusCode> {
    let who = authenticate(&state, &headers).await?;
    let device = who.device_of(checked_id(&task)?)?.to_string();
    let number = round_number(&round)?;
    let shares = json_body(body)?;
    let r = load(&state, &task, number).await?;
    in_phase(&r, "shares")?;
    index_of(&r.members, &device)?;
    if shares.boxes.len() != r.members.participants.len()
        || shares.boxes.iter().any(|b| b.len() > 4096 || unhex(b).is_none())
    {
        return Err(ApiError::bad_request(format!(
            "shares: {} hex boxes expected, one per participant",
            r.members.participants.len()
        )));
    }
    let mut tx = state.db.pool.begin().await?;
    for (receiver, ciphertext) in r.members.participants.iter().zip(&shares.boxes) {
        sqlx::query(
            "INSERT INTO secagg_shares (task, round, sender, receiver, ciphertext) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (task, round, sender, receiver) DO NOTHING",
        )
        .bind(&task)
        .bind(number)
        .bind(&device)
        .bind(receiver)
        .bind(ciphertext)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    advance(&state, &task, number).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A participant's masked input: its update in fixed point plus its masks, mod 2³², as
/// little-endian u32 (mask phase).
#[utoipa::path(put, path = "/v1/tasks/{task}/rounds/{round}/secagg/masked", tag = "rounds",
    request_body(content = Vec<u8>, content_type = "application/octet-stream"), security(("bearer" = [])),
    params(("task" = String, Path, pattern = r"^[A-Za-z0-9_-]{1,100}$"), ("round" = u64, Path, minimum = 1)),
    responses((status = 204), (status = 400, body = ErrorDoc), (status = 401, body = ErrorDoc), (status = 403, body = ErrorDoc), (status = 404, body = ErrorDoc), (status = 409, body = ErrorDoc), (status = 413, body = ErrorDoc)))]
pub async fn masked(
    State(state): State<crate::State>,
    headers: HeaderMap,
    Path((task, round)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<StatusCode> {
    let who = authenticate(&state, &headers).await?;
    let device = who.device_of(checked_id(&task)?)?.to_string();
    let number = round_number(&round)?;
    let body = bytes_body(body)?;
    let task_row = load_task(&state, &task).await?;
    let r = load(&state, &task, number).await?;
    in_phase(&r, "masked")?;
    let me = index_of(&r.members, &device)?;
    if !r.members.shared.contains(&me) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "round_closed",
            "this device's shares did not arrive in time",
        ));
    }
    let expected = sent_values(&state, &task_row, number).await?;
    if body.len() != 4 * expected {
        return Err(ApiError::bad_request(format!(
            "a masked input has {expected} u32 values, not {} bytes",
            body.len()
        )));
    }
    let digest = state.blobs.put(body.to_vec()).await.map_err(|e| ApiError::internal("the blob store", e))?;
    let inserted = sqlx::query(
        "INSERT INTO updates (task, round, device, digest, base, weight, bytes, created_at) VALUES ($1, $2, $3, $4, '', 1, $5, $6)
         ON CONFLICT (task, round, device) DO NOTHING",
    )
    .bind(&task)
    .bind(number)
    .bind(&device)
    .bind(&digest)
    .bind(body.len() as i64)
    .bind(now())
    .execute(&state.db.pool)
    .await?
    .rows_affected();
    if inserted == 0 {
        let existing =
            crate::rounds::stored_update(&state, &task, number, &device).await?.unwrap_or_default();
        if existing != digest {
            return Err(ApiError::conflict("this device already sent a different masked input"));
        }
    }
    advance(&state, &task, number).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A survivor's shares of the survivors' self-mask seeds and the dropped participants' mask
/// secrets (unmask phase).
#[utoipa::path(put, path = "/v1/tasks/{task}/rounds/{round}/secagg/reveals", tag = "rounds", request_body = SecAggReveals, security(("bearer" = [])),
    params(("task" = String, Path, pattern = r"^[A-Za-z0-9_-]{1,100}$"), ("round" = u64, Path, minimum = 1)),
    responses((status = 204), (status = 400, body = ErrorDoc), (status = 401, body = ErrorDoc), (status = 403, body = ErrorDoc), (status = 404, body = ErrorDoc), (status = 409, body = ErrorDoc)))]
pub async fn reveals(
    State(state): State<crate::State>,
    headers: HeaderMap,
    Path((task, round)): Path<(String, String)>,
    body: Result<Json<SecAggReveals>, JsonRejection>,
) -> ApiResult<StatusCode> {
    let who = authenticate(&state, &headers).await?;
    let device = who.device_of(checked_id(&task)?)?.to_string();
    let number = round_number(&round)?;
    let reveals = json_body(body)?;
    let r = load(&state, &task, number).await?;
    in_phase(&r, "unmask")?;
    let me = index_of(&r.members, &device)?;
    if !r.members.masked.contains(&me) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "round_closed",
            "only devices whose masked input arrived reveal",
        ));
    }
    let dropped: Vec<usize> =
        r.members.shared.iter().copied().filter(|i| !r.members.masked.contains(i)).collect();
    let mut seeds: Vec<usize> = reveals.seeds.iter().map(|(i, _)| *i).collect();
    let mut secrets: Vec<usize> = reveals.secrets.iter().map(|(i, _)| *i).collect();
    seeds.sort();
    secrets.sort();
    // Exactly the survivors' seeds and the dropped devices' secrets: never both of one device.
    if seeds != r.members.masked || secrets != dropped {
        return Err(ApiError::bad_request(format!(
            "reveal the seeds of participants {:?} and the secrets of {dropped:?}",
            r.members.masked
        )));
    }
    for (_, share) in reveals.seeds.iter().chain(&reveals.secrets) {
        hex32(share, "a share")?;
    }
    sqlx::query("INSERT INTO secagg_reveals (task, round, device, payload) VALUES ($1, $2, $3, $4) ON CONFLICT (task, round, device) DO NOTHING")
        .bind(&task)
        .bind(number)
        .bind(&device)
        .bind(serde_json::to_string(&reveals).unwrap_or_default())
        .execute(&state.db.pool)
        .await?;
    advance(&state, &task, number).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// How many values an update of this task carries (its masked input's length).
async fn sent_values(state: &crate::State, task: &TaskRow, round: i64) -> ApiResult<usize> {
    let global = crate::rounds::round_global(state, task, round).await?;
    let values = global.values().map_err(|e| ApiError::internal("a stored patch", e))?;
    Ok(values
        .iter()
        .filter(|v| adaptkit::federated::update::is_sent(task.spec.rule, &v.name))
        .map(|v| v.values.len())
        .sum())
}

/// Moves a secure round on when its phase is complete (or past its deadline with enough
/// devices); the unmask phase ends in aggregation.
pub async fn advance(state: &crate::State, task: &str, round: i64) -> ApiResult<()> {
    let task_row = load_task(state, task).await?;
    let r = load(state, task, round).await?;
    let spec = &task_row.spec;
    let t = now();
    let late = r.deadline <= t;
    let count = |sql: &'static str| async move {
        let n: i64 = sqlx::query(sql).bind(task).bind(round).fetch_one(&state.db.pool).await?.try_get("n")?;
        Ok::<usize, ApiError>(n as usize)
    };
    let mut members = r.members.clone();
    let next = match r.phase.as_str() {
        "keys" => {
            let n = count("SELECT COUNT(*) AS n FROM secagg_keys WHERE task = $1 AND round = $2").await?;
            if !(n >= spec.max_clients || (late && n >= spec.min_clients)) {
                return extend(state, task, round, &r, late, spec.round_seconds).await;
            }
            let rows =
                sqlx::query("SELECT device FROM secagg_keys WHERE task = $1 AND round = $2 ORDER BY device")
                    .bind(task)
                    .bind(round)
                    .fetch_all(&state.db.pool)
                    .await?;
            members.participants = rows.iter().map(|r| r.try_get("device")).collect::<Result<_, _>>()?;
            members.participants.truncate(adaptkit::federated::secagg::MAX_DEVICES);
            members.threshold = members.participants.len() / 2 + 1;
            "shares"
        }
        "shares" => {
            let rows =
                sqlx::query("SELECT DISTINCT sender FROM secagg_shares WHERE task = $1 AND round = $2")
                    .bind(task)
                    .bind(round)
                    .fetch_all(&state.db.pool)
                    .await?;
            let senders: Vec<String> = rows.iter().map(|r| r.try_get("sender")).collect::<Result<_, _>>()?;
            members.shared = indexes(&members.participants, &senders);
            let enough = members.shared.len() >= members.threshold.max(spec.min_clients);
            if !(members.shared.len() == members.participants.len() || (late && enough)) {
                return extend(state, task, round, &r, late, spec.round_seconds).await;
            }
            "masked"
        }
        "masked" => {
            let rows = sqlx::query("SELECT device FROM updates WHERE task = $1 AND round = $2")
                .bind(task)
                .bind(round)
                .fetch_all(&state.db.pool)
                .await?;
            let senders: Vec<String> = rows.iter().map(|r| r.try_get("device")).collect::<Result<_, _>>()?;
            members.masked = indexes(&members.participants, &senders);
            let enough = members.masked.len() >= members.threshold.max(spec.min_clients);
            if !(members.masked.len() == members.shared.len() || (late && enough)) {
                return extend(state, task, round, &r, late, spec.round_seconds).await;
            }
            "unmask"
        }
        "unmask" => {
            let n = count("SELECT COUNT(*) AS n FROM secagg_reveals WHERE task = $1 AND round = $2").await?;
            if !(n == members.masked.len() || (late && n >= members.threshold)) {
                return extend(state, task, round, &r, late, spec.round_seconds).await;
            }
            "done"
        }
        _ => return Ok(()),
    };
    let changed = sqlx::query(
        "UPDATE rounds SET phase = $1, members = $2, phase_deadline = $3, received = $4 WHERE task = $5 AND number = $6 AND phase = $7",
    )
    .bind(next)
    .bind(serde_json::to_string(&members).unwrap_or_default())
    .bind(t + spec.round_seconds as i64)
    .bind(members.masked.len() as i64)
    .bind(task)
    .bind(round)
    .bind(&r.phase)
    .execute(&state.db.pool)
    .await?
    .rows_affected();
    if changed == 1 && next == "done" {
        try_close(state, task, round, true).await?;
    }
    Ok(())
}

/// Past the deadline without enough devices: another period.
async fn extend(
    state: &crate::State,
    task: &str,
    round: i64,
    r: &SecRound,
    late: bool,
    seconds: u64,
) -> ApiResult<()> {
    if late {
        sqlx::query("UPDATE rounds SET phase_deadline = $1 WHERE task = $2 AND number = $3 AND phase = $4 AND phase_deadline = $5")
            .bind(now() + seconds as i64)
            .bind(task)
            .bind(round)
            .bind(&r.phase)
            .bind(r.deadline)
            .execute(&state.db.pool)
            .await?;
    }
    Ok(())
}

fn indexes(participants: &[String], devices: &[String]) -> Vec<usize> {
    let mut out: Vec<usize> =
        participants.iter().enumerate().filter(|(_, d)| devices.contains(d)).map(|(i, _)| i).collect();
    out.sort();
    out
}

/// The mean of the survivors' updates of a finished secure round: their masked inputs summed,
/// unmasked with the rebuilt secrets, decoded.
pub async fn unmasked_mean(state: &crate::State, task: &str, round: i64) -> ApiResult<(Vec<f32>, usize)> {
    let r = load(state, task, round).await?;
    let m = &r.members;
    let keys = sqlx::query("SELECT device, c_pk, s_pk FROM secagg_keys WHERE task = $1 AND round = $2")
        .bind(task)
        .bind(round)
        .fetch_all(&state.db.pool)
        .await?;
    let mut public = Vec::new();
    for id in &m.participants {
        let row = keys.iter().find(|k| k.try_get::<String, _>("device").ok().as_deref() == Some(id.as_str()));
        let row = row.ok_or_else(|| ApiError::internal("unmasking", format!("no keys for {id}")))?;
        public.push(PublicKeys {
            c: hex32(&row.try_get::<String, _>("c_pk")?, "c")?,
            s: hex32(&row.try_get::<String, _>("s_pk")?, "s")?,
        });
    }
    // Only the devices that shared took part in the masks.
    let masking: Vec<PublicKeys> = m.shared.iter().map(|&i| public[i]).collect();
    let position = |i: usize| m.shared.iter().position(|&s| s == i).expect("a masked device shared");
    let rows = sqlx::query("SELECT device, digest FROM updates WHERE task = $1 AND round = $2")
        .bind(task)
        .bind(round)
        .fetch_all(&state.db.pool)
        .await?;
    let mut sum: Vec<u32> = Vec::new();
    for row in &rows {
        let device: String = row.try_get("device")?;
        let Some(i) = m.participants.iter().position(|d| *d == device) else { continue };
        if !m.masked.contains(&i) {
            continue;
        }
        let bytes = crate::patches::blob(state, &row.try_get::<String, _>("digest")?).await?;
        sum.resize(bytes.len() / 4, 0);
        for (s, chunk) in sum.iter_mut().zip(bytes.chunks_exact(4)) {
            *s = s.wrapping_add(u32::from_le_bytes(chunk.try_into().expect("4 bytes")));
        }
    }
    let reveal_rows = sqlx::query(
        "SELECT device, payload FROM secagg_reveals WHERE task = $1 AND round = $2 ORDER BY device",
    )
    .bind(task)
    .bind(round)
    .fetch_all(&state.db.pool)
    .await?;
    let mut by_owner_seed: std::collections::BTreeMap<usize, Vec<(usize, [u8; 32])>> = Default::default();
    let mut by_owner_secret: std::collections::BTreeMap<usize, Vec<(usize, [u8; 32])>> = Default::default();
    for row in reveal_rows.iter().take(m.threshold.max(1)) {
        let device: String = row.try_get("device")?;
        let revealer = m
            .participants
            .iter()
            .position(|d| *d == device)
            .ok_or_else(|| ApiError::internal("unmasking", "a revealer is not a participant"))?;
        let payload: SecAggReveals = serde_json::from_str(&row.try_get::<String, _>("payload")?)
            .map_err(|e| ApiError::internal("unmasking", e))?;
        for (owner, share) in payload.seeds {
            by_owner_seed.entry(owner).or_default().push((revealer, hex32(&share, "share")?));
        }
        for (owner, share) in payload.secrets {
            by_owner_secret.entry(owner).or_default().push((revealer, hex32(&share, "share")?));
        }
    }
    let survivors: Vec<usize> = m.masked.iter().map(|&i| position(i)).collect();
    let reveals = Reveals {
        seeds: by_owner_seed.iter().map(|(&o, shares)| (position(o), reconstruct(shares))).collect(),
        dropped: by_owner_secret.iter().map(|(&o, shares)| (position(o), reconstruct(shares))).collect(),
    };
    unmask(&mut sum, &masking, &survivors, &reveals, &context(task, round as u64));
    Ok((adaptkit::federated::secagg::decode_mean(&sum, m.masked.len()), m.masked.len()))
}
