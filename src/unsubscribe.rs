//! Signed unsubscribe tokens: `base64url(customer_id "." scope) "." base64url(HMAC-SHA256)`.
//! The signature covers the customer and the scope, so a forged or altered token is
//! refused and changes nothing. New tokens are signed with the current key; after a key
//! rotation the previous key is still accepted until a set instant, so links in emails
//! already sent keep working for that long.

use crate::domain::Timestamp;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    pub customer_id: String,
    /// "all" (every campaign) or a campaign name.
    pub scope: String,
}

#[derive(Clone)]
pub struct Signer {
    key: Vec<u8>,
    /// The key before the last rotation and the instant it stops being accepted.
    previous: Option<(Vec<u8>, Timestamp)>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(***)")
    }
}

impl Signer {
    pub fn new(secret: &str) -> Signer {
        Signer {
            key: secret.as_bytes().to_vec(),
            previous: None,
        }
    }

    /// Also accepts tokens signed with `secret` (the key before a rotation) before `until`.
    pub fn with_previous(mut self, secret: &str, until: Timestamp) -> Signer {
        self.previous = Some((secret.as_bytes().to_vec(), until));
        self
    }

    fn mac(key: &[u8], payload: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
        mac.update(payload);
        mac
    }

    /// A token signed with the current key.
    pub fn token(&self, customer_id: &str, scope: &str) -> String {
        let payload = format!("{customer_id}\n{scope}");
        let sig = Self::mac(&self.key, payload.as_bytes())
            .finalize()
            .into_bytes();
        format!("{}.{}", B64.encode(payload), B64.encode(sig))
    }

    /// The keys a signature may be made with at `now`: the current one, then the previous
    /// one before its end.
    fn accepted(&self, now: Timestamp) -> impl Iterator<Item = &[u8]> {
        let previous = self
            .previous
            .as_ref()
            .filter(|(_, until)| now < *until)
            .map(|(key, _)| key.as_slice());
        std::iter::once(self.key.as_slice()).chain(previous)
    }

    /// A signer for another kind of token (tracked links…) whose keys are derived from
    /// these (HMAC of the purpose under each key), so one configured secret and its
    /// rotation serve every kind, and a token of one kind never verifies as another. The
    /// label has no newline, so no unsubscribe signature (over "customer\nscope") is
    /// ever a derived key.
    pub fn derive(&self, purpose: &str) -> Signer {
        let derive = |key: &[u8]| {
            let label = format!("aftercart/{purpose}");
            Self::mac(key, label.as_bytes())
                .finalize()
                .into_bytes()
                .to_vec()
        };
        Signer {
            key: derive(&self.key),
            previous: self
                .previous
                .as_ref()
                .map(|(key, until)| (derive(key), *until)),
        }
    }

    /// HMAC-SHA256 of `payload` under the current key.
    pub fn sign_bytes(&self, payload: &[u8]) -> [u8; 32] {
        Self::mac(&self.key, payload).finalize().into_bytes().into()
    }

    /// Whether `tag` is the first `tag.len()` bytes (at least `min_len`, RFC 2104 §5) of
    /// `payload`'s HMAC under a key accepted at `now`, compared in constant time.
    pub fn verify_bytes(&self, payload: &[u8], tag: &[u8], min_len: usize, now: Timestamp) -> bool {
        tag.len() >= min_len.max(1)
            && self
                .accepted(now)
                .any(|key| Self::mac(key, payload).verify_truncated_left(tag).is_ok())
    }

    /// Checks the signature in constant time against the current key, then (before its
    /// end) the previous one; None for anything forged, malformed or signed with a key
    /// that is no longer accepted at `now`.
    pub fn verify(&self, token: &str, now: Timestamp) -> Option<Unsubscribe> {
        let (payload, sig) = token.split_once('.')?;
        let payload = B64.decode(payload).ok()?;
        let sig = B64.decode(sig).ok()?;
        if !self.verify_bytes(&payload, &sig, 32, now) {
            return None;
        }
        let text = String::from_utf8(payload).ok()?;
        let (customer_id, scope) = text.split_once('\n')?;
        Some(Unsubscribe {
            customer_id: customer_id.to_owned(),
            scope: scope.to_owned(),
        })
    }
}

/// A fresh random secret (hex), for databases where none is configured.
pub fn random_secret() -> String {
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Timestamp = Timestamp(1_700_000_000_000);

    #[test]
    fn tokens_round_trip_and_refuse_tampering() {
        let s = Signer::new("k1");
        let t = s.token("C000001", "all");
        assert_eq!(s.verify(&t, NOW).unwrap().customer_id, "C000001");
        assert!(Signer::new("k2").verify(&t, NOW).is_none());
        let (p, sig) = t.split_once('.').unwrap();
        let other = B64.encode("C000002\nall");
        assert!(s.verify(&format!("{other}.{sig}"), NOW).is_none());
        assert!(
            s.verify(&format!("{p}.{}", B64.encode([0u8; 32])), NOW)
                .is_none()
        );
        assert!(s.verify("garbage", NOW).is_none());
    }

    #[test]
    fn the_previous_key_is_accepted_until_its_end_and_new_tokens_use_the_current_one() {
        let old = Signer::new("old").token("C000001", "all");
        let until = Timestamp(NOW.0 + 1000);
        let rotated = Signer::new("new").with_previous("old", until);
        assert_eq!(rotated.verify(&old, NOW).unwrap().customer_id, "C000001");
        assert!(rotated.verify(&old, Timestamp(until.0 - 1)).is_some());
        assert!(rotated.verify(&old, until).is_none());
        assert!(rotated.verify(&old, Timestamp(until.0 + 1)).is_none());

        let new = rotated.token("C000001", "all");
        assert!(Signer::new("old").verify(&new, NOW).is_none());
        assert!(Signer::new("new").verify(&new, NOW).is_some());
        assert!(rotated.verify(&new, Timestamp(until.0 + 1)).is_some());
        // A signature made with neither key stays refused in the window.
        let (p, _) = old.split_once('.').unwrap();
        let forged = Signer::new("guess").token("C000001", "all");
        let (_, sig) = forged.split_once('.').unwrap();
        assert!(rotated.verify(&format!("{p}.{sig}"), NOW).is_none());
    }

    #[test]
    fn truncated_macs_need_their_minimum_length_and_derived_keys_differ() {
        let s = Signer::new("k1");
        let tag = s.sign_bytes(b"payload");
        assert!(s.verify_bytes(b"payload", &tag, 32, NOW));
        assert!(s.verify_bytes(b"payload", &tag[..16], 16, NOW));
        assert!(!s.verify_bytes(b"payload", &tag[..15], 16, NOW));
        assert!(!s.verify_bytes(b"payload", &[], 0, NOW));
        assert!(!s.verify_bytes(b"other", &tag[..16], 16, NOW));
        let mut longer = tag.to_vec();
        longer.push(0);
        assert!(!s.verify_bytes(b"payload", &longer, 16, NOW));
        // A derived signer signs differently from its parent and from other purposes, and
        // its tokens are no unsubscribe tokens.
        let links = s.derive("tracked-links");
        assert!(!links.verify_bytes(b"payload", &tag, 32, NOW));
        assert_ne!(links.sign_bytes(b"x"), s.derive("other").sign_bytes(b"x"));
        assert!(s.verify(&links.token("C000001", "all"), NOW).is_none());
    }
}
