//! Building a [`Model`]: counting co-purchases and upgrades per customer, then keeping
//! each product's best `top_n` candidates.

use super::{Cand, Model, ModelConfig, Why};
use crate::domain::{Order, Product, ProductId};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicBool;

/// Streams orders into a model without holding them: a million orders take a few tens of
/// MB here (customer index, time and interned items per order).
#[derive(Debug)]
pub struct ModelBuilder {
    cfg: ModelConfig,
    products: Vec<Product>,
    index: HashMap<ProductId, u32>,
    leaf: Vec<Option<u32>>,
    leaf_count: usize,
    customers: HashMap<String, u32>,
    /// Per kept order: customer, purchase time (ms), end offset into `items`.
    orders: Vec<(u32, i64, u32)>,
    items: Vec<u32>,
}

impl ModelBuilder {
    pub fn new(products: &[Product], cfg: &ModelConfig) -> Self {
        let mut index = HashMap::with_capacity(products.len());
        let mut kept: Vec<Product> = Vec::with_capacity(products.len());
        for p in products {
            // A later duplicate id replaces the earlier record, as an import upsert would.
            match index.get(&p.id) {
                Some(&i) => kept[i as usize] = p.clone(),
                None => {
                    index.insert(p.id.clone(), kept.len() as u32);
                    kept.push(p.clone());
                }
            }
        }
        let mut leaves: HashMap<&str, u32> = HashMap::new();
        let leaf = kept
            .iter()
            .map(|p| {
                p.category.as_ref().map(|c| {
                    let n = leaves.len() as u32;
                    *leaves.entry(c.as_str()).or_insert(n)
                })
            })
            .collect();
        let leaf_count = leaves.len();
        Self {
            cfg: cfg.clone(),
            products: kept,
            index,
            leaf,
            leaf_count,
            customers: HashMap::new(),
            orders: Vec::new(),
            items: Vec::new(),
        }
    }

    /// Adds one order; void orders and unknown products are ignored.
    pub fn add_order(&mut self, o: &Order) {
        if o.status.is_void() {
            return;
        }
        let start = self.items.len();
        for it in &o.items {
            if let Some(&i) = self.index.get(&it.product_id)
                && !self.items[start..].contains(&i)
            {
                self.items.push(i);
            }
        }
        if self.items.len() == start {
            return;
        }
        let n = self.customers.len() as u32;
        let c = match self.customers.get(o.customer_id.as_str()) {
            Some(&c) => c,
            None => {
                self.customers.insert(o.customer_id.as_str().to_owned(), n);
                n
            }
        };
        let t = o.completed_at.unwrap_or(o.created_at).millis();
        self.orders.push((c, t, self.items.len() as u32));
    }

