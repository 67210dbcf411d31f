//! Tracked links and the optional open pixel. A product link in an email points at
//! `{store.base_url}/r/{token}`; the token names the follow-up and the product and is
//! signed, so a forged, altered or truncated one is refused and records nothing.
//!
//! Token: `base64url(kind ‖ LEB128(follow-up id) ‖ product id ‖ tag)` without padding,
//! where `tag` is the first 16 bytes (128 bits, half the output as RFC 2104 §5 allows) of
//! HMAC-SHA256 over everything before it. About 35 characters for "P00001". The keys are
//! derived from the unsubscribe signing key (`Signer::derive`), so its rotation
//! (`unsubscribe.previous_secret` until `previous_secret_until`) keeps old links working.
//!
//! Which request counts ([`classify`]): link scanners fetch every link of a message as it
//! arrives, and people double-click, so only a GET more than [`PREFETCH_WINDOW`] after
//! delivery counts, and once per [`DUPLICATE_WINDOW`] and token.

use crate::domain::{CampaignName, ProductId, Timestamp};
use crate::unsubscribe::Signer;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use std::time::Duration;

/// Signs and checks link and pixel tokens.
#[derive(Debug, Clone)]
pub struct LinkKeys(Signer);

impl LinkKeys {
    /// Keys derived from the unsubscribe signer (current and previous key alike).
    pub fn new(unsubscribe: &Signer) -> LinkKeys {
        LinkKeys(unsubscribe.derive("tracked-links"))
    }
}

const KIND_LINK: u8 = b'l';
const KIND_OPEN: u8 = b'o';
const TAG_LEN: usize = 16;
/// A LEB128 u64 takes at most 10 bytes.
const MAX_VARINT: usize = 10;

fn push_varint(out: &mut Vec<u8>, mut n: u64) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// The number and the bytes after it; None for a truncated or over-long encoding.
fn read_varint(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let mut n: u64 = 0;
    for (i, b) in bytes.iter().enumerate().take(MAX_VARINT) {
        n |= u64::from(b & 0x7f).checked_shl(7 * i as u32)?;
        if b & 0x80 == 0 {
            return Some((n, &bytes[i + 1..]));
        }
    }
    None
}

fn seal(keys: &LinkKeys, mut body: Vec<u8>) -> String {
    let tag = keys.0.sign_bytes(&body);
    body.extend_from_slice(&tag[..TAG_LEN]);
    B64.encode(body)
}

/// The signed body of a token of `kind` (after the kind byte), if its tag is valid.
fn open(token: &str, kind: u8, keys: &LinkKeys, now: Timestamp) -> Option<Vec<u8>> {
    // Longer than any token we make (255-character ids, 4 bytes each at most).
    if token.len() > 2048 {
        return None;
    }
    let bytes = B64.decode(token).ok()?;
    if bytes.len() < 2 + TAG_LEN || bytes[0] != kind {
        return None;
    }
    let (body, tag) = bytes.split_at(bytes.len() - TAG_LEN);
    if !keys.0.verify_bytes(body, tag, TAG_LEN, now) {
        return None;
    }
    Some(body[1..].to_vec())
}

/// A link token for a product in a follow-up.
pub fn sign(followup_id: i64, product: &ProductId, keys: &LinkKeys) -> String {
    let mut body = vec![KIND_LINK];
    push_varint(&mut body, followup_id as u64);
    body.extend_from_slice(product.as_str().as_bytes());
    seal(keys, body)
}

/// The follow-up and product a link token names; None for anything forged, altered,
/// truncated, of another kind or signed with a key no longer accepted at `now`.
pub fn verify(token: &str, keys: &LinkKeys, now: Timestamp) -> Option<(i64, ProductId)> {
    let body = open(token, KIND_LINK, keys, now)?;
    let (id, rest) = read_varint(&body)?;
    let product = ProductId::parse(std::str::from_utf8(rest).ok()?).ok()?;
    Some((id as i64, product))
}

/// A token for the open pixel of a follow-up (only used when `attribution.open_pixel`
/// is on).
pub fn sign_open(followup_id: i64, keys: &LinkKeys) -> String {
    let mut body = vec![KIND_OPEN];
    push_varint(&mut body, followup_id as u64);
    seal(keys, body)
}

