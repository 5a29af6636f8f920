//! `adaptkit-server`: the sync server of federated adaptation. Devices enrol in a task, pull its
//! shared adapter (a patch signed by the server), train it locally and upload their updates; a
//! round closes on quorum or at its deadline and the server aggregates the updates into the next
//! shared adapter ([`adaptkit::federated`]: FedAvg of `ΔW = B·A`, FFA-LoRA, client-side privacy),
//! publishes it, and ports it to every base the operator registered (PortLLM).
//!
//! State is in SQL ([`db`]: SQLite by default, PostgreSQL for several processes), bytes in a
//! content-addressed blob store ([`blobs`]: a directory or S3). The HTTP layer keeps nothing
//! that matters in memory (only rate-limit buckets), so processes can be added behind a load
//! balancer and killed at any moment: an upload is acknowledged only once it is committed, and
//! a round half-aggregated by a dead process is taken over once its claim expires.

pub mod auth;
pub mod blobs;
pub mod db;
pub mod error;
pub mod patches;
pub mod rounds;
pub mod secagg;
pub mod tasks;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use adaptkit::patch::keys::{parse_secret_key, SigningKey};
use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use axum::{Json, Router};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{hash, new_token, RateLimiter};
use crate::blobs::Blobs;
use crate::db::{now, Db};

/// How the server runs.
#[derive(Clone, Debug)]
pub struct Config {
    /// `sqlite://FILE` or `postgres://…`.
    pub db: String,
    /// A directory or `s3://bucket/prefix`.
    pub blobs: String,
    /// The patch-signing key (created there if missing).
    pub key_file: PathBuf,
    /// The operator token: this value, else the file's, else a new one written to the file.
    pub operator_token: Option<String>,
    pub operator_token_file: PathBuf,
    pub limits: Limits,
}

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The largest upload or published patch, in bytes.
    pub max_upload: usize,
    /// Requests a second per token (bursts of twice that); 0: unlimited.
    pub rate: f64,
    /// A round claimed for aggregation by a process that then died is taken over after this.
    pub aggregation_lease: Duration,
    /// How often each process looks for rounds past their deadline.
    pub tick: Duration,
    /// Fault injection for crash tests: a pause between aggregating a round and publishing it.
    pub aggregation_delay: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_upload: 256 << 20,
            rate: 20.0,
            aggregation_lease: Duration::from_secs(60),
            tick: Duration::from_secs(1),
            aggregation_delay: Duration::ZERO,
        }
    }
}

impl Config {
    /// Everything in `dir`: `server.db` (SQLite), `blobs/`, `server.key`, `operator.token`.
    pub fn in_dir(dir: &std::path::Path) -> Self {
        Self {
            db: format!("sqlite://{}?mode=rwc", dir.join("server.db").display()),
            blobs: dir.join("blobs").display().to_string(),
            key_file: dir.join("server.key"),
            operator_token: None,
            operator_token_file: dir.join("operator.token"),
            limits: Limits::default(),
        }
    }
}

pub struct AppState {
    pub db: Db,
    pub blobs: Blobs,
    pub key: SigningKey,
    pub limiter: RateLimiter,
    pub limits: Limits,
}

pub type State = Arc<AppState>;

impl AppState {
    pub async fn open(config: &Config) -> Result<Self, String> {
        let db = Db::connect(&config.db).await.map_err(|e| format!("--db {}: {e}", config.db))?;
        let blobs = Blobs::open(&config.blobs)?;
        let key = load_or_create_key(&config.key_file)?;
        let token = operator_token(config)?;
        sqlx::query(
            "INSERT INTO tokens (hash, role, task, device, created_at) VALUES ($1, 'operator', NULL, NULL, $2)
             ON CONFLICT (hash) DO NOTHING",
        )
        .bind(hash(&token))
        .bind(now())
        .execute(&db.pool)
        .await
        .map_err(|e| format!("storing the operator token: {e}"))?;
        Ok(Self { db, blobs, key, limiter: RateLimiter::new(config.limits.rate), limits: config.limits })
    }

    pub fn public_key(&self) -> String {
        adaptkit::format::patch_file::hex(self.key.verifying_key().as_bytes())
    }
}

/// Reads the signing key, or creates it (one process wins; the others read its key).
fn load_or_create_key(path: &std::path::Path) -> Result<SigningKey, String> {
    let read = || {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        parse_secret_key(text.trim()).map_err(|e| format!("{}: {e}", path.display()))
    };
    if path.exists() {
        return read();
    }
    let key = adaptkit::runtime::patches::keygen().map_err(|e| e.to_string())?;
    match write_new_private(path, key.secret.as_bytes()) {
        Ok(()) => Ok(key.signing_key),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read(),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

fn operator_token(config: &Config) -> Result<String, String> {
    if let Some(token) = &config.operator_token {
        return Ok(token.clone());
    }
    let path = &config.operator_token_file;
    if let Ok(text) = std::fs::read_to_string(path) {
        return Ok(text.trim().to_string());
    }
    let token = new_token();
    match write_new_private(path, format!("{token}\n").as_bytes()) {
        Ok(()) => Ok(token),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => std::fs::read_to_string(path)
            .map(|t| t.trim().to_string())
            .map_err(|e| format!("{}: {e}", path.display())),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Creates `path` (never replacing one), readable by its owner only, and syncs it.
fn write_new_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[derive(OpenApi)]
#[openapi(
    info(title = "adaptkit sync server", description = "Federated adaptation: tasks, rounds, updates and the signed patch registry. Errors are {\"error\": {\"code\", \"message\"}}."),
    modifiers(&BearerAuth),
    tags((name = "server"), (name = "tasks"), (name = "rounds"), (name = "patches"))
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Every route, declared once: the router and the OpenAPI document both come from here.
fn routes() -> OpenApiRouter<State> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(tasks::server_info))
        .routes(routes!(tasks::health))
        .routes(routes!(tasks::create_task, tasks::list_tasks))
        .routes(routes!(tasks::get_task))
        .routes(routes!(tasks::enrol))
        .routes(routes!(tasks::register_base))
        .routes(routes!(patches::publish, patches::list))
        .routes(routes!(patches::fetch, patches::delete))
        .routes(routes!(patches::global))
        .routes(routes!(rounds::current))
        .routes(routes!(rounds::get_round))
        .routes(routes!(rounds::upload))
        .routes(routes!(rounds::close))
        .routes(routes!(secagg::view))
        .routes(routes!(secagg::keys))
        .routes(routes!(secagg::shares))
        .routes(routes!(secagg::masked))
        .routes(routes!(secagg::reveals))
}

/// The HTTP application, with `/openapi.json`.
pub fn router(state: State) -> Router {
    let (router, api) = routes().split_for_parts();
    let api = Arc::new(api);
    router
        .route("/openapi.json", get(move || async move { Json(api.as_ref().clone()) }))
        .layer(DefaultBodyLimit::max(state.limits.max_upload))
        .with_state(state)
}

/// Serves on `listener` until Ctrl-C or SIGTERM, looking for rounds past their deadline.
pub async fn serve(listener: tokio::net::TcpListener, state: State) -> std::io::Result<()> {
    let ticker = tokio::spawn(rounds::tick(state.clone()));
    let app = router(state);
    let result = axum::serve(listener, app).with_graceful_shutdown(shutdown()).await;
    ticker.abort();
    result
}

async fn shutdown() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("a SIGTERM handler");
        tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
