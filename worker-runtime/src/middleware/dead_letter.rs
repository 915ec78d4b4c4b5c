//! Building the dead-letter copy of a message: the original payload, key and properties, stamped with
//! its provenance (see the `DLQ_*` names in [`worker_core::props`]), and the error text made safe to
//! store and show.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use worker_core::{props, DeadLetterReason, Message, MessageId};

/// The default bound, in bytes, of the error text stored on a dead-letter copy.
pub const MAX_DLQ_ERROR_LEN: usize = 1024;

/// What replaces a redacted secret.
const REDACTED: &str = "[redacted]";

/// Why and where a message was dead-lettered.
#[derive(Clone, Copy, Debug)]
pub struct DeadLetter<'a> {
    /// Why it was given up on.
    pub reason: DeadLetterReason,
    /// The last error, as displayed. It is sanitized when stamped, see [`sanitize_error`].
    pub error: &'a str,
    /// How many attempts were made.
    pub attempts: u32,
    /// The topic it was consumed from.
    pub original_topic: &'a str,
    /// The broker's id of the delivery that was dead-lettered.
    pub original_message_id: &'a MessageId,
    /// The message's stable id, the one its handler saw: stamped as [`props::MESSAGE_ID`], so that
    /// a replay is the same message even when its producer set none (the worker then took the
    /// broker's id of its first delivery).
    pub message_id: &'a str,
    /// The task that gave up on it.
    pub task: &'a str,
    /// The consumer (worker) that gave up on it.
    pub consumer: &'a str,
    /// The principal the worker verified for the message, if any.
    pub principal: Option<&'a str>,
    /// When it was dead-lettered.
    pub time: SystemTime,
}

/// The copy of `original` to publish to the dead-letter topic.
///
/// It keeps the payload, the key and every property but the sender's token, sets the stable message
/// id (so that a replay is recognised as the same message), clears `deliver_at` (a dead letter is
/// for inspection now, not a delayed retry), and sets every `DLQ_*` property, overwriting those of
/// an earlier dead-lettering. The token ([`props::AUTH_TOKEN`]) is removed, since anyone who reads
/// the DLQ could replay it until it expires; the principal it was verified as is kept as
/// [`props::DLQ_PRINCIPAL`]. The error text is passed through [`sanitize_error`] with [`MAX_DLQ_ERROR_LEN`];
/// the time is RFC 3339 in UTC with milliseconds.
pub fn dead_letter_message(original: &Message, info: &DeadLetter<'_>) -> Message {
    let mut message = original.clone();
    message.deliver_at = None;
    message.properties.remove(props::AUTH_TOKEN);
    match info.principal {
        Some(subject) => {
            message
                .properties
                .insert(props::DLQ_PRINCIPAL.to_owned(), subject.to_owned());
        }
        None => {
            message.properties.remove(props::DLQ_PRINCIPAL);
        }
    }
    let stamps = [
        (props::MESSAGE_ID, info.message_id.to_owned()),
        (props::DLQ_REASON, info.reason.as_str().to_owned()),
        (
            props::DLQ_ERROR,
            sanitize_error(info.error, MAX_DLQ_ERROR_LEN),
        ),
        (props::DLQ_ATTEMPTS, info.attempts.to_string()),
        (props::DLQ_ORIGINAL_TOPIC, info.original_topic.to_owned()),
        (
            props::DLQ_ORIGINAL_MESSAGE_ID,
            info.original_message_id.to_string(),
        ),
        (props::DLQ_TASK, info.task.to_owned()),
        (props::DLQ_CONSUMER, info.consumer.to_owned()),
        (props::DLQ_TIME, rfc3339_utc(info.time)),
    ];
    for (name, value) in stamps {
        message.properties.insert(name.to_owned(), value);
    }
    message
}

/// `time` as RFC 3339 in UTC with milliseconds, clamped to the years 1970 to 9999 that the format
/// (and humantime) can express.
fn rfc3339_utc(time: SystemTime) -> String {
    // 9999-12-31T23:59:59.999Z; humantime refuses anything later and panics on anything before 1970.
    let last = SystemTime::UNIX_EPOCH + Duration::from_millis(253_402_300_799_999);
    let time = time.clamp(SystemTime::UNIX_EPOCH, last);
    let mut text = String::new();
    // Within the clamped range formatting cannot fail; write! is used so that it could not panic.
    let _ = write!(text, "{}", humantime::format_rfc3339_millis(time));
    text
}

