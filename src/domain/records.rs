//! The four record kinds of SPEC §3, parsed from a JSON object. CSV rows are turned into
//! a JSON object first (see `import`), so there is one parser per kind for JSON Lines,
//! CSV and the HTTP API alike.

use super::text::{
    MAX_LOCALE_CHARS, MAX_NAME_CHARS, MAX_TAG_CHARS, MAX_TITLE_CHARS, MAX_URL_CHARS, check_text,
};
use super::{CustomerId, EmailAddress, Money, OrderId, ProductId, Timestamp, parse_rfc3339, shown};
use serde_json::{Map, Value};
use std::fmt;

/// Why a record was refused: the field (dotted path, `items[0].quantity`) and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FieldError {
    pub field: String,
    pub why: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, why: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            why: why.into(),
        }
    }
    /// The error of the line as a whole (not JSON, not an object).
    pub fn line(why: impl Into<String>) -> Self {
        Self::new("(line)", why)
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.why)
    }
}

/// "Cameras > Mirrorless": the last segment is the leaf category.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct CategoryPath(String);

impl CategoryPath {
    pub fn parse(raw: &str) -> Result<Self, String> {
        check_text(raw, MAX_TITLE_CHARS, false)?;
        let parts: Vec<&str> = raw.split('>').map(str::trim).collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(format!("{} has an empty segment", shown(raw)));
        }
        Ok(Self(parts.join(" > ")))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn leaf(&self) -> &str {
        self.0.rsplit(" > ").next().unwrap_or(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Product {
    pub id: ProductId,
    pub title: String,
    pub url: Option<String>,
    pub image_url: Option<String>,
    pub price: Money,
    pub currency: String,
    pub category: Option<CategoryPath>,
    pub brand: Option<String>,
    pub in_stock: bool,
    pub compatible_with: Vec<ProductId>,
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Customer {
    pub id: CustomerId,
    pub email: EmailAddress,
    pub name: Option<String>,
    /// IANA name, checked against the tz database.
    pub timezone: Option<String>,
    pub locale: Option<String>,
    pub marketing_consent: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    Pending,
    Completed,
    Delivered,
    Cancelled,
    Refunded,
}

impl OrderStatus {
    pub fn parse(raw: &str) -> Result<Self, String> {
        Ok(match raw {
            "pending" => Self::Pending,
            "completed" => Self::Completed,
            "delivered" => Self::Delivered,
            "cancelled" => Self::Cancelled,
            "refunded" => Self::Refunded,
            _ => {
                return Err(format!(
                    "{} is not one of pending|completed|delivered|cancelled|refunded",
                    shown(raw)
                ));
            }
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Completed => "completed",
            Self::Delivered => "delivered",
            Self::Cancelled => "cancelled",
            Self::Refunded => "refunded",
        }
    }
    /// Cancelled and refunded orders schedule nothing and count for no history.
    pub fn is_void(self) -> bool {
        matches!(self, Self::Cancelled | Self::Refunded)
    }

    pub const ALL: [OrderStatus; 5] = [
        Self::Pending,
        Self::Completed,
        Self::Delivered,
        Self::Cancelled,
        Self::Refunded,
    ];

    /// The order lifecycle: states only move forward, pending → completed → delivered,
    /// and any of those may end cancelled or refunded; cancelled and refunded are final.
    /// Staying in the same state is always allowed (a repeat updates other fields).
    pub fn can_become(self, next: OrderStatus) -> bool {
        let step = |s: OrderStatus| match s {
            Self::Pending => 0,
            Self::Completed => 1,
            Self::Delivered => 2,
            Self::Cancelled | Self::Refunded => 3,
        };
        self == next || (!self.is_void() && step(next) >= step(self))
    }

    /// Every allowed move as `"from>to"`, the form the store checks stored rows against.
    pub fn moves() -> Vec<String> {
        Self::ALL
            .iter()
            .flat_map(|a| Self::ALL.iter().map(move |b| (*a, *b)))
            .filter(|(a, b)| a.can_become(*b))
            .map(|(a, b)| format!("{}>{}", a.as_str(), b.as_str()))
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OrderItem {
    pub product_id: ProductId,
    pub quantity: u32,
    pub unit_price: Money,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Order {
    pub id: OrderId,
    pub customer_id: CustomerId,
    pub status: OrderStatus,
    pub created_at: Timestamp,
    pub completed_at: Option<Timestamp>,
    pub delivered_at: Option<Timestamp>,
    pub items: Vec<OrderItem>,
    pub total: Money,
    pub currency: String,
    /// When the source (Shopify's `updated_at`) last changed the order: a record older
    /// than the stored one changes nothing, so late deliveries cannot undo newer ones.
    pub updated_at: Option<Timestamp>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    View,
    RecommendationImpression,
    AddToCart,
}

impl EventKind {
    pub fn parse(raw: &str) -> Result<Self, String> {
        Ok(match raw {
            "view" => Self::View,
            "recommendation_impression" => Self::RecommendationImpression,
            "add_to_cart" => Self::AddToCart,
            _ => {
                return Err(format!(
                    "{} is not one of view|recommendation_impression|add_to_cart",
                    shown(raw)
                ));
            }
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::View => "view",
            Self::RecommendationImpression => "recommendation_impression",
            Self::AddToCart => "add_to_cart",
        }
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Event {
    pub customer_id: CustomerId,
    pub product_id: ProductId,
    pub kind: EventKind,
    pub at: Timestamp,
}

type Obj = Map<String, Value>;

/// Reads the fields of one JSON object, naming the field in every error.
struct Fields<'a> {
    obj: &'a Obj,
}

impl<'a> Fields<'a> {
    fn of(v: &'a Value) -> Result<Self, FieldError> {
        match v {
            Value::Object(obj) => Ok(Self { obj }),
            Value::Array(_) => Err(FieldError::line("a JSON array, expected an object")),
            _ => Err(FieldError::line("expected a JSON object")),
        }
    }
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }
    fn opt_str(&self, key: &str) -> Result<Option<&'a str>, FieldError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(FieldError::new(
                key,
                format!("must be a string, got {}", kind(other)),
            )),
        }
    }
    fn str(&self, key: &str) -> Result<&'a str, FieldError> {
        self.opt_str(key)?
            .ok_or_else(|| FieldError::new(key, "missing"))
    }
    /// An optional free-text field (see `text`); a blank value counts as absent only
    /// where the caller says so.
    fn opt_text(&self, key: &str, max: usize, tab: bool) -> Result<Option<&'a str>, FieldError> {
        let s = self.opt_str(key)?;
        if let Some(s) = s {
            check_text(s, max, tab).map_err(|why| FieldError::new(key, why))?;
        }
        Ok(s)
    }
    fn parsed<T>(&self, key: &str, p: impl Fn(&str) -> Result<T, String>) -> Result<T, FieldError> {
        p(self.str(key)?).map_err(|why| FieldError::new(key, why))
    }
    fn opt_parsed<T>(
        &self,
        key: &str,
        p: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Option<T>, FieldError> {
        self.opt_str(key)?
            .map(|s| p(s).map_err(|why| FieldError::new(key, why)))
            .transpose()
    }
    fn opt_bool(&self, key: &str) -> Result<Option<bool>, FieldError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(FieldError::new(
                key,
                format!("must be a boolean, got {}", kind(other)),
            )),
        }
    }
    fn opt_array(&self, key: &str) -> Result<&'a [Value], FieldError> {
        match self.get(key) {
            None => Ok(&[]),
            Some(Value::Array(a)) => Ok(a),
            Some(other) => Err(FieldError::new(
                key,
                format!("must be an array, got {}", kind(other)),
            )),
        }
    }
}

/// A JSON value as an error message names it ("the number 1.5e20").
pub(crate) fn kind(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {}", shown(s)),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

fn non_empty(key: &str, s: Option<&str>) -> Result<Option<String>, FieldError> {
    match s {
        Some(s) if s.trim().is_empty() => Err(FieldError::new(key, "is empty")),
        other => Ok(other.map(str::to_owned)),
    }
}

fn currency(s: &str) -> Result<String, String> {
    if s.len() == 3 && s.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(s.to_owned())
    } else {
        Err(format!("{} is not a three-letter ISO 4217 code", shown(s)))
    }
}

fn id_list(key: &str, arr: &[Value]) -> Vec<Result<ProductId, FieldError>> {
    arr.iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::String(s) => {
                ProductId::parse(s).map_err(|w| FieldError::new(format!("{key}[{i}]"), w))
            }
            other => Err(FieldError::new(
                format!("{key}[{i}]"),
                format!("must be a string, got {}", kind(other)),
            )),
        })
        .collect()
}

