//! Mailer tests against the real SMTP sink over TCP.

use std::collections::HashSet;
use std::time::Duration;

use super::*;
use aftercart_testkit::sink::{Fault, FaultPlan, SessionFaults, SmtpSink};

fn email(id: &str) -> OutgoingEmail {
    OutgoingEmail {
        from: "Åsa's Störe <shop@example.com>".into(),
        to: "Customer <customer@example.org>".into(),
        subject: "Thanks for your order — a few ideas ☕".into(),
        html: "<p>Hello ☕</p><p>.leading dot line</p>".into(),
        text: "Hello ☕\n.leading dot line\n".into(),
        message_id: id.into(),
        headers: vec![
            (
                "List-Unsubscribe".into(),
                "<https://shop.example.com/u/abc?t=1&s=xyz>, <mailto:unsub@example.com?subject=unsubscribe>".into(),
            ),
            (
                "List-Unsubscribe-Post".into(),
                "List-Unsubscribe=One-Click".into(),
            ),
            ("List-Id".into(), "Follow-ups <followups.shop.example.com>".into()),
        ],
    }
}

fn cfg(url: String, pool_size: usize, timeout: Duration) -> MailerConfig {
    MailerConfig {
        url,
        pool_size,
        timeout,
        data_timeout: timeout,
        probe_base: Duration::from_millis(50),
        probe_max: Duration::from_millis(200),
        username: None,
        password: None,
    }
}

async fn mailer(sink: &SmtpSink, pool_size: usize, timeout: Duration) -> Mailer {
    Mailer::connect(cfg(sink.url(), pool_size, timeout))
        .await
        .expect("connect")
}

/// Unfolded value of the first header called `name` in a raw message.
fn header(raw: &str, name: &str) -> Option<String> {
    let head = raw.split("\r\n\r\n").next()?;
    let mut lines = head.split("\r\n").peekable();
    while let Some(line) = lines.next() {
        let Some((n, v)) = line.split_once(':') else {
            continue;
        };
        if n.eq_ignore_ascii_case(name) {
            let mut value = v.trim_start().to_string();
            while let Some(cont) = lines.peek().filter(|l| l.starts_with([' ', '\t'])) {
                value.push_str(cont);
                lines.next();
            }
            return Some(value);
        }
    }
    None
}

fn assert_well_formed(raw: &str, id: &str) {
    assert_eq!(
        header(raw, "Message-ID").as_deref(),
        Some(&*format!("<{id}>"))
    );
    assert!(header(raw, "Date").is_some(), "Date header");
    let e = email(id);
    for (name, value) in &e.headers {
        // Folding may turn ", " into ",\r\n " — unfolding restores a space.
        let got = header(raw, name).unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(got.replace("  ", " "), *value, "{name}");
    }
    let ct = header(raw, "Content-Type").expect("content-type");
    assert!(ct.starts_with("multipart/alternative"), "{ct}");
    let plain = raw
        .find("Content-Type: text/plain; charset=utf-8")
        .expect("plain part");
    let html = raw
        .find("Content-Type: text/html; charset=utf-8")
        .expect("html part");
    assert!(plain < html, "text/plain comes first");
    // Non-ASCII subject and display name are RFC 2047-encoded, the raw header is ASCII.
    let subject = header(raw, "Subject").unwrap();
    assert!(
        subject.is_ascii() && subject.contains("=?utf-8?"),
        "{subject}"
    );
    let from = header(raw, "From").unwrap();
    assert!(
        from.is_ascii() && from.ends_with("<shop@example.com>"),
        "{from}"
    );
}

