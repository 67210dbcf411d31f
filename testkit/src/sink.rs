//! A real SMTP server for tests and benchmarks.
//!
//! [`SmtpSink`] listens on `127.0.0.1:0`, speaks enough SMTP for lettre (EHLO/HELO, MAIL,
//! RCPT, DATA, RSET, NOOP, QUIT), records every accepted message and can inject faults per
//! DATA attempt ([`FaultPlan`]) and at the greeting, MAIL FROM and RCPT TO
//! ([`SessionFaults`]) so that retry, idempotency and relay-outage logic can be exercised
//! over a genuine TCP connection rather than a stub transport.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};

/// One message the sink accepted (answered the end of DATA with 250).
#[derive(Debug, Clone)]
pub struct Received {
    /// The Message-ID header, without the angle brackets ("" when absent).
    pub message_id: String,
    /// The envelope sender (MAIL FROM), without angle brackets.
    pub from: String,
    /// The envelope recipients (RCPT TO), without angle brackets.
    pub to: Vec<String>,
    /// When the message was accepted.
    pub at: Instant,
    /// The message data after dot-unstuffing, when bodies are kept.
    pub raw: Option<String>,
}

/// What the sink does with one DATA attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Record the message and answer 250.
    Accept,
    /// Answer with this reply line (e.g. "451 4.3.0 try again later"); nothing is recorded.
    Reply(String),
    /// Close the connection in the middle of DATA, without replying.
    DropDuringData,
    /// Read the whole message but never answer; the client must time out.
    Stall,
}

type FaultFn = dyn Fn(&str, usize) -> Fault + Send + Sync;
type RcptFn = dyn Fn(&str) -> Option<String> + Send + Sync;

/// Replies the sink gives instead of its usual ones before DATA: what a relay that is down,
/// misconfigured or refusing our sender does. Default: none.
#[derive(Clone, Default)]
pub struct SessionFaults {
    /// Instead of "220 …", this reply, then the connection is closed
    /// (e.g. "421 4.3.2 Service not available").
    pub greeting: Option<String>,
    /// The reply to every MAIL FROM (e.g. "553 5.1.8 Sender address rejected").
    pub mail: Option<String>,
    /// The reply to RCPT TO:<address> when this returns Some
    /// (e.g. "554 5.7.1 Relay access denied", "550 5.1.1 no such user").
    pub rcpt: Option<Arc<RcptFn>>,
}

impl fmt::Debug for SessionFaults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionFaults")
            .field("greeting", &self.greeting)
            .field("mail", &self.mail)
            .field("rcpt", &self.rcpt.as_ref().map(|_| "custom"))
            .finish()
    }
}

impl SessionFaults {
    /// Answer every RCPT TO with `f(address)` when it returns Some.
    pub fn rcpt(f: impl Fn(&str) -> Option<String> + Send + Sync + 'static) -> Self {
        SessionFaults {
            rcpt: Some(Arc::new(f)),
            ..SessionFaults::default()
        }
    }
}

/// Decides the fate of each DATA attempt from the Message-ID and how many times that
/// Message-ID was attempted before (0-based).
#[derive(Clone)]
pub struct FaultPlan {
    decide: Option<Arc<FaultFn>>,
}

impl fmt::Debug for FaultPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.decide.is_some() {
            "FaultPlan(custom)"
        } else {
            "FaultPlan(none)"
        })
    }
}

impl Default for FaultPlan {
    fn default() -> Self {
        Self::none()
    }
}

impl FaultPlan {
    /// Accept everything.
    pub fn none() -> Self {
        Self { decide: None }
    }

    /// Any rule: `f(message_id, previous_attempts)`.
    pub fn custom(f: impl Fn(&str, usize) -> Fault + Send + Sync + 'static) -> Self {
        Self {
            decide: Some(Arc::new(f)),
        }
    }

    /// Answer `reply` to the first `n_attempts` attempts of every message, then accept.
    pub fn reply_first(n_attempts: usize, reply: impl Into<String>) -> Self {
        let reply = reply.into();
        Self::custom(move |_, prev| {
            if prev < n_attempts {
                Fault::Reply(reply.clone())
            } else {
                Fault::Accept
            }
        })
    }

