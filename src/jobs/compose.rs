//! From a follow-up to an email: the rules that may skip or defer it, the picks, the
//! rendered message. Shared by the worker, `recommend`, `preview` and the preview pages.

use super::Clock;
use super::policy::{cap_frees_at, quiet_until};
use crate::config::{Campaign, CapPolicy, Settings};
use crate::domain::{CampaignKey, Customer, ProductId, SkipReason};
use crate::domain::{Order, Timestamp};
use crate::mail::OutgoingEmail;
use crate::measure::token::{self, LinkKeys};
use crate::recommend::{Exclusions, Model, ModelBuilder, ModelConfig, Pick, PickRequest};
use crate::render::{
    CampaignInfo, CustomerInfo, EmailContext, LiveTemplates, OrderInfo, OrderLine, PickedItem,
    Rendered, StoreInfo,
};
use crate::store::{CustomerRow, History, OrderContext, Store, StoreError};
use crate::unsubscribe::Signer;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};

/// Everything a send needs, shared by all of a process's jobs.
#[derive(Clone)]
pub struct Engine {
    pub store: Store,
    pub settings: Arc<Settings>,
    pub model: Arc<RwLock<Arc<Model>>>,
    pub templates: LiveTemplates,
    pub signer: Signer,
    pub clock: Clock,
    /// When stock changes were last read (ms; 0 = never): see `refresh_stock`.
    pub stock_seen: Arc<AtomicI64>,
    /// Busy time per stage (claim, decide, pick, render, SMTP, record).
    pub stages: Arc<super::StageTimes>,
}

/// How often a worker reads the stock changes webhooks made (in any process).
const STOCK_REFRESH: std::time::Duration = std::time::Duration::from_secs(1);
/// Each read looks this far back before the previous one: clocks of several hosts differ
/// a little, and a change may commit after a read that started later. Re-applying a
/// change is harmless (it sets the stored value again).
const STOCK_OVERLAP: std::time::Duration = std::time::Duration::from_secs(60);

/// What the rules read for a batch: orders by id, histories by customer id.
#[derive(Debug, Default)]
pub struct Loaded {
    pub orders: HashMap<String, OrderContext>,
    pub histories: HashMap<String, History>,
}

/// A follow-up ready to go out.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub email: OutgoingEmail,
    pub rendered: Rendered,
    pub picks: Vec<Pick>,
}

/// What the rules decided for a follow-up.
#[derive(Debug)]
pub enum Decision {
    Send(Box<Prepared>),
    Skip(SkipReason),
    /// Quiet hours or the weekly cap (policy `defer`): try again at this time.
    Defer(Timestamp),
    /// The template failed to render: nothing is sent, the row waits for a fix.
    TemplateError(String),
}

/// Builds the recommendation model from the store's catalog and purchase history.
pub async fn load_model(store: &Store) -> Result<Model, StoreError> {
    let products = store.products().await?;
    let mut builder = ModelBuilder::new(&products, &ModelConfig::default());
    // Page through the history so a million orders never sit in memory at once.
    let mut after = String::new();
    loop {
        let page = store.purchase_page(&after, 20_000).await?;
        let Some(last) = page.last() else { break };
        after = last.id.to_string();
        for o in &page {
            builder.add_order(o);
        }
    }
    // Building is CPU work: keep it off the async threads that drive sends.
    tokio::task::spawn_blocking(move || builder.finish())
        .await
        .map_err(|e| StoreError::Corrupt(format!("model build panicked: {e}")))
}

/// Message-ID derived from (order, campaign): a resend after a crash carries the same.
pub fn message_id(order_id: &str, campaign: &str, from: &str) -> String {
    let mut h = Sha256::new();
    h.update(order_id.as_bytes());
    h.update([0]);
    h.update(campaign.as_bytes());
    let digest = hex::encode(&h.finalize()[..12]);
    format!("fu-{digest}@{}", crate::config::address_domain(from))
}

impl Engine {
    pub fn model(&self) -> Arc<Model> {
        self.model
            .read()
            .map(|m| Arc::clone(&m))
            .unwrap_or_else(|e| Arc::clone(&e.into_inner()))
    }

    pub fn swap_model(&self, m: Model) {
        match self.model.write() {
            Ok(mut g) => *g = Arc::new(m),
            Err(e) => *e.into_inner() = Arc::new(m),
        }
    }

