//! The recommender on the committed sample store (`../shared/data/sample`): planted
//! complements and upgrades are recovered, and it beats popularity in a back-test.

use aftercart::domain::{Order, Product, ProductId, Strategy};
use aftercart::recommend::{
    Exclusions, Model, ModelConfig, PickRequest, evaluate, evaluate_pooled, split_times,
};
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::OnceLock;

struct Sample {
    products: Vec<Product>,
    orders: Vec<Order>,
    truth: Value,
    model: Model,
}

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/sample")
}

fn jsonl(name: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(dir().join(name)).expect("sample data");
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("valid JSON line"))
        .collect()
}

fn sample() -> &'static Sample {
    static S: OnceLock<Sample> = OnceLock::new();
    S.get_or_init(|| {
        let products: Vec<Product> = jsonl("products.jsonl")
            .iter()
            .map(|v| Product::from_json(v).unwrap())
            .collect();
        let known: HashSet<ProductId> = products.iter().map(|p| p.id.clone()).collect();
        let orders: Vec<Order> = jsonl("orders.jsonl")
            .iter()
            .map(|v| Order::from_json(v, |id| known.contains(id)).unwrap())
            .collect();
        let truth: Value = serde_json::from_str(
            &std::fs::read_to_string(dir().join("ground_truth.json")).unwrap(),
        )
        .unwrap();
        let model = Model::build(&products, &orders, &ModelConfig::default());
        Sample {
            products,
            orders,
            truth,
            model,
        }
    })
}

fn pid(s: &str) -> ProductId {
    ProductId::parse(s).unwrap()
}

/// Planted pairs of `kind` for keys bought at least 5 times: (primary, planted targets).
fn planted(kind: &str) -> Vec<(String, Vec<String>)> {
    let t = &sample().truth;
    t[kind]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| t["purchases"][k.as_str()].as_u64().unwrap_or(0) >= 5)
        .map(|(k, v)| {
            let targets = v
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_str().unwrap().to_owned())
                .collect();
            (k.clone(), targets)
        })
        .collect()
}

/// Share of planted targets in the top 3 of each primary's candidate ranking (before the
/// one-per-leaf rule, which would otherwise hide two planted items of one leaf).
fn recall(kind: &str, candidates: impl Fn(&ProductId) -> Vec<ProductId>) -> (f64, Vec<String>) {
    let (mut found, mut total, mut missed) = (0, 0, Vec::new());
    for (primary, targets) in planted(kind) {
        let top: Vec<ProductId> = candidates(&pid(&primary)).into_iter().take(3).collect();
        for t in targets {
            total += 1;
            if top.contains(&pid(&t)) {
                found += 1;
            } else {
                missed.push(format!("{primary}->{t} (top: {top:?})"));
            }
        }
    }
    (found as f64 / total as f64, missed)
}

#[test]
fn complements_recover_planted_accessories() {
    let m = &sample().model;
    let (r, missed) = recall("complements", |p| {
        m.complement_candidates(p)
            .iter()
            .map(|c| c.0.clone())
            .collect()
    });
    eprintln!("complement recall@3 = {r:.3}; missed {missed:?}");
    assert!(r >= 0.9, "recall {r}: missed {missed:?}");
}

#[test]
fn upgrades_recover_planted_targets() {
    let m = &sample().model;
    let (r, missed) = recall("upgrades", |p| {
        m.upgrade_candidates(p)
            .iter()
            .map(|c| c.0.clone())
            .collect()
    });
    eprintln!("upgrade recall@3 = {r:.3}; missed {missed:?}");
    assert!(r >= 0.9, "recall {r}: missed {missed:?}");
}