/// An item's quantity: a JSON integer from 1 to `u32::MAX`. Every refusal says the
/// range, whatever the wrong value was (negative, huge, a fraction, a string).
fn quantity(v: &Value) -> Result<u32, String> {
    let expected = format!("must be a whole number from 1 to {}", u32::MAX);
    match v {
        Value::Number(n) => match n.as_u64().map(u32::try_from) {
            Some(Ok(q)) if q >= 1 => Ok(q),
            // 2.0 or 1e3: the right value in the wrong notation.
            _ if n.is_f64()
                && n.as_f64()
                    .is_some_and(|f| f.fract() == 0.0 && (1.0..=u32::MAX as f64).contains(&f)) =>
            {
                Err(format!(
                    "{expected}, written without a fraction or exponent; got {n}"
                ))
            }
            _ => Err(format!("{expected}, got {n}")),
        },
        other => Err(format!("{expected}, got {}", kind(other))),
    }
}

/// Collects every field error of one record instead of stopping at the first.
#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn take<T>(&mut self, r: Result<T, FieldError>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.0.push(e);
                None
            }
        }
    }
}

/// The first error of a record, for callers that report one (an import line).
fn first(errors: Vec<FieldError>) -> FieldError {
    errors
        .into_iter()
        .next()
        .unwrap_or_else(|| FieldError::line("invalid record"))
}

