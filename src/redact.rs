//! Redaction: the one function every log line passes through.
//!
//! Access and audit log fields that came from a client (path, query, host, origin, subject),
//! every line of the process log (Pingora's own included), and every configuration error
//! message are redacted by [`redact`] before they are written. What it removes:
//!
//! - `Bearer`/`Basic`/`Digest` credentials, whatever follows the scheme;
//! - JWTs (`eyJ…` three-segment tokens);
//! - Portcullis API keys (`pcs_…`);
//! - e-mail addresses, plain or percent-encoded;
//! - the whole value of an `Authorization`, `Proxy-Authorization`, `Cookie` or `Set-Cookie`
//!   header, to the end of the line;
//! - the value of any `name=value` / `name: value` / `"name":"value"` pair (JSON-escaped too)
//!   whose name says it holds a secret (`password`, `token`, `api_key`, `secret`, `session`,
//!   ...), an auth scheme before the value included;
//! - any other run of 32 or more letters and digits mixing both (a random key, whatever its
//!   format), except UUIDs, which request ids are.
//!
//! Text that holds percent-escapes is also redacted decoded (`api_key%3Dsecret`,
//! `%22Bearer%20tok%22`): when that finds more, the decoded, redacted form is what is logged.
//! Query strings get a stricter pass first ([`redact_target`]): a parameter whose name, decoded,
//! hints at a credential (`key`, `sig`, `code`, `auth`, `pass`, ...) loses its value whatever it
//! looks like.
//!
//! Redaction errs towards removing too much: a log line is for operators, and a secret in it
//! lives as long as the log does.

use std::borrow::Cow;

use regex::bytes::Regex;
use std::sync::LazyLock;

/// What replaces a redacted value.
pub const REDACTED: &str = "[REDACTED]";

/// The longest client-supplied value a log line keeps (longer ones are cut, with `…`).
pub const MAX_LOGGED_VALUE: usize = 512;

/// Names (lower case, matched as substrings) whose values are secrets in `name=value` pairs.
const SECRET_NAMES: &str = "password|passwd|passphrase|pwd|secret|token|api[_-]?key|apikey|access[_-]?key|private[_-]?key|authorization|cookie|session|credential|jwt|signature|otp";

/// 1. Credential headers: the whole value, whatever its scheme and spaces. (Listed before the
///    secret-named pair, which would otherwise take the same name and stop at a space.)
const CREDENTIAL_HEADER: &str = r#"(?i:(?:proxy-)?authorization|(?:set-)?cookie)(\\?"?\s*[=:]\s*\\?"?)[^\r\n"\\]+"#;
/// 2. An auth scheme and its credential.
const SCHEME: &str =
    r"(?i:(?:\b|%[0-9A-Fa-f]{2})(?:bearer|basic|digest|negotiate))(\s+|%20|\+|\\t)[A-Za-z0-9._~+/=%-]+";
/// 3. A JWT: base64url of `{"` always begins `eyJ`.
const JWT: &str = r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*";
/// 4. A Portcullis API key.
const API_KEY: &str = r"pcs_[A-Za-z0-9]+";
/// 5. An e-mail address, plain or percent-encoded.
const EMAIL: &str = r"[A-Za-z0-9._%+-]+(?:@|%40)[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}";
/// 7. A long run of letters and digits (kept unless it mixes both and is no UUID).
const RUN: &str = r"[A-Za-z0-9_-]{32,}";

/// 6. A secret-named pair: the name and separator are kept, the value (and an auth scheme in
///    front of it) dropped. Quotes may be JSON-escaped, as in the process log.
fn secret_pair() -> String {
    format!(
        r#"(?i:[A-Za-z0-9_-]*(?:{SECRET_NAMES})[A-Za-z0-9_-]*)(\\?"?\s*[=:]\s*\\?"?)(?:(?i:bearer|basic|digest|negotiate)(?:\s+|%20|\+))?[^\s&"',;}}\\]+"#
    )
}

