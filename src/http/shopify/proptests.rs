//! Property tests of the Shopify order mapping: mutated and arbitrary payloads (random
//! values in each field, missing fields, wrong types, huge numbers, unicode) never
//! panic, and each either maps to a well-formed order or names a payload field. The
//! case count is fixed so the suite stays a few seconds inside `cargo test`.

use super::*;
use proptest::prelude::*;

/// Top-level payload fields an error may name (`(body)`: the body as a whole).
const FIELDS: &[&str] = &[
    "(body)",
    "id",
    "customer",
    "line_items",
    "total_price",
    "currency",
    "created_at",
    "processed_at",
    "updated_at",
    "cancelled_at",
    "financial_status",
    "fulfillment_status",
    "fulfillments",
];

/// Where mutations land: every field the mapping reads, and a few around them.
const PATHS: &[&str] = &[
    "/id",
    "/email",
    "/customer",
    "/customer/id",
    "/customer/email",
    "/customer/first_name",
    "/customer/last_name",
    "/customer/email_marketing_consent",
    "/customer/email_marketing_consent/state",
    "/line_items",
    "/line_items/0",
    "/line_items/0/sku",
    "/line_items/0/product_id",
    "/line_items/0/quantity",
    "/line_items/0/price",
    "/line_items/1",
    "/line_items/1/product_id",
    "/total_price",
    "/currency",
    "/created_at",
    "/processed_at",
    "/updated_at",
    "/cancelled_at",
    "/financial_status",
    "/fulfillment_status",
    "/fulfillments",
    "/fulfillments/0",
    "/fulfillments/0/created_at",
    "/fulfillments/0/status",
];

fn catalog() -> HashSet<ProductId> {
    ["P00001", "P00002", "632910392"]
        .iter()
        .map(|p| ProductId::parse(p).unwrap())
        .collect()
}

/// A valid body of each topic, as Shopify sends it (the fields the mapping reads).
fn base(topic: Topic) -> Value {
    let mut v = json!({
        "id": 820_982_911_946_154_508_u64, "email": "ada@example.com",
        "created_at": "2024-06-01T10:00:00-04:00", "processed_at": "2024-06-01T10:05:00-04:00",
        "updated_at": "2024-06-01T10:05:01-04:00", "cancelled_at": null,
        "financial_status": "paid", "fulfillment_status": null, "fulfillments": [],
        "total_price": "789.00", "currency": "USD",
        "customer": {"id": 115_310_627_314_723_954_u64, "email": "ada@example.com", "first_name": "Ada",
                     "last_name": "Lovelace", "email_marketing_consent": {"state": "subscribed"}},
        "line_items": [
            {"id": 1, "sku": "P00001", "product_id": 632_910_393_u64, "quantity": 1, "price": "769.00"},
            {"id": 2, "sku": null, "product_id": 632_910_392_u64, "quantity": 2, "price": "10.00"}
        ]
    });
    match topic {
        Topic::Paid => {}
        Topic::Fulfilled => {
            v["fulfillment_status"] = json!("fulfilled");
            v["fulfillments"] =
                json!([{"status": "success", "created_at": "2024-06-03T08:00:00Z"}]);
        }
        Topic::Cancelled => {
            v["cancelled_at"] = json!("2024-06-02T09:00:00Z");
            v["updated_at"] = json!("2024-06-02T09:00:01Z");
            v["financial_status"] = json!("refunded");
        }
    }
    v
}

fn topic() -> impl Strategy<Value = Topic> {
    prop_oneof![
        Just(Topic::Paid),
        Just(Topic::Fulfilled),
        Just(Topic::Cancelled)
    ]
}

/// Strings that sit on the edges the mapping decides on, and arbitrary unicode.
fn string() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,24}",
        "[0-9]{1,30}",
        "[a-z]{1,6}@[a-z]{1,6}\\.[a-z]{2,3}",
        prop::sample::select(vec![
            "",
            " ",
            "-5",
            "0",
            "007",
            "1.5",
            "1.5e20",
            "18446744073709551616",
            "P00001",
            "632910392",
            "paid",
            "partially_paid",
            "pending",
            "fulfilled",
            "partial",
            "success",
            "subscribed",
            "USD",
            "usd",
            "769.00",
            " 1.00",
            "1e3",
            "\u{0}",
            "2024-06-01T10:00:00Z",
            "2024-02-30T10:00:00Z",
            "9999-12-31T23:59:59+23:59",
            "0000-01-01T00:00:00Z",
            "2024-06-01 10:00:00",
            "é\u{301}🛒",
            "\u{202e}abc",
        ])
        .prop_map(str::to_owned),
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("JSON has no NaN or infinity", |f| {
            serde_json::Number::from_f64(f).map(Value::Number)
        }),
        prop::sample::select(vec![0.0, -0.0, 1.5, 5.0, 1.5e20, 1e308, -1e308, 5e-324])
            .prop_map(Value::from),
        string().prop_map(Value::String),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(3, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    "[a-z_]{1,10}",
                    prop::sample::select(vec!["id", "sku", "product_id", "created_at", "status"])
                        .prop_map(str::to_owned),
                ],
                inner,
                0..4
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

