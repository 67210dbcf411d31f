//! Outgoing mail: MIME building and delivery.
//!
//! [`build_message`] turns an [`OutgoingEmail`] into a multipart/alternative message with a
//! stable Message-ID and the list headers. [`Mailer`] delivers it over SMTP (`smtp://`,
//! `smtps://`) through a small pool of long-lived connections, or writes `.eml` files
//! (`file://DIR`). Delivery failures come back as a [`SendError`] that says whose problem
//! it is: this message's, later ([`SendError::Transient`]) or never
//! ([`SendError::Permanent`]); the relay's ([`SendError::Relay`]: nobody is to blame, and
//! the breaker in [`relay`] pauses sending until a probe gets through); or nobody knows
//! ([`SendError::Unknown`]: the final dot went out and no reply came).
//!
//! Timeouts follow RFC 5321 §4.5.3.2: `timeout` bounds each step (connect, greeting, each
//! command), `data_timeout` the wait for the reply to the final dot (10 minutes by
//! default, as the RFC asks, since a relay may do its work before answering).
//!
//! Why not `lettre::AsyncSmtpTransport`: lettre 0.11.23 leaves Nagle on, so each message
//! waits ~40 ms for a delayed ACK, and its pool caps idle connections only. We open the TCP
//! stream ourselves with `TCP_NODELAY`, hand it to `AsyncSmtpConnection`, and bound the
//! total number of connections with a semaphore.

pub mod relay;
mod reply;

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use lettre::Message;
use lettre::address::Envelope;
use lettre::message::header::{HeaderName, HeaderValue, MessageId};
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, AsyncTokioStream, TlsParameters};
use lettre::transport::smtp::commands::{Data, Mail, Rcpt, Rset};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter};
use tokio::sync::Semaphore;

use relay::{Admission, Breaker, RelayState};
use reply::{Step, Verdict, verdict};

/// One email ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingEmail {
    /// "Store Name <shop@example.com>"; its address is also the envelope sender.
    pub from: String,
    pub to: String,
    pub subject: String,
    pub html: String,
    pub text: String,
    /// Without angle brackets, e.g. "fu-123.abcd@aftercart".
    pub message_id: String,
    /// Extra headers (List-Unsubscribe, List-Unsubscribe-Post, List-Id), kept verbatim.
    pub headers: Vec<(String, String)>,
}

/// Configuration and message-building errors (not delivery outcomes).
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("invalid {field} address {value:?}: {reason}")]
    Address {
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error(
        "invalid Message-ID {0:?}: expected id-left@id-right without <>, spaces or line breaks"
    )]
    MessageId(String),
    #[error("invalid header {name:?}: {reason}")]
    Header { name: String, reason: String },
    #[error("cannot build message: {0}")]
    Build(String),
    #[error(
        "unsupported mail URL {url:?}: expected smtp://host:port[?tls=starttls|required], \
         smtps://host:port or file://DIR"
    )]
    UnsupportedScheme { url: String },
    #[error("invalid mail URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("cannot set up TLS for {host}: {reason}")]
    Tls { host: String, reason: String },
}

/// Why a message was not delivered. `reply` is the server's reply or what happened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// This message, later: a 4xx reply to RCPT, DATA or the final dot, or a connection
    /// lost before the final dot went out (so the relay cannot have taken it).
    #[error("transient failure: {reply}")]
    Transient { reply: String },
    /// This message, never: a 5xx reply to RCPT, DATA or the final dot, or a message that
    /// cannot be built. `hard_bounce`: the reply says the recipient's mailbox does not
    /// exist (enhanced code 5.1.x to RCPT or the dot), a fact worth remembering.
    #[error("permanent failure: {reply}")]
    Permanent { reply: String, hard_bounce: bool },
    /// The relay, not the message: connection refused, a 421 or 5xx greeting, EHLO, TLS or
    /// AUTH failing, a timeout before the envelope was through, our sender refused at
    /// MAIL FROM, relaying refused, or sending paused by the breaker ([`relay`]). Nothing
    /// was delivered; the same message may be tried again once the relay is fixed.
    #[error("relay unavailable: {reply}")]
    Relay { reply: String },
    /// The final dot went out and no reply came (timeout or connection lost): the relay
    /// may have delivered it. Never resend blindly.
    #[error("outcome unknown: {reply}")]
    Unknown { reply: String },
}

