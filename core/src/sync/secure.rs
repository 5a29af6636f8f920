//! A device's part in a secure round ([`crate::federated::secagg`]): send its keys, its encrypted
//! shares, its masked input, then reveal what unmasking the sum needs, waiting for the server
//! to move the round from phase to phase. The round's secrets are kept in a file while the round
//! runs, so a device that restarts takes up where it was.

use std::path::Path;
use std::time::{Duration, Instant};

use super::client::{sync_error, to_json, Client};
use crate::error::Error;
use crate::federated::api::{SecAggKeys, SecAggReveals, SecAggShares, SecAggView};
use crate::federated::prg::Prg;
use crate::federated::secagg::{context, encode, PublicKeys, RoundSecrets};
use crate::format::patch_file::{hex, unhex};

/// How a device takes part.
#[derive(Clone, Copy, Debug)]
pub struct SecureOptions {
    /// Give up when a phase has not moved on for this long.
    pub timeout: Duration,
    pub poll: Duration,
    /// Stop after sending the masked input, as a device that goes offline then would (the
    /// round must still complete: tests and demonstrations).
    pub drop_after_masking: bool,
}

impl Default for SecureOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(900),
            poll: Duration::from_millis(250),
            drop_after_masking: false,
        }
    }
}

/// One device in one secure round.
pub struct SecureRound<'a> {
    pub client: &'a Client,
    pub token: &'a str,
    pub task: &'a str,
    pub round: u64,
    pub device: &'a str,
    /// The task's largest round (bounds the fixed-point range).
    pub max_devices: usize,
}

impl SecureRound<'_> {
    fn path(&self, leaf: &str) -> String {
        format!("/v1/tasks/{}/rounds/{}/secagg{leaf}", self.task, self.round)
    }

    fn view(&self) -> Result<SecAggView, Error> {
        let r = self.client.request("GET", &self.path(""), Some(self.token), None)?;
        serde_json::from_slice(&r.body)
            .map_err(|e| sync_error(self.client.server(), None, format!("unexpected answer: {e}")))
    }

    fn put(&self, leaf: &str, body: &[u8], content_type: &str) -> Result<(), Error> {
        self.client.request("PUT", &self.path(leaf), Some(self.token), Some((body, content_type))).map(|_| ())
    }

    /// The view once the round has left the phases in `waiting`.
    fn wait_past(&self, waiting: &[&str], options: &SecureOptions) -> Result<SecAggView, Error> {
        let start = Instant::now();
        loop {
            let view = self.view()?;
            if !waiting.contains(&view.phase.as_str()) {
                return Ok(view);
            }
            if start.elapsed() > options.timeout {
                return Err(sync_error(
                    self.client.server(),
                    None,
                    format!("the round stayed in its '{}' phase for {:?}", view.phase, options.timeout),
                ));
            }
            std::thread::sleep(options.poll);
        }
    }

    /// Takes part with `update` (the values the task's rule sends, in order), its secrets kept
    /// in `secrets_file` until the round is done.
    pub fn take_part(
        &self,
        update: &[f32],
        secrets_file: &Path,
        options: &SecureOptions,
    ) -> Result<(), Error> {
        let mut prg = Prg::from_os().map_err(|e| Error::InvalidArgument(format!("no randomness: {e}")))?;
        let secrets = load_or_create(secrets_file, &mut prg)?;
        let ctx = context(self.task, self.round);
        let public = secrets.public();
        let keys = SecAggKeys { c: hex(&public.c), s: hex(&public.s) };
        let view = self.view()?;
        if view.phase == "keys" {
            self.put("/keys", &to_json(&keys), "application/json")?;
        }
        let view = self.wait_past(&["keys"], options)?;
        let me = view
            .participants
            .iter()
            .position(|p| p.device == self.device)
            .ok_or_else(|| self.refused("this device's keys came too late for the round"))?;
        let participants =
            view.participants.iter().map(|p| parse_keys(&p.c, &p.s)).collect::<Result<Vec<_>, _>>()?;
        if view.phase == "shares" {
            let boxes = secrets.encrypted_shares(me, &participants, view.threshold, &ctx, &mut prg);
            self.put(
                "/shares",
                &to_json(&SecAggShares { boxes: boxes.iter().map(|b| hex(b)).collect() }),
                "application/json",
            )?;
        }
        let view = self.wait_past(&["keys", "shares"], options)?;
        let position = view
            .shared
            .iter()
            .position(|&i| i == me)
            .ok_or_else(|| self.refused("this device's shares came too late"))?;
        if view.phase == "masked" {
            let masking: Vec<PublicKeys> = view.shared.iter().map(|&i| participants[i]).collect();
            let input = encode(update, self.max_devices)
                .map_err(|m| Error::InvalidArgument(format!("the update: {m}")))?;
            let y = secrets.masked(&input, position, &masking, &ctx);
            let bytes: Vec<u8> = y.iter().flat_map(|v| v.to_le_bytes()).collect();
            self.put("/masked", &bytes, "application/octet-stream")?;
        }
        if options.drop_after_masking {
            return Ok(());
        }
        let view = self.wait_past(&["keys", "shares", "masked"], options)?;
        if view.phase == "unmask" && view.masked.contains(&me) {
            let mut seeds = Vec::new();
            let mut dropped = Vec::new();
            for (owner, ciphertext) in &view.inbox {
                let bytes = unhex(ciphertext).ok_or_else(|| self.refused("a share box is not hex"))?;
                let shares = secrets
                    .open_shares(*owner, me, &participants[*owner], &ctx, &bytes)
                    .map_err(|m| self.refused(&m))?;
                if view.masked.contains(owner) {
                    seeds.push((*owner, hex(&shares.b)));
                } else if view.shared.contains(owner) {
                    dropped.push((*owner, hex(&shares.s)));
                }
            }
            self.put("/reveals", &to_json(&SecAggReveals { seeds, secrets: dropped }), "application/json")?;
        }
        let _ = std::fs::remove_file(secrets_file);
        Ok(())
    }

    fn refused(&self, message: &str) -> Error {
        Error::Sync {
            url: self.client.server().to_string(),
            status: None,
            code: Some("round_closed".into()),
            message: message.to_string(),
        }
    }
}

fn parse_keys(c: &str, s: &str) -> Result<PublicKeys, Error> {
    let key = |t: &str| -> Result<[u8; 32], Error> {
        unhex(t).and_then(|b| b.try_into().ok()).ok_or_else(|| {
            Error::InvalidArgument(format!("a participant's key '{t}' is not 32 bytes of hex"))
        })
    };
    Ok(PublicKeys { c: key(c)?, s: key(s)? })
}

/// The round's secrets from `path`, or new ones written there (owner-readable only).
fn load_or_create(path: &Path, prg: &mut Prg) -> Result<RoundSecrets, Error> {
    if let Ok(bytes) = std::fs::read(path) {
        if let Ok(secrets) = serde_json::from_slice(&bytes) {
            return Ok(secrets);
        }
    }
    let secrets = RoundSecrets::generate(prg);
    crate::format::write_private(path, &serde_json::to_vec(&secrets).unwrap_or_default())?;
    Ok(secrets)
}
