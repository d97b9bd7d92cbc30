//! HTTP/1.1 to the key-release service (docs/protocol.md): retries with backoff until a total
//! deadline, 4xx answers final, bodies bounded; the API paths the guest calls.

use std::io::Read;
use std::time::{Duration, Instant};

use dcr_protocol::wire::{Challenge, ChallengeRequest};

use crate::console::say;
use crate::{fail, step, StepError};

/// The longest one read or write may wait, whatever the phase.
const PER_IO_SECS: u64 = 60;

/// HTTP to the key-release service with retries, backoff and a total deadline.
pub struct Client {
    base: String,
    agent: ureq::Agent,
    deadline: Instant,
}

impl Client {
    /// `vsock`: connect every request to this (CID, port) instead of the URL's host (the
    /// contract's `network = {mode = "vsock"}`); the URL still gives the Host header and paths.
    pub fn new(url: &str, deadline_secs: u64, vsock: Option<(u32, u32)>) -> Self {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(5)))
            // Waiting for an answer is bounded by the deadline; a large blob's body may take
            // longer to stream than that, so the body itself is not.
            .timeout_recv_response(Some(Duration::from_secs(deadline_secs)))
            .timeout_send_body(Some(Duration::from_secs(deadline_secs.max(600))))
            // No single read or write waits longer than this, in any phase (a body being
            // streamed included): a peer that stops sending, or stops taking bytes, fails the
            // attempt instead of holding PID 1 for ever.
            .timeout_per_read(Some(Duration::from_secs(PER_IO_SECS)))
            .timeout_per_write(Some(Duration::from_secs(PER_IO_SECS)))
            // An answer's body (at most `limit` bytes, 1 MiB or less) is read within this;
            // `get_stream`'s blobs, which may be large, lift it.
            .timeout_recv_body(Some(Duration::from_secs(deadline_secs.max(600))))
            .build();
        let agent = match vsock {
            None => config.new_agent(),
            Some((cid, port)) => ureq::Agent::with_parts(
                config,
                crate::net::vsock::VsockConnector { cid, port },
                crate::net::vsock::NoResolver,
            ),
        };
        Client {
            base: url.trim_end_matches('/').to_string(),
            agent,
            deadline: Instant::now() + Duration::from_secs(deadline_secs),
        }
    }

    /// Run `once` until it settles: `Err(problem)` is retried (250 ms doubling to 4 s) until
    /// the total deadline; `Ok(result)` is final either way.
    fn retrying<T>(
        &self,
        what: &'static str,
        mut once: impl FnMut() -> Result<Result<T, StepError>, String>,
    ) -> Result<T, StepError> {
        let mut backoff = Duration::from_millis(250);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let problem = match once() {
                Ok(settled) => return settled,
                Err(p) => p,
            };
            if Instant::now() + backoff > self.deadline {
                return fail(
                    what,
                    format!(
                        "service {} unreachable until the deadline ({attempt} attempts; last: {problem})",
                        self.base
                    ),
                );
            }
            say(&format!(
                "retry {what} attempt={attempt} in={}ms reason=\"{}\"",
                backoff.as_millis(),
                problem.replace('"', "'")
            ));
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(4));
        }
    }

    /// One request; transport errors and 5xx are retried until the deadline, 4xx are final.
    pub fn call(
        &self,
        what: &'static str,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        auth: Option<&str>,
        limit: u64,
    ) -> Result<Vec<u8>, StepError> {
        let url = format!("{}{path}", self.base);
        self.retrying(what, || {
            let result = match method {
                "GET" => {
                    let mut r = self.agent.get(&url);
                    if let Some(a) = auth {
                        r = r.header("authorization", a);
                    }
                    r.call()
                }
                "PUT" => {
                    let mut r = self.agent.put(&url);
                    if let Some(a) = auth {
                        r = r.header("authorization", a);
                    }
                    r.send(body.unwrap_or_default())
                }
                _ => {
                    let mut r = self
                        .agent
                        .post(&url)
                        .header("content-type", "application/json");
                    if let Some(a) = auth {
                        r = r.header("authorization", a);
                    }
                    r.send(body.unwrap_or_default())
                }
            };
            let mut resp = result.map_err(|e| e.to_string())?;
            let status = resp.status().as_u16();
            let bytes = resp.body_mut().with_config().limit(limit).read_to_vec();
            match (status, bytes) {
                (200..=299, Ok(b)) => Ok(Ok(b)),
                (400..=499, Ok(b)) => {
                    let e: serde_json::Value = serde_json::from_slice(&b).unwrap_or_default();
                    Ok(fail(
                        what,
                        format!(
                            "refused by the service: {}: {}",
                            e["code"].as_str().unwrap_or("?"),
                            e["message"].as_str().unwrap_or("(no message)")
                        ),
                    ))
                }
                (s, _) => Err(format!("HTTP {s}")),
            }
        })
    }

    /// GET with the same retry rules, handing the body to `f` as a stream. `f` runs once, on
    /// the first 2xx answer; its error is final (no retry: the bytes were bad, not the link).
    pub fn get_stream<T>(
        &self,
        what: &'static str,
        path: &str,
        f: impl FnOnce(&mut dyn Read) -> Result<T, String>,
    ) -> Result<T, StepError> {
        let url = format!("{}{path}", self.base);
        let mut f = Some(f);
        self.retrying(what, || {
            let mut resp = self
                .agent
                .get(&url)
                .config()
                .timeout_recv_body(None)
                .build()
                .call()
                .map_err(|e| e.to_string())?;
            if resp.status().is_client_error() {
                return Ok(fail(
                    what,
                    format!(
                        "refused by the service: HTTP {} for {path}",
                        resp.status().as_u16()
                    ),
                ));
            }
            if !resp.status().is_success() {
                return Err(format!("HTTP {}", resp.status().as_u16()));
            }
            let mut body = resp.body_mut().with_config().limit(u64::MAX).reader();
            let f = f.take().expect("runs once: a 2xx answer settles the loop");
            Ok(f(&mut body).map_err(|detail| StepError { step: what, detail }))
        })
    }
}

/// POST /v1/challenge: the challenge and its nonce bytes.
pub fn challenge(
    client: &Client,
    req: &ChallengeRequest,
) -> Result<(Challenge, Vec<u8>), StepError> {
    let body = client.call(
        "challenge",
        "POST",
        "/v1/challenge",
        Some(&serde_json::to_vec(req).expect("json")),
        None,
        1 << 20,
    )?;
    let ch: Challenge = step(
        "challenge",
        serde_json::from_slice(&body).map_err(|e| e.to_string()),
    )?;
    let nonce = step(
        "challenge",
        hex::decode(&ch.nonce).map_err(|e| format!("nonce: {e}")),
    )?;
    Ok((ch, nonce))
}

/// A contract's blob at the service.
pub fn blob_path(digest: &[u8; 32], name: &str) -> String {
    format!("/v1/contracts/{}/blobs/{name}", hex::encode(digest))
}