    /// Answer `reply` to every attempt.
    pub fn always(reply: impl Into<String>) -> Self {
        let reply = reply.into();
        Self::custom(move |_, _| Fault::Reply(reply.clone()))
    }

    /// Close the connection mid-DATA for the first `n` attempts of each message.
    pub fn drop_during_data_first(n: usize) -> Self {
        Self::custom(move |_, prev| {
            if prev < n {
                Fault::DropDuringData
            } else {
                Fault::Accept
            }
        })
    }

    /// Never answer the end of DATA for the first `n` attempts of each message.
    pub fn stall_first(n: usize) -> Self {
        Self::custom(move |_, prev| {
            if prev < n {
                Fault::Stall
            } else {
                Fault::Accept
            }
        })
    }

    fn decide(&self, message_id: &str, previous: usize) -> Fault {
        match &self.decide {
            None => Fault::Accept,
            Some(f) => f(message_id, previous),
        }
    }
}

struct State {
    received: Mutex<Vec<Received>>,
    attempts: Mutex<HashMap<String, usize>>,
    count: AtomicUsize,
    connections: AtomicUsize,
    mail_commands: AtomicUsize,
    session: RwLock<SessionFaults>,
    keep_bodies: AtomicBool,
    delay_nanos: AtomicU64,
    faults: RwLock<FaultPlan>,
    notify: Notify,
}

/// A running SMTP test server. Dropping it stops the listener and every open connection.
pub struct SmtpSink {
    addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        // The accept task owns the JoinSet of connection tasks, so this ends them all.
        self.task.abort();
    }
}

impl SmtpSink {
    /// Binds 127.0.0.1 on a free port and starts serving.
    ///
    /// # Panics
    /// When no local port can be bound (a test environment problem).
    pub async fn start() -> SmtpSink {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("SmtpSink: bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("SmtpSink: local_addr");
        let state = Arc::new(State {
            received: Mutex::new(Vec::new()),
            attempts: Mutex::new(HashMap::new()),
            count: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            mail_commands: AtomicUsize::new(0),
            session: RwLock::new(SessionFaults::default()),
            keep_bodies: AtomicBool::new(true),
            delay_nanos: AtomicU64::new(0),
            faults: RwLock::new(FaultPlan::none()),
            notify: Notify::new(),
        });
        let task = tokio::spawn(accept_loop(listener, state.clone()));
        SmtpSink { addr, state, task }
    }

    /// "smtp://127.0.0.1:PORT".
    pub fn url(&self) -> String {
        format!("smtp://{}", self.addr)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Accepted messages, in acceptance order.
    pub fn received(&self) -> Vec<Received> {
        lock(&self.state.received).clone()
    }

    /// Number of accepted messages.
    pub fn count(&self) -> usize {
        self.state.count.load(Ordering::Acquire)
    }

    /// Number of connections accepted so far (to check connection reuse).
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::Relaxed)
    }

    /// Number of MAIL FROM commands received so far, answered 250 or not.
    pub fn mail_commands(&self) -> usize {
        self.state.mail_commands.load(Ordering::Relaxed)
    }

    /// Message-IDs of the accepted messages, in acceptance order.
    pub fn message_ids(&self) -> Vec<String> {
        lock(&self.state.received)
            .iter()
            .map(|r| r.message_id.clone())
            .collect()
    }

    /// DATA attempts seen for this Message-ID (accepted or not).
    pub fn attempts(&self, message_id: &str) -> usize {
        lock(&self.state.attempts)
            .get(message_id)
            .copied()
            .unwrap_or(0)
    }

