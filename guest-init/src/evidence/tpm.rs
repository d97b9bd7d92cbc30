//! A TPM 2.0 quote (QEMU + swtpm, or any TPM whose EK the service trusts): the EK and its
//! certificate, an AK the service makes a credential for (activated by this TPM only), and a
//! quote of the SHA-256 PCRs over the binding.

use base64::Engine;
use dcr_protocol::contract::Contract;
use dcr_protocol::wire::{ChallengeRequest, Evidence, Tee, TpmEvidence, TpmIdentity};
use zeroize::Zeroizing;

use super::pcr_values;
use crate::client::{challenge, Client};
use crate::console::say;
use crate::release::{release, Keys, TeeKeys};
use crate::{step, StepError, B64};

/// PCRs the quote covers (SHA-256 bank): firmware 0-7, UKI 9/11/12, 14, and 23 (contract).
const QUOTED_PCRS: [u32; 14] = [0, 1, 2, 3, 4, 5, 6, 7, 9, 11, 12, 13, 14, 23];

/// EK (with its certificate) and AK to the service, the credential activated, a quote of
/// [`QUOTED_PCRS`] over the binding, then the release.
pub fn attest_tpm(
    c: &Contract,
    digest: &[u8; 32],
    client: &Client,
    tk: &TeeKeys,
) -> Result<Keys, StepError> {
    let mut tpm = step("tpm", crate::tpm::Tpm::open("/dev/tpmrm0"))?;
    let (ek, ek_public) = step("tpm", tpm.create_ek())?;
    let ek_cert = step(
        "tpm",
        tpm.nv_read(crate::tpm::EK_CERT_NV_INDEX).map_err(|e| {
            format!(
                "EK certificate at NV {:#x}: {e}",
                crate::tpm::EK_CERT_NV_INDEX
            )
        }),
    )?;
    let (ak, ak_public) = step("tpm", tpm.create_ak())?;
    let req = ChallengeRequest {
        tee: Tee::Tpm,
        tpm: Some(TpmIdentity {
            ek_public: B64.encode(&ek_public),
            ek_cert: B64.encode(&ek_cert),
            ak_public: B64.encode(&ak_public),
        }),
    };
    let (ch, nonce) = challenge(client, &req)?;
    let cred = step(
        "challenge",
        B64.decode(ch.credential.as_deref().unwrap_or_default())
            .map_err(|e| format!("credential: {e}")),
    )?;
    let secret = Zeroizing::new(step("tpm", tpm.activate_credential(ak, ek, &cred))?);
    let rd = tk.report_data(&nonce, digest);
    let (message, signature) = step("tpm", tpm.quote(ak, &rd, &QUOTED_PCRS))?;
    let pcrs = pcr_values(&QUOTED_PCRS)?;
    let evidence = Evidence::Tpm(TpmEvidence {
        message: B64.encode(&message),
        signature: B64.encode(&signature),
        pcrs: B64.encode(&pcrs),
        ak_public: B64.encode(&ak_public),
        activation: Some(hex::encode(&secret[..])),
    });
    say(&format!(
        "evidence tee=tpm quote={} signature={} pcrs={} ek-cert={} bytes",
        message.len(),
        signature.len(),
        QUOTED_PCRS.len(),
        ek_cert.len()
    ));
    release(c, digest, client, &ch.session_id, &nonce, tk, evidence)
}
