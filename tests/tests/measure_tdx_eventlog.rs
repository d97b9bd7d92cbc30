//! TDX MRTD against vectors.json (Debian OVMF, both page orders) and event-log replays of the
//! real CCEL and GCE vTPM logs in ../shared/fixtures/measure/dstack-cc-eventlog.

use dcr_measure::eventlog::{self, TPM_ALG_SHA256, TPM_ALG_SHA384};
use dcr_measure::ovmf::Ovmf;
use dcr_measure::tdx::{self, PageOrder};
use dcr_tests::*;
use hex::encode as hex;

fn vectors(fx: &std::path::Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(fx.join("measure/vectors.json")).unwrap()).unwrap()
}

#[test]
fn mrtd_of_debian_ovmf_matches_vectors() {
    let Some(fx) = fixtures("mrtd_of_debian_ovmf_matches_vectors") else {
        return;
    };
    let v = &vectors(&fx)["tdx_derived_debian_ovmf"];
    let bytes = debian_ovmf(&fx);
    let fw = Ovmf::parse(&bytes).unwrap();
    let sections = tdx::tdvf_sections(&fw).unwrap();
    assert_eq!(sections.len(), 6, "Debian OVMF.fd has six TDVF sections");
    let (single, events) = tdx::mrtd(&fw, PageOrder::SinglePass).unwrap();
    assert_eq!(
        hex(single),
        v["mrtd_single_pass_qemu_ge_9"].as_str().unwrap()
    );
    assert_eq!(events.len(), 6);
    let (two, _) = tdx::mrtd(&fw, PageOrder::TwoPass).unwrap();
    assert_eq!(hex(two), v["mrtd_two_pass_qemu_8"].as_str().unwrap());

    // Mutation: one byte of the measured BFV changes MRTD; the CFV (not extended) does not.
    let bfv = sections.iter().find(|s| s.kind == 0).unwrap();
    let mut m = bytes.clone();
    m[bfv.data_offset as usize + 12345] ^= 1;
    let (changed, _) = tdx::mrtd(&Ovmf::parse(&m).unwrap(), PageOrder::SinglePass).unwrap();
    assert_ne!(changed, single);
}

#[test]
fn mrtd_refuses_firmware_without_tdvf_metadata() {
    let Some(fx) = fixtures("mrtd_refuses_firmware_without_tdvf_metadata") else {
        return;
    };
    let b = std::fs::read(fx.join("measure/sev-snp-measure/ovmf_OvmfX64_suffix.bin")).unwrap();
    let fw = Ovmf::parse(&b).unwrap();
    let err = tdx::mrtd(&fw, PageOrder::SinglePass).unwrap_err();
    assert!(
        err.to_string().contains("TDVF") || err.to_string().contains("TDX"),
        "{err}"
    );
}

#[test]
fn ccel_replays_to_its_rtmrs() {
    let Some(fx) = fixtures("ccel_replays_to_its_rtmrs") else {
        return;
    };
    let v = &vectors(&fx)["eventlog_replay_derived"]["dstack-cc-eventlog/ccel.bin"];
    let log =
        eventlog::parse(&std::fs::read(fx.join("measure/dstack-cc-eventlog/ccel.bin")).unwrap())
            .unwrap();
    assert_eq!(log.events.len(), 18, "18 events after the Spec ID event");
    let regs = log.replay(TPM_ALG_SHA384);
    // CC event log MR index = RTMR + 1.
    assert_eq!(hex(&regs[&1]), v["rtmr0"].as_str().unwrap());
    assert_eq!(hex(&regs[&2]), v["rtmr1"].as_str().unwrap());
}

#[test]
fn gce_tpm_log_replays_to_its_pcrs() {
    let Some(fx) = fixtures("gce_tpm_log_replays_to_its_pcrs") else {
        return;
    };
    let v = &vectors(&fx)["eventlog_replay_derived"]["dstack-cc-eventlog/tpm_eventlog.bin"];
    let log = eventlog::parse(
        &std::fs::read(fx.join("measure/dstack-cc-eventlog/tpm_eventlog.bin")).unwrap(),
    )
    .unwrap();
    let pcrs = log.replay(TPM_ALG_SHA256);
    for (k, want) in v["pcr_sha256"].as_object().unwrap() {
        let idx: u32 = k.parse().unwrap();
        assert_eq!(hex(&pcrs[&idx]), want.as_str().unwrap(), "PCR {idx}");
    }
}

#[test]
fn truncated_log_is_an_error() {
    let Some(fx) = fixtures("truncated_log_is_an_error") else {
        return;
    };
    let b = std::fs::read(fx.join("measure/dstack-cc-eventlog/tpm_eventlog.bin")).unwrap();
    assert!(eventlog::parse(&b[..b.len() - 7]).is_err());
    assert!(eventlog::parse(&b[..10]).is_err());
    assert!(eventlog::parse(b"garbage garbage garbage garbage garbage").is_err());
}