/// ASCII classes and word boundaries (`(?-u)`): every pattern is ASCII, and Unicode-aware
/// `\b` and `\s` would make the engine leave its DFA. Matching bytes, a match still starts and
/// ends on ASCII, so redacted text stays valid UTF-8.
#[allow(clippy::expect_used)] // constant patterns, covered by the tests below
fn compile(pattern: &str) -> Regex {
    Regex::new(&format!("(?-u){pattern}")).expect("the redaction patterns compile")
}

/// Every rule, in priority order: the one search each text gets (no captures, so the regex
/// engine stays on its fast DFA path).
static ANY_SECRET: LazyLock<Regex> = LazyLock::new(|| {
    let rules = [CREDENTIAL_HEADER, SCHEME, JWT, API_KEY, EMAIL, &secret_pair(), RUN];
    compile(&rules.map(|r| format!("(?:{r})")).join("|"))
});

/// The rules whose matches keep a prefix (name or scheme, and separator), anchored to split a
/// match found by [`ANY_SECRET`]: capture group 1 is the separator.
static KEEP_PREFIX: LazyLock<[Regex; 3]> =
    LazyLock::new(|| [CREDENTIAL_HEADER, SCHEME, &secret_pair()].map(|r| compile(&format!("^(?:{r})$"))));

/// `8-4-4-4-12` hex digits: a request id, kept.
fn is_uuid(s: &[u8]) -> bool {
    s.len() == 36
        && s.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// `text` with every secret-looking part replaced by [`REDACTED`]. Borrows when nothing matched.
///
/// Text with percent-escapes is redacted twice, as is and decoded; if the decoded pass finds
/// more, its result is returned (decoded), so an escape never hides a secret.
pub fn redact(text: &str) -> Cow<'_, str> {
    let plain = redact_once(text);
    if !text.contains('%') {
        return plain;
    }
    let decoded = percent_encoding::percent_decode_str(text).decode_utf8_lossy();
    if decoded == text {
        return plain;
    }
    let redacted = redact_once(&decoded);
    if redacted.matches(REDACTED).count() > plain.matches(REDACTED).count() {
        Cow::Owned(redacted.into_owned())
    } else {
        plain
    }
}

fn redact_once(text: &str) -> Cow<'_, str> {
    let bytes = text.as_bytes();
    if is_uuid(bytes) {
        return Cow::Borrowed(text);
    }
    let mut out: Option<Vec<u8>> = None;
    let mut copied = 0;
    for found in ANY_SECRET.find_iter(bytes) {
        let Some(replacement) = replacement(found.as_bytes()) else { continue };
        let out = out.get_or_insert_with(|| Vec::with_capacity(bytes.len()));
        out.extend_from_slice(&bytes[copied..found.start()]);
        out.extend_from_slice(&replacement);
        copied = found.end();
    }
    match out {
        None => Cow::Borrowed(text),
        Some(mut out) => {
            out.extend_from_slice(&bytes[copied..]);
            // Replacements start and end on ASCII bytes: the result is UTF-8.
            Cow::Owned(String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
        }
    }
}

/// What replaces a match: its kept prefix and [`REDACTED`], [`REDACTED`] alone, or nothing
/// (`None`: a long run that is a UUID or not a mix of letters and digits).
fn replacement(found: &[u8]) -> Option<Vec<u8>> {
    for rule in KEEP_PREFIX.iter() {
        if let Some(separator) = rule.captures(found).and_then(|c| c.get(1)) {
            return Some([&found[..separator.end()], REDACTED.as_bytes()].concat());
        }
    }
    let is_run = found.len() >= 32 && found.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'-');
    if is_run && !found.starts_with(b"pcs_") {
        let mixed = found.iter().any(u8::is_ascii_digit) && found.iter().any(u8::is_ascii_alphabetic);
        if !mixed || is_uuid(found) {
            return None;
        }
    }
    Some(REDACTED.as_bytes().to_vec())
}