    pub fn finish(mut self) -> Model {
        let np = self.products.len();
        let nl = self.leaf_count;
        let cfg = &self.cfg;
        let win_c = cfg.copurchase_window.as_millis() as i64;
        let win_u = cfg.upgrade_window.as_millis() as i64;
        let win_e = cfg.enhance_window.as_millis() as i64;
        let n_orders = self.orders.len();
        let n_customers = self.customers.len() as u32;
        // Free the customer-id strings before the counting peak.
        self.customers = HashMap::new();
        let items_of = |k: usize| {
            let s = if k == 0 {
                0
            } else {
                self.orders[k - 1].2 as usize
            };
            &self.items[s..self.orders[k].2 as usize]
        };

        let mut by_customer: Vec<u32> = (0..n_orders as u32).collect();
        by_customer
            .sort_unstable_by_key(|&k| (self.orders[k as usize].0, self.orders[k as usize].1, k));

        let mut buyers = vec![0u32; np];
        let mut rebuyers = vec![0u32; np];
        let mut leaf_buyers = vec![0u32; nl];
        let mut comp = PairCount::new(np, np);
        let mut ever = PairCount::new(np, np);
        let mut cat = PairCount::new(nl, np);
        let mut later = PairCount::new(np, np);
        let mut upg: HashMap<u64, (u32, i64)> = HashMap::new();

        let mut bought: Vec<u32> = Vec::new();
        let mut pairs: Vec<u64> = Vec::new();
        let mut cat_pairs: Vec<u64> = Vec::new();
        let mut up_pairs: Vec<(u64, i64)> = Vec::new();
        let mut later_pairs: Vec<u64> = Vec::new();
        let price = |i: u32| self.products[i as usize].price;
        let leaf = &self.leaf;
        for group in
            by_customer.chunk_by(|&x, &y| self.orders[x as usize].0 == self.orders[y as usize].0)
        {
            bought.clear();
            pairs.clear();
            cat_pairs.clear();
            up_pairs.clear();
            later_pairs.clear();
            for (gi, &oi) in group.iter().enumerate() {
                let t0 = self.orders[oi as usize].1;
                let first = items_of(oi as usize);
                bought.extend_from_slice(first);
                for (gj, &oj) in group.iter().enumerate().skip(gi) {
                    let dt = self.orders[oj as usize].1 - t0;
                    if dt > win_c.max(win_u).max(win_e) {
                        break;
                    }
                    let later = items_of(oj as usize);
                    for &a in first {
                        for &b in later {
                            if a == b {
                                continue;
                            }
                            let same_leaf =
                                leaf[a as usize].is_some() && leaf[a as usize] == leaf[b as usize];
                            if dt <= win_c && !same_leaf {
                                pairs.push(key(a, b));
                                if let Some(l) = leaf[a as usize] {
                                    cat_pairs.push(key(l, b));
                                }
                            }
                            if gj > gi && dt > win_c && dt <= win_e && !same_leaf {
                                later_pairs.push(key(a, b));
                            }
                            if gj > gi && dt <= win_u && same_leaf && price(b) > price(a) {
                                up_pairs.push((key(a, b), dt));
                            }
                        }
                    }
                }
            }
            // Each pattern counts once per customer: a customer re-ordering a consumable
            // ten times is one customer, not ten.
            bought.sort_unstable();
            // Items are distinct within an order: a run is a product re-bought later.
            for run in bought.chunk_by(|x, y| x == y) {
                if run.len() > 1 {
                    rebuyers[run[0] as usize] += 1;
                }
            }
            bought.dedup();
            for &p in &bought {
                buyers[p as usize] += 1;
            }
            // Bought by the same customer at any time, either order.
            for &a in &bought {
                for &b in &bought {
                    let same_leaf =
                        leaf[a as usize].is_some() && leaf[a as usize] == leaf[b as usize];
                    if a != b && !same_leaf {
                        ever.add(key(a, b));
                    }
                }
            }
            let mut ls: Vec<u32> = bought.iter().filter_map(|&p| leaf[p as usize]).collect();
            ls.sort_unstable();
            ls.dedup();
            for l in ls {
                leaf_buyers[l as usize] += 1;
            }
            pairs.sort_unstable();
            pairs.dedup();
            for &k in &pairs {
                comp.add(k);
            }
            cat_pairs.sort_unstable();
            cat_pairs.dedup();
            for &k in &cat_pairs {
                cat.add(k);
            }
            later_pairs.sort_unstable();
            later_pairs.dedup();
            for &k in &later_pairs {
                later.add(k);
            }
            // Keep each customer's first (shortest) delay per pair.
            up_pairs.sort_unstable();
            up_pairs.dedup_by_key(|x| x.0);
            for &(k, dt) in &up_pairs {
                let e = upg.entry(k).or_insert((0, 0));
                e.0 += 1;
                e.1 = e.1.max(dt);
            }
        }
        drop(by_customer);

        let comp_rows = comp.rows();
        let ever_rows = ever.rows();
        let cat_rows = cat.rows();
        let later_rows = later.rows();
        let mut upg_rows: Vec<Vec<(u32, u32, i64)>> = vec![Vec::new(); np];
        // Customers who moved up to each product from any cheaper item of its leaf.
        let mut upgraded_to = vec![0u32; np];
        for (k, (n, dt)) in upg {
            upg_rows[(k >> 32) as usize].push((k as u32, n, dt));
            upgraded_to[(k as u32) as usize] += n;
        }

        // Catalog compatibility, both directions.
        let mut fits: Vec<Vec<u32>> = vec![Vec::new(); np]; // fits[a]: accessories listing a
        let mut works: Vec<Vec<u32>> = vec![Vec::new(); np]; // works[a]: what a lists
        for (b, p) in self.products.iter().enumerate() {
            for target in &p.compatible_with {
                if let Some(&a) = self.index.get(target)
                    && a as usize != b
                {
                    fits[a as usize].push(b as u32);
                    works[b].push(a);
                }
            }
        }

        let n_all = f64::from(n_customers.max(1));
        let consumable: Vec<bool> = (0..np)
            .map(|p| {
                rebuyers[p] >= cfg.consumable_rebuyers
                    && f64::from(rebuyers[p]) >= cfg.consumable_share * f64::from(buyers[p])
            })
            .collect();
        let mut complements = Vec::with_capacity(np);
        let mut upgrades = Vec::with_capacity(np);
        let mut enhance = Vec::with_capacity(np);
        for a in 0..np as u32 {
            let ai = a as usize;
            let na = f64::from(buyers[ai].max(1));
            let same_leaf = |b: u32| leaf[ai].is_some() && leaf[ai] == leaf[b as usize];
            let counts: HashMap<u32, u32> = comp_rows[ai].iter().copied().collect();
            let together = |b: u32| counts.get(&b).copied().unwrap_or(0);
            let mut best: HashMap<u32, Cand> = HashMap::new();
            let mut offer = |c: Cand| {
                let e = best.entry(c.idx).or_insert(c);
                if c.score > e.score {
                    *e = c;
                }
            };
            // Scores: the best evidence of each kind wins per candidate.
            // Catalog (1–2): the catalog says they fit; co-purchases order them.
            for &b in &fits[ai] {
                if !same_leaf(b) {
                    let n = together(b);
                    offer(Cand {
                        idx: b,
                        score: 1.0 + f64::from(n) / na,
                        why: Why::Fits { n },
                    });
                }
            }
            for &b in &works[ai] {
                if !same_leaf(b) {
                    let n = together(b);
                    offer(Cand {
                        idx: b,
                        score: 1.0 + f64::from(n) / na,
                        why: Why::WorksWith { n },
                    });
                }
            }
            // Bought with it (0–1) (same order or within the window after), scored
            // by confidence P(b|a) but only with enough support and lift: a bestseller
            // bought by everyone has lift ≈ 1 with everything and is left out.
            for &(b, n) in &comp_rows[ai] {
                let lift = f64::from(n) * n_all / (na * f64::from(buyers[b as usize].max(1)));
                if n >= cfg.min_support && lift >= cfg.min_lift {
                    offer(Cand {
                        idx: b,
                        score: f64::from(n) / na,
                        why: Why::BoughtWith { n },
                    });
                }
            }
            // Also bought (0–0.5): by the same customers at any time, either order; weaker
            // than "with", but it carries the long-run taste of a customer base.
            for &(b, n) in &ever_rows[ai] {
                let lift = f64::from(n) * n_all / (na * f64::from(buyers[b as usize].max(1)));
                if n >= cfg.min_support && lift >= cfg.min_lift {
                    offer(Cand {
                        idx: b,
                        score: 0.5 * f64::from(n) / na,
                        why: Why::AlsoBought { n },
                    });
                }
            }
            // Category fallback (0–0.25), little history only: what buyers of this leaf category add from other categories.
            if buyers[ai] < cfg.thin_history
                && let Some(l) = leaf[ai]
            {
                let nl = f64::from(leaf_buyers[l as usize].max(1));
                for &(b, n) in &cat_rows[l as usize] {
                    let lift = f64::from(n) * n_all / (nl * f64::from(buyers[b as usize].max(1)));
                    if b != a && !same_leaf(b) && n >= cfg.min_support && lift >= cfg.min_lift {
                        offer(Cand {
                            idx: b,
                            score: 0.25 * f64::from(n) / nl,
                            why: Why::CategoryAdd { n },
                        });
                    }
                }
            }
            complements.push(self.top(best.into_values().collect()));

            // Upgrades: mined sequences first (score = count + confidence, so the count
            // ranks and the confidence breaks ties).
            // Consumables are re-bought, not upgraded: none from one, none to one.
            let mut ups: Vec<Cand> = upg_rows[ai]
                .iter()
                .filter(|&&(b, n, _)| {
                    n >= cfg.min_upgrade_support && !consumable[ai] && !consumable[b as usize]
                })
                .map(|&(b, n, dt)| Cand {
                    idx: b,
                    score: f64::from(n) + f64::from(n) / na,
                    why: Why::Upgraded {
                        n,
                        months: months(dt),
                    },
                })
                .collect();
            // Thin data: pad with the most-bought pricier items of the same leaf (< 0.5),
            // counting purchases that were upgrades first: a product people move up to
            // is a better guess than one bought as a first choice.
            // Only a real step up: clearly pricier and, where both carry a tier tag, a
            // higher tier. Brand is no condition: customers move up across brands.
            if (ups.is_empty() || buyers[ai] < cfg.thin_history)
                && leaf[ai].is_some()
                && !consumable[ai]
            {
                let pa = self.products[ai].price;
                let min_price = cfg.step_up * pa.minor() as f64;
                let ta = tier(&self.products[ai]);
                let mut known: HashSet<u32> = ups.iter().map(|c| c.idx).collect();
                for b in 0..np as u32 {
                    let nb = buyers[b as usize];
                    let pb = &self.products[b as usize];
                    if same_leaf(b)
                        && b != a
                        && pb.price > pa
                        && pb.price.minor() as f64 >= min_price
                        && ta.is_none_or(|x| tier(pb).is_none_or(|y| y > x))
                        && !consumable[b as usize]
                        && nb > 0
                        && known.insert(b)
                    {
                        let up = upgraded_to[b as usize];
                        let x = f64::from(up) + f64::from(nb) / f64::from(nb + 1);
                        ups.push(Cand {
                            idx: b,
                            score: 0.5 * x / (x + 1.0),
                            why: Why::PopularPricier { n: nb, up },
                        });
                    }
                }
            }
            upgrades.push(self.top(ups));

            // Enhance: other-leaf items owners added after the setup window. Catalog
            // accessories that owners added later first (1–2), then mined "added later"
            // pairs with enough support and more often than chance (0–1).
            let later_n: HashMap<u32, u32> = later_rows[ai].iter().copied().collect();
            let mut add: HashMap<u32, Cand> = HashMap::new();
            for &(b, n) in &later_rows[ai] {
                let lift = f64::from(n) * n_all / (na * f64::from(buyers[b as usize].max(1)));
                // Consumables are re-bought supplies, not accessories, on either side.
                if !same_leaf(b)
                    && !consumable[ai]
                    && !consumable[b as usize]
                    && n >= cfg.min_support
                    && lift >= cfg.min_enhance_lift
                {
                    add.insert(
                        b,
                        Cand {
                            idx: b,
                            score: f64::from(n) / na,
                            why: Why::AddedLater { n },
                        },
                    );
                }
            }
            for &b in &fits[ai] {
                let n = later_n.get(&b).copied().unwrap_or(0);
                if !same_leaf(b) && n > 0 {
                    add.insert(
                        b,
                        Cand {
                            idx: b,
                            score: 1.0 + f64::from(n) / na,
                            why: Why::FitsLater { n },
                        },
                    );
                }
            }
            enhance.push(self.top(add.into_values().collect()));
        }

        let ids = |lists: &Vec<Vec<Cand>>| -> Vec<Vec<(ProductId, f64)>> {
            lists
                .iter()
                .map(|l| {
                    l.iter()
                        .map(|c| (self.products[c.idx as usize].id.clone(), c.score))
                        .collect()
                })
                .collect()
        };
        let complement_ids = ids(&complements);
        let upgrade_ids = ids(&upgrades);
        let enhance_ids = ids(&enhance);
        let month = |ms: i64| ((ms as f64 / (30.0 * 86_400_000.0)).round() as u32).max(1);
        let later_months = (month(win_c), month(win_e).max(month(win_c)));
        let mut popular: Vec<u32> = (0..np as u32).collect();
        popular.sort_by(|&x, &y| {
            buyers[y as usize].cmp(&buyers[x as usize]).then(
                self.products[x as usize]
                    .id
                    .cmp(&self.products[y as usize].id),
            )
        });
        let stock = self
            .products
            .iter()
            .map(|p| AtomicBool::new(p.in_stock))
            .collect();
        Model {
            stock,
            products: self.products,
            index: self.index,
            leaf: self.leaf,
            buyers,
            consumable,
            complements,
            upgrades,
            complement_ids,
            upgrade_ids,
            enhance,
            enhance_ids,
            later_months,
            popular,
            customers: n_customers,
            orders: n_orders as u64,
            sum_over_anchors: self.cfg.sum_over_anchors,
        }
    }