impl Product {
    pub fn from_json(v: &Value) -> Result<Self, FieldError> {
        Self::from_json_all(v).map_err(first)
    }

    /// Parses a product, naming every bad field (in field order).
    pub fn from_json_all(v: &Value) -> Result<Self, Vec<FieldError>> {
        let f = Fields::of(v).map_err(|e| vec![e])?;
        let mut e = Errors::default();
        let id = e.take(f.parsed("id", ProductId::parse));
        let title = e.take(f.str("title").and_then(|title| {
            check_text(title, MAX_TITLE_CHARS, true)
                .map_err(|why| FieldError::new("title", why))?;
            Ok(non_empty("title", Some(title))?.unwrap_or_default())
        }));
        let url = e.take(
            f.opt_text("url", MAX_URL_CHARS, false)
                .and_then(|s| non_empty("url", s)),
        );
        let image_url = e.take(
            f.opt_text("image_url", MAX_URL_CHARS, false)
                .and_then(|s| non_empty("image_url", s)),
        );
        let price = e.take(f.parsed("price", Money::parse));
        let currency = e.take(f.opt_parsed("currency", currency));
        let category = e.take(f.opt_parsed("category", CategoryPath::parse));
        let brand = e.take(
            f.opt_text("brand", MAX_NAME_CHARS, true)
                .and_then(|s| non_empty("brand", s)),
        );
        let in_stock = e.take(f.opt_bool("in_stock"));
        let compatible_with = match f.get("compatible_with") {
            Some(Value::Array(a)) => {
                let ids: Vec<Option<ProductId>> = id_list("compatible_with", a)
                    .into_iter()
                    .map(|r| e.take(r))
                    .collect();
                ids.into_iter().collect::<Option<Vec<_>>>()
            }
            None => Some(Vec::new()),
            Some(other) => e.take(Err(FieldError::new(
                "compatible_with",
                format!("must be an array of ids, got {}", kind(other)),
            ))),
        };
        let tags = match e.take(f.opt_array("tags")) {
            Some(raw) => {
                let tags: Vec<Option<String>> = raw
                    .iter()
                    .enumerate()
                    .map(|(i, t)| {
                        e.take(match t {
                            Value::String(s) => check_text(s, MAX_TAG_CHARS, false)
                                .map(|()| s.clone())
                                .map_err(|why| FieldError::new(format!("tags[{i}]"), why)),
                            other => Err(FieldError::new(
                                format!("tags[{i}]"),
                                format!("must be a string, got {}", kind(other)),
                            )),
                        })
                    })
                    .collect();
                tags.into_iter().collect::<Option<Vec<_>>>()
            }
            None => None,
        };
        match (
            id,
            title,
            url,
            image_url,
            price,
            currency,
            category,
            brand,
            in_stock,
            compatible_with,
            tags,
        ) {
            (
                Some(id),
                Some(title),
                Some(url),
                Some(image_url),
                Some(price),
                Some(currency),
                Some(category),
                Some(brand),
                Some(in_stock),
                Some(compatible_with),
                Some(tags),
            ) if e.0.is_empty() => Ok(Self {
                id,
                title,
                url,
                image_url,
                price,
                currency: currency.unwrap_or_else(|| "USD".into()),
                category,
                brand,
                in_stock: in_stock.unwrap_or(true),
                compatible_with,
                tags,
            }),
            _ => Err(e.0),
        }
    }
}

