//! dcr-wasm-runner: one WebAssembly module (WASI preview 1, `wasm32-wasip1`) run by wasmtime,
//! as a contract's `kind = "wasm"` workload (docs/contract.md, docs/guest.md).
//!
//! ```text
//! dcr-wasm-runner --inputs DIR --memory-mib N --output-mib N --timeout-secs N MODULE -- ARGV…
//! ```
//!
//! guest-init starts it with the confinement of every workload (its own uid, RLIMIT_AS =
//! memory_mib, no network namespace interfaces, the seccomp filter) after checking MODULE
//! against the contract's SHA-256. What the module gets:
//! - `DIR` preopened **read-only** at `/dcr/input` (files and the directory: no create, write,
//!   rename or unlink), nothing else of the file system;
//! - `ARGV` as its arguments, and one environment variable, `DCR_INPUTS`: ARGV after ARGV[0],
//!   `:`-separated (guest-init passes the input paths `/dcr/input/<id>` there, in contract
//!   order);
//! - no sockets (WASI preview 1 has none but preopened ones, and there are none);
//! - a wall clock stopped at the Unix epoch (0): only the monotonic clock moves (not hidden:
//!   the times `fd_filestat_get` / `path_filestat_get` give for the inputs, which guest-init
//!   writes at run time; their ctime tells the date of the run);
//! - random bytes from the kernel (`random_get`: hash maps need them);
//! - linear memory up to `--memory-mib` − 64 MiB − 2 × `--output-mib` (the runtime's own
//!   share of RLIMIT_AS, and room for the captured output; at least 64 MiB must be left),
//!   growing beyond fails (`memory.grow` returns -1); one table of at most 1,000,000
//!   elements;
//! - time: an epoch deadline of `--timeout-secs` from the runner's start (before the module is
//!   compiled), a trap at the next function entry or loop back edge; a module blocked in a
//!   host call past it (a long `poll_oneoff` sleep) is ended 1 s later by the runner itself,
//!   with the timeout status;
//! - stdout captured in memory up to `--output-mib`; a write beyond it fails (WASI errno) and
//!   the run fails whatever the module does next. The output reaches the runner's stdout only
//!   when the module ends with status 0: a failed run prints nothing.
//!   stdin is empty, stderr is discarded.
//!
//! Exit status: the module's (0 when `_start` returns, else `proc_exit`'s code, which WASI
//! keeps below 126); the runner's own failures print one line on stderr and exit with
//! [`Fail::code`] (200–204: no module can end with one of them).
#![forbid(unsafe_code)]

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use wasmtime::{Config, Engine, Linker, Module, OptLevel, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, HostWallClock, I32Exit, WasiCtxBuilder};

/// The share of RLIMIT_AS (= `--memory-mib`) kept for the runtime itself: its code, heap,
/// thread stacks and cranelift's work; besides it, 2 × `--output-mib` for the captured output
/// (a growing buffer holds up to twice its contents); the module's linear memory gets the
/// rest, at least [`MIN_MODULE_MIB`] (dcr_protocol::wasm::min_memory_mib says the same).
const RUNTIME_MIB: u64 = 64;

/// The least linear memory a module is given.
const MIN_MODULE_MIB: u64 = 64;

/// How long after the deadline a module blocked in a host call is given before the runner
/// ends itself.
const GRACE: Duration = Duration::from_secs(1);

/// Where the inputs directory appears inside the module.
const GUEST_INPUTS: &str = "/dcr/input";

/// Why the runner (not the module) failed; each has its exit status.
#[derive(Debug)]
enum Fail {
    /// Usage, or the module or inputs directory cannot be read.
    Usage(String),
    /// The module does not compile, link or instantiate (not WASI preview 1, imports
    /// something else, declares more memory than it may have).
    Module(String),
    /// The module trapped (including running out of memory in its allocator).
    Trap(String),
    /// The epoch deadline (`--timeout-secs`) passed.
    Timeout(u64),
    /// The module wrote more than `--output-mib` to stdout.
    Output(u64),
}

