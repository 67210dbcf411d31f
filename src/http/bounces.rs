//! `POST /webhooks/bounces/{provider}`: bounces and spam complaints that the sending
//! provider reports after it accepted a message with a 250. A hard bounce suppresses
//! the address (`hard_bounce`), a complaint too (`complaint`), a soft bounce is counted;
//! the follow-up whose Message-ID the report names records the outcome.
//!
//! Authentication, per provider: Postmark by HTTP Basic auth (password
//! `bounces.webhook_secret`), Mailgun by its signature (HMAC-SHA256 of timestamp and
//! token with `bounces.mailgun_signing_key`, not older than `bounces.max_age`), SendGrid
//! by its signed event webhook (ECDSA P-256 over timestamp + body, key
//! `bounces.sendgrid_public_key`), Amazon SES by SNS's message signature (RSA, key of the
//! certificate `bounces.ses_certificate`; without one refused unless
//! `bounces.ses_allow_unverified`). Missing or wrong → 401.

use super::{ApiError, AppState};
use crate::domain::EmailAddress;
use crate::store::BounceKind;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type Reply = Result<(StatusCode, Json<Value>), ApiError>;

fn unauthorized(why: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, why)
}

pub(crate) async fn bounce(
    State(s): State<AppState>,
    Path(provider): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Reply {
    match provider.as_str() {
        "postmark" => postmark(&s, &headers, &body).await,
        "mailgun" => mailgun(&s, &body).await,
        "sendgrid" => sendgrid(&s, &headers, &body).await,
        "ses" => ses(&s, &body).await,
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no bounce provider named {provider:?} (ses, postmark, sendgrid, mailgun)"),
        )),
    }
}

fn parse(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("invalid JSON: {e}")))
}

fn unprocessable(field: &str, why: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, format!("{field}: {why}"))
        .with("field", field)
        .with("why", why.to_string())
}

/// Stores one event, once per `delivery` id (a repeat answers `{"duplicate": true}`).
async fn apply(
    s: &AppState,
    provider: &str,
    delivery: Option<String>,
    kind: BounceKind,
    email: &str,
    message_id: Option<&str>,
) -> Reply {
    let store = &s.engine.store;
    let now = s.engine.clock.now();
    let email = EmailAddress::parse(email).map_err(|why| unprocessable("email", why))?;
    if let Some(id) = &delivery
        && !store
            .first_delivery(id, now)
            .await
            .map_err(ApiError::internal)?
    {
        return Ok((StatusCode::OK, Json(json!({ "duplicate": true }))));
    }
    let out = store
        .record_bounce(provider, kind, &email.to_string(), message_id, now)
        .await;
    match out {
        Ok(out) => {
            tracing::info!(
                provider,
                kind = out.kind,
                suppressed = out.suppressed,
                "bounce webhook"
            );
            Ok((StatusCode::OK, Json(json!(out))))
        }
        Err(e) => {
            if let Some(id) = &delivery {
                let _ = store.forget_delivery(id).await;
            }
            Err(ApiError::internal(e))
        }
    }
}

/// Postmark: `Authorization: Basic base64(user:password)`, the password being
/// `bounces.webhook_secret` (any user name). Bounce and SpamComplaint records; other
/// record types (Delivery, Open…) are ignored with 200.
async fn postmark(s: &AppState, headers: &HeaderMap, body: &[u8]) -> Reply {
    let secret = s
        .engine
        .settings
        .bounces
        .webhook_secret
        .as_ref()
        .map(|x| x.expose().to_owned())
        .filter(|x| !x.is_empty());
    let password = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Basic ")
                .or_else(|| v.strip_prefix("basic "))
        })
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .and_then(|raw| String::from_utf8(raw).ok())
        .and_then(|up| up.split_once(':').map(|(_, p)| p.to_owned()));
    let ok = match (&secret, &password) {
        (Some(secret), Some(given)) => bool::from(secret.as_bytes().ct_eq(given.as_bytes())),
        _ => false,
    };
    if !ok {
        return Err(unauthorized("missing or wrong HTTP Basic credentials"));
    }
    let v = parse(body)?;
    let record = v.get("RecordType").and_then(Value::as_str).unwrap_or("");
    let kind = match record {
        "SpamComplaint" => BounceKind::Complaint,
        "Bounce" => match v.get("Type").and_then(Value::as_str) {
            Some("HardBounce" | "BadEmailAddress") => BounceKind::Hard,
            Some("SpamComplaint") => BounceKind::Complaint,
            _ => BounceKind::Soft,
        },
        other => return Ok((StatusCode::OK, Json(json!({ "ignored": other })))),
    };
    let email = v
        .get("Email")
        .and_then(Value::as_str)
        .ok_or_else(|| unprocessable("Email", "missing"))?;
    let delivery = match v.get("ID") {
        Some(Value::Number(n)) => Some(format!("postmark:{record}:{n}")),
        Some(Value::String(id)) if !id.is_empty() => Some(format!("postmark:{record}:{id}")),
        _ => None,
    };
    // Postmark's MessageID is its own id, not our Message-ID header: no follow-up named.
    apply(s, "postmark", delivery, kind, email, None).await
}

