//! The Shopify topics besides orders, delivered to `POST /webhooks/shopify` (the
//! `X-Shopify-Topic` header decides): catalog (`products/create`, `products/update`,
//! `inventory_levels/update`), consent (`customers/update`) and the mandatory privacy webhooks
//! (`customers/redact`, `customers/data_request`). Signed like the order webhook
//! (`limits::shopify_signed`); a delivery id seen before changes nothing.

use super::{field_error, opt_time, shopify_id, str_field};
use crate::domain::{
    CategoryPath, Customer, FieldError, MAX_TAG_CHARS, Product, ProductId, json_kind,
};
use crate::http::{ApiError, AppState};
use crate::store::{InventoryItem, InventoryLevel, LevelOutcome};
use axum::Json;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use std::collections::HashSet;

type Reply = Result<(StatusCode, Json<Value>), ApiError>;

/// Runs `apply` once per delivery id (`X-Shopify-Webhook-Id`): a repeat answers 200
/// `{"duplicate": true}`; a failure forgets the id so Shopify's retry is processed.
async fn once<F>(s: &AppState, headers: &HeaderMap, apply: F) -> Reply
where
    F: std::future::Future<Output = Reply>,
{
    let store = &s.engine.store;
    let id = headers
        .get("x-shopify-webhook-id")
        .and_then(|v| v.to_str().ok());
    if let Some(id) = id
        && !store
            .first_delivery(id, s.engine.clock.now())
            .await
            .map_err(ApiError::internal)?
    {
        return Ok((StatusCode::OK, Json(json!({ "duplicate": true }))));
    }
    let out = apply.await;
    if out.is_err()
        && let Some(id) = id
    {
        let _ = store.forget_delivery(id).await;
    }
    out
}

/// `products/create`, `products/update`: the catalog product is the one whose id equals
/// a variant's `sku`, else the product's `id` as a decimal string. Title, price (of the
/// matched variant, else the first), stock and status come from Shopify; the fields it
/// does not know (category, compatible_with, url…) are kept when the product exists.
pub(super) async fn product(s: &AppState, headers: &HeaderMap, v: &Value) -> Reply {
    let store = &s.engine.store;
    let catalog = store.product_ids().await.map_err(ApiError::internal)?;
    let mapped =
        map_product(v, &catalog, &s.engine.settings.store.currency).map_err(field_error)?;
    let existing = store
        .product(mapped.id.as_str())
        .await
        .map_err(ApiError::internal)?;
    let product = match existing {
        Some(old) => Product {
            id: old.id,
            title: mapped.title,
            price: mapped.price,
            in_stock: mapped.in_stock,
            image_url: mapped.image_url.or(old.image_url),
            url: old.url,
            currency: old.currency,
            category: old.category.or(mapped.category),
            brand: old.brand.or(mapped.brand),
            compatible_with: old.compatible_with,
            tags: if old.tags.is_empty() {
                mapped.tags
            } else {
                old.tags
            },
        },
        None => mapped,
    };
    let answer = json!({"product_id": product.id, "in_stock": product.in_stock, "price": product.price.decimal()});
    let items = inventory_items(v);
    let active = matches!(str_field(v, "status"), None | Some("active"));
    once(s, headers, async {
        store
            .upsert_products(std::slice::from_ref(&product))
            .await
            .map_err(ApiError::internal)?;
        store
            .record_inventory_items(
                product.id.as_str(),
                active,
                product.in_stock,
                &items,
                s.engine.clock.now(),
            )
            .await
            .map_err(ApiError::internal)?;
        // This process's model at once; other processes' on their next stock read.
        s.engine.model().set_in_stock(&product.id, product.in_stock);
        tracing::info!(product = %product.id, in_stock = product.in_stock, "Shopify product stored");
        Ok((StatusCode::OK, Json(answer)))
    })
    .await
}