/// Makes error text safe to store on a message and to show: removes control characters, redacts what
/// looks like a secret, and bounds the length to `max_len` bytes.
///
/// - Newlines and tabs become spaces; other control characters (and the Unicode bidirectional
///   overrides, which can make text display differently from what it is) are removed.
/// - Redacted, each replaced by `[redacted]`:
///   - the userinfo of a URL: `postgres://user:pass@db/x` → `postgres://[redacted]@db/x`;
///   - the credential after `Bearer`;
///   - the value of a key ending in `password`, `passwd`, `pwd`, `secret`, `token`, `api_key`,
///     `apikey`, `api-key`, `access_key` or `private_key` (any case) followed by `=` or `:`, as in
///     `password=…`, `client_secret: "…"` or `{"access_token":"…"}`. For the `token` keys a colon
///     followed by a space must have a quoted value, so that prose like `invalid token: expired`
///     stays readable;
///   - JWT-shaped tokens: three or more dot-separated base64url segments of which the first starts
///     with `eyJ` (a base64 JSON object) or each of the first three is at least 16 characters long.
/// - Text longer than `max_len` bytes is cut on a character boundary and ends in `…`, the whole
///   staying within `max_len` bytes. Redaction runs first, so a cut cannot expose a secret that
///   would otherwise have been recognised.
///
/// This is a best effort against accidents, not a guarantee: a secret with no recognisable shape
/// passes. Sanitizing twice gives the same text as sanitizing once.
pub fn sanitize_error(text: &str, max_len: usize) -> String {
    let text = strip_controls(text);
    let text = redact_url_userinfo(&text);
    let text = redact_bearer(&text);
    let text = redact_key_values(&text);
    let text = redact_jwt_shaped(&text);
    truncate(text, max_len)
}

fn strip_controls(text: &str) -> String {
    text.chars()
        .filter_map(|c| match c {
            '\n' | '\r' | '\t' => Some(' '),
            c if c.is_control() => None,
            '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' => None,
            c => Some(c),
        })
        .collect()
}

/// Characters that end an unquoted value or URL authority.
fn ends_value(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c,
            '&' | ',' | ';' | '"' | '\'' | '<' | '>' | ')' | ']' | '}'
        )
}

/// `scheme://userinfo@host` → `scheme://[redacted]@host`.
fn redact_url_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let authority_start = at + 3;
        out.push_str(&rest[..authority_start]);
        let after = &rest[authority_start..];
        let authority_len = after
            .find(|c: char| ends_value(c) || matches!(c, '/' | '?' | '#'))
            .unwrap_or(after.len());
        let authority = &after[..authority_len];
        match authority.rfind('@') {
            Some(userinfo_len) if userinfo_len > 0 => {
                out.push_str(REDACTED);
                out.push_str(&authority[userinfo_len..]);
            }
            _ => out.push_str(authority),
        }
        rest = &after[authority_len..];
    }
    out.push_str(rest);
    out
}

/// `Bearer abc` → `Bearer [redacted]` (any case of "bearer", as a whole word).
fn redact_bearer(text: &str) -> String {
    const WORD: &str = "bearer";
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        let rest = &text[i..];
        let word_start = !text[..i]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_');
        if word_start && starts_with_ignore_case(rest, WORD) {
            let after_word = &rest[WORD.len()..];
            let value = after_word.trim_start_matches(' ');
            let gap = after_word.len() - value.len();
            let value_len = value.find(char::is_whitespace).unwrap_or(value.len());
            if gap > 0 && value_len > 0 {
                out.push_str(&rest[..WORD.len() + gap]);
                out.push_str(REDACTED);
                i += WORD.len() + gap + value_len;
                continue;
            }
        }
        let c_len = rest.chars().next().map_or(1, char::len_utf8);
        out.push_str(&rest[..c_len]);
        i += c_len;
    }
    out
}

/// `password=x`, `"api_key": "x"`, `access_token:x` → the value redacted.
fn redact_key_values(text: &str) -> String {
    const SECRET_KEYS: [&str; 9] = [
        "password",
        "passwd",
        "pwd",
        "secret",
        "api_key",
        "apikey",
        "api-key",
        "access_key",
        "private_key",
    ];
    let is_key_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        let rest = &text[i..];
        let Some(first) = rest.chars().next() else {
            break;
        };
        if !is_key_char(first) {
            out.push(first);
            i += first.len_utf8();
            continue;
        }
        let key_len = rest.find(|c: char| !is_key_char(c)).unwrap_or(rest.len());
        let key = rest[..key_len].to_ascii_lowercase();
        out.push_str(&rest[..key_len]);
        i += key_len;
        let is_token_key = key.ends_with("token");
        if !is_token_key && !SECRET_KEYS.iter().any(|k| key.ends_with(k)) {
            continue;
        }
        if let Some((value_start, value_len)) = secret_value_span(&text[i..], is_token_key) {
            // Copy the separator (and any quote), then replace the value.
            out.push_str(&text[i..i + value_start]);
            out.push_str(REDACTED);
            i += value_start + value_len;
        }
    }
    out
}

