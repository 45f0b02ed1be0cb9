//! SIP digest authentication, server side (and the few client-side helpers the
//! device simulator needs: [`parse_challenge`], [`authorization`]).
//!
//! Implements the UAS/registrar half of HTTP Digest as profiled by SIP
//! (RFC 3261 §22, RFC 8760), with the digest computations of RFC 7616
//! (algorithms `MD5` and `SHA-256`, `qop=auth`) and the RFC 2069 form without
//! `qop` for old clients.
//!
//! The module does no IO and never reads a clock: every time-dependent call
//! takes `now: Instant`. It knows nothing of SIP messages, only header values.
//!
//! # Request flow (order matters)
//!
//! ```ignore
//! // Challenge (no or bad credentials): one challenge per offered algorithm,
//! // SHA-256 first (RFC 8760 §2.4), all with the same fresh nonce.
//! let nonce = nonces.issue(now);
//! for value in challenges(realm, &nonce, false) { /* add WWW-Authenticate: value */ }
//!
//! // Request carrying Authorization / Proxy-Authorization:
//! let resp = parse_authorization(value)?;      // Err => 400 (or a fresh 401)
//! // The caller checks resp.realm == its realm, resp.uri against the
//! // Request-URI, and looks the user up by resp.username.
//! let fresh = nonces.check_fresh(&resp.nonce, now); // 1. read-only
//! if !verify(&resp, method, password) {             // 2. the digest itself
//!     // 401 with a new nonce, stale=false (403 after repeated failures)
//! }
//! match fresh {
//!     NonceCheck::Valid if nonces.accept_nc(&resp.nonce, resp.nc, now) => {
//!         // 3. authenticated; the nc has now been consumed
//!     }
//!     // Stale, Invalid (e.g. nonce from before a restart), Replay, or
//!     // accept_nc() refused: the digest proved knowledge of the password,
//!     // so answer 401 with a new nonce and stale=true (RFC 2617 §3.2.1).
//!     _ => {}
//! }
//! ```
//!
//! `accept_nc` must only be called **after** [`verify`] succeeded: it records
//! the nonce-count, so calling it for unverified requests would let anyone
//! who saw a nonce burn the legitimate client's nc values.
//! [`NonceManager::check`] bundles steps 1 and 3 for callers that verify first.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use md5::Md5;
use parking_lot::Mutex;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// Longest accepted `Authorization` / `Proxy-Authorization` value, in bytes.
pub const MAX_HEADER_LEN: usize = 4096;
/// Longest accepted auth-param name or (unescaped) value, in bytes.
pub const MAX_PARAM_LEN: usize = 1024;
/// Most auth-params accepted in one credentials value.
pub const MAX_PARAMS: usize = 32;
/// Default cap on nonces tracked for nc replay protection.
pub const DEFAULT_MAX_TRACKED_NONCES: usize = 65_536;
/// Algorithms offered in challenges, in preference order (RFC 8760 §2.4).
pub const OFFERED_ALGORITHMS: [Algorithm; 2] = [Algorithm::Sha256, Algorithm::Md5];

/// Errors from parsing credentials.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The scheme is not `Digest` (e.g. `Basic`): answer with a challenge
    /// (RFC 4475 `regaut01`).
    #[error("unsupported authentication scheme")]
    UnsupportedScheme,
    /// `algorithm` is neither `MD5` nor `SHA-256` (e.g. `MD5-sess`).
    #[error("unsupported digest algorithm {0:?}")]
    UnsupportedAlgorithm(String),
    /// The whole value exceeds [`MAX_HEADER_LEN`].
    #[error("credentials too long ({0} bytes)")]
    HeaderTooLong(usize),
    /// A param name or value exceeds [`MAX_PARAM_LEN`]. Holds at most 32 chars of the name.
    #[error("auth-param {0:?} too long")]
    ParamTooLong(String),
    /// More than [`MAX_PARAMS`] auth-params.
    #[error("too many auth-params")]
    TooManyParams,
    /// Syntax error.
    #[error("malformed credentials: {0}")]
    Malformed(&'static str),
    /// A known auth-param appears twice (names compared case-insensitively).
    #[error("duplicate auth-param {0:?}")]
    DuplicateParam(&'static str),
    /// A mandatory auth-param is absent (`cnonce`/`nc` are mandatory with `qop`).
    #[error("missing auth-param {0:?}")]
    MissingParam(&'static str),
    /// `nc` is not exactly 8 hex digits, or is zero.
    #[error("invalid nonce-count")]
    InvalidNc,
}

/// Digest algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Algorithm {
    /// `MD5`; also what an absent `algorithm` param means (RFC 2617).
    #[default]
    Md5,
    /// `SHA-256` (RFC 7616, RFC 8760).
    Sha256,
}

impl Algorithm {
    /// Parses a wire token (`MD5`, `SHA-256`; case-insensitive).
    /// `-sess` variants and other algorithms are unsupported.
    ///
    /// # Errors
    /// [`AuthError::UnsupportedAlgorithm`] for any other token.
    pub fn parse(token: &str) -> Result<Self, AuthError> {
        if token.eq_ignore_ascii_case("MD5") {
            Ok(Self::Md5)
        } else if token.eq_ignore_ascii_case("SHA-256") {
            Ok(Self::Sha256)
        } else {
            Err(AuthError::UnsupportedAlgorithm(clip(token)))
        }
    }

    /// Parses an optional `algorithm` param: absent means MD5.
    ///
    /// # Errors
    /// As [`Algorithm::parse`].
    pub fn from_param(value: Option<&str>) -> Result<Self, AuthError> {
        value.map_or(Ok(Self::Md5), Self::parse)
    }

    /// The canonical wire token.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Md5 => "MD5",
            Self::Sha256 => "SHA-256",
        }
    }

    /// Digest output length in bytes.
    const fn output_len(self) -> usize {
        match self {
            Self::Md5 => 16,
            Self::Sha256 => 32,
        }
    }

    /// H(p1:p2:...) as raw bytes.
    fn digest(self, parts: &[&[u8]]) -> Vec<u8> {
        match self {
            Self::Md5 => hash_parts::<Md5>(parts),
            Self::Sha256 => hash_parts::<Sha256>(parts),
        }
    }

    /// H(p1:p2:...) as lowercase hex.
    fn hex(self, parts: &[&[u8]]) -> String {
        hex::encode(self.digest(parts))
    }
}

impl FromStr for Algorithm {
    type Err = AuthError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn hash_parts<D: Digest>(parts: &[&[u8]]) -> Vec<u8> {
    let mut d = D::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            d.update(b":");
        }
        d.update(p);
    }
    d.finalize().to_vec()
}

/// Parsed digest credentials. String values are unquoted and unescaped.
///
/// Invariant established by [`parse_authorization`]: `qop`, `cnonce` and `nc`
/// are either all present or all absent (the RFC 2069 form). This matters for
/// replay protection: without `qop` the digest does not cover `nc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestResponse {
    pub username: String,
    pub realm: String,
    pub nonce: String,
    pub uri: String,
    /// Hex digest as sent (either case).
    pub response: String,
    pub algorithm: Algorithm,
    pub cnonce: Option<String>,
    pub nc: Option<u32>,
    pub qop: Option<String>,
    pub opaque: Option<String>,
}

const KNOWN_PARAMS: [&str; 10] = [
    "username",
    "realm",
    "nonce",
    "uri",
    "response",
    "algorithm",
    "cnonce",
    "nc",
    "qop",
    "opaque",
];

/// Truncates untrusted text kept in an error.
fn clip(s: &str) -> String {
    s.chars().take(32).collect()
}

fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

fn is_lws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

