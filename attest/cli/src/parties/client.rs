//! The service client of the parties: registration (signed receipts), contract blobs, over
//! TLS pinned to the service's own certificate (or plain HTTP to this machine).

use std::path::Path;

use base64::Engine;
use dcr_protocol::keys::{hpke_seal, HpkePublic, SigningPublic};
use dcr_protocol::release::{policy_binding, register_info, Signed, RECEIPT_DOMAIN};
use dcr_protocol::seal::Dek;
use dcr_protocol::wire::{
    ApiError, RegisterRequest, RegistrationReceipt, ReleasePolicy, ServiceInfo, Wrapped,
};
use rand_core::OsRng;

use super::files::{copy, write_atomically};
use super::{ferr, PartyError};

/// What a party registers: its DEK for a dataset key of a contract, with the release policy.
pub struct Registration<'a> {
    pub key_id: &'a str,
    /// The contract's owner of that dataset (bound into the wrapping; the service checks it is
    /// the party whose token registers).
    pub owner: &'a str,
    pub dek: &'a Dek,
    pub policy: ReleasePolicy,
    /// The contract as packed (canonical JSON).
    pub contract_canonical: &'a [u8],
}

/// A blocking client for the service API.
pub struct Client {
    pub url: String,
    agent: ureq::Agent,
    /// Allow bearer tokens over plain HTTP to a host that is not loopback.
    pub insecure_http: bool,
}

