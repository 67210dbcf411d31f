//! aftercart: post-purchase follow-up emails with recommendations that help.
//!
//! Data flows one way: input (`cli`, `http`, `import`) → `store` → `jobs` → `recommend`
//! → `render` → `mail`.

pub mod domain;
pub mod recommend;
