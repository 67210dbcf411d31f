//! `/healthz` and `/metrics` (Prometheus text exposition 0.0.4), read from the database
//! on each scrape so every process reports the same truth. The follow-up counts are
//! kept by the ledger's triggers, so a scrape costs a few rows whatever the ledger's size.

use super::{ApiError, AppState};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::fmt::Write as _;

/// 200 `ok` when the database takes a write now; else 503 with the reason as JSON. A
/// database that still reads but cannot write (a locked or read-only file, a full disk)
/// would lose every webhook and API call, so it counts as down.
pub(crate) async fn healthz(State(s): State<AppState>) -> Response {
    match s.engine.store.check_writable(s.engine.clock.now()).await {
        Ok(()) => (StatusCode::OK, "ok").into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "health check failed");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("database cannot be written: {e}"),
            )
            .into_response()
        }
    }
}

pub(crate) async fn metrics(
    State(s): State<AppState>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    super::auth::metrics_allowed(&s, &headers)?;
    let mut m = s
        .engine
        .store
        .metrics(s.engine.clock.now())
        .await
        .map_err(ApiError::internal)?;
    // Every skip reason is a series from the start (0), as Prometheus expects.
    for r in crate::domain::SkipReason::ALL {
        m.skipped_by_reason
            .entry(r.as_str().to_owned())
            .or_insert(0);
    }

    // Families are written one after the other: HELP, TYPE, then the samples.
    let mut out = String::new();
    write_family(
        &mut out,
        "aftercart_followups",
        "gauge",
        "Follow-ups by state.",
        m.followups
            .iter()
            .map(|(k, v)| (format!("{{state=\"{}\"}}", label(k)), v.to_string())),
    );
    write_family(
        &mut out,
        "aftercart_followups_skipped",
        "gauge",
        "Skipped follow-ups by reason.",
        m.skipped_by_reason
            .iter()
            .map(|(k, v)| (format!("{{reason=\"{}\"}}", label(k)), v.to_string())),
    );
    let sent = m.followups.get("sent").copied().unwrap_or(0);
    write_family(
        &mut out,
        "aftercart_sends_total",
        "counter",
        "Emails sent (follow-ups in state sent).",
        [(String::new(), sent.to_string())],
    );
    write_family(
        &mut out,
        "aftercart_smtp_errors_total",
        "counter",
        "Follow-ups whose last SMTP attempt failed, by class.",
        m.smtp_errors
            .iter()
            .map(|(k, v)| (format!("{{class=\"{}\"}}", label(k)), v.to_string())),
    );
    write_family(
        &mut out,
        "aftercart_queue_depth",
        "gauge",
        "Follow-ups due now and not yet claimed.",
        [(String::new(), m.queue_depth.to_string())],
    );
    let name = "aftercart_job_latency_seconds";
    let mut samples: Vec<(String, String)> = m
        .latency_buckets
        .iter()
        .map(|(le, n)| (format!("_bucket{{le=\"{le}\"}}"), n.to_string()))
        .collect();
    samples.push(("_bucket{le=\"+Inf\"}".into(), m.latency_count.to_string()));
    samples.push((
        "_sum".into(),
        format!("{}", m.latency_sum_ms as f64 / 1000.0),
    ));
    samples.push(("_count".into(), m.latency_count.to_string()));
    write_family(
        &mut out,
        name,
        "histogram",
        "Delay from a follow-up's due time to its sending.",
        samples,
    );
    // Tracked links (docs/marketing.md): every hit by how it was classified, and the
    // orders the clicks earned.
    let hits = s
        .engine
        .store
        .hit_counts()
        .await
        .map_err(ApiError::internal)?;
    let count = |kind: &str| hits.iter().find(|(k, _)| k == kind).map_or(0, |(_, n)| *n);
    write_family(
        &mut out,
        "aftercart_clicks_total",
        "counter",
        "Hits on tracked links and the open pixel, by kind (only click and open count in the report).",
        ["click", "open", "prefetch", "duplicate"]
            .into_iter()
            .map(|k| (format!("{{kind=\"{k}\"}}"), count(k).to_string())),
    );
    let (orders, revenue) =
        crate::jobs::attributed_totals(&s.engine.store, &s.engine.settings, s.engine.clock.now())
            .await
            .map_err(ApiError::internal)?;
    let currency = label(&s.engine.settings.store.currency);
    write_family(
        &mut out,
        "aftercart_attributed_orders_total",
        "counter",
        "Paid orders attributed to a clicked follow-up (last click within attribution.click_window).",
        [(String::new(), orders.to_string())],
    );
    write_family(
        &mut out,
        "aftercart_attributed_revenue_total",
        "counter",
        "Revenue of the attributed orders, in the store currency (drops when one is refunded).",
        [(format!("{{currency=\"{currency}\"}}"), revenue.decimal())],
    );
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out))
}

fn write_family(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    samples: impl IntoIterator<Item = (String, String)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (suffix, value) in samples {
        let _ = writeln!(out, "{name}{suffix} {value}");
    }
}

/// A label value with `\`, `"` and newlines escaped as the format requires.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
