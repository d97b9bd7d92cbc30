//! The tpm2-protocol marshalling checked byte for byte against the hand-built commands
//! guest-init sent before it (the old `Cmd` builder and templates, kept here verbatim as the
//! reference), and the response decoding against the old reader's results.

use super::*;

/// The pre-tpm2-protocol marshalling, verbatim.
mod legacy {
    pub const TPM_ST_SESSIONS: u16 = 0x8002;
    pub const TPM_ST_NO_SESSIONS: u16 = 0x8001;
    pub const TPM_CC_PCR_EXTEND: u32 = 0x0000_0182;
    pub const TPM_CC_CREATE_PRIMARY: u32 = 0x131;
    pub const TPM_CC_NV_READ_PUBLIC: u32 = 0x169;
    pub const TPM_CC_NV_READ: u32 = 0x14e;
    pub const TPM_CC_START_AUTH_SESSION: u32 = 0x176;
    pub const TPM_CC_POLICY_SECRET: u32 = 0x151;
    pub const TPM_CC_ACTIVATE_CREDENTIAL: u32 = 0x147;
    pub const TPM_CC_QUOTE: u32 = 0x158;
    pub const TPM_RS_PW: u32 = 0x4000_0009;
    pub const TPM_RH_OWNER: u32 = 0x4000_0001;
    pub const TPM_RH_NULL: u32 = 0x4000_0007;
    pub const TPM_RH_ENDORSEMENT: u32 = 0x4000_000b;
    pub const TPM_ALG_SHA256: u16 = 0x000b;
    pub const TPM_ALG_NULL: u16 = 0x0010;