    /// Applies the stock changes Shopify webhooks stored since the last read (in this
    /// process or another) to the model, at most once per `STOCK_REFRESH`, so a product
    /// that sold out is not picked until the next rebuild. Returns how many it applied.
    pub async fn refresh_stock(&self, now: Timestamp) -> Result<usize, StoreError> {
        let last = self.stock_seen.load(Ordering::SeqCst);
        if last != 0 && now.0.saturating_sub(last) < STOCK_REFRESH.as_millis() as i64 {
            return Ok(0);
        }
        let changes = self
            .store
            .stock_changes(Timestamp(last).minus(STOCK_OVERLAP))
            .await?;
        self.stock_seen.store(now.0.max(1), Ordering::SeqCst);
        let model = self.model();
        let applied = changes
            .iter()
            .filter_map(|(id, in_stock)| Some((ProductId::parse(id).ok()?, *in_stock)))
            .filter(|(id, in_stock)| model.set_in_stock(id, *in_stock))
            .count();
        Ok(applied)
    }

    /// The customer's history as the rules see it at `now`.
    pub async fn history(&self, order: &Order, now: Timestamp) -> Result<History, StoreError> {
        let l = &self.settings.limits;
        self.store
            .history(
                &order.customer_id,
                now,
                now.minus(l.seen_on_site_window),
                now.minus(l.repeat_window),
            )
            .await
    }

    /// The items `campaign` would pick for `order`, every exclusion applied.
    pub fn picks(&self, order: &Order, campaign: &Campaign, history: History) -> Vec<Pick> {
        let exclude = Exclusions {
            bought_before: history.bought_before,
            seen_on_site: history.seen_on_site,
            emailed_recently: history.emailed_recently,
        };
        let req = PickRequest {
            order,
            strategy: campaign.strategy,
            max_items: campaign.max_items,
            max_price_ratio: campaign.max_price_ratio,
            exclude: &exclude,
        };
        self.model().pick(&req)
    }

    /// Applies every rule to one follow-up at `now`.
    pub async fn decide(
        &self,
        order_id: &str,
        campaign: &CampaignKey,
        now: Timestamp,
    ) -> Result<Decision, StoreError> {
        let loaded = self.load(&[order_id], now).await?;
        let ctx = loaded.orders.get(order_id);
        let history = ctx.and_then(|c| loaded.histories.get(c.order.customer_id.as_str()));
        self.decide_loaded(None, campaign, ctx, history, now).await
    }

    /// Reads what the rules need for a batch of follow-ups in a handful of queries:
    /// the orders with their customers, and the history of each customer who may be
    /// emailed at all.
    pub async fn load(&self, order_ids: &[&str], now: Timestamp) -> Result<Loaded, StoreError> {
        self.refresh_stock(now).await?;
        let orders = self.store.order_contexts(order_ids).await?;
        let mut eligible: Vec<&str> = orders
            .values()
            .filter_map(|c| c.customer.as_ref())
            .filter(|c| c.customer.marketing_consent && !c.unsubscribed && !c.suppressed)
            .map(|c| c.customer.id.as_str())
            .collect();
        eligible.sort_unstable();
        eligible.dedup();
        let histories = if eligible.is_empty() {
            HashMap::new()
        } else {
            let l = &self.settings.limits;
            self.store
                .histories(
                    &eligible,
                    now,
                    now.minus(l.seen_on_site_window),
                    now.minus(l.repeat_window),
                )
                .await?
        };
        Ok(Loaded { orders, histories })
    }

    /// The rules for one follow-up whose order and customer history are already read.
    /// `followup_id` (the ledger row) signs the tracked links; None (a dry run) links
    /// straight to the products.
    pub async fn decide_loaded(
        &self,
        followup_id: Option<i64>,
        key: &CampaignKey,
        ctx: Option<&OrderContext>,
        history: Option<&History>,
        now: Timestamp,
    ) -> Result<Decision, StoreError> {
        let rules_started = std::time::Instant::now();
        let Some(campaign) = self.settings.campaign(key.name().as_str()) else {
            return Ok(Decision::Skip(SkipReason::CampaignRemoved));
        };
        if !campaign.enabled {
            return Ok(Decision::Skip(SkipReason::CampaignDisabled));
        }
        let Some(ctx) = ctx else {
            return Ok(Decision::Skip(SkipReason::OrderMissing));
        };
        if ctx.order.status.is_void() {
            return Ok(Decision::Skip(SkipReason::OrderCancelled));
        }
        let Some(customer) = &ctx.customer else {
            return Ok(Decision::Skip(SkipReason::UnknownCustomer));
        };
        if !customer.customer.marketing_consent {
            return Ok(Decision::Skip(SkipReason::NoConsent));
        }
        if customer.unsubscribed {
            return Ok(Decision::Skip(SkipReason::Unsubscribed));
        }
        if customer.suppressed {
            return Ok(Decision::Skip(SkipReason::Suppressed));
        }
        // The control group: decided before caps, quiet hours and picks, so that it is
        // drawn from the same customers as the recipients.
        if crate::measure::in_holdout(
            &customer.customer.id,
            &campaign.name,
            campaign.holdout_share,
        ) {
            return Ok(Decision::Skip(SkipReason::Holdout));
        }
        if let Some(q) = &self.settings.limits.quiet_hours
            && let Some(until) = quiet_until(q, self.customer_tz(customer), now)
        {
            return Ok(Decision::Defer(until));
        }
        let history = history.cloned().unwrap_or_default();
        if let Some(free) = cap_frees_at(
            &history.sent_last_week,
            self.settings.limits.max_emails_per_customer_per_week,
            now,
        ) {
            return Ok(match campaign.cap_policy {
                CapPolicy::Skip => Decision::Skip(SkipReason::FrequencyCap),
                CapPolicy::Defer => Decision::Defer(free),
            });
        }
        self.stages.since(super::Stage::Decide, rules_started);
        let started = std::time::Instant::now();
        let picks = self.picks(&ctx.order, campaign, history);
        self.stages.since(super::Stage::Pick, started);
        if picks.is_empty() {
            return Ok(Decision::Skip(SkipReason::NothingToRecommend));
        }
        let started = std::time::Instant::now();
        let composed = self.compose(&ctx.order, customer, campaign, key, picks, followup_id);
        self.stages.since(super::Stage::Render, started);
        Ok(match composed {
            Ok(p) => Decision::Send(Box::new(p)),
            // The row is held (`held`), which `status` reports.
            Err(problem) => Decision::TemplateError(problem),
        })
    }

