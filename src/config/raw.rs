//! The file's shape, read strictly (unknown keys refused), then turned into `Settings`.

use super::{
    Campaign, CapPolicy, ConfigError, DatabaseSettings, HttpSettings, Limits, QuietHours, Settings,
    ShopifySettings, SmtpSettings, StoreSettings, UnsubscribeSettings, WorkerSettings, duration,
};
use crate::domain::{CampaignName, Strategy, Trigger};
use serde::Deserialize;
use std::path::Path;

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
    templates: RawTemplates,
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
    #[serde(default = "four")]
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
}

impl Default for RawWorker {
    fn default() -> Self {
        Self {
            concurrency: 64,
            poll_interval: "100ms".into(),
            batch_size: 256,
            lease: "5m".into(),
            shutdown_timeout: "30s".into(),
            model_rebuild_interval: "1h".into(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawHttp {
    bind: String,
    api_token: Option<String>,
    max_body_bytes: usize,
}

impl Default for RawHttp {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8080".into(),
            api_token: None,
            max_body_bytes: 2 * 1024 * 1024,
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
    mailto: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawShopify {
    webhook_secret: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTemplates {
    dir: Option<String>,
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
fn four() -> usize {
    4
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

/// Applies `AFTERCART__SECTION__KEY=value` on top of the file. The value is read as a
/// TOML value when it parses as one (numbers, booleans), else as a string.
fn overlay_env(
    table: &mut toml::Table,
    env: &[(String, String)],
    origin: &str,
) -> Result<(), ConfigError> {
    for (name, value) in env {
        let Some(rest) = name.strip_prefix("AFTERCART__") else {
            continue;
        };
        let parts: Vec<String> = rest.split("__").map(str::to_lowercase).collect();
        let [section, key] = parts.as_slice() else {
            return Err(ConfigError::Key {
                origin: "environment".into(),
                key: name.clone(),
                why: "expected AFTERCART__SECTION__KEY".into(),
            });
        };
        let parsed = format!("v = {value}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .filter(|v| !v.is_table() && !v.is_array())
            .unwrap_or_else(|| toml::Value::String(value.clone()));
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
    }
    Ok(())
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
    overlay_env(&mut table, env, origin)?;
    let raw: Raw = serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        ConfigError::Key {
            origin: origin.into(),
            key: e.path().to_string(),
            why: e.inner().to_string(),
        }
    })?;
    let key_err = |key: &str, why: String| ConfigError::Key {
        origin: origin.into(),
        key: key.into(),
        why,
    };
    let d = |key: &str, raw: &str| duration(origin, key, raw);

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
            format!("{db:?} is not sqlite://FILE or postgres://…"),
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
            format!("{smtp:?} is not smtp://host:port, smtps://host:port or file://DIR"),
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
    let positive = |key: &str, raw: &str| -> Result<std::time::Duration, ConfigError> {
        let v = d(key, raw)?;
        if v.is_zero() {
            return Err(key_err(key, format!("{raw:?} must be longer than 0s")));
        }
        Ok(v)
    };
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
        });
    }

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
            password: raw.smtp.password,
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
        },
        http: HttpSettings {
            bind: raw.http.bind,
            api_token: raw.http.api_token.filter(|t| !t.is_empty()),
            max_body_bytes: raw.http.max_body_bytes,
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
            secret: raw.unsubscribe.secret.filter(|s| !s.is_empty()),
            mailto: raw.unsubscribe.mailto,
        },
        shopify: ShopifySettings {
            webhook_secret: raw.shopify.webhook_secret.filter(|s| !s.is_empty()),
        },
        campaigns,
        templates_dir,
    })
}
