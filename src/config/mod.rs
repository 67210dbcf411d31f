//! Settings: `config.toml` (or `--config PATH`) overlaid with `AFTERCART__SECTION__KEY`
//! environment variables, checked strictly. A wrong key or value is refused with the
//! key's name and what was expected (the variable's name when the environment set it);
//! secrets are read from the environment and held as [`Secret`]s, never printed.

use crate::domain::{CampaignName, Strategy, Timestamp, Trigger};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod keys;
mod raw;
mod secret;

pub(crate) use raw::sendgrid_key;
pub use secret::Secret;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Syntax { path: String, message: String },
    #[error("{origin}: {key}: {why}")]
    Key {
        origin: String,
        key: String,
        why: String,
    },
    /// A value set by an `AFTERCART__SECTION__KEY` variable: the variable is named, the
    /// file is not (it is not to blame).
    #[error("{var}: {why} (key {key})")]
    Env {
        var: String,
        key: String,
        why: String,
    },
    /// An `AFTERCART__…` variable that names no key.
    #[error("{var}: {why}")]
    EnvName { var: String, why: String },
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub store: StoreSettings,
    pub database: DatabaseSettings,
    pub smtp: SmtpSettings,
    pub worker: WorkerSettings,
    pub http: HttpSettings,
    pub limits: Limits,
    pub unsubscribe: UnsubscribeSettings,
    pub shopify: ShopifySettings,
    pub bounces: BounceSettings,
    pub attribution: AttributionSettings,
    pub campaigns: Vec<Campaign>,
    /// The templates folder (`templates/` beside the config file by default).
    pub templates_dir: PathBuf,
}

#[derive(Debug, Clone)]
pub struct StoreSettings {
    pub name: String,
    pub base_url: String,
    pub postal_address: String,
    pub currency: String,
    pub timezone: chrono_tz::Tz,
    pub locale: String,
}

#[derive(Clone)]
pub struct DatabaseSettings {
    /// May carry a password (postgres://user:pw@host/db): Debug redacts it.
    pub url: String,
    pub max_connections: u32,
}

impl std::fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseSettings")
            .field("url", &crate::domain::redact(&self.url))
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

#[derive(Clone)]
pub struct SmtpSettings {
    /// May carry credentials (smtp://user:pw@host): Debug redacts the password.
    pub url: String,
    pub from: String,
    pub pool_size: usize,
    /// Each SMTP step: connect, greeting, EHLO/STARTTLS/AUTH, each command.
    pub timeout: Duration,
    /// The content and the reply to the final dot (RFC 5321 §4.5.3.2: 10 minutes).
    pub data_timeout: Duration,
    /// After a relay-level failure, the first wait before a probe; doubles per failed
    /// probe up to `probe_max`.
    pub probe_base: Duration,
    pub probe_max: Duration,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub max_attempts: u32,
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// Messages per second for this SMTP server across all workers; 0 = unlimited.
    pub rate_limit: u32,
    /// DKIM signing, when a key is configured.
    pub dkim: Option<Dkim>,
}

#[derive(Debug, Clone)]
pub struct Dkim {
    /// RSA (PKCS#1 PEM) or Ed25519 (base64) private key file; kept out of the repository.
    pub key_path: PathBuf,
    pub selector: String,
    /// Signing domain; the From address's domain when None.
    pub domain: Option<String>,
}

impl std::fmt::Debug for SmtpSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpSettings")
            .field("url", &crate::domain::redact(&self.url))
            .field("from", &self.from)
            .field("pool_size", &self.pool_size)
            .field("timeout", &self.timeout)
            .field("data_timeout", &self.data_timeout)
            .field("probe_base", &self.probe_base)
            .field("probe_max", &self.probe_max)
            .field("username", &self.username)
            .field("password", &self.password)
            .field("max_attempts", &self.max_attempts)
            .field("retry_base", &self.retry_base)
            .field("retry_max", &self.retry_max)
            .field("rate_limit", &self.rate_limit)
            .field("dkim", &self.dkim)
            .finish_non_exhaustive()
    }
}

