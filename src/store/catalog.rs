//! Catalog, customers, orders and events: bulk upserts (one statement per chunk, the
//! rows passed as one JSON parameter so the SQL stays fixed) and the reads a job needs.

use super::{CHUNK, Db, Result, Store, StoreError, with_db};
use crate::domain::{
    CategoryPath, Customer, CustomerId, EmailAddress, Event, FollowupEvent, FollowupState, Money,
    Order, OrderId, OrderItem, OrderStatus, Product, ProductId, ScheduleRule, SkipReason,
    Timestamp,
};
use serde_json::json;
use sqlx::Row;
use std::collections::{HashMap, HashSet};

/// What an order import did besides storing the orders.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ImportOutcome {
    pub stored: usize,
    pub scheduled: u64,
    pub cancelled: u64,
    /// Records the order lifecycle refused in part or whole (not errors: the input was
    /// well formed, the stored order is newer or further along).
    pub kept: Vec<Kept>,
}

/// An order record that did not change the stored status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    /// The record's position in the slice given to `upsert_orders`.
    pub index: usize,
    pub order_id: OrderId,
    pub why: KeptWhy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeptWhy {
    /// The record would move the order backwards: the stored status and its times
    /// stayed, the other fields were updated, nothing was scheduled.
    Backwards {
        stored: OrderStatus,
        requested: OrderStatus,
    },
    /// The record's `updated_at` is older than the stored one: nothing changed.
    Stale { updated_at: Timestamp },
}

impl Kept {
    /// The input field the warning is about.
    pub fn field(&self) -> &'static str {
        match self.why {
            KeptWhy::Backwards { .. } => "status",
            KeptWhy::Stale { .. } => "updated_at",
        }
    }
    /// Why, in words for an operator.
    pub fn why(&self) -> String {
        match self.why {
            KeptWhy::Backwards { stored, requested } if stored.is_void() => format!(
                "order stays {} ({} is final), not {}; other fields updated, nothing scheduled",
                stored.as_str(),
                stored.as_str(),
                requested.as_str()
            ),
            KeptWhy::Backwards { stored, requested } => format!(
                "order stays {} (states only move forward), not {}; other fields updated, nothing scheduled",
                stored.as_str(),
                requested.as_str()
            ),
            KeptWhy::Stale { updated_at } => format!(
                "{} is older than the stored order's; nothing changed",
                updated_at.rfc3339()
            ),
        }
    }
}

#[derive(Debug, Clone)]
pub struct CustomerRow {
    pub customer: Customer,
    pub unsubscribed: bool,
    pub suppressed: bool,
}

/// Everything a job reads about its order.
#[derive(Debug, Clone)]
pub struct OrderContext {
    pub order: Order,
    pub customer: Option<CustomerRow>,
}

/// A customer's past as the rules see it at one instant.
#[derive(Debug, Clone, Default)]
pub struct History {
    pub bought_before: HashSet<ProductId>,
    pub seen_on_site: HashSet<ProductId>,
    pub emailed_recently: HashSet<ProductId>,
    /// `sent_at` of this customer's emails in the last 7 days, for the weekly cap.
    pub sent_last_week: Vec<Timestamp>,
}

const PRODUCTS_SQLITE: &str = "INSERT INTO products (id, title, url, image_url, price, currency, category, brand, in_stock, compatible_with, tags)
 SELECT j.value->>'id', j.value->>'title', j.value->>'url', j.value->>'image_url', j.value->>'price', j.value->>'currency',
        j.value->>'category', j.value->>'brand', j.value->>'in_stock', j.value->>'compatible_with', j.value->>'tags'
 FROM json_each($1) j WHERE true
 ON CONFLICT (id) DO UPDATE SET title = excluded.title, url = excluded.url, image_url = excluded.image_url,
   price = excluded.price, currency = excluded.currency, category = excluded.category, brand = excluded.brand,
   in_stock = excluded.in_stock, compatible_with = excluded.compatible_with, tags = excluded.tags";
