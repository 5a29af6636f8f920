//! The patch registry: each task's shared adapters, one per round and base, signed by the
//! server; the operator publishes (the first shared adapter, or a new one between rounds),
//! lists, fetches and deletes them, and devices fetch the one for their base.

use adaptkit::federated::api::{ApiError as ErrorDoc, PatchView};
use adaptkit::federated::Rule;
use adaptkit::patch::port::{norm_drift, port, targets, DriftReport};
use adaptkit::patch::{Fingerprint, Patch};
use adaptkit::runtime::MethodKind;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use sqlx::{Any, Row, Transaction};

use crate::auth::authenticate;
use crate::db::now;
use crate::error::{ApiError, ApiResult};
use crate::tasks::{bases, checked_id, load_task, TaskRow};

/// A signed patch stored in the blob store, not yet recorded.
pub struct Stored {
    pub digest: String,
    pub base: String,
    pub round: i64,
    pub bytes: i64,
}

/// A binary body, or the right 4xx (413 when over the upload limit).
pub fn bytes_body(body: Result<Bytes, BytesRejection>) -> ApiResult<Bytes> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.body_text())
        } else {
            ApiError::bad_request(e.body_text())
        }
    })
}

/// A patch from a request body: it parses, its checksum holds, every value is finite.
pub fn parse_patch(bytes: &[u8], label: &str) -> ApiResult<Patch> {
    let patch = Patch::from_bytes(bytes, label).map_err(|e| ApiError::bad_request(e.to_string()))?;
    for v in patch.values().map_err(|e| ApiError::bad_request(e.to_string()))? {
        if let Some(bad) = v.values.iter().find(|x| !x.is_finite()) {
            return Err(ApiError::bad_request(format!("{label}: tensor '{}' holds {bad}", v.name)));
        }
    }
    Ok(patch)
}

/// Signs `patch` with the server's key and stores it.
pub async fn store_signed(state: &crate::State, patch: &Patch, round: i64) -> ApiResult<Stored> {
    let mut unsigned = patch.clone();
    unsigned.signer = None;
    let bytes = unsigned.to_bytes(Some(&state.key));
    let len = bytes.len() as i64;
    let digest = state.blobs.put(bytes).await.map_err(|e| ApiError::internal("the blob store", e))?;
    Ok(Stored { digest, base: patch.base.id.clone(), round, bytes: len })
}

/// Records a stored patch as the shared adapter of `round` for its base.
pub async fn record(
    tx: &mut Transaction<'_, Any>,
    task: &str,
    stored: &Stored,
    kind: &str,
) -> ApiResult<PatchView> {
    let created_at = now();
    sqlx::query(
        "INSERT INTO patches (task, digest, base, round, kind, bytes, created_at, deleted) VALUES ($1, $2, $3, $4, $5, $6, $7, 0)
         ON CONFLICT (task, digest) DO UPDATE SET deleted = 0",
    )
    .bind(task)
    .bind(&stored.digest)
    .bind(&stored.base)
    .bind(stored.round)
    .bind(kind)
    .bind(stored.bytes)
    .bind(created_at)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "INSERT INTO globals (task, base, round, digest) VALUES ($1, $2, $3, $4)
         ON CONFLICT (task, base, round) DO UPDATE SET digest = excluded.digest",
    )
    .bind(task)
    .bind(&stored.base)
    .bind(stored.round)
    .bind(&stored.digest)
    .execute(&mut **tx)
    .await?;
    Ok(PatchView {
        digest: stored.digest.clone(),
        task: task.to_string(),
        base: stored.base.clone(),
        round: stored.round as u64,
        kind: kind.to_string(),
        bytes: stored.bytes as u64,
        created_at,
    })
}

/// The latest shared adapter for `base`: its digest and the round it trains.
pub async fn latest_global(state: &crate::State, task: &str, base: &str) -> ApiResult<Option<(String, i64)>> {
    let row = sqlx::query(
        "SELECT digest, round FROM globals WHERE task = $1 AND base = $2 ORDER BY round DESC LIMIT 1",
    )
    .bind(task)
    .bind(base)
    .fetch_optional(&state.db.pool)
    .await?;
    Ok(match row {
        Some(r) => Some((r.try_get("digest")?, r.try_get("round")?)),
        None => None,
    })
}

