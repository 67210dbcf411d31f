//! Outgoing mail: MIME building and delivery.
//!
//! [`build_message`] turns an [`OutgoingEmail`] into a multipart/alternative message with a
//! stable Message-ID and the list headers. [`Mailer`] delivers it over SMTP (`smtp://`,
//! `smtps://`) through a small pool of long-lived connections, or writes `.eml` files
//! (`file://DIR`). Delivery failures come back as [`SendError::Transient`] (retry later) or
//! [`SendError::Permanent`] (fail now), with the server's reply text.
//!
//! Why not `lettre::AsyncSmtpTransport`: lettre 0.11.23 leaves Nagle on, so each message
//! waits ~40 ms for a delayed ACK, and its pool caps idle connections only. We open the TCP
//! stream ourselves with `TCP_NODELAY`, hand it to `AsyncSmtpConnection`, and bound the
//! total number of connections with a semaphore.

pub mod sink;

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
    /// Worth retrying later: SMTP 4xx, connection errors, timeouts, dropped connections.
    #[error("transient failure: {reply}")]
    Transient { reply: String },
    /// Retrying will not help: SMTP 5xx, or a message that cannot be built.
    #[error("permanent failure: {reply}")]
    Permanent { reply: String },
}

impl SendError {
    pub fn reply(&self) -> &str {
        match self {
            SendError::Transient { reply } | SendError::Permanent { reply } => reply,
        }
    }

    pub fn is_transient(&self) -> bool {
        matches!(self, SendError::Transient { .. })
    }

