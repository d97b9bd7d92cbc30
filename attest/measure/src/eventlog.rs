//! TCG2 crypto-agile event logs (TCG PC Client Platform Firmware Profile, §10 "Event Logging"):
//! the TPM log (`/sys/kernel/security/tpm0/binary_bios_measurements`) and the TDX CCEL (same
//! format, SHA-384, index = RTMR + 1). Parse and replay.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256, Sha384, Sha512};

/// Errors parsing a log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventLogError {
    #[error("event log: truncated at byte {0}")]
    Truncated(usize),
    #[error("event log: first event is not a Spec ID Event03 (not a crypto-agile log)")]
    NotCryptoAgile,
    #[error("event log: event {index} at byte {offset} uses algorithm {alg:#06x}, not declared in the Spec ID event")]
    UnknownAlg {
        index: usize,
        offset: usize,
        alg: u16,
    },
}

/// TPM_ALG_ID values (TPM 2.0 Part 2 §6.3).
pub const TPM_ALG_SHA1: u16 = 0x0004;
pub const TPM_ALG_SHA256: u16 = 0x000b;
pub const TPM_ALG_SHA384: u16 = 0x000c;
pub const TPM_ALG_SHA512: u16 = 0x000d;

/// EV_NO_ACTION: logged but never extended.
pub const EV_NO_ACTION: u32 = 3;

/// One event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub index: u32,
    pub event_type: u32,
    /// (algorithm, digest).
    pub digests: Vec<(u16, Vec<u8>)>,
    pub data: Vec<u8>,
    pub offset: usize,
}

/// A parsed log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventLog {
    /// Algorithms and digest sizes from the Spec ID event.
    pub algorithms: Vec<(u16, u16)>,
    pub events: Vec<Event>,
    /// Locality from an EV_NO_ACTION "StartupLocality" event, if any (sets PCR 0's start).
    pub startup_locality: Option<u8>,
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], EventLogError> {
        let s = self
            .b
            .get(
                self.pos
                    ..self
                        .pos
                        .checked_add(n)
                        .ok_or(EventLogError::Truncated(self.pos))?,
            )
            .ok_or(EventLogError::Truncated(self.pos))?;
        self.pos += n;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, EventLogError> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u16(&mut self) -> Result<u16, EventLogError> {
        let s = self.take(2)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }
}

/// Parse a crypto-agile log. Trailing 0x00 or 0xFF fill (a fixed-size CCEL area) ends it.
pub fn parse(bytes: &[u8]) -> Result<EventLog, EventLogError> {
    let mut r = Reader { b: bytes, pos: 0 };
    // TCG_PCR_EVENT (SHA-1 format): index, type, 20-byte digest, size, Spec ID event.
    let _index = r.u32()?;
    let ty = r.u32()?;
    r.take(20)?;
    let size = r.u32()? as usize;
    let spec = r.take(size)?;
    if ty != EV_NO_ACTION || spec.len() < 28 || &spec[..16] != b"Spec ID Event03\0" {
        return Err(EventLogError::NotCryptoAgile);
    }
    let mut s = Reader { b: spec, pos: 24 };
    let n = s.u32()? as usize;
    let mut algorithms = Vec::new();
    for _ in 0..n {
        let alg = s.u16()?;
        let size = s.u16()?;
        algorithms.push((alg, size));
    }
    let mut events = Vec::new();
    let mut startup_locality = None;
    while r.pos < bytes.len() {
        let rest = &bytes[r.pos..];
        if rest.iter().all(|&b| b == 0xff) || rest.iter().all(|&b| b == 0) {
            break;
        }
        let offset = r.pos;
        let index = r.u32()?;
        let event_type = r.u32()?;
        if index == 0xffff_ffff {
            break;
        }
        let count = r.u32()? as usize;
        let mut digests = Vec::new();
        for _ in 0..count {
            let alg = r.u16()?;
            let size = algorithms
                .iter()
                .find(|(a, _)| *a == alg)
                .map(|(_, s)| *s as usize)
                .ok_or(EventLogError::UnknownAlg {
                    index: events.len(),
                    offset,
                    alg,
                })?;
            digests.push((alg, r.take(size)?.to_vec()));
        }
        let size = r.u32()? as usize;
        let data = r.take(size)?.to_vec();
        if event_type == EV_NO_ACTION && data.starts_with(b"StartupLocality\0") && data.len() >= 17
        {
            startup_locality = Some(data[16]);
        }
        events.push(Event {
            index,
            event_type,
            digests,
            data,
            offset,
        });
    }
    Ok(EventLog {
        algorithms,
        events,
        startup_locality,
    })
}

/// PCR/RTMR extend in the bank's hash (SHA-1 for TPM_ALG_SHA1 and, defensively, anything
/// else: `parse` only admits algorithms declared in the Spec ID event).
fn extend(alg: u16, cur: &[u8], d: &[u8]) -> Vec<u8> {
    match alg {
        TPM_ALG_SHA256 => Sha256::new()
            .chain_update(cur)
            .chain_update(d)
            .finalize()
            .to_vec(),
        TPM_ALG_SHA384 => Sha384::new()
            .chain_update(cur)
            .chain_update(d)
            .finalize()
            .to_vec(),
        TPM_ALG_SHA512 => Sha512::new()
            .chain_update(cur)
            .chain_update(d)
            .finalize()
            .to_vec(),
        _ => sha1::Sha1::new()
            .chain_update(cur)
            .chain_update(d)
            .finalize()
            .to_vec(),
    }
}

impl EventLog {
    /// Replay every extended event of bank `alg`: register index → final value. Registers
    /// start at zero, except PCR 0 whose last byte is the startup locality when logged.
    pub fn replay(&self, alg: u16) -> BTreeMap<u32, Vec<u8>> {
        let size = self
            .algorithms
            .iter()
            .find(|(a, _)| *a == alg)
            .map(|(_, s)| *s as usize)
            .unwrap_or(0);
        let mut regs: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
        for e in self.events.iter().filter(|e| e.event_type != EV_NO_ACTION) {
            let Some((_, d)) = e.digests.iter().find(|(a, _)| *a == alg) else {
                continue;
            };
            let cur = regs.entry(e.index).or_insert_with(|| {
                let mut z = vec![0u8; size];
                if e.index == 0 {
                    if let Some(l) = self.startup_locality {
                        z[size - 1] = l;
                    }
                }
                z
            });
            *cur = extend(alg, cur, d);
        }
        regs
    }
}
