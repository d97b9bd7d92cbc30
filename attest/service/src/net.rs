//! The listener in front of the router: connection limits and timeouts, so that clients that
//! connect and send nothing, send slowly or stop reading cannot hold the service's sockets
//! (docs/protocol.md, "Limits").
//!
//! HTTP/1 through hyper's connection builder (the one axum::serve uses, but with its header
//! read timeout set), one task per connection:
//! - at most `max_connections` connections, and `max_connections_per_ip` per client (IPv4
//!   address or IPv6 /64); a connection over either is closed as soon as it is accepted;
//! - a request's headers must arrive within `header_timeout` of the connection being ready
//!   for one (also the limit on an idle keep-alive connection);
//! - a JSON request's body (at most 1 MiB) must arrive within `body_timeout`; a blob body may
//!   take as long as it needs but must not stall for `body_timeout`;
//! - a response write that makes no progress for `write_timeout` (the client stopped reading)
//!   closes the connection.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use dcr_protocol::wire::ApiError;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tower_service::Service as _;

use super::sessions::client_key;

/// The largest JSON request body.
pub const MAX_JSON: usize = 1 << 20;

#[derive(Clone, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub write_timeout: Duration,
}

pub fn api_error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(ApiError {
            code: code.into(),
            message: message.into(),
        }),
    )
        .into_response()
}

/// Counts a client's open connections; the count drops with the guard.
struct PerIp {
    map: Arc<Mutex<HashMap<IpAddr, usize>>>,
    key: IpAddr,
}

impl PerIp {
    fn take(map: &Arc<Mutex<HashMap<IpAddr, usize>>>, key: IpAddr, max: usize) -> Option<Self> {
        let mut m = map.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(key).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(PerIp {
            map: map.clone(),
            key,
        })
    }
}

impl Drop for PerIp {
    fn drop(&mut self) {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.key);
            }
        }
    }
}

/// Serve `router` on `listener` until `shutdown` completes; then stop accepting, let open
/// connections finish their request (at most 10 s) and return.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) {
    let total = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let per_ip = Arc::new(Mutex::new(HashMap::new()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let limits = Arc::new(limits);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                // EMFILE/ENFILE/ECONNABORTED: nothing to do about the one connection; back off
                // a little so that a full descriptor table does not spin the loop.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        // Over a limit: close at once (dropping the stream), before reading anything.
        let Ok(permit) = total.clone().try_acquire_owned() else {
            continue;
        };
        let Some(ip_guard) = PerIp::take(
            &per_ip,
            client_key(peer.ip()),
            limits.max_connections_per_ip,
        ) else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let limits = limits.clone();
        let stop = stop_rx.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ip_guard = ip_guard;
            let stream = WriteTimeout::new(stream, limits.write_timeout);
            match tls {
                None => connection(stream, router, peer, limits, stop).await,
                Some(acc) => {
                    // The handshake is bounded like a request's headers.
                    if let Ok(Ok(s)) =
                        tokio::time::timeout(limits.header_timeout, acc.accept(stream)).await
                    {
                        connection(s, router, peer, limits, stop).await
                    }
                }
            }
        });
    }
    let _ = stop_tx.send(true);
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(Duration::from_secs(10), total.acquire_many(all)).await;
}

/// Serve HTTP/1 on one connection (plain or TLS) until it ends or the service stops.
async fn connection<S>(
    stream: S,
    router: Router,
    peer: SocketAddr,
    limits: Arc<Limits>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let l = limits.clone();
    let svc = hyper::service::service_fn(move |req| handle(router.clone(), peer, l.clone(), req));
    let io = hyper_util::rt::TokioIo::new(stream);
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let conn = b.serve_connection(io, svc);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = stop.changed() => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

/// One request: the peer address for the handlers, the body read under its limits, then the
/// router.
async fn handle(
    router: Router,
    peer: SocketAddr,
    limits: Arc<Limits>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response, Infallible> {
    let mut req = req.map(Body::new);
    req.extensions_mut().insert(ConnectInfo(peer));
    let (parts, body) = req.into_parts();
    let body = if is_blob_path(parts.uri.path()) {
        stall_limited(body, limits.body_timeout)
    } else {
        match tokio::time::timeout(limits.body_timeout, read_json_body(body)).await {
            Err(_) => {
                return Ok(api_error(
                    StatusCode::REQUEST_TIMEOUT,
                    "timeout",
                    format!(
                        "request body not received within {} s",
                        limits.body_timeout.as_secs()
                    ),
                ))
            }
            Ok(Err(r)) => return Ok(r),
            Ok(Ok(b)) => Body::from(b),
        }
    };
    let req = Request::from_parts(parts, body);
    let mut router = router;
    Ok(router.call(req).await.unwrap_or_else(|e| match e {}))
}

/// `/v1/contracts/{digest}/blobs/{name}`: a blob body (streamed, any size), not JSON.
fn is_blob_path(path: &str) -> bool {
    let mut parts = path.split('/');
    matches!(
        (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next()
        ),
        (
            Some(""),
            Some("v1"),
            Some("contracts"),
            Some(_),
            Some("blobs"),
            Some(_),
            None
        )
    )
}

/// A JSON route's body: at most [`MAX_JSON`] bytes.
async fn read_json_body(body: Body) -> Result<Bytes, Response> {
    use futures_util::StreamExt;
    let mut s = body.into_data_stream();
    let mut buf = Vec::new();
    while let Some(chunk) = s.next().await {
        let chunk = chunk
            .map_err(|e| api_error(StatusCode::BAD_REQUEST, "bad_request", format!("body: {e}")))?;
        if buf.len() + chunk.len() > MAX_JSON {
            return Err(api_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("request bodies are limited to {MAX_JSON} bytes"),
            ));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(buf))
}

/// A streamed body that fails when no data arrives for `stall`.
fn stall_limited(body: Body, stall: Duration) -> Body {
    use futures_util::StreamExt;
    let s = body.into_data_stream();
    let s = futures_util::stream::unfold(Some(s), move |st| async move {
        let mut s = st?;
        match tokio::time::timeout(stall, s.next()).await {
            Ok(Some(Ok(b))) => Some((Ok(b), Some(s))),
            Ok(Some(Err(e))) => Some((Err(std::io::Error::other(e.to_string())), None)),
            Ok(None) => None,
            Err(_) => Some((
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no data for {} s", stall.as_secs()),
                )),
                None,
            )),
        }
    });
    Body::from_stream(s)
}

/// A TCP stream whose writes fail once they have made no progress for `timeout` (a client
/// that stopped reading). Reads are bounded by the header and body timeouts instead.
struct WriteTimeout<S> {
    inner: S,
    timeout: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
    armed: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> WriteTimeout<S> {
    fn new(inner: S, timeout: Duration) -> Self {
        WriteTimeout {
            inner,
            timeout,
            sleep: Box::pin(tokio::time::sleep(timeout)),
            armed: false,
        }
    }

    fn check<T>(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        match r {
            Poll::Pending => {
                if !self.armed {
                    self.armed = true;
                    let deadline = tokio::time::Instant::now() + self.timeout;
                    self.sleep.as_mut().reset(deadline);
                }
                if self.sleep.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the client stopped reading",
                    )));
                }
                Poll::Pending
            }
            r => {
                self.armed = false;
                r
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WriteTimeout<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WriteTimeout<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.check(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.check(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.check(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.check(cx, r)
    }
}

/// The soft limit on open files (from /proc/self/limits), if known.
pub fn open_files_limit() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