/// After a secret-sounding key: where its value starts and how long it is, relative to `after_key`,
/// or `None` if no (unredacted) value follows a separator.
fn secret_value_span(after_key: &str, strict_colon: bool) -> Option<(usize, usize)> {
    let mut pos = 0;
    // The closing quote of a quoted key: `"password": …`.
    let key_quoted = after_key.starts_with(['"', '\'']);
    if key_quoted {
        pos += 1;
    }
    let spaces_before = count_spaces(&after_key[pos..]);
    pos += spaces_before;
    let separator = after_key[pos..].chars().next()?;
    if separator != '=' && separator != ':' {
        return None;
    }
    pos += 1;
    let spaces_after = count_spaces(&after_key[pos..]);
    pos += spaces_after;
    let value = &after_key[pos..];
    if value.starts_with(REDACTED) {
        return None;
    }
    match value.chars().next() {
        Some(quote @ ('"' | '\'')) => {
            let inner = &value[1..];
            let inner_len = inner.find(quote).unwrap_or(inner.len());
            (inner_len > 0 && !inner.starts_with(REDACTED)).then_some((pos + 1, inner_len))
        }
        Some(_) => {
            if strict_colon && separator == ':' && spaces_after > 0 && !key_quoted {
                return None;
            }
            let value_len = value.find(ends_value).unwrap_or(value.len());
            (value_len > 0).then_some((pos, value_len))
        }
        None => None,
    }
}

fn count_spaces(text: &str) -> usize {
    text.len() - text.trim_start_matches(' ').len()
}

/// Runs of base64url characters and dots that look like a JWT (or another dotted token) → redacted.
fn redact_jwt_shaped(text: &str) -> String {
    let is_run_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(is_run_char) {
        out.push_str(&rest[..start]);
        let run_and_after = &rest[start..];
        let run_len = run_and_after
            .find(|c: char| !is_run_char(c))
            .unwrap_or(run_and_after.len());
        let run = &run_and_after[..run_len];
        // A sentence may end right after a token: keep trailing dots out of it, unless the token
        // needs one (an unsigned `alg: none` token ends in a dot).
        let trimmed = run.trim_end_matches('.');
        let with_one_dot = &run[..(trimmed.len() + 1).min(run.len())];
        let token = if looks_like_jwt(trimmed) {
            Some(trimmed)
        } else if looks_like_jwt(with_one_dot) {
            Some(with_one_dot)
        } else {
            None
        };
        match token {
            Some(token) => {
                out.push_str(REDACTED);
                out.push_str(&run[token.len()..]);
            }
            None => out.push_str(run),
        }
        rest = &run_and_after[run_len..];
    }
    out.push_str(rest);
    out
}

fn looks_like_jwt(token: &str) -> bool {
    let segments: Vec<&str> = token.split('.').collect();
    if segments.len() < 3 {
        return false;
    }
    // JWS has 3 segments (the last empty for `alg: none`), JWE 5; the first two are never empty.
    let signed_json = segments[0].starts_with("eyJ") && !segments[1].is_empty();
    let long_segments = segments[..3].iter().all(|s| s.len() >= 16);
    signed_json || long_segments
}

fn starts_with_ignore_case(text: &str, prefix: &str) -> bool {
    text.get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
}

/// Cuts `text` to at most `max_len` bytes on a character boundary, ending in `…` when cut.
fn truncate(mut text: String, max_len: usize) -> String {
    const ELLIPSIS: &str = "…";
    if text.len() <= max_len {
        return text;
    }
    let Some(budget) = max_len.checked_sub(ELLIPSIS.len()) else {
        // No room for the ellipsis: as many whole characters as fit.
        let end = floor_char_boundary(&text, max_len);
        text.truncate(end);
        return text;
    };
    let end = floor_char_boundary(&text, budget);
    text.truncate(end);
    text.push_str(ELLIPSIS);
    text
}

