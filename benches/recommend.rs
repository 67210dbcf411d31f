//! Model build time, peak memory and pick latency.
//!
//! `cargo bench --bench recommend -- --data DIR` (default `../shared/data/sample`): streams
//! `products.jsonl` and `orders.jsonl` into a `ModelBuilder`, prints build seconds and
//! peak RSS (VmHWM), then times 10,000 picks over randomly sampled orders. `--in-memory`
//! parses all orders into a `Vec<Order>` first and calls `Model::build` instead.

use aftercart::domain::{Order, Product, ProductId, Strategy};
use aftercart::recommend::{Exclusions, Model, ModelBuilder, ModelConfig, PickRequest};
use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::time::Instant;

const PICKS: usize = 10_000;

/// xorshift64*: deterministic and dependency-free.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn lines(path: &PathBuf) -> impl Iterator<Item = serde_json::Value> {
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    BufReader::new(f)
        .lines()
        .map(|l| l.expect("read"))
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(&l).expect("JSON line"))
}

fn main() {
    let mut data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/sample");
    let mut in_memory = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--data" => data = PathBuf::from(args.next().expect("--data DIR")),
            // Holds every parsed `Order` and calls `Model::build(&[Order])` instead.
            "--in-memory" => in_memory = true,
            _ => {} // `cargo bench` passes `--bench`.
        }
    }

    let t0 = Instant::now();
    let products: Vec<Product> = lines(&data.join("products.jsonl"))
        .map(|v| Product::from_json(&v).expect("product"))
        .collect();
    let known: HashSet<ProductId> = products.iter().map(|p| p.id.clone()).collect();
    let cfg = ModelConfig::default();
    let mut builder = ModelBuilder::new(&products, &cfg);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    // Reservoir sample of orders to ask about; the rest is streamed and dropped.
    let mut sample: Vec<Order> = Vec::with_capacity(PICKS);
    let mut seen = 0usize;
    let mut all: Vec<Order> = Vec::new();
    for v in lines(&data.join("orders.jsonl")) {
        let o = Order::from_json(&v, |id| known.contains(id)).expect("order");
        if in_memory {
            all.push(o.clone());
        } else {
            builder.add_order(&o);
        }
        seen += 1;
        if sample.len() < PICKS {
            sample.push(o);
        } else {
            let j = rng.below(seen);
            if j < PICKS {
                sample[j] = o;
            }
        }
    }
    let parsed = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let model = if in_memory {
        Model::build(&products, &all, &cfg)
    } else {
        builder.finish()
    };
    let build = t1.elapsed().as_secs_f64();
    println!(
        "data: {} ({} products, {} orders read, {} non-void)",
        data.display(),
        products.len(),
        seen,
        model.order_count()
    );
    println!(
        "load+parse: {parsed:.2} s; model build: {build:.3} s; peak RSS (VmHWM): {:.0} MB",
        peak_rss_mb()
    );

    // Exclusion sets of a realistic size: a customer's history, views and past emails.
    let ids: Vec<ProductId> = products.iter().map(|p| p.id.clone()).collect();
    let mut some = |n: usize| -> HashSet<ProductId> {
        (0..n).map(|_| ids[rng.below(ids.len())].clone()).collect()
    };
    let exclude = Exclusions {
        bought_before: some(10),
        seen_on_site: some(20),
        emailed_recently: some(6),
    };
    let mut times = Vec::with_capacity(PICKS);
    let mut picked = 0usize;
    let mut rng = Rng(42);
    for i in 0..PICKS {
        let order = &sample[rng.below(sample.len())];
        let req = PickRequest {
            order,
            strategy: Strategy::ALL[i % Strategy::ALL.len()],
            max_items: 3,
            max_price_ratio: 2.0,
            exclude: &exclude,
        };
        let t = Instant::now();
        let picks = model.pick(&req);
        times.push(t.elapsed().as_nanos() as u64);
        picked += picks.len();
    }
    times.sort_unstable();
    let us = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0;
    println!(
        "{PICKS} picks (complements, upgrades, enhance in turn, max 3): p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs; {:.2} items per pick",
        us(0.5),
        us(0.99),
        us(1.0),
        picked as f64 / PICKS as f64
    );
}
