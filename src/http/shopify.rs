//! `POST /webhooks/shopify/orders`: Shopify's order webhooks, authenticated by
//! `X-Shopify-Hmac-Sha256` (checked in `limits::shopify_signed`) and mapped onto our customer and order records, which are
//! then stored by the same code as an import.
//!
//! Idempotence: a delivery id (`X-Shopify-Webhook-Id`) seen before answers 200 and
//! changes nothing; a new delivery of a state the order already has rewrites the same
//! values (existing times are kept), and the ledger's unique (order, campaign) means
//! one follow-up whatever repeats.
//!
//! Order of events: deliveries arrive out of order and may be replayed under another
//! topic (the HMAC covers the body, not the topic header). So the topic must agree with
//! the body (`check_topic`), the body's `updated_at` (else `cancelled_at`) is the
//! order's version and an event older than the stored one changes nothing, and the
//! store only moves states forward (cancelled and refunded are final).

use super::{ApiError, AppState};
use crate::domain::{
    Customer, FieldError, Order, OrderStatus, ProductId, Timestamp, json_kind, parse_rfc3339,
};
use crate::import::{Batch, Kind, ParseContext};
use crate::store::{Kept, KeptWhy};
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use std::collections::HashSet;

#[cfg(test)]
mod proptests;
mod topics;

/// `POST /webhooks/shopify`: every topic at one URL, `X-Shopify-Topic` decides. Order
/// topics go the way of `/webhooks/shopify/orders`; a topic we do not handle answers 200
/// (`ignored`) so Shopify does not retry it.
pub(crate) async fn webhook(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let topic = headers
        .get("x-shopify-topic")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let Some(topic) = topic else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "missing X-Shopify-Topic",
        ));
    };
    if topic.starts_with("orders/") {
        return orders(State(s), headers, body).await;
    }
    let known = [
        "products/create",
        "products/update",
        "customers/update",
        "customers/redact",
        "customers/data_request",
        "inventory_levels/update",
    ];
    if !known.contains(&topic.as_str()) {
        return Ok((StatusCode::OK, Json(json!({ "ignored": topic }))));
    }
    let payload: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("invalid JSON: {e}")))?;
    match topic.as_str() {
        "products/create" | "products/update" => topics::product(&s, &headers, &payload).await,
        "customers/update" => topics::customer_update(&s, &headers, &payload).await,
        "customers/redact" => topics::redact(&s, &headers, &payload).await,
        "inventory_levels/update" => topics::inventory_level(&s, &headers, &payload).await,
        _ => topics::data_request(&s, &headers, &payload).await,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Topic {
    Paid,
    Fulfilled,
    Cancelled,
}

impl Topic {
    fn as_str(self) -> &'static str {
        match self {
            Topic::Paid => "orders/paid",
            Topic::Fulfilled => "orders/fulfilled",
            Topic::Cancelled => "orders/cancelled",
        }
    }
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
    let order_id = shopify_id(payload.get("id"), "id").map_err(field_error)?;
    let existing = store.order(&order_id).await.map_err(ApiError::internal)?;
    let Mapped { customer, order } =
        map_order(&payload, topic, now, existing.as_ref(), &ctx.product_ids)
            .map_err(field_error)?;
    let requested = order.status;
    let answer = |status: OrderStatus, scheduled: u64, cancelled: u64, kept: &[Kept]| {
        let warnings: Vec<Value> = kept
            .iter()
            .map(|k| json!({"field": k.field(), "why": k.why()}))
            .collect();
        Ok((
            StatusCode::OK,
            Json(json!({
                "order_id": order_id,
                "status": status.as_str(),
                "scheduled": scheduled,
                "cancelled": cancelled,
                "warnings": warnings,
            })),
        ))
    };
    // An event older than the stored order changes nothing, its customer data included.
    if let Some(e) = &existing
        && let (Some(stored), Some(at)) = (e.updated_at, order.updated_at)
        && at < stored
    {
        let kept = Kept {
            index: 0,
            order_id: order.id.clone(),
            why: KeptWhy::Stale { updated_at: at },
        };
        return answer(e.status, 0, 0, &[kept]);
    }

    if let Some(id) = header("x-shopify-webhook-id")
        && !store
            .first_delivery(id, now)
            .await
            .map_err(ApiError::internal)?
    {
        return Ok((StatusCode::OK, Json(json!({ "duplicate": true }))));
    }
    let stored = async {
        Batch::Customers(vec![customer])
            .store(store, &s.rules, now)
            .await?;
        Batch::Orders(vec![order]).store(store, &s.rules, now).await
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
    let status = match outcome.kept.first().map(|k| k.why) {
        Some(KeptWhy::Backwards { stored, .. }) => stored,
        Some(KeptWhy::Stale { .. }) => existing.map_or(requested, |e| e.status),
        None => requested,
    };
    if !outcome.kept.is_empty() {
        tracing::info!(order = %order_id, topic = topic.as_str(), "webhook kept the stored order status");
    }
    answer(status, outcome.scheduled, outcome.cancelled, &outcome.kept)
}

fn field_error(e: FieldError) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        format!("{}: {}", e.field, e.why),
    )
    .with("field", e.field)
    .with("why", e.why)
}