impl Fail {
    /// The runner's exit status for this failure (guest-init names them on the console).
    fn code(&self) -> u8 {
        match self {
            Fail::Usage(_) => 200,
            Fail::Module(_) => 201,
            Fail::Trap(_) => 202,
            Fail::Timeout(_) => 203,
            Fail::Output(_) => 204,
        }
    }
}

impl std::fmt::Display for Fail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fail::Usage(m) => write!(f, "{m}"),
            Fail::Module(m) => write!(f, "module: {m}"),
            Fail::Trap(m) => write!(f, "trap: {m}"),
            Fail::Timeout(s) => write!(f, "timed out after {s} s"),
            Fail::Output(m) => write!(f, "wrote more than output_mib = {m} to stdout"),
        }
    }
}

/// What guest-init passes.
#[derive(Debug, PartialEq)]
struct Args {
    inputs: String,
    memory_mib: u64,
    output_mib: u64,
    timeout_secs: u64,
    module: String,
    argv: Vec<String>,
}

fn parse(args: &[String]) -> Result<Args, Fail> {
    let usage = |m: &str| {
        Fail::Usage(format!(
            "{m}; usage: dcr-wasm-runner --inputs DIR --memory-mib N --output-mib N \
             --timeout-secs N MODULE -- ARGV0 [ARG…]"
        ))
    };
    let (mut inputs, mut memory, mut output, mut timeout, mut module) =
        (None, None, None, None, None);
    let mut it = args.iter();
    let mut argv = None;
    while let Some(a) = it.next() {
        let number = |v: Option<&String>, name: &str| -> Result<u64, Fail> {
            let v = v.ok_or_else(|| usage(&format!("{name} needs a value")))?;
            match v.parse::<u64>() {
                Ok(n) if n > 0 && n <= 1 << 20 => Ok(n),
                _ => Err(usage(&format!("{name} {v:?}: not a number in 1..=1048576"))),
            }
        };
        match a.as_str() {
            "--inputs" => {
                inputs = Some(
                    it.next()
                        .ok_or_else(|| usage("--inputs needs a value"))?
                        .clone(),
                )
            }
            "--memory-mib" => memory = Some(number(it.next(), a)?),
            "--output-mib" => output = Some(number(it.next(), a)?),
            "--timeout-secs" => timeout = Some(number(it.next(), a)?),
            "--" => {
                argv = Some(it.by_ref().cloned().collect::<Vec<_>>());
                break;
            }
            m if !m.starts_with('-') && module.is_none() => module = Some(m.to_string()),
            other => return Err(usage(&format!("unexpected argument {other:?}"))),
        }
    }
    let argv = argv.ok_or_else(|| usage("missing -- ARGV0"))?;
    if argv.is_empty() {
        return Err(usage("missing ARGV0 after --"));
    }
    Ok(Args {
        inputs: inputs.ok_or_else(|| usage("missing --inputs"))?,
        memory_mib: memory.ok_or_else(|| usage("missing --memory-mib"))?,
        output_mib: output.ok_or_else(|| usage("missing --output-mib"))?,
        timeout_secs: timeout.ok_or_else(|| usage("missing --timeout-secs"))?,
        module: module.ok_or_else(|| usage("missing MODULE"))?,
        argv,
    })
}

/// The wall clock a module sees: stopped at the Unix epoch (no time-of-day channel in, and
/// outputs that cannot depend on when the run happened).
struct Stopped;

