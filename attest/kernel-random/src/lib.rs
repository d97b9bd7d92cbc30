//! The one OpenSSL function OpenDP 0.16 calls for randomness (`rand::rand_priv_bytes`, under
//! its `use-openssl` feature), served by the kernel's CSPRNG through getrandom(2).
//!
//! Why: without `use-openssl`, OpenDP's `fill_bytes` falls back to rand 0.7's `thread_rng`
//! (a user-space generator the crate itself labels non-secure); with it, OpenDP links a
//! vendored OpenSSL, a C library the static guest must not carry. The workspace patches the
//! `openssl` crate with this one, so every OpenDP sampler draws its bits from the kernel and
//! the fallback is not compiled at all (`cfg(not(feature = "use-openssl"))`).
//!
//! [`bytes_served`] counts what OpenDP drew (a test proves its noise comes through here).
//! Feature `test-seed` adds [`rand::seed_for_tests`], a deterministic stream for statistical
//! tests; [`seedable`] says whether it is compiled in (the engine refuses to run if so).
#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};

static SERVED: AtomicU64 = AtomicU64::new(0);

/// Bytes handed out since the process started.
pub fn bytes_served() -> u64 {
    SERVED.load(Ordering::Relaxed)
}

/// Whether the test-only seeded stream is compiled in.
pub const fn seedable() -> bool {
    cfg!(feature = "test-seed")
}

pub mod error {
    /// OpenSSL's error type, as OpenDP formats it (`{:?}`).
    #[derive(Debug)]
    pub struct ErrorStack(pub String);

    impl std::fmt::Display for ErrorStack {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }

    impl std::error::Error for ErrorStack {}
}

pub mod rand {
    use super::error::ErrorStack;

    /// Fill `buf` from the kernel's CSPRNG (getrandom(2), blocking until it is seeded).
    pub fn rand_priv_bytes(buf: &mut [u8]) -> Result<(), ErrorStack> {
        #[cfg(feature = "test-seed")]
        if seeded::fill(buf) {
            super::SERVED.fetch_add(buf.len() as u64, std::sync::atomic::Ordering::Relaxed);
            return Ok(());
        }
        getrandom::getrandom(buf).map_err(|e| ErrorStack(format!("getrandom: {e}")))?;
        super::SERVED.fetch_add(buf.len() as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Test-only: from now on, a deterministic stream (SHA-256 in counter mode over the
    /// seed) instead of the kernel; `None` returns to the kernel.
    #[cfg(feature = "test-seed")]
    pub fn seed_for_tests(seed: Option<u64>) {
        *seeded::STATE.lock().unwrap_or_else(|p| p.into_inner()) = seed.map(|s| (s, 0, Vec::new()));
    }

    #[cfg(feature = "test-seed")]
    mod seeded {
        use sha2::{Digest, Sha256};
        use std::sync::Mutex;

        /// (seed, block counter, unread bytes of the last block)
        pub(super) static STATE: Mutex<Option<(u64, u64, Vec<u8>)>> = Mutex::new(None);

        pub(super) fn fill(buf: &mut [u8]) -> bool {
            let mut g = STATE.lock().unwrap_or_else(|p| p.into_inner());
            let Some((seed, ctr, pool)) = g.as_mut() else {
                return false;
            };
            for b in buf.iter_mut() {
                if pool.is_empty() {
                    let mut h = Sha256::new();
                    h.update(seed.to_le_bytes());
                    h.update(ctr.to_le_bytes());
                    *ctr += 1;
                    *pool = h.finalize().to_vec();
                }
                *b = pool.pop().expect("refilled above");
            }
            true
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn kernel_bytes_are_not_constant_and_are_counted() {
        let before = super::bytes_served();
        let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
        super::rand::rand_priv_bytes(&mut a).unwrap();
        super::rand::rand_priv_bytes(&mut b).unwrap();
        assert_ne!(a, b);
        assert!(super::bytes_served() >= before + 64);
    }
}
