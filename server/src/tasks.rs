//! Tasks, enrolment and bases: an operator creates a federated task, devices enrol in it with
//! its enrolment token, and an operator registers an updated base model, to which the task's
//! shared adapter is ported (PortLLM).

use adaptkit::federated::api::{
    ApiError as ErrorDoc, BaseRegistered, Enrol, Enrolled, NewTask, ServerInfo, TaskCreated, TaskView,
};
use adaptkit::federated::TaskSpec;
use adaptkit::patch::Fingerprint;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use sqlx::Row;

use crate::auth::{authenticate, hash, new_token, random_hex, Principal};
use crate::db::now;
use crate::error::{ApiError, ApiResult};
use crate::patches::{port_to, publish_ported};

/// A JSON body, or a 400 naming what is wrong with it.
pub fn json_body<T>(body: Result<Json<T>, JsonRejection>) -> ApiResult<T> {
    body.map(|Json(v)| v).map_err(|e| ApiError::bad_request(e.body_text()))
}

/// An id from a path: short, and only letters, digits, `_` and `-` (no path tricks).
pub fn checked_id(id: &str) -> ApiResult<&str> {
    if !id.is_empty()
        && id.len() <= 100
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        Ok(id)
    } else {
        Err(ApiError::bad_request(format!(
            "'{}' is not a valid id",
            id.chars().take(100).collect::<String>()
        )))
    }
}

/// A task as stored.
pub struct TaskRow {
    pub id: String,
    pub spec: TaskSpec,
    pub status: String,
    pub round: i64,
    pub epsilon: Option<f64>,
}

pub async fn load_task(state: &crate::State, task: &str) -> ApiResult<TaskRow> {
    let row = sqlx::query("SELECT id, spec, status, round, epsilon FROM tasks WHERE id = $1")
        .bind(checked_id(task)?)
        .fetch_optional(&state.db.pool)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no task {task}")))?;
    let spec: String = row.try_get("spec")?;
    Ok(TaskRow {
        id: row.try_get("id")?,
        spec: serde_json::from_str(&spec).map_err(|e| ApiError::internal("reading a task", e))?,
        status: row.try_get("status")?,
        round: row.try_get("round")?,
        epsilon: row.try_get("epsilon")?,
    })
}

/// The task's bases (fingerprint ids), the training base first.
pub async fn bases(state: &crate::State, task: &str) -> ApiResult<Vec<(String, Fingerprint)>> {
    let rows = sqlx::query("SELECT base, fingerprint FROM bases WHERE task = $1 ORDER BY position")
        .bind(task)
        .fetch_all(&state.db.pool)
        .await?;
    rows.iter()
        .map(|r| {
            let fingerprint: String = r.try_get("fingerprint")?;
            Ok((
                r.try_get("base")?,
                serde_json::from_str(&fingerprint).map_err(|e| ApiError::internal("reading a base", e))?,
            ))
        })
        .collect()
}

async fn view(state: &crate::State, task: TaskRow) -> ApiResult<TaskView> {
    let devices: i64 = sqlx::query("SELECT COUNT(*) AS n FROM devices WHERE task = $1")
        .bind(&task.id)
        .fetch_one(&state.db.pool)
        .await?
        .try_get("n")?;
    Ok(TaskView {
        bases: bases(state, &task.id).await?.into_iter().map(|(b, _)| b).collect(),
        task: task.id,
        spec: task.spec,
        status: task.status,
        round: task.round as u64,
        devices: devices as u64,
        epsilon: task.epsilon,
    })
}

/// The server's version and patch-signing key.
#[utoipa::path(get, path = "/v1/server", tag = "server", responses((status = 200, body = ServerInfo)))]
pub async fn server_info(State(state): State<crate::State>) -> Json<ServerInfo> {
    Json(ServerInfo { version: env!("CARGO_PKG_VERSION").to_string(), public_key: state.public_key() })
}

