//! The HTTP/1 accept loop of every listener that is not gRPC: the gateway's
//! client port (WebSocket upgrades, demo, health) and the roomhost's
//! metrics port.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::shutdown::Stopping;

/// After a failed accept (typically EMFILE), wait this long instead of
/// spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// How connections on one listener are read.
#[derive(Debug, Clone, Copy)]
pub struct Http1 {
    /// A request head must arrive within this.
    pub header_timeout: Duration,
    /// Largest request head read (bytes).
    pub max_head: usize,
    /// Keep connections open between requests.
    pub keep_alive: bool,
}

/// Accepts connections until `stopping`, serving each with `respond`; a
/// connection still open then finishes its request and closes. Upgrades
/// (WebSockets) are allowed; an upgraded connection is the service's own.
pub async fn serve<F, Fut, B>(
    listener: TcpListener,
    http1: Http1,
    mut stopping: Stopping,
    respond: F,
) where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = stopping.wait() => return,
        };
        let _ = stream.set_nodelay(true);
        let respond = respond.clone();
        let mut stopping = stopping.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let answer = respond(req);
                async move { Ok::<_, Infallible>(answer.await) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(http1.header_timeout)
                .max_buf_size(http1.max_head)
                .keep_alive(http1.keep_alive)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                () = stopping.wait() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
}