#[test]
fn picks_for_one_primary_hold_planted_items_and_true_reasons() {
    let s = sample();
    let none = Exclusions::default();
    let mut hits = 0;
    let mut total = 0;
    for (primary, targets) in planted("complements") {
        let order = s
            .orders
            .iter()
            .find(|o| o.items.len() == 1 && o.items[0].product_id.as_str() == primary)
            .or_else(|| {
                s.orders
                    .iter()
                    .find(|o| o.items.iter().any(|i| i.product_id.as_str() == primary))
            })
            .unwrap();
        let mut one = order.clone();
        one.items.retain(|i| i.product_id.as_str() == primary);
        one.total = one.items[0].unit_price;
        let picks = s.model.pick(&PickRequest {
            order: &one,
            strategy: Strategy::Complements,
            max_items: 3,
            max_price_ratio: 100.0,
            exclude: &none,
        });
        let title = &s.model.product(&pid(&primary)).unwrap().title;
        for p in &picks {
            assert!(
                p.reason.contains(title.as_str()),
                "{} names {title}",
                p.reason
            );
            let cat = &s.model.product(&p.product_id).unwrap();
            assert_eq!(cat.title, p.title);
        }
        total += targets.len().min(3);
        hits += picks
            .iter()
            .filter(|p| targets.iter().any(|t| t == p.product_id.as_str()))
            .count();
    }
    let share = hits as f64 / total as f64;
    eprintln!("planted complements in picks (one per leaf): {share:.3}");
    assert!(share >= 0.8, "{share}");
}

/// A probe order holding one entry product: its planted upgrades are in the top 3 picks
/// (up to 3 alternatives, no one-per-leaf rule for upgrades), and no fallback is sold as
/// what customers did.
#[test]
fn planted_upgrades_are_in_the_picks_of_a_probe_order() {
    let s = sample();
    let none = Exclusions::default();
    let (mut hits, mut total, mut missed) = (0, 0, Vec::new());
    for (primary, targets) in planted("upgrades") {
        let order = s
            .orders
            .iter()
            .find(|o| o.items.iter().any(|i| i.product_id.as_str() == primary))
            .unwrap();
        let mut one = order.clone();
        one.items.retain(|i| i.product_id.as_str() == primary);
        one.total = one.items[0].unit_price;
        let picks = s.model.pick(&PickRequest {
            order: &one,
            strategy: Strategy::Upgrades,
            max_items: 3,
            max_price_ratio: 100.0,
            exclude: &none,
        });
        for p in &picks {
            assert_eq!(
                p.fallback,
                !p.reason.contains("upgraded from"),
                "{}",
                p.reason
            );
        }
        for t in targets.iter().take(3) {
            total += 1;
            if picks.iter().any(|p| p.product_id.as_str() == t) {
                hits += 1;
            } else {
                missed.push(format!("{primary}->{t}"));
            }
        }
    }
    let share = hits as f64 / total as f64;
    eprintln!("planted upgrades in the picks of a probe order: {share:.3}; missed {missed:?}");
    assert!(share >= 0.95, "{share}: {missed:?}");
}

/// Consumables (re-bought by their buyers) are found in the data and never upgraded;
/// no planted upgrade starts or ends at one.
#[test]
fn consumables_are_detected_and_never_upgraded() {
    let s = sample();
    let consumables: Vec<&Product> = s
        .products
        .iter()
        .filter(|p| s.model.is_consumable(&p.id))
        .collect();
    eprintln!(
        "consumables: {:?}",
        consumables.iter().map(|p| &p.title).collect::<Vec<_>>()
    );
    assert!(!consumables.is_empty());
    for p in &consumables {
        assert!(s.model.upgrade_candidates(&p.id).is_empty(), "{}", p.title);
    }
    for (primary, targets) in planted("upgrades") {
        assert!(!s.model.is_consumable(&pid(&primary)), "{primary}");
        for t in targets {
            assert!(!s.model.is_consumable(&pid(&t)), "{t}");
        }
    }
}