struct Cursor<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.as_bytes().get(self.pos).copied()
    }

    fn bump(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.pos += 1;
        Some(b)
    }

    /// Skips LWS (SP, HTAB, and CR/LF of folded lines); true if any.
    fn skip_lws(&mut self) -> bool {
        let start = self.pos;
        while self.peek().is_some_and(is_lws) {
            self.pos += 1;
        }
        self.pos > start
    }

    /// A possibly empty run of token chars (all ASCII, so slicing is safe).
    fn token(&mut self) -> &'a str {
        let start = self.pos;
        while self.peek().is_some_and(is_token_char) {
            self.pos += 1;
        }
        self.s.get(start..self.pos).unwrap_or("")
    }

    /// A quoted-string starting at the opening quote; returns its unescaped content.
    fn quoted(&mut self, name: &str) -> Result<String, AuthError> {
        const UNTERMINATED: AuthError = AuthError::Malformed("unterminated quoted-string");
        self.bump(); // opening quote
        let mut out = Vec::new();
        loop {
            let b = match self.bump().ok_or(UNTERMINATED)? {
                b'"' => break,
                b'\\' => {
                    // quoted-pair: "\" (%x00-09 / %x0B-0C / %x0E-7F)
                    let e = self.bump().ok_or(UNTERMINATED)?;
                    if e >= 0x80 || e == b'\r' || e == b'\n' {
                        return Err(AuthError::Malformed("invalid quoted-pair"));
                    }
                    e
                }
                b if (b < 0x20 && b != b'\t') || b == 0x7f => {
                    return Err(AuthError::Malformed("control character in quoted-string"));
                }
                b => b,
            };
            if out.len() >= MAX_PARAM_LEN {
                return Err(AuthError::ParamTooLong(clip(name)));
            }
            out.push(b);
        }
        String::from_utf8(out).map_err(|_| AuthError::Malformed("invalid UTF-8 in quoted-string"))
    }
}

/// The auth-params after the scheme (RFC 7235 §2.1, RFC 7616 §3.3–3.4):
/// comma-separated `name=value` with optional LWS, values as quoted-strings or
/// tokens, empty list elements skipped. The values of the `known` names are
/// returned in their order; others are ignored. Shared by the server's
/// `Authorization` parser and the client's challenge parser.
fn auth_params<const N: usize>(
    cur: &mut Cursor<'_>,
    known: &[&'static str; N],
) -> Result<[Option<String>; N], AuthError> {
    let mut values: [Option<String>; N] = std::array::from_fn(|_| None);
    let mut count = 0usize;
    loop {
        cur.skip_lws();
        match cur.peek() {
            None => break,
            Some(b',') => {
                cur.bump();
                continue;
            }
            Some(_) => {}
        }
        count += 1;
        if count > MAX_PARAMS {
            return Err(AuthError::TooManyParams);
        }
        let name = cur.token();
        if name.is_empty() {
            return Err(AuthError::Malformed("expected auth-param name"));
        }
        if name.len() > MAX_PARAM_LEN {
            return Err(AuthError::ParamTooLong(clip(name)));
        }
        cur.skip_lws();
        if cur.bump() != Some(b'=') {
            return Err(AuthError::Malformed("expected '=' after auth-param name"));
        }
        cur.skip_lws();
        let val = if cur.peek() == Some(b'"') {
            cur.quoted(name)?
        } else {
            let t = cur.token();
            if t.is_empty() {
                return Err(AuthError::Malformed("missing auth-param value"));
            }
            t.to_owned()
        };
        if val.len() > MAX_PARAM_LEN {
            return Err(AuthError::ParamTooLong(clip(name)));
        }
        if let Some(i) = known.iter().position(|k| k.eq_ignore_ascii_case(name)) {
            if values[i].is_some() {
                return Err(AuthError::DuplicateParam(known[i]));
            }
            values[i] = Some(val);
        }
        cur.skip_lws();
        match cur.bump() {
            None => break,
            Some(b',') => {}
            Some(_) => return Err(AuthError::Malformed("expected ',' between auth-params")),
        }
    }
    Ok(values)
}

/// Parses an `Authorization` / `Proxy-Authorization` header value.
///
/// Accepts scheme `Digest` (case-insensitive), comma-separated auth-params
/// with optional LWS around `=` and `,` (empty list elements are skipped),
/// values as quoted-strings (backslash escapes) or tokens (either form for
/// any param). Unknown params are ignored; a duplicated known param, a
/// missing mandatory one (`username`, `realm`, `nonce`, `uri`, `response`;
/// `cnonce` and `nc` when `qop` is present) is an error, as are `cnonce`/`nc`
/// without `qop`. `nc` must be exactly 8 hex digits and non-zero. Inputs over
/// [`MAX_HEADER_LEN`], params over [`MAX_PARAM_LEN`] and more than
/// [`MAX_PARAMS`] params are rejected.
///
/// # Errors
/// The [`AuthError`] variant describing the first problem found.
pub fn parse_authorization(value: &str) -> Result<DigestResponse, AuthError> {
    if value.len() > MAX_HEADER_LEN {
        return Err(AuthError::HeaderTooLong(value.len()));
    }
    let mut cur = Cursor { s: value, pos: 0 };
    cur.skip_lws();
    let scheme = cur.token();
    if scheme.is_empty() {
        return Err(AuthError::Malformed("missing authentication scheme"));
    }
    if !scheme.eq_ignore_ascii_case("Digest") {
        return Err(AuthError::UnsupportedScheme);
    }
    if cur.peek().is_some() && !cur.skip_lws() {
        return Err(AuthError::Malformed("expected whitespace after scheme"));
    }

    let values = auth_params(&mut cur, &KNOWN_PARAMS)?;

    let [username, realm, nonce, uri, response, algorithm, cnonce, nc, qop, opaque] = values;
    let username = username.ok_or(AuthError::MissingParam("username"))?;
    let realm = realm.ok_or(AuthError::MissingParam("realm"))?;
    let nonce = nonce.ok_or(AuthError::MissingParam("nonce"))?;
    let uri = uri.ok_or(AuthError::MissingParam("uri"))?;
    let response = response.ok_or(AuthError::MissingParam("response"))?;
    let algorithm = Algorithm::from_param(algorithm.as_deref())?;
    let nc = nc.as_deref().map(parse_nc).transpose()?;
    match (&qop, &cnonce, &nc) {
        (Some(_), None, _) => return Err(AuthError::MissingParam("cnonce")),
        (Some(_), _, None) => return Err(AuthError::MissingParam("nc")),
        (None, Some(_), _) | (None, _, Some(_)) => {
            return Err(AuthError::Malformed("cnonce/nc without qop"))
        }
        _ => {}
    }
    Ok(DigestResponse {
        username,
        realm,
        nonce,
        uri,
        response,
        algorithm,
        cnonce,
        nc,
        qop,
        opaque,
    })
}

fn parse_nc(s: &str) -> Result<u32, AuthError> {
    // from_str_radix alone would accept a leading '+'.
    if s.len() != 8 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(AuthError::InvalidNc);
    }
    match u32::from_str_radix(s, 16) {
        Ok(0) | Err(_) => Err(AuthError::InvalidNc),
        Ok(v) => Ok(v),
    }
}

