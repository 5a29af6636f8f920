//! Rounds: devices upload one update each to the open round; the round closes as soon as it has
//! `max_clients` updates, or at its deadline with at least `min_clients` (with fewer it waits
//! another period), or when the operator closes it. Closing is claimed in the database by one
//! process, which aggregates, publishes the next shared adapter (ported to every base) and opens
//! the next round, all in one transaction; a claim whose process died expires after the lease,
//! and the same inputs give the same adapter (the signature is deterministic), so a retry is
//! harmless.

use adaptkit::federated::api::{ApiError as ErrorDoc, RoundResult, RoundView, UploadReceipt};
use adaptkit::federated::{update, AggregateReport, Aggregator, Contribution, TaskSpec};
use adaptkit::patch::{DenseType, Patch};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde_json::json;
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use crate::auth::{authenticate, random_hex};
use crate::db::now;
use crate::error::{ApiError, ApiResult};
use crate::patches::{blob, bytes_body, latest_global, parse_patch, port_patch, record, store_signed};
use crate::tasks::{bases, checked_id, load_task, TaskRow};

/// Opens round `number`; a secure round starts in its key phase.
pub async fn open_round(
    tx: &mut Transaction<'_, Any>,
    task: &str,
    number: i64,
    spec: &TaskSpec,
) -> ApiResult<()> {
    let opened = now();
    let deadline = opened + spec.round_seconds as i64;
    sqlx::query(
        "INSERT INTO rounds (task, number, status, opened_at, deadline_at, received, claim, claimed_at, closed_at, result,
                             phase, phase_deadline, members)
         VALUES ($1, $2, 'open', $3, $4, 0, NULL, NULL, NULL, NULL, $5, $6, NULL) ON CONFLICT (task, number) DO NOTHING",
    )
    .bind(task)
    .bind(number)
    .bind(opened)
    .bind(deadline)
    .bind(spec.secure_aggregation.then_some("keys"))
    .bind(deadline)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn round_row(state: &crate::State, task: &str, number: Option<i64>) -> ApiResult<AnyRow> {
    let query = match number {
        Some(_) => "SELECT * FROM rounds WHERE task = $1 AND number = $2",
        None => "SELECT * FROM rounds WHERE task = $1 AND number >= $2 ORDER BY number DESC LIMIT 1",
    };
    sqlx::query(query).bind(task).bind(number.unwrap_or(0)).fetch_optional(&state.db.pool).await?.ok_or_else(
        || match number {
            Some(n) => ApiError::not_found(format!("task {task} has no round {n}")),
            None => ApiError::not_found(format!(
                "task {task} has no round yet: its shared adapter is not published"
            )),
        },
    )
}

async fn round_view(state: &crate::State, task: &TaskRow, row: &AnyRow) -> ApiResult<RoundView> {
    let number: i64 = row.try_get("number")?;
    let training = bases(state, &task.id).await?.into_iter().next().map(|(b, _)| b).unwrap_or_default();
    let global = sqlx::query("SELECT digest FROM globals WHERE task = $1 AND base = $2 AND round = $3")
        .bind(&task.id)
        .bind(&training)
        .bind(number)
        .fetch_optional(&state.db.pool)
        .await?
        .map(|r| r.try_get("digest"))
        .transpose()?;
    let result: Option<String> = row.try_get("result")?;
    Ok(RoundView {
        task: task.id.clone(),
        round: number as u64,
        status: row.try_get("status")?,
        opened_at: row.try_get("opened_at")?,
        deadline_at: row.try_get("deadline_at")?,
        received: row.try_get::<i64, _>("received")? as u64,
        min_clients: task.spec.min_clients as u64,
        max_clients: task.spec.max_clients as u64,
        global,
        result: result
            .map(|r| serde_json::from_str(&r))
            .transpose()
            .map_err(|e| ApiError::internal("reading a round", e))?,
    })
}

/// The task's latest round (the operator or its devices).
#[utoipa::path(get, path = "/v1/tasks/{task}/rounds/current", tag = "rounds", security(("bearer" = [])), params(("task" = String, Path, pattern = r"^[A-Za-z0-9_-]{1,100}$")),
    responses((status = 200, body = RoundView), (status = 400, body = ErrorDoc), (status = 401, body = ErrorDoc), (status = 403, body = ErrorDoc), (status = 404, body = ErrorDoc)))]
