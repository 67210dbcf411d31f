//! Holdout groups: a stable share of each campaign's customers gets no email and serves
//! as the control group the report compares recipients with. Membership is a pure
//! function of (customer id, campaign name), the same on every run, machine and
//! database, so no assignment needs storing and a customer stays on one side.

use crate::domain::{CampaignName, CustomerId, HoldoutShare};
use sha2::{Digest, Sha256};

/// Where the customer falls in the campaign's range of 2^64 buckets: the first 8 bytes
/// (big-endian) of SHA-256 of a fixed label, the customer id and the campaign name,
/// NUL-separated (ids hold no control characters, so no two pairs collide). Changing
/// this moves customers between groups: it is part of the stored data's meaning.
pub fn bucket(customer: &CustomerId, campaign: &CampaignName) -> u64 {
    let mut h = Sha256::new();
    h.update(b"aftercart holdout v1\0");
    h.update(customer.as_str().as_bytes());
    h.update(b"\0");
    h.update(campaign.as_str().as_bytes());
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// Whether the customer is in the campaign's holdout: bucket / 2^64 < share. The
/// threshold is share × 2^64, exact in binary floating point, so the cut is the same
/// everywhere; 0 holds out nobody and 1 everybody.
pub fn in_holdout(customer: &CustomerId, campaign: &CampaignName, share: HoldoutShare) -> bool {
    const TWO_64: f64 = 18_446_744_073_709_551_616.0;
    let threshold = (share.value() * TWO_64) as u128;
    u128::from(bucket(customer, campaign)) < threshold
}

#[cfg(test)]
mod tests {
    use super::*;

    fn customers(n: usize) -> Vec<CustomerId> {
        (1..=n)
            .map(|i| CustomerId::parse(&format!("C{i:06}")).unwrap())
            .collect()
    }

    fn campaign(name: &str) -> CampaignName {
        CampaignName::parse(name).unwrap()
    }

    fn held(cs: &[CustomerId], c: &CampaignName, share: f64) -> Vec<bool> {
        let share = HoldoutShare::parse(share).unwrap();
        cs.iter().map(|x| in_holdout(x, c, share)).collect()
    }

    #[test]
    fn the_share_held_out_is_within_two_points_over_5000_customers() {
        let cs = customers(5000);
        for name in ["complete_your_setup", "upgrade", "enhance"] {
            for share in [0.05, 0.1, 0.25, 0.5, 0.9] {
                let n = held(&cs, &campaign(name), share)
                    .into_iter()
                    .filter(|h| *h)
                    .count();
                let got = n as f64 / 5000.0;
                assert!((got - share).abs() <= 0.02, "{name} {share}: {got}");
            }
        }
    }

    #[test]
    fn membership_is_stable_across_runs_and_platforms() {
        let cs = customers(5000);
        let c = campaign("complete_your_setup");
        assert_eq!(held(&cs, &c, 0.1), held(&cs, &c, 0.1));
        // Pinned values (computed with Python's hashlib: sha256(b"aftercart holdout
        // v1\0C000001\0complete_your_setup").digest()[:8]): the algorithm cannot drift.
        assert_eq!(bucket(&cs[0], &c), 0x0b84_7535_1d1e_817a);
        assert_eq!(bucket(&cs[1], &campaign("upgrade")), 0x9069_fc98_b1d1_1ecb);
    }

    #[test]
    fn zero_holds_out_nobody_and_one_everybody() {
        let cs = customers(5000);
        let c = campaign("upgrade");
        assert!(held(&cs, &c, 0.0).iter().all(|h| !h));
        assert!(held(&cs, &c, 1.0).iter().all(|h| *h));
        assert!(HoldoutShare::OFF.is_off() && !HoldoutShare::DEFAULT.is_off());
    }

    #[test]
    fn a_larger_share_keeps_everyone_already_held_out() {
        let cs = customers(2000);
        let c = campaign("upgrade");
        let small = held(&cs, &c, 0.1);
        let large = held(&cs, &c, 0.3);
        assert!(small.iter().zip(&large).all(|(s, l)| !s || *l));
    }

    #[test]
    fn campaigns_hold_out_different_customers() {
        let cs = customers(5000);
        let a = held(&cs, &campaign("complete_your_setup"), 0.1);
        let b = held(&cs, &campaign("upgrade"), 0.1);
        let both = a.iter().zip(&b).filter(|(x, y)| **x && **y).count();
        // Independent draws overlap in about 0.1 × 0.1 of the customers (50).
        assert!(both < 150, "{both}");
    }

    #[test]
    fn shares_outside_zero_to_one_are_refused() {
        for bad in [-0.1, 1.01, f64::NAN, f64::INFINITY] {
            assert!(
                HoldoutShare::parse(bad)
                    .unwrap_err()
                    .contains("from 0 to 1"),
                "{bad}"
            );
        }
        assert_eq!(HoldoutShare::parse(1.0).unwrap().value(), 1.0);
    }
}
