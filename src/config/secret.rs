//! A value that must never be printed: passwords, tokens, signing keys.

/// `Debug` shows `Secret(***)`, there is no `Display`, and the value is reached only
/// through [`Secret::expose`], so a secret cannot end up in a log line or an error by
/// accident (`{:?}` of `Settings` included). No `PartialEq` either: compare with a
/// constant-time function (`subtle`) where it matters.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value itself, for the one place that needs it (a MAC key, a comparison).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}