pub async fn current(
    State(state): State<crate::State>,
    headers: HeaderMap,
    Path(task): Path<String>,
) -> ApiResult<Json<RoundView>> {
    authenticate(&state, &headers).await?.member_of(checked_id(&task)?)?;
    let task = load_task(&state, &task).await?;
    let row = round_row(&state, &task.id, None).await?;
    Ok(Json(round_view(&state, &task, &row).await?))
}

/// One round, with its result once closed (the operator or its devices).
#[utoipa::path(get, path = "/v1/tasks/{task}/rounds/{round}", tag = "rounds", security(("bearer" = [])), params(("task" = String, Path, pattern = r"^[A-Za-z0-9_-]{1,100}$"), ("round" = u64, Path, minimum = 1)),
    responses((status = 200, body = RoundView), (status = 400, body = ErrorDoc), (status = 401, body = ErrorDoc), (status = 403, body = ErrorDoc), (status = 404, body = ErrorDoc)))]
pub async fn get_round(
    State(state): State<crate::State>,
    headers: HeaderMap,
    Path((task, round)): Path<(String, String)>,
) -> ApiResult<Json<RoundView>> {
    authenticate(&state, &headers).await?.member_of(checked_id(&task)?)?;
    let task = load_task(&state, &task).await?;
    let row = round_row(&state, &task.id, Some(round_number(&round)?)).await?;
    Ok(Json(round_view(&state, &task, &row).await?))
}

pub fn round_number(text: &str) -> ApiResult<i64> {
    text.parse::<i64>().ok().filter(|n| *n >= 1).ok_or_else(|| {
        ApiError::bad_request(format!(
            "round '{}' is not a round number",
            text.chars().take(40).collect::<String>()
        ))
    })
}

/// Uploads this device's update for an open round: an `.akp` patch of the change of each
/// trained tensor from the round's shared adapter (under FFA-LoRA the `B`s only), made for one
/// of the task's bases. One per device and round: the same bytes again are acknowledged as a
/// duplicate and count once; different bytes are refused.
#[utoipa::path(put, path = "/v1/tasks/{task}/rounds/{round}/update", tag = "rounds",
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "An .akp patch of the update"),
    security(("bearer" = [])), params(("task" = String, Path, pattern = r"^[A-Za-z0-9_-]{1,100}$"), ("round" = u64, Path, minimum = 1)),
    responses((status = 201, body = UploadReceipt), (status = 200, body = UploadReceipt, description = "A duplicate of an update already received"),
        (status = 400, body = ErrorDoc), (status = 401, body = ErrorDoc), (status = 403, body = ErrorDoc), (status = 404, body = ErrorDoc),
        (status = 409, body = ErrorDoc), (status = 413, body = ErrorDoc), (status = 422, body = ErrorDoc), (status = 429, body = ErrorDoc)))]
