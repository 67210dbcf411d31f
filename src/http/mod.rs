//! The HTTP face of aftercart (SPEC §5): the ingest API (`/v1/*`, bearer token), the
//! Shopify order webhook (HMAC), campaign triggers, unsubscribe pages (signed tokens),
//! the content team's preview pages, tracked links (`/r/{token}`) and the report
//! (`/report`), `/healthz` and `/metrics`.
//!
//! Handlers stay thin: they parse the request, call the same library code the CLI uses
//! (`import::Batch`, `jobs::trigger`, `Engine::preview`, the store) and turn the
//! outcome into a status code. `docs/api.md` is the user-facing reference. This module
//! is started by `app` (`aftercart serve`) with a ready [`Engine`]; it knows nothing of
//! the command line or of how the process is put together.
//!
//! The server survives slow and hostile clients: connection limits and read timeouts
//! in `serve`, body limits and deadlines in `limits` (every route that reads a body has
//! one of its layers), the webhook's signature header checked before its body is read.

mod api;
mod auth;
mod bounces;
mod limits;
mod measure;
mod metrics;
mod pages;
mod serve;
mod shopify;

use crate::domain::ScheduleRule;
use crate::jobs::Engine;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("HTTP server failed: {0}")]
    Serve(std::io::Error),
}

/// What every handler shares. Cheap to clone (everything inside is shared).
#[derive(Clone)]
pub struct AppState {
    pub engine: Engine,
    /// Campaign rules used to schedule follow-ups for stored orders.
    pub rules: Arc<[ScheduleRule]>,
}

impl AppState {
    pub fn new(engine: Engine) -> AppState {
        let rules = crate::jobs::schedule_rules(&engine.settings).into();
        AppState { engine, rules }
    }
}

/// All routes. `/v1/*` and `/preview*` check the API token; the webhook checks its HMAC;
/// unsubscribe checks the signed token; `/healthz` is open and `/metrics` too unless
/// `http.metrics_token` is set.
pub fn router(state: AppState) -> Router {
    let http = &state.engine.settings.http;
    let limit = http.max_body_bytes.max(http.webhook_max_body_bytes);
    // The last route_layer runs first: the token is checked before the body is read.
    let v1 = Router::new()
        .route("/orders", post(api::orders))
        .route("/customers", post(api::customers))
        .route("/products", post(api::products))
        .route("/events", post(api::events))
        .route("/campaigns/{name}/trigger", post(api::trigger_campaign))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            limits::read_body,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    Router::new()
        .nest("/v1", v1)
        .route(
            "/webhooks/shopify/orders",
            post(shopify::orders).route_layer(axum::middleware::from_fn_with_state(
                state.clone(),
                limits::shopify_signed,
            )),
        )
        .route(
            "/webhooks/shopify",
            post(shopify::webhook).route_layer(axum::middleware::from_fn_with_state(
                state.clone(),
                limits::shopify_signed,
            )),
        )
        .route(
            "/webhooks/bounces/{provider}",
            post(bounces::bounce).route_layer(axum::middleware::from_fn_with_state(
                state.clone(),
                limits::read_webhook_body,
            )),
        )
        .route(
            "/unsubscribe/{token}",
            get(pages::unsubscribe_page).post(pages::unsubscribe),
        )
        .route("/r/{token}", get(measure::link))
        .route("/o/{token}", get(measure::pixel))
        .route("/report", get(measure::report))
        .route("/preview", get(pages::preview_index))
        .route("/preview/{campaign}/{order_id}", get(pages::preview_email))
        .route("/healthz", get(metrics::healthz))
        .route("/metrics", get(metrics::metrics))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        // A backstop: the layers in `limits` have refused larger bodies already.
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::map_response(nosniff))
        .with_state(state)
}

/// No response is to be sniffed into another type (a JSON error rendered as HTML).
async fn nosniff(mut r: Response) -> Response {
    r.headers_mut().insert(
        axum::http::header::X_CONTENT_TYPE_OPTIONS,
        axum::http::HeaderValue::from_static("nosniff"),
    );
    r
}

/// A running server: its address and task (abort the task to stop it at once).
pub type Running = (SocketAddr, JoinHandle<Result<(), HttpError>>);

/// Starts the HTTP server (no worker) on `listener`; it stops gracefully when `shutdown`
/// resolves. For tests: bind 127.0.0.1:0 first when the address must be known early
/// (e.g. for `store.base_url`).
pub fn start_on(
    engine: Engine,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<Running, HttpError> {
    let addr = listener.local_addr().map_err(HttpError::Serve)?;
    let limits = serve::ConnLimits::from_settings(&engine.settings.http);
    let app = router(AppState::new(engine));
    let handle = tokio::spawn(async move {
        serve::serve(listener, app, limits, shutdown)
            .await
            .map_err(HttpError::Serve)
    });
    Ok((addr, handle))
}

/// Listens on `addr` (e.g. "127.0.0.1:8080", or port 0 for any free one).
pub async fn bind(addr: &str) -> Result<TcpListener, HttpError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| HttpError::Bind {
            addr: addr.to_owned(),
            source,
        })
}

/// Binds `bind` (e.g. "127.0.0.1:0") and starts the server without a worker; it runs
/// until the returned task is aborted.
pub async fn start(engine: Engine, bind: &str) -> Result<Running, HttpError> {
    start_on(engine, self::bind(bind).await?, std::future::pending())
}

/// A JSON error: `{"error": "...", ...extra fields}` with a status.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    body: serde_json::Value,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, msg: impl std::fmt::Display) -> ApiError {
        ApiError {
            status,
            body: serde_json::json!({ "error": msg.to_string() }),
        }
    }
    /// Adds a field to the body (`index`, `field`, `why`…).
    pub(crate) fn with(mut self, key: &str, value: impl Into<serde_json::Value>) -> ApiError {
        if let Some(o) = self.body.as_object_mut() {
            o.insert(key.to_owned(), value.into());
        }
        self
    }
    pub(crate) fn internal(e: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %e, "request failed");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body)).into_response()
    }
}