#[tokio::test]
async fn message_arrives_with_id_list_headers_and_both_parts() {
    let sink = SmtpSink::start().await;
    let m = mailer(&sink, 2, Duration::from_secs(5)).await;
    let reply = m.send(&email("fu-1.abcd@aftercart")).await.expect("send");
    assert!(reply.starts_with("250"), "{reply}");
    assert!(sink.wait_for(1, Duration::from_secs(2)).await);
    let got = sink.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].message_id, "fu-1.abcd@aftercart");
    assert_eq!(got[0].to, vec!["customer@example.org".to_string()]);
    assert_eq!(got[0].from, "shop@example.com");
    let raw = got[0].raw.as_deref().unwrap();
    assert_well_formed(raw, "fu-1.abcd@aftercart");
    // Dot-stuffed by the client, unstuffed by the sink: the line survives intact.
    assert!(raw.contains("\r\n.leading dot line\r\n"), "{raw}");
}

#[tokio::test]
async fn reply_451_is_transient_and_connection_is_reused() {
    let sink = SmtpSink::start().await;
    sink.set_faults(FaultPlan::reply_first(1, "451 4.3.0 try again later"));
    let m = mailer(&sink, 1, Duration::from_secs(5)).await;
    let err = m.send(&email("fu-2@aftercart")).await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert_eq!(err.reply(), "451 4.3.0 try again later");
    // Second attempt of the same message is accepted.
    m.send(&email("fu-2@aftercart")).await.expect("retry");
    assert_eq!(sink.message_ids(), vec!["fu-2@aftercart".to_string()]);
    assert_eq!(sink.attempts("fu-2@aftercart"), 2);
    assert_eq!(
        sink.connections(),
        1,
        "a 4xx reply must not cost the connection"
    );
}

#[tokio::test]
async fn reply_550_is_permanent_with_full_reply() {
    let sink = SmtpSink::start().await;
    sink.set_faults(FaultPlan::always("550 5.1.1 no such user"));
    let m = mailer(&sink, 1, Duration::from_secs(5)).await;
    let err = m.send(&email("fu-3@aftercart")).await.unwrap_err();
    assert_eq!(
        err,
        SendError::Permanent {
            reply: "550 5.1.1 no such user".into(),
            hard_bounce: true,
        }
    );
    assert_eq!(sink.count(), 0);
    assert_eq!(sink.attempts("fu-3@aftercart"), 1);
}

#[tokio::test]
async fn drop_after_the_whole_message_went_out_is_unknown_and_a_resend_succeeds() {
    let sink = SmtpSink::start().await;
    sink.set_faults(FaultPlan::drop_during_data_first(1));
    let m = mailer(&sink, 1, Duration::from_secs(5)).await;
    // A small message fits in the socket buffers: the final dot went out before the
    // server hung up, so the client cannot know whether it was taken.
    let err = m.send(&email("fu-4@aftercart")).await.unwrap_err();
    assert!(matches!(err, SendError::Unknown { .. }), "{err:?}");
    assert!(err.reply().starts_with("unknown:"), "{err:?}");
    assert_eq!(sink.count(), 0);
    // Same Mailer: the broken connection was discarded, a new one works.
    m.send(&email("fu-4@aftercart")).await.expect("resend");
    m.send(&email("fu-5@aftercart")).await.unwrap_err(); // first attempt of another id drops too
    m.send(&email("fu-5@aftercart")).await.expect("resend");
    assert_eq!(sink.message_ids(), vec!["fu-4@aftercart", "fu-5@aftercart"]);
    assert!(
        m.relay_state().is_up(),
        "a message's trouble is not the relay's"
    );
}