/// A blob that the database says exists.
pub async fn blob(state: &crate::State, digest: &str) -> ApiResult<Vec<u8>> {
    state
        .blobs
        .get(digest)
        .await
        .map_err(|e| ApiError::internal("the blob store", e))?
        .ok_or_else(|| ApiError::internal("the blob store", format!("blob {digest} is missing")))
}

/// The task's current shared adapter (of its training base) ported to `fingerprint` with
/// λ = 1 and the drift its norms show; `None` before the task has one.
pub async fn port_to(
    state: &crate::State,
    task: &TaskRow,
    fingerprint: &Fingerprint,
) -> ApiResult<(Option<Stored>, Option<DriftReport>)> {
    let known = bases(state, &task.id).await?;
    let Some((training, _)) = known.first() else { return Ok((None, None)) };
    let Some((digest, round)) = latest_global(state, &task.id, training).await? else {
        return Ok((None, None));
    };
    let patch = Patch::from_bytes(&blob(state, &digest).await?, &digest)
        .map_err(|e| ApiError::internal("a stored patch", e))?;
    let (ported, drift) = port_patch(&patch, fingerprint)?;
    Ok((Some(store_signed(state, &ported, round).await?), Some(drift)))
}

/// `patch` ported to `fingerprint` (λ = 1) and the drift report.
pub fn port_patch(patch: &Patch, fingerprint: &Fingerprint) -> ApiResult<(Patch, DriftReport)> {
    let drift = norm_drift(&patch.base, fingerprint, &targets(patch, patch.base.layers));
    let ported = port(patch, fingerprint, 1.0, &drift)
        .map_err(|e| ApiError::unprocessable("wrong_base", e.to_string()))?;
    Ok((ported, drift))
}

pub async fn publish_ported(
    tx: &mut Transaction<'_, Any>,
    task: &str,
    stored: Stored,
) -> ApiResult<PatchView> {
    record(tx, task, &stored, "ported").await
}

/// What a task's rule needs of its adapter.
fn check_method(rule: Rule, patch: &Patch) -> ApiResult<()> {
    if rule == Rule::Ffa {
        let lora: MethodKind = "lora".parse().map_err(|e| ApiError::internal("the method registry", e))?;
        let frozen = patch.config.get("adaptkit_freeze_a").and_then(|v| v.as_bool()) == Some(true);
        if patch.method != lora || !frozen {
            return Err(ApiError::unprocessable(
                "wrong_method",
                "an FFA-LoRA task needs a LoRA adapter with A frozen (train or create it with freeze_a)",
            ));
        }
    }
    Ok(())
}

/// Publishes a patch as the task's shared adapter (operator). The first one fixes the task's
/// training base and opens round 1; later ones are accepted between rounds only (while a round
/// is open its devices train the current one). It is re-signed with the server's key and ported
/// to every other registered base.
#[utoipa::path(post, path = "/v1/tasks/{task}/patches", tag = "patches", request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "An .akp patch"),
    security(("bearer" = [])), params(("task" = String, Path, pattern = r"^[A-Za-z0-9_-]{1,100}$")),
    responses((status = 201, body = PatchView), (status = 400, body = ErrorDoc), (status = 401, body = ErrorDoc), (status = 403, body = ErrorDoc), (status = 404, body = ErrorDoc), (status = 409, body = ErrorDoc), (status = 413, body = ErrorDoc), (status = 422, body = ErrorDoc)))]
