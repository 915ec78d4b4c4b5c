//! The HTTP endpoints of a worker (HTTP/1.1):
//!
//! - `GET /metrics`: the Prometheus exposition of [`Metrics::encode`];
//! - `GET /healthz`: `200 ok` while the process runs (liveness);
//! - `GET /readyz`: `200 ready` while [`Metrics::is_ready`], else `503 not ready` (readiness);
//! - anything else: `404` (or `405` for another method on one of these paths).
//!
//! [`bind`] then [`MetricsServer::serve`] lets a caller bind port 0 and learn the real address;
//! [`serve`] does both.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Metrics;

/// How long a client may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A bound, not yet serving, metrics endpoint.
#[derive(Debug)]
pub struct MetricsServer {
    listener: TcpListener,
}

/// Binds `addr` (port 0 picks a free port; see [`MetricsServer::local_addr`]).
pub async fn bind(addr: SocketAddr) -> io::Result<MetricsServer> {
    Ok(MetricsServer {
        listener: TcpListener::bind(addr).await?,
    })
}

/// Binds `addr` and serves until `shutdown` is cancelled.
pub async fn serve(
    addr: SocketAddr,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> io::Result<()> {
    bind(addr).await?.serve(metrics, shutdown).await
}

impl MetricsServer {
    /// The address actually bound.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` is cancelled, then lets requests in progress finish and returns.
    pub async fn serve(self, metrics: Metrics, shutdown: CancellationToken) -> io::Result<()> {
        let connections = TaskTracker::new();
        loop {
            let accepted = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = self.listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(connection(stream, peer, metrics.clone(), shutdown.clone()));
                }
                Err(error) => {
                    // Out of file descriptors or a connection reset before accept: keep serving.
                    tracing::warn!(%error, "metrics endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        connections.close();
        connections.wait().await;
        Ok(())
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let service = service_fn(move |request| {
        let metrics = metrics.clone();
        async move { Ok::<_, Infallible>(respond(&request, &metrics)) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, %peer, "metrics endpoint: connection ended with an error");
    }
}

/// The answer to one request.
fn respond(request: &Request<Incoming>, metrics: &Metrics) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    if !matches!(path, "/metrics" | "/healthz" | "/readyz") {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match path {
        "/metrics" => {
            let mut response = Response::new(Full::new(Bytes::from(metrics.encode())));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(super::text::CONTENT_TYPE),
            );
            response
        }
        "/readyz" if metrics.is_ready() => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        _ => text(StatusCode::OK, "ok\n"),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
