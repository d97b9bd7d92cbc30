//! `dcr-attest vsock-proxy` in front of a real key-release service: what a client on the
//! Unix socket (vhost-device-vsock's host side) gets is byte for byte what it gets over TCP;
//! connections beyond --max-connections are closed; the AF_VSOCK listener binds; a
//! destination that is not http(s) is refused. (An AF_VSOCK connection itself cannot be made
//! here: this machine has no vsock loopback transport and no /dev/vhost-vsock.)

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dcr_tests::*;

struct Proxy(Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn proxy(args: &[&str]) -> Proxy {
    Proxy(
        Command::new(dcr_attest())
            .arg("vsock-proxy")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

fn wait_for(path: &std::path::Path) {
    let t = Instant::now();
    while !path.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// GET /v1/service over `s` (HTTP/1.1, Connection: close): the whole answer.
fn get(s: impl Read + Write) -> Vec<u8> {
    try_get(s).unwrap()
}

fn try_get(mut s: impl Read + Write) -> std::io::Result<Vec<u8>> {
    s.write_all(b"GET /v1/service HTTP/1.1\r\nHost: service\r\nConnection: close\r\n\r\n")?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(out)
}

fn body(resp: &[u8]) -> &[u8] {
    let at = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP answer");
    &resp[at + 4..]
}

#[test]
fn the_proxy_forwards_to_the_service_and_nowhere_else() {
    let tmp = TempDir::new("vsock-proxy");
    let svc = start_service(&tmp.path().join("service"), &[]);
    let sock = tmp.path().join("uds_5000");
    let _p = proxy(&[
        &format!("--unix={}", sock.display()),
        &format!("--to={}", svc.url),
        "--max-connections=2",
    ]);
    wait_for(&sock);
    let via_proxy = get(UnixStream::connect(&sock).unwrap());
    assert!(via_proxy.starts_with(b"HTTP/1.0 200") || via_proxy.starts_with(b"HTTP/1.1 200"));
    let hostport = svc.url.trim_start_matches("http://").trim_end_matches('/');
    let direct = get(std::net::TcpStream::connect(hostport).unwrap());
    assert_eq!(
        body(&via_proxy),
        body(&direct),
        "the same service keys either way"
    );
    let info: serde_json::Value = serde_json::from_slice(body(&via_proxy)).unwrap();
    assert!(info.to_string().contains("ed25519:"), "{info}");

    // Two connections held open (no request yet): a third is closed at once, unanswered.
    let a = UnixStream::connect(&sock).unwrap();
    let b = UnixStream::connect(&sock).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let mut c = UnixStream::connect(&sock).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = c.write_all(b"GET /v1/service HTTP/1.0\r\n\r\n");
    let mut got = Vec::new();
    let _ = c.read_to_end(&mut got);
    assert!(got.is_empty(), "a connection over the limit was answered");
    drop((a, b));
    // Once they are gone, the proxy answers again.
    let t = Instant::now();
    let mut tries = 0;
    loop {
        tries += 1;
        let r = UnixStream::connect(&sock)
            .and_then(try_get)
            .unwrap_or_default();
        if !r.is_empty() {
            assert_eq!(body(&r), body(&direct));
            eprintln!("answered again after {tries} tries, {:?}", t.elapsed());
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the proxy never recovered"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_vsock_listener_binds_and_bad_destinations_are_refused() {
    // AF_VSOCK, any CID: the process is up and listening after a second.
    let port = 20_000 + (std::process::id() % 20_000);
    let mut p = proxy(&[&format!("--port={port}"), "--to=http://127.0.0.1:9"]);
    std::thread::sleep(Duration::from_secs(1));
    assert!(p.0.try_wait().unwrap().is_none(), "vsock-proxy exited");
    let _ = p.0.kill();
    for (to, why) in [
        ("ftp://service:21", "expected http://HOST:PORT"),
        ("http://user@service:80", "credentials"),
        ("http://", "no host"),
    ] {
        let o = Command::new(dcr_attest())
            .args([
                "vsock-proxy",
                "--unix=/nonexistent/x",
                &format!("--to={to}"),
            ])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{to}");
        assert!(stderr(&o).contains(why), "{to}: {}", stderr(&o));
    }
}
