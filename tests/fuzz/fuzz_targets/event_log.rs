//! TCG2 crypto-agile event logs (TPM and CCEL) and their replay.
#![no_main]
use dcr_measure::eventlog;
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(log) = eventlog::parse(data) {
        for alg in [eventlog::TPM_ALG_SHA1, eventlog::TPM_ALG_SHA256, eventlog::TPM_ALG_SHA384] {
            let _ = log.replay(alg);
        }
    }
});