/// Whether the server and its database answer.
#[utoipa::path(get, path = "/health", tag = "server", responses((status = 200, body = String), (status = 500, body = ErrorDoc)))]
pub async fn health(State(state): State<crate::State>) -> ApiResult<&'static str> {
    sqlx::query("SELECT 1").execute(&state.db.pool).await?;
    Ok("ok")
}

/// Creates a task (operator). Its first shared adapter is published next
/// (`POST /v1/tasks/{task}/patches`), which opens round 1.
#[utoipa::path(post, path = "/v1/tasks", tag = "tasks", request_body = NewTask, security(("bearer" = [])),
    responses((status = 201, body = TaskCreated), (status = 400, body = ErrorDoc), (status = 401, body = ErrorDoc), (status = 403, body = ErrorDoc)))]
pub async fn create_task(
    State(state): State<crate::State>,
    headers: HeaderMap,
    body: Result<Json<NewTask>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<TaskCreated>)> {
    authenticate(&state, &headers).await?.operator()?;
    let NewTask { spec } = json_body(body)?;
    spec.check().map_err(ApiError::bad_request)?;
    let task = format!("t_{}", random_hex(8));
    let enrol_token = new_token();
    let mut tx = state.db.pool.begin().await?;
    sqlx::query("INSERT INTO tasks (id, spec, status, round, epsilon, created_at) VALUES ($1, $2, 'waiting', 0, NULL, $3)")
        .bind(&task)
        .bind(serde_json::to_string(&spec).unwrap_or_default())
        .bind(now())
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO tokens (hash, role, task, device, created_at) VALUES ($1, 'enrol', $2, NULL, $3)",
    )
    .bind(hash(&enrol_token))
    .bind(&task)
    .bind(now())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(TaskCreated { task, enrol_token })))
}

/// Every task (operator).
#[utoipa::path(get, path = "/v1/tasks", tag = "tasks", security(("bearer" = [])),
    responses((status = 200, body = Vec<TaskView>), (status = 401, body = ErrorDoc), (status = 403, body = ErrorDoc)))]
pub async fn list_tasks(
    State(state): State<crate::State>,
    headers: HeaderMap,
) -> ApiResult<Json<Vec<TaskView>>> {
    authenticate(&state, &headers).await?.operator()?;
    let ids: Vec<String> = sqlx::query("SELECT id FROM tasks ORDER BY created_at, id")
        .fetch_all(&state.db.pool)
        .await?
        .iter()
        .map(|r| r.try_get("id"))
        .collect::<Result<_, _>>()?;
    let mut out = Vec::new();
    for id in ids {
        let task = load_task(&state, &id).await?;
        out.push(view(&state, task).await?);
    }
    Ok(Json(out))
}

/// A task: its settings, status, open round, bases and privacy spent (the operator or its
/// devices).
#[utoipa::path(get, path = "/v1/tasks/{task}", tag = "tasks", security(("bearer" = [])), params(("task" = String, Path, pattern = r"^[A-Za-z0-9_-]{1,100}$")),
    responses((status = 200, body = TaskView), (status = 400, body = ErrorDoc), (status = 401, body = ErrorDoc), (status = 403, body = ErrorDoc), (status = 404, body = ErrorDoc)))]
pub async fn get_task(
    State(state): State<crate::State>,
    headers: HeaderMap,
    Path(task): Path<String>,
) -> ApiResult<Json<TaskView>> {
    authenticate(&state, &headers).await?.member_of(checked_id(&task)?)?;
    let task = load_task(&state, &task).await?;
    Ok(Json(view(&state, task).await?))
}

/// Enrols a device in the task; the caller holds the task's enrolment token.
#[utoipa::path(post, path = "/v1/tasks/{task}/devices", tag = "tasks", request_body = Enrol, security(("bearer" = [])), params(("task" = String, Path, pattern = r"^[A-Za-z0-9_-]{1,100}$")),
    responses((status = 201, body = Enrolled), (status = 400, body = ErrorDoc), (status = 401, body = ErrorDoc), (status = 403, body = ErrorDoc), (status = 404, body = ErrorDoc)))]