/// The largest char boundary of `text` that is at most `index`.
fn floor_char_boundary(text: &str, index: usize) -> usize {
    (0..=index.min(text.len()))
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    const JWT: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLWJ5dGVz";

    fn clean(text: &str) -> String {
        sanitize_error(text, MAX_DLQ_ERROR_LEN)
    }

    #[test]
    fn a_message_without_a_stable_id_gets_the_one_its_handler_saw() {
        let original = Message::new(Bytes::from_static(b"foreign"));
        let id = MessageId::from_u64(7);
        let info = DeadLetter {
            reason: DeadLetterReason::DecodeError,
            error: "not json",
            attempts: 1,
            original_topic: "persistent://prod/ingest/raw",
            original_message_id: &id,
            message_id: "7",
            task: "ingest",
            consumer: "worker-1",
            principal: None,
            time: SystemTime::UNIX_EPOCH,
        };
        let copy = dead_letter_message(&original, &info);
        assert_eq!(copy.property(props::MESSAGE_ID), Some("7"));
    }

    #[test]
    fn the_copy_keeps_the_original_and_adds_provenance() {
        let original = Message::new(Bytes::from_static(b"{\"id\":1}"))
            .with_key("k1")
            .with_property(props::MESSAGE_ID, "m-1")
            .with_property("app", "x")
            .with_property(props::DLQ_REASON, "decode_error")
            .with_deliver_at(SystemTime::UNIX_EPOCH + Duration::from_secs(99));
        let id = MessageId::from_u64(42);
        let info = DeadLetter {
            reason: DeadLetterReason::RetriesExhausted,
            error: "db down\npassword=hunter2",
            attempts: 4,
            original_topic: "persistent://prod/ingest/raw",
            original_message_id: &id,
            message_id: "m-1",
            task: "ingest",
            consumer: "worker-1",
            principal: None,
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
        };
        let copy = dead_letter_message(&original, &info);

        assert_eq!(copy.payload, original.payload);
        assert_eq!(copy.key.as_deref(), Some("k1"));
        assert_eq!(copy.deliver_at, None);
        assert_eq!(copy.property(props::MESSAGE_ID), Some("m-1"));
        assert_eq!(copy.property("app"), Some("x"));
        assert_eq!(copy.property(props::DLQ_REASON), Some("retries_exhausted"));
        assert_eq!(
            copy.property(props::DLQ_ERROR),
            Some("db down password=[redacted]")
        );
        assert_eq!(copy.property(props::DLQ_ATTEMPTS), Some("4"));
        assert_eq!(
            copy.property(props::DLQ_ORIGINAL_TOPIC),
            Some("persistent://prod/ingest/raw")
        );
        assert_eq!(copy.property(props::DLQ_ORIGINAL_MESSAGE_ID), Some("42"));
        assert_eq!(copy.property(props::DLQ_TASK), Some("ingest"));
        assert_eq!(copy.property(props::DLQ_CONSUMER), Some("worker-1"));
        assert_eq!(
            copy.property(props::DLQ_TIME),
            Some("2023-11-14T22:13:20.123Z")
        );
        // Nothing else was added.
        assert_eq!(copy.properties.len(), 3 + 7);
    }

    #[test]
    fn the_copy_drops_the_token_and_names_the_verified_principal() {
        let original = Message::new(Bytes::from_static(b"{}"))
            .with_property(props::AUTH_TOKEN, JWT)
            .with_property(props::DLQ_PRINCIPAL, "mallory");
        let id = MessageId::from_u64(1);
        let mut info = DeadLetter {
            reason: DeadLetterReason::RetriesExhausted,
            error: "boom",
            attempts: 4,
            original_topic: "q1/t/ns/jobs",
            original_message_id: &id,
            message_id: "m-1",
            task: "jobs",
            consumer: "worker-1",
            principal: Some("alice"),
            time: SystemTime::UNIX_EPOCH,
        };
        let copy = dead_letter_message(&original, &info);
        assert_eq!(copy.property(props::AUTH_TOKEN), None);
        assert_eq!(copy.property(props::DLQ_PRINCIPAL), Some("alice"));

        // Refused before any principal was verified: none is named, not even a stale one.
        info.principal = None;
        let copy = dead_letter_message(&original, &info);
        assert_eq!(copy.property(props::AUTH_TOKEN), None);
        assert_eq!(copy.property(props::DLQ_PRINCIPAL), None);
    }

    #[test]
    fn times_outside_the_format_are_clamped_not_panicked_on() {
        let before = SystemTime::UNIX_EPOCH - Duration::from_secs(5);
        assert_eq!(rfc3339_utc(before), "1970-01-01T00:00:00.000Z");
        let after = SystemTime::UNIX_EPOCH + Duration::from_secs(300_000_000_000);
        assert_eq!(rfc3339_utc(after), "9999-12-31T23:59:59.999Z");
    }

    #[test]
    fn control_characters_are_stripped_and_line_breaks_become_spaces() {
        assert_eq!(clean("a\nb\r\nc\td"), "a b  c d");
        assert_eq!(clean("bell\u{7}\u{0}\u{1b}[31mred"), "bell[31mred");
        assert_eq!(clean("abc\u{202E}fed"), "abcfed");
        assert_eq!(clean("keep  spaces"), "keep  spaces");
    }

    #[test]
    fn jwt_shaped_tokens_are_redacted() {
        assert_eq!(
            clean(&format!("bad token {JWT}. retry")),
            "bad token [redacted]. retry"
        );
        assert_eq!(clean("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."), "[redacted]");
        assert_eq!(clean(&format!("see {JWT}...")), "see [redacted]...");
        let opaque = "AAAAAAAAAAAAAAAAAAAA.BBBBBBBBBBBBBBBBBBBB.CCCCCCCCCCCCCCCCCCCC";
        assert_eq!(clean(opaque), "[redacted]");
        // Ordinary dotted names are not secrets.
        for kept in [
            "api.example.com",
            "version 1.2.3",
            "std::io::Error",
            "a.b.c.d",
            "eyJ.",
        ] {
            assert_eq!(clean(kept), kept);
        }
    }

    #[test]
    fn bearer_credentials_are_redacted() {
        assert_eq!(
            clean("401 for Authorization: Bearer abc123def"),
            "401 for Authorization: Bearer [redacted]"
        );
        assert_eq!(
            clean("bearer   xyz and more"),
            "bearer   [redacted] and more"
        );
        assert_eq!(clean("the bearer"), "the bearer");
        assert_eq!(clean("cupbearer token"), "cupbearer token");
    }

    #[test]
    fn secret_values_are_redacted() {
        assert_eq!(
            clean("connect failed: password=hunter2 host=db"),
            "connect failed: password=[redacted] host=db"
        );
        assert_eq!(
            clean("GET /x?token=abc&page=2"),
            "GET /x?token=[redacted]&page=2"
        );
        assert_eq!(
            clean(r#"body {"access_token":"abc","api_key": "k1"}"#),
            r#"body {"access_token":"[redacted]","api_key": "[redacted]"}"#
        );
        assert_eq!(clean("client_secret: s3cr3t"), "client_secret: [redacted]");
        assert_eq!(clean("DB_PASSWORD = p"), "DB_PASSWORD = [redacted]");
        assert_eq!(clean("apikey:k,x=1"), "apikey:[redacted],x=1");
        // Prose about tokens keeps its meaning.
        assert_eq!(clean("invalid token: expired"), "invalid token: expired");
        assert_eq!(clean("token:abc"), "token:[redacted]");
        assert_eq!(clean("password reset failed"), "password reset failed");
    }

    #[test]
    fn url_userinfo_is_redacted() {
        assert_eq!(
            clean("cannot reach postgres://app:s3cret@db:5432/main"),
            "cannot reach postgres://[redacted]@db:5432/main"
        );
        assert_eq!(
            clean("redis://:pw@cache and https://tok@github.com/x"),
            "redis://[redacted]@cache and https://[redacted]@github.com/x"
        );
        assert_eq!(
            clean("see https://example.com/a@b"),
            "see https://example.com/a@b"
        );
    }

    #[test]
    fn sanitizing_is_idempotent() {
        let text = format!("Bearer {JWT} password=\"p w\" postgres://u:p@h/d token={JWT} \u{1}");
        let once = clean(&text);
        assert!(!once.contains("eyJ") && !once.contains("u:p") && !once.contains("p w"));
        assert_eq!(clean(&once), once);
    }

    #[test]
    fn long_text_is_cut_on_a_char_boundary_with_an_ellipsis() {
        assert_eq!(sanitize_error("short", 10), "short");
        assert_eq!(sanitize_error("0123456789", 10), "0123456789");
        assert_eq!(sanitize_error("0123456789a", 10), "0123456…");
        // "é" is two bytes; cutting through it backs off to the boundary before it.
        let cut = sanitize_error("aaaaaéééé", 9);
        assert_eq!(cut, "aaaaa…");
        assert!(cut.len() <= 9);
        assert_eq!(sanitize_error("ééé", 2), "é");
        assert_eq!(sanitize_error("abc", 0), "");
        let long = "x".repeat(5000);
        assert_eq!(clean(&long).len(), MAX_DLQ_ERROR_LEN);
    }

    #[test]
    fn secrets_are_redacted_before_the_cut() {
        // Cut first, the token would lose its third segment, stop looking like one, and show its
        // header and part of its claims.
        assert_eq!(
            sanitize_error(&format!("error: {JWT}"), 40),
            "error: [redacted]"
        );
    }
}
