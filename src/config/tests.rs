use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn load_text(text: &str, vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    raw::parse(text, "test.toml", &env(vars), Path::new("."))
}

#[test]
fn shipped_config_loads() {
    let s = Settings::load_with_env(None, &[]).unwrap();
    assert_eq!(s.campaigns.len(), 2);
    assert_eq!(
        s.default_campaign().unwrap().name.as_str(),
        "complete_your_setup"
    );
    assert_eq!(s.limits.seen_on_site_window.as_secs(), 30 * 86400);
    assert!(s.limits.quiet_hours.is_some());
}

#[test]
fn env_overrides_keys() {
    let s = load_text(
        DEFAULT_CONFIG,
        &[
            ("AFTERCART__SMTP__URL", "smtp://127.0.0.1:2525"),
            ("AFTERCART__WORKER__CONCURRENCY", "7"),
            ("AFTERCART__LIMITS__QUIET_HOURS", ""),
        ],
    )
    .unwrap();
    assert_eq!(s.smtp.url, "smtp://127.0.0.1:2525");
    assert_eq!(s.worker.concurrency, 7);
    assert!(s.limits.quiet_hours.is_none());
}

#[test]
fn wrong_keys_and_values_name_the_key() {
    let bad = DEFAULT_CONFIG.replace("[worker]\n", "[worker]\nconcurency = 3\n");
    let e = load_text(&bad, &[]).unwrap_err().to_string();
    assert!(e.contains("worker") && e.contains("concurency"), "{e}");

    let bad = DEFAULT_CONFIG.replace("poll_interval = \"100ms\"", "poll_interval = \"soon\"");
    let e = load_text(&bad, &[]).unwrap_err().to_string();
    assert!(e.contains("worker.poll_interval"), "{e}");

    let e = load_text(DEFAULT_CONFIG, &[("AFTERCART__DATABASE__URL", "mysql://x")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("database.url"), "{e}");

    let e = load_text(
        DEFAULT_CONFIG,
        &[("AFTERCART__LIMITS__QUIET_HOURS", "late")],
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("limits.quiet_hours"), "{e}");

    let bad = DEFAULT_CONFIG.replace("strategy = \"upgrades\"", "strategy = \"random\"");
    let e = load_text(&bad, &[]).unwrap_err().to_string();
    assert!(e.contains("campaigns[1].strategy"), "{e}");
}

#[test]
fn quiet_hours_wrap_midnight() {
    let q = QuietHours::parse("21:00-08:00").unwrap().unwrap();
    let t = |h, m| chrono::NaiveTime::from_hms_opt(h, m, 0).unwrap();
    assert!(q.contains(t(23, 0)) && q.contains(t(3, 0)) && q.contains(t(21, 0)));
    assert!(!q.contains(t(8, 0)) && !q.contains(t(12, 0)));
    assert!(QuietHours::parse("").unwrap().is_none());
}

#[test]
fn http_limits_have_defaults_and_are_checked() {
    let s = Settings::load_with_env(None, &[]).unwrap();
    assert_eq!(s.http.header_timeout.as_secs(), 10);
    assert_eq!(s.http.body_timeout.as_secs(), 30);
    assert_eq!(s.http.idle_timeout.as_secs(), 20);
    assert_eq!(s.http.max_connections, 256);
    assert_eq!(s.http.webhook_max_body_bytes, 1024 * 1024);
    assert!(s.http.metrics_token.is_none());

    let s = load_text(
        DEFAULT_CONFIG,
        &[
            ("AFTERCART__HTTP__IDLE_TIMEOUT", "3s"),
            ("AFTERCART__HTTP__METRICS_TOKEN", "m-tok"),
        ],
    )
    .unwrap();
    assert_eq!(s.http.idle_timeout.as_secs(), 3);
    assert_eq!(s.http.metrics_token.as_deref(), Some("m-tok"));

    for (key, value, named) in [
        (
            "AFTERCART__HTTP__HEADER_TIMEOUT",
            "0s",
            "http.header_timeout",
        ),
        ("AFTERCART__HTTP__BODY_TIMEOUT", "soon", "http.body_timeout"),
        ("AFTERCART__HTTP__IDLE_TIMEOUT", "0s", "http.idle_timeout"),
        (
            "AFTERCART__HTTP__MAX_CONNECTIONS",
            "0",
            "http.max_connections",
        ),
        (
            "AFTERCART__HTTP__WEBHOOK_MAX_BODY_BYTES",
            "0",
            "http.webhook_max_body_bytes",
        ),
    ] {
        let e = load_text(DEFAULT_CONFIG, &[(key, value)])
            .unwrap_err()
            .to_string();
        assert!(e.contains(named), "{key}={value}: {e}");
    }
}