pub async fn upload(
    State(state): State<crate::State>,
    headers: HeaderMap,
    Path((task, round)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<UploadReceipt>)> {
    let who = authenticate(&state, &headers).await?;
    let device = who.device_of(checked_id(&task)?)?.to_string();
    let task = load_task(&state, &task).await?;
    let number = round_number(&round)?;
    let body = bytes_body(body)?;
    let row = round_row(&state, &task.id, Some(number)).await?;
    // A retry of an update already received is acknowledged again, whatever the round's state
    // since: the device learns that it counted.
    if let Some(existing) = stored_update(&state, &task.id, number, &device).await? {
        if existing != crate::blobs::digest(&body) {
            return Err(ApiError::conflict(format!(
                "this device already sent a different update for round {number}"
            )));
        }
        let received: i64 = row.try_get("received")?;
        let receipt = UploadReceipt {
            task: task.id,
            round: number as u64,
            device,
            digest: existing,
            received: received as u64,
            duplicate: true,
        };
        return Ok((StatusCode::OK, Json(receipt)));
    }
    let status: String = row.try_get("status")?;
    if status != "open" {
        return Err(closed(number, &status));
    }
    if task.spec.secure_aggregation {
        return Err(ApiError::conflict(
            "this task aggregates securely: send masked inputs (…/secagg/masked)",
        ));
    }
    let patch = parse_patch(&body, "the update")?;
    let weight = check_update(&state, &task, number, &patch).await?;
    let digest = state.blobs.put(body.to_vec()).await.map_err(|e| ApiError::internal("the blob store", e))?;

    let mut tx = state.db.pool.begin().await?;
    // Count the upload on the round's row first: it locks the row (PostgreSQL) or the database
    // (SQLite), so a claim for aggregation either waits for this transaction or makes it fail.
    let counted = sqlx::query(
        "UPDATE rounds SET received = received + 1 WHERE task = $1 AND number = $2 AND status = 'open'",
    )
    .bind(&task.id)
    .bind(number)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if counted == 0 {
        return Err(closed(number, "closing"));
    }
    let inserted = sqlx::query(
        "INSERT INTO updates (task, round, device, digest, base, weight, bytes, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (task, round, device) DO NOTHING",
    )
    .bind(&task.id)
    .bind(number)
    .bind(&device)
    .bind(&digest)
    .bind(&patch.base.id)
    .bind(weight)
    .bind(body.len() as i64)
    .bind(now())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let duplicate = inserted == 0;
    if duplicate {
        // Undo the count: this device's update is already in.
        tx.rollback().await?;
        let existing = stored_update(&state, &task.id, number, &device).await?.unwrap_or_default();
        if existing != digest {
            return Err(ApiError::conflict(format!(
                "this device already sent a different update for round {number}"
            )));
        }
    } else {
        tx.commit().await?;
    }
    let received: i64 = round_row(&state, &task.id, Some(number)).await?.try_get("received")?;
    if !duplicate && received as usize >= task.spec.max_clients {
        let (state, id) = (state.clone(), task.id.clone());
        tokio::spawn(async move { report(try_close(&state, &id, number, false).await, &id, number) });
    }
    let receipt = UploadReceipt {
        task: task.id,
        round: number as u64,
        device,
        digest,
        received: received as u64,
        duplicate,
    };
    Ok((if duplicate { StatusCode::OK } else { StatusCode::CREATED }, Json(receipt)))
}

/// The digest of the update `device` sent for round `number`, if any.
pub async fn stored_update(
    state: &crate::State,
    task: &str,
    number: i64,
    device: &str,
) -> ApiResult<Option<String>> {
    let row = sqlx::query("SELECT digest FROM updates WHERE task = $1 AND round = $2 AND device = $3")
        .bind(task)
        .bind(number)
        .bind(device)
        .fetch_optional(&state.db.pool)
        .await?;
    Ok(row.map(|r| r.try_get("digest")).transpose()?)
}

fn closed(number: i64, status: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "round_closed",
        format!("round {number} is {status}: pull the current shared adapter"),
    )
}

/// Checks an update against the round it is for; returns its weight in the average.
async fn check_update(state: &crate::State, task: &TaskRow, number: i64, patch: &Patch) -> ApiResult<f64> {
    let known = bases(state, &task.id).await?;
    if !known.iter().any(|(b, _)| *b == patch.base.id) {
        return Err(ApiError::unprocessable(
            "wrong_base",
            format!(
                "the update is for base {}, which task {} does not train",
                patch.base.short_id(),
                task.id
            ),
        ));
    }
    let (digest, round) = latest_global(state, &task.id, &patch.base.id)
        .await?
        .ok_or_else(|| ApiError::conflict("the task has no shared adapter for this base"))?;
    let training = patch.training.as_ref();
    let trained_on = training.and_then(|t| t.get("global")).and_then(|g| g.as_str());
    if round != number || trained_on.is_some_and(|g| g != digest) {
        return Err(ApiError::conflict(format!(
            "the update was not trained from round {number}'s shared adapter: pull it and train again"
        )));
    }
    let global = Patch::from_bytes(&blob(state, &digest).await?, &digest)
        .map_err(|e| ApiError::internal("a stored patch", e))?;
    if patch.config != global.config {
        return Err(ApiError::unprocessable(
            "wrong_method",
            "the update's adapter config is not the shared adapter's",
        ));
    }
    let global_values = global.values().map_err(|e| ApiError::internal("a stored patch", e))?;
    let sent: Vec<_> = global_values.iter().filter(|v| update::is_sent(task.spec.rule, &v.name)).collect();
    let values = patch.values().map_err(|e| ApiError::bad_request(e.to_string()))?;
    if values.len() != sent.len() {
        return Err(ApiError::bad_request(format!(
            "the update has {} tensors; under rule '{}' an update has {}",
            values.len(),
            task.spec.rule.name(),
            sent.len()
        )));
    }
    update::apply(&global_values, &values).map_err(|m| ApiError::bad_request(format!("the update: {m}")))?;
    if task.spec.privacy.is_some() {
        // Every device counts the same under privacy: the accountant's sensitivity is one update.
        return Ok(1.0);
    }
    // Weighted by the tokens it trained on, capped at what the task's settings allow.
    let t = &task.spec.training;
    let cap = (t.steps * t.batch * t.seq) as f64;
    let tokens = training.and_then(|t| t.get("tokens")).and_then(|v| v.as_f64()).unwrap_or(cap);
    Ok(tokens.clamp(1.0, cap))
}

