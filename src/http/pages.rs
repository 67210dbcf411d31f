//! HTML pages: unsubscribe (for shoppers) and preview (for the content team). Every value
//! that reaches a page is escaped; the rendered email is shown in a sandboxed
//! `<iframe srcdoc>` so its styles cannot leak into the page. Pages show customer data
//! and carry tokens in their URLs, so none is cached, framed or named in a `Referer`.

use super::AppState;
use super::auth::{PreviewAuth, preview_auth, preview_cookie};
use crate::render::{LiveTemplates, Templates};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use std::fmt::Write as _;

/// Escapes text for HTML content and attribute values.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{}</title>\
<style>body{{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}}\
pre{{background:#f5f5f5;padding:1rem;white-space:pre-wrap}}.problem{{color:#a00}}\
iframe{{border:1px solid #ccc;width:100%;height:50rem}}#mobile:checked~iframe{{width:375px}}\
table{{border-collapse:collapse}}td,th{{padding:.2rem .6rem;text-align:left}}</style></head>\
<body>{body}</body></html>",
        esc(title)
    );
    let mut r = (status, Html(html)).into_response();
    let h = r.headers_mut();
    for (name, value) in [
        (header::CACHE_CONTROL, "no-store"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ] {
        h.insert(name, header::HeaderValue::from_static(value));
    }
    r
}

// ---- unsubscribe ----------------------------------------------------------------

/// The confirmation page: GET must not unsubscribe (mail scanners prefetch links), so
/// it shows a button that POSTs the RFC 8058 body.
pub(crate) async fn unsubscribe_page(
    State(s): State<AppState>,
    Path(token): Path<String>,
) -> Response {
    let store_name = esc(&s.engine.settings.store.name);
    let now = s.engine.clock.now();
    if s.engine.signer.verify(&token, now).is_none() {
        return invalid_link();
    }
    page(
        StatusCode::OK,
        "Unsubscribe",
        &format!(
            "<h1>Unsubscribe</h1><p>Stop receiving follow-up emails from {store_name}?</p>\
<form method=\"post\"><input type=\"hidden\" name=\"List-Unsubscribe\" value=\"One-Click\">\
<button type=\"submit\">Unsubscribe</button></form>"
        ),
    )
}

/// RFC 8058 one-click (and the page's button): the signed token names the customer.
pub(crate) async fn unsubscribe(State(s): State<AppState>, Path(token): Path<String>) -> Response {
    let now = s.engine.clock.now();
    let Some(u) = s.engine.signer.verify(&token, now) else {
        return invalid_link();
    };
    if let Err(e) = s.engine.store.unsubscribe(&u.customer_id, now).await {
        tracing::error!(error = %e, "unsubscribe failed");
        return page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Try again",
            "<h1>Something went wrong</h1><p>Please try again in a minute.</p>",
        );
    }
    tracing::info!(customer = %u.customer_id, "unsubscribed");
    page(
        StatusCode::OK,
        "Unsubscribed",
        &format!(
            "<h1>You are unsubscribed</h1><p>{} will send you no more follow-up emails.</p>",
            esc(&s.engine.settings.store.name)
        ),
    )
}

fn invalid_link() -> Response {
    page(
        StatusCode::BAD_REQUEST,
        "Invalid link",
        "<h1>This unsubscribe link is not valid</h1><p>Use the link from the email as it was sent.</p>",
    )
}

// ---- preview ----------------------------------------------------------------------

#[derive(Debug, serde::Deserialize)]
pub(crate) struct TokenQuery {
    token: Option<String>,
}

pub(super) fn unauthorized() -> Response {
    let mut r = page(
        StatusCode::UNAUTHORIZED,
        "Sign in",
        "<h1>Sign in</h1><p>Use the API token (as password, any user name).</p>",
    );
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Basic realm=\"aftercart preview\""),
    );
    r
}