    /// The old zerocopy `PcrExtendSha256` struct's 65 bytes, field by field.
    pub fn pcr_extend(pcr: u32, digest: [u8; 32]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&TPM_ST_SESSIONS.to_be_bytes());
        b.extend_from_slice(&65u32.to_be_bytes());
        b.extend_from_slice(&TPM_CC_PCR_EXTEND.to_be_bytes());
        b.extend_from_slice(&pcr.to_be_bytes());
        b.extend_from_slice(&9u32.to_be_bytes());
        b.extend_from_slice(&TPM_RS_PW.to_be_bytes());
        b.extend_from_slice(&0u16.to_be_bytes());
        b.push(0);
        b.extend_from_slice(&0u16.to_be_bytes());
        b.extend_from_slice(&1u32.to_be_bytes());
        b.extend_from_slice(&TPM_ALG_SHA256.to_be_bytes());
        b.extend_from_slice(&digest);
        assert_eq!(b.len(), 65);
        b
    }

    pub fn ek_template() -> Vec<u8> {
        let mut t = Vec::new();
        t.extend_from_slice(&0x0001u16.to_be_bytes()); // TPM_ALG_RSA
        t.extend_from_slice(&TPM_ALG_SHA256.to_be_bytes());
        t.extend_from_slice(&0x0003_00b2u32.to_be_bytes());
        t.extend_from_slice(&32u16.to_be_bytes());
        t.extend_from_slice(&[
            0x83, 0x71, 0x97, 0x67, 0x44, 0x84, 0xb3, 0xf8, 0x1a, 0x90, 0xcc, 0x8d, 0x46, 0xa5,
            0xd7, 0x24, 0xfd, 0x52, 0xd7, 0x6e, 0x06, 0x52, 0x0b, 0x64, 0xf2, 0xa1, 0xda, 0x1b,
            0x33, 0x14, 0x69, 0xaa,
        ]);
        t.extend_from_slice(&0x0006u16.to_be_bytes()); // AES
        t.extend_from_slice(&128u16.to_be_bytes());
        t.extend_from_slice(&0x0043u16.to_be_bytes()); // CFB
        t.extend_from_slice(&TPM_ALG_NULL.to_be_bytes()); // scheme
        t.extend_from_slice(&2048u16.to_be_bytes());
        t.extend_from_slice(&0u32.to_be_bytes()); // exponent 65537
        t.extend_from_slice(&256u16.to_be_bytes());
        t.extend_from_slice(&[0u8; 256]);
        t
    }

    pub fn ak_template() -> Vec<u8> {
        let mut t = Vec::new();
        t.extend_from_slice(&0x0023u16.to_be_bytes()); // TPM_ALG_ECC
        t.extend_from_slice(&TPM_ALG_SHA256.to_be_bytes());
        t.extend_from_slice(&0x0005_0072u32.to_be_bytes());
        t.extend_from_slice(&0u16.to_be_bytes()); // no authPolicy
        t.extend_from_slice(&TPM_ALG_NULL.to_be_bytes()); // symmetric
        t.extend_from_slice(&0x0018u16.to_be_bytes()); // ECDSA
        t.extend_from_slice(&TPM_ALG_SHA256.to_be_bytes());
        t.extend_from_slice(&0x0003u16.to_be_bytes()); // NIST P-256
        t.extend_from_slice(&TPM_ALG_NULL.to_be_bytes()); // kdf
        t.extend_from_slice(&0u16.to_be_bytes()); // unique.x
        t.extend_from_slice(&0u16.to_be_bytes()); // unique.y
        t
    }

    pub struct Cmd {
        b: Vec<u8>,
    }

    impl Cmd {
        pub fn new(tag: u16, cc: u32) -> Self {
            let mut b = Vec::with_capacity(128);
            b.extend_from_slice(&tag.to_be_bytes());
            b.extend_from_slice(&0u32.to_be_bytes());
            b.extend_from_slice(&cc.to_be_bytes());
            Cmd { b }
        }
        pub fn u8(mut self, v: u8) -> Self {
            self.b.push(v);
            self
        }
        pub fn u16(mut self, v: u16) -> Self {
            self.b.extend_from_slice(&v.to_be_bytes());
            self
        }
        pub fn u32(mut self, v: u32) -> Self {
            self.b.extend_from_slice(&v.to_be_bytes());
            self
        }
        pub fn raw(mut self, v: &[u8]) -> Self {
            self.b.extend_from_slice(v);
            self
        }
        pub fn tpm2b(self, v: &[u8]) -> Self {
            self.u16(v.len() as u16).raw(v)
        }
        pub fn auth(self, sessions: &[u32]) -> Self {
            let mut s = self.u32(9 * sessions.len() as u32);
            for h in sessions {
                s = s.u32(*h).u16(0).u8(0).u16(0);
            }
            s
        }
        pub fn done(mut self) -> Vec<u8> {
            let n = self.b.len() as u32;
            self.b[2..6].copy_from_slice(&n.to_be_bytes());
            self.b
        }
    }

    pub fn create_primary(template: &[u8]) -> Vec<u8> {
        Cmd::new(TPM_ST_SESSIONS, TPM_CC_CREATE_PRIMARY)
            .u32(TPM_RH_ENDORSEMENT)
            .auth(&[TPM_RS_PW])
            .u16(4)
            .u16(0)
            .u16(0)
            .tpm2b(template)
            .u16(0)
            .u32(0)
            .done()
    }

    pub fn nv_read_public(index: u32) -> Vec<u8> {
        Cmd::new(TPM_ST_NO_SESSIONS, TPM_CC_NV_READ_PUBLIC)
            .u32(index)
            .done()
    }

    pub fn nv_read(index: u32, n: u16, offset: u16) -> Vec<u8> {
        Cmd::new(TPM_ST_SESSIONS, TPM_CC_NV_READ)
            .u32(TPM_RH_OWNER)
            .u32(index)
            .auth(&[TPM_RS_PW])
            .u16(n)
            .u16(offset)
            .done()
    }

    pub fn start_auth_session(nonce: &[u8]) -> Vec<u8> {
        Cmd::new(TPM_ST_NO_SESSIONS, TPM_CC_START_AUTH_SESSION)
            .u32(TPM_RH_NULL)
            .u32(TPM_RH_NULL)
            .tpm2b(nonce)
            .u16(0)
            .u8(0x01)
            .u16(TPM_ALG_NULL)
            .u16(TPM_ALG_SHA256)
            .done()
    }

    pub fn policy_secret(session: u32) -> Vec<u8> {
        Cmd::new(TPM_ST_SESSIONS, TPM_CC_POLICY_SECRET)
            .u32(TPM_RH_ENDORSEMENT)
            .u32(session)
            .auth(&[TPM_RS_PW])
            .u16(0)
            .u16(0)
            .u16(0)
            .u32(0)
            .done()
    }

    pub fn activate_credential(ak: u32, ek: u32, session: u32, credential: &[u8]) -> Vec<u8> {
        Cmd::new(TPM_ST_SESSIONS, TPM_CC_ACTIVATE_CREDENTIAL)
            .u32(ak)
            .u32(ek)
            .auth(&[TPM_RS_PW, session])
            .raw(&credential[8..])
            .done()
    }

    pub fn quote(ak: u32, qualifying: &[u8], pcrs: &[u32]) -> Vec<u8> {
        let mut bitmap = [0u8; 3];
        for p in pcrs {
            bitmap[(*p / 8) as usize] |= 1 << (p % 8);
        }
        Cmd::new(TPM_ST_SESSIONS, TPM_CC_QUOTE)
            .u32(ak)
            .auth(&[TPM_RS_PW])
            .tpm2b(qualifying)
            .u16(TPM_ALG_NULL)
            .u32(1)
            .u16(TPM_ALG_SHA256)
            .u8(3)
            .raw(&bitmap)
            .done()
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn pcr_extend_bytes_match_the_hand_built_command() {
    for (pcr, fill) in [(23u32, 0xa5u8), (0, 0), (16, 0xff)] {
        let d = [fill; 32];
        let new = pcr_extend_command(pcr, d).unwrap();
        assert_eq!(hex(&new), hex(&legacy::pcr_extend(pcr, d)), "PCR {pcr}");
    }
}

#[test]
fn templates_are_byte_identical() {
    assert_eq!(
        hex(&to_bytes(&ek_template().unwrap()).unwrap()),
        hex(&legacy::ek_template())
    );
    assert_eq!(
        hex(&to_bytes(&ak_template()).unwrap()),
        hex(&legacy::ak_template())
    );
    // type, nameAlg, attributes, authPolicy(2+32), symmetric(6), scheme(2), keyBits,
    // exponent, unique(2+256)
    assert_eq!(
        to_bytes(&ek_template().unwrap()).unwrap().len(),
        2 + 2 + 4 + 34 + 6 + 2 + 2 + 4 + 258
    );
    assert_eq!(
        to_bytes(&ak_template()).unwrap().len(),
        2 + 2 + 4 + 2 + 2 + 4 + 2 + 2 + 4
    );
}

#[test]
fn create_primary_bytes_match_the_hand_built_commands() {
    let ek = create_primary_command(ek_template().unwrap()).unwrap();
    assert_eq!(
        hex(&ek),
        hex(&legacy::create_primary(&legacy::ek_template()))
    );
    let ak = create_primary_command(ak_template()).unwrap();
    assert_eq!(
        hex(&ak),
        hex(&legacy::create_primary(&legacy::ak_template()))
    );
}

#[test]
fn nv_commands_match_the_hand_built_commands() {
    for index in [EK_CERT_NV_INDEX, 0x0140_0001] {
        assert_eq!(
            hex(&nv_read_public_command(index).unwrap()),
            hex(&legacy::nv_read_public(index))
        );
        for (n, off) in [(512u16, 0u16), (512, 512), (17, 1024)] {
            assert_eq!(
                hex(&nv_read_command(index, n, off).unwrap()),
                hex(&legacy::nv_read(index, n, off))
            );
        }
    }
}

#[test]
fn session_and_credential_commands_match_the_hand_built_commands() {
    let nonce: [u8; 16] = core::array::from_fn(|i| i as u8 * 7);
    assert_eq!(
        hex(&start_policy_session_command(&nonce).unwrap()),
        hex(&legacy::start_auth_session(&nonce))
    );
    let session = 0x0300_0000;
    assert_eq!(
        hex(&policy_secret_command(session).unwrap()),
        hex(&legacy::policy_secret(session))
    );
    // A tpm2-tools credential: header, TPM2B_ID_OBJECT (integrity HMAC + encIdentity),
    // TPM2B_ENCRYPTED_SECRET (RSA 2048).
    let mut cred = vec![0xba, 0xdc, 0xc0, 0xde, 0, 0, 0, 1];
    cred.extend_from_slice(&68u16.to_be_bytes());
    cred.extend((0..68).map(|i| i as u8));
    cred.extend_from_slice(&256u16.to_be_bytes());
    cred.extend((0..256).map(|i| (i * 3) as u8));
    let (ak, ek) = (0x8000_0001, 0x8000_0000);
    assert_eq!(
        hex(&activate_credential_command(ak, ek, session, &cred[8..]).unwrap()),
        hex(&legacy::activate_credential(ak, ek, session, &cred))
    );
    // Trailing bytes are refused rather than sent.
    cred.push(0);
    assert!(activate_credential_command(ak, ek, session, &cred[8..]).is_err());
}

#[test]
fn quote_commands_match_the_hand_built_commands() {
    let all: Vec<u32> = (0..24).collect();
    for (qualifying, pcrs) in [
        (vec![0x11u8; 32], vec![0u32, 1, 2, 3, 4, 5, 6, 7, 23]),
        (vec![0x22u8; 64], all),
        (vec![], vec![23]),
    ] {
        assert_eq!(
            hex(&quote_command(0x8100_0003, &qualifying, &pcrs).unwrap()),
            hex(&legacy::quote(0x8100_0003, &qualifying, &pcrs))
        );
    }
}

/// A response frame with TPM_ST_SESSIONS: `handles`, parameterSize, `params`, one empty
/// password-session response (nonce, attributes, hmac).
fn response(handles: &[u32], params: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&0x8002u16.to_be_bytes());
    b.extend_from_slice(&0u32.to_be_bytes());
    b.extend_from_slice(&0u32.to_be_bytes());
    for h in handles {
        b.extend_from_slice(&h.to_be_bytes());
    }
    b.extend_from_slice(&(params.len() as u32).to_be_bytes());
    b.extend_from_slice(params);
    b.extend_from_slice(&[0, 0, 1, 0, 0]);
    let n = b.len() as u32;
    b[2..6].copy_from_slice(&n.to_be_bytes());
    b
}