/// Appends `s` as a quoted-string, escaping `"` and `\` and dropping control
/// characters (other than HTAB) so no header injection is possible.
fn push_quoted(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '\t' => out.push(c),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Builds a `WWW-Authenticate` / `Proxy-Authenticate` value:
/// `Digest realm="…", nonce="…", algorithm=SHA-256, qop="auth"` plus
/// `, stale=true` when `stale`.
#[must_use]
pub fn challenge(realm: &str, nonce: &str, algorithm: Algorithm, stale: bool) -> String {
    let mut s = String::with_capacity(64 + realm.len() + nonce.len());
    s.push_str("Digest realm=");
    push_quoted(&mut s, realm);
    s.push_str(", nonce=");
    push_quoted(&mut s, nonce);
    s.push_str(", algorithm=");
    s.push_str(algorithm.as_str());
    s.push_str(", qop=\"auth\"");
    if stale {
        s.push_str(", stale=true");
    }
    s
}

/// One [`challenge`] per algorithm of [`OFFERED_ALGORITHMS`] (SHA-256 first),
/// each to be sent as its own header.
#[must_use]
pub fn challenges(realm: &str, nonce: &str, stale: bool) -> [String; 2] {
    OFFERED_ALGORITHMS.map(|a| challenge(realm, nonce, a, stale))
}

/// HA1 = H(username:realm:password) as lowercase hex, for storing instead of
/// the password (use with [`verify_ha1`]; one HA1 per algorithm).
#[must_use]
pub fn ha1(algorithm: Algorithm, username: &str, realm: &str, password: &str) -> String {
    algorithm.hex(&[username.as_bytes(), realm.as_bytes(), password.as_bytes()])
}

/// Verifies credentials against a plaintext password.
///
/// Uses `resp.realm`, `resp.uri`, `resp.nonce` as sent: the caller checks
/// realm and uri, and the nonce with [`NonceManager`]. Accepts `qop=auth`
/// (response = H(HA1:nonce:nc:cnonce:qop:HA2)) and the RFC 2069 form without
/// qop (response = H(HA1:nonce:HA2)); any other qop (e.g. `auth-int`) fails.
/// The response hex may be in either case; comparison is constant-time.
#[must_use]
pub fn verify(resp: &DigestResponse, method: &str, password: &str) -> bool {
    verify_ha1(
        resp,
        method,
        &ha1(resp.algorithm, &resp.username, &resp.realm, password),
    )
}

/// Like [`verify`] with a precomputed HA1 (hex, either case) for
/// `resp.algorithm`; a HA1 of the wrong length fails.
#[must_use]
pub fn verify_ha1(resp: &DigestResponse, method: &str, ha1_hex: &str) -> bool {
    let alg = resp.algorithm;
    let len = alg.output_len();
    let mut received = vec![0u8; len];
    if resp.response.len() != 2 * len
        || hex::decode_to_slice(&resp.response, &mut received).is_err()
    {
        return false;
    }
    if ha1_hex.len() != 2 * len || !ha1_hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return false;
    }
    let ha1 = ha1_hex.to_ascii_lowercase();
    let ha2 = alg.hex(&[method.as_bytes(), resp.uri.as_bytes()]);
    let (ha1, ha2, nonce) = (ha1.as_bytes(), ha2.as_bytes(), resp.nonce.as_bytes());
    match (&resp.qop, resp.nc, &resp.cnonce) {
        (None, None, None) => ct_eq(&alg.digest(&[ha1, nonce, ha2]), &received),
        (Some(qop), Some(nc), Some(cnonce)) if qop.eq_ignore_ascii_case("auth") => {
            let (qop, cnonce) = (qop.as_bytes(), cnonce.as_bytes());
            // nc is LHEX on the wire; a client that sent it uppercase hashed
            // the uppercase form, so try that too (only differs for a-f).
            let lower = format!("{nc:08x}");
            let upper = format!("{nc:08X}");
            ct_eq(
                &alg.digest(&[ha1, nonce, lower.as_bytes(), cnonce, qop, ha2]),
                &received,
            ) || (lower != upper
                && ct_eq(
                    &alg.digest(&[ha1, nonce, upper.as_bytes(), cnonce, qop, ha2]),
                    &received,
                ))
        }
        _ => false,
    }
}

/// Constant-time equality (for equal lengths; lengths are not secret).
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

// ---------------------------------------------------------------------------
// Client side (a UAC answering a challenge): the device simulator's phones.

/// A parsed `WWW-Authenticate` / `Proxy-Authenticate` Digest challenge
/// (RFC 7616 §3.3), as a client needs it to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub realm: String,
    pub nonce: String,
    pub algorithm: Algorithm,
    /// The server offered `qop="auth"` (a list may offer more; we only do `auth`).
    pub qop_auth: bool,
    pub opaque: Option<String>,
    /// `stale=true`: the credentials were right but the nonce too old (RFC 7616 §3.3),
    /// so answering again with the same password is expected to succeed.
    pub stale: bool,
}

const CHALLENGE_PARAMS: [&str; 6] = ["realm", "nonce", "algorithm", "qop", "opaque", "stale"];

/// Parses one challenge value (`Digest realm="…", nonce="…", …`). Unknown params
/// (e.g. `domain`) are ignored.
///
/// # Errors
/// [`AuthError::UnsupportedScheme`] for a non-Digest scheme,
/// [`AuthError::UnsupportedAlgorithm`] for an algorithm other than MD5 and
/// SHA-256 (a client then tries the next challenge, RFC 8760 §2.4), and the
/// syntax errors of [`parse_authorization`].
pub fn parse_challenge(value: &str) -> Result<Challenge, AuthError> {
    if value.len() > MAX_HEADER_LEN {
        return Err(AuthError::HeaderTooLong(value.len()));
    }
    let mut cur = Cursor { s: value, pos: 0 };
    cur.skip_lws();
    if !cur.token().eq_ignore_ascii_case("Digest") {
        return Err(AuthError::UnsupportedScheme);
    }
    let values = auth_params(&mut cur, &CHALLENGE_PARAMS)?;
    let [realm, nonce, algorithm, qop, opaque, stale] = values;
    Ok(Challenge {
        realm: realm.ok_or(AuthError::MissingParam("realm"))?,
        nonce: nonce.ok_or(AuthError::MissingParam("nonce"))?,
        algorithm: Algorithm::from_param(algorithm.as_deref())?,
        // qop-options is a quoted, comma-separated list (RFC 7616 §3.3)
        qop_auth: qop.is_some_and(|q| q.split(',').any(|o| o.trim().eq_ignore_ascii_case("auth"))),
        opaque,
        stale: stale.is_some_and(|s| s.eq_ignore_ascii_case("true")),
    })
}

/// The first of `values` (challenge header values, in the server's order of
/// preference) that parses with an algorithm we support (RFC 8760 §2.4: the
/// client uses the first one it supports).
pub fn pick_challenge<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<Challenge> {
    values.into_iter().find_map(|v| parse_challenge(v).ok())
}

/// The `Authorization` value answering `ch` for `method` on `uri` (RFC 7616 §3.4):
/// `qop=auth` with nonce-count `nc` and `cnonce` when the server offered it, else
/// the RFC 2069 form. Verifies with [`verify`].
#[must_use]
pub fn authorization(
    ch: &Challenge,
    method: &str,
    uri: &str,
    username: &str,
    password: &str,
    cnonce: &str,
    nc: u32,
) -> String {
    let alg = ch.algorithm;
    let ha1 = ha1(alg, username, &ch.realm, password);
    let ha2 = alg.hex(&[method.as_bytes(), uri.as_bytes()]);
    let nc_hex = format!("{nc:08x}");
    let response = if ch.qop_auth {
        alg.hex(&[
            ha1.as_bytes(),
            ch.nonce.as_bytes(),
            nc_hex.as_bytes(),
            cnonce.as_bytes(),
            b"auth",
            ha2.as_bytes(),
        ])
    } else {
        alg.hex(&[ha1.as_bytes(), ch.nonce.as_bytes(), ha2.as_bytes()])
    };
    let mut s = String::with_capacity(256);
    s.push_str("Digest username=");
    push_quoted(&mut s, username);
    s.push_str(", realm=");
    push_quoted(&mut s, &ch.realm);
    s.push_str(", nonce=");
    push_quoted(&mut s, &ch.nonce);
    s.push_str(", uri=");
    push_quoted(&mut s, uri);
    s.push_str(", response=\"");
    s.push_str(&response);
    s.push_str("\", algorithm=");
    s.push_str(alg.as_str());
    if ch.qop_auth {
        s.push_str(", qop=auth, nc=");
        s.push_str(&nc_hex);
        s.push_str(", cnonce=");
        push_quoted(&mut s, cnonce);
    }
    if let Some(o) = &ch.opaque {
        s.push_str(", opaque=");
        push_quoted(&mut s, o);
    }
    s
}

/// Result of a nonce check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceCheck {
    /// Issued by this manager and not older than the TTL.
    Valid,
    /// Issued by this manager but too old, or no longer tracked (see
    /// [`NonceManager`]): challenge again with `stale=true`.
    Stale,
    /// Malformed, forged, or issued by another process (HMAC mismatch).
    Invalid,
    /// Nonce-count not above the highest already accepted for this nonce, or
    /// a second use of a nonce without nc.
    Replay,
}

type HmacSha256 = Hmac<Sha256>;