impl Customer {
    pub fn from_json(v: &Value) -> Result<Self, FieldError> {
        Self::from_json_all(v).map_err(first)
    }

    /// Parses a customer, naming every bad field.
    pub fn from_json_all(v: &Value) -> Result<Self, Vec<FieldError>> {
        let f = Fields::of(v).map_err(|e| vec![e])?;
        let mut e = Errors::default();
        let id = e.take(f.parsed("id", CustomerId::parse));
        let email = e.take(f.parsed("email", EmailAddress::parse));
        let name = e.take(f.opt_text("name", MAX_NAME_CHARS, true));
        let timezone = e.take(f.opt_parsed("timezone", |s| {
            s.parse::<chrono_tz::Tz>()
                .map(|_| s.to_owned())
                .map_err(|_| format!("{} is not an IANA time zone name", shown(s)))
        }));
        let locale = e.take(f.opt_text("locale", MAX_LOCALE_CHARS, false));
        let consent = e.take(f.opt_bool("marketing_consent"));
        match (id, email, name, timezone, locale, consent) {
            (Some(id), Some(email), Some(name), Some(timezone), Some(locale), Some(consent))
                if e.0.is_empty() =>
            {
                Ok(Self {
                    id,
                    email,
                    name: name.map(str::to_owned).filter(|s| !s.trim().is_empty()),
                    timezone,
                    locale: locale.map(str::to_owned).filter(|s| !s.is_empty()),
                    marketing_consent: consent.unwrap_or(false),
                })
            }
            _ => Err(e.0),
        }
    }
}

impl Order {
    /// Parses an order. `product_exists` checks each item's product against the catalog
    /// (an order naming an unknown product is refused, naming the item).
    pub fn from_json(
        v: &Value,
        product_exists: impl Fn(&ProductId) -> bool,
    ) -> Result<Self, FieldError> {
        Self::from_json_all(v, product_exists).map_err(first)
    }