fn tpm2b(v: &[u8]) -> Vec<u8> {
    let mut b = (v.len() as u16).to_be_bytes().to_vec();
    b.extend_from_slice(v);
    b
}

#[test]
fn create_primary_response_gives_the_public_area_as_the_tpm_sent_it() {
    // The AK template with a P-256 point filled in, as the TPM returns it.
    let mut public = legacy::ak_template();
    public.truncate(public.len() - 4);
    public.extend(tpm2b(&[0x0a; 32]));
    public.extend(tpm2b(&[0x0b; 32]));
    let out_public = tpm2b(&public);
    let mut params = out_public.clone();
    // creationData: no PCRs, locality 0, parentNameAlg SHA-256, parentName, qualifiedName,
    // outsideInfo.
    let mut cd = 0u32.to_be_bytes().to_vec();
    cd.extend(tpm2b(&[]));
    cd.push(1);
    cd.extend_from_slice(&0x000bu16.to_be_bytes());
    cd.extend(tpm2b(&0x4000_000bu32.to_be_bytes()));
    cd.extend(tpm2b(&0x4000_000bu32.to_be_bytes()));
    cd.extend(tpm2b(&[]));
    params.extend(tpm2b(&cd));
    params.extend(tpm2b(&[0x33; 32])); // creationHash
    params.extend_from_slice(&0x8021u16.to_be_bytes()); // TPM_ST_CREATION
    params.extend_from_slice(&0x4000_000bu32.to_be_bytes());
    params.extend(tpm2b(&[0x44; 32]));
    let mut name = 0x000bu16.to_be_bytes().to_vec();
    name.extend_from_slice(&[0x55; 32]);
    params.extend(tpm2b(&name));
    let resp = response(&[0x8000_0000], &params);

    let r: TpmCreatePrimaryResponse = TpmResponse::cast(&resp).unwrap().unmarshal().unwrap();
    assert_eq!(u32::from(r.handles[0]), 0x8000_0000);
    assert_eq!(hex(&to_bytes(&r.out_public).unwrap()), hex(&out_public));
}

