//! `POST /webhooks/shopify/orders`: Shopify's order webhooks, authenticated by
//! `X-Shopify-Hmac-Sha256` (checked in `limits::shopify_signed`) and mapped onto our customer and order records, which are
//! then stored by the same code as an import.
//!
//! Idempotence: a delivery id (`X-Shopify-Webhook-Id`) seen before answers 200 and
//! changes nothing; a new delivery of a state the order already has rewrites the same
//! values (existing times are kept), and the ledger's unique (order, campaign) means
//! one follow-up whatever repeats.

use super::{ApiError, AppState};
use crate::domain::{FieldError, Order, OrderStatus, ProductId, Timestamp};
use crate::import::{Batch, Kind, ParseContext};
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use std::collections::HashSet;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Topic {
    Paid,
    Fulfilled,
    Cancelled,
}

pub(crate) async fn orders(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    // The signature was checked on the bounded body by `limits::shopify_signed`.
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let topic = match header("x-shopify-topic") {
        Some("orders/paid") => Topic::Paid,
        Some("orders/fulfilled") => Topic::Fulfilled,
        Some("orders/cancelled") => Topic::Cancelled,
        // Answered 200 so Shopify does not retry a topic we deliberately ignore.
        Some(other) => return Ok((StatusCode::OK, Json(json!({ "ignored": other })))),
        None => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "missing X-Shopify-Topic",
            ));
        }
    };
    let payload: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("invalid JSON: {e}")))?;

    let store = &s.engine.store;
    let now = s.engine.clock.now();
    let ctx = ParseContext::load(store, Kind::Orders)
        .await
        .map_err(ApiError::internal)?;
    let order_id = id_string(payload.get("id"))
        .ok_or_else(|| field_error(FieldError::new("id", "missing or not an id")))?;
    let existing = store.order(&order_id).await.map_err(ApiError::internal)?;
    let (customer, order) = map_order(&payload, topic, now, existing.as_ref(), &ctx.product_ids)
        .map_err(field_error)?;
    // Validate both records before storing either.
    let mut customers = Batch::new(Kind::Customers);
    customers
        .push(&customer, &ctx)
        .map_err(|e| field_error(prefix("customer", e)))?;
    let mut orders = Batch::new(Kind::Orders);
    orders.push(&order, &ctx).map_err(field_error)?;

    if let Some(id) = header("x-shopify-webhook-id")
        && !store
            .first_delivery(id, now)
            .await
            .map_err(ApiError::internal)?
    {
        return Ok((StatusCode::OK, Json(json!({ "duplicate": true }))));
    }
    let stored = async {
        customers.store(store, &s.rules, now).await?;
        orders.store(store, &s.rules, now).await
    }
    .await;
    let outcome = match stored {
        Ok(o) => o,
        Err(e) => {
            // Forget the delivery so Shopify's retry is processed rather than dropped.
            if let Some(id) = header("x-shopify-webhook-id") {
                let _ = store.forget_delivery(id).await;
            }
            return Err(ApiError::internal(e));
        }
    };
    Ok((
        StatusCode::OK,
        Json(json!({
            "order_id": order_id,
            "status": order["status"],
            "scheduled": outcome.scheduled,
            "cancelled": outcome.cancelled,
        })),
    ))
}

fn field_error(e: FieldError) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        format!("{}: {}", e.field, e.why),
    )
    .with("field", e.field)
    .with("why", e.why)
}

fn prefix(p: &str, e: FieldError) -> FieldError {
    FieldError::new(format!("{p}.{}", e.field), e.why)
}

/// Shopify ids are JSON numbers (sometimes strings); ours are their decimal text.
fn id_string(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        _ => None,
    }
}

fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// The Shopify order as our (customer, order) JSON records (SPEC §3 shapes), which the
/// usual parsers then check.
fn map_order(
    v: &Value,
    topic: Topic,
    now: Timestamp,
    existing: Option<&Order>,
    catalog: &HashSet<ProductId>,
) -> Result<(Value, Value), FieldError> {
    let id = id_string(v.get("id")).ok_or_else(|| FieldError::new("id", "missing or not an id"))?;
    let c = v.get("customer").filter(|c| c.is_object()).ok_or_else(|| {
        FieldError::new("customer", "missing (guest orders cannot be followed up)")
    })?;
    let customer_id = id_string(c.get("id"))
        .ok_or_else(|| FieldError::new("customer.id", "missing or not an id"))?;
    let email = str_field(c, "email").or_else(|| str_field(v, "email"));
    let name = [str_field(c, "first_name"), str_field(c, "last_name")]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ");
    let consent = c
        .pointer("/email_marketing_consent/state")
        .and_then(Value::as_str)
        == Some("subscribed");
    let customer = json!({
        "id": customer_id,
        "email": email,
        "name": (!name.is_empty()).then_some(name),
        "marketing_consent": consent,
    });

    let lines = v
        .get("line_items")
        .and_then(Value::as_array)
        .ok_or_else(|| FieldError::new("line_items", "missing or not an array"))?;
    let mut items = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        let product = str_field(line, "sku")
            .and_then(|sku| ProductId::parse(sku).ok())
            .filter(|p| catalog.contains(p))
            .map(|p| p.to_string())
            .or_else(|| id_string(line.get("product_id")))
            .filter(|p| ProductId::parse(p).is_ok_and(|p| catalog.contains(&p)))
            .ok_or_else(|| {
                FieldError::new(
                    format!("line_items[{i}]"),
                    "no catalog product matches its sku or product_id",
                )
            })?;
        items.push(json!({
            "product_id": product,
            "quantity": line.get("quantity").cloned().unwrap_or(json!(1)),
            "unit_price": line.get("price").cloned().unwrap_or(Value::Null),
        }));
    }

    let time = |key: &str| str_field(v, key).map(str::to_owned);
    let keep = |t: Option<Timestamp>| t.map(|t| t.rfc3339());
    let processed = time("processed_at");
    // Existing times win: a retried or late delivery must not move a due date.
    let mut completed_at = keep(existing.and_then(|o| o.completed_at)).or(processed);
    let mut delivered_at = keep(existing.and_then(|o| o.delivered_at));
    let prior = existing.map(|o| o.status);
    let status = match topic {
        // A late `paid` never takes a delivered order back.
        Topic::Paid if prior == Some(OrderStatus::Delivered) => OrderStatus::Delivered,
        Topic::Paid => {
            completed_at.get_or_insert_with(|| now.rfc3339());
            OrderStatus::Completed
        }
        Topic::Fulfilled => {
            let fulfilled = v
                .get("fulfillments")
                .and_then(Value::as_array)
                .and_then(|f| f.iter().filter_map(|f| str_field(f, "created_at")).max())
                .map(str::to_owned);
            delivered_at = delivered_at.or(fulfilled).or_else(|| Some(now.rfc3339()));
            OrderStatus::Delivered
        }
        Topic::Cancelled => OrderStatus::Cancelled,
    };
    let order = json!({
        "id": id,
        "customer_id": customer["id"],
        "status": status.as_str(),
        "created_at": time("created_at").or_else(|| keep(existing.map(|o| o.created_at))).unwrap_or_else(|| now.rfc3339()),
        "completed_at": completed_at,
        "delivered_at": delivered_at,
        "items": items,
        "total": v.get("total_price").cloned().unwrap_or(Value::Null),
        "currency": v.get("currency").cloned().unwrap_or(Value::Null),
    });
    Ok((customer, order))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_a_paid_order() {
        let catalog: HashSet<ProductId> = [ProductId::parse("P00001").unwrap()].into();
        let v = json!({
            "id": 820982911946154508u64, "created_at": "2024-06-01T10:00:00-04:00",
            "processed_at": "2024-06-01T10:05:00-04:00", "total_price": "769.00", "currency": "USD",
            "customer": {"id": 115310627314723954u64, "email": "a@b.example", "first_name": "Ada", "last_name": "L",
                         "email_marketing_consent": {"state": "subscribed"}},
            "line_items": [{"sku": "P00001", "product_id": 1, "quantity": 1, "price": "769.00"}]
        });
        let (c, o) = map_order(&v, Topic::Paid, Timestamp(0), None, &catalog).unwrap();
        assert_eq!(c["id"], "115310627314723954");
        assert_eq!(c["marketing_consent"], true);
        assert_eq!(o["id"], "820982911946154508");
        assert_eq!(o["status"], "completed");
        assert_eq!(o["completed_at"], "2024-06-01T10:05:00-04:00");
        assert_eq!(o["items"][0]["product_id"], "P00001");
        let mut bad = v.clone();
        bad["line_items"][0]["sku"] = json!("nope");
        let e = map_order(&bad, Topic::Paid, Timestamp(0), None, &catalog).unwrap_err();
        assert_eq!(e.field, "line_items[0]");
    }
}