/// The follow-up an open-pixel token names; None like [`verify`]. A link token is not
/// an open token and the other way round.
pub fn verify_open(token: &str, keys: &LinkKeys, now: Timestamp) -> Option<i64> {
    let body = open(token, KIND_OPEN, keys, now)?;
    match read_varint(&body)? {
        (id, []) => Some(id as i64),
        _ => None,
    }
}

/// The link an email carries: `{store.base_url}/r/{token}`.
pub fn link_url(base_url: &str, token: &str) -> String {
    format!("{}/r/{token}", base_url.trim_end_matches('/'))
}

/// What the tracked link adds to the product URL.
#[derive(Debug, Clone, Copy)]
pub struct Utm<'a> {
    pub campaign: &'a CampaignName,
    pub product: &'a ProductId,
}

/// Where `/r/{token}` redirects: the product URL with
/// `utm_source=aftercart&utm_medium=email&utm_campaign=NAME&utm_content=PRODUCT`.
/// Other query parameters and the fragment stay as they are; every `utm_*` parameter
/// already there is dropped, because a catalog URL copied from an ad feed would
/// otherwise credit this visit to that ad (ours are appended last). None when the
/// product URL is not an absolute http(s) URL (the caller falls back to the store).
pub fn redirect_location(product_url: &str, utm: Utm<'_>) -> Option<String> {
    let mut url = url::Url::parse(product_url).ok()?;
    if !matches!(url.scheme(), "http" | "https") {
        return None;
    }
    // The kept parameters stay byte for byte as the catalog wrote them.
    let raw = url.query().unwrap_or("").to_owned();
    let mut query: Vec<String> = raw
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with("utm_"))
        .map(str::to_owned)
        .collect();
    query.push(
        url::form_urlencoded::Serializer::new(String::new())
            .append_pair("utm_source", "aftercart")
            .append_pair("utm_medium", "email")
            .append_pair("utm_campaign", utm.campaign.as_str())
            .append_pair("utm_content", utm.product.as_str())
            .finish(),
    );
    url.set_query(Some(&query.join("&")));
    Some(url.into())
}

/// Scanners fetch links as the message arrives; a person takes longer than this.
pub const PREFETCH_WINDOW: Duration = Duration::from_secs(2);
/// A second GET of the same token this soon after the last counted one is one visit.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(60);

/// The HTTP method of a hit on a link or the pixel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
}

/// What was hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Link,
    Pixel,
}

/// How a hit is recorded. Only `click` (and `open`) count in the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HitKind {
    Click,
    Open,
    /// A HEAD request, or a GET within [`PREFETCH_WINDOW`] of delivery (or before the
    /// delivery is recorded): a link scanner, not a person.
    Prefetch,
    /// A GET within [`DUPLICATE_WINDOW`] of the token's last counted hit.
    Duplicate,
}

impl HitKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Click => "click",
            Self::Open => "open",
            Self::Prefetch => "prefetch",
            Self::Duplicate => "duplicate",
        }
    }

    pub fn parse(raw: &str) -> Result<HitKind, String> {
        [Self::Click, Self::Open, Self::Prefetch, Self::Duplicate]
            .into_iter()
            .find(|k| k.as_str() == raw)
            .ok_or_else(|| format!("{raw:?} is not one of click|open|prefetch|duplicate"))
    }

    /// Whether the report counts it.
    pub fn counts(self) -> bool {
        matches!(self, Self::Click | Self::Open)
    }
}

