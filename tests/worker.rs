//! The whole flow against a real SMTP server over TCP: order in → follow-up scheduled
//! once → picks → rendered email → accepted by the server; and the rules that skip or
//! defer a follow-up.

mod common;

use aftercart::domain::Timestamp;
use aftercart::jobs::Clock;
use aftercart_testkit::sink::SmtpSink;
use common::*;
use std::collections::HashSet;

#[tokio::test]
async fn every_due_followup_is_sent_once_with_its_parts_and_headers() {
    let sink = SmtpSink::start().await;
    let db = fresh_db().await;
    let s = settings(&base_env(&db.url, &sink.url()));
    let store = store(&s).await;
    import_sample(&store, &s, Some(400)).await;

    let summary = run_until_idle(&s, &store, clock_at_first_due(&store).await).await;
    assert!(summary.sent > 50, "{summary:?}");

    let sent = store
        .followups(None, Some(aftercart::store::FollowupState::Sent), 100_000)
        .await
        .unwrap();
    assert_eq!(sent.len() as u64, summary.sent);
    let received = sink.received();
    assert_eq!(received.len(), sent.len(), "one message per sent follow-up");
    let ids: HashSet<_> = received.iter().map(|r| r.message_id.clone()).collect();
    assert_eq!(ids.len(), received.len(), "no Message-ID twice");
    for row in &sent {
        assert!(ids.contains(row.message_id.as_deref().unwrap()), "{row:?}");
        assert!(
            row.smtp_reply.as_deref().unwrap().starts_with("250"),
            "{row:?}"
        );
        assert!(!row.items.is_empty());
    }
    let raw = received[0].raw.as_deref().unwrap();
    assert!(raw.contains("multipart/alternative"));
    assert!(raw.contains("Content-Type: text/plain") && raw.contains("Content-Type: text/html"));
    assert!(raw.contains("List-Unsubscribe: <http://127.0.0.1:8080/unsubscribe/"));
    assert!(raw.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click"));
    let unfolded = raw.replace("=\r\n", "").replace("=\n", "");
    assert!(
        unfolded.matches("1 Harbour Street").count() >= 2,
        "postal address in both parts"
    );

    // A second run (a replay, a restart) finds every row final and sends nothing.
    let again = run_until_idle(&s, &store, Clock::System).await;
    assert_eq!(again.sent, 0);
    assert_eq!(sink.count(), received.len());

    // Re-importing the same orders schedules nothing new.
    let before = store.followups(None, None, 1_000_000).await.unwrap().len();
    import_sample(&store, &s, Some(400)).await;
    assert_eq!(
        store.followups(None, None, 1_000_000).await.unwrap().len(),
        before
    );
}

#[tokio::test]
async fn consent_unsubscribe_suppression_and_cancellation_skip_with_a_reason() {
    let sink = SmtpSink::start().await;
    let db = fresh_db().await;
    let s = settings(&base_env(&db.url, &sink.url()));
    let store = store(&s).await;
    import_sample(&store, &s, Some(300)).await;
    let rows = store.followups(None, None, 100_000).await.unwrap();
    // Pick three scheduled follow-ups of distinct consenting customers.
    let mut chosen = Vec::new();
    for r in &rows {
        let c = store.customer(&r.customer_id).await.unwrap().unwrap();
        if c.customer.marketing_consent
            && !chosen
                .iter()
                .any(|(_, cid, _): &(String, String, String)| *cid == r.customer_id)
        {
            chosen.push((
                r.order_id.clone(),
                r.customer_id.clone(),
                c.customer.email.to_string(),
            ));
        }
        if chosen.len() == 3 {
            break;
        }
    }
    let now = Timestamp::now();
    store.unsubscribe(&chosen[0].1, now).await.unwrap();
    store
        .suppress(&chosen[1].2, "hard_bounce", now)
        .await
        .unwrap();
    // Cancel the third order by importing it again as cancelled.
    let order = store.order(&chosen[2].0).await.unwrap().unwrap();
    let mut cancelled = order.clone();
    cancelled.status = aftercart::domain::OrderStatus::Cancelled;
    let out = store
        .upsert_orders(&[cancelled], &aftercart::jobs::schedule_rules(&s), now)
        .await
        .unwrap();
    assert!(out.cancelled >= 1);

    run_until_idle(&s, &store, clock_at_first_due(&store).await).await;
    let reason_of = |order: &str, rows: &[aftercart::store::FollowupRow]| {
        rows.iter()
            .filter(|r| r.order_id == order)
            .map(|r| (r.state.clone(), r.reason.clone()))
            .collect::<Vec<_>>()
    };
    let rows = store.followups(None, None, 100_000).await.unwrap();
    for (state, reason) in reason_of(&chosen[0].0, &rows) {
        assert_eq!(
            (state.as_str(), reason.as_deref()),
            ("skipped", Some("unsubscribed"))
        );
    }
    for (state, reason) in reason_of(&chosen[1].0, &rows) {
        assert_eq!(
            (state.as_str(), reason.as_deref()),
            ("skipped", Some("suppressed"))
        );
    }
    for (state, reason) in reason_of(&chosen[2].0, &rows) {
        assert_eq!(
            (state.as_str(), reason.as_deref()),
            ("skipped", Some("order_cancelled"))
        );
    }
    let no_consent = rows
        .iter()
        .filter(|r| r.reason.as_deref() == Some("no_consent"))
        .count();
    assert!(no_consent > 0);
    for r in rows
        .iter()
        .filter(|r| r.reason.as_deref() == Some("no_consent"))
    {
        let c = store.customer(&r.customer_id).await.unwrap().unwrap();
        assert!(!c.customer.marketing_consent);
    }
    // Nobody who was skipped got an email.
    let sent_to: HashSet<String> = sink.received().iter().flat_map(|r| r.to.clone()).collect();
    assert!(
        !sent_to.contains(&chosen[0].2)
            || rows
                .iter()
                .any(|r| r.customer_id == chosen[0].1 && r.state == "sent")
    );
}

#[tokio::test]
async fn quiet_hours_defer_to_their_end_in_the_customers_timezone() {
    let sink = SmtpSink::start().await;
    let db = fresh_db().await;
    let s = settings(&with(
        base_env(&db.url, &sink.url()),
        &[("AFTERCART__LIMITS__QUIET_HOURS", "21:00-08:00")],
    ));
    let store = store(&s).await;
    import_sample(&store, &s, Some(200)).await;
    run_until_idle(&s, &store, clock_at_first_due(&store).await).await;

    let rows = store
        .followups(None, Some(aftercart::store::FollowupState::Sent), 100_000)
        .await
        .unwrap();
    assert!(!rows.is_empty());
    let q = aftercart::config::QuietHours::parse("21:00-08:00")
        .unwrap()
        .unwrap();
    let mut deferred_seen = 0;
    for r in rows {
        let c = store.customer(&r.customer_id).await.unwrap().unwrap();
        let tz: chrono_tz::Tz = c
            .customer
            .timezone
            .as_deref()
            .unwrap_or("America/New_York")
            .parse()
            .unwrap();
        let sent = r.sent_at.unwrap().to_datetime().with_timezone(&tz);
        assert!(
            !q.contains(sent.time()),
            "sent at {sent} local, inside quiet hours ({r:?})"
        );
        if r.sent_at.unwrap() > r.due_at {
            deferred_seen += 1;
        }
    }
    assert!(
        deferred_seen > 0,
        "some follow-ups fell due in quiet hours and waited"
    );
}

#[tokio::test]
async fn the_weekly_cap_skips_or_defers_per_campaign_policy() {
    let sink = SmtpSink::start().await;
    let db = fresh_db().await;
    let s = settings(&with(
        base_env(&db.url, &sink.url()),
        &[("AFTERCART__LIMITS__MAX_EMAILS_PER_CUSTOMER_PER_WEEK", "1")],
    ));
    let store = store(&s).await;
    import_sample(&store, &s, Some(600)).await;
    run_until_idle(&s, &store, clock_at_first_due(&store).await).await;

    let rows = store.followups(None, None, 100_000).await.unwrap();
    // No customer got two emails within any 7 days.
    let mut by_customer: std::collections::HashMap<String, Vec<i64>> = Default::default();
    for r in rows.iter().filter(|r| r.state == "sent") {
        by_customer
            .entry(r.customer_id.clone())
            .or_default()
            .push(r.sent_at.unwrap().0);
    }
    for (c, mut times) in by_customer {
        times.sort();
        for w in times.windows(2) {
            assert!(
                w[1] - w[0] >= 7 * 86_400_000,
                "customer {c} got two emails within a week"
            );
        }
    }
    // `upgrade` skips at the cap; `complete_your_setup` defers (and is sent later).
    assert!(
        rows.iter()
            .any(|r| r.campaign == "upgrade" && r.reason.as_deref() == Some("frequency_cap"))
    );
    assert!(!rows.iter().any(
        |r| r.campaign == "complete_your_setup" && r.reason.as_deref() == Some("frequency_cap")
    ));
    assert!(rows.iter().any(|r| r.campaign == "complete_your_setup"
        && r.state == "sent"
        && r.sent_at.unwrap().0 > r.due_at.0 + 86_400_000));
}

#[tokio::test]
async fn emails_are_dkim_signed_when_a_key_is_configured() {
    use base64::Engine as _;
    let sink = SmtpSink::start().await;
    let db = fresh_db().await;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("dkim.key");
    let secret: [u8; 32] = rand::random();
    std::fs::write(
        &key,
        base64::engine::general_purpose::STANDARD.encode(secret),
    )
    .unwrap();
    let s = settings(&with(
        base_env(&db.url, &sink.url()),
        &[
            ("AFTERCART__SMTP__DKIM_KEY_PATH", key.to_str().unwrap()),
            ("AFTERCART__SMTP__DKIM_SELECTOR", "ac2026"),
        ],
    ));
    let store = store(&s).await;
    import_sample(&store, &s, Some(40)).await;
    let summary = run_until_idle(&s, &store, clock_at_first_due(&store).await).await;
    assert!(summary.sent > 0);
    for r in sink.received() {
        let raw = r.raw.unwrap();
        let sig = raw
            .lines()
            .find(|l| l.starts_with("DKIM-Signature:"))
            .expect("signed");
        let unfolded = raw.replace("\r\n ", " ").replace("\r\n\t", " ");
        assert!(
            unfolded.contains("d=northwind.example.com") && unfolded.contains("s=ac2026"),
            "{sig}"
        );
    }
    // A missing key file is refused at start, naming the key.
    let bad = with(
        base_env(&db.url, &sink.url()),
        &[
            ("AFTERCART__SMTP__DKIM_KEY_PATH", "/nonexistent/key"),
            ("AFTERCART__SMTP__DKIM_SELECTOR", "x"),
        ],
    );
    let (code, _, err) = run(&bad, &["worker"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("smtp.dkim_key_path"), "{err}");
}
