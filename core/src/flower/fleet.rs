//! The SuperLink's Fleet API from the node: one blocking call per endpoint, each a POST of a
//! protobuf body to `/v1/fleet/<name>` with the node's signed headers (fresh for every try).
//! A SuperLink that cannot be reached or answers 502-504 (restarting, overloaded) is retried
//! with back-off; any other answer is final and becomes [`Error::Sync`] with Flower's message
//! and code (`401`: the node is not, or no longer, known; `403`: the run is not running).

use std::time::Duration;

use prost::Message;

use super::identity::NodeKey;
use crate::error::Error;
use crate::http::{Backoff, Retry};

/// The largest answer read: an object is at most one 5 MiB chunk (or a small record), and a
/// message header is small; a SuperLink sending more is refused rather than buffered.
pub const MAX_ANSWER: u64 = 64 << 20;

pub struct Fleet {
    superlink: String,
    agent: ureq::Agent,
    /// For the heartbeat: a short timeout, as Flower's own node uses, so a stalled SuperLink
    /// is noticed and retried well within the node's heartbeat interval.
    quick: ureq::Agent,
    retry: Retry,
    key: NodeKey,
}

impl Fleet {
    /// A client of the SuperLink at `superlink` (`http://host:port`).
    pub fn new(superlink: &str, key: NodeKey, retry: Retry) -> Self {
        let agent = |timeout: u64| {
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_connect(Some(Duration::from_secs(10)))
                .timeout_global(Some(Duration::from_secs(timeout)))
                .build()
                .into()
        };
        Self {
            superlink: superlink.trim_end_matches('/').to_string(),
            agent: agent(60),
            quick: agent(5),
            retry,
            key,
        }
    }

    pub fn superlink(&self) -> &str {
        &self.superlink
    }

    pub fn key(&self) -> &NodeKey {
        &self.key
    }

    /// One call with its retries: `name` is the endpoint (`pull-messages`, …).
    pub fn call<Req: Message, Resp: Message + Default>(
        &self,
        name: &str,
        request: &Req,
    ) -> Result<Resp, Error> {
        self.call_with(name, request, &self.agent, self.retry)
    }

    /// [`call`](Self::call) with the heartbeat's short timeout and three tries: a heartbeat
    /// comes again soon, and leaving must not wait on a SuperLink that is gone.
    pub fn call_quick<Req: Message, Resp: Message + Default>(
        &self,
        name: &str,
        request: &Req,
    ) -> Result<Resp, Error> {
        let retry = Retry { attempts: 3, ..self.retry };
        self.call_with(name, request, &self.quick, retry)
    }

    fn call_with<Req: Message, Resp: Message + Default>(
        &self,
        name: &str,
        request: &Req,
        agent: &ureq::Agent,
        retry: Retry,
    ) -> Result<Resp, Error> {
        let url = format!("{}/v1/fleet/{name}", self.superlink);
        let body = request.encode_to_vec();
        let mut backoff = Backoff::new(retry)?;
        loop {
            let outcome = self.once(agent, &url, &body);
            match &outcome {
                Ok((200, bytes)) => {
                    return Resp::decode(bytes.as_slice()).map_err(|e| {
                        fleet_error(
                            &url,
                            Some(200),
                            None,
                            format!("an answer that is not a {name} response: {e}"),
                        )
                    })
                }
                Ok((status, _)) if !matches!(status, 502..=504) => return Err(refusal(&url, outcome)),
                _ => {}
            }
            if !backoff.wait(None) {
                return Err(match outcome {
                    Ok(_) => refusal(&url, outcome),
                    Err(message) => fleet_error(
                        &url,
                        None,
                        None,
                        format!("{message} (after {} attempts)", backoff.attempts()),
                    ),
                });
            }
        }
    }

    /// One try: the status and body, or why there was no answer.
    fn once(&self, agent: &ureq::Agent, url: &str, body: &[u8]) -> Result<(u16, Vec<u8>), String> {
        let signed = self.key.sign_now();
        let mut response = agent
            .post(url)
            .header("Content-Type", "application/protobuf")
            .header("Accept", "application/protobuf")
            .header("flwr-public-key", &signed.public_key)
            .header("flwr-timestamp", &signed.timestamp)
            .header("flwr-signature", &signed.signature)
            .header("flwr-component-name", "SuperNode")
            .send(body)
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let bytes = response
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER)
            .read_to_vec()
            .map_err(|e| format!("reading the answer: {e}"))?;
        Ok((status, bytes))
    }
}

pub(crate) fn fleet_error(url: &str, status: Option<u16>, code: Option<String>, message: String) -> Error {
    Error::Sync { url: url.to_string(), status, code, message }
}

/// A final answer as an error, with the SuperLink's own words: Flower's errors are JSON
/// `{"code": n, "detail": "…"}` (or FastAPI's `{"detail": "…"}`).
fn refusal(url: &str, outcome: Result<(u16, Vec<u8>), String>) -> Error {
    let (status, body) = match outcome {
        Ok(answer) => answer,
        Err(message) => return fleet_error(url, None, None, message),
    };
    #[derive(serde::Deserialize)]
    struct FlowerError {
        code: Option<i64>,
        detail: Option<String>,
    }
    match serde_json::from_slice::<FlowerError>(&body) {
        Ok(FlowerError { code, detail: Some(detail) }) => {
            let code = code.map(|c| c.to_string());
            let shown = code.as_deref().map(|c| format!(" [code {c}]")).unwrap_or_default();
            fleet_error(url, Some(status), code, format!("{detail}{shown} (HTTP {status})"))
        }
        _ => {
            let text: String = String::from_utf8_lossy(&body).chars().take(200).collect();
            fleet_error(url, Some(status), None, format!("HTTP {status}: {text}"))
        }
    }
}