/// Classifies a hit at `at` on a token of a follow-up delivered at `delivered_at`
/// (its `sent_at`; None while the send is not recorded yet), given the token's last
/// counted hit (`click`/`open`, never a prefetch or duplicate: a scanner's fetch must
/// not swallow the person's click that follows it).
///
/// Store query for `last_counted`: `SELECT MAX(at) FROM clicks WHERE followup_id = $1
/// AND product_id = $2 AND kind = 'click'`.
pub fn classify(
    target: Target,
    method: Method,
    at: Timestamp,
    delivered_at: Option<Timestamp>,
    last_counted: Option<Timestamp>,
) -> HitKind {
    let within = |from: Timestamp, d: Duration| at < from.plus(d);
    if method == Method::Head || delivered_at.is_none_or(|d| within(d, PREFETCH_WINDOW)) {
        return HitKind::Prefetch;
    }
    if last_counted.is_some_and(|l| l <= at && within(l, DUPLICATE_WINDOW)) {
        return HitKind::Duplicate;
    }
    match target {
        Target::Link => HitKind::Click,
        Target::Pixel => HitKind::Open,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Timestamp = Timestamp(1_750_000_000_000);

    fn keys(secret: &str) -> LinkKeys {
        LinkKeys::new(&Signer::new(secret))
    }

    fn p(id: &str) -> ProductId {
        ProductId::parse(id).unwrap()
    }

    #[test]
    fn link_tokens_round_trip_and_are_short() {
        let k = keys("k1");
        for id in [0, 1, 127, 128, 300, 1 << 40, i64::MAX] {
            let t = sign(id, &p("P00001"), &k);
            assert_eq!(verify(&t, &k, NOW), Some((id, p("P00001"))), "{id}");
            assert!(
                t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "{t}"
            );
        }
        // 1 kind + 3 id + 6 product + 16 tag bytes = 26 bytes → 35 characters.
        assert_eq!(sign(123_456, &p("P00001"), &k).len(), 35);
        let unicode = p("Kaffeemühle-Ø");
        assert_eq!(verify(&sign(9, &unicode, &k), &k, NOW), Some((9, unicode)));
    }

    #[test]
    fn forged_altered_and_truncated_tokens_are_refused() {
        let k = keys("k1");
        let t = sign(42, &p("P00001"), &k);
        assert!(verify(&t, &keys("k2"), NOW).is_none(), "another key");
        let bytes = B64.decode(&t).unwrap();
        // Every single-bit change anywhere is refused.
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                assert!(
                    verify(&B64.encode(&b), &k, NOW).is_none(),
                    "byte {i} bit {bit}"
                );
            }
        }
        // Another product with the original tag.
        let mut other = vec![KIND_LINK];
        push_varint(&mut other, 42);
        other.extend_from_slice(b"P00002");
        other.extend_from_slice(&bytes[bytes.len() - TAG_LEN..]);
        assert!(verify(&B64.encode(&other), &k, NOW).is_none());
        // Cut anywhere, as a mail client wrapping a long line might.
        for n in 0..t.len() {
            assert!(verify(&t[..n], &k, NOW).is_none(), "{n}");
        }
        // A shorter tag that is a prefix of the right one.
        assert!(verify(&B64.encode(&bytes[..bytes.len() - 1]), &k, NOW).is_none());
        for junk in ["", "garbage", "!!!!", "a.b", &"A".repeat(5000)] {
            assert!(verify(junk, &k, NOW).is_none(), "{junk}");
        }
    }

    #[test]
    fn link_and_open_tokens_are_not_interchangeable_nor_unsubscribe_tokens() {
        let signer = Signer::new("k1");
        let k = LinkKeys::new(&signer);
        let open_t = sign_open(42, &k);
        assert_eq!(verify_open(&open_t, &k, NOW), Some(42));
        assert!(verify(&open_t, &k, NOW).is_none());
        assert!(verify_open(&sign(42, &p("P1"), &k), &k, NOW).is_none());
        // A link token signed with the unsubscribe key itself (not the derived one) fails.
        let mut body = vec![KIND_LINK];
        push_varint(&mut body, 42);
        body.extend_from_slice(b"P1");
        let tag = signer.sign_bytes(&body);
        body.extend_from_slice(&tag[..TAG_LEN]);
        assert!(verify(&B64.encode(&body), &k, NOW).is_none());
    }

    #[test]
    fn the_previous_key_is_accepted_until_its_end() {
        let old = sign(7, &p("P00001"), &keys("old"));
        let until = Timestamp(NOW.0 + 1000);
        let rotated = LinkKeys::new(&Signer::new("new").with_previous("old", until));
        assert_eq!(verify(&old, &rotated, NOW), Some((7, p("P00001"))));
        assert!(verify(&old, &rotated, until).is_none());
        let new = sign(7, &p("P00001"), &rotated);
        assert!(verify(&new, &keys("old"), NOW).is_none());
        assert!(verify(&new, &rotated, Timestamp(until.0 + 1)).is_some());
        let open_old = sign_open(7, &keys("old"));
        assert_eq!(verify_open(&open_old, &rotated, NOW), Some(7));
        assert!(verify_open(&open_old, &rotated, until).is_none());
    }

    #[test]
    fn link_urls_use_the_store_base_url() {
        assert_eq!(
            link_url("https://shop.example/", "abc"),
            "https://shop.example/r/abc"
        );
        assert_eq!(
            link_url("https://shop.example/mail", "abc"),
            "https://shop.example/mail/r/abc"
        );
    }

    #[test]
    fn redirects_add_utm_tags_keep_other_parameters_and_fragments_and_replace_old_utm() {
        let c = CampaignName::parse("complete_your_setup").unwrap();
        let prod = p("P00001");
        let utm = Utm {
            campaign: &c,
            product: &prod,
        };
        let tags = "utm_source=aftercart&utm_medium=email&utm_campaign=complete_your_setup&utm_content=P00001";
        for (from, to) in [
            (
                "https://shop.example/p/1".to_owned(),
                format!("https://shop.example/p/1?{tags}"),
            ),
            (
                "https://shop.example/p/1?variant=3&color=red#reviews".to_owned(),
                format!("https://shop.example/p/1?variant=3&color=red&{tags}#reviews"),
            ),
            (
                "https://shop.example/p/1?utm_source=google&utm_term=x&size=m".to_owned(),
                format!("https://shop.example/p/1?size=m&{tags}"),
            ),
            (
                "http://shop.example/p?q=a%20b&flag&&utm_id=9".to_owned(),
                format!("http://shop.example/p?q=a%20b&flag&{tags}"),
            ),
        ] {
            assert_eq!(
                redirect_location(&from, utm).as_deref(),
                Some(&*to),
                "{from}"
            );
        }
        // Names and ids are encoded, never spliced in raw.
        let odd = p("A&B=C#D");
        let got = redirect_location(
            "https://shop.example/p",
            Utm {
                campaign: &c,
                product: &odd,
            },
        )
        .unwrap();
        assert!(got.ends_with("utm_content=A%26B%3DC%23D"), "{got}");
        for bad in ["/p/1", "javascript:alert(1)", "ftp://shop.example/p", ""] {
            assert!(redirect_location(bad, utm).is_none(), "{bad}");
        }
    }

    #[test]
    fn clicks_are_told_from_prefetches_and_duplicates() {
        let sent = Timestamp(NOW.0);
        let at = |ms: i64| Timestamp(NOW.0 + ms);
        use HitKind::*;
        use Method::*;
        let c = |m, t, last| classify(Target::Link, m, t, Some(sent), last);
        assert_eq!(
            c(Head, at(3_600_000), None),
            Prefetch,
            "HEAD is never a click"
        );
        assert_eq!(c(Get, at(0), None), Prefetch);
        assert_eq!(c(Get, at(1_999), None), Prefetch);
        assert_eq!(
            c(Get, at(-5_000), None),
            Prefetch,
            "before the recorded delivery"
        );
        assert_eq!(c(Get, at(2_000), None), Click, "2 s after delivery");
        assert_eq!(
            classify(Target::Link, Get, at(60_000), None, None),
            Prefetch,
            "delivery not recorded yet"
        );
        // Once per minute per token, counted from the last counted click.
        let first = at(10_000);
        assert_eq!(c(Get, at(10_000), Some(first)), Duplicate);
        assert_eq!(c(Get, at(69_999), Some(first)), Duplicate);
        assert_eq!(c(Get, at(70_000), Some(first)), Click);
        // A scanner's fetch before the person's click is not the last counted hit, so the
        // click a second later counts (the caller passes only `click` hits).
        assert_eq!(c(Get, at(3_000), None), Click);
        // The pixel: same rules, counted as an open.
        assert_eq!(
            classify(Target::Pixel, Get, at(5_000), Some(sent), None),
            Open
        );
        assert_eq!(
            classify(Target::Pixel, Head, at(5_000), Some(sent), None),
            Prefetch
        );
        for k in [Click, Open, Prefetch, Duplicate] {
            assert_eq!(HitKind::parse(k.as_str()), Ok(k));
        }
        assert!(Click.counts() && Open.counts() && !Prefetch.counts() && !Duplicate.counts());
    }
}
