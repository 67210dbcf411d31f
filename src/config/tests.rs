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
fn smtp_timeouts_and_probe_backoff_have_defaults_and_are_checked() {
    let s = load_text(DEFAULT_CONFIG, &[]).unwrap();
    assert_eq!(s.smtp.data_timeout.as_secs(), 600, "RFC 5321 §4.5.3.2");
    assert_eq!(s.smtp.probe_base.as_secs(), 1);
    assert_eq!(s.smtp.probe_max.as_secs(), 300);
    let s = load_text(
        DEFAULT_CONFIG,
        &[
            ("AFTERCART__SMTP__DATA_TIMEOUT", "2m"),
            ("AFTERCART__SMTP__PROBE_BASE", "5s"),
            ("AFTERCART__SMTP__PROBE_MAX", "1h"),
        ],
    )
    .unwrap();
    assert_eq!(s.smtp.data_timeout.as_secs(), 120);
    assert_eq!(s.smtp.probe_base.as_secs(), 5);
    assert_eq!(s.smtp.probe_max.as_secs(), 3600);

    for (key, value, named) in [
        ("AFTERCART__SMTP__DATA_TIMEOUT", "0s", "smtp.data_timeout"),
        (
            "AFTERCART__SMTP__DATA_TIMEOUT",
            "later",
            "smtp.data_timeout",
        ),
        ("AFTERCART__SMTP__TIMEOUT", "0s", "smtp.timeout"),
        ("AFTERCART__SMTP__PROBE_BASE", "0s", "smtp.probe_base"),
        ("AFTERCART__SMTP__PROBE_MAX", "100ms", "smtp.probe_max"),
    ] {
        let e = load_text(DEFAULT_CONFIG, &[(key, value)])
            .unwrap_err()
            .to_string();
        assert!(e.contains(named), "{key}={value}: {e}");
    }
}
