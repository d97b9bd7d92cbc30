//! A `kind = "wasm"` workload: a WebAssembly module (WASI preview 1) packed at
//! `/workloads/<name>` (the contract pins its SHA-256; PCR 23 covers it) and run in the guest
//! by dcr's wasmtime runner (attest/wasm-runner), which the image packs at [`RUNNER_PATH`].
//! What the runner gives a module and how it ends: docs/guest.md, "workload (wasm)".

/// Where the runner is in the initramfs.
pub const RUNNER_PATH: &str = "/usr/libexec/dcr-wasm-runner";

/// The least `memory_mib` of a wasm workload with `output_mib`: RLIMIT_AS covers the runtime
/// (its code, heap, thread stack, the compiler's work: 64 MiB kept), the captured output (a
/// growing buffer: twice `output_mib`) and the module's linear memory (the rest, at least
/// 64 MiB). attest/wasm-runner computes the same.
pub fn min_memory_mib(output_mib: u64) -> u64 {
    64u64
        .saturating_add(output_mib.saturating_mul(2))
        .saturating_add(64)
}

/// Where the module sees its inputs (`/dcr/input/<dataset id>`, preopened read-only).
pub const INPUT_DIR: &str = "/dcr/input";

/// The runner's own exit statuses. A module's `proc_exit` status is passed through, and WASI
/// keeps those below 126 (wasmtime traps on larger ones), so a module cannot end with one of
/// these. attest/wasm-runner/src/main.rs `Fail::code` must match (dcr-tests checks the built
/// runner against this table).
pub const RUNNER_EXITS: [(i32, &str); 5] = [
    (
        200,
        "the runner could not start (arguments, module or inputs unreadable)",
    ),
    (
        201,
        "the module could not be compiled, linked or instantiated (not a WASI preview 1 command, or it declares more memory than memory_mib leaves it)",
    ),
    (202, "the module trapped"),
    (203, "the module ran past timeout_secs"),
    (204, "the module wrote more than output_mib to stdout"),
];

/// The meaning of a runner exit status, if it is one of the runner's own.
pub fn runner_exit(code: i32) -> Option<&'static str> {
    RUNNER_EXITS
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, m)| *m)
}