const PRODUCTS_PG: &str = "INSERT INTO products (id, title, url, image_url, price, currency, category, brand, in_stock, compatible_with, tags)
 SELECT id, title, url, image_url, price, currency, category, brand, in_stock, compatible_with, tags
 FROM jsonb_to_recordset($1::jsonb) AS r(id text, title text, url text, image_url text, price bigint, currency text,
   category text, brand text, in_stock boolean, compatible_with text, tags text)
 ON CONFLICT (id) DO UPDATE SET title = excluded.title, url = excluded.url, image_url = excluded.image_url,
   price = excluded.price, currency = excluded.currency, category = excluded.category, brand = excluded.brand,
   in_stock = excluded.in_stock, compatible_with = excluded.compatible_with, tags = excluded.tags";

/// A forgotten customer (`forget`, Shopify customers/redact) stays erased: an upsert of
/// the same id (a re-import, a replayed webhook) changes nothing.
const CUSTOMERS_SQLITE: &str = "INSERT INTO customers (id, email, name, timezone, locale, marketing_consent)
 SELECT j.value->>'id', j.value->>'email', j.value->>'name', j.value->>'timezone', j.value->>'locale', j.value->>'marketing_consent'
 FROM json_each($1) j WHERE true
 ON CONFLICT (id) DO UPDATE SET email = excluded.email, name = excluded.name, timezone = excluded.timezone,
   locale = excluded.locale, marketing_consent = excluded.marketing_consent WHERE customers.forgotten_at IS NULL";
const CUSTOMERS_PG: &str = "INSERT INTO customers (id, email, name, timezone, locale, marketing_consent)
 SELECT id, email, name, timezone, locale, marketing_consent
 FROM jsonb_to_recordset($1::jsonb) AS r(id text, email text, name text, timezone text, locale text, marketing_consent boolean)
 ON CONFLICT (id) DO UPDATE SET email = excluded.email, name = excluded.name, timezone = excluded.timezone,
   locale = excluded.locale, marketing_consent = excluded.marketing_consent WHERE customers.forgotten_at IS NULL";

/// The update half of the order upsert, the same on both engines but for `$moves`, a
/// subquery over $2, the allowed status moves (`OrderStatus::moves`, "from>to"). A
/// record that would move an order backwards keeps the stored status and its times
/// (other fields update); one older than the stored `updated_at` changes nothing and
/// returns no row. Decided in the statement itself, so concurrent writers cannot race.
macro_rules! order_upsert_update {
    ($moves:literal) => {
        concat!(
            " ON CONFLICT (id) DO UPDATE SET customer_id = excluded.customer_id, created_at = excluded.created_at,
   status = CASE WHEN orders.status || '>' || excluded.status IN (", $moves, ") THEN excluded.status ELSE orders.status END,
   completed_at = CASE WHEN orders.status || '>' || excluded.status IN (", $moves, ") THEN excluded.completed_at ELSE orders.completed_at END,
   delivered_at = CASE WHEN orders.status || '>' || excluded.status IN (", $moves, ") THEN excluded.delivered_at ELSE orders.delivered_at END,
   total = excluded.total, currency = excluded.currency, items = excluded.items,
   updated_at = COALESCE(excluded.updated_at, orders.updated_at)
 WHERE orders.updated_at IS NULL OR excluded.updated_at IS NULL OR excluded.updated_at >= orders.updated_at
 RETURNING id, status"
        )
    };
}

const ORDERS_SQLITE: &str = concat!(
    "INSERT INTO orders (id, customer_id, status, created_at, completed_at, delivered_at, total, currency, items, updated_at)
 SELECT j.value->>'id', j.value->>'customer_id', j.value->>'status', j.value->>'created_at', j.value->>'completed_at',
        j.value->>'delivered_at', j.value->>'total', j.value->>'currency', j.value->>'items', j.value->>'updated_at'
 FROM json_each($1) j WHERE true",
    order_upsert_update!("SELECT value FROM json_each($2)")
);
const ORDERS_PG: &str = concat!(
    "INSERT INTO orders (id, customer_id, status, created_at, completed_at, delivered_at, total, currency, items, updated_at)
 SELECT id, customer_id, status, created_at, completed_at, delivered_at, total, currency, items, updated_at
 FROM jsonb_to_recordset($1::jsonb) AS r(id text, customer_id text, status text, created_at bigint, completed_at bigint,
   delivered_at bigint, total bigint, currency text, items text, updated_at bigint)",
    order_upsert_update!("SELECT jsonb_array_elements_text($2::jsonb)")
);