/// Closes a round now (operator): with at least `min_clients` updates it is aggregated.
#[utoipa::path(post, path = "/v1/tasks/{task}/rounds/{round}/close", tag = "rounds", security(("bearer" = [])), params(("task" = String, Path, pattern = r"^[A-Za-z0-9_-]{1,100}$"), ("round" = u64, Path, minimum = 1)),
    responses((status = 200, body = RoundView), (status = 400, body = ErrorDoc), (status = 401, body = ErrorDoc), (status = 403, body = ErrorDoc), (status = 404, body = ErrorDoc), (status = 409, body = ErrorDoc)))]
pub async fn close(
    State(state): State<crate::State>,
    headers: HeaderMap,
    Path((task, round)): Path<(String, String)>,
) -> ApiResult<Json<RoundView>> {
    authenticate(&state, &headers).await?.operator()?;
    let task = load_task(&state, &task).await?;
    let number = round_number(&round)?;
    let row = round_row(&state, &task.id, Some(number)).await?;
    let received: i64 = row.try_get("received")?;
    let status: String = row.try_get("status")?;
    if status == "open" && (received as usize) < task.spec.min_clients {
        return Err(ApiError::conflict(format!(
            "round {number} has {received} updates and needs {} to close",
            task.spec.min_clients
        )));
    }
    try_close(&state, &task.id, number, true).await?;
    let row = round_row(&state, &task.id, Some(number)).await?;
    Ok(Json(round_view(&state, &task, &row).await?))
}

fn report(result: ApiResult<()>, task: &str, number: i64) {
    if let Err(e) = result {
        eprintln!("adaptkit-server: closing round {number} of task {task}: {}", e.message);
    }
}

/// Each process, every tick: rounds past their deadline, and claims whose process died.
pub async fn tick(state: crate::State) {
    loop {
        tokio::time::sleep(state.limits.tick).await;
        let stale = now() - state.limits.aggregation_lease.as_secs() as i64;
        let due = sqlx::query(
            "SELECT task, number, phase FROM rounds
             WHERE (status = 'open' AND (deadline_at <= $1 OR phase_deadline <= $2)) OR (status = 'aggregating' AND claimed_at <= $3)",
        )
        .bind(now())
        .bind(now())
        .bind(stale)
        .fetch_all(&state.db.pool)
        .await;
        match due {
            Ok(rows) => {
                for r in rows {
                    if let (Ok(task), Ok(number)) =
                        (r.try_get::<String, _>("task"), r.try_get::<i64, _>("number"))
                    {
                        let secure = r
                            .try_get::<Option<String>, _>("phase")
                            .ok()
                            .flatten()
                            .is_some_and(|p| p != "done");
                        let result = if secure {
                            crate::secagg::advance(&state, &task, number).await
                        } else {
                            try_close(&state, &task, number, false).await
                        };
                        report(result, &task, number);
                    }
                }
            }
            Err(e) => eprintln!("adaptkit-server: looking for rounds to close: {e}"),
        }
    }
}