impl SendError {
    pub fn reply(&self) -> &str {
        match self {
            SendError::Transient { reply }
            | SendError::Permanent { reply, .. }
            | SendError::Relay { reply }
            | SendError::Unknown { reply } => reply,
        }
    }

    pub fn is_transient(&self) -> bool {
        matches!(self, SendError::Transient { .. })
    }

    pub fn is_relay(&self) -> bool {
        matches!(self, SendError::Relay { .. })
    }

    fn transient(reply: impl Into<String>) -> Self {
        SendError::Transient {
            reply: reply.into(),
        }
    }

    fn relay(reply: impl Into<String>) -> Self {
        SendError::Relay {
            reply: reply.into(),
        }
    }

    fn permanent(reply: impl Into<String>) -> Self {
        SendError::Permanent {
            reply: reply.into(),
            hard_bounce: false,
        }
    }
}

/// Headers `build_message` sets itself; an extra header must not silently replace them.
const RESERVED_HEADERS: &[&str] = &[
    "from",
    "to",
    "cc",
    "bcc",
    "subject",
    "message-id",
    "date",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
];

/// Builds the MIME message: multipart/alternative (text/plain, then text/html, UTF-8),
/// `Message-ID: <message_id>`, `Date`, and the extra headers; envelope `from` → `to`.
pub fn build_message(e: &OutgoingEmail) -> Result<Message, MailError> {
    let from = parse_mailbox("from", &e.from)?;
    let to = parse_mailbox("to", &e.to)?;
    let id = &e.message_id;
    let id_ok = !id.is_empty()
        && id.contains('@')
        && id
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'<' && b != b'>');
    if !id_ok {
        return Err(MailError::MessageId(id.clone()));
    }

    let envelope = Envelope::new(Some(from.email.clone()), vec![to.email.clone()])
        .map_err(|err| MailError::Build(err.to_string()))?;
    let mut builder = Message::builder()
        .from(from)
        .to(to)
        .subject(e.subject.as_str())
        .header(MessageId::from(format!("<{id}>")))
        .date_now()
        .envelope(envelope);
    for (name, value) in &e.headers {
        let bad = |reason: &str| MailError::Header {
            name: name.clone(),
            reason: reason.to_string(),
        };
        if !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
            return Err(bad("name must be printable ASCII without ':'"));
        }
        if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            return Err(bad("set by the mailer itself"));
        }
        if value.contains(['\r', '\n']) {
            return Err(bad("value contains a line break"));
        }
        let name = HeaderName::new_from_ascii(name.clone()).map_err(|_| bad("invalid name"))?;
        // HeaderValue::new folds only at spaces and RFC 2047-encodes only non-ASCII words, so
        // an ASCII value (URLs, "List-Unsubscribe=One-Click") is byte-exact once unfolded.
        builder = builder.raw_header(HeaderValue::new(name, value.clone()));
    }
    builder
        .multipart(MultiPart::alternative_plain_html(
            e.text.clone(),
            e.html.clone(),
        ))
        .map_err(|err| MailError::Build(err.to_string()))
}

fn parse_mailbox(field: &'static str, value: &str) -> Result<Mailbox, MailError> {
    value.parse::<Mailbox>().map_err(|err| MailError::Address {
        field,
        value: value.to_string(),
        reason: err.to_string(),
    })
}

/// Delivery settings; `url` decides the transport. Debug hides the password.
#[derive(Clone)]
pub struct MailerConfig {
    /// `smtp://host:port[?tls=starttls|required]`, `smtps://host:port` or `file://DIR`.
    pub url: String,
    /// Maximum number of simultaneous SMTP connections (also how many stay open).
    pub pool_size: usize,
    /// Limit for each step: TCP connect, TLS handshake, greeting and EHLO, STARTTLS,
    /// AUTH, each command (MAIL, RCPT, DATA, RSET, NOOP).
    pub timeout: Duration,
    /// Limit for sending the content and getting the reply to the final dot
    /// (RFC 5321 §4.5.3.2: 10 minutes).
    pub data_timeout: Duration,
    /// First wait before probing a relay that failed; doubles per failed probe.
    pub probe_base: Duration,
    /// Longest wait between probes.
    pub probe_max: Duration,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for MailerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MailerConfig")
            .field("url", &crate::domain::redact(&self.url))
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish_non_exhaustive()
    }
}

