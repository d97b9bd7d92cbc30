//! TLS for the parties' listener (`--tls-listen`): a self-signed certificate made on first
//! start (ECDSA P-256, rcgen) for the names the operator gives (`--tls-name`), kept in the data
//! dir (`tls.key` 0600, `tls.crt`, `tls.names`). Its DER goes into `service.pub.json`, which the
//! parties pin: their client trusts exactly this certificate and nothing else (no CA), so a
//! man in the middle without the service's key sees neither bearer tokens nor blobs.

use std::path::Path;

use super::{file_err, write_secret, ServiceError};

pub struct TlsMaterial {
    pub cert_der: Vec<u8>,
    key_der: zeroize::Zeroizing<Vec<u8>>,
}

/// Load the service's certificate, or make one for `names` (DNS names or IP addresses). A
/// kept certificate made for other names is an error: parties pinned it, so replacing it is
/// the operator's explicit step (remove tls.crt, tls.key, tls.names; parties re-pin).
pub fn load_or_create(dir: &Path, names: &[String]) -> Result<TlsMaterial, ServiceError> {
    let (kp, cp, np) = (
        dir.join("tls.key"),
        dir.join("tls.crt"),
        dir.join("tls.names"),
    );
    let mut want: Vec<String> = names.to_vec();
    want.sort();
    want.dedup();
    if want.is_empty() {
        return Err(file_err(&cp, "--tls-listen needs at least one --tls-name"));
    }
    if cp.exists() || kp.exists() {
        let kept = std::fs::read_to_string(&np).map_err(|e| file_err(&np, e))?;
        let kept: Vec<String> = kept.lines().map(str::to_string).collect();
        if kept != want {
            return Err(file_err(
                &cp,
                format!(
                    "made for {} but --tls-name asks for {}; remove tls.crt, tls.key and tls.names to make a new certificate (parties must then pin the new service.pub.json)",
                    kept.join(","),
                    want.join(",")
                ),
            ));
        }
        let cert_pem = std::fs::read_to_string(&cp).map_err(|e| file_err(&cp, e))?;
        let key_pem =
            zeroize::Zeroizing::new(std::fs::read_to_string(&kp).map_err(|e| file_err(&kp, e))?);
        let cert_der =
            pem_der(&cert_pem, "CERTIFICATE").ok_or_else(|| file_err(&cp, "no PEM CERTIFICATE"))?;
        let key_der = zeroize::Zeroizing::new(
            pem_der(&key_pem, "PRIVATE KEY").ok_or_else(|| file_err(&kp, "no PEM PRIVATE KEY"))?,
        );
        return Ok(TlsMaterial { cert_der, key_der });
    }
    let key = rcgen::KeyPair::generate().map_err(|e| file_err(&kp, e))?;
    let mut params = rcgen::CertificateParams::new(want.clone()).map_err(|e| file_err(&cp, e))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "dcr key-release service");
    let cert = params.self_signed(&key).map_err(|e| file_err(&cp, e))?;
    write_secret(&kp, &key.serialize_pem())?;
    std::fs::write(&cp, cert.pem()).map_err(|e| file_err(&cp, e))?;
    std::fs::write(&np, want.join("\n")).map_err(|e| file_err(&np, e))?;
    Ok(TlsMaterial {
        cert_der: cert.der().to_vec(),
        key_der: zeroize::Zeroizing::new(key.serialize_der()),
    })
}

fn pem_der(text: &str, label: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.find(&begin)? + begin.len();
    let stop = start + text[start..].find(&end)?;
    let b64: String = text[start..stop]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

/// The rustls server configuration (TLS 1.2 and 1.3, ring).
pub fn acceptor(m: &TlsMaterial) -> Result<tokio_rustls::TlsAcceptor, ServiceError> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| file_err(Path::new("tls"), e))?
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(m.cert_der.clone())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(m.key_der.to_vec())),
        )
        .map_err(|e| file_err(Path::new("tls.key"), e))?;
    Ok(tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(cfg)))
}