/// Query parameter names (lower case, matched as substrings) whose values are always dropped.
const SECRET_PARAMS: [&str; 15] = [
    "key",
    "token",
    "secret",
    "pass",
    "pwd",
    "auth",
    "sig",
    "session",
    "sid",
    "credential",
    "code",
    "jwt",
    "cookie",
    "assertion",
    "otp",
];

/// A request target (`/path?query`) for a log line: the path redacted, each query parameter
/// whose name hints at a credential emptied to [`REDACTED`], the other values redacted, and the
/// whole cut at [`MAX_LOGGED_VALUE`]. Parameters are split at `&` and at `;`, which some
/// upstreams also take as a separator (`?a=1;sig=...`).
pub fn redact_target(target: &str) -> String {
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    let mut out = String::with_capacity(target.len().min(MAX_LOGGED_VALUE) + 16);
    out.push_str(&redact(path));
    if let Some(query) = query {
        out.push('?');
        let mut rest = query;
        loop {
            let end = rest.find(['&', ';']).unwrap_or(rest.len());
            let pair = &rest[..end];
            match pair.split_once('=') {
                Some((name, _)) if is_secret_param(name) => {
                    out.push_str(&redact(name));
                    out.push('=');
                    out.push_str(REDACTED);
                }
                // `api_key%3Dx` is decoded before its name is judged.
                None if pair.contains('%') && pair_is_secret(pair) => out.push_str(REDACTED),
                _ => out.push_str(&redact(pair)),
            }
            let Some(separator) = rest[end..].chars().next() else { break };
            out.push(separator);
            rest = &rest[end + 1..];
        }
    }
    truncate(out)
}

/// A client-supplied value (host, origin, subject) for a log line: redacted, and cut at
/// [`MAX_LOGGED_VALUE`].
pub fn redact_value(value: &str) -> String {
    truncate(redact(value).into_owned())
}

fn is_secret_param(name: &str) -> bool {
    let name = percent_encoding::percent_decode_str(name).decode_utf8_lossy().to_ascii_lowercase();
    SECRET_PARAMS.iter().any(|s| name.contains(s))
}

/// A query pair without a literal `=` whose decoded form is `secret_name=value`.
fn pair_is_secret(pair: &str) -> bool {
    let decoded = percent_encoding::percent_decode_str(pair).decode_utf8_lossy();
    decoded.split_once('=').is_some_and(|(name, _)| is_secret_param(name))
}