/// The page, with a session cookie when the visitor signed in with `?token=`: links then
/// work without carrying the token.
pub(super) fn signed_in(s: &AppState, auth: PreviewAuth, mut page: Response) -> Response {
    if auth == PreviewAuth::Query
        && let Some(cookie) = preview_cookie(s)
    {
        page.headers_mut().append(header::SET_COOKIE, cookie);
    }
    page
}

fn path_segment(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

pub(crate) async fn preview_index(
    State(s): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<TokenQuery>,
) -> Response {
    let Some(auth) = preview_auth(&s, &headers, q.token.as_deref()) else {
        return unauthorized();
    };
    let settings = s.engine.settings.clone();
    let mut body = String::from("<h1>Email previews</h1>");

    let dir = settings.templates_dir.clone();
    let campaigns = settings.campaign_templates();
    // Parsing and sample-rendering every template is blocking work.
    let problems = tokio::task::spawn_blocking(move || crate::render::check(&dir, &campaigns))
        .await
        .unwrap_or_default();
    if !problems.is_empty() {
        body.push_str("<h2>Template problems</h2><ul>");
        for p in &problems {
            let _ = write!(
                body,
                "<li class=\"problem\"><code>{}</code></li>",
                esc(&p.to_string())
            );
        }
        body.push_str("</ul>");
    }

    body.push_str("<h2>Campaigns</h2><table><tr><th>name</th><th>trigger</th><th>delay</th><th>template</th><th>strategy</th><th></th></tr>");
    for c in &settings.campaigns {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(c.name.as_str()),
            esc(&format!("{:?}", c.trigger).to_lowercase()),
            esc(&humantime::format_duration(c.delay).to_string()),
            esc(&c.template),
            esc(c.strategy.as_str()),
            if c.enabled { "enabled" } else { "disabled" }
        );
    }
    body.push_str("</table><h2>Recent orders</h2>");
    match s.engine.store.recent_orders(20).await {
        Ok(orders) if orders.is_empty() => body.push_str("<p>No orders yet.</p>"),
        Ok(orders) => {
            body.push_str("<table><tr><th>order</th><th>customer</th><th>status</th><th>total</th><th>preview</th></tr>");
            for o in &orders {
                let links: Vec<String> = settings
                    .campaigns
                    .iter()
                    .map(|c| {
                        format!(
                            "<a href=\"/preview/{}/{}\">{}</a>",
                            esc(&path_segment(c.name.as_str())),
                            esc(&path_segment(o.id.as_str())),
                            esc(c.name.as_str())
                        )
                    })
                    .collect();
                let _ = write!(
                    body,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{} {}</td><td>{}</td></tr>",
                    esc(o.id.as_str()),
                    esc(o.customer_id.as_str()),
                    esc(o.status.as_str()),
                    esc(&o.total.decimal()),
                    esc(&o.currency),
                    links.join(" · ")
                );
            }
            body.push_str("</table>");
        }
        Err(e) => {
            tracing::error!(error = %e, "preview: cannot list orders");
            let _ = write!(
                body,
                "<p class=\"problem\">cannot list orders: {}</p>",
                esc(&e.to_string())
            );
        }
    }
    signed_in(&s, auth, page(StatusCode::OK, "Email previews", &body))
}