    fn transient(reply: impl Into<String>) -> Self {
        SendError::Transient {
            reply: reply.into(),
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
    /// Limit for one whole send: connect, greeting, MAIL, RCPT, DATA.
    pub timeout: Duration,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for MailerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MailerConfig")
            .field("url", &crate::store::redact(&self.url))
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
    Smtp(SmtpPool),
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

/// A connection waiting in the pool.
struct Idle {
    conn: AsyncSmtpConnection,
    since: Instant,
}

struct SmtpPool {
    host: String,
    port: u16,
    tls: TlsMode,
    hello: ClientId,
    credentials: Option<Credentials>,
    timeout: Duration,
    /// Bounds open connections (idle + in use) to `pool_size`.
    permits: Semaphore,
    idle: Mutex<Vec<Idle>>,
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
            inner: Arc::new(Transport::Smtp(pool)),
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
        let mut message = build_message(e).map_err(|err| SendError::Permanent {
            reply: format!("invalid message: {err}"),
        })?;
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

    /// Politely closes idle SMTP connections (QUIT). Sends still work afterwards.
    pub async fn shutdown(&self) {
        if let Transport::Smtp(pool) = &*self.inner {
            let idle: Vec<Idle> = std::mem::take(&mut *lock(&pool.idle));
            for mut i in idle {
                let _ = tokio::time::timeout(Duration::from_secs(2), i.conn.quit()).await;
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

/// Where in the transaction a failure happened: decides whether the connection is reusable
/// and whether a retry on a fresh connection is safe (nothing delivered yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Envelope,
    Content,
}

/// Outcome of one transaction on one connection.
enum TxnResult {
    Delivered(String),
    /// A reply-level rejection; the connection is still in sync.
    Rejected(SendError),
    /// The connection is unusable (I/O error, odd reply, 421).
    Broken {
        stage: Stage,
        err: SendError,
    },
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
            host,
            port,
            tls,
            hello: ClientId::default(),
            credentials,
            timeout: cfg.timeout,
            permits: Semaphore::new(pool_size),
            idle: Mutex::new(Vec::with_capacity(pool_size)),
        })
    }

    async fn warm_up(&self) {
        let Ok(_permit) = self.permits.acquire().await else {
            return;
        };
        match tokio::time::timeout(self.timeout, self.open()).await {
            Ok(Ok(conn)) => lock(&self.idle).push(Idle {
                conn,
                since: Instant::now(),
            }),
            Ok(Err(err)) => {
                tracing::warn!(host = %self.host, port = self.port, reply = err.reply(), "SMTP server not reachable yet")
            }
            Err(_) => {
                tracing::warn!(host = %self.host, port = self.port, "SMTP connect timed out")
            }
        }
    }

    async fn send(&self, message: &Message) -> Result<String, SendError> {
        // Waiting for a free connection is not the server's fault: outside the timeout.
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| SendError::transient("mailer closed"))?;
        let bytes = message.formatted();
        let envelope = message.envelope();
        let attempt = async {
            // A pooled connection may have been closed by the server while idle; if it
            // fails before anything was delivered, one retry on a fresh connection is safe.
            let mut reused = self.take_idle().await;
            loop {
                let was_reused = reused.is_some();
                let mut conn = match reused.take() {
                    Some(c) => c,
                    None => self.open().await?,
                };
                match transact(&mut conn, envelope, &bytes).await {
                    TxnResult::Delivered(reply) => {
                        self.put_back(conn);
                        return Ok(reply);
                    }
                    TxnResult::Rejected(err) => {
                        self.put_back(conn);
                        return Err(err);
                    }
                    TxnResult::Broken { stage, err } => {
                        drop(conn);
                        if was_reused && stage == Stage::Envelope {
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
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(result) => result,
            // Dropping the future dropped (closed) the connection in use.
            Err(_) => Err(SendError::transient(format!(
                "timed out after {}",
                humantime::format_duration(self.timeout)
            ))),
        }
    }

    /// Takes the most recently used idle connection, checking stale ones with NOOP.
    async fn take_idle(&self) -> Option<AsyncSmtpConnection> {
        loop {
            let idle = lock(&self.idle).pop()?;
            let mut conn = idle.conn;
            if idle.since.elapsed() < STALE_AFTER || conn.test_connected().await {
                return Some(conn);
            }
        }
    }

    fn put_back(&self, conn: AsyncSmtpConnection) {
        if !conn.has_broken() {
            lock(&self.idle).push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }

    /// Opens a connection: TCP with TCP_NODELAY, optional TLS, greeting, EHLO, STARTTLS, AUTH.
    async fn open(&self) -> Result<AsyncSmtpConnection, SendError> {
        let fail = |what: &str, err: &dyn std::fmt::Display| {
            SendError::transient(format!("{what} {}:{}: {err}", self.host, self.port))
        };
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|err| fail("cannot connect to", &err))?;
        // The reason this function exists: without it every message waits ~40 ms for the
        // peer's delayed ACK (lettre writes the final "\r\n.\r\n" separately).
        tcp.set_nodelay(true)
            .map_err(|err| fail("cannot set TCP_NODELAY on", &err))?;
        let tls_params =
            || TlsParameters::new(self.host.clone()).map_err(|err| fail("TLS setup for", &err));
        let stream: Box<dyn AsyncTokioStream> = if self.tls == TlsMode::Implicit {
            Box::new(
                ImplicitTls::handshake(tcp, tls_params()?)
                    .await
                    .map_err(|err| fail("TLS handshake with", &err))?,
            )
        } else {
            Box::new(tcp)
        };
        let mut conn = AsyncSmtpConnection::connect_with_transport(stream, &self.hello)
            .await
            .map_err(|err| fail("SMTP greeting/EHLO failed at", &smtp_error_text(&err)))?;
        match self.tls {
            TlsMode::StartTlsRequired | TlsMode::StartTlsOpportunistic if conn.can_starttls() => {
                conn.starttls(tls_params()?, &self.hello)
                    .await
                    .map_err(|err| fail("STARTTLS failed at", &smtp_error_text(&err)))?;
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
            conn.auth(&[Mechanism::Plain, Mechanism::Login], creds)
                .await
                .map_err(|err| fail("authentication failed at", &smtp_error_text(&err)))?;
        }
        tracing::debug!(host = %self.host, port = self.port, "SMTP connection opened");
        Ok(conn)
    }
}

/// MAIL, RCPT, DATA and the content on an open connection. Unlike `AsyncSmtpConnection::send`,
/// a 4xx/5xx reply does not abort the connection: it is reset with RSET and reused.
async fn transact(conn: &mut AsyncSmtpConnection, envelope: &Envelope, bytes: &[u8]) -> TxnResult {
    let mut params = Vec::new();
    let non_ascii_addr = envelope
        .from()
        .into_iter()
        .chain(envelope.to())
        .any(|a| !AsRef::<str>::as_ref(a).is_ascii());
    if non_ascii_addr {
        if !conn.server_info().supports_feature(Extension::SmtpUtfEight) {
            return TxnResult::Rejected(SendError::Permanent {
                reply: "non-ASCII address but the server does not support SMTPUTF8".into(),
            });
        }
        params.push(MailParameter::SmtpUtfEight);
    }
    if !bytes.is_ascii() {
        if !conn.server_info().supports_feature(Extension::EightBitMime) {
            return TxnResult::Rejected(SendError::Permanent {
                reply: "8-bit message but the server does not support 8BITMIME".into(),
            });
        }
        params.push(MailParameter::Body(MailBodyParameter::EightBitMime));
    }

    let envelope_steps = async {
        conn.command(Mail::new(envelope.from().cloned(), params))
            .await?;
        for rcpt in envelope.to() {
            conn.command(Rcpt::new(rcpt.clone(), vec![])).await?;
        }
        conn.command(Data).await
    };
    if let Err(err) = envelope_steps.await {
        return match classify(&err, Stage::Envelope) {
            TxnResult::Rejected(e) => {
                // Abandon the transaction so the connection can carry the next message.
                if conn.command(Rset).await.is_ok() {
                    TxnResult::Rejected(e)
                } else {
                    TxnResult::Broken {
                        stage: Stage::Content, // the verdict is final: do not retry
                        err: e,
                    }
                }
            }
            other => other,
        };
    }
    match conn.message(bytes).await {
        Ok(resp) => {
            let mut reply = resp.code().to_string();
            for line in resp.message() {
                reply.push(' ');
                reply.push_str(line);
            }
            TxnResult::Delivered(reply)
        }
        Err(err) => classify(&err, Stage::Content),
    }
}

/// Maps a lettre error to our outcome: reply codes keep their text; anything else means
/// the connection can no longer be trusted.
fn classify(err: &lettre::transport::smtp::Error, stage: Stage) -> TxnResult {
    match err.status() {
        Some(code) => {
            let text = smtp_error_text(err);
            // 421: the server is closing the channel.
            if code.to_string() == "421" {
                TxnResult::Broken {
                    stage,
                    err: SendError::transient(text),
                }
            } else if err.is_permanent() {
                TxnResult::Rejected(SendError::Permanent { reply: text })
            } else {
                TxnResult::Rejected(SendError::transient(text))
            }
        }
        None => TxnResult::Broken {
            stage,
            err: SendError::transient(format!("connection lost: {}", smtp_error_text(err))),
        },
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