/// A Shopify id: a positive integer, sent as a JSON number without fraction or exponent
/// or as a string of digits. Ours is its decimal text, so `7` and `"007"` are one id.
fn shopify_id(v: Option<&Value>, field: &str) -> Result<String, FieldError> {
    let n = match v {
        None | Some(Value::Null) => return Err(FieldError::new(field, "missing")),
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse::<u64>().ok()
        }
        Some(_) => None,
    };
    match (n, v) {
        (Some(n), _) if n > 0 => Ok(n.to_string()),
        (_, Some(v)) => Err(FieldError::new(
            field,
            format!(
                "must be a positive integer (a JSON number without fraction or exponent, or a string of digits), got {}",
                json_kind(v)
            ),
        )),
        (_, None) => Err(FieldError::new(field, "missing")),
    }
}

fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// An optional time of the payload: absent, null or "" is None; else an RFC 3339 string.
fn opt_time(v: &Value, key: &str) -> Result<Option<Timestamp>, FieldError> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => parse_rfc3339(s)
            .map(Some)
            .map_err(|why| FieldError::new(key, why)),
        Some(other) => Err(FieldError::new(
            key,
            format!("must be an RFC 3339 string, got {}", json_kind(other)),
        )),
    }
}

/// The topic header is not signed: the body must say what the topic claims, so a
/// captured `orders/paid` body cannot be replayed as a cancel (or a cancelled body as
/// a payment). Values as in Shopify's order payload (`financial_status`,
/// `fulfillment_status`, `fulfillments[].status`).
fn check_topic(v: &Value, topic: Topic) -> Result<(), FieldError> {
    let cancelled = opt_time(v, "cancelled_at")?.is_some();
    let got = |key: &str| v.get(key).map_or("missing".to_owned(), json_kind);
    match topic {
        Topic::Cancelled if !cancelled => Err(FieldError::new(
            "cancelled_at",
            "missing: the body of an orders/cancelled delivery says when the order was cancelled",
        )),
        Topic::Cancelled => Ok(()),
        _ if cancelled => Err(FieldError::new(
            "cancelled_at",
            format!("is set: a cancelled order is not {}", topic.as_str()),
        )),
        Topic::Paid => {
            // A paid order later refunded in part is still a paid order.
            let paid = ["paid", "partially_paid", "partially_refunded"];
            match str_field(v, "financial_status") {
                Some(s) if paid.contains(&s) => Ok(()),
                _ => Err(FieldError::new(
                    "financial_status",
                    format!(
                        "must be paid, partially_paid or partially_refunded for orders/paid, got {}",
                        got("financial_status")
                    ),
                )),
            }
        }
        Topic::Fulfilled => {
            let shipped = || {
                v.get("fulfillments")
                    .and_then(Value::as_array)
                    .is_some_and(|f| f.iter().any(|f| str_field(f, "status") == Some("success")))
            };
            match v.get("fulfillment_status") {
                Some(Value::String(s)) if s == "fulfilled" => Ok(()),
                None if shipped() => Ok(()),
                _ => Err(FieldError::new(
                    "fulfillment_status",
                    format!(
                        "must be \"fulfilled\" for orders/fulfilled, got {}",
                        got("fulfillment_status")
                    ),
                )),
            }
        }
    }
}

/// A record field's error renamed to the payload field it came from.
fn payload_field(record_field: &str) -> String {
    if let Some(rest) = record_field.strip_prefix("items") {
        let rest = rest
            .replace(".unit_price", ".price")
            .replace(".product_id", "");
        return format!("line_items{rest}");
    }
    match record_field {
        "total" => "total_price",
        "completed_at" => "processed_at",
        "delivered_at" => "fulfillments",
        "customer_id" => "customer.id",
        other => other,
    }
    .to_owned()
}

/// One order webhook as our domain records.
#[derive(Debug)]
struct Mapped {
    customer: Customer,
    order: Order,
}