/// Sends messages. Cheap to clone: clones share the connection pool.
#[derive(Clone)]
pub struct Mailer {
    inner: Arc<Transport>,
    /// Signs every message when set (`with_dkim`).
    dkim: Option<Arc<lettre::message::dkim::DkimConfig>>,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &*self.inner {
            Transport::File { dir } => write!(f, "Mailer(file://{})", dir.display()),
            Transport::Smtp(p) => write!(f, "Mailer(smtp {}:{} {:?})", p.host, p.port, p.tls),
        }
    }
}

enum Transport {
    File { dir: PathBuf },
    Smtp(Box<SmtpPool>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TlsMode {
    None,
    /// STARTTLS when the server offers it.
    StartTlsOpportunistic,
    /// STARTTLS or fail.
    StartTlsRequired,
    /// TLS from the first byte (smtps).
    Implicit,
}

/// An open SMTP connection and the watch on what was written to it.
struct Conn {
    smtp: AsyncSmtpConnection,
    wire: Wire,
}

/// A connection waiting in the pool.
struct Idle {
    conn: Conn,
    since: Instant,
}

struct SmtpPool {
    host: String,
    port: u16,
    tls: TlsMode,
    hello: ClientId,
    credentials: Option<Credentials>,
    timeout: Duration,
    data_timeout: Duration,
    /// Bounds open connections (idle + in use) to `pool_size`.
    permits: Semaphore,
    idle: Mutex<Vec<Idle>>,
    breaker: Breaker,
}

/// Idle connections older than this get a NOOP before use: servers drop idle clients.
const STALE_AFTER: Duration = Duration::from_secs(15);

impl Mailer {
    /// Validates the configuration and, for SMTP, opens one connection up front (a failure
    /// there is only logged: the server may come up later, and sends retry).
    pub async fn connect(cfg: MailerConfig) -> Result<Mailer, MailError> {
        let url = cfg.url.trim();
        if let Some(rest) = url.strip_prefix("file://") {
            let dir = rest.split(['?', '#']).next().unwrap_or_default();
            if dir.is_empty() {
                return Err(MailError::Url {
                    url: cfg.url.clone(),
                    reason: "file:// needs a directory, e.g. file://outbox".into(),
                });
            }
            return Ok(Mailer {
                inner: Arc::new(Transport::File {
                    dir: PathBuf::from(dir),
                }),
                dkim: None,
            });
        }
        let pool = SmtpPool::from_config(&cfg)?;
        let mailer = Mailer {
            inner: Arc::new(Transport::Smtp(Box::new(pool))),
            dkim: None,
        };
        if let Transport::Smtp(pool) = &*mailer.inner {
            pool.warm_up().await;
        }
        Ok(mailer)
    }

    /// Sends one message to `e.to`. Returns the server's final reply
    /// (e.g. "250 2.0.0 Ok queued") or, for `file://`, "250 written to PATH".
    pub async fn send(&self, e: &OutgoingEmail) -> Result<String, SendError> {
        let mut message = build_message(e)
            .map_err(|err| SendError::permanent(format!("invalid message: {err}")))?;
        if let Some(dkim) = &self.dkim {
            message.sign(dkim);
        }
        match &*self.inner {
            Transport::File { dir } => write_eml(dir, &e.message_id, &message.formatted()).await,
            Transport::Smtp(pool) => pool.send(&message).await,
        }
    }

    /// Signs every message with DKIM. `key` is an RSA private key in PKCS#1 PEM, or an
    /// Ed25519 secret key in base64 (32 bytes); the public key is published in DNS at
    /// `SELECTOR._domainkey.DOMAIN`.
    pub fn with_dkim(
        mut self,
        selector: &str,
        domain: &str,
        key: &str,
    ) -> Result<Mailer, MailError> {
        use lettre::message::dkim::{DkimConfig, DkimSigningAlgorithm, DkimSigningKey};
        let key = key.trim();
        let algorithm = if key.starts_with("-----BEGIN") {
            DkimSigningAlgorithm::Rsa
        } else {
            DkimSigningAlgorithm::Ed25519
        };
        let signing = DkimSigningKey::new(key, algorithm)
            .map_err(|e| MailError::Build(format!("DKIM key: {e}")))?;
        self.dkim = Some(Arc::new(DkimConfig::default_config(
            selector.to_owned(),
            domain.to_owned(),
            signing,
        )));
        Ok(self)
    }

    /// The relay's state: `Up`, or `Paused` by the breaker after a relay-level failure
    /// (always `Up` for `file://`).
    pub fn relay_state(&self) -> RelayState {
        match &*self.inner {
            Transport::File { .. } => RelayState::Up,
            Transport::Smtp(pool) => pool.breaker.state(Instant::now()),
        }
    }

    /// Politely closes idle SMTP connections (QUIT). Sends still work afterwards.
    pub async fn shutdown(&self) {
        if let Transport::Smtp(pool) = &*self.inner {
            let idle: Vec<Idle> = std::mem::take(&mut *lock(&pool.idle));
            for mut i in idle {
                let _ = tokio::time::timeout(Duration::from_secs(2), i.conn.smtp.quit()).await;
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Writes `DIR/<message_id>.eml` atomically: a temporary file in the same directory, then
/// a rename, so readers never see half a message and a resend replaces the file. Messages
/// hold addresses and unsubscribe links: folders created here are 0700, files 0600.
async fn write_eml(dir: &Path, message_id: &str, bytes: &[u8]) -> Result<String, SendError> {
    let io_err = |what: &str, path: &Path, err: std::io::Error| {
        SendError::transient(format!("cannot {what} {}: {err}", path.display()))
    };
    // build_message already refused spaces and brackets; keep the name inside DIR anyway.
    let safe: String = message_id
        .chars()
        .map(|c| if matches!(c, '/' | '\\') { '_' } else { c })
        .collect();
    let path = dir.join(format!("{safe}.eml"));
    let tmp = dir.join(format!(".{safe}.{:016x}.tmp", rand::random::<u64>()));
    let (dir, bytes, done) = (dir.to_owned(), bytes.to_owned(), path.clone());
    let write = move || {
        use std::io::Write;
        crate::files::create_private_dirs(&dir)
            .map_err(|err| io_err("create directory", &dir, err))?;
        if let Err(err) =
            crate::files::create_private_file(&tmp).and_then(|mut f| f.write_all(&bytes))
        {
            let _ = std::fs::remove_file(&tmp);
            return Err(io_err("write", &tmp, err));
        }
        std::fs::rename(&tmp, &path).map_err(|err| {
            let _ = std::fs::remove_file(&tmp);
            io_err("rename to", &path, err)
        })
    };
    tokio::task::spawn_blocking(write)
        .await
        .map_err(|err| SendError::transient(format!("cannot write {}: {err}", done.display())))??;
    Ok(format!("250 written to {}", done.display()))
}

/// Outcome of one transaction on one connection.
enum TxnResult {
    Delivered(String),
    /// A reply-level rejection; the connection is still in sync.
    Rejected(SendError),
    /// The connection is unusable (I/O error, timeout, odd reply, 421). `fresh_retry`:
    /// nothing can have been delivered, so on a pooled connection (perhaps closed by the
    /// server while idle) one retry on a new connection is safe.
    Broken {
        fresh_retry: bool,
        err: SendError,
    },
}

/// A step that did not get a positive reply.
enum StepError {
    /// The server answered with a negative reply: "550 5.1.1 no such user".
    Reply(String),
    /// No usable reply: I/O error, connection closed, timeout, garbage.
    Lost(String),
}

impl StepError {
    fn from_lettre(err: &lettre::transport::smtp::Error) -> StepError {
        match err.status() {
            Some(_) => StepError::Reply(smtp_error_text(err)),
            None => StepError::Lost(smtp_error_text(err)),
        }
    }
}

/// Runs one step under its time limit.
async fn step<T>(
    limit: Duration,
    what: impl std::future::Future<Output = Result<T, lettre::transport::smtp::Error>>,
) -> Result<T, StepError> {
    match tokio::time::timeout(limit, what).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(err)) => Err(StepError::from_lettre(&err)),
        Err(_) => Err(StepError::Lost(format!(
            "no reply within {}",
            humantime::format_duration(limit)
        ))),
    }
}

impl SmtpPool {
    fn from_config(cfg: &MailerConfig) -> Result<SmtpPool, MailError> {
        let bad = |reason: String| MailError::Url {
            url: cfg.url.clone(),
            reason,
        };
        let url = url::Url::parse(cfg.url.trim()).map_err(|err| match err {
            url::ParseError::RelativeUrlWithoutBase => MailError::UnsupportedScheme {
                url: cfg.url.clone(),
            },
            other => bad(other.to_string()),
        })?;
        let (default_port, mut tls) = match url.scheme() {
            "smtp" => (25, TlsMode::None),
            "smtps" => (465, TlsMode::Implicit),
            _ => {
                return Err(MailError::UnsupportedScheme {
                    url: cfg.url.clone(),
                });
            }
        };
        let host = match url.host() {
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            Some(h) => h.to_string(),
            None => return Err(bad("missing host".into())),
        };
        let port = url.port().unwrap_or(default_port);
        for (key, value) in url.query_pairs() {
            match (key.as_ref(), value.as_ref(), tls) {
                ("tls", "starttls", TlsMode::None) => tls = TlsMode::StartTlsOpportunistic,
                ("tls", "required", TlsMode::None) => tls = TlsMode::StartTlsRequired,
                ("tls", "none", TlsMode::None) => {}
                ("tls", "implicit" | "required", TlsMode::Implicit) => {}
                ("tls", v, _) => {
                    return Err(bad(format!(
                        "tls={v} is not valid here (smtp:// takes none, starttls or required)"
                    )));
                }
                (k, _, _) => return Err(bad(format!("unknown parameter {k:?}"))),
            }
        }
        // Explicit config wins over credentials embedded in the URL.
        let url_user = (!url.username().is_empty()).then(|| decode(url.username()));
        let username = cfg.username.clone().or(url_user);
        let password = cfg.password.clone().or_else(|| url.password().map(decode));
        let credentials = match (username, password) {
            (Some(u), Some(p)) => Some(Credentials::new(u, p)),
            (None, None) => None,
            _ => return Err(bad("username and password must be given together".into())),
        };
        if matches!(
            tls,
            TlsMode::Implicit | TlsMode::StartTlsOpportunistic | TlsMode::StartTlsRequired
        ) {
            // Fail at start rather than on every send.
            TlsParameters::new(host.clone()).map_err(|err| MailError::Tls {
                host: host.clone(),
                reason: err.to_string(),
            })?;
        }
        let pool_size = cfg.pool_size.max(1);
        Ok(SmtpPool {
            breaker: Breaker::new(format!("{host}:{port}"), cfg.probe_base, cfg.probe_max),
            host,
            port,
            tls,
            hello: ClientId::default(),
            credentials,
            timeout: cfg.timeout,
            data_timeout: cfg.data_timeout,
            permits: Semaphore::new(pool_size),
            idle: Mutex::new(Vec::with_capacity(pool_size)),
        })
    }

    /// Opens one connection ahead of the first send; a relay that is down already pauses
    /// sending (the breaker), so the first batch does not each find out for itself.
    async fn warm_up(&self) {
        let Ok(_permit) = self.permits.acquire().await else {
            return;
        };
        match self.open().await {
            Ok(conn) => lock(&self.idle).push(Idle {
                conn,
                since: Instant::now(),
            }),
            Err(err) => self
                .breaker
                .record(Admission::Normal, Some(err.reply()), Instant::now()),
        }
    }

    async fn send(&self, message: &Message) -> Result<String, SendError> {
        // While the breaker is open, refuse at once: no connection, no wait for a permit.
        let mut admission = self
            .breaker
            .admit(Instant::now())
            .map_err(SendError::relay)?;
        // Waiting for a free connection is not the server's fault: outside the timeouts.
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| SendError::transient("mailer closed"))?;
        if !admission.is_probe() {
            // The breaker may have opened while this send waited for a connection.
            admission = self
                .breaker
                .admit(Instant::now())
                .map_err(SendError::relay)?;
        }
        let result = self.deliver(message).await;
        let relay_failure = match &result {
            Err(SendError::Relay { reply }) => Some(reply.as_str()),
            _ => None,
        };
        self.breaker
            .record(admission, relay_failure, Instant::now());
        result
    }

    async fn deliver(&self, message: &Message) -> Result<String, SendError> {
        let bytes = message.formatted();
        let envelope = message.envelope();
        let mut reused = self.take_idle().await;
        loop {
            let was_reused = reused.is_some();
            let mut conn = match reused.take() {
                Some(c) => c,
                None => self.open().await?,
            };
            match self.transact(&mut conn, envelope, &bytes).await {
                TxnResult::Delivered(reply) => {
                    self.put_back(conn);
                    return Ok(reply);
                }
                TxnResult::Rejected(err) => {
                    self.put_back(conn);
                    return Err(err);
                }
                TxnResult::Broken { fresh_retry, err } => {
                    drop(conn);
                    if was_reused && fresh_retry {
                        tracing::debug!(
                            reply = err.reply(),
                            "pooled SMTP connection was dead; reconnecting"
                        );
                        continue;
                    }
                    return Err(err);
                }
            }
        }
    }

    /// Takes the most recently used idle connection, checking stale ones with NOOP.
    async fn take_idle(&self) -> Option<Conn> {
        loop {
            let idle = lock(&self.idle).pop()?;
            let mut conn = idle.conn;
            if idle.since.elapsed() < STALE_AFTER
                || tokio::time::timeout(self.timeout, conn.smtp.test_connected())
                    .await
                    .unwrap_or(false)
            {
                return Some(conn);
            }
        }
    }

    fn put_back(&self, conn: Conn) {
        if !conn.smtp.has_broken() {
            lock(&self.idle).push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }

    /// Opens a connection: TCP with TCP_NODELAY, optional TLS, greeting, EHLO, STARTTLS,
    /// AUTH, each step within `timeout`. Every failure here is the relay's (`Relay`).
    async fn open(&self) -> Result<Conn, SendError> {
        let fail = |what: &str, err: &dyn std::fmt::Display| {
            SendError::relay(format!("{what} {}:{}: {err}", self.host, self.port))
        };
        let timed_out = |what: &str| {
            fail(
                what,
                &format!(
                    "timed out after {}",
                    humantime::format_duration(self.timeout)
                ),
            )
        };
        let limit = self.timeout;
        let tcp = tokio::time::timeout(
            limit,
            tokio::net::TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| timed_out("cannot connect to"))?
        .map_err(|err| fail("cannot connect to", &err))?;
        // The reason this function exists: without it every message waits ~40 ms for the
        // peer's delayed ACK (lettre writes the final "\r\n.\r\n" separately).
        tcp.set_nodelay(true)
            .map_err(|err| fail("cannot set TCP_NODELAY on", &err))?;
        let tls_params =
            || TlsParameters::new(self.host.clone()).map_err(|err| fail("TLS setup for", &err));
        let wire = Wire::default();
        let stream: Box<dyn AsyncTokioStream> = if self.tls == TlsMode::Implicit {
            let tls = tokio::time::timeout(limit, ImplicitTls::handshake(tcp, tls_params()?))
                .await
                .map_err(|_| timed_out("TLS handshake with"))?
                .map_err(|err| fail("TLS handshake with", &err))?;
            Box::new(Watched::new(tls, wire.clone()))
        } else {
            Box::new(Watched::new(tcp, wire.clone()))
        };
        let session_fail = |what: &str, err: StepError| match err {
            StepError::Reply(reply) | StepError::Lost(reply) => fail(what, &reply),
        };
        let mut smtp = step(
            limit,
            AsyncSmtpConnection::connect_with_transport(stream, &self.hello),
        )
        .await
        .map_err(|err| session_fail("SMTP greeting/EHLO failed at", err))?;
        match self.tls {
            TlsMode::StartTlsRequired | TlsMode::StartTlsOpportunistic if smtp.can_starttls() => {
                step(limit, smtp.starttls(tls_params()?, &self.hello))
                    .await
                    .map_err(|err| session_fail("STARTTLS failed at", err))?;
                // From here on the watched bytes are ciphertext.
                wire.set_opaque();
            }
            TlsMode::StartTlsRequired => {
                return Err(fail(
                    "STARTTLS required but not offered by",
                    &"no STARTTLS in EHLO",
                ));
            }
            _ => {}
        }
        if let Some(creds) = &self.credentials {
            step(
                limit,
                smtp.auth(&[Mechanism::Plain, Mechanism::Login], creds),
            )
            .await
            .map_err(|err| session_fail("authentication failed at", err))?;
        }
        tracing::debug!(host = %self.host, port = self.port, "SMTP connection opened");
        Ok(Conn { smtp, wire })
    }

    /// MAIL, RCPT, DATA and the content on an open connection. Unlike
    /// `AsyncSmtpConnection::send`, a 4xx/5xx reply does not abort the connection: it is
    /// reset with RSET and reused. Each command waits at most `timeout`; the content and
    /// the reply to the final dot at most `data_timeout`.
    async fn transact(&self, conn: &mut Conn, envelope: &Envelope, bytes: &[u8]) -> TxnResult {
        let smtp = &mut conn.smtp;
        let mut params = Vec::new();
        let non_ascii_addr = envelope
            .from()
            .into_iter()
            .chain(envelope.to())
            .any(|a| !AsRef::<str>::as_ref(a).is_ascii());
        if non_ascii_addr {
            if !smtp.server_info().supports_feature(Extension::SmtpUtfEight) {
                return TxnResult::Rejected(SendError::permanent(
                    "non-ASCII address but the server does not support SMTPUTF8",
                ));
            }
            params.push(MailParameter::SmtpUtfEight);
        }
        if !bytes.is_ascii() {
            if !smtp.server_info().supports_feature(Extension::EightBitMime) {
                return TxnResult::Rejected(SendError::permanent(
                    "8-bit message but the server does not support 8BITMIME",
                ));
            }
            params.push(MailParameter::Body(MailBodyParameter::EightBitMime));
        }

        let limit = self.timeout;
        let envelope_steps = async {
            step(
                limit,
                smtp.command(Mail::new(envelope.from().cloned(), params)),
            )
            .await
            .map_err(|e| (Step::Mail, e))?;
            for rcpt in envelope.to() {
                step(limit, smtp.command(Rcpt::new(rcpt.clone(), vec![])))
                    .await
                    .map_err(|e| (Step::Rcpt, e))?;
            }
            step(limit, smtp.command(Data))
                .await
                .map_err(|e| (Step::Data, e))
        };
        match envelope_steps.await {
            Ok(_) => {}
            Err((at, StepError::Reply(reply))) => {
                let err = judged(at, reply);
                if matches!(&err, SendError::Relay { reply } if reply.starts_with("421")) {
                    return TxnResult::Broken {
                        fresh_retry: true,
                        err,
                    };
                }
                // Abandon the transaction so the connection can carry the next message.
                return if step(limit, smtp.command(Rset)).await.is_ok() {
                    TxnResult::Rejected(err)
                } else {
                    // The verdict is final: do not retry on a fresh connection.
                    TxnResult::Broken {
                        fresh_retry: false,
                        err,
                    }
                };
            }
            // Nothing delivered; a relay that drops or stalls us before the content is
            // the relay's state.
            Err((at, StepError::Lost(why))) => {
                return TxnResult::Broken {
                    fresh_retry: true,
                    err: SendError::relay(format!("connection lost at {}: {why}", at.name())),
                };
            }
        }

        let mark = conn.wire.mark();
        match step(self.data_timeout, conn.smtp.message(bytes)).await {
            Ok(resp) => {
                let mut reply = resp.code().to_string();
                for line in resp.message() {
                    reply.push(' ');
                    reply.push_str(line);
                }
                TxnResult::Delivered(reply)
            }
            Err(StepError::Reply(reply)) => {
                let err = judged(Step::Dot, reply);
                // A 421 closes the channel; any other reply leaves it in sync.
                if err.reply().starts_with("421") {
                    return TxnResult::Broken {
                        fresh_retry: false,
                        err,
                    };
                }
                TxnResult::Rejected(err)
            }
            Err(StepError::Lost(why)) => {
                let err = match conn.wire.dot_sent_since(mark) {
                    // The relay cannot have the whole message: safe to send again.
                    Some(false) => {
                        SendError::transient(format!("connection lost during DATA: {why}"))
                    }
                    // RFC 5321 §6.1: it may have delivered it.
                    Some(true) | None => SendError::Unknown {
                        reply: format!(
                            "unknown: no reply to the end of DATA ({why}); the relay may have delivered it"
                        ),
                    },
                };
                TxnResult::Broken {
                    fresh_retry: false,
                    err,
                }
            }
        }
    }
}

/// Turns a negative reply to `at` into the error that says whose problem it is.
fn judged(at: Step, reply: String) -> SendError {
    match verdict(at, &reply) {
        Verdict::Relay => SendError::Relay { reply },
        Verdict::Transient => SendError::Transient { reply },
        Verdict::Permanent { hard_bounce } => SendError::Permanent { reply, hard_bounce },
    }
}

/// "451 4.3.0 try later" for reply errors, lettre's description otherwise.
fn smtp_error_text(err: &lettre::transport::smtp::Error) -> String {
    use std::error::Error as _;
    match (err.status(), err.source()) {
        (Some(code), Some(msg)) => format!("{code} {msg}").trim_end().to_string(),
        (Some(code), None) => code.to_string(),
        _ => err.to_string(),
    }
}

/// What was last written to a connection, seen below lettre: whether the final
/// "\r\n.\r\n" went out tells "the relay cannot have the message" (retry) from "it may
/// have it" (unknown). Dot-stuffing keeps that sequence out of the content, so only the
/// terminator can produce it. Opaque once STARTTLS wraps the stream (ciphertext).
#[derive(Clone, Debug, Default)]
struct Wire(Arc<Mutex<WireState>>);

#[derive(Debug, Default)]
struct WireState {
    written: u64,
    tail: [u8; 5],
    opaque: bool,
}

const END_OF_DATA: &[u8; 5] = b"\r\n.\r\n";

impl Wire {
    fn mark(&self) -> u64 {
        lock(&self.0).written
    }

    /// Some(true) when the terminator went out after `mark`, None when unknowable.
    fn dot_sent_since(&self, mark: u64) -> Option<bool> {
        let w = lock(&self.0);
        (!w.opaque).then(|| w.written > mark && &w.tail == END_OF_DATA)
    }

    fn set_opaque(&self) {
        lock(&self.0).opaque = true;
    }

    fn wrote(&self, buf: &[u8]) {
        let mut w = lock(&self.0);
        w.written += buf.len() as u64;
        let keep = buf.len().min(5);
        w.tail.rotate_left(keep);
        w.tail[5 - keep..].copy_from_slice(&buf[buf.len() - keep..]);
    }
}

/// A stream that reports what it writes to its [`Wire`].
#[derive(Debug)]
struct Watched<S> {
    inner: S,
    wire: Wire,
}

impl<S> Watched<S> {
    fn new(inner: S, wire: Wire) -> Self {
        Watched { inner, wire }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &polled {
            self.wire.wrote(&buf[..*n]);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S: AsyncTokioStream> AsyncTokioStream for Watched<S> {
    fn peer_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.inner.peer_addr()
    }
}

fn decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| s.to_string())
}

/// smtps: lettre can only TLS-wrap a stream after the greeting (STARTTLS) when handed an
/// existing socket, so we do the handshake first with lettre's own TLS stream (same roots
/// and settings) and present the result to `connect_with_transport` as a plain stream.
#[allow(deprecated)]
#[derive(Debug)]
struct ImplicitTls(lettre::transport::smtp::client::AsyncNetworkStream);

#[allow(deprecated)]
impl ImplicitTls {
    async fn handshake(
        tcp: tokio::net::TcpStream,
        params: TlsParameters,
    ) -> Result<Self, lettre::transport::smtp::Error> {
        use lettre::transport::smtp::client::AsyncNetworkStream;
        let mut stream = AsyncNetworkStream::use_existing_tokio1(Box::new(tcp));
        stream.upgrade_tls(params).await?;
        Ok(ImplicitTls(stream))
    }
}

impl tokio::io::AsyncRead for ImplicitTls {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let unfilled = buf.initialize_unfilled();
        match futures_io::AsyncRead::poll_read(Pin::new(&mut self.0), cx, unfilled) {
            Poll::Ready(Ok(n)) => {
                buf.advance(n);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl tokio::io::AsyncWrite for ImplicitTls {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        futures_io::AsyncWrite::poll_write(Pin::new(&mut self.0), cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        futures_io::AsyncWrite::poll_flush(Pin::new(&mut self.0), cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        futures_io::AsyncWrite::poll_close(Pin::new(&mut self.0), cx)
    }
}

impl AsyncTokioStream for ImplicitTls {
    fn peer_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.0.peer_addr()
    }
}

#[cfg(test)]
mod tests;
