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

/// Ranking figures at one cut-off k, averaged over tested customers.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RankScore {
    /// Share of customers whose next order holds ≥ 1 of the top k.
    pub hit: f64,
    /// Share of the next order's products found in the top k.
    pub recall: f64,
    /// Mean of 1 / rank of the first hit in the top k (0 without a hit).
    pub mrr: f64,
}

/// The requested strategy and the popularity baseline at k ∈ {1, 3, 5, 10}, and the
/// ratio of their hit rates at the requested k with a 95 % bootstrap interval
/// (customers resampled, 1,000 times, fixed seed).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ranking {
    pub recommender: BTreeMap<usize, RankScore>,
    pub popularity: BTreeMap<usize, RankScore>,
    pub hit_ratio: f64,
    pub hit_ratio_ci95: [f64; 2],
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalReport {
    pub k: usize,
    pub orders_tested: usize,
    /// RFC 3339 (the first split when several windows are pooled).
    pub split_at: String,
    /// Every split of the back-test (one unless pooled), RFC 3339.
    pub splits: Vec<String>,
    /// The requested strategy.
    pub recommender: Score,
    pub popularity: Score,
    /// Every strategy, by name ("complements", "upgrades", "enhance").
    pub per_strategy: BTreeMap<String, Score>,
    /// hit@k, recall@k, MRR@k and the hit-rate ratio's interval (issue 11).
    pub ranking: Ranking,
}

/// The cut-offs `ranking` reports.
pub const CUTOFFS: [usize; 4] = [1, 3, 5, 10];

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
    evaluate_one(
        products,
        orders,
        split_at,
        k,
        strategy,
        max_price_ratio,
        cfg,
    )
    .0
}

/// Several chronological windows pooled (`evaluate --splits 0.8,0.85,0.9`): one back-test
/// per split (the time before which that share of the non-void orders falls), then every
/// rate weighted by the customers each window tested (coverage too), `orders_tested`
/// summed, and the hit-rate interval bootstrapped over all tested customers together.
/// `split_at` is the first split; `splits` lists them all.
pub fn evaluate_pooled(
    products: &[Product],
    orders: &[Order],
    shares: &[f64],
    k: usize,
    strategy: Strategy,
    max_price_ratio: f64,
    cfg: &ModelConfig,
) -> EvalReport {
    let times = split_times(orders, shares);
    let runs: Vec<_> = times
        .iter()
        .map(|&t| evaluate_one(products, orders, Some(t), k, strategy, max_price_ratio, cfg))
        .collect();
    let Some(first) = runs.first() else {
        return evaluate(products, orders, None, k, strategy, max_price_ratio, cfg);
    };
    let n: usize = runs.iter().map(|r| r.0.orders_tested).sum();
    let w = |r: &EvalReport| r.orders_tested as f64 / n.max(1) as f64;
    let score = |f: &dyn Fn(&EvalReport) -> Score| Score {
        hit_rate: runs.iter().map(|r| w(&r.0) * f(&r.0).hit_rate).sum(),
        coverage: runs.iter().map(|r| w(&r.0) * f(&r.0).coverage).sum(),
    };
    let rank = |f: &dyn Fn(&Ranking) -> &BTreeMap<usize, RankScore>| -> BTreeMap<usize, RankScore> {
        CUTOFFS
            .iter()
            .map(|c| {
                let sum = |g: fn(&RankScore) -> f64| {
                    runs.iter()
                        .map(|r| w(&r.0) * f(&r.0.ranking).get(c).map_or(0.0, g))
                        .sum::<f64>()
                };
                (
                    *c,
                    RankScore {
                        hit: sum(|x| x.hit),
                        recall: sum(|x| x.recall),
                        mrr: sum(|x| x.mrr),
                    },
                )
            })
            .collect()
    };
    let rec_hits: Vec<bool> = runs.iter().flat_map(|r| r.1.iter().copied()).collect();
    let pop_hits: Vec<bool> = runs.iter().flat_map(|r| r.2.iter().copied()).collect();
    let (hit_ratio, hit_ratio_ci95) = ratio_ci(&rec_hits, &pop_hits);
    let per_strategy = first
        .0
        .per_strategy
        .keys()
        .map(|name| (name.clone(), score(&|r: &EvalReport| r.per_strategy[name])))
        .collect();
    EvalReport {
        k,
        orders_tested: n,
        split_at: first.0.split_at.clone(),
        splits: runs.iter().map(|r| r.0.split_at.clone()).collect(),
        recommender: score(&|r: &EvalReport| r.recommender),
        popularity: score(&|r: &EvalReport| r.popularity),
        per_strategy,
        ranking: Ranking {
            recommender: rank(&|g: &Ranking| &g.recommender),
            popularity: rank(&|g: &Ranking| &g.popularity),
            hit_ratio,
            hit_ratio_ci95,
        },
    }
}

/// The times before which each share of the non-void orders falls.
pub fn split_times(orders: &[Order], shares: &[f64]) -> Vec<Timestamp> {
    let mut t: Vec<Timestamp> = orders
        .iter()
        .filter(|o| !o.status.is_void())
        .map(bought_at)
        .collect();
    if t.is_empty() {
        return Vec::new();
    }
    t.sort_unstable();
    shares
        .iter()
        .map(|s| t[((t.len() as f64 * s.clamp(0.0, 1.0)) as usize).min(t.len() - 1)])
        .collect()
}