const EVENTS_SQLITE: &str = "INSERT INTO events (customer_id, product_id, kind, at)
 SELECT j.value->>'customer_id', j.value->>'product_id', j.value->>'kind', j.value->>'at'
 FROM json_each($1) j WHERE true ON CONFLICT DO NOTHING";
const EVENTS_PG: &str = "INSERT INTO events (customer_id, product_id, kind, at)
 SELECT customer_id, product_id, kind, at
 FROM jsonb_to_recordset($1::jsonb) AS r(customer_id text, product_id text, kind text, at bigint) ON CONFLICT DO NOTHING";

const FOLLOWUPS_SQLITE: &str = "INSERT INTO followups (order_id, campaign, customer_id, state, due_at, next_at, created_at, updated_at)
 SELECT j.value->>'order_id', j.value->>'campaign', j.value->>'customer_id', 'scheduled', j.value->>'due_at', j.value->>'due_at', $2, $2
 FROM json_each($1) j WHERE true ON CONFLICT (order_id, campaign) DO NOTHING";
const FOLLOWUPS_PG: &str = "INSERT INTO followups (order_id, campaign, customer_id, state, due_at, next_at, created_at, updated_at)
 SELECT order_id, campaign, customer_id, 'scheduled', due_at, due_at, $2, $2
 FROM jsonb_to_recordset($1::jsonb) AS r(order_id text, campaign text, customer_id text, due_at bigint)
 ON CONFLICT (order_id, campaign) DO NOTHING";

// $3 = skipped, $4 = order_cancelled (the lifecycle's `Skip` from scheduled or deferred).
const CANCEL_SQLITE: &str =
    "UPDATE followups SET state = $3, reason = $4, next_at = NULL, updated_at = $2
 WHERE order_id IN (SELECT value FROM json_each($1)) AND state IN ('scheduled', 'deferred')";
const CANCEL_PG: &str = "UPDATE followups SET state = $3, reason = $4, next_at = NULL, updated_at = $2
 WHERE order_id IN (SELECT jsonb_array_elements_text($1::jsonb)) AND state IN ('scheduled', 'deferred')";

// Batch reads: the ids arrive as one JSON array parameter, so the SQL stays fixed.
const ORDERS_BY_ID_SQLITE: &str =
    "SELECT id, customer_id, status, created_at, completed_at, delivered_at, total, currency, items, updated_at
 FROM orders WHERE id IN (SELECT value FROM json_each($1))";
const ORDERS_BY_ID_PG: &str =
    "SELECT id, customer_id, status, created_at, completed_at, delivered_at, total, currency, items, updated_at
 FROM orders WHERE id IN (SELECT jsonb_array_elements_text($1::jsonb))";
const CUSTOMERS_BY_ID_SQLITE: &str =
    "SELECT c.id, c.email, c.name, c.timezone, c.locale, c.marketing_consent, c.unsubscribed_at,
 (SELECT COUNT(*) FROM suppressions s WHERE s.email = lower(c.email)) AS suppressed
 FROM customers c WHERE c.id IN (SELECT value FROM json_each($1))";
const CUSTOMERS_BY_ID_PG: &str =
    "SELECT c.id, c.email, c.name, c.timezone, c.locale, c.marketing_consent, c.unsubscribed_at,
 (SELECT COUNT(*) FROM suppressions s WHERE s.email = lower(c.email)) AS suppressed
 FROM customers c WHERE c.id IN (SELECT jsonb_array_elements_text($1::jsonb))";
const BOUGHT_SQLITE: &str =
    "SELECT customer_id, items FROM orders WHERE customer_id IN (SELECT value FROM json_each($1))
 AND created_at <= $2 AND status NOT IN ('cancelled', 'refunded')";
const BOUGHT_PG: &str = "SELECT customer_id, items FROM orders WHERE customer_id IN (SELECT jsonb_array_elements_text($1::jsonb))
 AND created_at <= $2 AND status NOT IN ('cancelled', 'refunded')";
const SEEN_SQLITE: &str = "SELECT DISTINCT customer_id, product_id FROM events WHERE customer_id IN (SELECT value FROM json_each($1))
 AND at >= $2 AND at <= $3";
