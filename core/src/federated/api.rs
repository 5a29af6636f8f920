//! The sync server's HTTP API as data: every request and response body, shared by the server
//! and the `sync` client (and described in the server's OpenAPI document with `openapi`).
//! Errors are `{"error": {"code", "message"}}` with a 4xx/5xx status.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{AggregateReport, TaskSpec};

#[cfg(feature = "openapi")]
use utoipa::ToSchema;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ServerInfo {
    pub version: String,
    /// The Ed25519 key (hex) that signs every patch the server publishes.
    pub public_key: String,
}

/// `POST /v1/tasks`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewTask {
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub spec: TaskSpec,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct TaskCreated {
    pub task: String,
    /// Devices enrol with this token (shown once; the server keeps its hash).
    pub enrol_token: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct TaskView {
    pub task: String,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub spec: TaskSpec,
    /// `waiting` (no shared adapter yet), `running`, `finished` (its rounds are done) or
    /// `budget_spent` (another round would pass the privacy budget).
    pub status: String,
    /// The open round (or the last one).
    pub round: u64,
    /// Fingerprint ids of the bases its adapter is published for, the training base first.
    pub bases: Vec<String>,
    pub devices: u64,
    /// `ε` spent so far (with privacy).
    pub epsilon: Option<f64>,
}

/// `POST /v1/tasks/{task}/devices` (with the enrolment token).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Enrol {
    /// A label for the operator's listings.
    pub name: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Enrolled {
    pub task: String,
    pub device: String,
    /// The device's own token (shown once).
    pub token: String,
    pub public_key: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct RoundView {
    pub task: String,
    pub round: u64,
    /// `open`, `aggregating` or `closed`.
    pub status: String,
    /// Unix seconds.
    pub opened_at: i64,
    pub deadline_at: i64,
    pub received: u64,
    pub min_clients: u64,
    pub max_clients: u64,
    /// Digest of the shared adapter this round trains (for the training base).
    pub global: Option<String>,
    /// Set once the round is closed.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub result: Option<RoundResult>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct RoundResult {
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub aggregate: AggregateReport,
    /// Digest of the shared adapter the round produced.
    pub global: String,
    pub epsilon: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct UploadReceipt {
    pub task: String,
    pub round: u64,
    pub device: String,
    /// SHA-256 of the update's bytes.
    pub digest: String,
    /// Updates the round holds now.
    pub received: u64,
    /// `true` when this exact update was already received (a retry): it counts once.
    pub duplicate: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct PatchView {
    pub digest: String,
    pub task: String,
    /// Fingerprint id of the base it is for.
    pub base: String,
    /// The round that made it (0: published by the operator).
    pub round: u64,
    /// `published`, `aggregated` or `ported`.
    pub kind: String,
    pub bytes: u64,
    pub created_at: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct BaseRegistered {
    pub base: String,
    /// The task's shared adapter, ported to the new base (when it has one yet).
    pub ported: Option<PatchView>,
    /// PortLLM's drift report (from the projection norms of both fingerprints).
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub drift: Option<Value>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ApiError {
    pub error: ErrorBody,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ErrorBody {
    /// Stable, for programs: `bad_request`, `unauthorized`, `forbidden`, `not_found`,
    /// `conflict`, `round_closed`, `too_large`, `rate_limited`, `wrong_base`, `internal`.
    pub code: String,
    pub message: String,
}

/// `GET /v1/tasks/{task}/rounds/{round}/secagg`: where a secure round's protocol is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct SecAggView {
    /// `keys`, `shares`, `masked`, `unmask`, or `done`.
    pub phase: String,
    pub deadline_at: i64,
    /// Shares needed to rebuild a secret (set with the participants).
    pub threshold: usize,
    /// The participants' public keys (hex), in order, once the key phase is over.
    pub participants: Vec<Participant>,
    /// Indexes (into `participants`) of those that sent their shares.
    pub shared: Vec<usize>,
    /// Indexes of those whose masked input arrived.
    pub masked: Vec<usize>,
    /// In the unmask phase, to a device: the encrypted shares sent to it, by sender index.
    pub inbox: Vec<(usize, String)>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Participant {
    pub device: String,
    pub c: String,
    pub s: String,
}

/// `PUT …/secagg/keys`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SecAggKeys {
    pub c: String,
    pub s: String,
}

/// `PUT …/secagg/shares`: one encrypted box (hex) per participant, in order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SecAggShares {
    pub boxes: Vec<String>,
}

/// `PUT …/secagg/reveals`: the shares (hex) this survivor holds of each survivor's self-mask
/// seed and of each dropped participant's mask secret, by owner index.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SecAggReveals {
    pub seeds: Vec<(usize, String)>,
    pub secrets: Vec<(usize, String)>,
}
