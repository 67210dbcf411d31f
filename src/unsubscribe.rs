//! Signed unsubscribe tokens: `base64url(customer_id "." scope) "." base64url(HMAC-SHA256)`.
//! The signature covers the customer and the scope, so a forged or altered token is
//! refused and changes nothing.

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
        }
    }

    fn mac(&self, payload: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(payload);
        mac
    }

    pub fn token(&self, customer_id: &str, scope: &str) -> String {
        let payload = format!("{customer_id}\n{scope}");
        let sig = self.mac(payload.as_bytes()).finalize().into_bytes();
        format!("{}.{}", B64.encode(payload), B64.encode(sig))
    }

    /// Checks the signature in constant time; None for anything forged or malformed.
    pub fn verify(&self, token: &str) -> Option<Unsubscribe> {
        let (payload, sig) = token.split_once('.')?;
        let payload = B64.decode(payload).ok()?;
        let sig = B64.decode(sig).ok()?;
        self.mac(&payload).verify_slice(&sig).ok()?;
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

    #[test]
    fn tokens_round_trip_and_refuse_tampering() {
        let s = Signer::new("k1");
        let t = s.token("C000001", "all");
        assert_eq!(s.verify(&t).unwrap().customer_id, "C000001");
        assert!(Signer::new("k2").verify(&t).is_none());
        let (p, sig) = t.split_once('.').unwrap();
        let other = B64.encode("C000002\nall");
        assert!(s.verify(&format!("{other}.{sig}")).is_none());
        assert!(
            s.verify(&format!("{p}.{}", B64.encode([0u8; 32])))
                .is_none()
        );
        assert!(s.verify("garbage").is_none());
    }
}