const SEEN_PG: &str = "SELECT DISTINCT customer_id, product_id FROM events WHERE customer_id IN (SELECT jsonb_array_elements_text($1::jsonb))
 AND at >= $2 AND at <= $3";
const SENT_SQLITE: &str = "SELECT customer_id, items, sent_at FROM followups WHERE customer_id IN (SELECT value FROM json_each($1))
 AND sent_at IS NOT NULL AND sent_at >= $2 AND state = 'sent'";
const SENT_PG: &str = "SELECT customer_id, items, sent_at FROM followups WHERE customer_id IN (SELECT jsonb_array_elements_text($1::jsonb))
 AND sent_at IS NOT NULL AND sent_at >= $2 AND state = 'sent'";

impl Store {
    async fn bulk(&self, sqlite: &str, pg: &str, rows: serde_json::Value) -> Result<u64> {
        let text = rows.to_string();
        let _turn = self.write_turn().await;
        let done = with_db!(&self.db, p => {
            let sql = if matches!(self.db, Db::Sqlite(_)) { sqlite } else { pg };
            sqlx::query(sql).bind(text).execute(p).await?.rows_affected()
        });
        Ok(done)
    }

    pub async fn upsert_products(&self, products: &[Product]) -> Result<()> {
        for chunk in products.chunks(CHUNK) {
            let rows: Vec<_> = chunk
                .iter()
                .map(|p| {
                    json!({
                        "id": p.id, "title": p.title, "url": p.url, "image_url": p.image_url, "price": p.price.minor(),
                        "currency": p.currency, "category": p.category.as_ref().map(|c| c.as_str()), "brand": p.brand,
                        "in_stock": p.in_stock, "compatible_with": serde_json::to_string(&p.compatible_with).unwrap_or_default(),
                        "tags": serde_json::to_string(&p.tags).unwrap_or_default(),
                    })
                })
                .collect();
            self.bulk(PRODUCTS_SQLITE, PRODUCTS_PG, rows.into()).await?;
        }
        Ok(())
    }

    pub async fn upsert_customers(&self, customers: &[Customer]) -> Result<()> {
        for chunk in customers.chunks(CHUNK) {
            let rows: Vec<_> = chunk
                .iter()
                .map(|c| {
                    json!({"id": c.id, "email": c.email, "name": c.name, "timezone": c.timezone, "locale": c.locale,
                           "marketing_consent": c.marketing_consent})
                })
                .collect();
            self.bulk(CUSTOMERS_SQLITE, CUSTOMERS_PG, rows.into())
                .await?;
        }
        Ok(())
    }

    pub async fn insert_events(&self, events: &[Event]) -> Result<()> {
        for chunk in events.chunks(CHUNK * 4) {
            let rows: Vec<_> = chunk
                .iter()
                .map(|e| json!({"customer_id": e.customer_id, "product_id": e.product_id, "kind": e.kind.as_str(), "at": e.at.0}))
                .collect();
            self.bulk(EVENTS_SQLITE, EVENTS_PG, rows.into()).await?;
        }
        Ok(())
    }

