//! Back-testing (SPEC §4 `evaluate`, §7 `evaluate --json`): train on the history before a
//! split time, then ask the model about each customer's last order before the split and
//! check the customer's first order after it.

use super::{Exclusions, ModelBuilder, ModelConfig, PickRequest};
use crate::domain::{Order, Product, ProductId, Strategy, Timestamp};
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};

/// Share of tested customers whose next order holds at least one recommended item, and
/// distinct recommended items / catalog size.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Score {
    pub hit_rate: f64,
    pub coverage: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalReport {
    pub k: usize,
    pub orders_tested: usize,
    /// RFC 3339.
    pub split_at: String,
    /// The requested strategy.
    pub recommender: Score,
    pub popularity: Score,
    /// Every strategy, by name ("complements", "upgrades", "enhance").
    pub per_strategy: BTreeMap<String, Score>,
}

/// One customer around the split: last order before, first after (indices into the
/// orders), and everything bought before.
type History = (Option<usize>, Option<usize>, HashSet<ProductId>);

fn bought_at(o: &Order) -> Timestamp {
    o.completed_at.unwrap_or(o.created_at)
}

/// Back-tests `strategy` with `k` items and the given price ratio. The default split is
/// the time before which 80 % of the non-void orders fall. The rules that need data an
/// order history lacks (on-site events, sent emails) are left out; everything the
/// customer bought before the split is excluded. The popularity baseline gets the same
/// rules.
pub fn evaluate(
    products: &[Product],
    orders: &[Order],
    split_at: Option<Timestamp>,
    k: usize,
    strategy: Strategy,
    max_price_ratio: f64,
    cfg: &ModelConfig,
) -> EvalReport {
    // Chronological, ties by position, so "last" and "first" are well defined.
    let mut live: Vec<(Timestamp, usize)> = orders
        .iter()
        .enumerate()
        .filter(|(_, o)| !o.status.is_void())
        .map(|(i, o)| (bought_at(o), i))
        .collect();
    live.sort_unstable();
    let split = split_at.unwrap_or_else(|| {
        if live.is_empty() {
            Timestamp(0)
        } else {
            live[(live.len() * 8 / 10).min(live.len() - 1)].0
        }
    });

    let mut builder = ModelBuilder::new(products, cfg);
    // Per customer: last order before the split, first after, products bought before.
    let mut tests: BTreeMap<&str, History> = BTreeMap::new();
    for &(t, i) in &live {
        let o = &orders[i];
        let e = tests
            .entry(o.customer_id.as_str())
            .or_insert((None, None, HashSet::new()));
        if t < split {
            builder.add_order(o);
            e.0 = Some(i);
            e.2.extend(o.items.iter().map(|it| it.product_id.clone()));
        } else if e.1.is_none() {
            e.1 = Some(i);
        }
    }
    let model = builder.finish();
    let cases: Vec<(&Order, &Order, Exclusions)> = tests
        .into_values()
        .filter_map(|(before, after, bought)| {
            Some((
                &orders[before?],
                &orders[after?],
                Exclusions {
                    bought_before: bought,
                    ..Exclusions::default()
                },
            ))
        })
        .collect();

    let score = |run: &dyn Fn(&PickRequest) -> Vec<super::Pick>, strategy: Strategy| {
        let mut hits = 0usize;
        let mut shown: HashSet<ProductId> = HashSet::new();
        for (req_order, next, exclude) in &cases {
            let picks = run(&PickRequest {
                order: req_order,
                strategy,
                max_items: k,
                max_price_ratio,
                exclude,
            });
            if picks
                .iter()
                .any(|p| next.items.iter().any(|it| it.product_id == p.product_id))
            {
                hits += 1;
            }
            shown.extend(picks.into_iter().map(|p| p.product_id));
        }
        Score {
            hit_rate: ratio(hits, cases.len()),
            coverage: ratio(shown.len(), model.product_count()),
        }
    };
    let pick = |r: &PickRequest| model.pick(r);
    let popular = |r: &PickRequest| model.popular(r);
    let per_strategy: BTreeMap<String, Score> = Strategy::ALL
        .into_iter()
        .map(|s| (s.as_str().to_owned(), score(&pick, s)))
        .collect();
    EvalReport {
        k,
        orders_tested: cases.len(),
        split_at: split.rfc3339(),
        recommender: per_strategy[strategy.as_str()],
        popularity: score(&popular, strategy),
        per_strategy,
    }
}

fn ratio(n: usize, d: usize) -> f64 {
    if d == 0 { 0.0 } else { n as f64 / d as f64 }
}
