//! Who may call what: the API token for `/v1/*` and the preview pages, the metrics
//! token for `/metrics`. Comparisons are constant-time; with no token configured
//! everything protected answers 401, so a forgotten secret never leaves the API open.
//!
//! A preview page opened with `?token=` sets a session cookie instead of carrying the
//! token into its links: `aftercart_preview=EXPIRY.HMAC(token, EXPIRY)`, HttpOnly,
//! SameSite=Strict, Path=/preview, for [`PREVIEW_SESSION`]. It holds no secret, works
//! nowhere else, and a new API token ends every session.

use super::{ApiError, AppState};
use crate::domain::Timestamp;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::time::Duration;
use subtle::ConstantTimeEq;

/// The preview session cookie's name.
pub(crate) const PREVIEW_COOKIE: &str = "aftercart_preview";
/// How long a preview session lasts.
pub(crate) const PREVIEW_SESSION: Duration = Duration::from_secs(8 * 3600);

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

/// How a preview request showed the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PreviewAuth {
    /// Bearer or Basic: the browser (or script) sends it again by itself.
    Header,
    /// A valid session cookie.
    Session,
    /// `?token=`: the answer sets a session cookie so links need not carry it.
    Query,
}

/// Preview pages: bearer, Basic (token as password), a session cookie or `?token=`.
pub(crate) fn preview_auth(
    state: &AppState,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Option<PreviewAuth> {
    let expected = state.engine.settings.http.api_token();
    let now = state.engine.clock.now();
    if [bearer(headers), basic_password(headers)]
        .into_iter()
        .flatten()
        .any(|t| token_matches(expected, &t))
    {
        Some(PreviewAuth::Header)
    } else if cookies(headers, PREVIEW_COOKIE).any(|c| session_valid(expected, c, now)) {
        Some(PreviewAuth::Session)
    } else if query.is_some_and(|t| token_matches(expected, t)) {
        Some(PreviewAuth::Query)
    } else {
        None
    }
}

/// `Set-Cookie` for a new preview session (`Secure` when the public URL is https).
pub(crate) fn preview_cookie(state: &AppState) -> Option<HeaderValue> {
    let token = state.engine.settings.http.api_token()?;
    let expires = state.engine.clock.now().plus(PREVIEW_SESSION);
    let secure = if state.engine.settings.store.base_url.starts_with("https:") {
        "; Secure"
    } else {
        ""
    };
    let value = format!(
        "{PREVIEW_COOKIE}={}.{}; Path=/preview; Max-Age={}; HttpOnly; SameSite=Strict{secure}",
        expires.0,
        session_mac(token, expires),
        PREVIEW_SESSION.as_secs()
    );
    HeaderValue::from_str(&value).ok()
}

fn session_mac(token: &str, expires: Timestamp) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(token.as_bytes()).expect("HMAC takes any key");
    mac.update(format!("aftercart preview session\n{}", expires.0).as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
}

/// True for `EXPIRY.MAC` made with `expected` and not yet expired.
fn session_valid(expected: Option<&str>, cookie: &str, now: Timestamp) -> bool {
    let Some(token) = expected.filter(|t| !t.is_empty()) else {
        return false;
    };
    let Some((expires, mac)) = cookie.split_once('.') else {
        return false;
    };
    let Ok(expires) = expires.parse::<i64>().map(Timestamp) else {
        return false;
    };
    expires > now && token_matches(Some(&session_mac(token, expires)), mac)
}

/// The values of cookie `name` in every `Cookie` header.
fn cookies<'a>(headers: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(move |pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

/// `/metrics`: open unless `http.metrics_token` is set, then `Authorization: Bearer` with it.
pub(crate) fn metrics_allowed(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = state.engine.settings.http.metrics_token() else {
        return Ok(());
    };
    match bearer(headers) {
        Some(t) if token_matches(Some(expected), &t) => Ok(()),
        Some(_) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "wrong metrics token",
        )),
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing metrics token (Authorization: Bearer …)",
        )),
    }
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

    #[test]
    fn sessions_are_signed_with_the_token_and_expire() {
        let now = Timestamp(1_000_000);
        let later = now.plus(PREVIEW_SESSION);
        let good = format!("{}.{}", later.0, session_mac("tok", later));
        assert!(session_valid(Some("tok"), &good, now));
        assert!(
            !session_valid(Some("other"), &good, now),
            "a new token ends sessions"
        );
        assert!(!session_valid(Some("tok"), &good, later), "expired");
        assert!(!session_valid(None, &good, now));
        let stretched = format!("{}.{}", later.0 + 1, session_mac("tok", later));
        assert!(
            !session_valid(Some("tok"), &stretched, now),
            "expiry is signed"
        );
        assert!(!session_valid(Some("tok"), "garbage", now));
    }

    #[test]
    fn cookies_are_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; aftercart_preview=x.y"),
        );
        h.append(
            header::COOKIE,
            HeaderValue::from_static("aftercart_preview=z"),
        );
        assert_eq!(
            cookies(&h, PREVIEW_COOKIE).collect::<Vec<_>>(),
            ["x.y", "z"]
        );
    }
}