    /// Stores orders and, in the same pass, schedules each campaign whose trigger the
    /// order has reached; cancelled/refunded orders skip their pending follow-ups. A
    /// record that would move an order backwards, or is older than the stored one,
    /// schedules nothing and is listed in `kept` (see `order_upsert_update!`). Records
    /// are applied in the order given, repeats of an id included.
    pub async fn upsert_orders(
        &self,
        orders: &[Order],
        rules: &[ScheduleRule],
        now: Timestamp,
    ) -> Result<ImportOutcome> {
        let mut outcome = ImportOutcome::default();
        let moves = json!(OrderStatus::moves()).to_string();
        let is_sqlite = matches!(self.db, Db::Sqlite(_));
        let pick = |a: &'static str, b: &'static str| if is_sqlite { a } else { b };
        for (n, chunk) in orders.chunks(CHUNK).enumerate() {
            let _turn = self.write_turn().await;
            // One transaction per chunk: an order and its follow-ups are stored together,
            // and what is scheduled follows the status the upsert actually left.
            let (kept, scheduled, cancelled) = with_db!(&self.db, p => {
                let mut tx = p.begin().await?;
                let (mut kept, mut s, mut c) = (Vec::new(), 0, 0);
                for round in rounds(chunk, n * CHUNK) {
                    let rows: Vec<_> = round.iter().map(|(_, o)| order_row(o)).collect();
                    let written = sqlx::query(pick(ORDERS_SQLITE, ORDERS_PG))
                        .bind(serde_json::Value::from(rows).to_string()).bind(&moves).fetch_all(&mut *tx).await?;
                    let mut stored: HashMap<String, String> = HashMap::with_capacity(written.len());
                    for r in &written {
                        stored.insert(r.try_get("id")?, r.try_get("status")?);
                    }
                    let (k, schedule, void) = settle(&round, &stored, rules)?;
                    kept.extend(k);
                    if !schedule.is_empty() {
                        s += sqlx::query(pick(FOLLOWUPS_SQLITE, FOLLOWUPS_PG)).bind(serde_json::Value::from(schedule).to_string())
                            .bind(now.0).execute(&mut *tx).await?.rows_affected();
                    }
                    if !void.is_empty() {
                        let reason = SkipReason::OrderCancelled;
                        let to = super::ledger::transition(FollowupState::Scheduled, FollowupEvent::Withdraw(reason))?;
                        c += sqlx::query(pick(CANCEL_SQLITE, CANCEL_PG)).bind(json!(void).to_string())
                            .bind(now.0).bind(to).bind(reason.as_str()).execute(&mut *tx).await?.rows_affected();
                    }
                }
                tx.commit().await?;
                (kept, s, c)
            });
            outcome.stored += chunk.len();
            outcome.scheduled += scheduled;
            outcome.cancelled += cancelled;
            outcome.kept.extend(kept);
        }
        Ok(outcome)
    }

    /// Every product id, to check order lines against the catalog.
    pub async fn product_ids(&self) -> Result<HashSet<ProductId>> {
        let ids: Vec<String> = with_db!(&self.db, p => sqlx::query_scalar("SELECT id FROM products").fetch_all(p).await?);
        Ok(ids
            .into_iter()
            .filter_map(|s| ProductId::parse(&s).ok())
            .collect())
    }

    pub async fn products(&self) -> Result<Vec<Product>> {
        self.products_where(None).await
    }

    /// One product of the catalog.
    pub async fn product(&self, id: &str) -> Result<Option<Product>> {
        Ok(self.products_where(Some(id)).await?.pop())
    }

    async fn products_where(&self, id: Option<&str>) -> Result<Vec<Product>> {
        let sql = "SELECT id, title, url, image_url, price, currency, category, brand, in_stock, compatible_with, tags FROM products
                   WHERE CAST($1 AS TEXT) IS NULL OR id = $1 ORDER BY id";
        with_db!(&self.db, p => {
            let rows = sqlx::query(sql).bind(id).fetch_all(p).await?;
            rows.iter().map(|r| -> Result<Product> {
                Ok(Product {
                    id: pid(r.try_get("id")?)?,
                    title: r.try_get("title")?,
                    url: r.try_get("url")?,
                    image_url: r.try_get("image_url")?,
                    price: Money::from_minor(r.try_get("price")?),
                    currency: r.try_get("currency")?,
                    category: r.try_get::<Option<String>, _>("category")?.and_then(|c| CategoryPath::parse(&c).ok()),
                    brand: r.try_get("brand")?,
                    in_stock: r.try_get("in_stock")?,
                    compatible_with: json_col::<Vec<String>>(r.try_get("compatible_with")?)?
                        .iter().filter_map(|s| ProductId::parse(s).ok()).collect(),
                    tags: json_col(r.try_get("tags")?)?,
                })
            }).collect()
        })
    }

    /// Orders that count as purchases (not cancelled or refunded), oldest first: the
    /// recommender's training data.
    pub async fn purchase_history(&self) -> Result<Vec<Order>> {
        let sql = "SELECT id, customer_id, status, created_at, completed_at, delivered_at, total, currency, items, updated_at FROM orders
                   WHERE status NOT IN ('cancelled', 'refunded') ORDER BY created_at";
        with_db!(&self.db, p => {
            let rows = sqlx::query(sql).fetch_all(p).await?;
            rows.iter().map(order_from_row).collect()
        })
    }