/// Closes round `number` if it should close (or `force`, with enough updates) and this process
/// wins the claim; a round past its deadline with too few updates gets another period.
pub async fn try_close(state: &crate::State, task_id: &str, number: i64, force: bool) -> ApiResult<()> {
    let task = load_task(state, task_id).await?;
    let row = round_row(state, task_id, Some(number)).await?;
    let status: String = row.try_get("status")?;
    let received: i64 = row.try_get("received")?;
    let deadline: i64 = row.try_get("deadline_at")?;
    let t = now();
    let lease = state.limits.aggregation_lease.as_secs() as i64;
    let enough = received as usize >= task.spec.min_clients;
    let phase: Option<String> = row.try_get("phase")?;
    if phase.as_deref().is_some_and(|p| p != "done") {
        // A secure round closes when its protocol is done (crate::secagg::advance).
        return Ok(());
    }
    match status.as_str() {
        "open" => {
            let due = received as usize >= task.spec.max_clients || (enough && (force || deadline <= t));
            if !due {
                if deadline <= t && !enough {
                    sqlx::query("UPDATE rounds SET deadline_at = $1 WHERE task = $2 AND number = $3 AND status = 'open' AND deadline_at = $4")
                        .bind(t + task.spec.round_seconds as i64)
                        .bind(task_id)
                        .bind(number)
                        .bind(deadline)
                        .execute(&state.db.pool)
                        .await?;
                }
                return Ok(());
            }
        }
        "aggregating" => {
            let claimed: Option<i64> = row.try_get("claimed_at")?;
            if claimed.is_some_and(|c| c > t - lease) {
                return Ok(());
            }
        }
        _ => return Ok(()),
    }
    let claim = random_hex(8);
    let claimed = sqlx::query(
        "UPDATE rounds SET status = 'aggregating', claim = $1, claimed_at = $2
         WHERE task = $3 AND number = $4 AND (status = 'open' OR (status = 'aggregating' AND claimed_at <= $5))",
    )
    .bind(&claim)
    .bind(t)
    .bind(task_id)
    .bind(number)
    .bind(t - lease)
    .execute(&state.db.pool)
    .await?
    .rows_affected();
    if claimed != 1 {
        return Ok(());
    }
    aggregate_round(state, &task, number, &claim).await
}