impl HostWallClock for Stopped {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

struct State {
    wasi: WasiP1Ctx,
    limits: StoreLimits,
}

/// The engine: cranelift, deterministic floating point (NaNs canonicalised, relaxed SIMD
/// deterministic), epoch interruption, and linear memories that fit RLIMIT_AS (a reservation
/// of exactly the allowed size instead of wasmtime's default of several GiB of address space;
/// bounds are then checked explicitly).
fn engine(memory_bytes: u64) -> Result<Engine, Fail> {
    let mut c = Config::new();
    c.cranelift_opt_level(OptLevel::Speed)
        .cranelift_nan_canonicalization(true)
        .relaxed_simd_deterministic(true)
        .epoch_interruption(true)
        .memory_reservation(memory_bytes)
        .memory_guard_size(64 << 10)
        .memory_reservation_for_growth(0)
        .memory_may_move(false)
        // No memfd images of the initial memory: a workload's RLIMIT_FSIZE is 0 (writing one
        // would end the runner with SIGXFSZ), and the module is instantiated once.
        .memory_init_cow(false);
    Engine::new(&c).map_err(|e| Fail::Module(format!("engine: {e:#}")))
}

fn run(a: &Args) -> Result<(i32, Vec<u8>), Fail> {
    let least = RUNTIME_MIB + 2 * a.output_mib + MIN_MODULE_MIB;
    if a.memory_mib < least {
        return Err(Fail::Usage(format!(
            "--memory-mib {} is below {least} (the runtime's {RUNTIME_MIB} MiB, twice --output-mib {}, at least {MIN_MODULE_MIB} MiB for the module)",
            a.memory_mib, a.output_mib
        )));
    }
    let memory_bytes = (a.memory_mib - RUNTIME_MIB - 2 * a.output_mib) << 20;
    let output_bytes = (a.output_mib << 20) as usize;
    let wasm = std::fs::read(&a.module).map_err(|e| Fail::Usage(format!("{}: {e}", a.module)))?;
    let engine = engine(memory_bytes)?;

    // The deadline counts from here, before compilation and instantiation (a start function
    // runs during instantiation): one epoch tick at timeout_secs traps the module at its next
    // function entry or loop back edge; a module still running GRACE later is blocked in a
    // host call, and the runner ends itself with the timeout status (nothing is printed).
    let ticker = engine.clone();
    let secs = a.timeout_secs;
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(secs));
        ticker.increment_epoch();
        std::thread::sleep(GRACE);
        eprintln!("dcr-wasm-runner: {}", Fail::Timeout(secs));
        std::process::exit(i32::from(Fail::Timeout(secs).code()));
    });

    let module = Module::new(&engine, &wasm).map_err(|e| Fail::Module(format!("{e:#}")))?;

    // One byte more than allowed: a module that ignores a failed write (WASI preview 1
    // reports the full pipe to it as an error) must not pass on a truncated output as whole.
    let stdout = MemoryOutputPipe::new(output_bytes + 1);
    let inputs: Vec<&str> = a.argv[1..].iter().map(String::as_str).collect();
    let mut b = WasiCtxBuilder::new();
    b.args(&a.argv)
        .env("DCR_INPUTS", inputs.join(":"))
        .stdout(stdout.clone())
        .wall_clock(Stopped)
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .preopened_dir(&a.inputs, GUEST_INPUTS, FsPerms::ReadOnly)
        .map_err(|e| Fail::Usage(format!("{}: {e:#}", a.inputs)))?;
    let state = State {
        wasi: b.build_p1(),
        limits: StoreLimitsBuilder::new()
            .memory_size(memory_bytes as usize)
            .instances(1)
            .memories(1)
            .tables(1)
            .table_elements(1_000_000)
            .build(),
    };
    let mut store = Store::new(&engine, state);
    store.limiter(|s| &mut s.limits);
    store.set_epoch_deadline(1);
    store.epoch_deadline_trap();

    let mut linker: Linker<State> = Linker::new(&engine);
    wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |s| &mut s.wasi)
        .map_err(|e| Fail::Module(format!("{e:#}")))?;
    let instance = linker
        .instantiate(&mut store, &module)
        .map_err(|e| Fail::Module(format!("{e:#}")))?;
    let start = instance
        .get_typed_func::<(), ()>(&mut store, "_start")
        .map_err(|e| Fail::Module(format!("no _start command entry point: {e:#}")))?;

    let status = match start.call(&mut store, ()) {
        Ok(()) => 0,
        Err(e) => {
            if stdout.contents().len() > output_bytes {
                return Err(Fail::Output(a.output_mib));
            }
            if let Some(exit) = e.downcast_ref::<I32Exit>() {
                exit.0
            } else if let Some(wasmtime::Trap::Interrupt) = e.downcast_ref::<wasmtime::Trap>() {
                return Err(Fail::Timeout(a.timeout_secs));
            } else if format!("{e:#}").contains("write beyond capacity of MemoryOutputPipe") {
                return Err(Fail::Output(a.output_mib));
            } else {
                return Err(Fail::Trap(format!("{e:#}")));
            }
        }
    };
    // The store held the other handle of the pipe: its buffer is taken, not copied.
    drop(store);
    let out = stdout
        .try_into_inner()
        .map(|b| b.to_vec())
        .ok_or_else(|| Fail::Trap("the output buffer is still shared".into()))?;
    if out.len() > output_bytes {
        return Err(Fail::Output(a.output_mib));
    }
    Ok((status, out))
}

