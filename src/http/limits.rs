//! Reading request bodies within bounds: a size limit (413, checked against
//! `Content-Length` before anything is read) and a deadline for the whole body
//! (`http.body_timeout`, 408), both answered with the JSON error of the API. The body is
//! read once into one buffer and handed on, so handlers extract it as usual.
//!
//! The Shopify webhook is read differently: its signature header is checked first (a
//! request without one is refused before a byte of the body is read), the limit is the
//! smaller `http.webhook_max_body_bytes`, and the HMAC is computed as the body streams
//! into its buffer, so no second copy is made to check it.

use super::{ApiError, AppState};
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use http_body_util::BodyExt as _;
use sha2::Sha256;
use std::time::Duration;

/// Middleware for routes that read a body (`/v1/*`): limit `http.max_body_bytes`.
pub(crate) async fn read_body(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let h = &s.engine.settings.http;
    match buffer(req, h.max_body_bytes, h.body_timeout, None).await {
        Ok(req) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// Middleware for the bounce webhooks (`/webhooks/bounces/*`): limit
/// `http.webhook_max_body_bytes`; each provider's signature is checked by its handler.
pub(crate) async fn read_webhook_body(
    State(s): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let h = &s.engine.settings.http;
    match buffer(req, h.webhook_max_body_bytes, h.body_timeout, None).await {
        Ok(req) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// Middleware for the Shopify webhook: `X-Shopify-Hmac-Sha256` must be present and
/// well-formed before the body is read, and must match the body once it is read.
pub(crate) async fn shopify_signed(
    State(s): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let refused = || {
        closing(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing or wrong X-Shopify-Hmac-Sha256",
        ))
    };
    let secret = s.engine.settings.shopify.webhook_secret();
    let signature = req
        .headers()
        .get("x-shopify-hmac-sha256")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            base64::engine::general_purpose::STANDARD
                .decode(v.trim())
                .ok()
        })
        // An HMAC-SHA256 is 32 bytes; anything else cannot match.
        .filter(|sig| sig.len() == 32);
    let (Some(secret), Some(signature)) = (secret.filter(|s| !s.is_empty()), signature) else {
        return refused();
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return refused();
    };
    let h = &s.engine.settings.http;
    let req = match buffer(
        req,
        h.webhook_max_body_bytes,
        h.body_timeout,
        Some(&mut mac),
    )
    .await
    {
        Ok(req) => req,
        Err(e) => return e.into_response(),
    };
    if mac.verify_slice(&signature).is_err() {
        return refused();
    }
    next.run(req).await
}

/// Why a body was not read.
#[derive(Debug)]
enum BodyError {
    TooLarge(usize),
    TooSlow(Duration),
    Broken(String),
}

impl IntoResponse for BodyError {
    fn into_response(self) -> Response {
        let e = match self {
            BodyError::TooLarge(limit) => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body larger than {limit} bytes"),
            )
            .with("limit", limit),
            BodyError::TooSlow(t) => ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "request body not received within {}",
                    humantime::format_duration(t)
                ),
            ),
            BodyError::Broken(why) => ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("cannot read the request body: {why}"),
            ),
        };
        closing(e)
    }
}

/// The error, telling the client the connection closes: the rest of its body is not read.
fn closing(e: ApiError) -> Response {
    let mut r = e.into_response();
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// Reads the whole body (at most `limit` bytes, within `timeout`) into one buffer,
/// feeding `mac` on the way, and returns the request with that buffer as its body.
async fn buffer(
    req: Request,
    limit: usize,
    timeout: Duration,
    mut mac: Option<&mut Hmac<Sha256>>,
) -> Result<Request, BodyError> {
    let (parts, mut body) = req.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge(limit));
    }
    // Sized once from the declared length: no regrowth, no second copy.
    let mut buf = Vec::with_capacity(declared.map_or(0, |n| n as usize));
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(BodyError::TooSlow(timeout)),
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(BodyError::Broken(e.to_string())),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        if buf.len() + data.len() > limit {
            return Err(BodyError::TooLarge(limit));
        }
        if let Some(mac) = mac.as_deref_mut() {
            mac.update(&data);
        }
        buf.extend_from_slice(&data);
    }
    Ok(Request::from_parts(parts, Body::from(Bytes::from(buf))))
}