const NONCE_TS_LEN: usize = 8;
const NONCE_RAND_LEN: usize = 16;
const NONCE_BODY_LEN: usize = NONCE_TS_LEN + NONCE_RAND_LEN;
const NONCE_TAG_LEN: usize = 16;
/// Length of an issued nonce: hex of 8-byte issue time, 16 random bytes, and a
/// 16-byte (truncated) HMAC-SHA256 tag.
pub const NONCE_LEN: usize = 2 * (NONCE_BODY_LEN + NONCE_TAG_LEN);
const MAC_DOMAIN: &[u8] = b"tandem-sip-digest-nonce-v1";
/// Highest-nc marker for a nonce consumed without nc (RFC 2069 client).
const CONSUMED: u32 = u32::MAX;

/// (issue time in ms since the manager's epoch, random part).
type NonceKey = (u64, [u8; NONCE_RAND_LEN]);

#[derive(Default)]
struct Tracker {
    /// Highest accepted nc per nonce, ordered by issue time so expired
    /// entries and the oldest ones are at the front.
    seen: BTreeMap<NonceKey, u32>,
    /// Highest issue time of any removed entry. An untracked nonce issued at
    /// or before it may have been removed, so it is refused (reported Stale).
    floor: Option<u64>,
}

impl Tracker {
    fn remove_first(&mut self) {
        if let Some(((issued, _), _)) = self.seen.pop_first() {
            self.floor = Some(self.floor.map_or(issued, |f| f.max(issued)));
        }
    }

    fn prune(&mut self, now_ms: u64, ttl_ms: u64) {
        while let Some((&(issued, _), _)) = self.seen.first_key_value() {
            if issued.saturating_add(ttl_ms) >= now_ms {
                break;
            }
            self.remove_first();
        }
    }

    fn maybe_removed(&self, key: &NonceKey) -> bool {
        self.floor.is_some_and(|f| key.0 <= f) && !self.seen.contains_key(key)
    }
}

/// Issues stateless, self-authenticating nonces and tracks nonce-counts.
///
/// A nonce is the lowercase hex of: issue time (ms since the `now` given to
/// [`new`](Self::new), big-endian u64), 16 random bytes, and HMAC-SHA256 over
/// those (truncated to 16 bytes) under a random per-process secret. Validity
/// and age are thus checked without storage; nonces from another process
/// (or before a restart) are `Invalid`.
///
/// For replay protection the highest accepted nc of each *used* nonce is
/// kept, in a map bounded in two ways:
/// * entries older than the TTL are pruned on every [`accept_nc`](Self::accept_nc)
///   (and by [`prune`](Self::prune)) — their nonces are stale anyway;
/// * beyond `max_tracked` entries the oldest ones are evicted.
///
/// Evicting an entry would forget its nc, so the manager remembers the issue
/// time of the newest entry ever removed and refuses (as `Stale`) any nonce
/// issued at or before it that is not tracked. A legitimate client then just
/// gets `stale=true` and retries with a new nonce; replays are never admitted.
/// Only verified requests create entries, so filling the map requires valid
/// credentials.
///
/// nc must strictly increase per nonce; requests a client sends concurrently
/// with the same nonce that arrive out of order are refused (the client
/// recovers via the stale challenge).
pub struct NonceManager {
    secret: [u8; 32],
    epoch: Instant,
    ttl: Duration,
    max_tracked: usize,
    tracker: Mutex<Tracker>,
}

impl fmt::Debug for NonceManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NonceManager")
            .field("ttl", &self.ttl)
            .field("max_tracked", &self.max_tracked)
            .field("tracked", &self.tracked())
            .finish_non_exhaustive()
    }
}

impl NonceManager {
    /// A manager whose nonces live for `ttl`, tracking at most
    /// [`DEFAULT_MAX_TRACKED_NONCES`] nonces.
    #[must_use]
    pub fn new(ttl: Duration, now: Instant) -> Self {
        Self::with_max_tracked(ttl, now, DEFAULT_MAX_TRACKED_NONCES)
    }

    /// Like [`new`](Self::new) with an explicit cap (at least 1) on tracked nonces.
    #[must_use]
    pub fn with_max_tracked(ttl: Duration, now: Instant, max_tracked: usize) -> Self {
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        Self {
            secret,
            epoch: now,
            ttl,
            max_tracked: max_tracked.max(1),
            tracker: Mutex::new(Tracker::default()),
        }
    }

    /// The nonce lifetime.
    #[must_use]
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Number of nonces currently tracked for nc replay protection.
    #[must_use]
    pub fn tracked(&self) -> usize {
        self.tracker.lock().seen.len()
    }

    /// Issues a fresh nonce ([`NONCE_LEN`] lowercase hex chars).
    #[must_use]
    pub fn issue(&self, now: Instant) -> String {
        let mut body = [0u8; NONCE_BODY_LEN];
        body[..NONCE_TS_LEN].copy_from_slice(&self.millis(now).to_be_bytes());
        rand::rng().fill_bytes(&mut body[NONCE_TS_LEN..]);
        let tag = self.mac(&body).finalize().into_bytes();
        let mut out = String::with_capacity(NONCE_LEN);
        out.push_str(&hex::encode(body));
        out.push_str(&hex::encode(&tag[..NONCE_TAG_LEN]));
        out
    }

    /// Step 1: validity and staleness, no state change. Never returns `Replay`.
    /// Safe to call before the digest is verified.
    #[must_use]
    pub fn check_fresh(&self, nonce: &str, now: Instant) -> NonceCheck {
        let Some(key) = self.decode(nonce) else {
            return NonceCheck::Invalid;
        };
        if self.is_stale(key.0, now) || self.tracker.lock().maybe_removed(&key) {
            return NonceCheck::Stale;
        }
        NonceCheck::Valid
    }

    /// Step 3, only after [`verify`] succeeded: records the use of `nonce`
    /// with `nc` (`DigestResponse::nc`). Returns false — and records nothing
    /// — if the nonce is not valid and fresh, if `nc` is not greater than the
    /// highest accepted so far, if a nonce without nc was already used in any
    /// way, or if a nonce with nc was already used without one.
    pub fn accept_nc(&self, nonce: &str, nc: Option<u32>, now: Instant) -> bool {
        let Some(key) = self.decode(nonce) else {
            return false;
        };
        if self.is_stale(key.0, now) || nc == Some(0) {
            return false;
        }
        let mut t = self.tracker.lock();
        t.prune(self.millis(now), self.ttl_millis());
        if let Some(highest) = t.seen.get_mut(&key) {
            return match nc {
                Some(n) if n > *highest => {
                    *highest = n;
                    true
                }
                _ => false,
            };
        }
        if t.maybe_removed(&key) {
            return false;
        }
        t.seen.insert(key, nc.unwrap_or(CONSUMED));
        while t.seen.len() > self.max_tracked {
            t.remove_first();
        }
        // If the new entry was itself the oldest it was just evicted.
        t.seen.contains_key(&key)
    }

    /// [`check_fresh`](Self::check_fresh) then [`accept_nc`](Self::accept_nc)
    /// (a refusal of the latter is reported as `Replay`). Records state: call
    /// only after the digest verified.
    pub fn check(&self, nonce: &str, nc: Option<u32>, now: Instant) -> NonceCheck {
        match self.check_fresh(nonce, now) {
            NonceCheck::Valid if self.accept_nc(nonce, nc, now) => NonceCheck::Valid,
            NonceCheck::Valid => NonceCheck::Replay,
            other => other,
        }
    }

    /// Drops tracked nonces older than the TTL (also done by `accept_nc`).
    pub fn prune(&self, now: Instant) {
        self.tracker
            .lock()
            .prune(self.millis(now), self.ttl_millis());
    }

    fn millis(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    fn ttl_millis(&self) -> u64 {
        u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX)
    }

    fn is_stale(&self, issued_ms: u64, now: Instant) -> bool {
        self.millis(now).saturating_sub(issued_ms) > self.ttl_millis()
    }

    fn mac(&self, body: &[u8]) -> HmacSha256 {
        let mut mac =
            HmacSha256::new_from_slice(&self.secret).expect("HMAC accepts keys of any length");
        mac.update(MAC_DOMAIN);
        mac.update(body);
        mac
    }

