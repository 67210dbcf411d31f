//! The accept loop: HTTP/1.1 over hyper with the limits a public server needs, which
//! `axum::serve` does not offer.
//!
//! - At most `http.max_connections` connections are served at once; the loop accepts the
//!   next one only when a slot is free, so more clients wait in the kernel's listen
//!   backlog and the process never runs out of file descriptors.
//! - A connection with no request in progress is watched: its request head must arrive
//!   within `http.header_timeout` from its first byte, and with no traffic at all for
//!   `http.idle_timeout` (a new socket that sends nothing, an idle keep-alive, a client
//!   that stops reading our answer) it is closed. hyper's own header timeout, set to
//!   idle + header, backs this up. Request bodies have their own deadline
//!   (`http.body_timeout`, see `limits`).
//! - On shutdown the listener is closed, idle connections are closed at once and the
//!   requests in progress are answered before their connections close.

use axum::Router;
use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tower::ServiceExt as _;

/// The connection limits, from `[http]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnLimits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

impl ConnLimits {
    pub(crate) fn from_settings(h: &crate::config::HttpSettings) -> ConnLimits {
        ConnLimits {
            header_timeout: h.header_timeout,
            idle_timeout: h.idle_timeout,
            max_connections: fit_fd_limit(h.max_connections),
        }
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then waits for the open
/// connections to finish.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.idle_timeout + limits.header_timeout)
        // Bounds each connection's read buffer, hence the request head (431 beyond).
        .max_buf_size(64 * 1024)
        .keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            biased;
            () = &mut shutdown => break,
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let (stream, peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                // The client gave up before we accepted: nothing to serve.
                Err(e) if matches!(e.kind(), io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset) => continue,
                Err(e) => {
                    // Out of file descriptors or memory: pause rather than spin.
                    tracing::error!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (http, app, mut stop) = (http.clone(), app.clone(), stop_rx.clone());
        tokio::spawn(async move {
            let activity = Arc::new(Activity::new());
            let io = TokioIo::new(Watched {
                inner: stream,
                activity: activity.clone(),
            });
            let service = {
                let activity = activity.clone();
                hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                    let busy = activity.request_started();
                    let app = app.clone();
                    async move {
                        let response = app.oneshot(req.map(Body::new)).await;
                        drop(busy);
                        response
                    }
                })
            };
            let conn = http.serve_connection(io, service);
            tokio::pin!(conn);
            let mut stopping = false;
            loop {
                tokio::select! {
                    done = conn.as_mut() => {
                        if let Err(e) = done {
                            tracing::debug!(%peer, error = %e, "connection ended");
                        }
                        break;
                    }
                    why = activity.expired(limits) => {
                        tracing::debug!(%peer, why, "closing connection");
                        break;
                    }
                    _ = stop.wait_for(|s| *s), if !stopping => {
                        conn.as_mut().graceful_shutdown();
                        stopping = true;
                    }
                }
            }
            drop(slot);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // Every slot back means every connection has ended.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = slots.acquire_many(all).await;
    Ok(())
}

/// What the watchdog of one connection needs to know. The `Notify` wakes the watchdog
/// when the deadline that applies changes (a head starts, a request enters or leaves the
/// router); otherwise it would sleep out the idle deadline it computed first.
struct Activity(Mutex<ActivityState>, tokio::sync::Notify);

struct ActivityState {
    /// Last time bytes went either way.
    last_traffic: Instant,
    /// First byte of a request head not yet handed to the router.
    head_since: Option<Instant>,
    /// Requests in the router (reading the body, handling, until the answer is ready).
    in_router: usize,
}

impl Activity {
    fn new() -> Activity {
        Activity(
            Mutex::new(ActivityState {
                last_traffic: Instant::now(),
                head_since: None,
                in_router: 0,
            }),
            tokio::sync::Notify::new(),
        )
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ActivityState> {
        // A panic elsewhere while holding it leaves plain numbers: still usable.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self) {
        let now = Instant::now();
        let mut s = self.state();
        s.last_traffic = now;
        if s.in_router == 0 && s.head_since.is_none() {
            s.head_since = Some(now);
            self.1.notify_one();
        }
    }

    fn wrote(&self) {
        self.state().last_traffic = Instant::now();
    }

    fn request_started(self: &Arc<Self>) -> InRouter {
        let mut s = self.state();
        s.in_router += 1;
        s.head_since = None;
        self.1.notify_one();
        InRouter(self.clone())
    }

    /// Resolves when the connection should be closed, with the reason.
    async fn expired(&self, limits: ConnLimits) -> &'static str {
        loop {
            let (deadline, why) = {
                let s = self.state();
                match (s.in_router, s.head_since) {
                    // The router's own deadlines apply; look again later.
                    (1.., _) => (
                        Instant::now() + limits.idle_timeout.min(limits.header_timeout),
                        None,
                    ),
                    (0, Some(t)) => (t + limits.header_timeout, Some("header timeout")),
                    (0, None) => (s.last_traffic + limits.idle_timeout, Some("idle timeout")),
                }
            };
            // A change of state (stored as a permit if it came before this wait) means
            // another deadline applies: compute it again.
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {}
                () = self.1.notified() => continue,
            }
            let s = self.state();
            let still = match (s.in_router, s.head_since) {
                (1.., _) => false,
                (0, Some(t)) => Instant::now() >= t + limits.header_timeout,
                (0, None) => Instant::now() >= s.last_traffic + limits.idle_timeout,
            };
            if let (true, Some(why)) = (still, why) {
                return why;
            }
        }
    }
}

/// Held while a request is in the router; its end counts as traffic (the answer is
/// about to be written).
struct InRouter(Arc<Activity>);

impl Drop for InRouter {
    fn drop(&mut self) {
        let mut s = self.0.state();
        s.in_router -= 1;
        s.last_traffic = Instant::now();
        self.0.1.notify_one();
    }
}

/// The socket, reporting its traffic to the watchdog.
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.read();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.wrote();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.wrote();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// File descriptors kept free for everything but client sockets: the database and SMTP
/// pools, templates, the outbox, logs.
const FD_RESERVE: u64 = 128;

/// `max_connections`, lowered (with a warning) when the open-file limit cannot hold
/// that many sockets plus [`FD_RESERVE`]; the soft limit is raised towards the hard one
/// first.
fn fit_fd_limit(max_connections: usize) -> usize {
    let wanted = max_connections as u64 + FD_RESERVE;
    let limit = match rlimit::increase_nofile_limit(wanted) {
        Ok(limit) if limit < wanted => limit,
        // Enough, or no limit to read: nothing to fit.
        _ => return max_connections,
    };
    let fitted = limit.saturating_sub(FD_RESERVE).max(limit / 2).max(1) as usize;
    tracing::warn!(
        max_connections,
        lowered_to = fitted,
        open_file_limit = limit,
        "http.max_connections lowered to stay below the open-file limit (raise `ulimit -n` or LimitNOFILE)"
    );
    fitted
}