#[derive(Debug, Clone)]
enum Mutation {
    Remove(&'static str),
    Set(&'static str, Value),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let path = prop::sample::select(PATHS.to_vec());
    prop_oneof![
        1 => path.clone().prop_map(Mutation::Remove),
        3 => (path, json_value()).prop_map(|(p, v)| Mutation::Set(p, v)),
    ]
}

/// Applies a mutation where its parent exists (else it is a no-op).
fn apply(v: &mut Value, m: &Mutation) {
    let path = match m {
        Mutation::Remove(p) | Mutation::Set(p, _) => *p,
    };
    let (parent, key) = path.rsplit_once('/').unwrap_or(("", path));
    let Some(parent) = v.pointer_mut(parent) else {
        return;
    };
    match (parent, m) {
        (Value::Object(o), Mutation::Remove(_)) => {
            o.remove(key);
        }
        (Value::Object(o), Mutation::Set(_, new)) => {
            o.insert(key.to_owned(), new.clone());
        }
        (Value::Array(a), m) => {
            let Ok(i) = key.parse::<usize>() else { return };
            match m {
                Mutation::Remove(_) if i < a.len() => {
                    a.remove(i);
                }
                Mutation::Set(_, new) if i < a.len() => a[i] = new.clone(),
                Mutation::Set(_, new) => a.push(new.clone()),
                Mutation::Remove(_) => {}
            }
        }
        _ => {}
    }
}

fn existing() -> impl Strategy<Value = Option<Order>> {
    let status = prop::sample::select(OrderStatus::ALL.to_vec());
    let time = prop_oneof![
        Just(None),
        (0i64..4_102_444_800_000).prop_map(|t| Some(Timestamp(t)))
    ];
    prop::option::of((status, time.clone(), time.clone(), time)).prop_map(|o| {
        o.map(|(status, completed_at, delivered_at, updated_at)| Order {
            id: crate::domain::OrderId::parse("820982911946154508").unwrap(),
            customer_id: crate::domain::CustomerId::parse("115310627314723954").unwrap(),
            status,
            created_at: Timestamp(1_717_250_400_000),
            completed_at,
            delivered_at,
            items: Vec::new(),
            total: crate::domain::Money::from_minor(78_900),
            currency: "USD".into(),
            updated_at,
        })
    })
}

/// What every outcome must satisfy: a valid order that says what the topic says, or
/// an error naming a field of the payload.
fn check(v: &Value, topic: Topic, out: Result<Mapped, FieldError>) -> Result<(), TestCaseError> {
    let catalog = catalog();
    match out {
        Ok(m) => {
            let id = shopify_id(v.get("id"), "id");
            prop_assert_eq!(id.as_deref().ok(), Some(m.order.id.as_str()));
            prop_assert!(m.order.id.as_str().parse::<u64>().is_ok_and(|n| n > 0));
            prop_assert!(m.customer.id.as_str().parse::<u64>().is_ok_and(|n| n > 0));
            prop_assert_eq!(&m.order.customer_id, &m.customer.id);
            let want = match topic {
                Topic::Paid => OrderStatus::Completed,
                Topic::Fulfilled => OrderStatus::Delivered,
                Topic::Cancelled => OrderStatus::Cancelled,
            };
            prop_assert_eq!(m.order.status, want);
            prop_assert!(check_topic(v, topic).is_ok());
            if topic == Topic::Cancelled {
                prop_assert!(m.order.updated_at.is_some(), "a cancel has a version");
            } else {
                prop_assert!(!m.order.items.is_empty());
            }
            if topic == Topic::Paid {
                prop_assert!(m.order.completed_at.is_some());
            }
            if topic == Topic::Fulfilled {
                prop_assert!(m.order.delivered_at.is_some());
            }
            for item in &m.order.items {
                prop_assert!(catalog.contains(&item.product_id));
                prop_assert!(item.quantity >= 1);
            }
        }
        Err(e) => {
            let top = e.field.split(['.', '[']).next().unwrap_or_default();
            prop_assert!(
                FIELDS.contains(&top),
                "unknown field {:?} ({})",
                e.field,
                e.why
            );
            prop_assert!(!e.why.is_empty());
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 768, ..ProptestConfig::default() })]

    #[test]
    fn mutated_payloads_map_or_name_a_field(
        body_of in topic(),
        sent_as in prop_oneof![3 => Just(None), 1 => topic().prop_map(Some)],
        mutations in prop::collection::vec(mutation(), 0..6),
        existing in existing(),
        now in 0i64..4_102_444_800_000,
    ) {
        let mut v = base(body_of);
        for m in &mutations {
            apply(&mut v, m);
        }
        let topic = sent_as.unwrap_or(body_of);
        let out = map_order(&v, topic, Timestamp(now), existing.as_ref(), &catalog());
        check(&v, topic, out)?;
    }

    #[test]
    fn arbitrary_json_maps_or_names_a_field(v in json_value(), topic in topic()) {
        let out = map_order(&v, topic, Timestamp(0), None, &catalog());
        check(&v, topic, out)?;
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256), topic in topic()) {
        if let Ok(v) = serde_json::from_slice::<Value>(&bytes) {
            let out = map_order(&v, topic, Timestamp(0), None, &catalog());
            check(&v, topic, out)?;
        }
    }
}

#[test]
fn the_bases_map_and_disagree_with_other_topics() {
    for body in [Topic::Paid, Topic::Fulfilled, Topic::Cancelled] {
        for topic in [Topic::Paid, Topic::Fulfilled, Topic::Cancelled] {
            let out = map_order(&base(body), topic, Timestamp(0), None, &catalog());
            // A fulfilled order was paid too: its body may be sent as orders/paid.
            let agrees = body == topic || (body, topic) == (Topic::Fulfilled, Topic::Paid);
            assert_eq!(out.is_ok(), agrees, "{body:?} body as {topic:?}: {out:?}");
        }
    }
}