/// Whether the final dot went out decides "transient" (the relay cannot have the
/// message) against "unknown". (Provoking a failed write before the dot through lettre
/// needs a body larger than the socket buffers, which lettre builds far too slowly in a
/// debug build, so the watch is checked on its own over a real socket.)
#[tokio::test]
async fn the_wire_watch_sees_whether_the_final_dot_went_out() {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { listener.accept().await.unwrap().0 });
    let wire = Wire::default();
    let mut s = Watched::new(
        tokio::net::TcpStream::connect(addr).await.unwrap(),
        wire.clone(),
    );
    let _peer = server.await.unwrap();
    s.write_all(b"DATA\r\n").await.unwrap();
    let mark = wire.mark();
    assert_eq!(
        wire.dot_sent_since(mark),
        Some(false),
        "nothing since the mark"
    );
    s.write_all(b"Subject: x\r\n\r\n..stuffed line\r\nbody")
        .await
        .unwrap();
    assert_eq!(wire.dot_sent_since(mark), Some(false));
    s.write_all(b"\r\n.\r").await.unwrap();
    assert_eq!(wire.dot_sent_since(mark), Some(false), "half a terminator");
    s.write_all(b"\n").await.unwrap();
    assert_eq!(wire.dot_sent_since(mark), Some(true));
    // The previous message's terminator does not count for the next one.
    s.write_all(b"MAIL FROM:<a@b>\r\n").await.unwrap();
    assert_eq!(wire.dot_sent_since(wire.mark()), Some(false));
    // Under STARTTLS the bytes seen are ciphertext: nothing can be told.
    wire.set_opaque();
    assert_eq!(wire.dot_sent_since(mark), None);
}

#[tokio::test]
async fn no_reply_to_the_dot_within_data_timeout_is_unknown() {
    let sink = SmtpSink::start().await;
    sink.set_faults(FaultPlan::stall_first(1));
    let m = mailer(&sink, 1, Duration::from_millis(300)).await;
    let err = m.send(&email("fu-6@aftercart")).await.unwrap_err();
    assert!(matches!(err, SendError::Unknown { .. }), "{err:?}");
    assert!(
        err.reply().starts_with("unknown:") && err.reply().contains("300ms"),
        "{err:?}"
    );
    m.send(&email("fu-6@aftercart")).await.expect("after stall");
    assert_eq!(sink.count(), 1);
    assert!(m.relay_state().is_up());
}

#[tokio::test]
async fn a_slow_reply_to_the_dot_waits_for_data_timeout_not_the_command_timeout() {
    let sink = SmtpSink::start().await;
    sink.set_delay(Duration::from_millis(800));
    let mut c = cfg(sink.url(), 1, Duration::from_millis(200));
    c.data_timeout = Duration::from_secs(30);
    let m = Mailer::connect(c).await.unwrap();
    let reply = m
        .send(&email("fu-slow@aftercart"))
        .await
        .expect("delivered");
    assert!(reply.starts_with("250"), "{reply}");
    assert_eq!(sink.message_ids(), vec!["fu-slow@aftercart"]);
    assert_eq!(sink.attempts("fu-slow@aftercart"), 1);
}

/// Waits (real time, the breaker's) until the paused relay takes a probe.
async fn probe_due(m: &Mailer) {
    loop {
        match m.relay_state() {
            RelayState::Paused {
                next_probe_in,
                probing: false,
                ..
            } if next_probe_in.is_zero() => return,
            RelayState::Up => panic!("relay is up"),
            RelayState::Paused { next_probe_in, .. } => {
                tokio::time::sleep(next_probe_in.max(Duration::from_millis(5))).await
            }
        }
    }
}

fn failed_probes(m: &Mailer) -> u32 {
    match m.relay_state() {
        RelayState::Paused { failed_probes, .. } => failed_probes,
        RelayState::Up => panic!("relay is up"),
    }
}

#[tokio::test]
async fn a_421_greeting_pauses_sending_until_a_probe_gets_through() {
    let sink = SmtpSink::start().await;
    sink.set_session_faults(SessionFaults {
        greeting: Some("421 4.3.2 Service not available".into()),
        ..SessionFaults::default()
    });
    // The warm-up connection already meets the outage.
    let m = mailer(&sink, 2, Duration::from_secs(5)).await;
    assert_eq!(sink.connections(), 1);
    match m.relay_state() {
        RelayState::Paused { reason, .. } => assert!(reason.contains("421 4.3.2"), "{reason}"),
        RelayState::Up => panic!("not paused"),
    }
    // While paused, sends are refused at once without touching the network.
    for i in 0..20 {
        let err = m
            .send(&email(&format!("fu-p{i}@aftercart")))
            .await
            .unwrap_err();
        assert!(err.is_relay() && err.reply().contains("421"), "{err:?}");
    }
    assert_eq!(sink.connections(), 1);

    // A due probe is one real attempt; failing, it doubles the wait.
    probe_due(&m).await;
    let err = m.send(&email("fu-p0@aftercart")).await.unwrap_err();
    assert!(err.is_relay(), "{err:?}");
    assert_eq!(sink.connections(), 2);
    assert_eq!(failed_probes(&m), 1);

    sink.set_session_faults(SessionFaults::default());
    probe_due(&m).await;
    m.send(&email("fu-p0@aftercart")).await.expect("probe");
    assert!(m.relay_state().is_up());
    m.send(&email("fu-p1@aftercart"))
        .await
        .expect("after the probe");
    assert_eq!(
        sink.message_ids(),
        vec!["fu-p0@aftercart", "fu-p1@aftercart"]
    );
}

