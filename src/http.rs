//! The operations endpoint (`http.listen`): `/metrics` for Prometheus, `/health` for
//! liveness (the process answers), `/ready` for readiness (DNS is serving the
//! registry; not while starting or shutting down), so a load balancer or an
//! orchestrator sends queries only to a server that can answer them.
//!
//! HTTP/1.1 through hyper: a hand-written parser would be one more thing a hostile
//! client could probe. Connections are capped and a client has a few seconds to send
//! its headers, so the endpoint cannot be used to exhaust the server.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tracing::debug;

use crate::metrics::Exporter;

/// HTTP connections served at once; more are closed on accept. Scrapers and probes
/// need a handful.
const MAX_CONNECTIONS: usize = 64;
/// Time a client has to send a request's headers, on a new or a kept-alive connection.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the server is in its life, for `/ready`.
#[derive(Clone)]
pub struct Readiness(Arc<AtomicU8>);

const STARTING: u8 = 0;
const READY: u8 = 1;
const STOPPING: u8 = 2;

impl Default for Readiness {
    fn default() -> Readiness {
        Readiness(Arc::new(AtomicU8::new(STARTING)))
    }
}

impl Readiness {
    /// DNS answers from the loaded registry.
    pub fn set_ready(&self) {
        self.0.store(READY, Ordering::Relaxed);
    }

    /// Shutting down: take no new traffic.
    pub fn set_stopping(&self) {
        self.0.store(STOPPING, Ordering::Relaxed);
    }

    fn state(&self) -> &'static str {
        match self.0.load(Ordering::Relaxed) {
            READY => "ready",
            STOPPING => "stopping",
            _ => "starting",
        }
    }
}

/// The running endpoint.
pub struct HttpServer {
    pub local_addr: SocketAddr,
    task: JoinHandle<()>,
}

struct Shared {
    exporter: Exporter,
    readiness: Readiness,
}

impl HttpServer {
    /// Binds `listen` and serves until [`HttpServer::shutdown`].
    pub async fn start(
        listen: SocketAddr,
        exporter: Exporter,
        readiness: Readiness,
    ) -> Result<HttpServer> {
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("http.listen {listen}"))?;
        let local_addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            exporter,
            readiness,
        });
        let task = tokio::spawn(accept(listener, shared));
        Ok(HttpServer { local_addr, task })
    }

    pub fn shutdown(self) {
        self.task.abort();
    }
}

async fn accept(listener: TcpListener, shared: Arc<Shared>) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                debug!(error = %e, "accepting an HTTP connection failed");
                // Out of file descriptors, most likely: give the server room.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            debug!(%peer, "HTTP connection refused: {MAX_CONNECTIONS} already open");
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let response = respond(&shared, &request);
                async move { Ok::<_, Infallible>(response) }
            });
            let served = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                debug!(%peer, error = %e, "HTTP connection ended with an error");
            }
            drop(permit);
        });
    }
}

fn respond(shared: &Shared, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match request.uri().path() {
        "/metrics" => {
            let mut response = Response::new(Full::new(Bytes::from(shared.exporter.render())));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(Exporter::CONTENT_TYPE),
            );
            response
        }
        "/health" => text(StatusCode::OK, "ok\n"),
        "/ready" => match shared.readiness.state() {
            "ready" => text(StatusCode::OK, "ready\n"),
            state => text(StatusCode::SERVICE_UNAVAILABLE, &format!("{state}\n")),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /health or /ready\n",
        ),
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