#[test]
fn reasons_name_real_products_and_counts() {
    let s = sample();
    let none = Exclusions::default();
    let mut seen = BTreeMap::new();
    for o in s.orders.iter().filter(|o| !o.status.is_void()).take(400) {
        for strategy in Strategy::ALL {
            for p in s.model.pick(&PickRequest {
                order: o,
                strategy,
                max_items: 3,
                max_price_ratio: 2.0,
                exclude: &none,
            }) {
                let anchor = o
                    .items
                    .iter()
                    .filter_map(|i| s.model.product(&i.product_id))
                    .find(|a| p.reason.contains(a.title.as_str()));
                assert!(
                    anchor.is_some(),
                    "{:?} names no product of the order",
                    p.reason
                );
                let kind = p.reason.split(' ').take(3).collect::<Vec<_>>().join(" ");
                seen.entry(kind).or_insert(p.reason.clone());
            }
        }
    }
    for r in seen.values() {
        eprintln!("reason: {r}");
    }
    assert!(
        seen.values()
            .any(|r| r.contains("customers upgraded from the")),
        "{seen:?}"
    );
    assert!(
        seen.values()
            .any(|r| r.starts_with("bought with the") || r.contains("bought them together"))
    );
}

/// `max_price_ratio` of the default `complete_your_setup` campaign (config.toml).
const RATIO: f64 = 0.5;

#[test]
fn evaluate_beats_popularity() {
    let s = sample();
    let rep = evaluate(
        &s.products,
        &s.orders,
        None,
        3,
        Strategy::Complements,
        RATIO,
        &ModelConfig::default(),
    );
    eprintln!("{}", serde_json::to_string_pretty(&rep).unwrap());
    assert!(rep.orders_tested > 100);
    assert!(
        rep.recommender.hit_rate > rep.popularity.hit_rate,
        "{rep:?}"
    );
    assert!(rep.per_strategy.contains_key("upgrades"));
    // The default upgrade campaign (max_items 2, max_price_ratio 3.0), for the docs.
    let up = evaluate(
        &s.products,
        &s.orders,
        None,
        2,
        Strategy::Upgrades,
        3.0,
        &ModelConfig::default(),
    );
    eprintln!(
        "upgrades k=2 ratio=3: {}",
        serde_json::to_string(&up).unwrap()
    );
    let json = serde_json::to_value(&rep).unwrap();
    // The ranking figures: hit@k, recall@k, MRR for k in {1, 3, 5, 10}, both sides.
    for side in ["recommender", "popularity"] {
        for k in ["1", "3", "5", "10"] {
            let m = &json["ranking"][side][k];
            for f in ["hit", "recall", "mrr"] {
                let v = m[f]
                    .as_f64()
                    .unwrap_or_else(|| panic!("{side} {k} {f}: {m}"));
                assert!((0.0..=1.0).contains(&v), "{side} {k} {f} = {v}");
            }
        }
    }
    let r = &rep.ranking;
    assert!((r.recommender[&3].hit - rep.recommender.hit_rate).abs() < 1e-9);
    assert!(r.recommender[&1].hit <= r.recommender[&10].hit);
    assert!(r.recommender[&3].mrr <= r.recommender[&3].hit);
    let [lo, hi] = r.hit_ratio_ci95;
    assert!(lo <= r.hit_ratio && r.hit_ratio <= hi, "{r:?}");
    eprintln!("hit@3 ratio {:.2} [{lo:.2}, {hi:.2}]", r.hit_ratio);
    for key in [
        "k",
        "orders_tested",
        "split_at",
        "recommender",
        "popularity",
    ] {
        assert!(json.get(key).is_some(), "{key}");
    }
}

/// Split times before which these shares of the non-void orders fall.
fn splits(orders: &[Order], shares: &[f64]) -> Vec<aftercart::domain::Timestamp> {
    let mut t: Vec<_> = orders
        .iter()
        .filter(|o| !o.status.is_void())
        .map(|o| o.completed_at.unwrap_or(o.created_at))
        .collect();
    t.sort_unstable();
    shares
        .iter()
        .map(|s| t[((t.len() as f64 * s) as usize).min(t.len() - 1)])
        .collect()
}