#[tokio::test]
async fn a_refused_sender_is_the_relays_state_and_keeps_the_connection() {
    let sink = SmtpSink::start().await;
    sink.set_session_faults(SessionFaults {
        mail: Some("553 5.1.8 <shop@example.com>: Sender address rejected".into()),
        ..SessionFaults::default()
    });
    let m = mailer(&sink, 1, Duration::from_secs(5)).await;
    let err = m.send(&email("fu-s@aftercart")).await.unwrap_err();
    assert_eq!(
        err,
        SendError::Relay {
            reply: "553 5.1.8 <shop@example.com>: Sender address rejected".into()
        }
    );
    assert!(!m.relay_state().is_up());
    assert_eq!(sink.mail_commands(), 1);
    sink.set_session_faults(SessionFaults::default());
    probe_due(&m).await;
    m.send(&email("fu-s@aftercart")).await.expect("fixed");
    // RSET after the refusal: the same connection carried the probe.
    assert_eq!(sink.connections(), 1);
}

#[tokio::test]
async fn rcpt_replies_are_judged_by_their_enhanced_codes() {
    let sink = SmtpSink::start().await;
    sink.set_session_faults(SessionFaults::rcpt(|addr| {
        let reply = match addr.split('@').next()? {
            "gone" => "550 5.1.1 <gone@example.org>: Recipient address rejected: User unknown",
            "odd" => "553 mailbox name not allowed",
            "busy" => "451 4.3.0 try again later",
            "far" => "554 5.7.1 <far@example.org>: Relay access denied",
            _ => return None,
        };
        Some(reply.to_string())
    }));
    let m = mailer(&sink, 1, Duration::from_secs(5)).await;
    let to = |who: &str| {
        let mut e = email(&format!("fu-{who}@aftercart"));
        e.to = format!("{who}@example.org");
        e
    };
    let gone = m.send(&to("gone")).await.unwrap_err();
    assert!(
        matches!(
            gone,
            SendError::Permanent {
                hard_bounce: true,
                ..
            }
        ),
        "{gone:?}"
    );
    let odd = m.send(&to("odd")).await.unwrap_err();
    assert!(
        matches!(
            odd,
            SendError::Permanent {
                hard_bounce: false,
                ..
            }
        ),
        "{odd:?}"
    );
    let busy = m.send(&to("busy")).await.unwrap_err();
    assert!(busy.is_transient(), "{busy:?}");
    assert!(
        m.relay_state().is_up(),
        "per-recipient replies leave the relay up"
    );
    m.send(&to("fine")).await.expect("fine");
    let far = m.send(&to("far")).await.unwrap_err();
    assert!(far.is_relay(), "{far:?}");
    assert!(!m.relay_state().is_up());
    assert_eq!(
        sink.connections(),
        1,
        "each refusal was RSET, the connection kept"
    );
}

#[tokio::test]
async fn a_refused_connection_is_the_relays_state() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let m = Mailer::connect(cfg(
        format!("smtp://127.0.0.1:{port}"),
        1,
        Duration::from_secs(5),
    ))
    .await
    .unwrap();
    assert!(!m.relay_state().is_up());
    let err = m.send(&email("fu-r@aftercart")).await.unwrap_err();
    assert!(
        err.is_relay() && err.reply().contains("cannot connect"),
        "{err:?}"
    );
}

