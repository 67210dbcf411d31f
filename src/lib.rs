//! aftercart: post-purchase follow-up emails with recommendations that help.
//!
//! Data flows one way: input (`cli`, `http`, `import`) → `store` → `jobs` → `recommend`
//! → `render` → `mail`.

pub mod campaign;
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
