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
    assert_eq!(s.campaigns.len(), 3);
    assert_eq!(s.campaigns[2].name.as_str(), "enhance");
    assert_eq!(s.campaigns[2].strategy, Strategy::Enhance);
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

const TRICKY: &[&str] = &[
    "12345678",
    "0x1F",
    "true",
    "inf",
    "nan",
    "1e3",
    "\"abc\"",
    "'abc'",
    "[1, 2]",
    "{ a = 1 }",
    "a = b",
    " spaced # not a comment ",
];

#[test]
fn every_key_has_a_kind_read_off_the_file_types() {
    use keys::Kind;
    let kinds = &*raw::KINDS;
    assert_eq!(kinds["worker.concurrency"], Kind::Whole);
    assert_eq!(kinds["smtp.rate_limit"], Kind::Whole);
    assert_eq!(kinds["smtp.timeout"], Kind::Text);
    assert_eq!(kinds["smtp.username"], Kind::Text);
    assert_eq!(kinds["unsubscribe.previous_secret_until"], Kind::Text);
    assert_eq!(kinds["store"], Kind::Nested);
    assert_eq!(kinds["campaigns"], Kind::Nested);
    for key in raw::SECRET_KEYS {
        assert_eq!(kinds.get(*key), Some(&Kind::Text), "{key}");
    }
    // Every key of the shipped file is known, so each one can be set from the environment.
    let shipped: toml::Table = DEFAULT_CONFIG.parse().unwrap();
    for (section, keys) in &shipped {
        let Some(keys) = keys.as_table() else {
            continue;
        };
        for key in keys.keys() {
            assert!(
                kinds.contains_key(&format!("{section}.{key}")),
                "{section}.{key}"
            );
        }
    }
}

#[test]
fn environment_strings_are_taken_verbatim() {
    for value in TRICKY {
        let s = load_text(
            DEFAULT_CONFIG,
            &[
                ("AFTERCART__HTTP__API_TOKEN", value),
                ("AFTERCART__SMTP__PASSWORD", value),
                ("AFTERCART__SMTP__USERNAME", value),
                ("AFTERCART__SHOPIFY__WEBHOOK_SECRET", value),
                ("AFTERCART__UNSUBSCRIBE__SECRET", value),
                ("AFTERCART__STORE__NAME", value),
            ],
        )
        .unwrap_or_else(|e| panic!("{value}: {e}"));
        assert_eq!(s.http.api_token.as_ref().unwrap().expose(), *value);
        assert_eq!(s.smtp.password.as_ref().unwrap().expose(), *value);
        assert_eq!(s.smtp.username.as_deref(), Some(*value));
        assert_eq!(s.shopify.webhook_secret.as_ref().unwrap().expose(), *value);
        assert_eq!(s.unsubscribe.secret.as_ref().unwrap().expose(), *value);
        assert_eq!(s.store.name, *value);
    }
}

#[test]
fn environment_numbers_are_parsed_per_key_and_a_bad_one_names_the_variable() {
    let s = load_text(
        DEFAULT_CONFIG,
        &[
            ("AFTERCART__WORKER__CONCURRENCY", " 12 "),
            ("AFTERCART__SMTP__RATE_LIMIT", "50"),
        ],
    )
    .unwrap();
    assert_eq!((s.worker.concurrency, s.smtp.rate_limit), (12, 50));

    let cases = [
        (
            "AFTERCART__WORKER__CONCURRENCY",
            "lots",
            "AFTERCART__WORKER__CONCURRENCY: expected a whole number, got \"lots\"",
        ),
        (
            "AFTERCART__WORKER__CONCURRENCY",
            "-1",
            "AFTERCART__WORKER__CONCURRENCY: expected a whole number, got \"-1\"",
        ),
        (
            "AFTERCART__WORKER__CONCURRENCY",
            "0x1F",
            "AFTERCART__WORKER__CONCURRENCY: expected a whole number",
        ),
        (
            "AFTERCART__WORKER__CONCURRENCY",
            "0",
            "AFTERCART__WORKER__CONCURRENCY: must be at least 1 (key worker.concurrency)",
        ),
        (
            "AFTERCART__SMTP__RATE_LIMIT",
            "5000000000",
            "AFTERCART__SMTP__RATE_LIMIT: ",
        ),
        (
            "AFTERCART__WORKER__POLL_INTERVAL",
            "soon",
            "AFTERCART__WORKER__POLL_INTERVAL: \"soon\" is not a duration",
        ),
        (
            "AFTERCART__STORE__TIMEZONE",
            "Mars/Olympus",
            "AFTERCART__STORE__TIMEZONE: ",
        ),
        (
            "AFTERCART__HTTP__NOPE",
            "1",
            "AFTERCART__HTTP__NOPE: unknown key http.nope (expected one of: api_token, bind",
        ),
        (
            "AFTERCART__NOPE__X",
            "1",
            "AFTERCART__NOPE__X: unknown section nope",
        ),
        (
            "AFTERCART__CAMPAIGNS__NAME",
            "x",
            "AFTERCART__CAMPAIGNS__NAME: [campaigns] cannot be set from the environment",
        ),
        (
            "AFTERCART__WORKER",
            "1",
            "AFTERCART__WORKER: expected AFTERCART__SECTION__KEY",
        ),
    ];
    for (var, value, expected) in cases {
        let e = load_text(DEFAULT_CONFIG, &[(var, value)])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with(expected), "{var}={value}: {e}");
        assert!(!e.contains("test.toml"), "blames the file: {e}");
    }
}