/// The variants' inventory items, which `inventory_levels/update` names; a variant
/// without a valid `inventory_item_id` has none.
fn inventory_items(v: &Value) -> Vec<InventoryItem> {
    let Some(variants) = v.get("variants").and_then(Value::as_array) else {
        return Vec::new();
    };
    variants
        .iter()
        .filter_map(|x| {
            let id = shopify_id(x.get("inventory_item_id"), "inventory_item_id").ok()?;
            Some(InventoryItem {
                id,
                tracked: !untracked(x),
                quantity: x.get("inventory_quantity").and_then(Value::as_i64),
            })
        })
        .collect()
}

/// `inventory_levels/update`: one location's `available` for an inventory item. Mapped
/// to the product through the item ids of the last product delivery; an item we never
/// saw is ignored (200), a delivery older than the stored level (`updated_at`) changes
/// nothing.
pub(super) async fn inventory_level(s: &AppState, headers: &HeaderMap, v: &Value) -> Reply {
    let level = map_level(v).map_err(field_error)?;
    once(s, headers, async {
        let outcome = s
            .engine
            .store
            .record_inventory_level(&level, s.engine.clock.now())
            .await
            .map_err(ApiError::internal)?;
        let answer = match outcome {
            LevelOutcome::UnknownItem => {
                json!({"ignored": "unknown inventory_item_id", "inventory_item_id": level.item})
            }
            LevelOutcome::Stale => json!({"stale": true, "inventory_item_id": level.item}),
            LevelOutcome::Applied {
                product_id,
                in_stock,
            } => {
                if let Ok(id) = ProductId::parse(&product_id) {
                    s.engine.model().set_in_stock(&id, in_stock);
                }
                tracing::info!(product = %product_id, in_stock, "Shopify inventory level stored");
                json!({"product_id": product_id, "in_stock": in_stock})
            }
        };
        Ok((StatusCode::OK, Json(answer)))
    })
    .await
}

fn map_level(v: &Value) -> Result<InventoryLevel, FieldError> {
    if !v.is_object() {
        return Err(FieldError::new("(body)", "expected a JSON object"));
    }
    let item = shopify_id(v.get("inventory_item_id"), "inventory_item_id")?;
    let location = shopify_id(v.get("location_id"), "location_id")?;
    let available = match v.get("available") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) if n.as_i64().is_some() => n.as_i64(),
        Some(other) => {
            return Err(FieldError::new(
                "available",
                format!("must be an integer or null, got {}", json_kind(other)),
            ));
        }
    };
    let updated_at =
        opt_time(v, "updated_at")?.ok_or_else(|| FieldError::new("updated_at", "missing"))?;
    Ok(InventoryLevel {
        item,
        location,
        available,
        updated_at,
    })
}

/// `inventory_management` null or empty: Shopify does not count this variant's stock.
fn untracked(v: &Value) -> bool {
    match v.get("inventory_management") {
        Some(Value::Null) => true,
        Some(Value::String(s)) => s.is_empty(),
        _ => false,
    }
}

/// A variant is in stock when its `inventory_quantity` is above 0, or when its
/// inventory is not tracked (`inventory_management` null or empty, or no
/// `inventory_quantity` at all).
fn variant_in_stock(v: &Value) -> bool {
    let quantity = v.get("inventory_quantity").and_then(Value::as_i64);
    untracked(v) || quantity.is_none_or(|q| q > 0)
}

