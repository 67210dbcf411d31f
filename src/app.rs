//! Start-up wiring, in one place: settings, the store (migrated), the engine (templates,
//! model, signing key), the mailer (with DKIM), the shutdown signal, and the long-running
//! processes built from them: the worker, the HTTP server, or both (`serve`).
//!
//! Both faces use this module and never each other: `cli` calls it for every command,
//! and `http` is one of the parts it starts. Errors come back as [`AppError`]; which exit
//! code one deserves is decided by `cli`, not here.

use crate::config::{ConfigError, Settings};
use crate::http::HttpError;
use crate::jobs::{Clock, Engine, RunOptions, Worker, load_model};
use crate::mail::{Mailer, MailerConfig};
use crate::render::LiveTemplates;
use crate::store::{Store, StoreError};
use crate::unsubscribe::{Signer, random_secret};
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::watch;

/// How often a long-running process looks for edited templates.
const TEMPLATE_WATCH: Duration = Duration::from_secs(2);

/// Why start-up (or a long-running process) failed.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A wrong key or value in the config file or environment.
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("no ./config.toml here: pass --config PATH")]
    NoConfig,
    /// A template does not parse or render (one line per problem, naming file and line).
    #[error("{0}")]
    Templates(String),
    /// The SMTP settings cannot be used: `key` names the setting.
    #[error("{key}: {why}")]
    Smtp { key: &'static str, why: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("worker task: {0}")]
    Task(String),
}

/// `--config PATH`, else ./config.toml, else (when `allow_defaults`, for `demo`) the
/// built-in defaults.
pub fn load_settings(path: Option<&Path>, allow_defaults: bool) -> Result<Settings, AppError> {
    match path {
        Some(p) => Ok(Settings::load(Some(p))?),
        None if Path::new("config.toml").exists() => {
            Ok(Settings::load(Some(Path::new("config.toml")))?)
        }
        None if allow_defaults => Ok(Settings::load(None)?),
        None => Err(AppError::NoConfig),
    }
}

/// Opens the database and brings the schema up to date.
pub async fn open_store(s: &Settings) -> Result<Store, AppError> {
    let store = Store::connect(&s.database.url, s.database.max_connections).await?;
    store.migrate().await?;
    Ok(store)
}

/// The store plus templates, model and signing key: what picks, previews and sends need.
pub async fn open_engine(s: Settings, store: Store, clock: Clock) -> Result<Engine, AppError> {
    let secret = match &s.unsubscribe.secret {
        Some(k) => k.expose().to_owned(),
        // No key configured: one generated and kept in the database (owner-only files
        // for SQLite), so links stay valid across restarts and workers.
        None => {
            store
                .meta_get_or_init("unsubscribe_secret", random_secret)
                .await?
        }
    };
    let mut signer = Signer::new(&secret);
    if let Some(p) = &s.unsubscribe.previous {
        signer = signer.with_previous(p.secret.expose(), p.until);
        if clock.now() < p.until {
            tracing::info!(
                until = %p.until.rfc3339(),
                "unsubscribe links signed with the previous key are accepted until then"
            );
        } else {
            tracing::warn!(
                until = %p.until.rfc3339(),
                "unsubscribe.previous_secret has expired: links signed with it are refused; \
                 remove AFTERCART__UNSUBSCRIBE__PREVIOUS_SECRET"
            );
        }
    }
    let campaigns = s.campaign_templates();
    let templates = LiveTemplates::load(&s.templates_dir, &campaigns).map_err(|problems| {
        AppError::Templates(
            problems
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join("\n"),
        )
    })?;
    let model = load_model(&store).await?;
    Ok(Engine {
        store,
        settings: Arc::new(s),
        model: Arc::new(RwLock::new(Arc::new(model))),
        templates,
        signer,
        clock,
        stock_seen: Default::default(),
        stages: Default::default(),
    })
}