fn truncate(mut s: String) -> String {
    if s.len() > MAX_LOGGED_VALUE {
        s.truncate(cut_at(&s, MAX_LOGGED_VALUE).len());
        s.push('…');
    }
    s
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
pub fn cut_at(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    const JWT: &str = "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsxIn0.eyJzdWIiOiJ1c2VyLTQyIiwiZXhwIjoxOTAwMDAwMDAwfQ.Zm9vYmFyYmF6cXV4cXV1eA-_Zm9vYmFy";
    const KEY: &str = "pcs_3f9a1c0b7e2d4a6f8b0c1d2e3f405162738495a6b7c8d9e0f1a2b3c4d5e6f708";

    fn assert_gone(text: &str, secret: &str) {
        let out = redact(text);
        assert!(!out.contains(secret), "{secret:?} survived in {out:?}");
    }

    #[test]
    fn removes_tokens_keys_and_addresses() {
        for segment in JWT.split('.') {
            assert_gone(&format!("Authorization: Bearer {JWT}"), segment);
            assert_gone(&format!("token {JWT} seen"), segment);
        }
        assert_gone(&format!("authorization=bearer%20{KEY}"), KEY);
        assert_gone(&format!("request with {JWT} failed"), "eyJzdWIiOiJ1c2VyLTQyIiwiZXhwIjoxOTAwMDAwMDAwfQ");
        assert_gone(&format!("key {KEY} refused"), &KEY[4..]);
        assert_gone("sent by jane.doe+test@example.co.uk today", "jane.doe");
        assert_gone("/users/jane.doe%40example.com/profile", "jane.doe");
        assert_gone("Basic dXNlcjpodW50ZXIy", "dXNlcjpodW50ZXIy");
        assert_gone("Authorization: Basic dXNlcjpodW50ZXIy", "dXNlcjpodW50ZXIy");
        assert_gone("authorization:bearer opaque-token-1", "opaque-token-1");
        assert_gone("Proxy-Authorization: Bearer opaque-token-2 trailing", "opaque-token-2");
        assert_gone("Cookie: theme=dark; sid=s3cr3t", "s3cr3t");
        assert_gone("x-access-token: Bearer opaque-token-3", "opaque-token-3");
        // As the process log writes them: JSON-escaped quotes and tabs.
        assert_gone(r#"{\"password\":\"hunter2\"}"#, "hunter2");
        assert_gone(r#"\"x-custom-token\": \"abc123\""#, "abc123");
        assert_gone(r"Bearer\tabc-opaque", "abc-opaque");
        // Percent-encoded.
        assert_gone("?headers=%7B%22Authorization%22%3A%22Bearer%20tok-4%22%7D", "tok-4");
        assert_gone("/cb?next=/x%3Fpassword%3Dhunter3", "hunter3");
        assert_gone("api_key%3Dsecret-5", "secret-5");
        assert_gone(r#"{"password":"hunter2","user":"x"}"#, "hunter2");
        assert_gone("password=hunter2&user=x", "hunter2");
        assert_gone("db_password: hunter2", "hunter2");
        assert_gone("X-API-Key: s3cr3t-value", "s3cr3t-value");
        assert_gone("client_secret=abc123", "abc123");
        assert_gone("Cookie: session=abcdef", "abcdef");
        // A random key of another format: long, letters and digits mixed.
        assert_gone("legacy key AbCdEf0123456789GhIjKl0123456789MnOp in use", "AbCdEf0123456789GhIjKl0123456789MnOp");
    }

    #[test]
    fn keeps_what_operators_need() {
        for kept in [
            "GET /api/v1/models/42 200",
            "request 550e8400-e29b-41d4-a716-446655440000 done",
            "route models-read upstream registry",
            "client 192.0.2.7 key id ci-bot",
            "a_very_long_identifier_without_any_digits_at_all",
            "listening on 127.0.0.1:8080",
        ] {
            assert_eq!(redact(kept), kept);
        }
        assert!(matches!(redact("plain text"), Cow::Borrowed(_)));
    }

    #[test]
    fn query_parameters_by_name() {
        let t = redact_target("/v1/items?api_key=abc&page=2&sig=zzz&email=a@b.example&q=cats");
        assert_eq!(t, "/v1/items?api_key=[REDACTED]&page=2&sig=[REDACTED]&email=[REDACTED]&q=cats");
        assert_eq!(redact_target("/plain/path"), "/plain/path");
        assert_eq!(redact_target("/p?code=4/0AX4&state=ok"), "/p?code=[REDACTED]&state=ok");
        assert_eq!(redact_target("/p?flag"), "/p?flag");
        assert_eq!(redact_target("/p?"), "/p?");
        assert_eq!(redact_target("/p?a=1;sig=abc;b=2&&token=x"), "/p?a=1;sig=[REDACTED];b=2&&token=[REDACTED]");
        assert_eq!(redact_target("/p?tok%65n=abc&q=1"), "/p?tok%65n=[REDACTED]&q=1");
        assert_eq!(redact_target("/p?api_key%3Dabc"), "/p?[REDACTED]");
        assert_eq!(redact_target("/p?passphrase=abc&phpsessid=def"), "/p?passphrase=[REDACTED]&phpsessid=[REDACTED]");
    }

    #[test]
    fn long_values_are_cut() {
        let long = format!("/{}", "a/".repeat(600));
        let out = redact_target(&long);
        assert!(out.len() <= MAX_LOGGED_VALUE + '…'.len_utf8());
        assert!(out.ends_with('…'));
        assert_eq!(redact_value("é".repeat(400).as_str()).chars().last(), Some('…'));
    }
}