    /// Parses an order, naming every bad field: type and format errors first (in field
    /// order), then the referential ones (an item naming an unknown product).
    pub fn from_json_all(
        v: &Value,
        product_exists: impl Fn(&ProductId) -> bool,
    ) -> Result<Self, Vec<FieldError>> {
        let f = Fields::of(v).map_err(|e| vec![e])?;
        let mut e = Errors::default();
        let mut unknown: Vec<FieldError> = Vec::new();
        let id = e.take(f.parsed("id", OrderId::parse));
        let customer_id = e.take(f.parsed("customer_id", CustomerId::parse));
        let status = e.take(f.parsed("status", OrderStatus::parse));
        let created_at = e.take(f.parsed("created_at", parse_rfc3339));
        let completed_at = e.take(f.opt_parsed("completed_at", parse_rfc3339));
        let delivered_at = e.take(f.opt_parsed("delivered_at", parse_rfc3339));
        let updated_at = e.take(f.opt_parsed("updated_at", parse_rfc3339));
        let raw_items = e.take(match f.get("items") {
            Some(Value::Array(a)) => Ok(a.as_slice()),
            None => Err(FieldError::new("items", "missing")),
            Some(other) => Err(FieldError::new(
                "items",
                format!("must be an array, got {}", kind(other)),
            )),
        });
        let mut items = Vec::with_capacity(raw_items.map_or(0, <[Value]>::len));
        for (i, raw) in raw_items.unwrap_or_default().iter().enumerate() {
            let at = |k: &str| format!("items[{i}].{k}");
            let Value::Object(obj) = raw else {
                e.0.push(FieldError::new(format!("items[{i}]"), "must be an object"));
                continue;
            };
            let product_id = e.take(match obj.get("product_id") {
                Some(Value::String(s)) => {
                    ProductId::parse(s).map_err(|w| FieldError::new(at("product_id"), w))
                }
                None | Some(Value::Null) => Err(FieldError::new(at("product_id"), "missing")),
                Some(other) => Err(FieldError::new(
                    at("product_id"),
                    format!("must be a string, got {}", kind(other)),
                )),
            });
            if let Some(p) = &product_id
                && !product_exists(p)
            {
                unknown.push(FieldError::new(
                    at("product_id"),
                    format!("unknown product {p}"),
                ));
            }
            let quantity = e.take(match obj.get("quantity") {
                None | Some(Value::Null) => Ok(1),
                Some(v) => quantity(v).map_err(|why| FieldError::new(at("quantity"), why)),
            });
            let unit_price = e.take(match obj.get("unit_price") {
                Some(Value::String(s)) => {
                    Money::parse(s).map_err(|w| FieldError::new(at("unit_price"), w))
                }
                None | Some(Value::Null) => Err(FieldError::new(at("unit_price"), "missing")),
                Some(other) => Err(FieldError::new(
                    at("unit_price"),
                    format!("must be a decimal string, got {}", kind(other)),
                )),
            });
            if let (Some(product_id), Some(quantity), Some(unit_price)) =
                (product_id, quantity, unit_price)
            {
                items.push(OrderItem {
                    product_id,
                    quantity,
                    unit_price,
                });
            }
        }
        if raw_items.is_some_and(<[Value]>::is_empty) && status.is_some_and(|s| !s.is_void()) {
            e.0.push(FieldError::new("items", "is empty"));
        }
        let total = e.take(f.opt_parsed("total", Money::parse));
        let currency = e.take(f.opt_parsed("currency", currency));
        if status == Some(OrderStatus::Completed) && completed_at == Some(None) {
            e.0.push(FieldError::new(
                "completed_at",
                "missing for a completed order",
            ));
        }
        if status == Some(OrderStatus::Delivered)
            && delivered_at == Some(None)
            && completed_at == Some(None)
        {
            e.0.push(FieldError::new(
                "delivered_at",
                "missing for a delivered order",
            ));
        }
        e.0.append(&mut unknown);
        match (
            id,
            customer_id,
            status,
            created_at,
            completed_at,
            delivered_at,
            updated_at,
            total,
            currency,
        ) {
            (
                Some(id),
                Some(customer_id),
                Some(status),
                Some(created_at),
                Some(completed_at),
                Some(delivered_at),
                Some(updated_at),
                Some(total),
                Some(currency),
            ) if e.0.is_empty() => Ok(Self {
                id,
                customer_id,
                status,
                created_at,
                completed_at,
                delivered_at,
                total: total.unwrap_or_else(|| {
                    items
                        .iter()
                        .map(|i| i.unit_price.times(i.quantity as i64))
                        .sum()
                }),
                items,
                currency: currency.unwrap_or_else(|| "USD".into()),
                updated_at,
            }),
            _ => Err(e.0),
        }
    }
}

impl Event {
    pub fn from_json(v: &Value) -> Result<Self, FieldError> {
        Self::from_json_all(v).map_err(first)
    }

