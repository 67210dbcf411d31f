//! `aftercart bench` as a user runs it, on a tiny store: every output field present, one
//! message at the sink per send, every due follow-up final. The in-process sink
//! (`--sink builtin`) keeps this test free of Postfix; CI's smoke run (`.ci/run`) uses
//! Postfix's smtp-sink and smtp-source. No timing is asserted.

mod common;

use common::*;

#[test]
fn bench_on_a_tiny_store_reports_every_field_and_sends_each_due_followup_once() {
    let (code, out, err) = run(
        &[],
        &["bench", "--orders", "300", "--sink", "builtin", "--json"],
    );
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    let r: serde_json::Value = serde_json::from_str(&out).expect("one JSON document");
    for key in [
        "engine",
        "orders",
        "import_seconds",
        "import_orders_per_s",
        "followups_due",
        "sent",
        "skipped",
        "failed",
        "sink_received",
        "drain_seconds",
        "sent_per_s",
        "message_bytes",
        "smtp_source",
        "ratio",
        "stages",
    ] {
        assert!(r.get(key).is_some(), "{key} missing: {r}");
    }
    assert_eq!(r["engine"], "sqlite");
    assert_eq!(r["orders"], 300);
    let n = |k: &str| r[k].as_i64().unwrap_or_else(|| panic!("{k}: {r}"));
    assert!(n("sent") > 0, "{r}");
    assert_eq!(
        n("sent") + n("skipped") + n("failed"),
        n("followups_due"),
        "{r}"
    );
    assert_eq!(n("sink_received"), n("sent"), "{r}");
    let stages: Vec<&str> = r["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    assert_eq!(
        stages,
        ["claim", "decide", "pick", "render", "smtp", "record"]
    );
    // Every follow-up that was sent went through each per-message stage.
    let smtp = r["stages"][4]["count"].as_i64().unwrap();
    assert_eq!(smtp, n("sent"), "{r}");
}

#[test]
fn bench_text_output_names_the_ceiling_and_the_stages() {
    let (code, out, err) = run(&[], &["bench", "--orders", "200", "--sink", "builtin"]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    for field in [
        "import:",
        "orders/s",
        "sent/s:",
        "smtp-source ceiling:",
        "  claim",
        "  render",
        "  record",
    ] {
        assert!(out.contains(field), "{field} missing:\n{out}");
    }
}
