//! The service over vsock, for guests without an IP network (contract
//! `network = {mode = "vsock", cid, port}`; AWS Nitro Enclaves, or QEMU with a virtio-vsock
//! device): a ureq connector whose transport is a vsock stream to `cid`:`port`, where the
//! host's `dcr-attest vsock-proxy` forwards the bytes to the service; and the Nitro boot
//! heartbeat.
//!
//! The HTTP on top is the same as over TCP (the contract's `service.url` gives the Host header
//! and the path prefix). Nothing here listens: the guest only connects out.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use ureq::config::Config;
use ureq::http::Uri;
use ureq::unversioned::resolver::{ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, LazyBuffers, NextTimeout, Transport,
};
use ureq::Error;
use vsock::VsockStream;

/// Where a Nitro enclave's parent listens for the boot heartbeat (nitro-cli run-enclave, and
/// QEMU's nitro-enclave machine): CID 3 (the parent), port 9000.
pub const HEARTBEAT_CID: u32 = 3;
pub const HEARTBEAT_PORT: u32 = 9000;
/// The heartbeat byte; the parent echoes it back.
pub const HEARTBEAT: u8 = 0xB7;

/// Connects every request to one vsock address.
#[derive(Debug, Clone, Copy)]
pub struct VsockConnector {
    pub cid: u32,
    pub port: u32,
}

impl Connector for VsockConnector {
    type Out = VsockTransport;

    fn connect(
        &self,
        details: &ConnectionDetails,
        _chained: Option<()>,
    ) -> Result<Option<Self::Out>, Error> {
        // The agent is built with this connector alone (no proxy, no TLS), so nothing comes
        // chained in. The kernel bounds the connect itself (2 s by default).
        let stream = VsockStream::connect_with_cid_port(self.cid, self.port).map_err(|e| {
            Error::Io(io::Error::new(
                e.kind(),
                format!("vsock connect to {}:{}: {e}", self.cid, self.port),
            ))
        })?;
        let c = details.config;
        Ok(Some(VsockTransport {
            stream,
            buffers: LazyBuffers::new(c.input_buffer_size(), c.output_buffer_size()),
            read_timeout: None,
            write_timeout: None,
        }))
    }
}

/// The service's host name is never looked up: the connector ignores addresses. ureq wants
/// one, so this names 0.0.0.0:0 (never connected to).
#[derive(Debug)]
pub struct NoResolver;

impl Resolver for NoResolver {
    fn resolve(
        &self,
        _uri: &Uri,
        _config: &Config,
        _timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, Error> {
        let mut a = self.empty();
        a.push(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
        Ok(a)
    }
}

/// One vsock stream with ureq's buffers.
pub struct VsockTransport {
    stream: VsockStream,
    buffers: LazyBuffers,
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
}

impl std::fmt::Debug for VsockTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VsockTransport")
            .field("peer", &self.stream.peer_addr().ok())
            .finish()
    }
}

/// `timeout` with its budget spent is ureq's timeout error, as ureq's own TCP transport
/// checks before each read and write: without this an expired deadline would become
/// `not_zero()`'s one more second per read, and a proxy trickling a byte a second could hold
/// a request far past the contract's deadline.
fn unexpired(timeout: NextTimeout) -> Result<NextTimeout, Error> {
    if !timeout.after.is_not_happening() && timeout.after.is_zero() {
        return Err(Error::Timeout(timeout.reason));
    }
    Ok(timeout)
}

/// A timed-out or would-block I/O error as ureq's timeout (with the reason it gave).
fn io_error(e: io::Error, timeout: NextTimeout) -> Error {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Error::Timeout(timeout.reason),
        _ => Error::Io(e),
    }
}