/// One email as the shopper would get it now. Templates are read fresh from disk so an
/// editor sees the edit they just saved (or its FILE:LINE:COLUMN problem).
pub(crate) async fn preview_email(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path((campaign, order_id)): Path<(String, String)>,
    Query(q): Query<TokenQuery>,
) -> Response {
    let Some(auth) = preview_auth(&s, &headers, q.token.as_deref()) else {
        return unauthorized();
    };
    let not_found = |what: String| {
        page(
            StatusCode::NOT_FOUND,
            "Not found",
            &format!("<h1>Not found</h1><p>{}</p>", esc(&what)),
        )
    };
    let Some(c) = s.engine.settings.campaign(&campaign).cloned() else {
        return not_found(format!("no campaign named {campaign:?}"));
    };
    let order = match s.engine.store.order(&order_id).await {
        Ok(Some(o)) => o,
        Ok(None) => return not_found(format!("no order {order_id:?}")),
        Err(e) => return server_error(&e.to_string()),
    };
    match s.engine.store.customer(order.customer_id.as_str()).await {
        Ok(Some(_)) => {}
        Ok(None) => return not_found(format!("order {order_id} has no known customer")),
        Err(e) => return server_error(&e.to_string()),
    }

    let dir = s.engine.settings.templates_dir.clone();
    let loaded = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || Templates::load_or_embedded(&dir)).await
    };
    let templates = match loaded {
        Ok(Ok(t)) => t,
        Ok(Err(problems)) => {
            let list: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
            return template_problem(&c.name.to_string(), &list);
        }
        Err(e) => return server_error(&e.to_string()),
    };
    let mut engine = s.engine.clone();
    engine.templates = LiveTemplates::new(&dir, templates);
    let p = match engine.preview(&order_id, &c).await {
        Ok(p) => p,
        Err(problem) => return template_problem(&c.name.to_string(), &[problem]),
    };

    let mut body = String::new();
    let _ = write!(
        body,
        "<p><a href=\"/preview\">← all previews</a></p><h1>{}</h1>\
<table><tr><th>Campaign</th><td>{}</td></tr><tr><th>Order</th><td>{}</td></tr>\
<tr><th>To</th><td>{}</td></tr><tr><th>Subject</th><td><strong>{}</strong></td></tr>",
        esc(&p.email.subject),
        esc(c.name.as_str()),
        esc(&order_id),
        esc(&p.email.to),
        esc(&p.email.subject),
    );
    if let Some(pre) = &p.rendered.preheader {
        let _ = write!(body, "<tr><th>Preheader</th><td>{}</td></tr>", esc(pre));
    }
    let unsubscribe = engine.unsubscribe_url(order.customer_id.as_str());
    let _ = write!(
        body,
        "<tr><th>Unsubscribe</th><td><a href=\"{0}\">{0}</a></td></tr>\
<tr><th>Postal address</th><td>{1}</td></tr></table>",
        esc(&unsubscribe),
        esc(&engine.settings.store.postal_address)
    );
    body.push_str("<h2>Picks</h2>");
    if p.picks.is_empty() {
        body.push_str("<p>Nothing to recommend: this follow-up would be skipped.</p>");
    } else {
        body.push_str("<ol class=\"picks\">");
        for pick in &p.picks {
            let _ = write!(
                body,
                "<li><strong>{}</strong> ({}) — {}</li>",
                esc(&pick.title),
                esc(&pick.price.decimal()),
                esc(&pick.reason)
            );
        }
        body.push_str("</ol>");
    }
    let _ = write!(
        body,
        "<h2>HTML</h2><input type=\"radio\" name=\"width\" id=\"desktop\" checked>\
<label for=\"desktop\">Desktop</label> <input type=\"radio\" name=\"width\" id=\"mobile\">\
<label for=\"mobile\">Mobile (375px)</label>\
<iframe sandbox title=\"email\" srcdoc=\"{}\"></iframe><h2>Text</h2><pre>{}</pre>",
        esc(&p.rendered.html),
        esc(&p.rendered.text)
    );
    signed_in(&s, auth, page(StatusCode::OK, &p.email.subject, &body))
}

fn template_problem(campaign: &str, problems: &[String]) -> Response {
    let mut body = format!(
        "<h1>Cannot render {}</h1><p>Fix the template and reload this page:</p><ul>",
        esc(campaign)
    );
    for p in problems {
        let _ = write!(body, "<li class=\"problem\"><code>{}</code></li>", esc(p));
    }
    body.push_str("</ul>");
    page(StatusCode::INTERNAL_SERVER_ERROR, "Template problem", &body)
}

fn server_error(e: &str) -> Response {
    tracing::error!(error = %e, "preview failed");
    page(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Error",
        "<h1>Something went wrong</h1><p>See the server log.</p>",
    )
}
