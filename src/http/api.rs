//! `/v1/*`: records in (the same parsers and upserts as `import`) and campaign triggers
//! (the same code as `aftercart campaign trigger`).
//!
//! A batch is all-or-nothing: every record is validated before anything is stored, so a
//! client that gets a 422 can fix the named record and resend the whole batch.

use super::{ApiError, AppState};
use crate::domain::{FieldError, ProductId, parse_duration};
use crate::import::{Batch, Kind, ParseContext};
use crate::jobs::{TriggerError, trigger, trigger_with_id};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{Value, json};

type Reply = Result<(StatusCode, Json<Value>), ApiError>;

pub(crate) async fn orders(State(s): State<AppState>, body: Bytes) -> Reply {
    ingest(&s, Kind::Orders, &body).await
}
pub(crate) async fn customers(State(s): State<AppState>, body: Bytes) -> Reply {
    ingest(&s, Kind::Customers, &body).await
}
pub(crate) async fn products(State(s): State<AppState>, body: Bytes) -> Reply {
    ingest(&s, Kind::Products, &body).await
}
pub(crate) async fn events(State(s): State<AppState>, body: Bytes) -> Reply {
    ingest(&s, Kind::Events, &body).await
}

/// The body as a list of records: one object or an array of them.
pub(crate) fn records(body: &[u8]) -> Result<Vec<Value>, ApiError> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| bad_body(format!("invalid JSON: {e}")))?;
    match v {
        Value::Array(items) => Ok(items),
        o @ Value::Object(_) => Ok(vec![o]),
        _ => Err(bad_body("expected a JSON object or an array of objects")),
    }
}

/// A 400 for a body that is not records at all: its one problem is named in `errors`
/// too (`index` null, `field` "(body)"), so clients read every error answer alike.
fn bad_body(why: impl Into<String>) -> ApiError {
    let why: String = why.into();
    ApiError::new(StatusCode::BAD_REQUEST, &why)
        .with("field", "(body)")
        .with("why", why.clone())
        .with(
            "errors",
            json!([{"index": Value::Null, "field": "(body)", "why": why}]),
        )
}

/// Validates every record, then stores them all (and schedules follow-ups for orders).
async fn ingest(s: &AppState, kind: Kind, body: &[u8]) -> Reply {
    let items = records(body)?;
    let store = &s.engine.store;
    let ctx = ParseContext::load(store, kind)
        .await
        .map_err(ApiError::internal)?;
    let mut batch = Batch::new(kind);
    // Every problem of every rejected record, in record order.
    let mut errors: Vec<(usize, FieldError)> = Vec::new();
    for (i, v) in items.iter().enumerate() {
        if let Err(es) = batch.push_all(v, &ctx) {
            errors.extend(es.into_iter().map(|e| (i, e)));
        }
    }
    if let Some((i, e)) = errors.first() {
        let list: Vec<Value> = errors
            .iter()
            .map(|(i, e)| json!({"index": i, "field": e.field, "why": e.why}))
            .collect();
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("{}[{i}].{}: {}", kind.as_str(), e.field, e.why),
        )
        .with("index", *i)
        .with("field", e.field.clone())
        .with("why", e.why.clone())
        .with("errors", list));
    }
    let outcome = batch
        .store(store, &s.rules, s.engine.clock.now())
        .await
        .map_err(ApiError::internal)?;
    // Records the order lifecycle refused (stored further along or newer) are stored
    // as far as allowed and named here; they are not errors.
    let warnings: Vec<Value> = outcome
        .kept
        .iter()
        .map(|k| json!({"index": k.index, "field": k.field(), "why": k.why()}))
        .collect();
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "stored": items.len(),
            "scheduled": outcome.scheduled,
            "cancelled": outcome.cancelled,
            "warnings": warnings,
        })),
    ))
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TriggerBody {
    bought: Option<String>,
    since: Option<String>,
    #[serde(default)]
    dry_run: bool,
    trigger_id: Option<String>,
}

/// `POST /v1/campaigns/{name}/trigger`: 202 when follow-ups were scheduled, 200 for a
/// dry run or a repeat (nothing new), 404 for an unknown campaign, 422 for a bad field.
pub(crate) async fn trigger_campaign(
    State(s): State<AppState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Reply {
    let unprocessable = |field: &str, why: String| {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, format!("{field}: {why}"))
            .with("field", field)
            .with("why", why)
    };
    let req: TriggerBody = if body.iter().all(u8::is_ascii_whitespace) {
        TriggerBody::default()
    } else {
        let de = &mut serde_json::Deserializer::from_slice(&body);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if inner.is_data() {
                unprocessable(&path, inner.to_string())
            } else {
                ApiError::new(StatusCode::BAD_REQUEST, format!("invalid JSON: {inner}"))
            }
        })?
    };
    if s.engine.settings.campaign(&name).is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no campaign named {name:?}"),
        ));
    }
    let bought = req
        .bought
        .as_deref()
        .map(ProductId::parse)
        .transpose()
        .map_err(|why| unprocessable("bought", why))?;
    let since = parse_duration(req.since.as_deref().unwrap_or("30d"))
        .map_err(|why| unprocessable("since", why))?;
    let report = match req.trigger_id.as_deref() {
        Some(id) => {
            check_trigger_id(id).map_err(|why| unprocessable("trigger_id", why))?;
            trigger_with_id(&s.engine, &name, bought.as_ref(), since, req.dry_run, id).await
        }
        None => trigger(&s.engine, &name, bought.as_ref(), since, req.dry_run).await,
    }
    .map_err(|e| match e {
        TriggerError::UnknownCampaign(_) => ApiError::new(StatusCode::NOT_FOUND, e),
        TriggerError::Store(e) => ApiError::internal(e),
    })?;
    let status = if report.scheduled > 0 {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(json!(report))))
}

/// Trigger ids end up in the ledger's campaign column as `NAME#ID`: keep them short and
/// plain.
fn check_trigger_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{id:?} must be 1 to 64 characters of letters, digits, - _ . :"
        ))
    }
}