pub async fn publish(
    State(state): State<crate::State>,
    headers: HeaderMap,
    Path(task): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<PatchView>)> {
    authenticate(&state, &headers).await?.operator()?;
    let task = load_task(&state, &task).await?;
    let body = bytes_body(body)?;
    if task.status == "running" {
        return Err(ApiError::conflict(format!(
            "round {} is open and its devices train the current adapter; publish when it has closed",
            task.round
        )));
    }
    let patch = parse_patch(&body, "the published patch")?;
    check_method(task.spec.rule, &patch)?;
    let known = bases(&state, &task.id).await?;
    if let Some((training, _)) = known.first() {
        if *training != patch.base.id {
            return Err(ApiError::unprocessable(
                "wrong_base",
                format!("the patch is for base {}, the task trains on {training}", patch.base.short_id()),
            ));
        }
    }
    let round = task.round + 1;
    let stored = store_signed(&state, &patch, round).await?;
    let mut ported = Vec::new();
    for (_, fingerprint) in known.iter().skip(1) {
        ported.push(store_signed(&state, &port_patch(&patch, fingerprint)?.0, round).await?);
    }
    let mut tx = state.db.pool.begin().await?;
    // Write first (SQLite takes the write lock at once); the status guards a concurrent publish.
    let next_status = if task.status == "waiting" { "running" } else { task.status.as_str() };
    let changed =
        sqlx::query("UPDATE tasks SET status = $1, round = $2 WHERE id = $3 AND status = $4 AND round = $5")
            .bind(next_status)
            .bind(if task.status == "waiting" { 1 } else { task.round })
            .bind(&task.id)
            .bind(&task.status)
            .bind(task.round)
            .execute(&mut *tx)
            .await?
            .rows_affected();
    if changed != 1 {
        return Err(ApiError::conflict("the task changed meanwhile; try again"));
    }
    if known.is_empty() {
        sqlx::query(
            "INSERT INTO bases (task, base, position, fingerprint, created_at) VALUES ($1, $2, 0, $3, $4)",
        )
        .bind(&task.id)
        .bind(&patch.base.id)
        .bind(serde_json::to_string(&patch.base).unwrap_or_default())
        .bind(now())
        .execute(&mut *tx)
        .await?;
    }
    if task.status == "waiting" {
        crate::rounds::open_round(&mut tx, &task.id, 1, &task.spec).await?;
    }
    let view = record(&mut tx, &task.id, &stored, "published").await?;
    for p in ported {
        record(&mut tx, &task.id, &p, "ported").await?;
    }
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(view)))
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct BaseQuery {
    /// A base's fingerprint id (default: the task's training base).
    pub base: Option<String>,
}

/// The task's patches, newest round first, for one base or all (the operator or its devices).
#[utoipa::path(get, path = "/v1/tasks/{task}/patches", tag = "patches", security(("bearer" = [])), params(("task" = String, Path, pattern = r"^[A-Za-z0-9_-]{1,100}$"), BaseQuery),
    responses((status = 200, body = Vec<PatchView>), (status = 400, body = ErrorDoc), (status = 401, body = ErrorDoc), (status = 403, body = ErrorDoc), (status = 404, body = ErrorDoc)))]
pub async fn list(
    State(state): State<crate::State>,
    headers: HeaderMap,
    Path(task): Path<String>,
    Query(query): Query<BaseQuery>,
) -> ApiResult<Json<Vec<PatchView>>> {
    authenticate(&state, &headers).await?.member_of(checked_id(&task)?)?;
    let task = load_task(&state, &task).await?;
    let rows = sqlx::query(
        "SELECT digest, base, round, kind, bytes, created_at FROM patches
         WHERE task = $1 AND deleted = 0 AND ($2 = '' OR base = $3) ORDER BY round DESC, created_at DESC, digest",
    )
    .bind(&task.id)
    .bind(query.base.clone().unwrap_or_default())
    .bind(query.base.unwrap_or_default())
    .fetch_all(&state.db.pool)
    .await?;
    let views = rows
        .iter()
        .map(|r| -> Result<PatchView, sqlx::Error> {
            Ok(PatchView {
                digest: r.try_get("digest")?,
                task: task.id.clone(),
                base: r.try_get("base")?,
                round: r.try_get::<i64, _>("round")? as u64,
                kind: r.try_get("kind")?,
                bytes: r.try_get::<i64, _>("bytes")? as u64,
                created_at: r.try_get("created_at")?,
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(Json(views))
}

fn patch_response(bytes: Vec<u8>, digest: &str, round: Option<i64>) -> Response {
    let mut response = bytes.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{digest}\"")) {
        headers.insert(header::ETAG, etag);
    }
    if let Some(round) = round.and_then(|r| HeaderValue::from_str(&r.to_string()).ok()) {
        headers.insert("x-adaptkit-round", round);
    }
    response
}

/// One of the task's patches, by digest (the operator or its devices).
#[utoipa::path(get, path = "/v1/tasks/{task}/patches/{digest}", tag = "patches", security(("bearer" = [])), params(("task" = String, Path, pattern = r"^[A-Za-z0-9_-]{1,100}$"), ("digest" = String, Path, pattern = r"^[A-Za-z0-9_-]{1,100}$")),
    responses((status = 200, body = Vec<u8>, content_type = "application/octet-stream"), (status = 400, body = ErrorDoc), (status = 401, body = ErrorDoc), (status = 403, body = ErrorDoc), (status = 404, body = ErrorDoc)))]