/// Whether `url` is `http://` to a loopback host (127.0.0.0/8, ::1, localhost).
pub fn is_plain_loopback(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = match authority.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

fn api_error(url: &str, status: u16, body: &[u8]) -> PartyError {
    match serde_json::from_slice::<ApiError>(body) {
        Ok(e) => PartyError::Refused {
            url: url.to_string(),
            code: e.code,
            message: e.message,
        },
        Err(_) => PartyError::Http {
            url: url.to_string(),
            reason: format!("HTTP {status}"),
        },
    }
}

impl Client {
    /// A client for an `http://` service (an `https://` one needs [`Client::pinned`]).
    pub fn new(url: &str) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(std::time::Duration::from_secs(600)))
            .build()
            .new_agent();
        Client {
            url: url.trim_end_matches('/').to_string(),
            agent,
            insecure_http: false,
        }
    }

    /// A client for the service `pinned` describes: for an `https://` URL it trusts exactly
    /// the certificate in `pinned.tls_certificate` (no CA, no system roots).
    pub fn pinned(url: &str, pinned: &ServiceInfo) -> Result<Self, PartyError> {
        if !url.starts_with("https://") {
            return Ok(Client::new(url));
        }
        let der = pinned
            .tls_certificate
            .as_deref()
            .and_then(|c| base64::engine::general_purpose::STANDARD.decode(c).ok())
            .ok_or_else(|| {
                PartyError::Format(format!(
                    "{url}: https needs the service's certificate in the pinned service.pub.json (tls_certificate: serve with --tls-listen)"
                ))
            })?;
        let cert = ureq::tls::Certificate::from_der(&der).to_owned();
        let tls = ureq::tls::TlsConfig::builder()
            .provider(ureq::tls::TlsProvider::Rustls)
            .root_certs(ureq::tls::RootCerts::new_with_certs(&[cert]))
            .build();
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(std::time::Duration::from_secs(600)))
            .tls_config(tls)
            .build()
            .new_agent();
        Ok(Client {
            url: url.trim_end_matches('/').to_string(),
            agent,
            insecure_http: false,
        })
    }

    /// Bearer tokens travel only over TLS or to this machine, unless `insecure_http`.
    fn token_transport_ok(&self) -> Result<(), PartyError> {
        if self.url.starts_with("https://") || is_plain_loopback(&self.url) || self.insecure_http {
            return Ok(());
        }
        Err(PartyError::Format(format!(
            "refusing to send a party token over plain HTTP to {} (anyone on the path could read and reuse it): use the service's https:// listener (dcr-attest serve --tls-listen) with the pinned service.pub.json, or --insecure-http",
            self.url
        )))
    }

    fn http(&self, e: impl std::fmt::Display) -> PartyError {
        PartyError::Http {
            url: self.url.clone(),
            reason: e.to_string(),
        }
    }

    fn finish(&self, mut resp: ureq::http::Response<ureq::Body>) -> Result<Vec<u8>, PartyError> {
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_vec()
            .map_err(|e| self.http(e))?;
        if !(200..300).contains(&status) {
            return Err(api_error(&self.url, status, &body));
        }
        Ok(body)
    }

    pub fn post_json(
        &self,
        path: &str,
        token: Option<&str>,
        body: &serde_json::Value,
    ) -> Result<Vec<u8>, PartyError> {
        let mut req = self
            .agent
            .post(&format!("{}{path}", self.url))
            .header("content-type", "application/json");
        if let Some(t) = token {
            self.token_transport_ok()?;
            req = req.header("authorization", &format!("Bearer {t}"));
        }
        let resp = req
            .send(serde_json::to_vec(body).expect("json"))
            .map_err(|e| self.http(e))?;
        self.finish(resp)
    }

    pub fn service_info(&self) -> Result<ServiceInfo, PartyError> {
        let resp = self
            .agent
            .get(&format!("{}/v1/service", self.url))
            .call()
            .map_err(|e| self.http(e))?;
        let body = self.finish(resp)?;
        serde_json::from_slice(&body).map_err(|e| self.http(e))
    }

    /// Register a DEK with its release policy; the DEK travels HPKE-wrapped to the service's
    /// registration key, which must be the one in the pinned `service.pub.json`, bound to the
    /// whole policy and owner (`policy_binding` as the HPKE aad: a policy changed in transit
    /// does not open). The answer must be a receipt signed by the pinned signing key that
    /// names exactly this key, owner, contract and policy.
    pub fn register(
        &self,
        token: &str,
        pinned: &ServiceInfo,
        reg: Registration<'_>,
    ) -> Result<RegistrationReceipt, PartyError> {
        let Registration {
            key_id,
            owner,
            dek,
            policy,
            contract_canonical,
        } = reg;
        let live = self.service_info()?;
        if live != *pinned {
            return Err(PartyError::Format(format!(
                "the service at {} presents keys {} / {}, not the pinned {} / {}",
                self.url,
                live.signing_key,
                live.registration_key,
                pinned.signing_key,
                pinned.registration_key
            )));
        }
        let signing = SigningPublic::from_text(&pinned.signing_key)
            .map_err(|e| PartyError::Format(e.to_string()))?;
        let reg = HpkePublic::from_text(&pinned.registration_key)
            .map_err(|e| PartyError::Format(e.to_string()))?;
        let binding = policy_binding(key_id, owner, &policy);
        let (enc, ct) = hpke_seal(&reg, &register_info(key_id), &binding, &dek.0, &mut OsRng)
            .map_err(|e| PartyError::Format(e.to_string()))?;
        let b64 = base64::engine::general_purpose::STANDARD;
        let contract_digest = policy.contract_digest.clone();
        let req = RegisterRequest {
            key_id: key_id.to_string(),
            wrapped_dek: Wrapped {
                enc: b64.encode(enc),
                ciphertext: b64.encode(ct),
            },
            policy,
            contract: String::from_utf8(contract_canonical.to_vec())
                .map_err(|_| PartyError::Format("contract: not UTF-8".into()))?,
        };
        let body = self.post_json(
            "/v1/keys",
            Some(token),
            &serde_json::to_value(req).expect("json"),
        )?;
        let bad = |why: &str| {
            PartyError::Format(format!("service {}: registration receipt: {why}", self.url))
        };
        let signed: Signed =
            serde_json::from_slice(&body).map_err(|_| bad("not a signed receipt"))?;
        let payload = signed.verify_in(RECEIPT_DOMAIN, &signing).map_err(|_| {
            bad(&format!(
                "not signed by the pinned key {}",
                pinned.signing_key
            ))
        })?;
        let receipt: RegistrationReceipt =
            serde_json::from_slice(&payload).map_err(|e| bad(&e.to_string()))?;
        if receipt.key_id != key_id
            || receipt.owner != owner
            || receipt.contract_digest != contract_digest
            || receipt.policy_binding != hex::encode(binding)
        {
            return Err(bad(&format!(
                "names key {} of {} for contract {} with policy {}, not what was sent",
                receipt.key_id, receipt.owner, receipt.contract_digest, receipt.policy_binding
            )));
        }
        Ok(receipt)
    }

    /// PUT a blob of a contract (digest, hex) from a file (streamed). `auth` is the whole
    /// Authorization header value.
    pub fn put_blob(
        &self,
        auth: &str,
        contract_digest: &str,
        name: &str,
        file: &Path,
    ) -> Result<u64, PartyError> {
        if auth.starts_with("Bearer ") {
            self.token_transport_ok()?;
        }
        let f = std::fs::File::open(file).map_err(|e| ferr(file, e))?;
        let len = f.metadata().map_err(|e| ferr(file, e))?.len();
        let resp = self
            .agent
            .put(&format!(
                "{}/v1/contracts/{contract_digest}/blobs/{name}",
                self.url
            ))
            .header("authorization", auth)
            .header("content-length", &len.to_string())
            .send(ureq::SendBody::from_reader(&mut std::io::BufReader::new(f)))
            .map_err(|e| self.http(e))?;
        self.finish(resp)?;
        Ok(len)
    }

    /// GET `path` with a party's bearer token; the body (at most 64 MiB).
    pub fn get_with_token(&self, path: &str, token: &str) -> Result<Vec<u8>, PartyError> {
        self.token_transport_ok()?;
        let resp = self
            .agent
            .get(&format!("{}{path}", self.url))
            .header("authorization", &format!("Bearer {token}"))
            .call()
            .map_err(|e| self.http(e))?;
        self.finish(resp)
    }

    /// GET a blob of a contract into a file (atomically; never overwrites).
    pub fn get_blob(
        &self,
        contract_digest: &str,
        name: &str,
        out: &Path,
    ) -> Result<u64, PartyError> {
        let mut resp = self
            .agent
            .get(&format!(
                "{}/v1/contracts/{contract_digest}/blobs/{name}",
                self.url
            ))
            .call()
            .map_err(|e| self.http(e))?;
        let status = resp.status().as_u16();
        if status != 200 {
            let body = resp.body_mut().read_to_vec().unwrap_or_default();
            return Err(api_error(&self.url, status, &body));
        }
        let mut r = resp.body_mut().with_config().limit(u64::MAX).reader();
        let mut n = 0;
        write_atomically(out, |w| {
            n = copy(&mut r, w, Path::new(name), out)?;
            Ok(())
        })?;
        Ok(n)
    }
}

#[cfg(test)]
mod transport_tests {
    use super::is_plain_loopback as f;

    #[test]
    fn tokens_go_in_clear_only_to_this_machine() {
        for ok in [
            "http://127.0.0.1:8443",
            "http://127.9.9.9",
            "http://localhost:1/v1",
            "http://[::1]:80",
        ] {
            assert!(f(ok), "{ok}");
        }
        for no in [
            "http://10.0.2.2:8443",
            "http://192.168.1.5",
            "http://example.com:80",
            "http://127.0.0.1.example.com",
            "https://127.0.0.1:1",
            "http://[::ffff:10.0.0.1]:1",
        ] {
            assert!(!f(no), "{no}");
        }
    }
}