pub async fn enrol(
    State(state): State<crate::State>,
    headers: HeaderMap,
    Path(task): Path<String>,
    body: Result<Json<Enrol>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Enrolled>)> {
    let who = authenticate(&state, &headers).await?;
    let task = checked_id(&task)?.to_string();
    if who != (Principal::Enrol { task: task.clone() }) {
        return Err(ApiError::forbidden(format!("enrolling in task {task} needs its enrolment token")));
    }
    let Enrol { name } = json_body(body)?;
    if name.as_ref().is_some_and(|n| n.len() > 200) {
        return Err(ApiError::bad_request("name: at most 200 bytes"));
    }
    let device = format!("d_{}", random_hex(8));
    let token = new_token();
    let mut tx = state.db.pool.begin().await?;
    sqlx::query("INSERT INTO devices (id, task, name, created_at) VALUES ($1, $2, $3, $4)")
        .bind(&device)
        .bind(&task)
        .bind(name)
        .bind(now())
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO tokens (hash, role, task, device, created_at) VALUES ($1, 'device', $2, $3, $4)",
    )
    .bind(hash(&token))
    .bind(&task)
    .bind(&device)
    .bind(now())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(Enrolled { task, device, token, public_key: state.public_key() })))
}

/// Registers an updated base model (its fingerprint, from `adaptkit info --json` or the
/// runtime): the task's shared adapter is ported to it, with PortLLM's drift report, and every
/// later one is published for it too, so devices on either base get an adapter that fits
/// (operator).
#[utoipa::path(post, path = "/v1/tasks/{task}/bases", tag = "tasks", request_body(content = Object, description = "The base model's fingerprint"), security(("bearer" = [])), params(("task" = String, Path, pattern = r"^[A-Za-z0-9_-]{1,100}$")),
    responses((status = 201, body = BaseRegistered), (status = 400, body = ErrorDoc), (status = 401, body = ErrorDoc), (status = 403, body = ErrorDoc), (status = 404, body = ErrorDoc), (status = 409, body = ErrorDoc), (status = 422, body = ErrorDoc)))]
pub async fn register_base(
    State(state): State<crate::State>,
    headers: HeaderMap,
    Path(task): Path<String>,
    body: Result<Json<Fingerprint>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<BaseRegistered>)> {
    authenticate(&state, &headers).await?.operator()?;
    let task = load_task(&state, &task).await?;
    let fingerprint = json_body(body)?;
    checked_id(&fingerprint.id)?;
    let known = bases(&state, &task.id).await?;
    let Some((_, training)) = known.first() else {
        return Err(ApiError::conflict("the task has no shared adapter yet: publish one first"));
    };
    if known.iter().any(|(b, _)| *b == fingerprint.id) {
        return Err(ApiError::conflict(format!("base {} is registered already", fingerprint.id)));
    }
    training.same_shapes(&fingerprint).map_err(|m| {
        ApiError::unprocessable(
            "wrong_base",
            format!("the task's adapter cannot be ported to this base: {m}"),
        )
    })?;
    let (ported, drift) = port_to(&state, &task, &fingerprint).await?;
    let mut tx = state.db.pool.begin().await?;
    sqlx::query(
        "INSERT INTO bases (task, base, position, fingerprint, created_at) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (task, base) DO NOTHING",
    )
    .bind(&task.id)
    .bind(&fingerprint.id)
    .bind(known.len() as i64)
    .bind(serde_json::to_string(&fingerprint).unwrap_or_default())
    .bind(now())
    .execute(&mut *tx)
    .await?;
    let view = match ported {
        Some(ported) => Some(publish_ported(&mut tx, &task.id, ported).await?),
        None => None,
    };
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(BaseRegistered {
            base: fingerprint.id,
            ported: view,
            drift: drift.map(|d| serde_json::to_value(d).unwrap_or_default()),
        }),
    ))
}