    /// Waits until at least `n` messages were accepted; false on timeout.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Register interest before checking, so a notification in between is not lost.
            let notified = self.state.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.count() >= n {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.count() >= n;
            }
        }
    }

    /// Keep the full data of each message in [`Received::raw`] (default on).
    pub fn set_keep_bodies(&self, keep: bool) {
        self.state.keep_bodies.store(keep, Ordering::Relaxed);
    }

    /// Wait this long before answering the end of DATA (simulates a slow server).
    pub fn set_delay(&self, delay: Duration) {
        let nanos = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
        self.state.delay_nanos.store(nanos, Ordering::Relaxed);
    }

    /// Fault injection for subsequent DATA attempts.
    pub fn set_faults(&self, plan: FaultPlan) {
        *self.state.faults.write().unwrap_or_else(|e| e.into_inner()) = plan;
    }

    /// Faults at the greeting, MAIL FROM and RCPT TO for subsequent connections and
    /// commands (`SessionFaults::default()` clears them).
    pub fn set_session_faults(&self, faults: SessionFaults) {
        *self
            .state
            .session
            .write()
            .unwrap_or_else(|e| e.into_inner()) = faults;
    }

    /// Forget received messages and attempt counts.
    pub fn clear(&self) {
        lock(&self.state.received).clear();
        lock(&self.state.attempts).clear();
        self.state.count.store(0, Ordering::Release);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panicking test thread must not take the sink down with it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn accept_loop(listener: TcpListener, state: Arc<State>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    state.connections.fetch_add(1, Ordering::Relaxed);
                    conns.spawn(serve(stream, state.clone()));
                }
                Err(err) => {
                    tracing::warn!(%err, "smtp sink: accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            // Reap finished connection tasks so the set does not grow forever.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// How one connection ended, for logging only.
type ConnResult = std::io::Result<()>;

/// Envelope of the transaction in progress.
#[derive(Default)]
struct Txn {
    from: Option<String>,
    to: Vec<String>,
}

const EHLO_REPLY: &[u8] =
    b"250-sink.localhost\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n250 SIZE 52428800\r\n";

async fn serve(stream: TcpStream, state: Arc<State>) {
    if let Err(err) = serve_inner(stream, &state).await {
        tracing::debug!(%err, "smtp sink: connection ended with an error");
    }
}

fn session(state: &State) -> SessionFaults {
    state
        .session
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
}

fn reply_line(reply: &str) -> Vec<u8> {
    format!("{}\r\n", reply.trim_end()).into_bytes()
}

async fn serve_inner(stream: TcpStream, state: &State) -> ConnResult {
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(64 * 1024, rd);
    if let Some(reply) = session(state).greeting {
        wr.write_all(&reply_line(&reply)).await?;
        return Ok(());
    }
    wr.write_all(b"220 sink.localhost ESMTP aftercart test sink\r\n")
        .await?;

    let mut line = Vec::with_capacity(1024);
    let mut data = Vec::with_capacity(16 * 1024);
    let mut txn = Txn::default();
    loop {
        line.clear();
        if rd.read_until(b'\n', &mut line).await? == 0 {
            return Ok(());
        }
        let cmd = trim_crlf(&line);
        let verb = cmd.split(|&b| b == b' ').next().unwrap_or(b"");
        let verb = if verb.len() <= 8 {
            let mut v = [0u8; 8];
            v[..verb.len()].copy_from_slice(verb);
            v.make_ascii_uppercase();
            v
        } else {
            [0u8; 8]
        };
        let verb = trim_nul(&verb);
        match verb {
            b"EHLO" => {
                txn = Txn::default();
                wr.write_all(EHLO_REPLY).await?;
            }
            b"HELO" => {
                txn = Txn::default();
                wr.write_all(b"250 sink.localhost\r\n").await?;
            }
            b"MAIL" => {
                state.mail_commands.fetch_add(1, Ordering::Relaxed);
                match (path_arg(cmd, b"MAIL FROM:"), session(state).mail) {
                    (Some(_), Some(refusal)) => wr.write_all(&reply_line(&refusal)).await?,
                    (Some(p), None) => {
                        txn = Txn {
                            from: Some(p),
                            to: Vec::new(),
                        };
                        wr.write_all(b"250 2.1.0 Ok\r\n").await?;
                    }
                    (None, _) => {
                        wr.write_all(b"501 5.5.4 Syntax: MAIL FROM:<address>\r\n")
                            .await?
                    }
                }
            }
            b"RCPT" => {
                if txn.from.is_none() {
                    wr.write_all(b"503 5.5.1 Error: need MAIL command\r\n")
                        .await?;
                    continue;
                }
                let refused = session(state).rcpt;
                match path_arg(cmd, b"RCPT TO:") {
                    Some(p) if let Some(reply) = refused.as_ref().and_then(|f| f(&p)) => {
                        wr.write_all(&reply_line(&reply)).await?;
                    }
                    Some(p) => {
                        txn.to.push(p);
                        wr.write_all(b"250 2.1.5 Ok\r\n").await?;
                    }
                    None => {
                        wr.write_all(b"501 5.5.4 Syntax: RCPT TO:<address>\r\n")
                            .await?
                    }
                }
            }
            b"DATA" => {
                if txn.to.is_empty() {
                    wr.write_all(b"503 5.5.1 Error: need RCPT command\r\n")
                        .await?;
                    continue;
                }
                wr.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    .await?;
                let t = std::mem::take(&mut txn);
                match receive_data(&mut rd, &mut line, &mut data, state).await? {
                    DataOutcome::Drop => return Ok(()),
                    DataOutcome::Stall => {
                        // Hold the connection open, never answering, until the client gives up.
                        let mut sink = [0u8; 4096];
                        while rd.read(&mut sink).await? > 0 {}
                        return Ok(());
                    }
                    DataOutcome::Reply(reply) => {
                        apply_delay(state).await;
                        wr.write_all(reply.as_bytes()).await?;
                    }
                    DataOutcome::Accept(message_id) => {
                        apply_delay(state).await;
                        let raw = state
                            .keep_bodies
                            .load(Ordering::Relaxed)
                            .then(|| String::from_utf8_lossy(&data).into_owned());
                        lock(&state.received).push(Received {
                            message_id,
                            from: t.from.unwrap_or_default(),
                            to: t.to,
                            at: Instant::now(),
                            raw,
                        });
                        state.count.fetch_add(1, Ordering::AcqRel);
                        state.notify.notify_waiters();
                        wr.write_all(b"250 2.0.0 Ok queued\r\n").await?;
                    }
                }
            }
            b"RSET" => {
                txn = Txn::default();
                wr.write_all(b"250 2.0.0 Ok\r\n").await?;
            }
            b"NOOP" => wr.write_all(b"250 2.0.0 Ok\r\n").await?,
            b"QUIT" => {
                wr.write_all(b"221 2.0.0 Bye\r\n").await?;
                return Ok(());
            }
            _ => {
                wr.write_all(b"502 5.5.2 Error: command not recognized\r\n")
                    .await?
            }
        }
    }
}

enum DataOutcome {
    Accept(String),
    Reply(String),
    Drop,
    Stall,
}

/// Reads DATA up to the terminating "." line into `data` (dot-unstuffed) and decides the
/// attempt's fate as soon as the Message-ID is known (end of the header block).
async fn receive_data(
    rd: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    line: &mut Vec<u8>,
    data: &mut Vec<u8>,
    state: &State,
) -> std::io::Result<DataOutcome> {
    data.clear();
    let mut in_headers = true;
    let mut decided: Option<(String, Fault)> = None;
    loop {
        line.clear();
        if rd.read_until(b'\n', line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let content = trim_crlf(line);
        if content == b"." {
            break;
        }
        // Dot-unstuffing (RFC 5321 4.5.2).
        let unstuffed = if line.first() == Some(&b'.') {
            &line[1..]
        } else {
            &line[..]
        };
        data.extend_from_slice(unstuffed);
        if in_headers && content.is_empty() {
            in_headers = false;
            let d = decide(data, state);
            if d.1 == Fault::DropDuringData {
                return Ok(DataOutcome::Drop);
            }
            decided = Some(d);
        }
    }
    let (message_id, fault) = match decided {
        Some(d) => d,
        None => decide(data, state),
    };
    Ok(match fault {
        Fault::Accept => DataOutcome::Accept(message_id),
        Fault::Reply(mut r) => {
            if !r.ends_with("\r\n") {
                r.push_str("\r\n");
            }
            DataOutcome::Reply(r)
        }
        Fault::DropDuringData => DataOutcome::Drop,
        Fault::Stall => DataOutcome::Stall,
    })
}

/// Counts the attempt and asks the fault plan.
fn decide(headers: &[u8], state: &State) -> (String, Fault) {
    let message_id = find_message_id(headers).unwrap_or_default();
    let previous = {
        let mut attempts = lock(&state.attempts);
        let n = attempts.entry(message_id.clone()).or_insert(0);
        *n += 1;
        *n - 1
    };
    let plan = state
        .faults
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let fault = plan.decide(&message_id, previous);
    (message_id, fault)
}

async fn apply_delay(state: &State) {
    let nanos = state.delay_nanos.load(Ordering::Relaxed);
    if nanos > 0 {
        tokio::time::sleep(Duration::from_nanos(nanos)).await;
    }
}

fn trim_crlf(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn trim_nul(v: &[u8; 8]) -> &[u8] {
    let end = v.iter().position(|&b| b == 0).unwrap_or(v.len());
    &v[..end]
}

/// Extracts the address of "MAIL FROM:<a> params" / "RCPT TO:<a>" (prefix case-insensitive).
fn path_arg(cmd: &[u8], prefix: &[u8]) -> Option<String> {
    if cmd.len() < prefix.len() || !cmd[..prefix.len()].eq_ignore_ascii_case(prefix) {
        return None;
    }
    let rest = std::str::from_utf8(&cmd[prefix.len()..]).ok()?.trim_start();
    if let Some(inner) = rest.strip_prefix('<') {
        let end = inner.find('>')?;
        Some(inner[..end].to_string())
    } else {
        rest.split_whitespace().next().map(str::to_string)
    }
}

/// Finds the Message-ID header in the header block (unfolding continuation lines) and
/// returns it without the angle brackets.
fn find_message_id(data: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n').map(|l| l.trim_end_matches('\r'));
    while let Some(l) = lines.next() {
        if l.is_empty() {
            break;
        }
        let Some((name, value)) = l.split_once(':') else {
            continue;
        };
        if !name.trim().eq_ignore_ascii_case("message-id") {
            continue;
        }
        let mut value = value.trim().to_string();
        for cont in lines.by_ref() {
            if cont.starts_with([' ', '\t']) {
                value.push_str(cont.trim());
            } else {
                break;
            }
        }
        let v = value.trim();
        let v = match (v.find('<'), v.rfind('>')) {
            (Some(a), Some(b)) if a < b => &v[a + 1..b],
            _ => v,
        };
        return Some(v.to_string());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_id_is_found_and_unfolded() {
        let d = b"From: a@b\r\nMessage-ID:\r\n <x.1@y>\r\nSubject: s\r\n\r\nbody\r\n";
        assert_eq!(find_message_id(d).as_deref(), Some("x.1@y"));
        let d = b"message-id: <a@b>\r\n\r\n";
        assert_eq!(find_message_id(d).as_deref(), Some("a@b"));
        assert_eq!(
            find_message_id(b"Subject: x\r\n\r\nMessage-ID: <no>\r\n"),
            None
        );
    }

    #[test]
    fn path_args() {
        assert_eq!(
            path_arg(b"MAIL FROM:<a@b> BODY=8BITMIME", b"MAIL FROM:").as_deref(),
            Some("a@b")
        );
        assert_eq!(
            path_arg(b"rcpt to:<x@y>", b"RCPT TO:").as_deref(),
            Some("x@y")
        );
        assert_eq!(
            path_arg(b"MAIL FROM:<>", b"MAIL FROM:").as_deref(),
            Some("")
        );
        assert_eq!(path_arg(b"MAIL", b"MAIL FROM:"), None);
    }
}
