//! What measuring reads and writes: hits on tracked links (`clicks`), and the four
//! queries that fill [`ReportInput`] (documented in `measure::input`).

use super::catalog::{json_col, order_from_row};
use super::{Db, Result, Store, StoreError, with_db};
use crate::domain::{CampaignKey, CampaignName, CustomerId, OrderId, ProductId, Timestamp};
use crate::measure::token::{self, HitKind, Method, Target};
use crate::measure::{ClickFact, FollowupFact, OrderFact, Outcome, ReportInput, UnsubscribeFact};
use sqlx::Row;

/// What a tracked link needs to know about its follow-up and product.
#[derive(Debug, Clone)]
pub struct LinkTarget {
    /// The campaign (without a trigger's `#id`), for the UTM tags.
    pub campaign: String,
    /// When the email was handed to the relay (None while not recorded).
    pub sent_at: Option<Timestamp>,
    /// The catalog URL of the product (None when the product or its URL is unknown).
    pub product_url: Option<String>,
}

/// One hit to record (see [`Store::record_hit`]).
#[derive(Debug, Clone)]
pub struct Hit<'a> {
    pub followup_id: i64,
    /// None for the open pixel (stored as '').
    pub product: Option<&'a ProductId>,
    pub method: Method,
    pub at: Timestamp,
    pub sent_at: Option<Timestamp>,
    /// A short hash of the client, never its address.
    pub source: &'a str,
}

