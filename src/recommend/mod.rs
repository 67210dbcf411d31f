//! Recommendations: which products to put in a post-purchase email, and why.
//!
//! Pure: no I/O, no database, no knowledge of rendering or sending. A [`Model`] is built
//! once from the catalog and the order history ([`Model::build`] or, streaming,
//! [`ModelBuilder`]), is immutable afterwards (the worker shares it behind an `Arc` and
//! swaps it on rebuild) and answers [`Model::pick`] from short per-product candidate
//! lists computed at build time, so a pick only merges and filters a few hundred entries.
//!
//! Three strategies (see `docs/recommendations.md`):
//! - complements ("complete your setup"): catalog compatibility in either direction,
//!   then co-purchase (same order or within `copurchase_window` after it, by the same
//!   customer) scored by confidence with a minimum support and lift, then "also bought"
//!   (same customers, any time) at half weight, then a leaf-category fallback for products
//!   with little history; same-leaf items are substitutes and never complements;
//! - upgrades: customers who bought `a` and later (within `upgrade_window`) bought a pricier
//!   `b` of the same leaf category; a "popular pricier choice" fallback when data is thin,
//!   only as a real step up (≥ `step_up` × the price, a higher tier tag where both have one);
//!   never from or to a consumable (a product its buyers re-buy); up to `max_items`
//!   alternatives (the one-per-leaf rule is for the other strategies);
//! - enhance ("accessories that enhance your experience"): what owners of `a` bought from
//!   another leaf category later than the setup window (`copurchase_window`) and within
//!   `enhance_window`; never a substitute or upgrade (same leaf), never what the setup
//!   email picks for the same order.

mod build;
mod evaluate;

pub use build::ModelBuilder;
pub use evaluate::{
    CUTOFFS, EvalReport, RankScore, Ranking, Score, evaluate, evaluate_pooled, ratio_ci,
    split_times,
};

use crate::domain::{Money, Order, Product, ProductId, Strategy};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::time::Duration;

const DAY: Duration = Duration::from_secs(86_400);

/// How many complement picks of the same order the enhance strategy leaves out (what a
/// "complete your setup" email shows).
const SETUP_ITEMS: usize = 3;

/// Tunables of the model. `Default` gives the documented values.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// A purchase within this time after an order (same customer) counts as bought with it.
    pub copurchase_window: Duration,
    /// A pricier same-leaf purchase within this time after buying `a` counts as an upgrade.
    pub upgrade_window: Duration,
    /// A purchase from another leaf later than `copurchase_window` and within this time
    /// after buying `a` counts as "added later" (the enhance strategy).
    pub enhance_window: Duration,
    /// Length of each product's precomputed candidate list.
    pub top_n: usize,
    /// Co-purchase pairs need at least this many customers (compatible pairs need none).
    pub min_support: u32,
    /// Co-purchase pairs need at least this lift (bestsellers have lift ≈ 1 with everything).
    pub min_lift: f64,
    /// Mined upgrades need at least this many customers.
    pub min_upgrade_support: u32,
    /// A product bought by fewer customers than this has "little history": its complements
    /// are padded with the leaf-category fallback and its upgrades with popular pricier items.
    pub thin_history: u32,
    /// A "popular pricier choice" fallback must cost at least this × the product.
    pub step_up: f64,
    /// A product is a consumable (re-bought, never upgraded) when at least
    /// `consumable_rebuyers` of its buyers, and this share of them, bought it in two or
    /// more orders.
    pub consumable_share: f64,
    pub consumable_rebuyers: u32,
    /// Mined "added later" pairs (enhance) need at least this lift: owners of the product
    /// add it this many times as often as customers in general.
    pub min_enhance_lift: f64,
    /// A candidate reached from several products of the order scores the sum of its
    /// evidence (`true`) or its best single entry (`false`); the reason names the product
    /// with the best entry either way.
    pub sum_over_anchors: bool,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            copurchase_window: 30 * DAY,
            upgrade_window: 180 * DAY,
            enhance_window: 365 * DAY,
            top_n: 50,
            min_support: 3,
            min_lift: 0.0,
            min_upgrade_support: 2,
            thin_history: 20,
            step_up: 1.25,
            consumable_share: 0.2,
            consumable_rebuyers: 3,
            min_enhance_lift: 2.0,
            sum_over_anchors: true,
        }
    }
}

