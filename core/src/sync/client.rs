//! The sync server's HTTP API from the device: one blocking call per endpoint, each retried with
//! exponential back-off (and jitter, so that many devices do not retry in step) while the server
//! cannot be reached, is overloaded (429, honouring `Retry-After`) or fails (5xx). A 4xx answer
//! is final: its JSON error becomes [`Error::Sync`] with the server's message.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::Error;
use crate::federated::api::{ApiError, Enrol, Enrolled, RoundView, ServerInfo, TaskView, UploadReceipt};
use crate::http::Backoff;
pub use crate::http::Retry;

/// The largest response body read (a shared adapter of a 1B model at rank 64 in f32 is ~100 MB).
const MAX_RESPONSE: u64 = 1 << 30;

pub struct Client {
    server: String,
    agent: ureq::Agent,
    retry: Retry,
}

/// A response: status, body and the headers a caller reads.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
    pub round: Option<u64>,
    pub etag: Option<String>,
}

impl Client {
    /// A client of the server at `server` (`http://host:port`, no trailing path).
    pub fn new(server: &str, retry: Retry) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_global(Some(Duration::from_secs(600)))
            .build()
            .into();
        Self { server: server.trim_end_matches('/').to_string(), agent, retry }
    }

    pub fn server(&self) -> &str {
        &self.server
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server)
    }

    /// One request with the retries; `Ok` only for a 2xx answer.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<(&[u8], &str)>,
    ) -> Result<Response, Error> {
        let url = self.url(path);
        let mut backoff = Backoff::new(self.retry)?;
        loop {
            let outcome = self.once(method, &url, token, body);
            let hint = match &outcome {
                Ok((r, _)) if (200..300).contains(&r.status) => return Ok(outcome.expect("ok").0),
                Ok((r, retry_after)) if r.status == 429 || r.status >= 500 => {
                    retry_after.map(Duration::from_secs)
                }
                Ok((r, _)) => return Err(refusal(&url, r)),
                Err(_) => None,
            };
            if !backoff.wait(hint) {
                return Err(match outcome {
                    Ok((r, _)) => refusal(&url, &r),
                    Err(message) => {
                        sync_error(&url, None, format!("{message} (after {} attempts)", backoff.attempts()))
                    }
                });
            }
        }
    }

    /// One attempt: the response and its `Retry-After` seconds, or why there was none.
    fn once(
        &self,
        method: &str,
        url: &str,
        token: Option<&str>,
        body: Option<(&[u8], &str)>,
    ) -> Result<(Response, Option<u64>), String> {
        let auth = token.map(|t| format!("Bearer {t}"));
        let result = match (method, body) {
            ("GET", _) => with_auth(self.agent.get(url), &auth).call(),
            ("DELETE", _) => with_auth(self.agent.delete(url), &auth).call(),
            (m, body) => {
                let builder = match m {
                    "POST" => self.agent.post(url),
                    "PUT" => self.agent.put(url),
                    other => return Err(format!("unsupported method {other}")),
                };
                let (bytes, content_type) = body.unwrap_or((b"", "application/octet-stream"));
                with_auth(builder, &auth).header("Content-Type", content_type).send(bytes)
            }
        };
        let mut response = result.map_err(|e| e.to_string())?;
        let header =
            |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        let (retry_after, round, etag) = (header("retry-after"), header("x-adaptkit-round"), header("etag"));
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE)
            .read_to_vec()
            .map_err(|e| format!("reading the response: {e}"))?;
        Ok((
            Response {
                status,
                body,
                round: round.and_then(|r| r.parse().ok()),
                etag: etag.map(|e| e.trim_matches('"').to_string()),
            },
            retry_after.and_then(|s| s.parse().ok()),
        ))
    }

    fn json<T: DeserializeOwned>(&self, path: &str, response: Response) -> Result<T, Error> {
        serde_json::from_slice(&response.body).map_err(|e| {
            sync_error(&self.url(path), Some(response.status), format!("unexpected answer: {e}"))
        })
    }

    pub fn server_info(&self) -> Result<ServerInfo, Error> {
        let path = "/v1/server";
        let r = self.request("GET", path, None, None)?;
        self.json(path, r)
    }

    pub fn enrol(&self, task: &str, enrol_token: &str, name: Option<String>) -> Result<Enrolled, Error> {
        let path = format!("/v1/tasks/{task}/devices");
        let body = to_json(&Enrol { name });
        let r = self.request("POST", &path, Some(enrol_token), Some((&body, "application/json")))?;
        self.json(&path, r)
    }

    pub fn task(&self, token: &str, task: &str) -> Result<TaskView, Error> {
        let path = format!("/v1/tasks/{task}");
        let r = self.request("GET", &path, Some(token), None)?;
        self.json(&path, r)
    }

    pub fn current_round(&self, token: &str, task: &str) -> Result<RoundView, Error> {
        let path = format!("/v1/tasks/{task}/rounds/current");
        let r = self.request("GET", &path, Some(token), None)?;
        self.json(&path, r)
    }

    /// The task's shared adapter for `base` (a signed patch), its digest and the round it is
    /// trained in.
    pub fn global(&self, token: &str, task: &str, base: &str) -> Result<Response, Error> {
        self.request("GET", &format!("/v1/tasks/{task}/global?base={base}"), Some(token), None)
    }

    pub fn upload(&self, token: &str, task: &str, round: u64, update: &[u8]) -> Result<UploadReceipt, Error> {
        let path = format!("/v1/tasks/{task}/rounds/{round}/update");
        let r = self.request("PUT", &path, Some(token), Some((update, "application/octet-stream")))?;
        self.json(&path, r)
    }
}

fn with_auth<B>(builder: ureq::RequestBuilder<B>, auth: &Option<String>) -> ureq::RequestBuilder<B> {
    match auth {
        Some(a) => builder.header("Authorization", a),
        None => builder,
    }
}

pub(crate) fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

pub(crate) fn sync_error(url: &str, status: Option<u16>, message: String) -> Error {
    Error::Sync { url: url.to_string(), status, code: None, message }
}

/// A refusal, with the server's own message when it sent one.
fn refusal(url: &str, r: &Response) -> Error {
    let (code, message) = match serde_json::from_slice::<ApiError>(&r.body) {
        Ok(e) => (Some(e.error.code), format!("{} (HTTP {})", e.error.message, r.status)),
        Err(_) => {
            let text: String = String::from_utf8_lossy(&r.body).chars().take(200).collect();
            (None, format!("HTTP {}: {text}", r.status))
        }
    };
    Error::Sync { url: url.to_string(), status: Some(r.status), code, message }
}
