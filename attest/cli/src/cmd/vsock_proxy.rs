//! `dcr-attest vsock-proxy`: on the parent instance, forward an enclave's vsock connections to
//! the key-release service (the enclave has no network). Like AWS's `vsock-proxy`, it goes to
//! exactly one destination, given here; bytes pass through unchanged (the release is sealed
//! and signed end to end, and an `https` service keeps its TLS). Listens on AF_VSOCK
//! (`--port`, any CID: a Nitro parent is CID 3 to its enclave), or on a Unix socket
//! (`--unix`, the host side of `vhost-device-vsock`, which maps the guest's connections to
//! host port P onto `<uds>_P`).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    /// AF_VSOCK port to listen on (any CID).
    #[arg(
        long,
        value_name = "PORT",
        conflicts_with = "unix",
        required_unless_present = "unix"
    )]
    port: Option<u32>,
    /// Listen on this Unix socket instead (vhost-device-vsock's `<uds>_<port>`).
    #[arg(long, value_name = "PATH")]
    unix: Option<PathBuf>,
    /// The service: http://HOST:PORT or https://HOST:PORT (the only destination).
    #[arg(long, value_name = "URL")]
    to: String,
    /// Connections forwarded at once; more are closed at once.
    #[arg(long, value_name = "N", default_value_t = 64)]
    max_connections: usize,
    /// Close a connection idle (no byte either way) this long.
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    idle_secs: u64,
}

/// `host:port` of an http(s) URL, or why not.
fn destination(url: &str) -> anyhow::Result<String> {
    let (rest, default_port) = if let Some(r) = url.strip_prefix("http://") {
        (r, 80)
    } else if let Some(r) = url.strip_prefix("https://") {
        (r, 443)
    } else {
        anyhow::bail!("--to {url:?}: expected http://HOST:PORT or https://HOST:PORT");
    };
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() || authority.contains('@') {
        anyhow::bail!("--to {url:?}: no host (or credentials in the URL)");
    }
    let has_port = authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| !p.contains(']'));
    let hp = if has_port {
        authority.to_string()
    } else {
        format!("{authority}:{default_port}")
    };
    hp.to_socket_addrs()
        .map_err(|e| anyhow::anyhow!("--to {url:?}: {e}"))?
        .next()
        .ok_or_else(|| anyhow::anyhow!("--to {url:?}: resolves to no address"))?;
    Ok(hp)
}

/// Copy one direction until EOF or an error (the caller half-closes the other side).
fn pump(mut from: impl Read, mut to: impl Write) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
}

/// A connected client of either listener.
trait Client: Read + Write + Send + 'static {
    fn try_clone_box(&self) -> std::io::Result<Box<dyn Client>>;
    fn shutdown_write(&self);
    fn set_idle(&self, d: Duration);
}

/// Both stream types have the same inherent methods; one implementation serves both.
macro_rules! impl_client {
    ($($t:ty),+) => {$(
        impl Client for $t {
            fn try_clone_box(&self) -> std::io::Result<Box<dyn Client>> {
                Ok(Box::new(self.try_clone()?))
            }
            fn shutdown_write(&self) {
                let _ = self.shutdown(Shutdown::Write);
            }
            fn set_idle(&self, d: Duration) {
                let _ = self.set_read_timeout(Some(d));
            }
        }
    )+};
}

impl_client!(std::os::unix::net::UnixStream, vsock::VsockStream);

fn serve_one(client: Box<dyn Client>, to: &str, idle: Duration) {
    let tcp = match to
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .and_then(|a| TcpStream::connect_timeout(&a, Duration::from_secs(5)).ok())
    {
        Some(t) => t,
        None => {
            eprintln!("vsock-proxy: {to} unreachable; connection closed");
            return;
        }
    };
    let _ = tcp.set_read_timeout(Some(idle));
    client.set_idle(idle);
    let (Ok(tcp2), Ok(mut client2)) = (tcp.try_clone(), client.try_clone_box()) else {
        return;
    };
    let up = std::thread::spawn(move || {
        pump(client, &tcp);
        let _ = tcp.shutdown(Shutdown::Write);
    });
    pump(tcp2, &mut *client2);
    client2.shutdown_write();
    let _ = up.join();
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let to = destination(&a.to)?;
    let idle = Duration::from_secs(a.idle_secs.max(1));
    let max = a.max_connections.max(1);
    let active = Arc::new(AtomicUsize::new(0));
    let accept: Box<dyn FnMut() -> std::io::Result<Box<dyn Client>>> = match (&a.unix, a.port) {
        (Some(path), _) => {
            let _ = std::fs::remove_file(path);
            let l = std::os::unix::net::UnixListener::bind(path)
                .map_err(|e| anyhow::anyhow!("--unix {}: {e}", path.display()))?;
            eprintln!("vsock-proxy: unix {} -> {to}", path.display());
            Box::new(move || l.accept().map(|(s, _)| Box::new(s) as Box<dyn Client>))
        }
        (None, Some(port)) => {
            let l = vsock::VsockListener::bind(&vsock::VsockAddr::new(vsock::VMADDR_CID_ANY, port))
                .map_err(|e| anyhow::anyhow!("--port {port}: AF_VSOCK: {e}"))?;
            eprintln!("vsock-proxy: vsock port {port} -> {to}");
            Box::new(move || l.accept().map(|(s, _)| Box::new(s) as Box<dyn Client>))
        }
        (None, None) => anyhow::bail!("give --port or --unix"),
    };
    let mut accept = accept;
    loop {
        let c = match accept() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("vsock-proxy: accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if active.fetch_add(1, Ordering::SeqCst) >= max {
            active.fetch_sub(1, Ordering::SeqCst);
            eprintln!("vsock-proxy: {max} connections open; one more closed");
            continue;
        }
        let (to, active) = (to.clone(), active.clone());
        std::thread::spawn(move || {
            serve_one(c, &to, idle);
            active.fetch_sub(1, Ordering::SeqCst);
        });
    }
}