/// Aggregates a claimed round, publishes the result and opens the next round.
async fn aggregate_round(state: &crate::State, task: &TaskRow, number: i64, claim: &str) -> ApiResult<()> {
    let known = bases(state, &task.id).await?;
    let global = round_global(state, task, number).await?;
    let (patch, aggregate_report) = if task.spec.secure_aggregation {
        secure_aggregate(state, task, number, global).await?
    } else {
        plain_aggregate(state, task, number, global).await?
    };

    let next = number + 1;
    let stored = store_signed(state, &patch, next).await?;
    let mut ported = Vec::new();
    for (_, fingerprint) in known.iter().skip(1) {
        ported.push(store_signed(state, &port_patch(&patch, fingerprint)?.0, next).await?);
    }
    let epsilon = task.spec.privacy.as_ref().map(|p| p.epsilon(number as u64));
    let budget_left = task.spec.privacy.as_ref().is_none_or(|p| p.epsilon(next as u64) <= p.epsilon_budget);
    let more_rounds = task.spec.max_rounds.is_none_or(|m| (next as u64) <= m);
    let status = match (more_rounds, budget_left) {
        (false, _) => "finished",
        (true, false) => "budget_spent",
        (true, true) => "running",
    };
    let result = RoundResult { aggregate: aggregate_report, global: stored.digest.clone(), epsilon };
    tokio::time::sleep(state.limits.aggregation_delay).await;

    let mut tx = state.db.pool.begin().await?;
    let closed = sqlx::query(
        "UPDATE rounds SET status = 'closed', closed_at = $1, result = $2 WHERE task = $3 AND number = $4 AND status = 'aggregating' AND claim = $5",
    )
    .bind(now())
    .bind(serde_json::to_string(&result).unwrap_or_default())
    .bind(&task.id)
    .bind(number)
    .bind(claim)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if closed != 1 {
        // Another process took the claim over (ours had expired); it publishes the same result.
        tx.rollback().await?;
        return Ok(());
    }
    record(&mut tx, &task.id, &stored, "aggregated").await?;
    for p in &ported {
        record(&mut tx, &task.id, p, "ported").await?;
    }
    sqlx::query("UPDATE tasks SET status = $1, round = $2, epsilon = $3 WHERE id = $4")
        .bind(status)
        .bind(if status == "running" { next } else { number })
        .bind(epsilon)
        .bind(&task.id)
        .execute(&mut *tx)
        .await?;
    if status == "running" {
        open_round(&mut tx, &task.id, next, &task.spec).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The shared adapter round `number` trains (for the task's training base).
pub async fn round_global(state: &crate::State, task: &TaskRow, number: i64) -> ApiResult<Patch> {
    let known = bases(state, &task.id).await?;
    let (training, _) =
        known.first().ok_or_else(|| ApiError::internal("aggregating", "a running task has no base"))?;
    let digest = sqlx::query("SELECT digest FROM globals WHERE task = $1 AND base = $2 AND round = $3")
        .bind(&task.id)
        .bind(training)
        .bind(number)
        .fetch_one(&state.db.pool)
        .await?
        .try_get::<String, _>("digest")?;
    Patch::from_bytes(&blob(state, &digest).await?, &digest)
        .map_err(|e| ApiError::internal("a stored patch", e))
}

/// The next shared adapter from the round's updates, one at a time.
async fn plain_aggregate(
    state: &crate::State,
    task: &TaskRow,
    number: i64,
    global: Patch,
) -> ApiResult<(Patch, AggregateReport)> {
    let rows =
        sqlx::query("SELECT digest, weight FROM updates WHERE task = $1 AND round = $2 ORDER BY device")
            .bind(&task.id)
            .bind(number)
            .fetch_all(&state.db.pool)
            .await?;
    let mut updates = Vec::with_capacity(rows.len());
    for r in &rows {
        updates.push((r.try_get::<String, _>("digest")?, r.try_get::<f64, _>("weight")?));
    }
    let rule = task.spec.rule;
    let round_global = global;
    let blobs = state.blobs.clone();
    let runtime = tokio::runtime::Handle::current();
    // One update in memory at a time (FedAvg keeps the factors it needs): a round's size is
    // bounded by the blob store, not by the server's memory.
    let (patch, aggregate_report) = tokio::task::spawn_blocking(move || -> Result<_, String> {
        let g = round_global.values().map_err(|e| e.to_string())?;
        let mut aggregator = Aggregator::new(rule, &g);
        for (digest, weight) in updates {
            let bytes =
                runtime.block_on(blobs.get(&digest))?.ok_or_else(|| format!("update {digest} is missing"))?;
            let u = Patch::from_bytes(&bytes, "an update").map_err(|e| e.to_string())?;
            let tensors = update::apply(&g, &u.values().map_err(|e| e.to_string())?)?;
            aggregator.add(&Contribution { tensors, weight })?;
        }
        let (tensors, report) = aggregator.finish()?;
        let training = json!({ "round": number, "rule": rule.name(), "contributions": report.contributions });
        let patch = Patch::new(
            round_global.config.clone(),
            &tensors,
            round_global.base.clone(),
            DenseType::F16,
            Some(training),
        )
        .map_err(|e| e.to_string())?;
        Ok((patch, report))
    })
    .await
    .map_err(|e| ApiError::internal("aggregating", e))?
    .map_err(|e| ApiError::internal("aggregating", e))?;

    Ok((patch, aggregate_report))
}

/// The next shared adapter of a secure round: the global plus the unmasked mean update.
async fn secure_aggregate(
    state: &crate::State,
    task: &TaskRow,
    number: i64,
    global: Patch,
) -> ApiResult<(Patch, AggregateReport)> {
    let (mean, devices) = crate::secagg::unmasked_mean(state, &task.id, number).await?;
    let g = global.values().map_err(|e| ApiError::internal("a stored patch", e))?;
    let mut rest = mean.as_slice();
    let mut delta = Vec::new();
    for v in g.iter().filter(|v| update::is_sent(task.spec.rule, &v.name)) {
        let (head, tail) = rest.split_at(v.values.len().min(rest.len()));
        delta.push(adaptkit::patch::Values {
            name: v.name.clone(),
            shape: v.shape.clone(),
            values: head.to_vec(),
        });
        rest = tail;
    }
    let tensors = update::apply(&g, &delta).map_err(|e| ApiError::internal("unmasking", e))?;
    let training =
        json!({ "round": number, "rule": task.spec.rule.name(), "contributions": devices, "secure": true });
    let patch =
        Patch::new(global.config.clone(), &tensors, global.base.clone(), DenseType::F16, Some(training))
            .map_err(|e| ApiError::internal("aggregating", e))?;
    let lora_sites = g.iter().filter(|v| v.name.ends_with(".lora_A.weight")).count();
    Ok((
        patch,
        AggregateReport { rule: task.spec.rule, contributions: devices, lora_sites, min_energy_kept: 1.0 },
    ))
}
