//! What an SMTP reply means, judged by the step it answered and its codes.
//!
//! The same "550" means "no such mailbox" after RCPT and "our sender is refused" after
//! MAIL FROM, so the step decides as much as the code. A hard bounce (the address gets
//! suppressed) only comes from a RCPT or end-of-DATA reply whose enhanced status code is
//! 5.1.x about the recipient; a refusal of the session, of our sender or of relaying is a
//! fact about our relay set-up, never about the recipient.

/// The step of a mail transaction a reply answered. (Anything going wrong before, from
/// connect to AUTH, is the relay's by definition and never gets here.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    Mail,
    Rcpt,
    /// The DATA command (before any content).
    Data,
    /// The reply to the final dot.
    Dot,
}

impl Step {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Step::Mail => "MAIL FROM",
            Step::Rcpt => "RCPT TO",
            Step::Data => "DATA",
            Step::Dot => "the end of DATA",
        }
    }
}

/// Whose problem a negative reply is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The relay refuses our session, our sender or relaying: no message can go now,
    /// and none is to blame.
    Relay,
    /// This message, later (4xx).
    Transient,
    /// This message, never (5xx); `hard_bounce` when the recipient's mailbox is known not
    /// to exist.
    Permanent { hard_bounce: bool },
}

/// Judges a negative reply such as "550 5.1.1 no such user" given after `step`.
pub(crate) fn verdict(step: Step, reply: &str) -> Verdict {
    let mut words = reply.split_whitespace();
    let code = words.next().unwrap_or("");
    let class = code.as_bytes().first().copied();
    // 421: the server is closing the channel, whatever it was asked.
    if code == "421" || step == Step::Mail {
        return Verdict::Relay;
    }
    let enhanced = words.next().and_then(|w| enhanced_code(w, class));
    let lower = reply.to_ascii_lowercase();
    // Our sender, refused late: Postfix checks MAIL FROM at RCPT time by default
    // ("553 5.1.8 <shop@…>: Sender address rejected: Domain not found").
    if matches!(enhanced, Some((1, 7 | 8))) || lower.contains("sender address") {
        return Verdict::Relay;
    }
    if class == Some(b'5')
        && matches!(enhanced, Some((1, _)))
        && matches!(step, Step::Rcpt | Step::Dot)
    {
        return Verdict::Permanent { hard_bounce: true };
    }
    // Relaying refused ("554 5.7.1 Relay access denied", "550 relay not permitted",
    // "Relaying denied") or authentication missing: our set-up, not the address. Checked
    // after 5.1.x so that "5.1.1 User unknown in relay recipient table" stays a bounce.
    if lower.contains("relay")
        || code == "530"
        || lower.contains("authentication required")
        || lower.contains("not authenticated")
    {
        return Verdict::Relay;
    }
    match class {
        Some(b'5') => Verdict::Permanent { hard_bounce: false },
        _ => Verdict::Transient,
    }
}

/// (subject, detail) of an RFC 3463 enhanced status code "class.subject.detail" whose
/// class agrees with the reply code's.
fn enhanced_code(word: &str, class: Option<u8>) -> Option<(u16, u16)> {
    let mut parts = word.split('.');
    let (c, s, d) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || c.as_bytes() != [class?] {
        return None;
    }
    Some((s.parse().ok()?, d.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::{Step, Verdict, verdict};

    const BOUNCE: Verdict = Verdict::Permanent { hard_bounce: true };
    const REFUSED: Verdict = Verdict::Permanent { hard_bounce: false };

    #[test]
    fn a_hard_bounce_is_a_5_1_x_reply_to_rcpt_or_the_dot() {
        assert_eq!(verdict(Step::Rcpt, "550 5.1.1 no such user"), BOUNCE);
        assert_eq!(verdict(Step::Dot, "550 5.1.1 mailbox unavailable"), BOUNCE);
        assert_eq!(
            verdict(
                Step::Rcpt,
                "550 5.1.1 <a@b.c>: Recipient address rejected: User unknown in relay recipient table"
            ),
            BOUNCE
        );
        assert_eq!(verdict(Step::Rcpt, "551 5.1.6 user has moved"), BOUNCE);
        // No enhanced code, or another family: refused, but nothing known about the mailbox.
        assert_eq!(verdict(Step::Rcpt, "553 mailbox name not allowed"), REFUSED);
        assert_eq!(verdict(Step::Rcpt, "550 no such user here"), REFUSED);
        assert_eq!(
            verdict(Step::Dot, "550 5.7.1 message refused as spam"),
            REFUSED
        );
        assert_eq!(verdict(Step::Dot, "552 5.3.4 message too big"), REFUSED);
        assert_eq!(verdict(Step::Data, "550 5.1.1 odd reply to DATA"), REFUSED);
        // A class that disagrees with the code is no enhanced code.
        assert_eq!(verdict(Step::Rcpt, "550 4.1.1 confused"), REFUSED);
    }

    #[test]
    fn sender_and_relay_refusals_are_the_relays_state() {
        for (step, reply) in [
            (Step::Mail, "553 5.1.8 Sender address rejected"),
            (Step::Mail, "550 5.7.1 not allowed"),
            (Step::Mail, "451 4.3.0 try later"),
            (
                Step::Rcpt,
                "553 5.1.8 <shop@x>: Sender address rejected: Domain not found",
            ),
            (
                Step::Rcpt,
                "450 4.1.8 <shop@x>: Sender address rejected: Domain not found",
            ),
            (Step::Rcpt, "550 5.1.7 bad sender mailbox syntax"),
            (Step::Rcpt, "550 relay not permitted"),
            (Step::Rcpt, "554 5.7.1 <a@b.c>: Relay access denied"),
            (Step::Rcpt, "550 5.7.1 Relaying denied"),
            (Step::Rcpt, "530 5.7.0 Authentication Required"),
            (Step::Rcpt, "421 4.7.0 closing"),
            (Step::Dot, "421 4.3.2 shutting down"),
        ] {
            assert_eq!(verdict(step, reply), Verdict::Relay, "{reply}");
        }
    }

    #[test]
    fn other_4xx_are_retried_per_message() {
        assert_eq!(
            verdict(Step::Rcpt, "451 4.3.0 try again later"),
            Verdict::Transient
        );
        assert_eq!(
            verdict(Step::Dot, "451 4.7.1 greylisted"),
            Verdict::Transient
        );
        assert_eq!(
            verdict(Step::Rcpt, "450 4.1.1 unverified address"),
            Verdict::Transient
        );
    }
}