// The follow-ups a report covers (query 1 of measure::input), reused as a subquery; a
// macro so that every query stays one constant string.
macro_rules! in_period {
    () => {
        "due_at >= $1 AND due_at < $2 AND (state = 'sent' OR (state = 'skipped' AND reason = 'holdout'))"
    };
}
const FOLLOWUPS_SQL: &str = concat!(
    "SELECT id, order_id, customer_id, campaign, due_at, state, sent_at, items FROM followups WHERE ",
    in_period!(),
    " ORDER BY id"
);
const CLICKS_SQL: &str = concat!(
    "SELECT followup_id, product_id, at, kind FROM clicks WHERE product_id <> ''
     AND followup_id IN (SELECT id FROM followups WHERE ",
    in_period!(),
    ") ORDER BY id"
);
const ORDERS_SQL: &str = concat!(
    "SELECT id, customer_id, status, created_at, completed_at, delivered_at, total, currency, items, updated_at FROM orders
     WHERE customer_id IN (SELECT customer_id FROM followups WHERE ",
    in_period!(),
    ") AND created_at >= $1 ORDER BY created_at, id"
);
const UNSUBSCRIBES_SQL: &str = "SELECT id, unsubscribed_at FROM customers WHERE unsubscribed_at >= $1 AND unsubscribed_at < $2 ORDER BY id";

fn corrupt(e: String) -> StoreError {
    StoreError::Corrupt(e)
}

impl Store {
    /// The follow-up a valid token names and its product's URL; None when the follow-up
    /// does not exist (the link answers 404 and records nothing).
    pub async fn link_target(
        &self,
        followup_id: i64,
        product: Option<&ProductId>,
    ) -> Result<Option<LinkTarget>> {
        let sql =
            "SELECT f.campaign, f.sent_at, (SELECT p.url FROM products p WHERE p.id = $2) AS url
                   FROM followups f WHERE f.id = $1";
        let pid = product.map(ProductId::as_str).unwrap_or("");
        with_db!(&self.db, p => {
            let row = sqlx::query(sql).bind(followup_id).bind(pid).fetch_optional(p).await?;
            row.map(|r| -> Result<LinkTarget> {
                let campaign: String = r.try_get("campaign")?;
                let key = CampaignKey::parse(&campaign).map_err(StoreError::Corrupt)?;
                Ok(LinkTarget {
                    campaign: key.name().to_string(),
                    sent_at: r.try_get::<Option<i64>, _>("sent_at")?.map(Timestamp),
                    product_url: r.try_get("url")?,
                })
            }).transpose()
        })
    }

    /// Records one hit, classified against the token's last counted hit
    /// ([`token::classify`]): the read and the insert are one critical section (the
    /// write gate and `BEGIN IMMEDIATE` on SQLite, an advisory lock on the follow-up on PostgreSQL), so two
    /// simultaneous clicks of the same link count once.
    pub async fn record_hit(&self, hit: &Hit<'_>) -> Result<HitKind> {
        let (target, pid, counted) = match hit.product {
            Some(p) => (Target::Link, p.as_str(), HitKind::Click),
            None => (Target::Pixel, "", HitKind::Open),
        };
        let last_sql =
            "SELECT MAX(at) FROM clicks WHERE followup_id = $1 AND product_id = $2 AND kind = $3";
        let insert = "INSERT INTO clicks (followup_id, product_id, at, kind, source) VALUES ($1, $2, $3, $4, $5)";
        // The read, the verdict and the insert, in whichever engine's transaction.
        macro_rules! classify_and_insert {
            ($tx:ident) => {{
                let last: Option<i64> = sqlx::query_scalar(last_sql)
                    .bind(hit.followup_id)
                    .bind(pid)
                    .bind(counted.as_str())
                    .fetch_one(&mut *$tx)
                    .await?;
                let kind =
                    token::classify(target, hit.method, hit.at, hit.sent_at, last.map(Timestamp));
                sqlx::query(insert)
                    .bind(hit.followup_id)
                    .bind(pid)
                    .bind(hit.at.0)
                    .bind(kind.as_str())
                    .bind(hit.source)
                    .execute(&mut *$tx)
                    .await?;
                $tx.commit().await?;
                Ok(kind)
            }};
        }
        let _turn = self.write_turn().await;
        match &self.db {
            Db::Sqlite(p) => {
                // IMMEDIATE takes the write lock first: another process (a second
                // `serve`) waits instead of reading the same "last click".
                let mut tx = p.begin_with("BEGIN IMMEDIATE").await?;
                classify_and_insert!(tx)
            }
            Db::Postgres(p) => {
                let mut tx = p.begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(hit.followup_id)
                    .execute(&mut *tx)
                    .await?;
                classify_and_insert!(tx)
            }
        }
    }

    /// Counted hits (`click` + `open` kinds), for `/metrics`: kind → n.
    pub async fn hit_counts(&self) -> Result<Vec<(String, i64)>> {
        with_db!(&self.db, p => {
            let rows = sqlx::query("SELECT kind, COUNT(*) AS n FROM clicks GROUP BY kind ORDER BY kind").fetch_all(p).await?;
            rows.iter().map(|r| Ok((r.try_get("kind")?, r.try_get("n")?))).collect()
        })
    }

    /// Everything a report from `since` to `now` is computed from: the four queries of
    /// `measure::input`, bound parameters only.
    pub async fn report_input(&self, since: Timestamp, now: Timestamp) -> Result<ReportInput> {
        with_db!(&self.db, p => {
            let mut input = ReportInput::default();
            for r in sqlx::query(FOLLOWUPS_SQL).bind(since.0).bind(now.0).fetch_all(p).await? {
                let state: String = r.try_get("state")?;
                let outcome = match (state.as_str(), r.try_get::<Option<i64>, _>("sent_at")?) {
                    ("sent", Some(at)) => Outcome::Sent { at: Timestamp(at) },
                    ("sent", None) => return Err(corrupt("a sent follow-up without sent_at".into())),
                    _ => Outcome::Holdout,
                };
                let campaign: String = r.try_get("campaign")?;
                let key = CampaignKey::parse(&campaign).map_err(corrupt)?;
                let base = key.name().as_str();
                let items: Option<String> = r.try_get("items")?;
                let picked: Vec<String> = match items {
                    Some(s) => json_col(s)?,
                    None => Vec::new(),
                };
                input.followups.push(FollowupFact {
                    id: r.try_get("id")?,
                    order_id: OrderId::parse(&r.try_get::<String, _>("order_id")?).map_err(corrupt)?,
                    customer: CustomerId::parse(&r.try_get::<String, _>("customer_id")?).map_err(corrupt)?,
                    campaign: CampaignName::parse(base).map_err(corrupt)?,
                    due_at: Timestamp(r.try_get("due_at")?),
                    outcome,
                    picked: picked.iter().map(|s| ProductId::parse(s)).collect::<Result<_, _>>().map_err(corrupt)?,
                });
            }
            for r in sqlx::query(CLICKS_SQL).bind(since.0).bind(now.0).fetch_all(p).await? {
                input.clicks.push(ClickFact {
                    followup_id: r.try_get("followup_id")?,
                    product_id: ProductId::parse(&r.try_get::<String, _>("product_id")?).map_err(corrupt)?,
                    at: Timestamp(r.try_get("at")?),
                    kind: HitKind::parse(&r.try_get::<String, _>("kind")?).map_err(corrupt)?,
                });
            }
            for r in sqlx::query(ORDERS_SQL).bind(since.0).bind(now.0).fetch_all(p).await? {
                let o = order_from_row(&r)?;
                input.orders.push(OrderFact {
                    id: o.id,
                    customer: o.customer_id,
                    placed_at: o.created_at,
                    status: o.status,
                    total: o.total,
                    items: o.items,
                });
            }
            for r in sqlx::query(UNSUBSCRIBES_SQL).bind(since.0).bind(now.0).fetch_all(p).await? {
                input.unsubscribes.push(UnsubscribeFact {
                    customer: CustomerId::parse(&r.try_get::<String, _>("id")?).map_err(corrupt)?,
                    at: Timestamp(r.try_get("unsubscribed_at")?),
                });
            }
            Ok(input)
        })
    }
}