/// What the caller already knows the customer has, has seen or was sent (filled from the
/// store using the configured windows).
#[derive(Debug, Clone, Default)]
pub struct Exclusions {
    pub bought_before: HashSet<ProductId>,
    pub seen_on_site: HashSet<ProductId>,
    pub emailed_recently: HashSet<ProductId>,
}

/// One question to the model: what to recommend after `order`.
#[derive(Debug, Clone, Copy)]
pub struct PickRequest<'a> {
    pub order: &'a Order,
    pub strategy: Strategy,
    pub max_items: usize,
    /// An item may cost at most this × the order total.
    pub max_price_ratio: f64,
    pub exclude: &'a Exclusions,
}

/// One recommended item, ready for a template.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Pick {
    pub product_id: ProductId,
    pub title: String,
    pub price: Money,
    pub url: Option<String>,
    pub image_url: Option<String>,
    /// Leaf category name ("Mirrorless").
    pub category: Option<String>,
    pub brand: Option<String>,
    /// Why this item, naming the product of the order it comes from and the counts.
    pub reason: String,
    pub score: f64,
    /// A guess for thin data (a popular pricier item, what buyers of the category add),
    /// not customers doing it: wording must not claim "customers upgraded".
    pub fallback: bool,
}

/// Why a candidate is on a list; turned into words only for the items actually picked.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Why {
    /// The candidate lists the anchor in `compatible_with`; `n` customers bought it with it.
    Fits { n: u32 },
    /// The anchor lists the candidate in `compatible_with`.
    WorksWith { n: u32 },
    /// `n` customers bought the candidate with (or soon after) the anchor.
    BoughtWith { n: u32 },
    /// `n` customers who bought the anchor also bought the candidate (any time).
    AlsoBought { n: u32 },
    /// `n` customers who bought from the anchor's leaf category also bought the candidate.
    CategoryAdd { n: u32 },
    /// `n` customers upgraded from the anchor to the candidate within `months`.
    Upgraded { n: u32, months: u32 },
    /// Fallback: a pricier item of the anchor's leaf category bought by `n` customers,
    /// `up` of whom moved up to it from a cheaper item of the leaf.
    PopularPricier { n: u32, up: u32 },
    /// `n` customers who bought the anchor added the candidate later (after the setup
    /// window, within the enhance window).
    AddedLater { n: u32 },
    /// The candidate lists the anchor in `compatible_with` and `n` owners added it later.
    FitsLater { n: u32 },
    /// Popularity baseline: bought by `n` customers.
    Bestseller { n: u32 },
}

#[derive(Debug, Clone, Copy)]
struct Cand {
    idx: u32,
    score: f64,
    why: Why,
}

/// The recommendation model. Immutable after build; `Send + Sync`.
#[derive(Debug)]
pub struct Model {
    products: Vec<Product>,
    index: HashMap<ProductId, u32>,
    /// Interned full category path per product (`None`: a group of its own).
    leaf: Vec<Option<u32>>,
    /// Distinct customers who bought each product.
    buyers: Vec<u32>,
    /// Products their buyers re-buy (never upgraded from or to).
    consumable: Vec<bool>,
    /// Live stock: starts as the catalog said at build, then follows webhook changes
    /// (`set_in_stock`) until the next rebuild.
    stock: Vec<AtomicBool>,
    complements: Vec<Vec<Cand>>,
    upgrades: Vec<Vec<Cand>>,
    enhance: Vec<Vec<Cand>>,
    complement_ids: Vec<Vec<(ProductId, f64)>>,
    upgrade_ids: Vec<Vec<(ProductId, f64)>>,
    enhance_ids: Vec<Vec<(ProductId, f64)>>,
    /// "Added later" spans from this many months to this many after buying (rounded).
    later_months: (u32, u32),
    /// All products, most bought first (ties: id).
    popular: Vec<u32>,
    customers: u32,
    orders: u64,
    sum_over_anchors: bool,
}