    /// Purchases (not cancelled or refunded) with ids after `after`, by id, at most
    /// `limit`: pages for building the model without holding every order at once.
    pub async fn purchase_page(&self, after: &str, limit: i64) -> Result<Vec<Order>> {
        let sql = "SELECT id, customer_id, status, created_at, completed_at, delivered_at, total, currency, items, updated_at FROM orders
                   WHERE id > $1 AND status NOT IN ('cancelled', 'refunded') ORDER BY id LIMIT $2";
        with_db!(&self.db, p => {
            let rows = sqlx::query(sql).bind(after).bind(limit).fetch_all(p).await?;
            rows.iter().map(order_from_row).collect()
        })
    }

    pub async fn order(&self, id: &str) -> Result<Option<Order>> {
        let sql = "SELECT id, customer_id, status, created_at, completed_at, delivered_at, total, currency, items, updated_at FROM orders WHERE id = $1";
        with_db!(&self.db, p => {
            let row = sqlx::query(sql).bind(id).fetch_optional(p).await?;
            row.as_ref().map(order_from_row).transpose()
        })
    }

    /// Recent orders, newest first (preview lists them).
    pub async fn recent_orders(&self, limit: i64) -> Result<Vec<Order>> {
        let sql = "SELECT id, customer_id, status, created_at, completed_at, delivered_at, total, currency, items, updated_at FROM orders
                   WHERE status NOT IN ('cancelled', 'refunded') ORDER BY created_at DESC LIMIT $1";
        with_db!(&self.db, p => {
            let rows = sqlx::query(sql).bind(limit).fetch_all(p).await?;
            rows.iter().map(order_from_row).collect()
        })
    }

    pub async fn customer(&self, id: &str) -> Result<Option<CustomerRow>> {
        Ok(self.customers(&[id]).await?.remove(id))
    }

    pub async fn order_context(&self, order_id: &str) -> Result<Option<OrderContext>> {
        Ok(self.order_contexts(&[order_id]).await?.remove(order_id))
    }

    /// The customer's purchases, on-site views and emails as of `now`.
    pub async fn history(
        &self,
        customer: &CustomerId,
        now: Timestamp,
        seen_since: Timestamp,
        emailed_since: Timestamp,
    ) -> Result<History> {
        let mut all = self
            .histories(&[customer.as_str()], now, seen_since, emailed_since)
            .await?;
        Ok(all.remove(customer.as_str()).unwrap_or_default())
    }

    /// `history` for many customers in three queries (a worker's claimed batch).
    pub async fn histories(
        &self,
        customers: &[&str],
        now: Timestamp,
        seen_since: Timestamp,
        emailed_since: Timestamp,
    ) -> Result<HashMap<String, History>> {
        let week_ago = Timestamp(now.0 - 7 * 86_400_000);
        let ids =
            serde_json::to_string(customers).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let sqlite = matches!(self.db, Db::Sqlite(_));
        let pick = |a: &'static str, b: &'static str| if sqlite { a } else { b };
        let mut out: HashMap<String, History> = customers
            .iter()
            .map(|c| (c.to_string(), History::default()))
            .collect();
        with_db!(&self.db, p => {
            let bought = sqlx::query(pick(BOUGHT_SQLITE, BOUGHT_PG)).bind(&ids).bind(now.0).fetch_all(p).await?;
            for r in bought {
                let h = out.entry(r.try_get("customer_id")?).or_default();
                for i in json_col::<Vec<OrderItem>>(r.try_get("items")?)? {
                    h.bought_before.insert(i.product_id);
                }
            }
            let seen = sqlx::query(pick(SEEN_SQLITE, SEEN_PG)).bind(&ids).bind(seen_since.0).bind(now.0).fetch_all(p).await?;
            for r in seen {
                if let Ok(pid) = ProductId::parse(&r.try_get::<String, _>("product_id")?) {
                    out.entry(r.try_get("customer_id")?).or_default().seen_on_site.insert(pid);
                }
            }
            let sent = sqlx::query(pick(SENT_SQLITE, SENT_PG)).bind(&ids).bind(emailed_since.0.min(week_ago.0)).fetch_all(p).await?;
            for r in sent {
                let h = out.entry(r.try_get("customer_id")?).or_default();
                let at: i64 = r.try_get("sent_at")?;
                if at >= emailed_since.0
                    && let Some(items) = r.try_get::<Option<String>, _>("items")?
                {
                    h.emailed_recently.extend(json_col::<Vec<String>>(items)?.iter().filter_map(|s| ProductId::parse(s).ok()));
                }
                if at > week_ago.0 && at <= now.0 {
                    h.sent_last_week.push(Timestamp(at));
                }
            }
            Ok(out)
        })
    }