/// Mailgun (webhooks API): `{"signature": {"timestamp", "token", "signature"},
/// "event-data": {...}}`; the signature is hex(HMAC-SHA256(signing key, timestamp +
/// token)), its timestamp within `bounces.max_age` of now, and each token is accepted
/// once. Events `failed` (severity `permanent` → hard, else soft) and `complained`.
async fn mailgun(s: &AppState, body: &[u8]) -> Reply {
    let b = &s.engine.settings.bounces;
    let Some(key) = b
        .mailgun_signing_key
        .as_ref()
        .filter(|k| !k.expose().is_empty())
    else {
        return Err(unauthorized(
            "bounces.mailgun_signing_key is not configured",
        ));
    };
    let v: Value = serde_json::from_slice(body)
        .map_err(|_| unauthorized("missing or wrong Mailgun signature"))?;
    let sig = |k: &str| {
        v.pointer(&format!("/signature/{k}"))
            .and_then(Value::as_str)
    };
    let (Some(timestamp), Some(token), Some(signature)) =
        (sig("timestamp"), sig("token"), sig("signature"))
    else {
        return Err(unauthorized("missing or wrong Mailgun signature"));
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key.expose().as_bytes()) else {
        return Err(unauthorized("missing or wrong Mailgun signature"));
    };
    mac.update(timestamp.as_bytes());
    mac.update(token.as_bytes());
    let good = hex::decode(signature).is_ok_and(|raw| mac.verify_slice(&raw).is_ok());
    if !good {
        return Err(unauthorized("missing or wrong Mailgun signature"));
    }
    let now_s = s.engine.clock.now().0 / 1000;
    let fresh = timestamp
        .parse::<i64>()
        .is_ok_and(|t| (now_s - t).unsigned_abs() <= b.max_age.as_secs());
    if !fresh {
        return Err(unauthorized(&format!(
            "Mailgun signature timestamp is not within bounces.max_age ({}s) of now",
            b.max_age.as_secs()
        )));
    }
    let e = v
        .get("event-data")
        .filter(|e| e.is_object())
        .ok_or_else(|| unprocessable("event-data", "missing"))?;
    let event = e.get("event").and_then(Value::as_str).unwrap_or("");
    let kind = match event {
        "complained" => BounceKind::Complaint,
        "failed" if e.get("severity").and_then(Value::as_str) == Some("permanent") => {
            BounceKind::Hard
        }
        "failed" => BounceKind::Soft,
        other => return Ok((StatusCode::OK, Json(json!({ "ignored": other })))),
    };
    let email = e
        .get("recipient")
        .and_then(Value::as_str)
        .ok_or_else(|| unprocessable("event-data.recipient", "missing"))?;
    let message_id = e
        .pointer("/message/headers/message-id")
        .and_then(Value::as_str);
    apply(
        s,
        "mailgun",
        Some(format!("mailgun:{token}")),
        kind,
        email,
        message_id,
    )
    .await
}