/// Pooled over three chronological windows: (recommender hits, popularity hits, tested).
fn pooled(cfg: &ModelConfig, strategy: Strategy, k: usize, ratio: f64) -> (f64, f64, usize) {
    let s = sample();
    let (mut r, mut p, mut n) = (0.0, 0.0, 0);
    for at in splits(&s.orders, &[0.8, 0.85, 0.9]) {
        let rep = evaluate(&s.products, &s.orders, Some(at), k, strategy, ratio, cfg);
        r += rep.recommender.hit_rate * rep.orders_tested as f64;
        p += rep.popularity.hit_rate * rep.orders_tested as f64;
        n += rep.orders_tested;
    }
    (r, p, n)
}

/// The back-test behind the defaults (docs/recommendations.md): summing the evidence over
/// the order's products is no worse than taking the best entry, pooled over windows.
#[test]
fn defaults_hold_up_in_a_pooled_backtest() {
    let base = ModelConfig::default();
    let variants = [
        ("default (sum, min count 3, no lift cut-off)", base.clone()),
        (
            "max over anchors",
            ModelConfig {
                sum_over_anchors: false,
                ..base.clone()
            },
        ),
        (
            "lift >= 1.2 cut-off",
            ModelConfig {
                min_lift: 1.2,
                ..base.clone()
            },
        ),
    ];
    let mut hits = Vec::new();
    for (name, cfg) in &variants {
        let (r, p, n) = pooled(cfg, Strategy::Complements, 3, RATIO);
        eprintln!(
            "complements k=3 {name}: hits {r:.0}/{n} = {:.3}, popularity {:.3}, ratio {:.2}",
            r / n as f64,
            p / n as f64,
            r / p.max(1.0)
        );
        hits.push(r);
    }
    let (r, p, n) = pooled(&base, Strategy::Enhance, 3, 1.0);
    eprintln!(
        "enhance k=3 ratio 1.0: {:.3} vs popularity {:.3} ({n} tested)",
        r / n as f64,
        p / n as f64
    );
    assert!(hits[0] >= hits[1] && hits[0] >= hits[2], "{hits:?}");
}

#[test]
fn pooled_windows_add_up() {
    let s = sample();
    let cfg = ModelConfig::default();
    let shares = [0.8, 0.85, 0.9];
    let pooled = evaluate_pooled(
        &s.products,
        &s.orders,
        &shares,
        3,
        Strategy::Complements,
        RATIO,
        &cfg,
    );
    let (r, p, n) = self::pooled(&cfg, Strategy::Complements, 3, RATIO);
    assert_eq!(pooled.orders_tested, n);
    assert_eq!(pooled.splits.len(), 3);
    assert_eq!(pooled.split_at, pooled.splits[0]);
    assert_eq!(
        pooled.splits,
        split_times(&s.orders, &shares)
            .iter()
            .map(|t| t.rfc3339())
            .collect::<Vec<_>>()
    );
    assert!((pooled.recommender.hit_rate - r / n as f64).abs() < 1e-9);
    assert!((pooled.popularity.hit_rate - p / n as f64).abs() < 1e-9);
    assert!((pooled.ranking.recommender[&3].hit - r / n as f64).abs() < 1e-9);
    assert!((pooled.ranking.hit_ratio - r / p).abs() < 1e-6);
    let [lo, hi] = pooled.ranking.hit_ratio_ci95;
    eprintln!(
        "pooled hit@3 ratio {:.2} [{lo:.2}, {hi:.2}] over {n}",
        pooled.ranking.hit_ratio
    );
    assert!(lo <= pooled.ranking.hit_ratio && pooled.ranking.hit_ratio <= hi);
}