    /// Best first (ties: product id), at most `top_n`.
    fn top(&self, mut c: Vec<Cand>) -> Vec<Cand> {
        c.sort_by(|x, y| {
            y.score.total_cmp(&x.score).then(
                self.products[x.idx as usize]
                    .id
                    .cmp(&self.products[y.idx as usize].id),
            )
        });
        c.truncate(self.cfg.top_n);
        c.shrink_to_fit();
        c
    }
}

/// The price tier a product's tags name ("entry-level" < "mid-range" < "premium").
fn tier(p: &Product) -> Option<u8> {
    p.tags
        .iter()
        .find_map(|t| match t.to_ascii_lowercase().as_str() {
            "entry-level" | "entry" | "budget" | "basic" => Some(0),
            "mid-range" | "midrange" | "mid" => Some(1),
            "premium" | "pro" | "high-end" => Some(2),
            _ => None,
        })
}

fn key(a: u32, b: u32) -> u64 {
    (u64::from(a) << 32) | u64::from(b)
}

/// Whole months, rounded up, of a delay in ms (at least 1).
fn months(ms: i64) -> u32 {
    let days = (ms.max(0) as u64).div_ceil(86_400_000);
    days.div_ceil(30).max(1) as u32
}

/// Pair counts: a dense matrix for small catalogs (2,000 products: 16 MB), a hash map
/// beyond.
enum PairCount {
    Dense { cols: usize, cells: Vec<u32> },
    Sparse { rows: usize, map: HashMap<u64, u32> },
}

impl PairCount {
    fn new(rows: usize, cols: usize) -> Self {
        if rows.saturating_mul(cols) <= 16 << 20 {
            Self::Dense {
                cols,
                cells: vec![0; rows * cols],
            }
        } else {
            Self::Sparse {
                rows,
                map: HashMap::new(),
            }
        }
    }
    fn add(&mut self, k: u64) {
        match self {
            Self::Dense { cols, cells } => {
                cells[(k >> 32) as usize * *cols + (k as u32) as usize] += 1
            }
            Self::Sparse { map, .. } => *map.entry(k).or_insert(0) += 1,
        }
    }
    /// Non-zero cells per row, as (column, count).
    fn rows(self) -> Vec<Vec<(u32, u32)>> {
        match self {
            Self::Dense { cols, cells } => cells
                .chunks(cols.max(1))
                .map(|r| {
                    r.iter()
                        .enumerate()
                        .filter(|(_, n)| **n > 0)
                        .map(|(b, &n)| (b as u32, n))
                        .collect()
                })
                .collect(),
            Self::Sparse { rows, map } => {
                let mut out = vec![Vec::new(); rows];
                for (k, n) in map {
                    out[(k >> 32) as usize].push((k as u32, n));
                }
                out
            }
        }
    }
}