#[tokio::test]
async fn custom_fault_plan_and_rejection_keeps_connection_in_sync() {
    let sink = SmtpSink::start().await;
    sink.set_faults(FaultPlan::custom(|id, _| {
        if id.starts_with("bad") {
            Fault::Reply("554 5.7.1 rejected".into())
        } else {
            Fault::Accept
        }
    }));
    let m = mailer(&sink, 1, Duration::from_secs(5)).await;
    for i in 0..5 {
        let r = m.send(&email(&format!("bad-{i}@aftercart"))).await;
        assert!(matches!(r, Err(SendError::Permanent { .. })), "{r:?}");
        m.send(&email(&format!("ok-{i}@aftercart")))
            .await
            .expect("ok");
    }
    assert_eq!(sink.count(), 5);
}

#[tokio::test]
async fn file_transport_writes_parseable_eml() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("outbox/nested");
    let m = Mailer::connect(cfg(
        format!("file://{}", out.display()),
        1,
        Duration::from_secs(5),
    ))
    .await
    .unwrap();
    let reply = m.send(&email("fu-7.x@aftercart")).await.unwrap();
    let path = out.join("fu-7.x@aftercart.eml");
    assert_eq!(reply, format!("250 written to {}", path.display()));
    let raw = std::fs::read_to_string(&path).unwrap();
    assert_well_formed(&raw, "fu-7.x@aftercart");
    // Nothing but the .eml is left behind.
    let names: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
}

#[tokio::test]
async fn two_hundred_messages_over_pool_of_four_arrive_once() {
    let sink = SmtpSink::start().await;
    let m = mailer(&sink, 4, Duration::from_secs(10)).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let m = m.clone();
        tasks.spawn(async move { m.send(&email(&format!("fu-{i}@aftercart"))).await });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap().expect("send");
    }
    let ids = sink.message_ids();
    assert_eq!(ids.len(), 200);
    let unique: HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), 200);
    assert!(sink.connections() <= 4, "pool_size bounds connections");
}

/// Throughput check (run with `--ignored --nocapture`, ideally in release).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn throughput() {
    let sink = SmtpSink::start().await;
    sink.set_keep_bodies(false);
    let m = mailer(&sink, 8, Duration::from_secs(10)).await;
    let n = 5_000;
    let started = std::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..32 {
        let m = m.clone();
        tasks.spawn(async move {
            for i in (w..n).step_by(32) {
                m.send(&email(&format!("tp-{i}@aftercart")))
                    .await
                    .expect("send");
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!("{n} messages in {secs:.2}s = {:.0} msg/s", n as f64 / secs);
    assert_eq!(sink.count(), n);
}

#[tokio::test]
async fn unknown_scheme_is_refused() {
    let err = Mailer::connect(cfg("ftp://x".into(), 1, Duration::from_secs(1)))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("ftp://x"), "{msg}");
    assert!(
        msg.contains("smtp://") && msg.contains("smtps://") && msg.contains("file://"),
        "{msg}"
    );
    let err = Mailer::connect(cfg(
        "smtp://h:25?tls=maybe".into(),
        1,
        Duration::from_secs(1),
    ))
    .await
    .unwrap_err();
    assert!(err.to_string().contains("tls=maybe"), "{err}");
}

#[test]
fn build_rejects_bad_input() {
    let mut e = email("x@y");
    e.message_id = "<x@y>".into();
    assert!(matches!(build_message(&e), Err(MailError::MessageId(_))));
    let mut e = email("x@y");
    e.headers.push(("X-Bad".into(), "a\r\nBcc: evil@x".into()));
    assert!(matches!(build_message(&e), Err(MailError::Header { .. })));
    let mut e = email("x@y");
    e.to = "not an address".into();
    assert!(matches!(
        build_message(&e),
        Err(MailError::Address { field: "to", .. })
    ));
}
