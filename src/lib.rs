//! aftercart: post-purchase follow-up emails with recommendations that help.
//!
//! Data flows one way: input (`cli`, `http`, `import`) → `store` → `jobs` → `recommend`
//! → `render` → `mail`. `app` puts a process together (settings, store, engine, mailer,
//! signals, worker and server); `cli` is the face that calls it. The allowed
//! dependencies between these modules are written down (and checked) in
//! `tests/architecture.rs`.

pub mod app;
pub mod cli;
pub mod config;
pub mod domain;
pub(crate) mod files;
pub mod http;
pub mod import;
pub mod jobs;
pub mod mail;
pub mod measure;
pub mod recommend;
pub mod render;
pub mod store;
pub mod unsubscribe;