fn main() -> ExitCode {
    // wasmtime-wasi runs its host calls on a multi-threaded tokio runtime of one worker per
    // CPU by default; one is enough, and RLIMIT_NPROC / RLIMIT_AS stay independent of the
    // VM's size.
    std::env::set_var("TOKIO_WORKER_THREADS", "1");
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = parse(&args).and_then(|a| run(&a));
    match result {
        Ok((0, out)) => {
            let mut so = std::io::stdout().lock();
            if let Err(e) = so.write_all(&out).and_then(|()| so.flush()) {
                eprintln!("dcr-wasm-runner: stdout: {e}");
                return ExitCode::from(Fail::Usage(String::new()).code());
            }
            ExitCode::SUCCESS
        }
        // A failed module's output is not passed on. WASI exit codes are 0..=125 (proc_exit
        // takes a u32; wasmtime traps on larger ones), so they fit.
        Ok((status, _)) => ExitCode::from(u8::try_from(status).unwrap_or(1)),
        Err(f) => {
            eprintln!("dcr-wasm-runner: {f}");
            ExitCode::from(f.code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn arguments() {
        let a = parse(&s(&[
            "--inputs",
            "/d",
            "--memory-mib",
            "130",
            "--output-mib",
            "1",
            "--timeout-secs",
            "9",
            "/m.wasm",
            "--",
            "m",
            "/dcr/input/a",
        ]))
        .unwrap();
        assert_eq!(a.module, "/m.wasm");
        assert_eq!(a.argv, s(&["m", "/dcr/input/a"]));
        assert_eq!((a.memory_mib, a.output_mib, a.timeout_secs), (130, 1, 9));
        for bad in [
            &["--inputs", "/d", "/m.wasm", "--", "m"][..],
            &[
                "--inputs",
                "/d",
                "--memory-mib",
                "0",
                "--output-mib",
                "1",
                "--timeout-secs",
                "9",
                "/m",
                "--",
                "m",
            ],
            &[
                "--inputs",
                "/d",
                "--memory-mib",
                "1",
                "--output-mib",
                "1",
                "--timeout-secs",
                "9",
                "/m",
                "--",
            ],
            &[
                "--inputs",
                "/d",
                "--memory-mib",
                "1",
                "--output-mib",
                "1",
                "--timeout-secs",
                "9",
                "/m",
            ],
            &[
                "--inputs",
                "/d",
                "--memory-mib",
                "1",
                "--output-mib",
                "1",
                "--timeout-secs",
                "9",
                "/m",
                "/n",
                "--",
                "m",
            ],
            &["--bogus"],
        ] {
            assert!(matches!(parse(&s(bad)), Err(Fail::Usage(_))), "{bad:?}");
        }
    }
}