impl Model {
    /// Builds the model from the catalog and the order history (any order; void orders
    /// are ignored; orders naming unknown products contribute their known items only).
    pub fn build(products: &[Product], orders: &[Order], cfg: &ModelConfig) -> Model {
        let mut b = ModelBuilder::new(products, cfg);
        for o in orders {
            b.add_order(o);
        }
        b.finish()
    }

    /// Applies a stock change that arrived after the build; false for a product the
    /// model does not know.
    pub fn set_in_stock(&self, id: &ProductId, in_stock: bool) -> bool {
        match self.index.get(id) {
            Some(&i) => {
                self.stock[i as usize].store(in_stock, AtomicOrdering::Relaxed);
                true
            }
            None => false,
        }
    }

    /// The product's stock as the model knows it now.
    pub fn in_stock(&self, id: &ProductId) -> Option<bool> {
        self.index
            .get(id)
            .map(|&i| self.stock[i as usize].load(AtomicOrdering::Relaxed))
    }

    pub fn product(&self, id: &ProductId) -> Option<&Product> {
        self.index.get(id).map(|&i| &self.products[i as usize])
    }

    /// Catalog size.
    pub fn product_count(&self) -> usize {
        self.products.len()
    }

    /// Non-void orders the model was built from.
    pub fn order_count(&self) -> u64 {
        self.orders
    }

    /// Distinct customers with at least one non-void order.
    pub fn customer_count(&self) -> u32 {
        self.customers
    }

    /// Whether the data shows `id` as a consumable (re-bought by a good share of its buyers).
    pub fn is_consumable(&self, id: &ProductId) -> bool {
        self.index
            .get(id)
            .is_some_and(|&i| self.consumable[i as usize])
    }

    /// The ranked complement candidates of one product, before any filter.
    pub fn complement_candidates(&self, id: &ProductId) -> &[(ProductId, f64)] {
        self.index
            .get(id)
            .map_or(&[], |&i| &self.complement_ids[i as usize])
    }

    /// The ranked upgrade candidates of one product, before any filter.
    pub fn upgrade_candidates(&self, id: &ProductId) -> &[(ProductId, f64)] {
        self.index
            .get(id)
            .map_or(&[], |&i| &self.upgrade_ids[i as usize])
    }

    /// The ranked enhance candidates of one product, before any filter.
    pub fn enhance_candidates(&self, id: &ProductId) -> &[(ProductId, f64)] {
        self.index
            .get(id)
            .map_or(&[], |&i| &self.enhance_ids[i as usize])
    }

    /// The items to recommend after `req.order`, best first, with every rule applied.
    pub fn pick(&self, req: &PickRequest) -> Vec<Pick> {
        let anchors = self.anchors(req.order);
        let lists = match req.strategy {
            Strategy::Complements => &self.complements,
            Strategy::Upgrades => &self.upgrades,
            Strategy::Enhance => &self.enhance,
        };
        // Enhance never repeats what the setup email picks for the same order (the
        // emails actually sent are excluded by the caller through `emailed_recently`).
        let setup: Vec<ProductId> = if req.strategy == Strategy::Enhance {
            self.pick(&PickRequest {
                strategy: Strategy::Complements,
                max_items: SETUP_ITEMS,
                ..*req
            })
            .into_iter()
            .map(|p| p.product_id)
            .collect()
        } else {
            Vec::new()
        };
        // Per candidate over all items of the order: the sum of the evidence (or the best
        // entry); the reason names the product of the best entry with its true count.
        let mut merged: Vec<(u32, Cand)> = Vec::with_capacity(anchors.len() * 50);
        for &a in &anchors {
            merged.extend(lists[a as usize].iter().map(|c| (a, *c)));
        }
        merged.sort_unstable_by(|x, y| {
            x.1.idx
                .cmp(&y.1.idx)
                .then(y.1.score.total_cmp(&x.1.score))
                .then(self.id(x.0).cmp(self.id(y.0)))
        });
        if self.sum_over_anchors {
            // The first entry of each run is the best: it keeps its anchor and reason.
            let mut out: Vec<(u32, Cand)> = Vec::with_capacity(merged.len());
            for e in merged {
                match out.last_mut() {
                    Some(last) if last.1.idx == e.1.idx => last.1.score += e.1.score,
                    _ => out.push(e),
                }
            }
            merged = out;
        } else {
            merged.dedup_by_key(|x| x.1.idx);
        }
        let ranked: Vec<(u32, Cand)> = merged
            .into_iter()
            .filter(|(_, c)| self.allowed(c.idx, req) && !setup.contains(self.id(c.idx)))
            .collect();
        self.select(ranked, req.max_items, req.strategy != Strategy::Upgrades)
    }