/// SendGrid's signed event webhook: `X-Twilio-Email-Event-Webhook-Signature` (base64 DER
/// ECDSA signature) over `X-Twilio-Email-Event-Webhook-Timestamp` + the raw body, with the
/// P-256 key `bounces.sendgrid_public_key`; the timestamp within `bounces.max_age`. The
/// body is an array of events: `bounce` (`type: "blocked"` → soft, else hard),
/// `deferred` → soft, `spamreport` → complaint; others ignored. `smtp-id` is our
/// Message-ID; each `sg_event_id` is accepted once.
async fn sendgrid(s: &AppState, headers: &HeaderMap, body: &[u8]) -> Reply {
    use p256::ecdsa::signature::Verifier as _;
    let b = &s.engine.settings.bounces;
    let refused = || unauthorized("missing or wrong SendGrid signature");
    let Some(key) = b.sendgrid_public_key.as_deref() else {
        return Err(unauthorized(
            "bounces.sendgrid_public_key is not configured",
        ));
    };
    let key = crate::config::sendgrid_key(key).map_err(|_| refused())?;
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    let (Some(sig), Some(ts)) = (
        header("x-twilio-email-event-webhook-signature"),
        header("x-twilio-email-event-webhook-timestamp"),
    ) else {
        return Err(refused());
    };
    let sig = base64::engine::general_purpose::STANDARD
        .decode(sig.trim())
        .ok()
        .and_then(|der| p256::ecdsa::Signature::from_der(&der).ok())
        .ok_or_else(refused)?;
    let mut signed = ts.as_bytes().to_vec();
    signed.extend_from_slice(body);
    key.verify(&signed, &sig).map_err(|_| refused())?;
    let now_s = s.engine.clock.now().0 / 1000;
    if !ts
        .parse::<i64>()
        .is_ok_and(|t| (now_s - t).unsigned_abs() <= b.max_age.as_secs())
    {
        return Err(unauthorized(&format!(
            "SendGrid signature timestamp is not within bounces.max_age ({}s) of now",
            b.max_age.as_secs()
        )));
    }
    let v = parse(body)?;
    let Value::Array(events) = v else {
        return Err(unprocessable("(body)", "expected an array of events"));
    };
    let mut out = Vec::with_capacity(events.len());
    for (i, e) in events.iter().enumerate() {
        let event = e.get("event").and_then(Value::as_str).unwrap_or("");
        let kind = match event {
            "spamreport" => BounceKind::Complaint,
            "deferred" => BounceKind::Soft,
            "bounce" if e.get("type").and_then(Value::as_str) == Some("blocked") => {
                BounceKind::Soft
            }
            "bounce" => BounceKind::Hard,
            other => {
                out.push(json!({ "ignored": other }));
                continue;
            }
        };
        let email = e
            .get("email")
            .and_then(Value::as_str)
            .ok_or_else(|| unprocessable(&format!("[{i}].email"), "missing"))?;
        let delivery = e
            .get("sg_event_id")
            .and_then(Value::as_str)
            .map(|id| format!("sendgrid:{id}"));
        let message_id = e.get("smtp-id").and_then(Value::as_str);
        let (_, Json(one)) = apply(s, "sendgrid", delivery, kind, email, message_id).await?;
        out.push(one);
    }
    Ok((StatusCode::OK, Json(json!({ "events": out }))))
}