    /// Orders with their customers (consent, unsubscribe, suppression) in two queries.
    pub async fn order_contexts(
        &self,
        order_ids: &[&str],
    ) -> Result<HashMap<String, OrderContext>> {
        let ids =
            serde_json::to_string(order_ids).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let sqlite = matches!(self.db, Db::Sqlite(_));
        let pick = |a: &'static str, b: &'static str| if sqlite { a } else { b };
        let orders: Vec<Order> = with_db!(&self.db, p => {
            let rows = sqlx::query(pick(ORDERS_BY_ID_SQLITE, ORDERS_BY_ID_PG)).bind(&ids).fetch_all(p).await?;
            rows.iter().map(order_from_row).collect::<Result<Vec<_>>>()?
        });
        let customer_ids: Vec<&str> = orders.iter().map(|o| o.customer_id.as_str()).collect();
        let customers = self.customers(&customer_ids).await?;
        Ok(orders
            .into_iter()
            .map(|order| {
                let customer = customers.get(order.customer_id.as_str()).cloned();
                (order.id.to_string(), OrderContext { order, customer })
            })
            .collect())
    }

    async fn customers(&self, ids: &[&str]) -> Result<HashMap<String, CustomerRow>> {
        let ids = serde_json::to_string(ids).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let sqlite = matches!(self.db, Db::Sqlite(_));
        let sql = if sqlite {
            CUSTOMERS_BY_ID_SQLITE
        } else {
            CUSTOMERS_BY_ID_PG
        };
        with_db!(&self.db, p => {
            let rows = sqlx::query(sql).bind(&ids).fetch_all(p).await?;
            let mut out = HashMap::with_capacity(rows.len());
            for r in rows {
                let row = CustomerRow {
                    customer: Customer {
                        id: CustomerId::parse(&r.try_get::<String, _>("id")?).map_err(StoreError::Corrupt)?,
                        email: EmailAddress::stored(r.try_get::<String, _>("email")?),
                        name: r.try_get("name")?,
                        timezone: r.try_get("timezone")?,
                        locale: r.try_get("locale")?,
                        marketing_consent: r.try_get("marketing_consent")?,
                    },
                    unsubscribed: r.try_get::<Option<i64>, _>("unsubscribed_at")?.is_some(),
                    suppressed: r.try_get::<i64, _>("suppressed")? > 0,
                };
                out.insert(row.customer.id.to_string(), row);
            }
            Ok(out)
        })
    }

    /// Customers with marketing consent who bought `product` since `since` (or all
    /// consenting customers when `product` is None), with their latest order.
    pub async fn segment(
        &self,
        product: Option<&ProductId>,
        since: Timestamp,
    ) -> Result<Vec<(CustomerId, OrderId)>> {
        let sql = "SELECT o.customer_id, MAX(o.id) AS order_id FROM orders o JOIN customers c ON c.id = o.customer_id
                   WHERE c.marketing_consent = TRUE AND o.status NOT IN ('cancelled', 'refunded') AND o.created_at >= $1
                     AND ($2 = '' OR o.items LIKE '%\"product_id\":\"' || $2 || '\"%')
                   GROUP BY o.customer_id ORDER BY o.customer_id";
        let product = product.map(|p| p.as_str().to_owned()).unwrap_or_default();
        with_db!(&self.db, p => {
            let rows = sqlx::query(sql).bind(since.0).bind(&product).fetch_all(p).await?;
            rows.iter().map(|r| -> Result<(CustomerId, OrderId)> {
                Ok((CustomerId::parse(&r.try_get::<String, _>("customer_id")?).map_err(StoreError::Corrupt)?,
                    OrderId::parse(&r.try_get::<String, _>("order_id")?).map_err(StoreError::Corrupt)?))
            }).collect()
        })
    }
}

