//! Who may call what: the API token for `/v1/*` and the preview pages. Comparisons are
//! constant-time; with no token configured everything protected answers 401, so a
//! forgotten secret never leaves the API open.

use super::{ApiError, AppState};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use base64::Engine as _;
use subtle::ConstantTimeEq;

/// Constant-time equality; false when `expected` is None (nothing configured).
pub(crate) fn token_matches(expected: Option<&str>, given: &str) -> bool {
    match expected {
        Some(e) if !e.is_empty() => e.as_bytes().ct_eq(given.as_bytes()).into(),
        _ => false,
    }
}

/// The token from `Authorization: Bearer T`.
fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim().to_owned())
}

/// The password from `Authorization: Basic base64(user:password)` (browsers prompt for
/// it, which suits the preview pages).
fn basic_password(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    text.split_once(':').map(|(_, p)| p.to_owned())
}

/// `/v1/*`: bearer token only.
pub(crate) async fn require_token(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let expected = state.engine.settings.http.api_token();
    match bearer(req.headers()) {
        Some(t) if token_matches(expected, &t) => Ok(next.run(req).await),
        Some(_) => Err(ApiError::new(StatusCode::UNAUTHORIZED, "wrong API token")),
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing API token (Authorization: Bearer …)",
        )),
    }
}

/// Preview pages: bearer, Basic (token as password) or `?token=`.
pub(crate) fn preview_allowed(state: &AppState, headers: &HeaderMap, query: Option<&str>) -> bool {
    let expected = state.engine.settings.http.api_token();
    [
        bearer(headers),
        basic_password(headers),
        query.map(str::to_owned),
    ]
    .into_iter()
    .flatten()
    .any(|t| token_matches(expected, &t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_configured_token_matches_nothing() {
        assert!(!token_matches(None, ""));
        assert!(!token_matches(Some(""), ""));
        assert!(token_matches(Some("t"), "t"));
        assert!(!token_matches(Some("t"), "tt"));
    }
}