    fn customer_tz(&self, c: &CustomerRow) -> chrono_tz::Tz {
        c.customer
            .timezone
            .as_deref()
            .and_then(|t| t.parse().ok())
            .unwrap_or(self.settings.store.timezone)
    }

    pub fn unsubscribe_url(&self, customer_id: &str) -> String {
        format!(
            "{}/unsubscribe/{}",
            self.settings.store.base_url,
            self.signer.token(customer_id, "all")
        )
    }

    /// Renders the email for `picks`; Err carries the template problem as text. `key`
    /// is the ledger's campaign column, from which (with the order) the Message-ID is
    /// derived. With the follow-up's id, the picks link through `/r/{token}` (and the
    /// open pixel is added when `attribution.open_pixel` is on).
    pub fn compose(
        &self,
        order: &Order,
        customer: &CustomerRow,
        campaign: &Campaign,
        key: &CampaignKey,
        picks: Vec<Pick>,
        followup_id: Option<i64>,
    ) -> Result<Prepared, String> {
        let s = &self.settings;
        let unsubscribe_url = self.unsubscribe_url(customer.customer.id.as_str());
        let mut ctx = self.context(
            order,
            &customer.customer,
            campaign,
            &picks,
            unsubscribe_url.clone(),
        );
        if let Some(id) = followup_id {
            self.track_links(&mut ctx, id);
        }
        let rendered = self
            .templates
            .current()
            .render(&campaign.template, &ctx)
            .map_err(|p| p.to_string())?;
        let mut headers = vec![
            (
                "List-Unsubscribe".to_owned(),
                match &s.unsubscribe.mailto {
                    Some(m) => format!(
                        "<{unsubscribe_url}>, <mailto:{m}?subject=unsubscribe%20{}>",
                        customer.customer.id
                    ),
                    None => format!("<{unsubscribe_url}>"),
                },
            ),
            (
                "List-Unsubscribe-Post".to_owned(),
                "List-Unsubscribe=One-Click".to_owned(),
            ),
            (
                "List-Id".to_owned(),
                format!(
                    "{} <{}.{}>",
                    s.store.name.replace(['<', '>', '"'], ""),
                    campaign.name,
                    s.smtp.from_domain()
                ),
            ),
        ];
        headers.push(("X-Aftercart-Campaign".to_owned(), campaign.name.to_string()));
        let email = OutgoingEmail {
            from: s.smtp.from.clone(),
            to: customer.customer.email.to_string(),
            subject: rendered.subject.clone(),
            html: rendered.html.clone(),
            text: rendered.text.clone(),
            message_id: message_id(order.id.as_str(), &key.to_string(), &s.smtp.from),
            headers,
        };
        Ok(Prepared {
            email,
            rendered,
            picks,
        })
    }
}

impl Engine {
    /// The keys tracked links are signed with (derived from the unsubscribe key).
    pub fn link_keys(&self) -> LinkKeys {
        LinkKeys::new(&self.signer)
    }

    /// Points every pick at `{store.base_url}/r/{token}` for follow-up `id`, and sets
    /// the open pixel when it is switched on.
    fn track_links(&self, ctx: &mut EmailContext, id: i64) {
        let keys = self.link_keys();
        let base = &self.settings.store.base_url;
        for item in &mut ctx.items {
            if let Ok(pid) = ProductId::parse(&item.product_id) {
                item.url = token::link_url(base, &token::sign(id, &pid, &keys));
            }
        }
        if self.settings.attribution.open_pixel {
            ctx.open_pixel_url = Some(format!(
                "{}/o/{}",
                base.trim_end_matches('/'),
                token::sign_open(id, &keys)
            ));
        }
    }

