//! Test support for aftercart, outside the shipped crate: a dev-dependency of
//! `aftercart` only, so release builds never compile it.
//!
//! - [`sink`]: a real SMTP server over TCP that records what it accepts and injects
//!   faults (4xx/5xx replies, dropped and stalled connections, relay outages).

pub mod sink;
