//! Who is calling: the operator, a device enrolling with a task's enrolment token, or an
//! enrolled device. Tokens are random 256-bit strings shown once; the database keeps only their
//! SHA-256. A device reaches only its own task. Each token's requests are rate-limited (a
//! token bucket per process).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use axum::http::{HeaderMap, StatusCode};
use sqlx::Row;

use crate::blobs::digest;
use crate::error::{ApiError, ApiResult};
use crate::AppState;

#[derive(Clone, Debug, PartialEq)]
pub enum Principal {
    Operator,
    /// Holds a task's enrolment token: may enrol devices in it, nothing else.
    Enrol {
        task: String,
    },
    Device {
        task: String,
        device: String,
    },
}

/// A new secret token.
pub fn new_token() -> String {
    format!("akt_{}", random_hex(32))
}

/// `bytes` random bytes in hex, from the operating system.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("the operating system's random source");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn hash(token: &str) -> String {
    digest(token.as_bytes())
}

impl Principal {
    pub fn operator(&self) -> ApiResult<()> {
        match self {
            Self::Operator => Ok(()),
            _ => Err(ApiError::forbidden("this needs the operator's token")),
        }
    }

    /// The operator, or a device of `task`; `Some(device)` for a device.
    pub fn member_of(&self, task: &str) -> ApiResult<Option<&str>> {
        match self {
            Self::Operator => Ok(None),
            Self::Device { task: t, device } if t == task => Ok(Some(device)),
            _ => Err(ApiError::forbidden(format!("this token has no access to task {task}"))),
        }
    }

    /// A device of `task` (uploads come from devices only).
    pub fn device_of(&self, task: &str) -> ApiResult<&str> {
        match self.member_of(task)? {
            Some(device) => Ok(device),
            None => Err(ApiError::forbidden("only an enrolled device uploads updates")),
        }
    }
}

/// The caller of a request, from its `Authorization: Bearer` header, after its rate limit.
pub async fn authenticate(state: &AppState, headers: &HeaderMap) -> ApiResult<Principal> {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| ApiError::unauthorized("missing 'Authorization: Bearer <token>'"))?;
    let hashed = hash(token.trim());
    state.limiter.check(&hashed)?;
    let row = sqlx::query("SELECT role, task, device FROM tokens WHERE hash = $1")
        .bind(&hashed)
        .fetch_optional(&state.db.pool)
        .await?
        .ok_or_else(|| ApiError::unauthorized("unknown token"))?;
    let role: String = row.try_get("role")?;
    let task: Option<String> = row.try_get("task")?;
    let device: Option<String> = row.try_get("device")?;
    match (role.as_str(), task, device) {
        ("operator", _, _) => Ok(Principal::Operator),
        ("enrol", Some(task), _) => Ok(Principal::Enrol { task }),
        ("device", Some(task), Some(device)) => Ok(Principal::Device { task, device }),
        _ => Err(ApiError::internal("reading a token", format!("malformed token row (role {role})"))),
    }
}

/// A token bucket per token: `rate` requests a second, bursts of `2·rate`.
pub struct RateLimiter {
    rate: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

/// Buckets idle this long are forgotten (they would be full again).
const IDLE_SECONDS: f64 = 60.0;

impl RateLimiter {
    pub fn new(rate: f64) -> Self {
        Self { rate, buckets: Mutex::new(HashMap::new()) }
    }

    pub fn check(&self, key: &str) -> ApiResult<()> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let burst = 2.0 * self.rate;
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() > 100_000 {
            buckets.retain(|_, (_, at)| now.duration_since(*at).as_secs_f64() < IDLE_SECONDS);
        }
        let (tokens, at) = buckets.entry(key.to_string()).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.rate).min(burst);
        *at = now;
        if *tokens < 1.0 {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("more than {} requests a second with this token; retry shortly", self.rate),
            ));
        }
        *tokens -= 1.0;
        Ok(())
    }
}