#[test]
fn secrets_never_appear_in_errors_or_debug_output() {
    let e = load_text(
        DEFAULT_CONFIG,
        &[("AFTERCART__HTTP__API_TOKN", "hunter2-secret")],
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("http.api_tokn") && !e.contains("hunter2"), "{e}");

    // A secret of the wrong type in the file: the error says what was expected, not what it got.
    let bad = DEFAULT_CONFIG.replace("[http]\n", "[http]\napi_token = 987654321\n");
    let e = load_text(&bad, &[]).unwrap_err().to_string();
    assert!(
        e.contains("http.api_token") && !e.contains("987654321"),
        "{e}"
    );

    let e = load_text(
        DEFAULT_CONFIG,
        &[(
            "AFTERCART__DATABASE__URL",
            "mysql://u:db-pw-123@localhost/x",
        )],
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("database.url") && !e.contains("db-pw-123"),
        "{e}"
    );

    let s = load_text(
        DEFAULT_CONFIG,
        &[
            ("AFTERCART__HTTP__API_TOKEN", "tok-SECRET-1"),
            ("AFTERCART__SMTP__PASSWORD", "pw-SECRET-2"),
            ("AFTERCART__SMTP__USERNAME", "mailer"),
            (
                "AFTERCART__SMTP__URL",
                "smtp://mailer:url-SECRET-3@127.0.0.1:25",
            ),
            ("AFTERCART__SHOPIFY__WEBHOOK_SECRET", "shop-SECRET-4"),
            ("AFTERCART__UNSUBSCRIBE__SECRET", "unsub-SECRET-5"),
            ("AFTERCART__UNSUBSCRIBE__PREVIOUS_SECRET", "prev-SECRET-6"),
            (
                "AFTERCART__UNSUBSCRIBE__PREVIOUS_SECRET_UNTIL",
                "2030-01-01T00:00:00Z",
            ),
            (
                "AFTERCART__DATABASE__URL",
                "postgres://app:db-SECRET-7@127.0.0.1/app",
            ),
        ],
    )
    .unwrap();
    let debug = format!("{s:?} {s:#?}");
    assert!(!debug.contains("SECRET"), "{debug}");
    assert!(debug.contains("Secret(***)") && debug.contains("mailer"));
}

#[test]
fn secrets_in_the_file_are_found_by_key() {
    let table: toml::Table = DEFAULT_CONFIG.parse().unwrap();
    assert!(
        raw::secrets_in(&table).is_empty(),
        "the shipped file has none"
    );
    let with = DEFAULT_CONFIG
        .replace("[http]\n", "[http]\napi_token = \"x\"\n")
        .replace("[smtp]\n", "[smtp]\npassword = \"\"\n")
        + "\n[unsubscribe]\nsecret = \"y\"\n";
    let table: toml::Table = with.parse().unwrap();
    assert_eq!(
        raw::secrets_in(&table),
        ["http.api_token", "unsubscribe.secret"]
    );
    assert_eq!(raw::env_var("http.api_token"), "AFTERCART__HTTP__API_TOKEN");
    // Still used: a warning, not a refusal.
    let s = load_text(&with, &[]).unwrap();
    assert_eq!(s.http.api_token.unwrap().expose(), "x");
}

