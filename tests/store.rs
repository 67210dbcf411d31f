//! One store suite for both engines (SQLite here, PostgreSQL when
//! AFTERCART_TEST_DATABASE_URL is set): schema, upserts, the ledger's uniqueness and the
//! lease rules the delivery guarantees rest on.

mod common;

use aftercart::domain::Timestamp;
use aftercart::domain::{FollowupEvent, SkipReason};
use aftercart::store::{Finish, FollowupRow, FollowupState};
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
            &[(
                first.id,
                Finish::Skipped {
                    reason: aftercart::store::SkipReason::Holdout,
                },
            )],
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
        .followups(Some(first.order_id.as_str()), None, 10)
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

/// One store operation, the lifecycle event it is.
#[derive(Debug, Clone)]
enum Op {
    Claim,
    Finish(Finish),
    Release,
    RequeueFailed,
    Forget,
}

impl Op {
    fn event(&self) -> FollowupEvent {
        match self {
            Op::Claim => FollowupEvent::Claim,
            Op::Finish(f) => f.event(),
            Op::Release => FollowupEvent::Release,
            Op::RequeueFailed => FollowupEvent::RequeueFailed,
            Op::Forget => FollowupEvent::Withdraw(SkipReason::Forgotten),
        }
    }
}

/// Walks the lifecycle table through the real store: every state × every operation the
/// store offers. Each legal move ends in the state the table names, every illegal one
/// leaves the row as it was.
#[tokio::test]
async fn every_lifecycle_move_goes_through_the_store_as_the_table_says() {
    let db = fresh_db().await;
    let s = settings(&base_env(&db.url, "file:///tmp/x"));
    let store = store(&s).await;
    import_sample(&store, &s, Some(150)).await;
    let now = Timestamp::now();
    let sent = |at| Finish::Sent {
        message_id: "<m@x>".into(),
        reply: "250 ok".into(),
        items: vec!["P00001".into()],
        at,
    };
    let ops = |t: Timestamp| {
        let mut ops = vec![
            Op::Claim,
            Op::Finish(sent(now)),
            Op::Finish(Finish::Failed {
                reply: "550 no".into(),
            }),
            Op::Finish(Finish::SmtpRetry {
                next_at: t,
                reply: "421 busy".into(),
            }),
            Op::Finish(Finish::Defer { next_at: t }),
            Op::Finish(Finish::Hold {
                next_at: t,
                problem: "subject.txt:1:4: no such variable".into(),
            }),
            Op::Finish(Finish::Requeue {
                next_at: t,
                reply: None,
            }),
            Op::Release,
            Op::RequeueFailed,
            Op::Forget,
        ];
        ops.extend(
            SkipReason::ALL
                .into_iter()
                .map(|reason| Op::Finish(Finish::Skipped { reason })),
        );
        ops
    };
    let mut k = 0i64;
    let mut walked = std::collections::BTreeSet::new();
    for from in FollowupState::ALL {
        for op in ops(Timestamp(0)) {
            k += 1;
            // Decreasing tiny times: this pair's row is always the earliest claimable one,
            // so a claim of one row takes it (rows of earlier pairs come after it).
            let t = Timestamp(1_000_000 - k * 10);
            let op = match op {
                Op::Finish(
                    Finish::SmtpRetry { .. }
                    | Finish::Defer { .. }
                    | Finish::Hold { .. }
                    | Finish::Requeue { .. },
                ) => ops(t)
                    .into_iter()
                    .find(|o| o.event() == op.event())
                    .unwrap(),
                other => other,
            };
            let owner = format!("w{k}");
            let row = store.claim_due(&owner, now, t, 1).await.unwrap();
            let row = row.first().expect("a claimable row").clone();
            let setup = match from {
                FollowupState::Sending => None,
                FollowupState::Scheduled => Some(Finish::Requeue {
                    next_at: t,
                    reply: None,
                }),
                FollowupState::Deferred => Some(Finish::Defer { next_at: t }),
                FollowupState::Sent => Some(sent(now)),
                FollowupState::Skipped => Some(Finish::Skipped {
                    reason: SkipReason::Holdout,
                }),
                FollowupState::Failed => Some(Finish::Failed {
                    reply: "550 no".into(),
                }),
            };
            if let Some(f) = setup {
                assert_eq!(store.finish(&owner, &[(row.id, f)], now).await.unwrap(), 1);
            }
            let state_of =
                |rows: Vec<FollowupRow>| rows.into_iter().find(|r| r.id == row.id).unwrap();
            let before = state_of(
                store
                    .followups(Some(row.order_id.as_str()), None, 100)
                    .await
                    .unwrap(),
            );
            assert_eq!(before.state, from.as_str(), "setting up {from:?}");

            match &op {
                Op::Claim => {
                    store
                        .claim_due(&format!("{owner}-b"), now, Timestamp(t.0 + 1), 1)
                        .await
                        .unwrap();
                }
                Op::Finish(f) => {
                    store
                        .finish(&owner, &[(row.id, f.clone())], now)
                        .await
                        .unwrap();
                }
                Op::Release => {
                    store.release(&owner, t).await.unwrap();
                }
                Op::RequeueFailed => {
                    store
                        .retry_failed(Some(row.order_id.as_str()), t)
                        .await
                        .unwrap();
                }
                Op::Forget => {
                    store.forget(row.customer_id.as_str(), now).await.unwrap();
                }
            }
            let after = state_of(
                store
                    .followups(Some(row.order_id.as_str()), None, 100)
                    .await
                    .unwrap(),
            );
            let expected = aftercart::domain::next_state(from, op.event());
            let want = expected.clone().unwrap_or(from);
            assert_eq!(
                after.state,
                want.as_str(),
                "{from:?} --{op:?}--> ({expected:?})"
            );
            if expected.is_ok() {
                walked.insert((from, op.event().name()));
                match want {
                    FollowupState::Sent => {
                        assert!(after.sent_at.is_some() && after.message_id.is_some())
                    }
                    FollowupState::Skipped => {
                        assert!(after.reason.is_some() && after.next_at.is_none())
                    }
                    _ => {}
                }
                let held = matches!(op, Op::Finish(Finish::Hold { .. }));
                assert_eq!(after.held.is_some(), held, "{from:?} --{op:?}--> {after:?}");
            } else {
                assert_eq!(
                    (after.attempts, after.next_at, after.reason.as_deref()),
                    (before.attempts, before.next_at, before.reason.as_deref()),
                    "{from:?} --{op:?}--> refused, yet the row changed"
                );
            }
        }
    }
    // Every legal move of the table was taken at least once.
    for from in FollowupState::ALL {
        for e in FollowupEvent::all() {
            if aftercart::domain::next_state(from, e).is_ok() {
                assert!(
                    walked.contains(&(from, e.name())),
                    "{from:?} --{e:?}--> never walked"
                );
            }
        }
    }
}