    /// The template variables for one email (docs/templates.md lists them).
    pub fn context(
        &self,
        order: &Order,
        customer: &Customer,
        campaign: &Campaign,
        picks: &[Pick],
        unsubscribe_url: String,
    ) -> EmailContext {
        let s = &self.settings.store;
        let model = self.model();
        let product_url = |id: &str, url: Option<&String>| {
            url.cloned()
                .unwrap_or_else(|| format!("{}/products/{id}", s.base_url))
        };
        EmailContext {
            store: StoreInfo {
                name: s.name.clone(),
                base_url: s.base_url.clone(),
                postal_address: s.postal_address.clone(),
                currency: s.currency.clone(),
            },
            customer: CustomerInfo::new(
                customer.id.as_str(),
                customer.name.clone(),
                customer.email.as_str(),
                customer.locale.clone().unwrap_or_else(|| s.locale.clone()),
                customer
                    .timezone
                    .clone()
                    .unwrap_or_else(|| s.timezone.name().to_owned()),
            ),
            order: OrderInfo {
                id: order.id.to_string(),
                total: order.total,
                completed_at: order.completed_at.unwrap_or(order.created_at),
                items: order
                    .items
                    .iter()
                    .map(|i| {
                        let p = model.product(&i.product_id);
                        OrderLine {
                            product_id: i.product_id.to_string(),
                            title: p
                                .map(|p| p.title.clone())
                                .unwrap_or_else(|| i.product_id.to_string()),
                            quantity: i.quantity,
                            unit_price: i.unit_price,
                            url: product_url(i.product_id.as_str(), p.and_then(|p| p.url.as_ref())),
                        }
                    })
                    .collect(),
            },
            items: picks
                .iter()
                .map(|p| PickedItem {
                    product_id: p.product_id.to_string(),
                    title: p.title.clone(),
                    price: p.price,
                    url: product_url(p.product_id.as_str(), p.url.as_ref()),
                    image_url: p.image_url.clone(),
                    reason: p.reason.clone(),
                    category: p.category.clone(),
                    brand: p.brand.clone(),
                    fallback: p.fallback,
                })
                .collect(),
            unsubscribe_url,
            campaign: CampaignInfo {
                name: campaign.name.to_string(),
                strategy: campaign.strategy.as_str().to_owned(),
            },
            preheader: None,
            open_pixel_url: None,
        }
    }
}

/// The one template watcher (worker and serve): re-reads the templates every
/// `interval`; a change that fails the check is refused
/// (the last good version keeps sending) and recorded so `status` shows it until a good
/// version is loaded.
pub fn watch_templates(e: Engine, interval: std::time::Duration) -> tokio::task::JoinHandle<()> {
    const KEY: &str = "(templates)";
    tokio::spawn(async move {
        let campaigns = e.settings.campaign_templates();
        loop {
            tokio::time::sleep(interval).await;
            let (live, c) = (e.templates.clone(), campaigns.clone());
            match tokio::task::spawn_blocking(move || live.reload(&c)).await {
                Ok(Ok(true)) => {
                    tracing::info!("templates reloaded");
                    let _ = e
                        .store
                        .set_template_error(KEY, None, Timestamp::now())
                        .await;
                }
                Ok(Ok(false)) => {}
                Ok(Err(problems)) => {
                    let text = problems
                        .iter()
                        .map(|p| p.to_string())
                        .collect::<Vec<_>>()
                        .join("; ");
                    tracing::warn!(problems = %text, "template change refused; the last good version keeps sending");
                    let _ = e
                        .store
                        .set_template_error(KEY, Some(&text), Timestamp::now())
                        .await;
                }
                Err(err) => tracing::warn!(error = %err, "template reload panicked"),
            }
        }
    })
}

impl Engine {
    /// What `campaign` would send for `order_id` now, ignoring consent, caps and quiet
    /// hours (a preview shows the email, not whether it would go out today).
    pub async fn preview(
        &self,
        order_id: &str,
        campaign: &crate::config::Campaign,
    ) -> Result<Prepared, String> {
        let ctx = self
            .store
            .order_context(order_id)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("no order {order_id:?}"))?;
        let customer = ctx
            .customer
            .ok_or_else(|| format!("order {order_id} has no known customer"))?;
        let now = self.clock.now();
        let history = self
            .history(&ctx.order, now)
            .await
            .map_err(|e| e.to_string())?;
        let picks = self.picks(&ctx.order, campaign, history);
        self.compose(
            &ctx.order,
            &customer,
            campaign,
            &CampaignKey::of(campaign.name.clone()),
            picks,
            None,
        )
    }
}
