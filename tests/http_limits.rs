//! The HTTP server against slow and hostile clients, over real TCP: raw sockets that
//! trickle a request head or body or send nothing, more connections than the limit, a
//! webhook without a signature, bodies over the limit; and what operators rely on:
//! `/healthz` failing when the database cannot be written, `/metrics` read from kept
//! counts (equal to a full count after every kind of transition) and optionally behind
//! a token, preview pages that are not cached and keep their token out of links.
//!
//! Timeouts are configured short (1 s) and the tests wait for the visible result (the
//! server closed the socket, answered, refused); the waits are safety nets, never the
//! thing under test.

mod common;

use aftercart::domain::Timestamp;
use aftercart::jobs::{Clock, Engine};
use aftercart::store::{Finish, FollowupState, LATENCY_BUCKETS, SkipReason, Store};
use aftercart_testkit::sink::{Fault, FaultPlan, SmtpSink};
use base64::Engine as _;
use common::*;
use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKEN: &str = "t0ken";
const SHOPIFY_SECRET: &str = "s3cret";
/// How long a test waits for something that must happen (a safety net).
const SAFETY: Duration = Duration::from_secs(30);

struct Server {
    addr: SocketAddr,
    engine: Engine,
    db: TestDb,
    _sink: SmtpSink,
}

/// A server on 127.0.0.1:0 with the test environment and `extra` on top; the sample
/// catalog and customers (and `orders` sample orders) when `sample` is true.
async fn server(extra: &[(&str, &str)], sample: Option<usize>) -> Server {
    let db = fresh_db().await;
    let sink = SmtpSink::start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let base_url = format!("http://{addr}");
    let env = with(
        base_env(&db.url, &sink.url()),
        &[
            ("AFTERCART__SHOPIFY__WEBHOOK_SECRET", SHOPIFY_SECRET),
            ("AFTERCART__STORE__BASE_URL", &base_url),
        ],
    );
    let s = settings(&with(env, extra));
    let store = store(&s).await;
    if let Some(orders) = sample {
        import_sample(&store, &s, Some(orders)).await;
    }
    let engine = engine(s, store, Clock::System).await;
    aftercart::http::start_on(engine.clone(), listener, std::future::pending()).unwrap();
    Server {
        addr,
        engine,
        db,
        _sink: sink,
    }
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn connect(&self) -> TcpStream {
        TcpStream::connect(self.addr).await.unwrap()
    }
}

/// Reads until the server closes the connection; None when it is still open after
/// `SAFETY`. A reset counts as closed.
async fn read_until_closed(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read_all = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(SAFETY, read_all).await.ok()?;
    Some(got)
}