    /// Parses an event, naming every bad field.
    pub fn from_json_all(v: &Value) -> Result<Self, Vec<FieldError>> {
        let f = Fields::of(v).map_err(|e| vec![e])?;
        let mut e = Errors::default();
        let customer_id = e.take(f.parsed("customer_id", CustomerId::parse));
        let product_id = e.take(f.parsed("product_id", ProductId::parse));
        let kind = e.take(f.parsed("kind", EventKind::parse));
        let at = e.take(f.parsed("at", parse_rfc3339));
        match (customer_id, product_id, kind, at) {
            (Some(customer_id), Some(product_id), Some(kind), Some(at)) if e.0.is_empty() => {
                Ok(Self {
                    customer_id,
                    product_id,
                    kind,
                    at,
                })
            }
            _ => Err(e.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn product_errors_name_the_field() {
        let e = Product::from_json(&json!({"id": "P1", "title": "x", "price": "abc"})).unwrap_err();
        assert_eq!(e.field, "price");
        let e =
            Product::from_json(&json!({"id": "P1", "title": "x", "price": "1", "in_stock": "yes"}))
                .unwrap_err();
        assert_eq!(e.field, "in_stock");
        let e = Product::from_json(
            &json!({"id": "P1", "title": "x", "price": "1", "compatible_with": "P2"}),
        )
        .unwrap_err();
        assert_eq!(e.field, "compatible_with");
        let e = Product::from_json(&json!([1])).unwrap_err();
        assert_eq!(e.field, "(line)");
        let p = Product::from_json(
            &json!({"id": "P1", "title": "x", "price": "1.5", "category": "A > B"}),
        )
        .unwrap();
        assert_eq!(p.category.unwrap().leaf(), "B");
    }

    #[test]
    fn order_items_are_checked() {
        let o = json!({"id": "O1", "customer_id": "C1", "status": "completed",
            "created_at": "2024-06-01T00:00:00Z", "completed_at": "2024-06-01T01:00:00Z",
            "items": [{"product_id": "P1", "quantity": -1, "unit_price": "1.00"}], "total": "1.00"});
        let e = Order::from_json(&o, |_| true).unwrap_err();
        assert_eq!(e.field, "items[0].quantity");
        // Format errors come before referential ones: an unknown product is named last.
        let all = Order::from_json_all(&o, |_| false).unwrap_err();
        let fields: Vec<&str> = all.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["items[0].quantity", "items[0].product_id"]);
        let mut ok = o.clone();
        ok["items"][0]["quantity"] = serde_json::json!(1);
        let e = Order::from_json(&ok, |_| false).unwrap_err();
        assert_eq!(e.field, "items[0].product_id");
    }

    #[test]
    fn order_states_only_move_forward() {
        use OrderStatus::*;
        assert!(Pending.can_become(Completed) && Completed.can_become(Delivered));
        assert!(Pending.can_become(Delivered) && Delivered.can_become(Refunded));
        assert!(Completed.can_become(Cancelled) && Delivered.can_become(Delivered));
        assert!(!Delivered.can_become(Completed) && !Completed.can_become(Pending));
        for s in [Pending, Completed, Delivered, Refunded] {
            assert!(!Cancelled.can_become(s), "cancelled → {s:?}");
        }
        for s in [Pending, Completed, Delivered, Cancelled] {
            assert!(!Refunded.can_become(s), "refunded → {s:?}");
        }
        let moves = OrderStatus::moves();
        assert!(moves.contains(&"cancelled>cancelled".to_string()));
        assert!(!moves.contains(&"cancelled>completed".to_string()));
        assert_eq!(moves.len(), 14);
    }

    #[test]
    fn customer_timezone_is_checked() {
        let e = Customer::from_json(
            &json!({"id": "C1", "email": "a@example.com", "timezone": "Mars/Base"}),
        )
        .unwrap_err();
        assert_eq!(e.field, "timezone");
        let c = Customer::from_json(&json!({"id": "C1", "email": "a@example.com", "timezone": "Asia/Kathmandu", "marketing_consent": true})).unwrap();
        assert!(c.marketing_consent);
    }
}