    /// Popularity baseline: the most-bought products, with the same rules as [`pick`].
    ///
    /// [`pick`]: Model::pick
    pub fn popular(&self, req: &PickRequest) -> Vec<Pick> {
        let mut ranked = Vec::new();
        let mut leaves_seen = HashSet::new();
        for &p in &self.popular {
            if self.buyers[p as usize] == 0 {
                break;
            }
            if !self.allowed(p, req) {
                continue;
            }
            let n = self.buyers[p as usize];
            ranked.push((
                p,
                Cand {
                    idx: p,
                    score: f64::from(n) / f64::from(self.customers.max(1)),
                    why: Why::Bestseller { n },
                },
            ));
            // Enough to fill max_items distinct leaves plus brand-tie alternatives.
            if let Some(l) = self.leaf[p as usize] {
                leaves_seen.insert(l);
            }
            if leaves_seen.len() > req.max_items && ranked.len() > 4 * req.max_items {
                break;
            }
        }
        self.select(ranked, req.max_items, req.strategy != Strategy::Upgrades)
    }

    fn id(&self, i: u32) -> &ProductId {
        &self.products[i as usize].id
    }

    /// Known products of the order, deduplicated, in id order.
    fn anchors(&self, order: &Order) -> Vec<u32> {
        let mut a: Vec<u32> = order
            .items
            .iter()
            .filter_map(|it| self.index.get(&it.product_id).copied())
            .collect();
        a.sort_unstable();
        a.dedup();
        a
    }

    /// Every per-item rule of SPEC §3.
    fn allowed(&self, idx: u32, req: &PickRequest) -> bool {
        let p = &self.products[idx as usize];
        let max_price = req.max_price_ratio * req.order.total.minor() as f64;
        !req.order.items.iter().any(|it| it.product_id == p.id)
            && self.stock[idx as usize].load(AtomicOrdering::Relaxed)
            && (p.price.minor() as f64) <= max_price
            && !req.exclude.bought_before.contains(&p.id)
            && !req.exclude.seen_on_site.contains(&p.id)
            && !req.exclude.emailed_recently.contains(&p.id)
    }

