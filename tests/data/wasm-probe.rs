//! A hostile WASI preview 1 module for the runner's tests (tests/tests/cleanroom_wasm.rs),
//! built with `rustc --target wasm32-wasip1`. argv[1] (or, when that is an input path, argv[0]:
//! the workload's name in a clean room) picks what it tries; each attempt prints
//! one line `<what> <allowed|denied>` (or a value), so the test reads what the runner let
//! through.
use std::io::Write;

fn report(what: &str, r: std::io::Result<()>) {
    println!("{what} {}", if r.is_ok() { "allowed" } else { "denied" });
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // In a clean room argv is [workload name, input paths…]: the name picks the mode there.
    let mode = match args.get(1) {
        Some(a) if !a.starts_with('/') => a.as_str(),
        _ => args[0].as_str(),
    };
    match mode {
        // The file system: the preopened inputs are read-only, nothing else is reachable.
        "files" => {
            let input = &args[2];
            report("read-input", std::fs::read(input).map(|_| ()));
            report(
                "write-input",
                std::fs::OpenOptions::new().write(true).open(input).map(|_| ()),
            );
            report("create", std::fs::File::create("/dcr/input/new").map(|_| ()));
            report("mkdir", std::fs::create_dir("/dcr/input/d"));
            report("remove", std::fs::remove_file(input));
            report(
                "rename",
                std::fs::rename(input, "/dcr/input/moved"),
            );
            report("etc-passwd", std::fs::read("/etc/passwd").map(|_| ()));
            report(
                "dotdot",
                std::fs::read("/dcr/input/../../etc/passwd").map(|_| ()),
            );
            report("proc", std::fs::read("/proc/self/environ").map(|_| ()));
            report("root-list", std::fs::read_dir("/").map(|_| ()));
        }
        // The network: WASI preview 1 has no socket creation.
        "net" => {
            report(
                "tcp-connect",
                std::net::TcpStream::connect("10.0.2.2:8443").map(|_| ()),
            );
            report("udp-bind", std::net::UdpSocket::bind("0.0.0.0:0").map(|_| ()));
        }
        // The clocks and the environment.
        "clock" => {
            let wall = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(u64::MAX);
            println!("wall {wall}");
            let t = std::time::Instant::now();
            let mut x = 0u64;
            for i in 0..20_000_000u64 {
                x = x.wrapping_mul(31).wrapping_add(i);
            }
            println!("monotonic-moves {} {}", t.elapsed().as_nanos() > 0, x % 2);
            for (k, v) in std::env::vars() {
                println!("env {k}={v}");
            }
            println!("argc {}", args.len());
        }
        // Blocked in a host call (poll_oneoff) past the deadline.
        "sleep" => {
            std::thread::sleep(std::time::Duration::from_secs(100));
            println!("slept");
        }
        // An exit status WASI does not allow (>= 126): not one of the runner's.
        "exit200" => std::process::exit(200),
        // Resource limits.
        "spin" => {
            let mut x = 1u64;
            loop {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                if x == 0 {
                    break;
                }
            }
            println!("{x}");
        }
        "hog" => {
            let mut v: Vec<Vec<u8>> = Vec::new();
            loop {
                v.push(vec![1u8; 16 << 20]);
                println!("held {} MiB", v.len() * 16);
            }
        }
        "flood" => {
            let line = [b'x'; 1023];
            let mut out = std::io::stdout().lock();
            for _ in 0..4096 {
                if out.write_all(&line).and_then(|()| out.write_all(b"\n")).is_err() {
                    std::process::exit(3);
                }
            }
        }
        "exit7" => {
            println!("segment,overlap,conversions");
            println!("a,100,10");
            std::io::stdout().flush().unwrap();
            std::process::exit(7);
        }
        "trap" => {
            let v: Vec<u32> = Vec::new();
            let i = args.len() + 5;
            println!("{}", v[i]);
        }
        _ => {
            eprintln!("probe: unknown mode {mode:?}");
            std::process::exit(2);
        }
    }
}
