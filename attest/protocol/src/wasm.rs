//! A `kind = "wasm"` workload: a WebAssembly module (WASI preview 1) packed at
//! `/workloads/<name>` (the contract pins its SHA-256; PCR 23 covers it) and run in the guest
//! by dcr's wasmtime runner (attest/wasm-runner), which the image packs at [`RUNNER_PATH`].
//! What the runner gives a module and how it ends: docs/guest.md, "workload (wasm)".

/// Where the runner is in the initramfs.
pub const RUNNER_PATH: &str = "/usr/libexec/dcr-wasm-runner";

/// The least `memory_mib` of a wasm workload: RLIMIT_AS covers the runtime (its code, heap,
/// thread stacks, the compiler's work: 64 MiB kept) and the module's linear memory (the rest).
pub const MIN_MEMORY_MIB: u64 = 128;

/// Where the module sees its inputs (`/dcr/input/<dataset id>`, preopened read-only).
pub const INPUT_DIR: &str = "/dcr/input";

/// The runner's own exit statuses (a module's `proc_exit` status is passed through; WASI
/// statuses are below 126, so a module could end with one of these too: the run fails either
/// way). attest/wasm-runner/src/main.rs `Fail::code` must match (dcr-tests checks the built
/// runner against this table).
pub const RUNNER_EXITS: [(i32, &str); 5] = [
    (120, "the runner could not start (arguments, module or inputs unreadable)"),
    (
        121,
        "the module could not be compiled, linked or instantiated (not a WASI preview 1 command, or it declares more memory than memory_mib leaves it)",
    ),
    (122, "the module trapped"),
    (123, "the module ran past timeout_secs"),
    (124, "the module wrote more than output_mib to stdout"),
];

/// The meaning of a runner exit status, if it is one of the runner's own.
pub fn runner_exit(code: i32) -> Option<&'static str> {
    RUNNER_EXITS
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, m)| *m)
}