/// The Shopify product payload as our product record (parsed by the usual parser).
fn map_product(
    v: &Value,
    catalog: &HashSet<ProductId>,
    currency: &str,
) -> Result<Product, FieldError> {
    if !v.is_object() {
        return Err(FieldError::new("(body)", "expected a JSON object"));
    }
    let shop_id = shopify_id(v.get("id"), "id")?;
    let variants: &[Value] = match v.get("variants") {
        None | Some(Value::Null) => &[],
        Some(Value::Array(a)) => a,
        Some(other) => {
            return Err(FieldError::new(
                "variants",
                format!("must be an array, got {}", json_kind(other)),
            ));
        }
    };
    let matched = variants.iter().find(|x| {
        str_field(x, "sku")
            .and_then(|sku| ProductId::parse(sku).ok())
            .is_some_and(|p| catalog.contains(&p))
    });
    let id = match matched.and_then(|x| str_field(x, "sku")) {
        Some(sku) => sku.to_owned(),
        None => shop_id,
    };
    let priced = matched
        .or(variants.first())
        .ok_or_else(|| FieldError::new("variants", "missing or empty: a product needs a price"))?;
    let price = priced.get("price").cloned().unwrap_or(Value::Null);
    // Draft and archived products are not for sale.
    let active = matches!(str_field(v, "status"), None | Some("active"));
    let in_stock = active && variants.iter().any(variant_in_stock);
    let image = v
        .pointer("/image/src")
        .or_else(|| v.pointer("/images/0/src"))
        .cloned();
    let category = str_field(v, "product_type").and_then(|t| CategoryPath::parse(t).ok());
    let tags: Vec<String> = str_field(v, "tags")
        .map(|t| {
            t.split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty() && t.chars().count() <= MAX_TAG_CHARS)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let record = json!({
        "id": id,
        "title": v.get("title").cloned().unwrap_or(Value::Null),
        "price": price,
        "currency": currency,
        "image_url": image,
        "brand": str_field(v, "vendor"),
        "in_stock": in_stock,
        "tags": tags,
    });
    let mut p = Product::from_json(&record).map_err(|e| {
        let field = match e.field.as_str() {
            "price" => {
                let i = variants
                    .iter()
                    .position(|x| std::ptr::eq(x, priced))
                    .unwrap_or(0);
                format!("variants[{i}].price")
            }
            "brand" => "vendor".to_owned(),
            "image_url" => "image.src".to_owned(),
            other => other.to_owned(),
        };
        FieldError::new(field, e.why)
    })?;
    p.category = category;
    Ok(p)
}

/// `customers/update`: email, name and consent (`email_marketing_consent.state ==
/// "subscribed"`); time zone and locale, which Shopify does not send, are kept. A
/// customer without an email we do not know yet is ignored (200): nobody to email.
pub(super) async fn customer_update(s: &AppState, headers: &HeaderMap, v: &Value) -> Reply {
    if !v.is_object() {
        return Err(field_error(FieldError::new(
            "(body)",
            "expected a JSON object",
        )));
    }
    let store = &s.engine.store;
    let id = shopify_id(v.get("id"), "id").map_err(field_error)?;
    let existing = store.customer(&id).await.map_err(ApiError::internal)?;
    let email = str_field(v, "email")
        .map(str::to_owned)
        .or_else(|| existing.as_ref().map(|c| c.customer.email.to_string()));
    let Some(email) = email.filter(|e| !e.is_empty()) else {
        return Ok((
            StatusCode::OK,
            Json(json!({"ignored": "customers/update", "why": "no email"})),
        ));
    };
    let name = [str_field(v, "first_name"), str_field(v, "last_name")]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ");
    let consent = v
        .pointer("/email_marketing_consent/state")
        .and_then(Value::as_str)
        == Some("subscribed");
    let old = existing.as_ref().map(|c| &c.customer);
    let record = json!({
        "id": id,
        "email": email,
        "name": (!name.is_empty()).then_some(name),
        "timezone": old.and_then(|c| c.timezone.clone()),
        "locale": old.and_then(|c| c.locale.clone()),
        "marketing_consent": consent,
    });
    let customer = Customer::from_json(&record).map_err(field_error)?;
    once(s, headers, async {
        store
            .upsert_customers(std::slice::from_ref(&customer))
            .await
            .map_err(ApiError::internal)?;
        Ok((
            StatusCode::OK,
            Json(json!({"customer_id": id, "marketing_consent": consent})),
        ))
    })
    .await
}

/// The customer a privacy webhook is about: `customer.id` (decimal) and, when given,
/// `customer.email`.
fn privacy_subject(v: &Value) -> Result<(String, Option<String>), FieldError> {
    let c = v
        .get("customer")
        .filter(|c| c.is_object())
        .ok_or_else(|| FieldError::new("customer", "missing or not an object"))?;
    let id = shopify_id(c.get("id"), "customer.id")?;
    Ok((id, str_field(c, "email").map(str::to_owned)))
}

/// `customers/redact`: `forget` for the customer's id and email. Answered 200 also when
/// we never knew them.
pub(super) async fn redact(s: &AppState, headers: &HeaderMap, v: &Value) -> Reply {
    let (id, email) = privacy_subject(v).map_err(field_error)?;
    let store = &s.engine.store;
    let now = s.engine.clock.now();
    once(s, headers, async {
        let mut done = store.forget(&id, now).await.map_err(ApiError::internal)?;
        if let Some(email) = &email {
            for f in store.forget(email, now).await.map_err(ApiError::internal)? {
                if !done.iter().any(|d| d.customer_id == f.customer_id) {
                    done.push(f);
                }
            }
        }
        let ids: Vec<&str> = done.iter().map(|f| f.customer_id.as_str()).collect();
        tracing::info!(customer = %id, forgotten = ?ids, "Shopify customers/redact: personal data erased");
        Ok((StatusCode::OK, Json(json!({"forgotten": ids}))))
    })
    .await
}

/// `customers/data_request`: recorded for the operator (who answers the customer with
/// `aftercart export-customer ID`) and logged; 200.
pub(super) async fn data_request(s: &AppState, headers: &HeaderMap, v: &Value) -> Reply {
    let (id, _) = privacy_subject(v).map_err(field_error)?;
    let request = match v.pointer("/data_request/id") {
        Some(r) => shopify_id(Some(r), "data_request.id").map_err(field_error)?,
        None => headers
            .get("x-shopify-webhook-id")
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
            .unwrap_or_else(|| format!("{id}@{}", s.engine.clock.now().0)),
    };
    let store = &s.engine.store;
    let now = s.engine.clock.now();
    once(s, headers, async {
        let known = store.customer(&id).await.map_err(ApiError::internal)?.is_some();
        let new = store
            .record_data_request(&format!("shopify:{request}"), &id, "shopify", now)
            .await
            .map_err(ApiError::internal)?;
        if new {
            tracing::warn!(
                customer = %id, request = %request, known,
                "Shopify customers/data_request: answer it with `aftercart export-customer {id}`"
            );
        }
        Ok((
            StatusCode::OK,
            Json(json!({"recorded": true, "customer_id": id, "known": known, "export": format!("aftercart export-customer {id}")})),
        ))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stock_comes_from_variants() {
        let tracked = |q: i64| json!({"inventory_management": "shopify", "inventory_quantity": q});
        assert!(!variant_in_stock(&tracked(0)));
        assert!(!variant_in_stock(&tracked(-3)));
        assert!(variant_in_stock(&tracked(2)));
        assert!(variant_in_stock(
            &json!({"inventory_management": null, "inventory_quantity": 0})
        ));
        assert!(variant_in_stock(&json!({"price": "1.00"})));
    }

    #[test]
    fn catalog_id_is_a_matching_sku_else_the_product_id() {
        let catalog: HashSet<ProductId> = [ProductId::parse("P00001").unwrap()].into();
        let body = json!({"id": 788032119674292922u64, "title": "Example T-Shirt", "status": "active",
            "variants": [{"sku": "example-shirt-s", "price": "19.99", "inventory_management": "shopify", "inventory_quantity": 0},
                         {"sku": "P00001", "price": "24.99", "inventory_management": "shopify", "inventory_quantity": 0}]});
        let p = map_product(&body, &catalog, "USD").unwrap();
        assert_eq!(
            (p.id.as_str(), p.price.decimal().as_str(), p.in_stock),
            ("P00001", "24.99", false)
        );
        let p = map_product(&body, &HashSet::new(), "USD").unwrap();
        assert_eq!(
            (p.id.as_str(), p.price.decimal().as_str()),
            ("788032119674292922", "19.99")
        );
        let mut draft = body.clone();
        draft["status"] = json!("draft");
        draft["variants"][0]["inventory_quantity"] = json!(5);
        assert!(!map_product(&draft, &catalog, "USD").unwrap().in_stock);
        draft["status"] = json!("active");
        assert!(map_product(&draft, &catalog, "USD").unwrap().in_stock);
        let mut bad = body;
        bad["variants"][1]["price"] = json!("cheap");
        assert_eq!(
            map_product(&bad, &catalog, "USD").unwrap_err().field,
            "variants[1].price"
        );
    }
}
