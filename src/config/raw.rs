//! The file's shape, read strictly (unknown keys refused), then turned into `Settings`.

use super::keys::{self, Kind};
use super::{
    BounceSettings, Campaign, CapPolicy, ConfigError, DatabaseSettings, HttpSettings, Limits,
    PreviousKey, QuietHours, Secret, Settings, ShopifySettings, SmtpSettings, StoreSettings,
    UnsubscribeSettings, WorkerSettings,
};
use crate::domain::{CampaignName, HoldoutShare, Strategy, Trigger, parse_duration, parse_rfc3339};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::LazyLock;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    store: RawStore,
    database: RawDatabase,
    smtp: RawSmtp,
    #[serde(default)]
    worker: RawWorker,
    #[serde(default)]
    http: RawHttp,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    unsubscribe: RawUnsubscribe,
    #[serde(default)]
    shopify: RawShopify,
    #[serde(default)]
    bounces: RawBounces,
    #[serde(default)]
    templates: RawTemplates,
    #[serde(default)]
    attribution: RawAttribution,
    #[serde(default)]
    campaigns: Vec<RawCampaign>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    name: String,
    base_url: String,
    postal_address: String,
    #[serde(default = "usd")]
    currency: String,
    #[serde(default = "utc")]
    timezone: String,
    #[serde(default = "en_us")]
    locale: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    url: String,
    #[serde(default = "eight")]
    max_connections: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSmtp {
    url: String,
    from: String,
    #[serde(default = "eight_connections")]
    pool_size: usize,
    #[serde(default = "ten_s")]
    timeout: String,
    #[serde(default = "ten_m")]
    data_timeout: String,
    #[serde(default = "one_s")]
    probe_base: String,
    #[serde(default = "five_m")]
    probe_max: String,
    username: Option<String>,
    password: Option<String>,
    #[serde(default = "five")]
    max_attempts: u32,
    #[serde(default = "one_m")]
    retry_base: String,
    #[serde(default = "six_h")]
    retry_max: String,
    #[serde(default)]
    rate_limit: u32,
    dkim_selector: Option<String>,
    dkim_domain: Option<String>,
    dkim_key_path: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawWorker {
    concurrency: usize,
    poll_interval: String,
    batch_size: usize,
    lease: String,
    shutdown_timeout: String,
    model_rebuild_interval: String,
    maintenance_interval: String,
    retention: String,
}

impl Default for RawWorker {
    fn default() -> Self {
        Self {
            // Rows in hand (claimed, outcome not yet committed) at most: the crash bound
            // (a kill -9 resends at most this many). Twice `batch_size`, so the next full
            // batch is claimed while the last one is still sending.
            concurrency: 512,
            poll_interval: "100ms".into(),
            batch_size: 256,
            lease: "5m".into(),
            shutdown_timeout: "30s".into(),
            model_rebuild_interval: "1h".into(),
            maintenance_interval: "1h".into(),
            retention: "400d".into(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawHttp {
    bind: String,
    api_token: Option<String>,
    max_body_bytes: usize,
    webhook_max_body_bytes: usize,
    header_timeout: String,
    body_timeout: String,
    idle_timeout: String,
    max_connections: usize,
    metrics_token: Option<String>,
}

impl Default for RawHttp {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8080".into(),
            api_token: None,
            max_body_bytes: 2 * 1024 * 1024,
            webhook_max_body_bytes: 1024 * 1024,
            header_timeout: "10s".into(),
            body_timeout: "30s".into(),
            idle_timeout: "20s".into(),
            max_connections: 256,
            metrics_token: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLimits {
    max_emails_per_customer_per_week: u32,
    quiet_hours: String,
    seen_on_site_window: String,
    repeat_window: String,
}

impl Default for RawLimits {
    fn default() -> Self {
        Self {
            max_emails_per_customer_per_week: 2,
            quiet_hours: "21:00-08:00".into(),
            seen_on_site_window: "30d".into(),
            repeat_window: "90d".into(),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawUnsubscribe {
    secret: Option<String>,
    /// The key before the last rotation, accepted for verification until
    /// `previous_secret_until` (RFC 3339).
    previous_secret: Option<String>,
    previous_secret_until: Option<String>,
    mailto: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawShopify {
    webhook_secret: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawBounces {
    webhook_secret: Option<String>,
    mailgun_signing_key: Option<String>,
    sendgrid_public_key: Option<String>,
    ses_certificate: Option<String>,
    ses_allow_unverified: bool,
    max_age: String,
}

impl Default for RawBounces {
    fn default() -> Self {
        RawBounces {
            webhook_secret: None,
            mailgun_signing_key: None,
            sendgrid_public_key: None,
            ses_certificate: None,
            ses_allow_unverified: false,
            max_age: "15m".into(),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTemplates {
    dir: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAttribution {
    click_window: String,
    conversion_window: String,
    open_pixel: bool,
}

impl Default for RawAttribution {
    fn default() -> Self {
        Self {
            click_window: "5d".into(),
            conversion_window: "14d".into(),
            open_pixel: false,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCampaign {
    name: String,
    trigger: Trigger,
    #[serde(default = "zero_s")]
    delay: String,
    template: Option<String>,
    strategy: Strategy,
    #[serde(default = "three")]
    max_items: usize,
    #[serde(default = "half")]
    max_price_ratio: f64,
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default = "defer")]
    cap_policy: CapPolicy,
    #[serde(default = "tenth")]
    holdout_share: f64,
}

fn usd() -> String {
    "USD".into()
}
fn utc() -> String {
    "UTC".into()
}
fn en_us() -> String {
    "en-US".into()
}
fn eight() -> u32 {
    8
}
fn eight_connections() -> usize {
    8
}
fn three() -> usize {
    3
}
fn five() -> u32 {
    5
}
fn ten_s() -> String {
    "10s".into()
}
fn ten_m() -> String {
    "10m".into()
}
fn one_s() -> String {
    "1s".into()
}
fn five_m() -> String {
    "5m".into()
}
fn one_m() -> String {
    "1m".into()
}
fn six_h() -> String {
    "6h".into()
}
fn zero_s() -> String {
    "0s".into()
}
fn half() -> f64 {
    0.5
}
fn yes() -> bool {
    true
}
fn defer() -> CapPolicy {
    CapPolicy::Defer
}
fn tenth() -> f64 {
    HoldoutShare::DEFAULT.value()
}

/// Keys holding secrets: they belong in the environment, and a file that holds one gets
/// a warning naming the key. Each must be a string key (`config::tests` checks).
pub(super) const SECRET_KEYS: &[&str] = &[
    "smtp.password",
    "http.api_token",
    "http.metrics_token",
    "shopify.webhook_secret",
    "bounces.webhook_secret",
    "bounces.mailgun_signing_key",
    "unsubscribe.secret",
    "unsubscribe.previous_secret",
];

/// What every key of the file holds, read off the `Raw*` types once.
pub(super) static KINDS: LazyLock<BTreeMap<String, Kind>> = LazyLock::new(|| {
    keys::kinds::<Raw>().expect("every Raw field has a probeable type (config::tests)")
});

/// The variable that sets `key` ("worker.concurrency" → "AFTERCART__WORKER__CONCURRENCY").
pub(super) fn env_var(key: &str) -> String {
    format!("AFTERCART__{}", key.replace('.', "__").to_uppercase())
}

/// Where the values came from, so an error blames the variable that set a key rather
/// than the file.
struct Origins<'a> {
    file: &'a str,
    /// Dotted key → the environment variable that set it.
    env: BTreeMap<String, String>,
}

impl Origins<'_> {
    fn err(&self, key: &str, why: impl Into<String>) -> ConfigError {
        match self.env.get(key) {
            Some(var) => ConfigError::Env {
                var: var.clone(),
                key: key.into(),
                why: why.into(),
            },
            None => ConfigError::Key {
                origin: self.file.into(),
                key: key.into(),
                why: why.into(),
            },
        }
    }
}

/// The secret keys the file itself sets (to a non-empty value).
pub(super) fn secrets_in(table: &toml::Table) -> Vec<&'static str> {
    SECRET_KEYS
        .iter()
        .copied()
        .filter(|key| {
            let (section, name) = key.split_once('.').unwrap_or((key, ""));
            table
                .get(section)
                .and_then(|s| s.get(name))
                .is_some_and(|v| v.as_str() != Some(""))
        })
        .collect()
}

/// Turns one environment value into the TOML value its key expects. Strings are taken
/// verbatim (`12345678`, `true` and `"abc"` with its quotes stay strings); numbers and
/// booleans are parsed for their key. Only non-secret values are ever quoted back.
fn env_value(kind: Kind, value: &str) -> Result<toml::Value, String> {
    let v = value.trim();
    match kind {
        Kind::Text => Ok(toml::Value::String(value.to_owned())),
        Kind::Whole => v
            .parse::<u64>()
            .ok()
            .and_then(|n| i64::try_from(n).ok())
            .map(toml::Value::Integer)
            .ok_or_else(|| format!("expected a whole number, got {value:?}")),
        Kind::Integer => v
            .parse::<i64>()
            .map(toml::Value::Integer)
            .map_err(|_| format!("expected a whole number, got {value:?}")),
        Kind::Number => v
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map(toml::Value::Float)
            .ok_or_else(|| format!("expected a number, got {value:?}")),
        Kind::Bool => match v.to_ascii_lowercase().as_str() {
            "true" => Ok(toml::Value::Boolean(true)),
            "false" => Ok(toml::Value::Boolean(false)),
            _ => Err(format!("expected true or false, got {value:?}")),
        },
        Kind::Nested => Err("a table or list cannot be set from the environment".into()),
    }
}

/// Applies `AFTERCART__SECTION__KEY=value` on top of the file; returns which variable set
/// which key. An unknown section or key is refused like one in the file.
fn overlay_env(
    table: &mut toml::Table,
    env: &[(String, String)],
    origin: &str,
) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut set_by = BTreeMap::new();
    for (name, value) in env {
        let Some(rest) = name.strip_prefix("AFTERCART__") else {
            continue;
        };
        let refuse = |why: String| ConfigError::EnvName {
            var: name.clone(),
            why,
        };
        let parts: Vec<String> = rest.split("__").map(str::to_lowercase).collect();
        let [section, key] = parts.as_slice() else {
            return Err(refuse("expected AFTERCART__SECTION__KEY".into()));
        };
        let dotted = format!("{section}.{key}");
        let kind = match KINDS.get(&dotted) {
            Some(kind) => *kind,
            None if KINDS.contains_key(section) => {
                let prefix = format!("{section}.");
                let known: Vec<&str> = KINDS
                    .keys()
                    .filter_map(|k| k.strip_prefix(&prefix))
                    .collect();
                return Err(refuse(if known.is_empty() {
                    format!("[{section}] cannot be set from the environment")
                } else {
                    format!(
                        "unknown key {dotted} (expected one of: {})",
                        known.join(", ")
                    )
                }));
            }
            None => {
                let sections: Vec<&str> = KINDS
                    .keys()
                    .filter(|k| !k.contains('.'))
                    .map(String::as_str)
                    .collect();
                return Err(refuse(format!(
                    "unknown section {section} (expected one of: {})",
                    sections.join(", ")
                )));
            }
        };
        let parsed = env_value(kind, value).map_err(|why| ConfigError::Env {
            var: name.clone(),
            key: dotted.clone(),
            why,
        })?;
        let entry = table
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let Some(sec) = entry.as_table_mut() else {
            return Err(ConfigError::Key {
                origin: origin.into(),
                key: section.clone(),
                why: "expected a section".into(),
            });
        };
        sec.insert(key.clone(), parsed);
        set_by.insert(dotted, name.clone());
    }
    Ok(set_by)
}

pub(super) fn parse(
    text: &str,
    origin: &str,
    env: &[(String, String)],
    base_dir: &Path,
) -> Result<Settings, ConfigError> {
    let mut table: toml::Table =
        text.parse()
            .map_err(|e: toml::de::Error| ConfigError::Syntax {
                path: origin.into(),
                message: e.to_string(),
            })?;
    for key in secrets_in(&table) {
        tracing::warn!(
            "{origin}: {key} holds a secret; set {} in the environment instead and remove it from the file",
            env_var(key)
        );
    }
    let origins = Origins {
        file: origin,
        env: overlay_env(&mut table, env, origin)?,
    };
    let raw: Raw = serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let key = e.path().to_string();
        // A type error quotes the value; for a secret, say only what was expected.
        let why = if SECRET_KEYS.contains(&key.as_str()) {
            "expected a string".to_owned()
        } else {
            // `message()`: without toml's "in `key`" suffix; the key is named already.
            e.inner().message().to_owned()
        };
        origins.err(&key, why)
    })?;
    let key_err = |key: &str, why: String| origins.err(key, why);
    let d = |key: &str, raw: &str| parse_duration(raw).map_err(|why| origins.err(key, why));

    let timezone = raw.store.timezone.parse::<chrono_tz::Tz>().map_err(|_| {
        key_err(
            "store.timezone",
            format!("{:?} is not an IANA time zone name", raw.store.timezone),
        )
    })?;
    url::Url::parse(&raw.store.base_url)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https"))
        .ok_or_else(|| {
            key_err(
                "store.base_url",
                format!("{:?} is not an http(s) URL", raw.store.base_url),
            )
        })?;
    let db = &raw.database.url;
    if !(db.starts_with("sqlite:")
        || db.starts_with("postgres://")
        || db.starts_with("postgresql://"))
    {
        return Err(key_err(
            "database.url",
            format!(
                "{:?} is not sqlite://FILE or postgres://…",
                crate::domain::redact(db)
            ),
        ));
    }
    let smtp = &raw.smtp.url;
    if url::Url::parse(smtp)
        .ok()
        .filter(|u| matches!(u.scheme(), "smtp" | "smtps" | "file"))
        .is_none()
    {
        return Err(key_err(
            "smtp.url",
            format!(
                "{:?} is not smtp://host:port, smtps://host:port or file://DIR",
                crate::domain::redact(smtp)
            ),
        ));
    }
    if raw.worker.concurrency == 0 {
        return Err(key_err("worker.concurrency", "must be at least 1".into()));
    }
    if raw.worker.batch_size == 0 {
        return Err(key_err("worker.batch_size", "must be at least 1".into()));
    }
    if raw.smtp.pool_size == 0 {
        return Err(key_err("smtp.pool_size", "must be at least 1".into()));
    }
    if raw.smtp.max_attempts == 0 {
        return Err(key_err("smtp.max_attempts", "must be at least 1".into()));
    }
    if raw.http.max_connections == 0 {
        return Err(key_err("http.max_connections", "must be at least 1".into()));
    }
    if raw.http.webhook_max_body_bytes == 0 {
        return Err(key_err(
            "http.webhook_max_body_bytes",
            "must be at least 1".into(),
        ));
    }
    // A zero timeout would cut every connection at once.
    let positive = |key: &str, raw: &str| -> Result<std::time::Duration, ConfigError> {
        let v = d(key, raw)?;
        if v.is_zero() {
            return Err(key_err(key, format!("{raw:?} must be longer than 0s")));
        }
        Ok(v)
    };
    let header_timeout = positive("http.header_timeout", &raw.http.header_timeout)?;
    let body_timeout = positive("http.body_timeout", &raw.http.body_timeout)?;
    let idle_timeout = positive("http.idle_timeout", &raw.http.idle_timeout)?;
    let smtp_timeout = positive("smtp.timeout", &raw.smtp.timeout)?;
    let data_timeout = positive("smtp.data_timeout", &raw.smtp.data_timeout)?;
    let probe_base = positive("smtp.probe_base", &raw.smtp.probe_base)?;
    let probe_max = d("smtp.probe_max", &raw.smtp.probe_max)?;
    if probe_max < probe_base {
        return Err(key_err(
            "smtp.probe_max",
            format!(
                "{:?} is shorter than smtp.probe_base ({:?})",
                raw.smtp.probe_max, raw.smtp.probe_base
            ),
        ));
    }
    let quiet_hours = QuietHours::parse(&raw.limits.quiet_hours)
        .map_err(|why| key_err("limits.quiet_hours", why))?;

    let mut campaigns = Vec::with_capacity(raw.campaigns.len());
    for (i, c) in raw.campaigns.into_iter().enumerate() {
        let at = |k: &str| format!("campaigns[{i}].{k}");
        let name = CampaignName::parse(&c.name).map_err(|why| key_err(&at("name"), why))?;
        if c.name
            .contains(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_' || ch == '-'))
        {
            return Err(key_err(
                &at("name"),
                format!("{:?} may only hold letters, digits, _ and -", c.name),
            ));
        }
        if campaigns.iter().any(|p: &Campaign| p.name == name) {
            return Err(key_err(&at("name"), format!("{:?} is used twice", c.name)));
        }
        if !(c.max_price_ratio.is_finite() && c.max_price_ratio > 0.0) {
            return Err(key_err(
                &at("max_price_ratio"),
                "must be a positive number".into(),
            ));
        }
        if c.max_items == 0 {
            return Err(key_err(&at("max_items"), "must be at least 1".into()));
        }
        campaigns.push(Campaign {
            template: c.template.unwrap_or_else(|| c.name.clone()),
            name,
            trigger: c.trigger,
            delay: d(&at("delay"), &c.delay)?,
            strategy: c.strategy,
            max_items: c.max_items,
            max_price_ratio: c.max_price_ratio,
            enabled: c.enabled,
            cap_policy: c.cap_policy,
            holdout_share: HoldoutShare::parse(c.holdout_share)
                .map_err(|why| key_err(&at("holdout_share"), why))?,
        });
    }

    let previous_until = raw
        .unsubscribe
        .previous_secret_until
        .as_deref()
        .map(|t| parse_rfc3339(t).map_err(|why| key_err("unsubscribe.previous_secret_until", why)))
        .transpose()?;
    let previous = match (
        raw.unsubscribe.previous_secret.filter(|s| !s.is_empty()),
        previous_until,
    ) {
        (None, _) => None,
        (Some(secret), Some(until)) => Some(PreviousKey {
            secret: Secret::new(secret),
            until,
        }),
        (Some(_), None) => {
            return Err(key_err(
                "unsubscribe.previous_secret",
                format!(
                    "needs unsubscribe.previous_secret_until ({}): the RFC 3339 time after which \
                     links signed with the previous key are refused",
                    env_var("unsubscribe.previous_secret_until")
                ),
            ));
        }
    };

    // A zero window would attribute nothing and count no order.
    let attribution = super::AttributionSettings {
        click_window: positive("attribution.click_window", &raw.attribution.click_window)?,
        conversion_window: positive(
            "attribution.conversion_window",
            &raw.attribution.conversion_window,
        )?,
        open_pixel: raw.attribution.open_pixel,
    };

    let templates_dir = match raw.templates.dir {
        Some(dir) => base_dir.join(dir),
        None => base_dir.join("templates"),
    };

    Ok(Settings {
        store: StoreSettings {
            name: raw.store.name,
            base_url: raw.store.base_url.trim_end_matches('/').to_owned(),
            postal_address: raw.store.postal_address,
            currency: raw.store.currency,
            timezone,
            locale: raw.store.locale,
        },
        database: DatabaseSettings {
            url: raw.database.url,
            max_connections: raw.database.max_connections.max(1),
        },
        smtp: SmtpSettings {
            url: raw.smtp.url,
            from: raw.smtp.from,
            pool_size: raw.smtp.pool_size,
            timeout: smtp_timeout,
            data_timeout,
            probe_base,
            probe_max,
            username: raw.smtp.username,
            password: raw.smtp.password.map(Secret::new),
            max_attempts: raw.smtp.max_attempts,
            retry_base: d("smtp.retry_base", &raw.smtp.retry_base)?,
            retry_max: d("smtp.retry_max", &raw.smtp.retry_max)?,
            rate_limit: raw.smtp.rate_limit,
            dkim: match (raw.smtp.dkim_key_path, raw.smtp.dkim_selector) {
                (None, _) => None,
                (Some(_), None) => {
                    return Err(key_err(
                        "smtp.dkim_selector",
                        "needed with smtp.dkim_key_path".into(),
                    ));
                }
                (Some(path), Some(selector)) => Some(super::Dkim {
                    key_path: base_dir.join(path),
                    selector,
                    domain: raw.smtp.dkim_domain,
                }),
            },
        },
        worker: WorkerSettings {
            concurrency: raw.worker.concurrency,
            poll_interval: d("worker.poll_interval", &raw.worker.poll_interval)?,
            batch_size: raw.worker.batch_size,
            lease: d("worker.lease", &raw.worker.lease)?,
            shutdown_timeout: d("worker.shutdown_timeout", &raw.worker.shutdown_timeout)?,
            model_rebuild_interval: d(
                "worker.model_rebuild_interval",
                &raw.worker.model_rebuild_interval,
            )?,
            maintenance_interval: d(
                "worker.maintenance_interval",
                &raw.worker.maintenance_interval,
            )?,
            retention: d("worker.retention", &raw.worker.retention)?,
        },
        http: HttpSettings {
            bind: raw.http.bind,
            api_token: raw
                .http
                .api_token
                .filter(|t| !t.is_empty())
                .map(Secret::new),
            max_body_bytes: raw.http.max_body_bytes,
            webhook_max_body_bytes: raw.http.webhook_max_body_bytes,
            header_timeout,
            body_timeout,
            idle_timeout,
            max_connections: raw.http.max_connections,
            metrics_token: raw
                .http
                .metrics_token
                .filter(|t| !t.is_empty())
                .map(Secret::new),
        },
        limits: Limits {
            max_emails_per_customer_per_week: raw.limits.max_emails_per_customer_per_week,
            quiet_hours,
            seen_on_site_window: d(
                "limits.seen_on_site_window",
                &raw.limits.seen_on_site_window,
            )?,
            repeat_window: d("limits.repeat_window", &raw.limits.repeat_window)?,
        },
        unsubscribe: UnsubscribeSettings {
            secret: raw
                .unsubscribe
                .secret
                .filter(|s| !s.is_empty())
                .map(Secret::new),
            previous,
            mailto: raw.unsubscribe.mailto,
        },
        shopify: ShopifySettings {
            webhook_secret: raw
                .shopify
                .webhook_secret
                .filter(|s| !s.is_empty())
                .map(Secret::new),
        },
        bounces: BounceSettings {
            webhook_secret: raw
                .bounces
                .webhook_secret
                .filter(|s| !s.is_empty())
                .map(Secret::new),
            mailgun_signing_key: raw
                .bounces
                .mailgun_signing_key
                .filter(|s| !s.is_empty())
                .map(Secret::new),
            sendgrid_public_key: match raw
                .bounces
                .sendgrid_public_key
                .map(|k| k.trim().to_owned())
                .filter(|k| !k.is_empty())
            {
                Some(k) => Some(
                    sendgrid_key(&k)
                        .map(|_| k)
                        .map_err(|why| origins.err("bounces.sendgrid_public_key", why))?,
                ),
                None => None,
            },
            ses_key: match raw.bounces.ses_certificate.as_deref().map(str::trim) {
                Some(path) if !path.is_empty() => Some(
                    ses_certificate_key(std::path::Path::new(path))
                        .map_err(|why| origins.err("bounces.ses_certificate", why))?,
                ),
                _ => None,
            },
            ses_allow_unverified: raw.bounces.ses_allow_unverified,
            max_age: d("bounces.max_age", &raw.bounces.max_age)?,
        },
        attribution,
        campaigns,
        templates_dir,
    })
}

/// SendGrid's verification key as SendGrid shows it: base64 of a DER public key (P-256).
pub(crate) fn sendgrid_key(b64: &str) -> Result<p256::ecdsa::VerifyingKey, String> {
    use base64::Engine as _;
    use p256::pkcs8::DecodePublicKey as _;
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|e| format!("is not base64 ({e}); paste the key SendGrid shows"))?;
    p256::ecdsa::VerifyingKey::from_public_key_der(&der)
        .map_err(|e| format!("is not a P-256 public key in DER ({e})"))
}

/// The RSA public key of an X.509 certificate in a PEM file (the SNS signing certificate).
fn ses_certificate_key(path: &std::path::Path) -> Result<rsa::RsaPublicKey, String> {
    use rsa::pkcs8::DecodePublicKey as _;
    use x509_cert::der::{DecodePem as _, Encode as _};
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let cert = x509_cert::Certificate::from_pem(&pem)
        .map_err(|e| format!("{} is not a PEM X.509 certificate ({e})", path.display()))?;
    let der = cert
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    rsa::RsaPublicKey::from_public_key_der(&der)
        .map_err(|e| format!("{}: the certificate's key is not RSA ({e})", path.display()))
}