pub async fn fetch(
    State(state): State<crate::State>,
    headers: HeaderMap,
    Path((task, digest)): Path<(String, String)>,
) -> ApiResult<Response> {
    authenticate(&state, &headers).await?.member_of(checked_id(&task)?)?;
    let digest = checked_id(&digest)?;
    let row = sqlx::query("SELECT round FROM patches WHERE task = $1 AND digest = $2 AND deleted = 0")
        .bind(&task)
        .bind(digest)
        .fetch_optional(&state.db.pool)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("task {task} has no patch {digest}")))?;
    let round: i64 = row.try_get("round")?;
    Ok(patch_response(blob(&state, digest).await?, digest, Some(round)))
}

/// Deletes one of the task's patches (operator); the current shared adapter of a base cannot
/// be deleted.
#[utoipa::path(delete, path = "/v1/tasks/{task}/patches/{digest}", tag = "patches", security(("bearer" = [])), params(("task" = String, Path, pattern = r"^[A-Za-z0-9_-]{1,100}$"), ("digest" = String, Path, pattern = r"^[A-Za-z0-9_-]{1,100}$")),
    responses((status = 204), (status = 400, body = ErrorDoc), (status = 401, body = ErrorDoc), (status = 403, body = ErrorDoc), (status = 404, body = ErrorDoc), (status = 409, body = ErrorDoc)))]
pub async fn delete(
    State(state): State<crate::State>,
    headers: HeaderMap,
    Path((task, digest)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    authenticate(&state, &headers).await?.operator()?;
    let task = load_task(&state, &task).await?;
    let digest = checked_id(&digest)?;
    for (base, _) in bases(&state, &task.id).await? {
        if latest_global(&state, &task.id, &base).await?.is_some_and(|(d, _)| d == digest) {
            return Err(ApiError::conflict(format!(
                "{digest} is the current shared adapter for base {base}"
            )));
        }
    }
    let deleted =
        sqlx::query("UPDATE patches SET deleted = 1 WHERE task = $1 AND digest = $2 AND deleted = 0")
            .bind(&task.id)
            .bind(digest)
            .execute(&state.db.pool)
            .await?
            .rows_affected();
    if deleted == 0 {
        return Err(ApiError::not_found(format!("task {} has no patch {digest}", task.id)));
    }
    let still_used: i64 = sqlx::query("SELECT COUNT(*) AS n FROM patches WHERE digest = $1 AND deleted = 0")
        .bind(digest)
        .fetch_one(&state.db.pool)
        .await?
        .try_get("n")?;
    if still_used == 0 {
        state.blobs.delete(digest).await.map_err(|e| ApiError::internal("the blob store", e))?;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// The task's current shared adapter for a base, signed by the server; `x-adaptkit-round`
/// names the round it is trained in, `ETag` its digest (the operator or its devices).
#[utoipa::path(get, path = "/v1/tasks/{task}/global", tag = "patches", security(("bearer" = [])), params(("task" = String, Path, pattern = r"^[A-Za-z0-9_-]{1,100}$"), BaseQuery),
    responses((status = 200, body = Vec<u8>, content_type = "application/octet-stream"), (status = 400, body = ErrorDoc), (status = 401, body = ErrorDoc), (status = 403, body = ErrorDoc), (status = 404, body = ErrorDoc), (status = 422, body = ErrorDoc)))]
pub async fn global(
    State(state): State<crate::State>,
    headers: HeaderMap,
    Path(task): Path<String>,
    Query(query): Query<BaseQuery>,
) -> ApiResult<Response> {
    authenticate(&state, &headers).await?.member_of(checked_id(&task)?)?;
    let task = load_task(&state, &task).await?;
    let known = bases(&state, &task.id).await?;
    let Some((training, _)) = known.first() else {
        return Err(ApiError::not_found(format!("task {} has no shared adapter yet", task.id)));
    };
    let base = query.base.unwrap_or_else(|| training.clone());
    if !known.iter().any(|(b, _)| *b == base) {
        let names: Vec<&str> = known.iter().map(|(b, _)| &b[..b.len().min(12)]).collect();
        return Err(ApiError::unprocessable(
            "wrong_base",
            format!(
                "task {} has no adapter for base {}; its bases: {}",
                task.id,
                &base[..base.len().min(64)],
                names.join(", ")
            ),
        ));
    }
    let (digest, round) = latest_global(&state, &task.id, &base)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("task {} has no adapter for base {base} yet", task.id)))?;
    Ok(patch_response(blob(&state, &digest).await?, &digest, Some(round)))
}