    /// Decodes and authenticates a nonce; None if malformed or forged.
    fn decode(&self, nonce: &str) -> Option<NonceKey> {
        if nonce.len() != NONCE_LEN {
            return None;
        }
        let mut bin = [0u8; NONCE_BODY_LEN + NONCE_TAG_LEN];
        hex::decode_to_slice(nonce, &mut bin).ok()?;
        let (body, tag) = bin.split_at(NONCE_BODY_LEN);
        self.mac(body).verify_truncated_left(tag).ok()?;
        let (ts, rand) = body.split_at(NONCE_TS_LEN);
        Some((
            u64::from_be_bytes(ts.try_into().ok()?),
            rand.try_into().ok()?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RFC7616_NONCE: &str = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v";
    const RFC7616_CNONCE: &str = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ";

    fn rfc7616(algorithm: Algorithm, response: &str) -> DigestResponse {
        DigestResponse {
            username: "Mufasa".into(),
            realm: "http-auth@example.org".into(),
            nonce: RFC7616_NONCE.into(),
            uri: "/dir/index.html".into(),
            response: response.into(),
            algorithm,
            cnonce: Some(RFC7616_CNONCE.into()),
            nc: Some(1),
            qop: Some("auth".into()),
            opaque: Some("FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS".into()),
        }
    }

    /// What a client computes (qop=auth when nc is given, else RFC 2069).
    #[allow(clippy::too_many_arguments)]
    fn client_response(
        alg: Algorithm,
        user: &str,
        realm: &str,
        password: &str,
        method: &str,
        uri: &str,
        nonce: &str,
        nc: Option<u32>,
    ) -> String {
        let ha1 = ha1(alg, user, realm, password);
        let ha2 = alg.hex(&[method.as_bytes(), uri.as_bytes()]);
        match nc {
            Some(nc) => alg.hex(&[
                ha1.as_bytes(),
                nonce.as_bytes(),
                format!("{nc:08x}").as_bytes(),
                b"0a4f113b",
                b"auth",
                ha2.as_bytes(),
            ]),
            None => alg.hex(&[ha1.as_bytes(), nonce.as_bytes(), ha2.as_bytes()]),
        }
    }

    fn authorization(alg: Algorithm, nonce: &str, nc: Option<u32>, password: &str) -> String {
        let uri = "sip:tandem.example";
        let r = client_response(
            alg,
            "alice",
            "tandem.example",
            password,
            "REGISTER",
            uri,
            nonce,
            nc,
        );
        let mut s = format!(
            "Digest username=\"alice\", realm=\"tandem.example\", nonce=\"{nonce}\", \
             uri=\"{uri}\", response=\"{r}\", algorithm={}",
            alg.as_str()
        );
        if let Some(nc) = nc {
            s.push_str(&format!(", qop=auth, nc={nc:08x}, cnonce=\"0a4f113b\""));
        }
        s
    }

    // ---- digest vectors -------------------------------------------------

    #[test]
    fn rfc2617_md5_vector() {
        let v = "Digest username=\"Mufasa\",
                 realm=\"testrealm@host.com\",
                 nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\",
                 uri=\"/dir/index.html\",
                 qop=auth,
                 nc=00000001,
                 cnonce=\"0a4f113b\",
                 response=\"6629fae49393a05397450978507c4ef1\",
                 opaque=\"5ccc069c403ebaf9f0171e9517f40e41\"";
        let r = parse_authorization(v).unwrap();
        assert_eq!(r.algorithm, Algorithm::Md5);
        assert_eq!(r.nc, Some(1));
        assert!(verify(&r, "GET", "Circle Of Life"));
        assert!(!verify(&r, "GET", "Circle of Life"));
    }

    #[test]
    fn rfc7616_md5_vector() {
        let r = rfc7616(Algorithm::Md5, "8ca523f5e9506fed4657c9700eebdbec");
        assert!(verify(&r, "GET", "Circle of Life"));
    }

    #[test]
    fn rfc7616_sha256_vector() {
        let r = rfc7616(
            Algorithm::Sha256,
            "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
        );
        assert!(verify(&r, "GET", "Circle of Life"));
        // Same response claimed under the other algorithm fails (length).
        let mut md5 = r.clone();
        md5.algorithm = Algorithm::Md5;
        assert!(!verify(&md5, "GET", "Circle of Life"));
    }

    #[test]
    fn rfc7616_header_parses_and_verifies() {
        let v = "Digest username=\"Mufasa\",\r\n       realm=\"http-auth@example.org\",\r\n       \
                 uri=\"/dir/index.html\",\r\n       algorithm=SHA-256,\r\n       \
                 nonce=\"7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v\",\r\n       \
                 nc=00000001,\r\n       \
                 cnonce=\"f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ\",\r\n       \
                 qop=auth,\r\n       \
                 response=\"753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1\",\r\n       \
                 opaque=\"FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\"";
        let r = parse_authorization(v).unwrap();
        let mut expected = rfc7616(
            Algorithm::Sha256,
            "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
        );
        assert_eq!(r, expected);
        assert!(verify(&r, "GET", "Circle of Life"));
        expected.response = expected.response.to_ascii_uppercase();
        assert!(verify(&expected, "GET", "Circle of Life"));
    }

    #[test]
    fn rfc2069_form_without_qop() {
        // H(HA1:nonce:HA2) for the RFC 2617 example values, computed
        // independently (Python hashlib). The response printed in RFC 2069
        // itself is known to be wrong (errata).
        let v = "Digest username=\"Mufasa\", realm=\"testrealm@host.com\", \
                 nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\", uri=\"/dir/index.html\", \
                 response=\"670fd8c2df070c60b045671b8b24ff02\"";
        let r = parse_authorization(v).unwrap();
        assert_eq!(
            (r.qop.as_deref(), r.nc, r.cnonce.as_deref()),
            (None, None, None)
        );
        assert!(verify(&r, "GET", "Circle Of Life"));
        assert!(!verify(&r, "GET", "Circle of Life"));
    }

    #[test]
    fn uppercase_hex_response_accepted() {
        let r = rfc7616(Algorithm::Md5, "8CA523F5E9506FED4657C9700EEBDBEC");
        assert!(verify(&r, "GET", "Circle of Life"));
    }

    #[test]
    fn uppercase_nc_client_accepted() {
        // Computed with Python hashlib; clients hash nc as sent.
        let base = |nc: &str, response: &str| {
            format!(
                "Digest username=\"alice\", realm=\"tandem.example\", nonce=\"abc123\", \
                 uri=\"sip:tandem.example\", algorithm=SHA-256, qop=auth, nc={nc}, \
                 cnonce=\"xyz\", response=\"{response}\""
            )
        };
        let lower = base(
            "0000000a",
            "a5174ea37dd83068e51aaa50c29bf6152402974bb42b2461cdbe6ad98d12a074",
        );
        let upper = base(
            "0000000A",
            "844360db47503beeb6ec56fdd0281d0abf4666841d91ab262fc75c98d892392d",
        );
        for v in [lower, upper] {
            let r = parse_authorization(&v).unwrap();
            assert_eq!(r.nc, Some(10));
            assert!(verify(&r, "REGISTER", "s3cret"));
            assert!(!verify(&r, "REGISTER", "s3cret!"));
        }
    }

    #[test]
    fn wrong_inputs_fail() {
        let r = rfc7616(
            Algorithm::Sha256,
            "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
        );
        assert!(!verify(&r, "GET", "circle of life"));
        assert!(!verify(&r, "GET", ""));
        assert!(!verify(&r, "POST", "Circle of Life"));
        let mut m = r.clone();
        m.uri = "/dir/index.htm".into();
        assert!(!verify(&m, "GET", "Circle of Life"));
        let mut m = r.clone();
        m.nc = Some(2);
        assert!(!verify(&m, "GET", "Circle of Life"));
        let mut m = r.clone();
        m.cnonce = Some("x".into());
        assert!(!verify(&m, "GET", "Circle of Life"));
        let mut m = r.clone();
        m.username = "mufasa".into();
        assert!(!verify(&m, "GET", "Circle of Life"));
        let mut m = r.clone();
        m.qop = Some("auth-int".into());
        assert!(!verify(&m, "GET", "Circle of Life"));
        let mut m = r.clone();
        m.qop = None; // qop removed but nc/cnonce kept: inconsistent
        assert!(!verify(&m, "GET", "Circle of Life"));
        for bad in [
            "",
            "zz",
            &r.response[..62],
            format!("{}00", r.response).as_str(),
        ] {
            let mut m = r.clone();
            m.response = bad.to_string();
            assert!(!verify(&m, "GET", "Circle of Life"));
        }
        let mut m = r.clone();
        m.response = format!("{}g", &r.response[..63]);
        assert!(!verify(&m, "GET", "Circle of Life"));
    }

    #[test]
    fn verify_with_stored_ha1() {
        let r = rfc7616(
            Algorithm::Sha256,
            "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
        );
        let h = ha1(
            Algorithm::Sha256,
            "Mufasa",
            "http-auth@example.org",
            "Circle of Life",
        );
        assert!(verify_ha1(&r, "GET", &h));
        assert!(verify_ha1(&r, "GET", &h.to_ascii_uppercase()));
        let md5 = ha1(
            Algorithm::Md5,
            "Mufasa",
            "http-auth@example.org",
            "Circle of Life",
        );
        assert!(!verify_ha1(&r, "GET", &md5));
        assert!(!verify_ha1(&r, "GET", &format!("{}x", &h[..63])));
    }

    // ---- algorithm / challenge -----------------------------------------

    #[test]
    fn algorithm_tokens() {
        assert_eq!(Algorithm::parse("MD5"), Ok(Algorithm::Md5));
        assert_eq!(Algorithm::parse("md5"), Ok(Algorithm::Md5));
        assert_eq!("sha-256".parse::<Algorithm>(), Ok(Algorithm::Sha256));
        assert_eq!(Algorithm::parse("SHA-256"), Ok(Algorithm::Sha256));
        assert_eq!(Algorithm::from_param(None), Ok(Algorithm::Md5));
        assert_eq!(Algorithm::default(), Algorithm::Md5);
        for bad in ["MD5-sess", "SHA-256-sess", "SHA-512-256", "SHA256", ""] {
            assert!(matches!(
                Algorithm::parse(bad),
                Err(AuthError::UnsupportedAlgorithm(_))
            ));
        }
        for a in OFFERED_ALGORITHMS {
            assert_eq!(Algorithm::parse(a.as_str()), Ok(a));
            assert_eq!(a.to_string(), a.as_str());
        }
    }

    #[test]
    fn challenge_format() {
        assert_eq!(
            challenge("tandem.example", "abc", Algorithm::Sha256, false),
            "Digest realm=\"tandem.example\", nonce=\"abc\", algorithm=SHA-256, qop=\"auth\""
        );
        assert_eq!(
            challenge("tandem.example", "abc", Algorithm::Md5, true),
            "Digest realm=\"tandem.example\", nonce=\"abc\", algorithm=MD5, qop=\"auth\", stale=true"
        );
        assert_eq!(
            challenge("a\"b\\c\r\nX: y", "n", Algorithm::Md5, false),
            "Digest realm=\"a\\\"b\\\\cX: y\", nonce=\"n\", algorithm=MD5, qop=\"auth\""
        );
        let [first, second] = challenges("r", "n", true);
        assert!(first.contains("algorithm=SHA-256") && first.ends_with("stale=true"));
        assert!(second.contains("algorithm=MD5"));
    }

    // ---- parsing ---------------------------------------------------------

    const MIN: &str = "username=\"u\", realm=\"r\", nonce=\"n\", uri=\"sip:x\", response=\"00\"";

    #[test]
    fn parse_odd_lws_and_quoting() {
        let v = " \tdIgEsT   USERNAME = \"bo\\b \\\"the\\\" \\\\ builder\" ,realm=\t\"ex\u{e9}mple\"  ,, \
                 Nonce=\"abc,def=\"\r\n , uri =\"sip:bob@example.com;transport=tcp\",\
                 response=\"DEADBEEF\",Algorithm=sha-256 , qop=\"auth\",nc=000000Ff ,\
                 cnonce=\"\" , opaque=token-value, foo=bar, baz=\"q, \\\"x\\\"\", ";
        let r = parse_authorization(v).unwrap();
        assert_eq!(r.username, "bob \"the\" \\ builder");
        assert_eq!(r.realm, "ex\u{e9}mple");
        assert_eq!(r.nonce, "abc,def=");
        assert_eq!(r.uri, "sip:bob@example.com;transport=tcp");
        assert_eq!(r.response, "DEADBEEF");
        assert_eq!(r.algorithm, Algorithm::Sha256);
        assert_eq!(r.qop.as_deref(), Some("auth"));
        assert_eq!(r.nc, Some(255));
        assert_eq!(r.cnonce.as_deref(), Some(""));
        assert_eq!(r.opaque.as_deref(), Some("token-value"));
    }

    #[test]
    fn parse_minimal() {
        let r = parse_authorization(&format!("Digest {MIN}")).unwrap();
        assert_eq!(r.algorithm, Algorithm::Md5);
        assert_eq!((r.cnonce, r.nc, r.qop, r.opaque), (None, None, None, None));
    }

    #[test]
    fn parse_errors() {
        use AuthError::*;
        let p = parse_authorization;
        assert_eq!(
            p("Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="),
            Err(UnsupportedScheme)
        );
        assert_eq!(p(&format!("Digestx {MIN}")), Err(UnsupportedScheme));
        assert!(matches!(p(""), Err(Malformed(_))));
        assert!(matches!(p("   "), Err(Malformed(_))));
        assert!(matches!(p("\"Digest\" a=b"), Err(Malformed(_))));
        assert!(matches!(p("Digest,username=\"u\""), Err(Malformed(_))));
        assert_eq!(p("Digest"), Err(MissingParam("username")));
        for (i, name) in ["username", "realm", "nonce", "uri", "response"]
            .iter()
            .enumerate()
        {
            let v: Vec<&str> = MIN
                .split(", ")
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, s)| s)
                .collect();
            assert_eq!(
                p(&format!("Digest {}", v.join(", "))),
                Err(MissingParam(name))
            );
        }
        assert_eq!(
            p(&format!("Digest {MIN}, Nonce=\"m\"")),
            Err(DuplicateParam("nonce"))
        );
        assert_eq!(
            p(&format!("Digest {MIN}, opaque=a, OPAQUE=b")),
            Err(DuplicateParam("opaque"))
        );
        assert!(matches!(
            p(&format!("Digest {MIN}, opaque=\"abc")),
            Err(Malformed(_))
        ));
        assert!(matches!(
            p(&format!("Digest {MIN}, opaque=\"abc\\")),
            Err(Malformed(_))
        ));
        assert!(matches!(
            p(&format!("Digest {MIN}, opaque=\"a\u{1}b\"")),
            Err(Malformed(_))
        ));
        assert!(matches!(
            p(&format!("Digest {MIN}, opaque=\"a\\\u{e9}\"")),
            Err(Malformed(_))
        ));
        assert!(matches!(
            p(&format!("Digest {MIN}, opaque")),
            Err(Malformed(_))
        ));
        assert!(matches!(
            p(&format!("Digest {MIN}, opaque=")),
            Err(Malformed(_))
        ));
        assert!(matches!(p(&format!("Digest {MIN}, =x")), Err(Malformed(_))));
        assert!(matches!(
            p(&format!("Digest {MIN}, opaque=a b")),
            Err(Malformed(_))
        ));
        assert!(matches!(
            p(&format!("Digest {MIN}; opaque=a")),
            Err(Malformed(_))
        ));
        assert!(matches!(
            p(&format!("Digest {MIN}, foo=sip:x")),
            Err(Malformed(_))
        ));
        assert_eq!(
            p(&format!("Digest {MIN}, uri=sip")),
            Err(DuplicateParam("uri"))
        );
        assert_eq!(
            p(&format!("Digest {MIN}, algorithm=MD5-sess")),
            Err(UnsupportedAlgorithm("MD5-sess".into()))
        );
        let q = |extra: &str| p(&format!("Digest {MIN}, {extra}"));
        assert_eq!(
            q("qop=auth, cnonce=\"c\", nc=00000001").map(|r| r.nc),
            Ok(Some(1))
        );
        assert_eq!(
            q("qop=auth, cnonce=\"c\", nc=ffffffff").map(|r| r.nc),
            Ok(Some(u32::MAX))
        );
        for nc in [
            "0000001",
            "000000001",
            "0000000g",
            "+0000001",
            "-0000001",
            "00000000",
            "\"\"",
        ] {
            assert_eq!(
                q(&format!("qop=auth, cnonce=\"c\", nc={nc}")),
                Err(InvalidNc),
                "{nc}"
            );
        }
        assert_eq!(q("qop=auth, nc=00000001"), Err(MissingParam("cnonce")));
        assert_eq!(q("qop=auth, cnonce=c"), Err(MissingParam("nc")));
        assert!(matches!(q("nc=00000001"), Err(Malformed(_))));
        assert!(matches!(q("cnonce=\"c\""), Err(Malformed(_))));
    }

    #[test]
    fn parse_length_bounds() {
        use AuthError::*;
        let long = "a".repeat(MAX_PARAM_LEN);
        let ok = parse_authorization(&format!("Digest {MIN}, opaque=\"{long}\"")).unwrap();
        assert_eq!(ok.opaque.unwrap().len(), MAX_PARAM_LEN);
        let long = "a".repeat(MAX_PARAM_LEN + 1);
        assert_eq!(
            parse_authorization(&format!("Digest {MIN}, opaque=\"{long}\"")),
            Err(ParamTooLong("opaque".into()))
        );
        assert_eq!(
            parse_authorization(&format!("Digest {MIN}, opaque={long}")),
            Err(ParamTooLong("opaque".into()))
        );
        assert!(matches!(
            parse_authorization(&format!("Digest {MIN}, {long}=1")),
            Err(ParamTooLong(n)) if n.len() == 32
        ));
        let huge = format!("Digest {MIN}, opaque=\"{}\"", "a".repeat(MAX_HEADER_LEN));
        assert_eq!(parse_authorization(&huge), Err(HeaderTooLong(huge.len())));
        let many: String = (0..MAX_PARAMS).map(|i| format!(", x{i}=1")).collect();
        assert_eq!(
            parse_authorization(&format!("Digest {MIN}{many}")),
            Err(TooManyParams)
        );
        let fits: String = (0..MAX_PARAMS - 5).map(|i| format!(", x{i}=1")).collect();
        assert!(parse_authorization(&format!("Digest {MIN}{fits}")).is_ok());
        let commas = ",".repeat(1900);
        assert!(parse_authorization(&format!("Digest {commas}{MIN}{commas}")).is_ok());
    }

    /// Tiny deterministic PRNG for the no-panic test.
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn garbage_never_panics() {
        let valid = authorization(Algorithm::Sha256, "n\u{e9}once", Some(7), "pw");
        for (i, _) in valid.char_indices() {
            let _ = parse_authorization(&valid[..i]);
            let _ = parse_authorization(&valid[i..]);
        }
        let alphabet: Vec<char> = "Digest username=\"\\, \t\r\n=abc0f9\u{e9}\u{1f600}\u{0}qopnc;"
            .chars()
            .collect();
        let m = NonceManager::new(Duration::from_secs(30), Instant::now());
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        for _ in 0..3000 {
            let len = (rng.next() % 120) as usize;
            let mut s = String::from(if rng.next() & 1 == 0 { "Digest " } else { "" });
            for _ in 0..len {
                s.push(alphabet[(rng.next() % alphabet.len() as u64) as usize]);
            }
            if let Ok(r) = parse_authorization(&s) {
                let _ = verify(&r, "REGISTER", "pw");
            }
            assert_eq!(m.check_fresh(&s, Instant::now()), NonceCheck::Invalid);
        }
    }

    // ---- nonces ----------------------------------------------------------

    const TTL: Duration = Duration::from_secs(30);

    #[test]
    fn nonce_format_and_uniqueness() {
        let t0 = Instant::now();
        let m = NonceManager::new(TTL, t0);
        let a = m.issue(t0);
        let b = m.issue(t0);
        assert_ne!(a, b);
        assert_eq!(a.len(), NONCE_LEN);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_eq!(m.check_fresh(&a, t0), NonceCheck::Valid);
        // Usable inside a challenge and back through the parser.
        let c = challenge("r", &a, Algorithm::Sha256, false);
        assert!(c.contains(&format!("nonce=\"{a}\"")));
    }

    #[test]
    fn nonce_staleness_virtual_time() {
        let t0 = Instant::now();
        let m = NonceManager::new(TTL, t0);
        let t1 = t0 + Duration::from_secs(5);
        let n = m.issue(t1);
        assert_eq!(m.check_fresh(&n, t1), NonceCheck::Valid);
        assert_eq!(m.check_fresh(&n, t1 + TTL), NonceCheck::Valid);
        assert_eq!(
            m.check_fresh(&n, t1 + TTL + Duration::from_secs(1)),
            NonceCheck::Stale
        );
        assert_eq!(
            m.check(&n, Some(1), t1 + TTL + Duration::from_secs(1)),
            NonceCheck::Stale
        );
        assert!(!m.accept_nc(&n, Some(1), t1 + TTL + Duration::from_secs(1)));
        assert_eq!(m.tracked(), 0);
        // A `now` earlier than issue time (racing threads) counts as age 0.
        assert_eq!(m.check_fresh(&n, t0), NonceCheck::Valid);
    }

    #[test]
    fn forged_or_truncated_nonce_invalid() {
        let t0 = Instant::now();
        let m = NonceManager::new(TTL, t0);
        let n = m.issue(t0);
        let flip = |i: usize| {
            let mut b = n.clone().into_bytes();
            b[i] = if b[i] == b'0' { b'1' } else { b'0' };
            String::from_utf8(b).unwrap()
        };
        // Timestamp (e.g. extending the lifetime), random part, tag.
        for i in [0, 15, 16, 40, 47, 48, NONCE_LEN - 1] {
            assert_eq!(m.check_fresh(&flip(i), t0), NonceCheck::Invalid, "{i}");
            assert!(!m.accept_nc(&flip(i), Some(1), t0));
        }
        for bad in [
            "",
            &n[..NONCE_LEN - 2],
            &n[..NONCE_LEN - 1],
            format!("{n}00").as_str(),
            format!("{}zz", &n[..NONCE_LEN - 2]).as_str(),
            format!("{}\u{e9}", &n[..NONCE_LEN - 2]).as_str(),
            "0".repeat(NONCE_LEN).as_str(),
            RFC7616_NONCE,
        ] {
            assert_eq!(m.check_fresh(bad, t0), NonceCheck::Invalid, "{bad}");
            assert_eq!(m.check(bad, Some(1), t0), NonceCheck::Invalid, "{bad}");
        }
        // Another process (another secret) cannot mint nonces for us.
        let other = NonceManager::new(TTL, t0);
        assert_eq!(m.check_fresh(&other.issue(t0), t0), NonceCheck::Invalid);
        assert_eq!(m.tracked(), 0);
        // Uppercase hex of a genuine nonce is the same nonce.
        assert_eq!(
            m.check_fresh(&n.to_ascii_uppercase(), t0),
            NonceCheck::Valid
        );
    }

    #[test]
    fn nc_must_increase() {
        let t0 = Instant::now();
        let m = NonceManager::new(TTL, t0);
        let n = m.issue(t0);
        assert_eq!(m.check_fresh(&n, t0), NonceCheck::Valid);
        assert!(m.accept_nc(&n, Some(1), t0));
        assert!(!m.accept_nc(&n, Some(1), t0));
        assert!(m.accept_nc(&n, Some(2), t0));
        assert!(m.accept_nc(&n, Some(5), t0));
        assert!(!m.accept_nc(&n, Some(3), t0));
        assert!(!m.accept_nc(&n, Some(0), t0));
        assert!(!m.accept_nc(&n, None, t0));
        assert_eq!(m.check(&n, Some(5), t0), NonceCheck::Replay);
        assert_eq!(m.check(&n, Some(6), t0), NonceCheck::Valid);
        // check_fresh never records anything.
        assert_eq!(m.check_fresh(&n, t0), NonceCheck::Valid);
        assert!(m.accept_nc(&n, Some(7), t0));
        // Independent nonces have independent counters.
        let n2 = m.issue(t0);
        assert!(m.accept_nc(&n2, Some(1), t0));
        assert_eq!(m.tracked(), 2);
    }

    #[test]
    fn nonce_without_nc_single_use() {
        let t0 = Instant::now();
        let m = NonceManager::new(TTL, t0);
        let n = m.issue(t0);
        assert_eq!(m.check(&n, None, t0), NonceCheck::Valid);
        assert_eq!(m.check(&n, None, t0), NonceCheck::Replay);
        assert!(!m.accept_nc(&n, Some(1), t0));
        assert!(!m.accept_nc(&n, Some(u32::MAX), t0));
        // Used with nc first, then without: refused.
        let n2 = m.issue(t0);
        assert!(m.accept_nc(&n2, Some(1), t0));
        assert!(!m.accept_nc(&n2, None, t0));
    }

    #[test]
    fn tracked_map_is_bounded_and_evictions_refuse_old_nonces() {
        let t0 = Instant::now();
        let m = NonceManager::with_max_tracked(TTL, t0, 4);
        let nonces: Vec<String> = (0..10u64)
            .map(|i| m.issue(t0 + Duration::from_millis(i)))
            .collect();
        let now = t0 + Duration::from_secs(1);
        for n in &nonces {
            assert!(m.accept_nc(n, Some(1), now));
            assert!(m.tracked() <= 4);
        }
        assert_eq!(m.tracked(), 4);
        // Evicted nonces are never replayable: refused and reported Stale.
        for n in &nonces[..6] {
            assert!(!m.accept_nc(n, Some(1), now));
            assert!(!m.accept_nc(n, Some(100), now));
            assert_eq!(m.check_fresh(n, now), NonceCheck::Stale);
        }
        // Tracked ones keep their counters.
        for n in &nonces[6..] {
            assert_eq!(m.check_fresh(n, now), NonceCheck::Valid);
            assert!(!m.accept_nc(n, Some(1), now));
            assert!(m.accept_nc(n, Some(2), now));
        }
        // Newly issued nonces still work.
        let fresh = m.issue(now);
        assert!(m.accept_nc(&fresh, Some(1), now));
        assert_eq!(m.tracked(), 4);
    }

    #[test]
    fn expired_entries_are_pruned() {
        let t0 = Instant::now();
        let m = NonceManager::new(TTL, t0);
        for _ in 0..100 {
            let n = m.issue(t0);
            assert!(m.accept_nc(&n, Some(1), t0));
        }
        assert_eq!(m.tracked(), 100);
        m.prune(t0 + TTL);
        assert_eq!(m.tracked(), 100);
        m.prune(t0 + TTL + Duration::from_millis(1));
        assert_eq!(m.tracked(), 0);
        // Pruning also happens on insert.
        let later = t0 + Duration::from_secs(10);
        for _ in 0..10 {
            let n = m.issue(t0 + TTL);
            assert!(m.accept_nc(&n, Some(1), t0 + TTL));
        }
        let n = m.issue(later + TTL + TTL);
        assert!(m.accept_nc(&n, Some(1), later + TTL + TTL));
        assert_eq!(m.tracked(), 1);
    }

    #[test]
    fn concurrent_same_nc_accepted_once() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<NonceManager>();
        let t0 = Instant::now();
        let m = std::sync::Arc::new(NonceManager::new(TTL, t0));
        let n = m.issue(t0);
        let wins: usize = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| s.spawn(|| (1..=50).filter(|&nc| m.accept_nc(&n, Some(nc), t0)).count()))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        // Every nc value is accepted at most once overall.
        assert!((1..=50).contains(&wins));
        assert!(!m.accept_nc(&n, Some(50), t0));
        assert!(format!("{m:?}").contains("tracked: 1"));
    }

    #[test]
    fn full_registration_flow() {
        let t0 = Instant::now();
        let nonces = NonceManager::new(TTL, t0);
        let nonce = nonces.issue(t0);
        for alg in OFFERED_ALGORITHMS {
            let n = nonces.issue(t0);
            // Wrong password: verify fails, nc not consumed.
            let bad = parse_authorization(&authorization(alg, &n, Some(1), "wrong")).unwrap();
            assert_eq!(nonces.check_fresh(&bad.nonce, t0), NonceCheck::Valid);
            assert!(!verify(&bad, "REGISTER", "pw"));
            // Right password, same nc: accepted.
            let good = parse_authorization(&authorization(alg, &n, Some(1), "pw")).unwrap();
            assert_eq!(good.algorithm, alg);
            assert_eq!(nonces.check_fresh(&good.nonce, t0), NonceCheck::Valid);
            assert!(verify(&good, "REGISTER", "pw"));
            assert!(nonces.accept_nc(&good.nonce, good.nc, t0));
            // Replayed as is: digest still verifies, nc refused.
            assert!(verify(&good, "REGISTER", "pw"));
            assert!(!nonces.accept_nc(&good.nonce, good.nc, t0));
            // RFC 2069 client on the shared nonce: once.
            let old = parse_authorization(&authorization(alg, &nonce, None, "pw")).unwrap();
            assert!(verify(&old, "REGISTER", "pw"));
            let first = nonces.accept_nc(&old.nonce, old.nc, t0);
            assert_eq!(first, alg == Algorithm::Sha256);
        }
        // Later: stale nonce with a valid digest -> re-challenge with stale=true.
        let late = t0 + TTL + Duration::from_secs(1);
        let n = nonces.issue(t0);
        let r = parse_authorization(&authorization(Algorithm::Sha256, &n, Some(1), "pw")).unwrap();
        assert_eq!(nonces.check_fresh(&r.nonce, late), NonceCheck::Stale);
        assert!(verify(&r, "REGISTER", "pw"));
        assert!(challenge(
            "tandem.example",
            &nonces.issue(late),
            Algorithm::Sha256,
            true
        )
        .ends_with("stale=true"));
    }

    #[test]
    fn client_answers_each_supported_challenge_and_the_server_verifies_it() {
        for (alg, stale) in [(Algorithm::Md5, false), (Algorithm::Sha256, true)] {
            let value = challenge("tandem.local", "n0nce", alg, stale);
            let ch = parse_challenge(&value).unwrap();
            assert_eq!(ch.algorithm, alg);
            assert!(ch.qop_auth && ch.stale == stale, "{ch:?}");
            let auth = super::authorization(&ch, "REGISTER", "sip:h", "alice", "pw", "c0ffee", 3);
            let resp = parse_authorization(&auth).unwrap();
            assert_eq!(resp.nc, Some(3));
            assert!(verify(&resp, "REGISTER", "pw"), "{auth}");
            assert!(!verify(&resp, "REGISTER", "other"));
        }
    }

    #[test]
    fn client_picks_the_first_supported_challenge_and_handles_rfc2069_and_opaque() {
        let values = [
            "Digest realm=\"r\", nonce=\"x\", algorithm=SHA-512-256, qop=\"auth\"",
            "Basic realm=\"r\"",
            "Digest realm=\"r\", nonce=\"y\", opaque=\"op\", domain=\"sip:h\"",
        ];
        let ch = pick_challenge(values).unwrap();
        assert_eq!((ch.nonce.as_str(), ch.algorithm), ("y", Algorithm::Md5));
        assert!(!ch.qop_auth);
        let auth = super::authorization(&ch, "REGISTER", "sip:h", "bob", "pw", "c", 1);
        assert!(
            auth.contains("opaque=\"op\"") && !auth.contains("qop"),
            "{auth}"
        );
        let resp = parse_authorization(&auth).unwrap();
        assert!(verify(&resp, "REGISTER", "pw"));
        assert_eq!(
            parse_challenge("Digest nonce=\"n\""),
            Err(AuthError::MissingParam("realm"))
        );
        assert!(pick_challenge(["Digest realm=\"r\", nonce=\"n\", algorithm=MD5-sess"]).is_none());
    }
}