    /// Takes ranked, allowed candidates (any order) to at most `max_items` picks, one per
    /// leaf category when `one_per_leaf`, preferring a new brand among candidates whose
    /// scores tie.
    fn select(
        &self,
        mut ranked: Vec<(u32, Cand)>,
        max_items: usize,
        one_per_leaf: bool,
    ) -> Vec<Pick> {
        ranked.sort_by(|x, y| {
            y.1.score
                .total_cmp(&x.1.score)
                .then(self.id(x.1.idx).cmp(self.id(y.1.idx)))
        });
        let mut used = vec![false; ranked.len()];
        let mut leaves: Vec<u32> = Vec::new();
        let mut brands: Vec<&str> = Vec::new();
        let mut out = Vec::new();
        let leaf_free = |i: usize, leaves: &[u32]| match self.leaf[ranked[i].1.idx as usize] {
            Some(l) if one_per_leaf => !leaves.contains(&l),
            _ => true,
        };
        while out.len() < max_items {
            let Some(first) = (0..ranked.len()).find(|&i| !used[i] && leaf_free(i, &leaves)) else {
                break;
            };
            let top = ranked[first].1.score;
            let chosen = (first..ranked.len())
                .take_while(|&i| (ranked[i].1.score - top).abs() < 1e-12)
                .filter(|&i| !used[i] && leaf_free(i, &leaves))
                .find(|&i| {
                    self.products[ranked[i].1.idx as usize]
                        .brand
                        .as_deref()
                        .is_none_or(|b| !brands.contains(&b))
                })
                .unwrap_or(first);
            used[chosen] = true;
            let (anchor, c) = ranked[chosen];
            let p = &self.products[c.idx as usize];
            if let Some(l) = self.leaf[c.idx as usize] {
                leaves.push(l);
            }
            if let Some(b) = p.brand.as_deref() {
                brands.push(b);
            }
            out.push(Pick {
                product_id: p.id.clone(),
                title: p.title.clone(),
                price: p.price,
                url: p.url.clone(),
                image_url: p.image_url.clone(),
                category: p.category.as_ref().map(|c| c.leaf().to_owned()),
                brand: p.brand.clone(),
                reason: self.reason(anchor, c.why),
                score: c.score,
                fallback: matches!(c.why, Why::PopularPricier { .. } | Why::CategoryAdd { .. }),
            });
        }
        out
    }

    /// "1 to 12 months", the span "added later" counts.
    fn later_span(&self) -> String {
        let (lo, hi) = self.later_months;
        if lo == hi {
            format!("{lo} {}", if lo == 1 { "month" } else { "months" })
        } else {
            format!("{lo} to {hi} months")
        }
    }

    fn reason(&self, anchor: u32, why: Why) -> String {
        let a = &self.products[anchor as usize];
        let leaf = a.category.as_ref().map_or("its category", |c| c.leaf());
        let customers = |n: u32| {
            if n == 1 {
                "1 customer".to_owned()
            } else {
                format!("{n} customers")
            }
        };
        match why {
            Why::Fits { n } if n >= 2 => format!(
                "fits your {} (compatible accessory); {} bought them together",
                a.title,
                customers(n)
            ),
            Why::Fits { .. } => format!("fits your {} (compatible accessory)", a.title),
            Why::WorksWith { n } if n >= 2 => format!(
                "works with your {} (listed as compatible); {} bought them together",
                a.title,
                customers(n)
            ),
            Why::WorksWith { .. } => {
                format!("works with your {} (listed as compatible)", a.title)
            }
            Why::BoughtWith { n } => format!("bought with the {} by {}", a.title, customers(n)),
            Why::AlsoBought { n } => format!(
                "{} who bought the {} also bought this",
                customers(n),
                a.title
            ),
            Why::CategoryAdd { n } => format!(
                "{} who bought {} like your {} added this",
                customers(n),
                leaf,
                a.title
            ),
            Why::Upgraded { n, months } => format!(
                "{} upgraded from the {} to this within {}",
                customers(n),
                a.title,
                if months == 1 {
                    "1 month".to_owned()
                } else {
                    format!("{months} months")
                }
            ),
            Why::PopularPricier { n, up: 0 } => format!(
                "a popular pricier choice in {}, a step up from your {} (bought by {})",
                leaf,
                a.title,
                customers(n)
            ),
            Why::PopularPricier { n, up } => format!(
                "a popular pricier choice in {}, a step up from your {} (bought by {}; {} moved up to it from a cheaper one)",
                leaf,
                a.title,
                customers(n),
                up
            ),
            Why::AddedLater { n } => format!(
                "{} who bought the {} added this {} later",
                customers(n),
                a.title,
                self.later_span()
            ),
            Why::FitsLater { n } => format!(
                "fits your {} (compatible accessory); {} added it {} after buying",
                a.title,
                if n == 1 {
                    "1 owner".to_owned()
                } else {
                    format!("{n} owners")
                },
                self.later_span()
            ),
            Why::Bestseller { n } => format!("one of our bestsellers, bought by {}", customers(n)),
        }
    }
}

#[cfg(test)]
mod tests;