impl SmtpSettings {
    /// The domain of the `from` address ("Shop <hello@shop.example>" → "shop.example"):
    /// Message-IDs, List-Id and the default DKIM domain use it.
    pub fn from_domain(&self) -> &str {
        address_domain(&self.from)
    }
}

/// The domain of a mailbox ("Shop <hello@shop.example>" or "hello@shop.example").
pub fn address_domain(mailbox: &str) -> &str {
    let addr = mailbox
        .rsplit('<')
        .next()
        .unwrap_or(mailbox)
        .trim_end_matches('>')
        .trim();
    addr.rsplit_once('@')
        .map(|(_, d)| d)
        .filter(|d| !d.is_empty())
        .unwrap_or("aftercart.local")
}

#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub concurrency: usize,
    pub poll_interval: Duration,
    pub batch_size: usize,
    pub lease: Duration,
    pub shutdown_timeout: Duration,
    pub model_rebuild_interval: Duration,
    /// How often the maintenance job (worker registry sweep, retention) runs.
    pub maintenance_interval: Duration,
    /// Ended follow-ups older than this are compacted (their (order, campaign) key and
    /// state stay, so nothing is ever sent twice).
    pub retention: Duration,
}

#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub bind: String,
    pub api_token: Option<Secret>,
    pub max_body_bytes: usize,
    /// Body limit of the webhooks (smaller: they are read before their signature is known).
    pub webhook_max_body_bytes: usize,
    /// The request head must arrive within this from its first byte.
    pub header_timeout: Duration,
    /// The whole request body must arrive within this once the head is read.
    pub body_timeout: Duration,
    /// A connection with no request in progress and no traffic for this long is closed.
    pub idle_timeout: Duration,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// When set, `/metrics` wants `Authorization: Bearer` with it.
    pub metrics_token: Option<Secret>,
}

impl HttpSettings {
    /// The API token itself, for the constant-time comparison.
    pub fn api_token(&self) -> Option<&str> {
        self.api_token.as_ref().map(Secret::expose)
    }

    /// The metrics token itself, when `/metrics` is behind one.
    pub fn metrics_token(&self) -> Option<&str> {
        self.metrics_token.as_ref().map(Secret::expose)
    }
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_emails_per_customer_per_week: u32,
    pub quiet_hours: Option<QuietHours>,
    pub seen_on_site_window: Duration,
    pub repeat_window: Duration,
}

/// Local wall-clock window in which nothing is sent; may wrap midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuietHours {
    pub start: chrono::NaiveTime,
    pub end: chrono::NaiveTime,
}

#[derive(Debug, Clone)]
pub struct UnsubscribeSettings {
    /// Signs new links; None = a key generated once and kept in the database.
    pub secret: Option<Secret>,
    /// The key before the last rotation: links signed with it stay valid for a while.
    pub previous: Option<PreviousKey>,
    pub mailto: Option<String>,
}

/// A retired unsubscribe signing key and when it stops being accepted.
#[derive(Debug, Clone)]
pub struct PreviousKey {
    pub secret: Secret,
    /// Links signed with this key are refused from this instant on.
    pub until: Timestamp,
}

#[derive(Debug, Clone)]
pub struct ShopifySettings {
    pub webhook_secret: Option<Secret>,
}

impl ShopifySettings {
    /// The HMAC key itself, for verifying a webhook.
    pub fn webhook_secret(&self) -> Option<&str> {
        self.webhook_secret.as_ref().map(Secret::expose)
    }
}

/// `[bounces]`: the providers' bounce and complaint webhooks (`/webhooks/bounces/*`).
#[derive(Debug, Clone, Default)]
pub struct BounceSettings {
    /// Postmark: the HTTP Basic password of the webhook URL.
    pub webhook_secret: Option<Secret>,
    /// Mailgun: the HTTP webhook signing key (HMAC-SHA256 of timestamp + token).
    pub mailgun_signing_key: Option<Secret>,
    /// SendGrid: the signed event webhook's verification key (base64 DER, as SendGrid
    /// shows it; public, not a secret).
    pub sendgrid_public_key: Option<String>,
    /// Amazon SES (SNS): the public key of the SNS signing certificate
    /// (`bounces.ses_certificate`, a PEM file), to verify every message's signature.
    pub ses_key: Option<rsa::RsaPublicKey>,
    /// Amazon SES (SNS): without a certificate, accept notifications whose signature is
    /// not verified; off by default, so SES is then refused.
    pub ses_allow_unverified: bool,
    /// Mailgun, SendGrid: a signature older (or further ahead) than this is refused.
    pub max_age: Duration,
}