/// The Shopify order as our (customer, order) records: mapped onto the SPEC §3 shapes,
/// then parsed by the usual parsers. Errors name the payload's field.
fn map_order(
    v: &Value,
    topic: Topic,
    now: Timestamp,
    existing: Option<&Order>,
    catalog: &HashSet<ProductId>,
) -> Result<Mapped, FieldError> {
    if !v.is_object() {
        return Err(FieldError::new("(body)", "expected a JSON object"));
    }
    let id = shopify_id(v.get("id"), "id")?;
    check_topic(v, topic)?;
    let c = v.get("customer").filter(|c| c.is_object()).ok_or_else(|| {
        FieldError::new("customer", "missing (guest orders cannot be followed up)")
    })?;
    let customer_id = shopify_id(c.get("id"), "customer.id")?;
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
        if !line.is_object() {
            return Err(FieldError::new(
                format!("line_items[{i}]"),
                "must be an object",
            ));
        }
        // Custom items have no product (null); a present one must be a real id.
        let product_id = match line.get("product_id") {
            None | Some(Value::Null) => None,
            p => Some(shopify_id(p, &format!("line_items[{i}].product_id"))?),
        };
        let product = str_field(line, "sku")
            .and_then(|sku| ProductId::parse(sku).ok())
            .filter(|p| catalog.contains(p))
            .or_else(|| {
                product_id
                    .and_then(|p| ProductId::parse(&p).ok())
                    .filter(|p| catalog.contains(p))
            })
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

    let stamp = |t: Option<Timestamp>| t.map(|t| t.rfc3339());
    let created = opt_time(v, "created_at")?;
    let processed = opt_time(v, "processed_at")?;
    // The order's version; a cancel without `updated_at` is as new as its cancellation.
    let version = opt_time(v, "updated_at")?.or(opt_time(v, "cancelled_at")?);
    // Existing times win: a retried or late delivery must not move a due date.
    let mut completed_at = existing.and_then(|o| o.completed_at).or(processed);
    let mut delivered_at = existing.and_then(|o| o.delivered_at);
    let status = match topic {
        Topic::Paid => {
            completed_at.get_or_insert(now);
            OrderStatus::Completed
        }
        Topic::Fulfilled => {
            let fulfilled = v
                .get("fulfillments")
                .and_then(Value::as_array)
                .and_then(|f| {
                    f.iter()
                        .filter_map(|f| str_field(f, "created_at"))
                        .filter_map(|t| parse_rfc3339(t).ok())
                        .max()
                });
            delivered_at = delivered_at.or(fulfilled).or(Some(now));
            OrderStatus::Delivered
        }
        Topic::Cancelled => OrderStatus::Cancelled,
    };
    let order = json!({
        "id": id,
        "customer_id": customer["id"],
        "status": status.as_str(),
        "created_at": stamp(created.or(existing.map(|o| o.created_at)).or(Some(now))),
        "completed_at": stamp(completed_at),
        "delivered_at": stamp(delivered_at),
        "updated_at": stamp(version),
        "items": items,
        "total": v.get("total_price").cloned().unwrap_or(Value::Null),
        "currency": v.get("currency").cloned().unwrap_or(Value::Null),
    });
    let rename = |e: FieldError| FieldError::new(payload_field(&e.field), e.why);
    Ok(Mapped {
        customer: Customer::from_json(&customer)
            .map_err(|e| FieldError::new(format!("customer.{}", e.field), e.why))?,
        order: Order::from_json(&order, |p| catalog.contains(p)).map_err(rename)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paid_body() -> Value {
        json!({
            "id": 820982911946154508u64, "created_at": "2024-06-01T10:00:00-04:00",
            "processed_at": "2024-06-01T10:05:00-04:00", "updated_at": "2024-06-01T10:05:01-04:00",
            "financial_status": "paid", "fulfillment_status": null, "cancelled_at": null,
            "total_price": "769.00", "currency": "USD",
            "customer": {"id": 115310627314723954u64, "email": "a@b.example", "first_name": "Ada", "last_name": "L",
                         "email_marketing_consent": {"state": "subscribed"}},
            "line_items": [{"sku": "P00001", "product_id": 1, "quantity": 1, "price": "769.00"}]
        })
    }

    fn catalog() -> HashSet<ProductId> {
        [ProductId::parse("P00001").unwrap()].into()
    }

    #[test]
    fn maps_a_paid_order() {
        let v = paid_body();
        let m = map_order(&v, Topic::Paid, Timestamp(0), None, &catalog()).unwrap();
        assert_eq!(m.customer.id.as_str(), "115310627314723954");
        assert!(m.customer.marketing_consent);
        assert_eq!(m.order.id.as_str(), "820982911946154508");
        assert_eq!(m.order.status, OrderStatus::Completed);
        assert_eq!(
            m.order.completed_at,
            Some(parse_rfc3339("2024-06-01T10:05:00-04:00").unwrap())
        );
        assert_eq!(
            m.order.updated_at,
            Some(parse_rfc3339("2024-06-01T10:05:01-04:00").unwrap())
        );
        assert_eq!(m.order.items[0].product_id.as_str(), "P00001");
        let mut bad = v.clone();
        bad["line_items"][0]["sku"] = json!("nope");
        let e = map_order(&bad, Topic::Paid, Timestamp(0), None, &catalog()).unwrap_err();
        assert_eq!(e.field, "line_items[0]");
        // Record errors name the payload's field, not ours.
        let mut bad = v.clone();
        bad["line_items"][0]["price"] = json!(769);
        let e = map_order(&bad, Topic::Paid, Timestamp(0), None, &catalog()).unwrap_err();
        assert_eq!(e.field, "line_items[0].price");
        bad = v.clone();
        bad["total_price"] = json!("-1");
        let e = map_order(&bad, Topic::Paid, Timestamp(0), None, &catalog()).unwrap_err();
        assert_eq!(e.field, "total_price");
    }

    #[test]
    fn ids_are_positive_integers() {
        for (raw, want) in [
            (json!(5), Some("5")),
            (json!("820982911946154508"), Some("820982911946154508")),
            (json!("007"), Some("7")),
            (json!(u64::MAX), Some("18446744073709551615")),
            (json!(0), None),
            (json!(-5), None),
            (json!(1.5), None),
            (json!(1.5e20), None),
            (json!(5.0), None),
            (json!("-5"), None),
            (json!("1e3"), None),
            (json!(" 5"), None),
            (json!(""), None),
            (json!("99999999999999999999999"), None),
            (json!(true), None),
            (json!([5]), None),
        ] {
            let got = shopify_id(Some(&raw), "id");
            assert_eq!(got.as_deref().ok(), want, "{raw}");
            if let Err(e) = got {
                assert_eq!(e.field, "id");
            }
        }
        let e = shopify_id(None, "customer.id").unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.why.as_str()),
            ("customer.id", "missing")
        );
    }

    #[test]
    fn the_topic_must_agree_with_the_body() {
        let paid = paid_body();
        let e = map_order(&paid, Topic::Cancelled, Timestamp(0), None, &catalog()).unwrap_err();
        assert_eq!(e.field, "cancelled_at");
        let e = map_order(&paid, Topic::Fulfilled, Timestamp(0), None, &catalog()).unwrap_err();
        assert_eq!(e.field, "fulfillment_status");
        let mut cancelled = paid.clone();
        cancelled["cancelled_at"] = json!("2024-06-02T09:00:00Z");
        cancelled["financial_status"] = json!("refunded");
        let m = map_order(&cancelled, Topic::Cancelled, Timestamp(0), None, &catalog()).unwrap();
        assert_eq!(m.order.status, OrderStatus::Cancelled);
        cancelled["financial_status"] = json!("paid");
        let e = map_order(&cancelled, Topic::Paid, Timestamp(0), None, &catalog()).unwrap_err();
        assert_eq!(e.field, "cancelled_at");
        let mut pending = paid.clone();
        pending["financial_status"] = json!("pending");
        let e = map_order(&pending, Topic::Paid, Timestamp(0), None, &catalog()).unwrap_err();
        assert_eq!(e.field, "financial_status");
        let mut shipped = paid.clone();
        shipped["fulfillment_status"] = json!("fulfilled");
        shipped["fulfillments"] =
            json!([{"status": "success", "created_at": "2024-06-03T08:00:00Z"}]);
        let m = map_order(&shipped, Topic::Fulfilled, Timestamp(0), None, &catalog()).unwrap();
        assert_eq!(m.order.status, OrderStatus::Delivered);
        assert_eq!(
            m.order.delivered_at,
            Some(parse_rfc3339("2024-06-03T08:00:00Z").unwrap())
        );
        shipped["fulfillment_status"] = json!("partial");
        let e = map_order(&shipped, Topic::Fulfilled, Timestamp(0), None, &catalog()).unwrap_err();
        assert_eq!(e.field, "fulfillment_status");
    }
}