#[test]
fn a_previous_unsubscribe_key_needs_an_end() {
    let prev = ("AFTERCART__UNSUBSCRIBE__PREVIOUS_SECRET", "old-key");
    let e = load_text(DEFAULT_CONFIG, &[prev]).unwrap_err().to_string();
    assert!(
        e.starts_with("AFTERCART__UNSUBSCRIBE__PREVIOUS_SECRET: needs")
            && e.contains("AFTERCART__UNSUBSCRIBE__PREVIOUS_SECRET_UNTIL")
            && !e.contains("old-key"),
        "{e}"
    );
    let until = "AFTERCART__UNSUBSCRIBE__PREVIOUS_SECRET_UNTIL";
    let e = load_text(DEFAULT_CONFIG, &[prev, (until, "next week")])
        .unwrap_err()
        .to_string();
    assert!(e.starts_with(until) && e.contains("RFC 3339"), "{e}");
    let s = load_text(DEFAULT_CONFIG, &[prev, (until, "2030-01-01T00:00:00Z")]).unwrap();
    let p = s.unsubscribe.previous.unwrap();
    assert_eq!(p.secret.expose(), "old-key");
    assert_eq!(p.until.rfc3339(), "2030-01-01T00:00:00Z");
    // An end without a key is harmless (left over after a rotation).
    let s = load_text(DEFAULT_CONFIG, &[(until, "2030-01-01T00:00:00Z")]).unwrap();
    assert!(s.unsubscribe.previous.is_none());
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
    assert_eq!(s.http.metrics_token(), Some("m-tok"));

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

#[test]
fn attribution_and_holdout_have_defaults_and_are_checked() {
    // Without the section or the key: 5 days, 14 days, no pixel, one customer in ten.
    let bare: String = DEFAULT_CONFIG
        .lines()
        .filter(|l| {
            ![
                "[attribution]",
                "click_window",
                "conversion_window",
                "open_pixel",
            ]
            .iter()
            .any(|k| l.starts_with(k))
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(!bare.contains("[attribution]"));
    assert!(!bare.contains("holdout_share"));
    for text in [DEFAULT_CONFIG, bare.as_str()] {
        let s = load_text(text, &[]).unwrap();
        assert_eq!(s.attribution.click_window.as_secs(), 5 * 86_400);
        assert_eq!(s.attribution.conversion_window.as_secs(), 14 * 86_400);
        assert!(!s.attribution.open_pixel);
        for c in &s.campaigns {
            assert_eq!(
                c.holdout_share,
                crate::domain::HoldoutShare::DEFAULT,
                "{}",
                c.name
            );
        }
    }

    let s = load_text(
        DEFAULT_CONFIG,
        &[
            ("AFTERCART__ATTRIBUTION__CLICK_WINDOW", "7d"),
            ("AFTERCART__ATTRIBUTION__OPEN_PIXEL", "true"),
        ],
    )
    .unwrap();
    assert_eq!(s.attribution.click_window.as_secs(), 7 * 86_400);
    assert!(s.attribution.open_pixel);

    for (bad, key) in [
        ("\"soon\"", "attribution.click_window"),
        ("\"0s\"", "attribution.click_window"),
    ] {
        let text =
            DEFAULT_CONFIG.replace("click_window = \"5d\"", &format!("click_window = {bad}"));
        let e = load_text(&text, &[]).unwrap_err().to_string();
        assert!(e.contains(key), "{bad}: {e}");
    }
    let e = load_text(
        DEFAULT_CONFIG,
        &[("AFTERCART__ATTRIBUTION__CONVERSION_WINDOW", "later")],
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("AFTERCART__ATTRIBUTION__CONVERSION_WINDOW")
            && e.contains("attribution.conversion_window"),
        "{e}"
    );
    let e = load_text(
        DEFAULT_CONFIG,
        &[("AFTERCART__ATTRIBUTION__OPEN_PIXEL", "maybe")],
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("expected true or false"), "{e}");

    // Per campaign, 0 to 1, as a decimal or a whole number.
    let with_share = |v: &str| {
        DEFAULT_CONFIG.replace(
            "cap_policy = \"skip\"",
            &format!("cap_policy = \"skip\"\nholdout_share = {v}"),
        )
    };
    for (v, want) in [("0", 0.0), ("0.0", 0.0), ("0.25", 0.25), ("1", 1.0)] {
        let s = load_text(&with_share(v), &[]).unwrap();
        assert_eq!(s.campaigns[1].holdout_share.value(), want, "{v}");
        assert_eq!(s.campaigns[0].holdout_share.value(), 0.1);
    }
    for v in ["1.5", "-0.1", "nan", "\"10%\""] {
        let e = load_text(&with_share(v), &[]).unwrap_err().to_string();
        assert!(e.contains("campaigns[1].holdout_share"), "{v}: {e}");
    }
    let e = load_text(&with_share("1.5"), &[]).unwrap_err().to_string();
    assert!(e.contains("from 0 to 1"), "{e}");
}