/// One response on a kept-alive connection: (status, head, body).
async fn read_response(stream: &mut TcpStream) -> (u16, String, String) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            if let Some(end) = find(&got, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..end]).to_string();
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().unwrap())
                    })
                    .expect("a Content-Length");
                if got.len() >= end + 4 + len {
                    let body = String::from_utf8_lossy(&got[end + 4..end + 4 + len]).to_string();
                    return (head, body);
                }
            }
            let n = stream.read(&mut buf).await.expect("read");
            assert!(
                n > 0,
                "closed mid-response: {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
    };
    let (head, body) = tokio::time::timeout(SAFETY, read)
        .await
        .expect("a response within the safety net");
    let status = head[9..12].parse().unwrap();
    (status, head, body)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn status_of(raw: &[u8]) -> Option<u16> {
    let text = String::from_utf8_lossy(raw);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

fn json_body(raw: &[u8]) -> Value {
    let at = find(raw, b"\r\n\r\n").expect("a complete head") + 4;
    serde_json::from_slice(&raw[at..]).expect("a JSON body")
}

fn sign(body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SHOPIFY_SECRET.as_bytes()).unwrap();
    mac.update(body);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

// ---- read timeouts ------------------------------------------------------------------

#[tokio::test]
async fn a_request_head_sent_a_byte_at_a_time_is_cut_off_after_the_header_timeout() {
    let app = server(
        &[
            ("AFTERCART__HTTP__HEADER_TIMEOUT", "1s"),
            ("AFTERCART__HTTP__IDLE_TIMEOUT", "30s"),
        ],
        None,
    )
    .await;
    let (mut rx, mut tx) = app.connect().await.into_split();
    // A head that never ends: one byte every 100 ms, far longer than the timeout, and
    // never the blank line that would complete it.
    let writer = tokio::spawn(async move {
        tx.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: ")
            .await?;
        for _ in 0..300 {
            tx.write_all(b"a").await?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok::<_, std::io::Error>(())
    });
    // The writer needs 30 s for its bytes; the server must not wait for them.
    let got = read_until_closed(&mut rx).await;
    writer.abort();
    let got = got.expect("the server kept a trickling request head open");
    assert!(status_of(&got) != Some(200), "{got:?}");
}

#[tokio::test]
async fn a_silent_socket_and_an_idle_keep_alive_are_closed_after_the_idle_timeout() {
    let app = server(
        &[
            ("AFTERCART__HTTP__IDLE_TIMEOUT", "1s"),
            ("AFTERCART__HTTP__HEADER_TIMEOUT", "30s"),
        ],
        None,
    )
    .await;
    // Connected, and never a byte.
    let mut silent = app.connect().await;
    assert_eq!(
        read_until_closed(&mut silent).await.as_deref(),
        Some(&b""[..]),
        "a socket that sends nothing is closed without an answer"
    );

    // One request answered, then nothing: the keep-alive ends.
    let mut kept = app.connect().await;
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (status, _, body) = read_response(&mut kept).await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    assert_eq!(
        read_until_closed(&mut kept).await.as_deref(),
        Some(&b""[..]),
        "an idle keep-alive connection is closed"
    );
}

#[tokio::test]
async fn a_body_that_does_not_arrive_in_time_gets_408() {
    let app = server(
        &[
            ("AFTERCART__HTTP__BODY_TIMEOUT", "1s"),
            ("AFTERCART__HTTP__IDLE_TIMEOUT", "30s"),
            ("AFTERCART__HTTP__HEADER_TIMEOUT", "30s"),
        ],
        None,
    )
    .await;
    let head = format!(
        "POST /v1/customers HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    );

    // Ten bytes of the thousand promised, then silence: 408 with the JSON error.
    let mut stalled = app.connect().await;
    stalled.write_all(head.as_bytes()).await.unwrap();
    stalled.write_all(b"[{\"id\": \"C").await.unwrap();
    let got = read_until_closed(&mut stalled)
        .await
        .expect("the server ends a stalled body");
    assert_eq!(
        status_of(&got),
        Some(408),
        "{}",
        String::from_utf8_lossy(&got)
    );
    assert!(
        json_body(&got)["error"]
            .as_str()
            .unwrap()
            .contains("not received")
    );

    // A body trickling a byte every 100 ms: cut off (408 or closed) long before its end.
    let (mut rx, mut tx) = app.connect().await.into_split();
    let writer = tokio::spawn(async move {
        tx.write_all(head.as_bytes()).await?;
        for _ in 0..1000 {
            tx.write_all(b" ").await?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok::<_, std::io::Error>(())
    });
    let got = read_until_closed(&mut rx)
        .await
        .expect("the server waited for a trickling body");
    assert!(
        got.is_empty() || status_of(&got) == Some(408),
        "{}",
        String::from_utf8_lossy(&got)
    );
    writer.abort();
    assert!(
        app.engine.store.customer("C").await.unwrap().is_none(),
        "nothing stored"
    );
}

// ---- connection limit ---------------------------------------------------------------

#[tokio::test]
async fn beyond_max_connections_a_new_connection_waits_for_a_free_slot() {
    let app = server(
        &[
            ("AFTERCART__HTTP__MAX_CONNECTIONS", "1"),
            ("AFTERCART__HTTP__IDLE_TIMEOUT", "60s"),
            ("AFTERCART__HTTP__HEADER_TIMEOUT", "60s"),
        ],
        None,
    )
    .await;
    let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    // The first connection is served and stays open (keep-alive): it holds the slot.
    let mut first = app.connect().await;
    first.write_all(request).await.unwrap();
    assert_eq!(read_response(&mut first).await.0, 200);

    let mut second = app.connect().await;
    second.write_all(request).await.unwrap();
    // The first keeps being served meanwhile.
    first.write_all(request).await.unwrap();
    assert_eq!(read_response(&mut first).await.0, 200);
    // Not served while the only slot is taken (a server without a limit answers within
    // milliseconds; half a second of silence cannot be a slow machine's fault).
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(500), second.read(&mut byte)).await;
    assert!(early.is_err(), "served beyond http.max_connections");

    drop(first);
    let (status, _, body) = read_response(&mut second).await;
    assert_eq!((status, body.as_str()), (200, "ok"));
}

#[tokio::test]
async fn healthz_answers_after_a_flood_of_idle_sockets_is_timed_out() {
    let app = server(
        &[
            ("AFTERCART__HTTP__MAX_CONNECTIONS", "4"),
            ("AFTERCART__HTTP__IDLE_TIMEOUT", "1s"),
            ("AFTERCART__HTTP__HEADER_TIMEOUT", "1s"),
        ],
        None,
    )
    .await;
    // Five times the limit, each sending nothing, or half a request head.
    let mut flood = Vec::new();
    for i in 0..20 {
        let mut s = app.connect().await;
        if i % 2 == 1 {
            s.write_all(b"GET /healthz HTTP/1.1\r\nHo").await.unwrap();
        }
        flood.push(s);
    }
    let client = reqwest::Client::builder().timeout(SAFETY).build().unwrap();
    let r = client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // Every idle socket was closed by the server, none answered with a success.
    for (i, s) in flood.iter_mut().enumerate() {
        let got = read_until_closed(s)
            .await
            .unwrap_or_else(|| panic!("idle socket {i} was never closed"));
        assert!(status_of(&got) != Some(200), "{i}");
    }
}

// ---- bodies: limits, the webhook's signature first -----------------------------------

#[tokio::test]
async fn an_oversized_body_gets_the_json_413() {
    let app = server(&[("AFTERCART__HTTP__MAX_BODY_BYTES", "4096")], None).await;
    let http = reqwest::Client::new();
    // Declared too large: refused before reading.
    let mut s = app.connect().await;
    let head = format!(
        "POST /v1/customers HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 5000\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let got = read_until_closed(&mut s)
        .await
        .expect("answered and closed");
    assert_eq!(status_of(&got), Some(413));
    let e = json_body(&got);
    assert!(e["error"].as_str().unwrap().contains("4096"), "{e}");
    assert_eq!(e["limit"], 4096);

    // Sent as a whole: the same JSON.
    let r = http
        .post(app.url("/v1/customers"))
        .bearer_auth(TOKEN)
        .body(" ".repeat(4097))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    assert_eq!(r.json::<Value>().await.unwrap()["limit"], 4096);

    // Without the token, 401 comes first.
    let r = http
        .post(app.url("/v1/customers"))
        .body(" ".repeat(4097))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

fn shopify_order(id: u64) -> Value {
    json!({
        "id": id, "created_at": "2025-01-02T10:00:00Z", "processed_at": "2025-01-02T10:05:00Z",
        "updated_at": "2025-01-02T10:05:01Z", "financial_status": "paid",
        "total_price": "769.00", "currency": "USD",
        "customer": {"id": 7_001_u64, "email": "shop@buyer.example", "first_name": "Sam",
                     "email_marketing_consent": {"state": "subscribed"}},
        "line_items": [{"sku": "P00001", "product_id": 1, "quantity": 1, "price": "769.00"}]
    })
}

#[tokio::test]
async fn the_webhook_refuses_an_unsigned_request_before_reading_its_body() {
    let app = server(
        &[("AFTERCART__HTTP__WEBHOOK_MAX_BODY_BYTES", "65536")],
        Some(0),
    )
    .await;
    // A body is announced (well under the API limit) but never sent: without a
    // signature (or a blank or malformed one) the answer comes at once.
    for sig in [None, Some(""), Some("   "), Some("bm90IGFuIGhtYWM=")] {
        let mut s = app.connect().await;
        let mut head = String::from(
            "POST /webhooks/shopify/orders HTTP/1.1\r\nHost: x\r\nX-Shopify-Topic: orders/paid\r\nContent-Length: 60000\r\n",
        );
        if let Some(sig) = sig {
            head.push_str(&format!("X-Shopify-Hmac-Sha256: {sig}\r\n"));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes()).await.unwrap();
        let got = read_until_closed(&mut s)
            .await
            .unwrap_or_else(|| panic!("{sig:?}: the server waited for the body"));
        assert_eq!(status_of(&got), Some(401), "{sig:?}");
        assert!(json_body(&got)["error"].is_string());
    }

    // Signed, but larger than the webhook limit: 413 before reading.
    let mut s = app.connect().await;
    let head = format!(
        "POST /webhooks/shopify/orders HTTP/1.1\r\nHost: x\r\nX-Shopify-Topic: orders/paid\r\n\
         X-Shopify-Hmac-Sha256: {}\r\nContent-Length: 70000\r\n\r\n",
        sign(b"whatever")
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let got = read_until_closed(&mut s).await.expect("answered");
    assert_eq!(status_of(&got), Some(413));
    assert_eq!(json_body(&got)["limit"], 65536);
    assert!(app.engine.store.order("820982911").await.unwrap().is_none());
}

/// Sends `body` chunked, in three pieces, so the server reads it in several frames.
async fn post_chunked(app: &Server, body: &[u8], sig: &str) -> (u16, String) {
    let mut s = app.connect().await;
    let head = format!(
        "POST /webhooks/shopify/orders HTTP/1.1\r\nHost: x\r\nX-Shopify-Topic: orders/paid\r\n\
         X-Shopify-Webhook-Id: {sig}\r\nX-Shopify-Hmac-Sha256: {sig}\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let third = body.len() / 3;
    for piece in [&body[..third], &body[third..2 * third], &body[2 * third..]] {
        s.write_all(format!("{:x}\r\n", piece.len()).as_bytes())
            .await
            .unwrap();
        s.write_all(piece).await.unwrap();
        s.write_all(b"\r\n").await.unwrap();
        s.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.write_all(b"0\r\n\r\n").await.unwrap();
    let (status, _, body) = read_response(&mut s).await;
    (status, body)
}

#[tokio::test]
async fn the_webhook_checks_the_signature_over_a_body_read_in_pieces() {
    let app = server(&[], Some(0)).await;
    let body = serde_json::to_vec(&shopify_order(820_982_911)).unwrap();
    let mut forged = sign(&body);
    forged.replace_range(
        ..4,
        if forged.starts_with("AAAA") {
            "BBBB"
        } else {
            "AAAA"
        },
    );
    let (status, _) = post_chunked(&app, &body, &forged).await;
    assert_eq!(status, 401);
    assert!(app.engine.store.order("820982911").await.unwrap().is_none());

    let (status, answer) = post_chunked(&app, &body, &sign(&body)).await;
    assert_eq!(status, 200, "{answer}");
    let o = app.engine.store.order("820982911").await.unwrap().unwrap();
    assert_eq!(o.status.as_str(), "completed");
}

// ---- /healthz -----------------------------------------------------------------------

#[tokio::test]
async fn healthz_fails_while_the_database_cannot_be_written() {
    use sqlx::Connection as _;
    let app = server(&[], None).await;
    let http = reqwest::Client::builder().timeout(SAFETY).build().unwrap();
    let get = || http.get(app.url("/healthz")).send();
    assert_eq!(get().await.unwrap().status(), StatusCode::OK);

    // Another connection takes the write lock; reads still work.
    enum Locker {
        Sqlite(sqlx::SqliteConnection),
        Pg(sqlx::PgConnection),
    }
    let mut locker = if app.db.url.starts_with("sqlite:") {
        let mut c = sqlx::SqliteConnection::connect(&app.db.url).await.unwrap();
        sqlx::query("BEGIN EXCLUSIVE")
            .execute(&mut c)
            .await
            .unwrap();
        Locker::Sqlite(c)
    } else {
        let mut c = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
        sqlx::query("BEGIN").execute(&mut c).await.unwrap();
        sqlx::query("LOCK TABLE meta IN EXCLUSIVE MODE")
            .execute(&mut c)
            .await
            .unwrap();
        Locker::Pg(c)
    };
    assert!(app.engine.store.ping().await, "the database still reads");
    let r = get().await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let e: Value = r.json().await.unwrap();
    assert!(
        e["error"].as_str().unwrap().contains("cannot be written"),
        "{e}"
    );

    match &mut locker {
        Locker::Sqlite(c) => drop(sqlx::query("ROLLBACK").execute(c).await.unwrap()),
        Locker::Pg(c) => drop(sqlx::query("ROLLBACK").execute(c).await.unwrap()),
    }
    let r = get().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().await.unwrap(), "ok");
}

// ---- /metrics -----------------------------------------------------------------------

/// The follow-up numbers of `/metrics`, counted the slow way from every row.
#[derive(Debug, PartialEq, Default)]
struct Tally {
    by_state: BTreeMap<String, i64>,
    skipped: BTreeMap<String, i64>,
    errors: BTreeMap<String, i64>,
    latency_count: i64,
    latency_sum_ms: i64,
    buckets: Vec<(f64, i64)>,
}

async fn full_count(store: &Store) -> Tally {
    let rows = store.followups(None, None, 10_000_000).await.unwrap();
    let mut t = Tally {
        by_state: FollowupState::ALL
            .iter()
            .map(|s| (s.as_str().to_owned(), 0))
            .collect(),
        errors: ["4xx", "5xx", "connection"]
            .iter()
            .map(|c| (c.to_string(), 0))
            .collect(),
        buckets: LATENCY_BUCKETS.iter().map(|b| (*b, 0)).collect(),
        ..Tally::default()
    };
    for r in &rows {
        *t.by_state.entry(r.state.clone()).or_default() += 1;
        if r.state == "skipped" {
            let reason = r.reason.clone().unwrap_or_else(|| "unknown".into());
            *t.skipped.entry(reason).or_default() += 1;
        }
        if let (Some(reply), true) = (&r.smtp_reply, r.state != "sent") {
            let class = match reply.trim_start().as_bytes().first() {
                Some(b'4') => "4xx",
                Some(b'5') => "5xx",
                _ => "connection",
            };
            *t.errors.get_mut(class).unwrap() += 1;
        }
        if let (Some(sent), "sent") = (r.sent_at, r.state.as_str()) {
            let ms = sent.0 - r.due_at.0;
            t.latency_count += 1;
            t.latency_sum_ms += ms;
            for (bound, n) in &mut t.buckets {
                if ms <= (*bound * 1000.0) as i64 {
                    *n += 1;
                }
            }
        }
    }
    t
}

async fn kept_count(store: &Store) -> Tally {
    let m = store.metrics(Timestamp::now()).await.unwrap();
    let status = store
        .status(Timestamp::now(), Timestamp::now())
        .await
        .unwrap();
    assert_eq!(status.followups, m.followups, "status uses the same counts");
    assert_eq!(status.skipped_by_reason, m.skipped_by_reason);
    Tally {
        by_state: m.followups,
        skipped: m.skipped_by_reason,
        errors: m.smtp_errors,
        latency_count: m.latency_count,
        latency_sum_ms: m.latency_sum_ms,
        buckets: m.latency_buckets,
    }
}

async fn assert_counts_match(store: &Store, when: &str) {
    let (kept, full) = (kept_count(store).await, full_count(store).await);
    assert_eq!(kept, full, "after {when}");
}

#[tokio::test]
async fn kept_counts_equal_a_full_count_after_every_kind_of_transition() {
    let db = fresh_db().await;
    let sink = SmtpSink::start().await;
    // Some messages refused (5xx → failed), some deferred once (4xx → retried, sent late).
    let bucket = |id: &str| id.bytes().map(u32::from).sum::<u32>() % 5;
    sink.set_faults(FaultPlan::custom(move |id, prev| match bucket(id) {
        0 => Fault::Reply("550 5.7.1 refused".into()),
        1 if prev == 0 => Fault::Reply("451 4.3.0 try later".into()),
        _ => Fault::Accept,
    }));
    let env = with(
        base_env(&db.url, &sink.url()),
        &[("AFTERCART__WORKER__BATCH_SIZE", "16")],
    );
    let s = settings(&env);
    let store = store(&s).await;
    import_many(&store, &s, 120).await;
    assert_counts_match(&store, "scheduling").await;

    // Claims, sends, skips, retries, failures: the worker to the end.
    let clock = clock_at_first_due(&store).await;
    run_until_idle(&s, &store, clock).await;
    let t = full_count(&store).await;
    assert!(
        t.by_state["sent"] > 0 && t.by_state["failed"] > 0 && t.by_state["skipped"] > 0,
        "{t:?}"
    );
    assert!(t.errors["5xx"] > 0 && t.latency_count > 0, "{t:?}");
    assert_counts_match(&store, "the worker's run").await;

    // Failed ones re-queued (they keep their reply), then some claimed, one finished each way.
    let now = Timestamp::now();
    assert!(store.retry_failed(None, now).await.unwrap() > 0);
    assert_counts_match(&store, "retry").await;
    let claimed = store
        .claim_due("test-owner", now, now.plus(Duration::from_secs(60)), 8)
        .await
        .unwrap();
    assert!(claimed.len() >= 4, "{claimed:?}");
    assert_counts_match(&store, "a claim").await;
    let outcomes = vec![
        (
            claimed[0].id,
            Finish::Sent {
                message_id: "<m@x>".into(),
                reply: "250 ok".into(),
                items: vec![],
                at: now.plus(Duration::from_secs(7200)),
            },
        ),
        (
            claimed[1].id,
            Finish::Skipped {
                reason: SkipReason::Holdout,
            },
        ),
        (
            claimed[2].id,
            Finish::Failed {
                reply: "connection refused".into(),
            },
        ),
        (
            claimed[3].id,
            Finish::SmtpRetry {
                next_at: now,
                reply: "421 busy".into(),
            },
        ),
    ];
    store.finish("test-owner", &outcomes, now).await.unwrap();
    assert_counts_match(&store, "finishing").await;
    store.release("test-owner", now).await.unwrap();
    assert_counts_match(&store, "a release").await;

    // Orders cancelled: their pending follow-ups skipped.
    let pending = store
        .followups(None, Some(FollowupState::Scheduled), 1_000_000)
        .await
        .unwrap();
    assert!(!pending.is_empty());
    // The same orders import_many stored, now cancelled.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("orders.jsonl");
    write_orders(&file, 120);
    let cancel: std::collections::HashSet<&str> = pending
        .iter()
        .take(5)
        .map(|r| r.order_id.as_str())
        .collect();
    let cancelled: Vec<String> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let mut o: Value = serde_json::from_str(l).ok()?;
            cancel.contains(o["id"].as_str()?).then(|| {
                o["status"] = json!("cancelled");
                o.to_string()
            })
        })
        .collect();
    assert_eq!(cancelled.len(), 5);
    std::fs::write(&file, cancelled.join("\n")).unwrap();
    let report = import(&store, &s, "orders", &file).await;
    assert!(report.bad.is_empty(), "{:?}", report.bad);
    assert_counts_match(&store, "cancellations").await;

    // Rows removed (erasure may delete them): counted out.
    use sqlx::Connection as _;
    if db.url.starts_with("sqlite:") {
        let mut c = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
        sqlx::query(
            "DELETE FROM followups WHERE id IN (SELECT id FROM followups ORDER BY id LIMIT 7)",
        )
        .execute(&mut c)
        .await
        .unwrap();
    } else {
        let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
        sqlx::query(
            "DELETE FROM followups WHERE id IN (SELECT id FROM followups ORDER BY id LIMIT 7)",
        )
        .execute(&mut c)
        .await
        .unwrap();
        // Folding the side table into the totals changes no number.
        sqlx::query("SELECT followup_counts_fold()")
            .execute(&mut c)
            .await
            .unwrap();
    }
    assert_counts_match(&store, "deletes").await;
}

#[tokio::test]
async fn metrics_can_require_a_token() {
    let app = server(&[("AFTERCART__HTTP__METRICS_TOKEN", "m-secret")], None).await;
    let http = reqwest::Client::new();
    let r = http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.json::<Value>().await.unwrap()["error"].is_string());
    let r = http
        .get(app.url("/metrics"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::UNAUTHORIZED,
        "the API token is not the metrics token"
    );
    let r = http
        .get(app.url("/metrics"))
        .bearer_auth("m-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("aftercart_followups{state=\"sent\"} 0")
    );
    // /healthz stays open for load balancers.
    let r = http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

// ---- preview pages ------------------------------------------------------------------

#[tokio::test]
async fn preview_pages_are_not_cached_and_keep_the_token_out_of_links() {
    let app = server(&[], Some(20)).await;
    let http = reqwest::Client::new();
    let r = http
        .get(app.url(&format!("/preview?token={TOKEN}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let h = r.headers().clone();
    assert_eq!(h["cache-control"], "no-store");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["referrer-policy"], "no-referrer");
    assert_eq!(h["x-frame-options"], "DENY");
    let cookie = h["set-cookie"].to_str().unwrap().to_owned();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/preview", "Max-Age="] {
        assert!(cookie.contains(attr), "{attr} in {cookie}");
    }
    assert!(
        !cookie.contains(TOKEN),
        "the cookie is not the token: {cookie}"
    );
    let page = r.text().await.unwrap();
    assert!(
        page.contains("/preview/complete_your_setup/"),
        "links to previews"
    );
    assert!(!page.contains("token="), "the token is in no link");

    // The cookie alone opens the linked pages, which carry the same headers.
    let session = cookie.split(';').next().unwrap().to_owned();
    let link = page
        .split("href=\"")
        .skip(1)
        .map(|rest| &rest[..rest.find('"').unwrap()])
        .find(|href| href.starts_with("/preview/"))
        .unwrap()
        .to_owned();
    let r = http
        .get(app.url(&link))
        .header("Cookie", format!("theme=dark; {session}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{link}");
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert!(r.headers().get("set-cookie").is_none(), "no new session");
    let page = r.text().await.unwrap();
    assert!(page.contains("<iframe") && !page.contains("token="));

    // An altered cookie is refused, and the cookie is no API token.
    let (value, mac) = session.rsplit_once('.').unwrap();
    let forged = format!("{value}.{}", mac.chars().rev().collect::<String>());
    let r = http
        .get(app.url(&link))
        .header("Cookie", forged)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let r = http
        .post(app.url("/v1/customers"))
        .header("Cookie", &session)
        .json(&json!({"id": "C1", "email": "a@b.example"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // Signed in by header: no cookie needed, none set.
    let r = http
        .get(app.url("/preview"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers().get("set-cookie").is_none());
}

// ---- the binary ---------------------------------------------------------------------

#[tokio::test]
async fn serve_fits_the_open_file_limit_and_stops_on_sigterm_with_idle_connections() {
    use std::os::unix::process::CommandExt as _;
    let db = fresh_db().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let bind = format!("127.0.0.1:{port}");
    let env = with(
        base_env(&db.url, "file:///nonexistent"),
        &[
            ("AFTERCART__HTTP__BIND", bind.as_str()),
            ("AFTERCART__HTTP__MAX_CONNECTIONS", "100000"),
        ],
    );
    let (code, _, err) = run(&env, &["migrate"]);
    assert_eq!(code, 0, "{err}");
    let stderr = tempfile::NamedTempFile::new().unwrap();
    let mut c = cmd(&env);
    c.args(["serve", "--no-worker"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(stderr.reopen().unwrap());
    // SAFETY: setrlimit is async-signal-safe; the closure touches nothing else.
    unsafe {
        c.pre_exec(|| rlimit::setrlimit(rlimit::Resource::NOFILE, 256, 256));
    }
    /// Kills the server if an assertion fails first.
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Kill(c.spawn().expect("spawn aftercart serve"));
    let pid = child.0.id();
    let logs = || std::fs::read_to_string(stderr.path()).unwrap_or_default();
    let http = reqwest::Client::builder().timeout(SAFETY).build().unwrap();
    let url = format!("http://{bind}/healthz");
    let up = wait_until(SAFETY, || {
        let (http, url) = (http.clone(), url.clone());
        async move { http.get(&url).send().await.is_ok_and(|r| r.status() == 200) }
    })
    .await;
    assert!(up, "serve did not answer /healthz\n{}", logs());
    assert!(
        logs().contains("http.max_connections lowered"),
        "a warning names the key\n{}",
        logs()
    );

    // An idle keep-alive and a half-sent request are open when SIGTERM arrives.
    let mut idle = TcpStream::connect(&bind).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut idle).await.0, 200);
    let mut half = TcpStream::connect(&bind).await.unwrap();
    half.write_all(b"GET /heal").await.unwrap();
    // SAFETY: kill(2) on our own child, not yet reaped.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) }, 0);
    let mut status = None;
    let exited = wait_until(SAFETY, || {
        status = child.0.try_wait().unwrap();
        let done = status.is_some();
        async move { done }
    })
    .await;
    assert!(exited, "serve did not stop on SIGTERM\n{}", logs());
    assert!(status.unwrap().success(), "{status:?}\n{}", logs());
    assert_eq!(
        read_until_closed(&mut idle).await.as_deref(),
        Some(&b""[..])
    );
}