#[test]
fn quote_response_gives_attest_and_signature_as_the_tpm_sent_them() {
    // TPMS_ATTEST: magic, TPM_ST_ATTEST_QUOTE, qualifiedSigner, extraData, clockInfo,
    // firmwareVersion, TPMS_QUOTE_INFO.
    let mut attest = 0xff54_4347u32.to_be_bytes().to_vec();
    attest.extend_from_slice(&0x8018u16.to_be_bytes());
    let mut signer = 0x000bu16.to_be_bytes().to_vec();
    signer.extend_from_slice(&[0x66; 32]);
    attest.extend(tpm2b(&signer));
    attest.extend(tpm2b(&[0x77; 64]));
    attest.extend_from_slice(&123_456u64.to_be_bytes());
    attest.extend_from_slice(&7u32.to_be_bytes());
    attest.extend_from_slice(&0u32.to_be_bytes());
    attest.push(1);
    attest.extend_from_slice(&0x2000_0001_0002_0003u64.to_be_bytes());
    attest.extend_from_slice(&1u32.to_be_bytes());
    attest.extend_from_slice(&0x000bu16.to_be_bytes());
    attest.extend_from_slice(&[3, 0xff, 0xff, 0xff]);
    attest.extend(tpm2b(&[0x88; 32]));
    // TPMT_SIGNATURE: ECDSA, SHA-256, r, s.
    let mut sig = 0x0018u16.to_be_bytes().to_vec();
    sig.extend_from_slice(&0x000bu16.to_be_bytes());
    sig.extend(tpm2b(&[0x99; 32]));
    sig.extend(tpm2b(&[0xaa; 32]));
    let mut params = tpm2b(&attest);
    params.extend_from_slice(&sig);
    let resp = response(&[], &params);

    let r: TpmQuoteResponse = TpmResponse::cast(&resp).unwrap().unmarshal().unwrap();
    assert_eq!(hex(&to_bytes(&r.quoted.inner).unwrap()), hex(&attest));
    assert_eq!(hex(&to_bytes(&r.signature).unwrap()), hex(&sig));

    // An RSASSA signature (the Azure AK) likewise.
    let mut rsa = 0x0014u16.to_be_bytes().to_vec();
    rsa.extend_from_slice(&0x000bu16.to_be_bytes());
    rsa.extend(tpm2b(&[0xbb; 256]));
    let mut params = tpm2b(&attest);
    params.extend_from_slice(&rsa);
    let resp = response(&[], &params);
    let r: TpmQuoteResponse = TpmResponse::cast(&resp).unwrap().unmarshal().unwrap();
    assert_eq!(hex(&to_bytes(&r.signature).unwrap()), hex(&rsa));
}

#[test]
fn response_code_reads_the_header() {
    assert_eq!(
        response_code(&[0x80, 0x01, 0, 0, 0, 10, 0, 0, 0x09, 0x22]),
        Some(0x922)
    );
    assert_eq!(response_code(&[0x80, 0x01, 0, 0, 0, 10, 0, 0, 0]), None);
}
