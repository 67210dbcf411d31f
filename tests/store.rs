//! One store suite for both engines (SQLite here, PostgreSQL when
//! AFTERCART_TEST_DATABASE_URL is set): schema, upserts, the ledger's uniqueness and the
//! lease rules the delivery guarantees rest on.

mod common;

use aftercart::domain::Timestamp;
use aftercart::store::{Finish, FollowupState};
use common::*;

#[tokio::test]
async fn migrations_are_idempotent_and_nothing_is_lost() {
    let db = fresh_db().await;
    let s = settings(&base_env(&db.url, "file:///tmp/x"));
    let store = store(&s).await;
    import_sample(&store, &s, Some(100)).await;
    let before = store.followups(None, None, 100_000).await.unwrap().len();
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();
    assert_eq!(
        store.followups(None, None, 100_000).await.unwrap().len(),
        before
    );
    assert_eq!(store.products().await.unwrap().len(), 200);
}

#[tokio::test]
async fn claims_are_leased_and_only_the_owner_finishes() {
    let db = fresh_db().await;
    let s = settings(&base_env(&db.url, "file:///tmp/x"));
    let store = store(&s).await;
    import_sample(&store, &s, Some(50)).await;
    let now = Timestamp::now();
    let lease = Timestamp(now.0 + 60_000);

    let a = store.claim_due("worker-a", now, lease, 10).await.unwrap();
    assert_eq!(a.len(), 10);
    assert!(a.iter().all(|c| c.attempts == 1));
    // Another worker does not get rows under a live lease.
    let b = store.claim_due("worker-b", now, lease, 1000).await.unwrap();
    assert!(b.iter().all(|c| !a.iter().any(|x| x.id == c.id)));

    // After the lease runs out, another worker takes the row over…
    let later = Timestamp(lease.0 + 1);
    let taken = store
        .claim_due("worker-c", later, Timestamp(later.0 + 60_000), 100_000)
        .await
        .unwrap();
    let first = &a[0];
    let again = taken
        .iter()
        .find(|c| c.id == first.id)
        .expect("expired lease claimed again");
    assert_eq!(again.attempts, 2);
    // …and the old owner can no longer record an outcome for it.
    let done = store
        .finish(
            "worker-a",
            &[(first.id, Finish::Skipped { reason: "x".into() })],
            later,
        )
        .await
        .unwrap();
    assert_eq!(done, 0);
    let done = store
        .finish(
            "worker-c",
            &[(
                first.id,
                Finish::Sent {
                    message_id: "m@x".into(),
                    reply: "250 ok".into(),
                    items: vec!["P1".into()],
                    at: later,
                },
            )],
            later,
        )
        .await
        .unwrap();
    assert_eq!(done, 1);
    let row = store
        .followups(Some(&first.order_id), None, 10)
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.id == first.id)
        .unwrap();
    assert_eq!(
        (row.state.as_str(), row.message_id.as_deref(), row.next_at),
        ("sent", Some("m@x"), None)
    );

    // A final row is never claimed again.
    let far = Timestamp(later.0 + 10 * 86_400_000);
    let rest = store
        .claim_due("worker-d", far, Timestamp(far.0 + 1), 100_000)
        .await
        .unwrap();
    assert!(!rest.iter().any(|c| c.id == first.id));
}

#[tokio::test]
async fn release_hands_rows_back_and_retry_requeues_only_failed() {
    let db = fresh_db().await;
    let s = settings(&base_env(&db.url, "file:///tmp/x"));
    let store = store(&s).await;
    import_sample(&store, &s, Some(30)).await;
    let now = Timestamp::now();
    let claimed = store
        .claim_due("w", now, Timestamp(now.0 + 60_000), 3)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 3);
    store
        .finish(
            "w",
            &[
                (
                    claimed[0].id,
                    Finish::Failed {
                        reply: "550 5.1.1 no such user".into(),
                    },
                ),
                (
                    claimed[1].id,
                    Finish::Sent {
                        message_id: "a@b".into(),
                        reply: "250".into(),
                        items: vec![],
                        at: now,
                    },
                ),
            ],
            now,
        )
        .await
        .unwrap();
    assert_eq!(store.release("w", now).await.unwrap(), 1);
    let failed = store
        .followups(None, Some(FollowupState::Failed), 10)
        .await
        .unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(
        failed[0].smtp_reply.as_deref(),
        Some("550 5.1.1 no such user")
    );
    assert_eq!(store.retry_failed(None, now).await.unwrap(), 1);
    assert!(
        store
            .followups(None, Some(FollowupState::Failed), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .followups(None, Some(FollowupState::Sent), 10)
            .await
            .unwrap()
            .len(),
        1,
        "sent stays sent"
    );
}

#[tokio::test]
async fn one_followup_per_order_and_campaign_whatever_repeats() {
    let db = fresh_db().await;
    let s = settings(&base_env(&db.url, "file:///tmp/x"));
    let store = store(&s).await;
    import_sample(&store, &s, Some(200)).await;
    let n = store.followups(None, None, 100_000).await.unwrap().len();
    import_sample(&store, &s, Some(200)).await;
    import_sample(&store, &s, Some(200)).await;
    let rows = store.followups(None, None, 100_000).await.unwrap();
    assert_eq!(rows.len(), n);
    let mut keys: Vec<_> = rows
        .iter()
        .map(|r| (r.order_id.clone(), r.campaign.clone()))
        .collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), n);
    assert!(
        !store
            .schedule_one(
                &rows[0].order_id,
                &rows[0].campaign,
                &rows[0].customer_id,
                Timestamp::now(),
                Timestamp::now()
            )
            .await
            .unwrap()
    );
}
