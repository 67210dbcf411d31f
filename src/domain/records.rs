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

fn id_list(key: &str, arr: &[Value]) -> Result<Vec<ProductId>, FieldError> {
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

impl Product {
    pub fn from_json(v: &Value) -> Result<Self, FieldError> {
        let f = Fields::of(v)?;
        let id = f.parsed("id", ProductId::parse)?;
        let title = f.str("title")?;
        check_text(title, MAX_TITLE_CHARS, true).map_err(|why| FieldError::new("title", why))?;
        let title = non_empty("title", Some(title))?.unwrap_or_default();
        let compatible_with = match f.get("compatible_with") {
            Some(Value::Array(a)) => id_list("compatible_with", a)?,
            None => Vec::new(),
            Some(other) => {
                return Err(FieldError::new(
                    "compatible_with",
                    format!("must be an array of ids, got {}", kind(other)),
                ));
            }
        };
        let tags = f
            .opt_array("tags")?
            .iter()
            .enumerate()
            .map(|(i, t)| match t {
                Value::String(s) => check_text(s, MAX_TAG_CHARS, false)
                    .map(|()| s.clone())
                    .map_err(|why| FieldError::new(format!("tags[{i}]"), why)),
                other => Err(FieldError::new(
                    format!("tags[{i}]"),
                    format!("must be a string, got {}", kind(other)),
                )),
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            id,
            title,
            url: non_empty("url", f.opt_text("url", MAX_URL_CHARS, false)?)?,
            image_url: non_empty("image_url", f.opt_text("image_url", MAX_URL_CHARS, false)?)?,
            price: f.parsed("price", Money::parse)?,
            currency: f
                .opt_parsed("currency", currency)?
                .unwrap_or_else(|| "USD".into()),
            category: f.opt_parsed("category", CategoryPath::parse)?,
            brand: non_empty("brand", f.opt_text("brand", MAX_NAME_CHARS, true)?)?,
            in_stock: f.opt_bool("in_stock")?.unwrap_or(true),
            compatible_with,
            tags,
        })
    }
}

impl Customer {
    pub fn from_json(v: &Value) -> Result<Self, FieldError> {
        let f = Fields::of(v)?;
        let timezone = f.opt_parsed("timezone", |s| {
            s.parse::<chrono_tz::Tz>()
                .map(|_| s.to_owned())
                .map_err(|_| format!("{} is not an IANA time zone name", shown(s)))
        })?;
        Ok(Self {
            id: f.parsed("id", CustomerId::parse)?,
            email: f.parsed("email", EmailAddress::parse)?,
            name: f
                .opt_text("name", MAX_NAME_CHARS, true)?
                .map(str::to_owned)
                .filter(|s| !s.trim().is_empty()),
            timezone,
            locale: f
                .opt_text("locale", MAX_LOCALE_CHARS, false)?
                .map(str::to_owned)
                .filter(|s| !s.is_empty()),
            marketing_consent: f.opt_bool("marketing_consent")?.unwrap_or(false),
        })
    }
}

impl Order {
    /// Parses an order. `product_exists` checks each item's product against the catalog
    /// (an order naming an unknown product is refused, naming the item).
    pub fn from_json(
        v: &Value,
        product_exists: impl Fn(&ProductId) -> bool,
    ) -> Result<Self, FieldError> {
        let f = Fields::of(v)?;
        let id = f.parsed("id", OrderId::parse)?;
        let customer_id = f.parsed("customer_id", CustomerId::parse)?;
        let status = f.parsed("status", OrderStatus::parse)?;
        let created_at = f.parsed("created_at", parse_rfc3339)?;
        let completed_at = f.opt_parsed("completed_at", parse_rfc3339)?;
        let delivered_at = f.opt_parsed("delivered_at", parse_rfc3339)?;
        let updated_at = f.opt_parsed("updated_at", parse_rfc3339)?;
        let raw_items = match f.get("items") {
            Some(Value::Array(a)) => a,
            None => return Err(FieldError::new("items", "missing")),
            Some(other) => {
                return Err(FieldError::new(
                    "items",
                    format!("must be an array, got {}", kind(other)),
                ));
            }
        };
        let mut items = Vec::with_capacity(raw_items.len());
        for (i, raw) in raw_items.iter().enumerate() {
            let at = |k: &str| format!("items[{i}].{k}");
            let Value::Object(obj) = raw else {
                return Err(FieldError::new(format!("items[{i}]"), "must be an object"));
            };
            let product_id = match obj.get("product_id") {
                Some(Value::String(s)) => {
                    ProductId::parse(s).map_err(|w| FieldError::new(at("product_id"), w))?
                }
                None | Some(Value::Null) => {
                    return Err(FieldError::new(at("product_id"), "missing"));
                }
                Some(other) => {
                    return Err(FieldError::new(
                        at("product_id"),
                        format!("must be a string, got {}", kind(other)),
                    ));
                }
            };
            if !product_exists(&product_id) {
                return Err(FieldError::new(
                    at("product_id"),
                    format!("unknown product {product_id}"),
                ));
            }
            let quantity = match obj.get("quantity") {
                None | Some(Value::Null) => 1,
                Some(v) => quantity(v).map_err(|why| FieldError::new(at("quantity"), why))?,
            };
            let unit_price = match obj.get("unit_price") {
                Some(Value::String(s)) => {
                    Money::parse(s).map_err(|w| FieldError::new(at("unit_price"), w))?
                }
                None | Some(Value::Null) => {
                    return Err(FieldError::new(at("unit_price"), "missing"));
                }
                Some(other) => {
                    return Err(FieldError::new(
                        at("unit_price"),
                        format!("must be a decimal string, got {}", kind(other)),
                    ));
                }
            };
            items.push(OrderItem {
                product_id,
                quantity,
                unit_price,
            });
        }
        if items.is_empty() && !status.is_void() {
            return Err(FieldError::new("items", "is empty"));
        }
        let total = match f.opt_parsed("total", Money::parse)? {
            Some(t) => t,
            None => items
                .iter()
                .map(|i| i.unit_price.times(i.quantity as i64))
                .sum(),
        };
        if status == OrderStatus::Completed && completed_at.is_none() {
            return Err(FieldError::new(
                "completed_at",
                "missing for a completed order",
            ));
        }
        if status == OrderStatus::Delivered && delivered_at.is_none() && completed_at.is_none() {
            return Err(FieldError::new(
                "delivered_at",
                "missing for a delivered order",
            ));
        }
        Ok(Self {
            id,
            customer_id,
            status,
            created_at,
            completed_at,
            delivered_at,
            items,
            total,
            currency: f
                .opt_parsed("currency", currency)?
                .unwrap_or_else(|| "USD".into()),
            updated_at,
        })
    }
}

impl Event {
    pub fn from_json(v: &Value) -> Result<Self, FieldError> {
        let f = Fields::of(v)?;
        Ok(Self {
            customer_id: f.parsed("customer_id", CustomerId::parse)?,
            product_id: f.parsed("product_id", ProductId::parse)?,
            kind: f.parsed("kind", EventKind::parse)?,
            at: f.parsed("at", parse_rfc3339)?,
        })
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
        let e = Order::from_json(&o, |_| false).unwrap_err();
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