/// Amazon SES through SNS. Each message's signature is verified with the key of the
/// configured SNS signing certificate (`bounces.ses_certificate`); without one SES is
/// refused (401) unless `bounces.ses_allow_unverified = true`.
/// `SubscriptionConfirmation`: the `SubscribeURL` is logged (WARN) for the operator to
/// open, once, and answered 200. `Notification`: `Message` is SES's JSON; `Bounce` with
/// `bounceType: "Permanent"` → hard for each `bouncedRecipients[].emailAddress`, other
/// bounce types → soft; `Complaint` → complaint for each `complainedRecipients[]`;
/// `mail.commonHeaders.messageId` names the follow-up; each SNS `MessageId` once.
async fn ses(s: &AppState, body: &[u8]) -> Reply {
    let b = &s.engine.settings.bounces;
    let v = match (&b.ses_key, b.ses_allow_unverified) {
        (Some(key), _) => {
            let v: Value = serde_json::from_slice(body)
                .map_err(|_| unauthorized("missing or wrong SNS signature"))?;
            if !sns_signature_ok(&v, key) {
                return Err(unauthorized("missing or wrong SNS signature"));
            }
            v
        }
        (None, true) => parse(body)?,
        (None, false) => {
            return Err(unauthorized(
                "no bounces.ses_certificate to verify SNS signatures (and bounces.ses_allow_unverified is off)",
            ));
        }
    };
    let field = |k: &str| v.get(k).and_then(Value::as_str);
    match field("Type") {
        Some("SubscriptionConfirmation") => {
            let url =
                field("SubscribeURL").ok_or_else(|| unprocessable("SubscribeURL", "missing"))?;
            tracing::warn!(
                topic = field("TopicArn").unwrap_or(""),
                subscribe_url = url,
                "SNS subscription to confirm: open the SubscribeURL once"
            );
            return Ok((
                StatusCode::OK,
                Json(json!({"subscription": "pending", "subscribe_url": url})),
            ));
        }
        Some("Notification") => {}
        other => return Ok((StatusCode::OK, Json(json!({ "ignored": other })))),
    }
    let sns_id = field("MessageId").map(str::to_owned);
    let message: Value = field("Message")
        .and_then(|m| serde_json::from_str(m).ok())
        .ok_or_else(|| unprocessable("Message", "missing or not SES's JSON"))?;
    let what = message
        .get("notificationType")
        .or_else(|| message.get("eventType"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let (kind, list) = match what {
        "Bounce" => {
            let hard = message
                .pointer("/bounce/bounceType")
                .and_then(Value::as_str)
                == Some("Permanent");
            let kind = if hard {
                BounceKind::Hard
            } else {
                BounceKind::Soft
            };
            (kind, "/bounce/bouncedRecipients")
        }
        "Complaint" => (BounceKind::Complaint, "/complaint/complainedRecipients"),
        other => return Ok((StatusCode::OK, Json(json!({ "ignored": other })))),
    };
    let message_id = message
        .pointer("/mail/commonHeaders/messageId")
        .and_then(Value::as_str);
    let recipients: Vec<&str> = message
        .pointer(list)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|r| r.get("emailAddress").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default();
    if recipients.is_empty() {
        return Err(unprocessable(
            &format!("Message{}", list.replace('/', ".")),
            "no recipients",
        ));
    }
    let mut out = Vec::with_capacity(recipients.len());
    for (i, email) in recipients.iter().enumerate() {
        let delivery = sns_id.as_ref().map(|id| format!("ses:{id}:{i}"));
        let (_, Json(one)) = apply(s, "ses", delivery, kind, email, message_id).await?;
        out.push(one);
    }
    Ok((StatusCode::OK, Json(json!({ "recipients": out }))))
}

/// SNS's signature: base64 RSA PKCS#1 v1.5 over the message's canonical string (SHA-1 for
/// `SignatureVersion` "1", SHA-256 for "2").
fn sns_signature_ok(v: &Value, key: &rsa::RsaPublicKey) -> bool {
    use sha2::Digest as _;
    let field = |k: &str| v.get(k).and_then(Value::as_str);
    let keys: &[&str] = match field("Type") {
        Some("Notification") => &[
            "Message",
            "MessageId",
            "Subject",
            "Timestamp",
            "TopicArn",
            "Type",
        ],
        Some("SubscriptionConfirmation" | "UnsubscribeConfirmation") => &[
            "Message",
            "MessageId",
            "SubscribeURL",
            "Timestamp",
            "Token",
            "TopicArn",
            "Type",
        ],
        _ => return false,
    };
    let mut canonical = String::new();
    for k in keys {
        match field(k) {
            Some(value) => {
                canonical.push_str(k);
                canonical.push('\n');
                canonical.push_str(value);
                canonical.push('\n');
            }
            // Only a notification's Subject is optional.
            None if *k == "Subject" => {}
            None => return false,
        }
    }
    let Some(sig) =
        field("Signature").and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
    else {
        return false;
    };
    match field("SignatureVersion") {
        Some("1") => key
            .verify(
                rsa::Pkcs1v15Sign::new::<sha1::Sha1>(),
                &sha1::Sha1::digest(canonical.as_bytes()),
                &sig,
            )
            .is_ok(),
        Some("2") => key
            .verify(
                rsa::Pkcs1v15Sign::new::<sha2::Sha256>(),
                &sha2::Sha256::digest(canonical.as_bytes()),
                &sig,
            )
            .is_ok(),
        _ => false,
    }
}