/// `[attribution]`: how the report credits orders to emails (see `measure`).
#[derive(Debug, Clone)]
pub struct AttributionSettings {
    /// An order within this after a click on a follow-up is attributed to it.
    pub click_window: Duration,
    /// Recipients and holdout are compared on their orders within this after each
    /// follow-up's due time.
    pub conversion_window: Duration,
    /// Adds an open-tracking pixel to emails; off by default (privacy).
    pub open_pixel: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CapPolicy {
    Skip,
    Defer,
}

#[derive(Debug, Clone)]
pub struct Campaign {
    pub name: CampaignName,
    pub trigger: Trigger,
    pub delay: Duration,
    pub template: String,
    pub strategy: Strategy,
    pub max_items: usize,
    pub max_price_ratio: f64,
    pub enabled: bool,
    pub cap_policy: CapPolicy,
    /// The share of customers kept out as the control group (0 = none).
    pub holdout_share: crate::domain::HoldoutShare,
}

impl Settings {
    /// Reads `path` (or the built-in defaults when `path` is None) and the environment.
    pub fn load(path: Option<&Path>) -> Result<Settings, ConfigError> {
        let vars: Vec<(String, String)> = std::env::vars().collect();
        Self::load_with_env(path, &vars)
    }

    pub fn load_with_env(
        path: Option<&Path>,
        env: &[(String, String)],
    ) -> Result<Settings, ConfigError> {
        let (text, origin, base_dir) = match path {
            Some(p) => (
                std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_owned(),
                    source,
                })?,
                p.display().to_string(),
                p.parent().map(Path::to_path_buf).unwrap_or_default(),
            ),
            None => (
                DEFAULT_CONFIG.to_owned(),
                "built-in defaults".to_owned(),
                PathBuf::from("."),
            ),
        };
        raw::parse(&text, &origin, env, &base_dir)
    }

    pub fn campaign(&self, name: &str) -> Option<&Campaign> {
        self.campaigns.iter().find(|c| c.name.as_str() == name)
    }

    /// (template, strategy) of every campaign: what template checks render.
    pub fn campaign_templates(&self) -> Vec<(String, String)> {
        self.campaigns
            .iter()
            .map(|c| (c.template.clone(), c.strategy.as_str().to_owned()))
            .collect()
    }

    /// The campaign `recommend`/`evaluate` use without `--campaign`: the first enabled
    /// one triggered by `order_completed`.
    pub fn default_campaign(&self) -> Option<&Campaign> {
        self.campaigns
            .iter()
            .find(|c| c.enabled && c.trigger == Trigger::OrderCompleted)
            .or_else(|| self.campaigns.iter().find(|c| c.enabled))
    }
}

/// The committed `config.toml`, also the defaults `demo` falls back to.
pub const DEFAULT_CONFIG: &str = include_str!("../../config.toml");

impl QuietHours {
    /// "21:00-08:00"; "" means none.
    pub fn parse(raw: &str) -> Result<Option<QuietHours>, String> {
        if raw.trim().is_empty() {
            return Ok(None);
        }
        let expected =
            || format!("{raw:?} is not a window like \"21:00-08:00\" (or \"\" for none)");
        let (a, b) = raw.split_once('-').ok_or_else(expected)?;
        let t =
            |s: &str| chrono::NaiveTime::parse_from_str(s.trim(), "%H:%M").map_err(|_| expected());
        let (start, end) = (t(a)?, t(b)?);
        if start == end {
            return Ok(None);
        }
        Ok(Some(QuietHours { start, end }))
    }

    pub fn contains(&self, t: chrono::NaiveTime) -> bool {
        if self.start < self.end {
            t >= self.start && t < self.end
        } else {
            t >= self.start || t < self.end
        }
    }
}

#[cfg(test)]
mod tests;