impl Transport for VsockTransport {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), Error> {
        let timeout = unexpired(timeout.for_write())?;
        let t = timeout.not_zero().map(|d| *d);
        if t != self.write_timeout {
            self.stream.set_write_timeout(t)?;
            self.write_timeout = t;
        }
        let output = &self.buffers.output()[..amount];
        (&self.stream)
            .write_all(output)
            .map_err(|e| io_error(e, timeout))
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, Error> {
        let timeout = unexpired(timeout.for_read())?;
        let t = timeout.not_zero().map(|d| *d);
        if t != self.read_timeout {
            self.stream.set_read_timeout(t)?;
            self.read_timeout = t;
        }
        let input = self.buffers.input_append_buf();
        let n = loop {
            match (&self.stream).read(input) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => break r.map_err(|e| io_error(e, timeout))?,
            }
        };
        self.buffers.input_appended(n);
        Ok(n > 0)
    }

    /// Open when a non-blocking read finds nothing waiting (bytes the service did not owe us,
    /// an end of stream or an error all mean the connection is not to be reused).
    fn is_open(&mut self) -> bool {
        if self.stream.set_nonblocking(true).is_err() {
            return false;
        }
        let mut b = [0u8; 1];
        let open =
            matches!((&self.stream).read(&mut b), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
        open && self.stream.set_nonblocking(false).is_ok()
    }
}

/// The boot heartbeat over an open stream: send [`HEARTBEAT`], expect it echoed.
pub fn heartbeat_on(s: &mut (impl Read + Write)) -> Result<(), String> {
    s.write_all(&[HEARTBEAT])
        .map_err(|e| format!("sending the heartbeat: {e}"))?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b)
        .map_err(|e| format!("reading the heartbeat's echo: {e}"))?;
    if b[0] != HEARTBEAT {
        return Err(format!(
            "the parent echoed 0x{:02X}, not 0x{HEARTBEAT:02X}",
            b[0]
        ));
    }
    Ok(())
}

/// Tell a Nitro enclave's parent that the enclave booted (nitro-cli run-enclave waits for
/// this and reports the enclave as failed without it): CID 3, port 9000, 0xB7 and its echo,
/// 10 s at most.
pub fn nitro_heartbeat() -> Result<(), String> {
    let mut s = VsockStream::connect_with_cid_port(HEARTBEAT_CID, HEARTBEAT_PORT)
        .map_err(|e| format!("vsock connect to {HEARTBEAT_CID}:{HEARTBEAT_PORT}: {e}"))?;
    let t = Some(Duration::from_secs(10));
    s.set_read_timeout(t)
        .and_then(|_| s.set_write_timeout(t))
        .map_err(|e| format!("vsock timeouts: {e}"))?;
    heartbeat_on(&mut s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn heartbeat_is_one_byte_echoed() {
        let (mut guest, mut parent) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            let mut b = [0u8; 1];
            parent.read_exact(&mut b).unwrap();
            parent.write_all(&b).unwrap();
            b[0]
        });
        heartbeat_on(&mut guest).unwrap();
        assert_eq!(t.join().unwrap(), 0xB7);

        // A wrong echo or a parent that hangs up is an error naming what happened.
        let (mut guest, mut parent) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            let mut b = [0u8; 1];
            parent.read_exact(&mut b).unwrap();
            parent.write_all(&[0xB8]).unwrap();
        });
        let e = heartbeat_on(&mut guest).unwrap_err();
        t.join().unwrap();
        assert!(e.contains("0xB8"), "{e}");
        let (mut guest, parent) = UnixStream::pair().unwrap();
        drop(parent);
        let e = heartbeat_on(&mut guest).unwrap_err();
        assert!(e.contains("heartbeat"), "{e}");
    }

    #[test]
    fn the_resolver_never_looks_up_the_host() {
        let uri: Uri = "http://no-such-host.invalid:8443/v1".parse().unwrap();
        let config = ureq::Agent::config_builder().build();
        let a = NoResolver
            .resolve(&uri, &config, NextTimeout::default())
            .unwrap();
        assert_eq!(a.len(), 1);
    }
}