/// One back-test, with each tested customer's hit at k (recommender, popularity).
fn evaluate_one(
    products: &[Product],
    orders: &[Order],
    split_at: Option<Timestamp>,
    k: usize,
    strategy: Strategy,
    max_price_ratio: f64,
    cfg: &ModelConfig,
) -> (EvalReport, Vec<bool>, Vec<bool>) {
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
    // Per customer and cut-off: (hit, recall, reciprocal rank).
    let ranks = |run: &dyn Fn(&PickRequest) -> Vec<super::Pick>| -> Vec<Vec<(f64, f64, f64)>> {
        cases
            .iter()
            .map(|(req_order, next, exclude)| {
                let mut wanted: Vec<&ProductId> =
                    next.items.iter().map(|it| &it.product_id).collect();
                wanted.sort_unstable();
                wanted.dedup();
                CUTOFFS
                    .iter()
                    .map(|&c| {
                        let picks = run(&PickRequest {
                            order: req_order,
                            strategy,
                            max_items: c,
                            max_price_ratio,
                            exclude,
                        });
                        let found: Vec<usize> = picks
                            .iter()
                            .enumerate()
                            .filter(|(_, p)| wanted.contains(&&p.product_id))
                            .map(|(i, _)| i)
                            .collect();
                        (
                            f64::from(u8::from(!found.is_empty())),
                            found.len() as f64 / wanted.len().max(1) as f64,
                            found.first().map_or(0.0, |&i| 1.0 / (i + 1) as f64),
                        )
                    })
                    .collect()
            })
            .collect()
    };
    let rec_ranks = ranks(&pick);
    let pop_ranks = ranks(&popular);
    let table = |r: &[Vec<(f64, f64, f64)>]| -> BTreeMap<usize, RankScore> {
        let n = r.len().max(1) as f64;
        CUTOFFS
            .iter()
            .enumerate()
            .map(|(j, &c)| {
                let sum =
                    |f: fn(&(f64, f64, f64)) -> f64| r.iter().map(|x| f(&x[j])).sum::<f64>() / n;
                (
                    c,
                    RankScore {
                        hit: sum(|x| x.0),
                        recall: sum(|x| x.1),
                        mrr: sum(|x| x.2),
                    },
                )
            })
            .collect()
    };
    // Hits per customer at the requested k (not necessarily a reported cut-off).
    let hits_at_k = |run: &dyn Fn(&PickRequest) -> Vec<super::Pick>| -> Vec<bool> {
        cases
            .iter()
            .map(|(req_order, next, exclude)| {
                run(&PickRequest {
                    order: req_order,
                    strategy,
                    max_items: k,
                    max_price_ratio,
                    exclude,
                })
                .iter()
                .any(|p| next.items.iter().any(|it| it.product_id == p.product_id))
            })
            .collect()
    };
    let rec_hits = hits_at_k(&pick);
    let pop_hits = hits_at_k(&popular);
    let (hit_ratio, hit_ratio_ci95) = ratio_ci(&rec_hits, &pop_hits);
    let ranking = Ranking {
        recommender: table(&rec_ranks),
        popularity: table(&pop_ranks),
        hit_ratio,
        hit_ratio_ci95,
    };
    let per_strategy: BTreeMap<String, Score> = Strategy::ALL
        .into_iter()
        .map(|s| (s.as_str().to_owned(), score(&pick, s)))
        .collect();
    let report = EvalReport {
        k,
        orders_tested: cases.len(),
        split_at: split.rfc3339(),
        splits: vec![split.rfc3339()],
        recommender: per_strategy[strategy.as_str()],
        popularity: score(&popular, strategy),
        per_strategy,
        ranking,
    };
    (report, rec_hits, pop_hits)
}

/// Ratio of hit counts (recommender / baseline) and its 95 % percentile bootstrap
/// interval over customers (1,000 resamples, fixed seed, so reports are reproducible).
pub fn ratio_ci(rec: &[bool], base: &[bool]) -> (f64, [f64; 2]) {
    let r = |a: usize, b: usize| {
        if b == 0 {
            f64::INFINITY
        } else {
            a as f64 / b as f64
        }
    };
    let count = |v: &[bool]| v.iter().filter(|&&x| x).count();
    let point = r(count(rec), count(base));
    let n = rec.len().min(base.len());
    if n == 0 {
        return (point, [point, point]);
    }
    let mut state: u64 = 0x0005_EED0_FA11_CA27;
    let mut next = || {
        // splitmix64
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut draws: Vec<f64> = (0..1000)
        .map(|_| {
            let (mut a, mut b) = (0, 0);
            for _ in 0..n {
                let i = (next() % n as u64) as usize;
                a += usize::from(rec[i]);
                b += usize::from(base[i]);
            }
            r(a, b)
        })
        .collect();
    draws.sort_by(f64::total_cmp);
    (point, [draws[24], draws[974]])
}

fn ratio(n: usize, d: usize) -> f64 {
    if d == 0 { 0.0 } else { n as f64 / d as f64 }
}