/// The orders of a chunk in rounds of distinct ids, each with its index in the
/// caller's slice (`base` is the chunk's offset): the second record of an id goes in
/// round two, and so on, so repeats are applied in order and one statement never
/// touches a row twice (PostgreSQL refuses that).
fn rounds(chunk: &[Order], base: usize) -> Vec<Vec<(usize, &Order)>> {
    let mut seen: HashMap<&str, usize> = HashMap::with_capacity(chunk.len());
    let mut rounds: Vec<Vec<(usize, &Order)>> = Vec::new();
    for (i, o) in chunk.iter().enumerate() {
        let n = seen.entry(o.id.as_str()).or_insert(0);
        if rounds.len() <= *n {
            rounds.push(Vec::new());
        }
        rounds[*n].push((base + i, o));
        *n += 1;
    }
    rounds
}

fn order_row(o: &Order) -> serde_json::Value {
    json!({"id": o.id, "customer_id": o.customer_id, "status": o.status.as_str(), "created_at": o.created_at.0,
           "completed_at": o.completed_at.map(|t| t.0), "delivered_at": o.delivered_at.map(|t| t.0),
           "total": o.total.minor(), "currency": o.currency,
           "items": serde_json::to_string(&o.items).unwrap_or_default(),
           "updated_at": o.updated_at.map(|t| t.0)})
}

/// Sorts a written round (`stored`: id → status the upsert left, for the rows it
/// wrote) into refused records, follow-ups to schedule and orders to void.
fn settle<'a>(
    round: &[(usize, &'a Order)],
    stored: &HashMap<String, String>,
    rules: &[ScheduleRule],
) -> Result<(Vec<Kept>, Vec<serde_json::Value>, Vec<&'a str>)> {
    let (mut kept, mut schedule, mut void) = (Vec::new(), Vec::new(), Vec::new());
    for &(index, o) in round {
        let why = match stored.get(o.id.as_str()) {
            // No row back: the guard found the record older than the stored one.
            None => Some(KeptWhy::Stale {
                updated_at: o.updated_at.unwrap_or_default(),
            }),
            Some(s) if s != o.status.as_str() => Some(KeptWhy::Backwards {
                stored: OrderStatus::parse(s).map_err(StoreError::Corrupt)?,
                requested: o.status,
            }),
            Some(_) => None,
        };
        if let Some(why) = why {
            kept.push(Kept {
                index,
                order_id: o.id.clone(),
                why,
            });
        } else if o.status.is_void() {
            void.push(o.id.as_str());
        } else {
            for rule in rules {
                if let Some(due) = rule.due_at(o) {
                    schedule.push(json!({"order_id": o.id, "campaign": rule.campaign, "customer_id": o.customer_id, "due_at": due.0}));
                }
            }
        }
    }
    Ok((kept, schedule, void))
}

fn pid(s: String) -> Result<ProductId> {
    ProductId::parse(&s).map_err(StoreError::Corrupt)
}

pub(super) fn json_col<T: serde::de::DeserializeOwned>(s: String) -> Result<T> {
    serde_json::from_str(&s).map_err(|e| StoreError::Corrupt(format!("bad JSON column: {e}")))
}

pub(super) fn order_from_row<R: Row>(r: &R) -> Result<Order>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    String: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    i64: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    Option<i64>: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let status: String = r.try_get("status")?;
    Ok(Order {
        id: OrderId::parse(&r.try_get::<String, _>("id")?).map_err(StoreError::Corrupt)?,
        customer_id: CustomerId::parse(&r.try_get::<String, _>("customer_id")?)
            .map_err(StoreError::Corrupt)?,
        status: OrderStatus::parse(&status).map_err(StoreError::Corrupt)?,
        created_at: Timestamp(r.try_get("created_at")?),
        completed_at: r.try_get::<Option<i64>, _>("completed_at")?.map(Timestamp),
        delivered_at: r.try_get::<Option<i64>, _>("delivered_at")?.map(Timestamp),
        total: Money::from_minor(r.try_get("total")?),
        currency: r.try_get("currency")?,
        items: json_col(r.try_get("items")?)?,
        updated_at: r.try_get::<Option<i64>, _>("updated_at")?.map(Timestamp),
    })
}