/// The mailer of `[smtp]`, signing with DKIM when a key is configured.
pub async fn mailer(s: &Settings) -> Result<Arc<Mailer>, AppError> {
    let smtp = |key, why: String| AppError::Smtp { key, why };
    let cfg = MailerConfig {
        url: s.smtp.url.clone(),
        pool_size: s.smtp.pool_size,
        timeout: s.smtp.timeout,
        data_timeout: s.smtp.data_timeout,
        probe_base: s.smtp.probe_base,
        probe_max: s.smtp.probe_max,
        username: s.smtp.username.clone(),
        password: s.smtp.password.as_ref().map(|p| p.expose().to_owned()),
    };
    let mut mailer = Mailer::connect(cfg)
        .await
        .map_err(|e| smtp("smtp.url", e.to_string()))?;
    if let Some(d) = &s.smtp.dkim {
        let key = std::fs::read_to_string(&d.key_path).map_err(|e| {
            smtp(
                "smtp.dkim_key_path",
                format!("{}: {e}", d.key_path.display()),
            )
        })?;
        let domain = d
            .domain
            .clone()
            .unwrap_or_else(|| s.smtp.from_domain().to_owned());
        mailer = mailer
            .with_dkim(&d.selector, &domain, &key)
            .map_err(|e| smtp("smtp.dkim_key_path", e.to_string()))?;
    }
    Ok(Arc::new(mailer))
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is called, not
/// when the future is first polled, so a signal that arrives while the process is still
/// starting up stops it gracefully instead of killing it: call it first thing.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// A worker on `store`, ready to run: the mailer first (a wrong SMTP setting is refused
/// before the model is built), then the engine. A long-running worker (not
/// `opts.until_idle`) also reloads edited templates; a run to idle (demo, tests) ends
/// before an edit could matter.
pub async fn open_worker(
    s: Settings,
    store: Store,
    clock: Clock,
    opts: RunOptions,
) -> Result<Worker, AppError> {
    let mailer = mailer(&s).await?;
    let engine = open_engine(s, store, clock).await?;
    if !opts.until_idle {
        // Detached: it lives as long as the process.
        drop(crate::jobs::watch_templates(engine.clone(), TEMPLATE_WATCH));
    }
    Ok(Worker::new(engine, mailer, opts))
}

/// `aftercart serve`: the API on `http.bind`, the worker in the same process unless
/// `with_worker` is false, template hot reload, and a graceful stop of both on
/// SIGINT/SIGTERM.
pub async fn serve(s: Settings, with_worker: bool) -> Result<(), AppError> {
    // Installed first, so SIGTERM during start-up is a graceful stop.
    let stop = shutdown_signal();
    let bind = s.http.bind.clone();
    if s.http.api_token.is_none() {
        tracing::warn!("AFTERCART__HTTP__API_TOKEN is not set: /v1 and /preview answer 401");
    }
    let mailer = if with_worker {
        Some(mailer(&s).await?)
    } else {
        None
    };
    let store = open_store(&s).await?;
    let engine = open_engine(s, store, Clock::System).await?;
    // Detached: it lives as long as the process.
    drop(crate::jobs::watch_templates(engine.clone(), TEMPLATE_WATCH));

    // One signal, many listeners: the server and the worker stop together.
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        stop.await;
        tracing::info!("shutting down");
        let _ = tx.send(true);
    });
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };

    let listener = crate::http::bind(&bind).await?;
    let (addr, server) = crate::http::start_on(engine.clone(), listener, stopped(rx.clone()))?;
    tracing::info!(%addr, worker = with_worker, "listening");

    let worker = mailer.map(|mailer| {
        let w = Worker::new(engine.clone(), mailer, RunOptions::new(false));
        let stop = stopped(rx.clone());
        tokio::spawn(async move { w.run(stop).await })
    });

    let served = server.await.map_err(|e| AppError::Task(e.to_string()))?;
    if let Some(w) = worker {
        let summary = w.await.map_err(|e| AppError::Task(e.to_string()))??;
        tracing::info!(
            sent = summary.sent,
            skipped = summary.skipped,
            failed = summary.failed,
            "worker stopped"
        );
    }
    engine.store.close().await;
    Ok(served?)
}
