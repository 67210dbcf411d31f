//! Measuring on the web: tracked links (`GET`/`HEAD /r/{token}`), the optional open
//! pixel (`/o/{token}`) and the report (`GET /report`, behind the preview auth).
//!
//! A link's token is checked before anything is read or written: a forged, altered or
//! truncated one is a 404 and leaves no row. A valid one is recorded (classified as a
//! click, a scanner's prefetch or a duplicate, `measure::token::classify`) and
//! redirected (303) to the product URL with the UTM tags; a failed write still
//! redirects, because the shopper came for the product, not for our statistics.

use super::auth::preview_auth;
use super::pages::{signed_in, unauthorized};
use super::{ApiError, AppState};
use crate::domain::{CampaignName, ProductId, parse_duration};
use crate::jobs::ReportError;
use crate::measure::token::{self, Method, Utm};
use crate::store::Hit;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use sha2::{Digest, Sha256};

/// A short hash of who asked (forwarded-for and user agent), so scanners can be told
/// apart without storing an address.
fn source(headers: &HeaderMap) -> String {
    let mut h = Sha256::new();
    for name in ["x-forwarded-for", "user-agent"] {
        if let Some(v) = headers.get(name) {
            h.update(v.as_bytes());
        }
        h.update([0]);
    }
    hex::encode(&h.finalize()[..8])
}

fn method(m: &axum::http::Method) -> Method {
    if m == axum::http::Method::HEAD {
        Method::Head
    } else {
        Method::Get
    }
}

fn not_found() -> Response {
    ApiError::new(StatusCode::NOT_FOUND, "no such link").into_response()
}

fn no_store(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    h.insert(
        header::REFERRER_POLICY,
        header::HeaderValue::from_static("no-referrer"),
    );
    r
}

/// Where a product without a usable absolute URL is shown: the store's product path.
fn product_page(base_url: &str, product: &ProductId) -> String {
    let id: String = url::form_urlencoded::byte_serialize(product.as_str().as_bytes()).collect();
    format!(
        "{}/products/{}",
        base_url.trim_end_matches('/'),
        id.replace('+', "%20")
    )
}

/// `GET`/`HEAD /r/{token}`: records the hit and answers 303 to the product.
pub(crate) async fn link(
    State(s): State<AppState>,
    m: axum::http::Method,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> Response {
    let e = &s.engine;
    let now = e.clock.now();
    let Some((id, product)) = token::verify(&raw, &e.link_keys(), now) else {
        return not_found();
    };
    let target = match e.store.link_target(id, Some(&product)).await {
        Ok(Some(t)) => t,
        Ok(None) => return not_found(),
        Err(err) => return ApiError::internal(err).into_response(),
    };
    let src = source(&headers);
    let hit = Hit {
        followup_id: id,
        product: Some(&product),
        method: method(&m),
        at: now,
        sent_at: target.sent_at,
        source: &src,
    };
    match e.store.record_hit(&hit).await {
        Ok(kind) => {
            tracing::debug!(followup = id, product = %product, kind = kind.as_str(), "link hit")
        }
        Err(err) => tracing::error!(error = %err, followup = id, "could not record a click"),
    }
    let base = &e.settings.store.base_url;
    let url = target
        .product_url
        .unwrap_or_else(|| product_page(base, &product));
    let location = CampaignName::parse(&target.campaign)
        .ok()
        .and_then(|c| {
            token::redirect_location(
                &url,
                Utm {
                    campaign: &c,
                    product: &product,
                },
            )
        })
        .unwrap_or_else(|| base.clone());
    let mut r = StatusCode::SEE_OTHER.into_response();
    match header::HeaderValue::from_str(&location) {
        Ok(v) => {
            r.headers_mut().insert(header::LOCATION, v);
        }
        Err(_) => return ApiError::internal("unusable redirect target").into_response(),
    }
    no_store(r)
}

/// The transparent 1×1 GIF the open pixel answers with.
const PIXEL: &[u8] = &[
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xff, 0xff, 0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b,
];

/// `GET /o/{token}`: the open pixel, only when `attribution.open_pixel` is on (else 404).
pub(crate) async fn pixel(
    State(s): State<AppState>,
    m: axum::http::Method,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> Response {
    let e = &s.engine;
    if !e.settings.attribution.open_pixel {
        return not_found();
    }
    let now = e.clock.now();
    let Some(id) = token::verify_open(&raw, &e.link_keys(), now) else {
        return not_found();
    };
    let target = match e.store.link_target(id, None).await {
        Ok(Some(t)) => t,
        Ok(None) => return not_found(),
        Err(err) => return ApiError::internal(err).into_response(),
    };
    let src = source(&headers);
    let hit = Hit {
        followup_id: id,
        product: None,
        method: method(&m),
        at: now,
        sent_at: target.sent_at,
        source: &src,
    };
    if let Err(err) = e.store.record_hit(&hit).await {
        tracing::error!(error = %err, followup = id, "could not record an open");
    }
    no_store(([(header::CONTENT_TYPE, "image/gif")], PIXEL).into_response())
}

#[derive(Debug, serde::Deserialize)]
pub(crate) struct ReportQuery {
    campaign: Option<String>,
    since: Option<String>,
    format: Option<String>,
    token: Option<String>,
}

/// `GET /report[?campaign=NAME][&since=30d][&format=html|json]`: the report as JSON
/// (the `report --json` shape), or the HTML page for `format=html` or a browser
/// (`Accept: text/html`). Same auth as `/preview`.
pub(crate) async fn report(
    State(s): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<ReportQuery>,
) -> Response {
    let Some(auth) = preview_auth(&s, &headers, q.token.as_deref()) else {
        return unauthorized();
    };
    let html = match q.format.as_deref() {
        Some("html") => true,
        Some("json") => false,
        Some(other) => {
            return ApiError::new(StatusCode::BAD_REQUEST, "format must be html or json")
                .with("field", "format")
                .with("why", format!("{other:?} is not html or json"))
                .into_response();
        }
        None => headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("text/html")),
    };
    let since = match q.since.as_deref().map(parse_duration) {
        None => crate::jobs::DEFAULT_REPORT_SINCE,
        Some(Ok(d)) => d,
        Some(Err(why)) => {
            return ApiError::new(StatusCode::BAD_REQUEST, format!("since: {why}"))
                .with("field", "since")
                .with("why", why)
                .into_response();
        }
    };
    let report = match s.engine.report(q.campaign.as_deref(), since).await {
        Ok(r) => r,
        Err(ReportError::UnknownCampaign(name)) => {
            return ApiError::new(StatusCode::NOT_FOUND, format!("no campaign named {name:?}"))
                .with("field", "campaign")
                .into_response();
        }
        Err(ReportError::Store(err)) => return ApiError::internal(err).into_response(),
    };
    let page = if html {
        let body = crate::measure::html::render(&report, &s.engine.settings.store.name);
        let mut r = Html(body).into_response();
        r.headers_mut().insert(
            header::CONTENT_SECURITY_POLICY,
            header::HeaderValue::from_static(
                "default-src 'none'; style-src 'unsafe-inline'; img-src data:",
            ),
        );
        r
    } else {
        axum::Json(&report).into_response()
    };
    no_store(signed_in(&s, auth, page))
}
