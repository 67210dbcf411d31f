//! Opening settings, the store and the engine for a command.

use super::CliError;
use crate::config::Settings;
use crate::jobs::{Clock, Engine, load_model};
use crate::render::LiveTemplates;
use crate::store::Store;
use crate::unsubscribe::{Signer, random_secret};
use std::path::Path;
use std::sync::{Arc, RwLock};

/// `--config PATH`, else ./config.toml, else (for `demo` only) the built-in defaults.
pub fn load_settings(path: Option<&Path>, allow_defaults: bool) -> Result<Settings, CliError> {
    match path {
        Some(p) => Ok(Settings::load(Some(p))?),
        None if Path::new("config.toml").exists() => {
            Ok(Settings::load(Some(Path::new("config.toml")))?)
        }
        None if allow_defaults => Ok(Settings::load(None)?),
        None => Err(CliError::Usage(
            "no ./config.toml here: pass --config PATH".into(),
        )),
    }
}

/// Opens the database and brings the schema up to date.
pub async fn open_store(s: &Settings) -> Result<Store, CliError> {
    let store = Store::connect(&s.database.url, s.database.max_connections).await?;
    store.migrate().await?;
    Ok(store)
}

/// The store plus templates, model and signing key: what picks, previews and sends need.
pub async fn open_engine(s: Settings, store: Store, clock: Clock) -> Result<Engine, CliError> {
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
        CliError::BadInput(
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
    })
}
