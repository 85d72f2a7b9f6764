//! Authorization tokens and service tickets, signed with Ed25519. Owns their format, signing
//! and verification; pure functions of the text, the trusted keys and the time given (no
//! clock). Deciding what a verified token permits (provisioning, usage tokens) is the owner's.
//!
//! # Format
//! ```text
//! token  = base64url(claims JSON) "." base64url(signature)      (RFC 4648 §5, no padding)
//! signature = Ed25519(key, context || base64url(claims JSON))  (the ASCII bytes as sent)
//! context   = "rtpedge-token.v1."  for authorization tokens
//!             "rtpedge-ticket.v1." for service tickets
//! ```
//! Signing the encoded claims (as JWS does) means verification never depends on how the JSON
//! was serialized; the context string keeps a token from ever verifying as a ticket or the
//! other way round.
//!
//! Authorization token claims: `{"account": "acme", "services": ["qos-upgrade", "fork"],
//! "exp": 1767225600, "iat": 1767222000, "nonce": "…"}` (times in unix seconds).
//! Service ticket claims: `{"call_id": "…", "account": "acme", "service": "qos-upgrade" |
//! "add-party" | "split" | "fork", "params": {…}, "exp": …, "nonce": "…"}`.
//!
//! Keys are 32 bytes written as 64 hex digits or base64 (standard or URL-safe, padded or not):
//! public keys for [`Verifier`], private seeds for [`Signer`] (a 64-byte seed‖public key pair,
//! as libsodium stores it, is accepted too). A seed can be made with
//! `head -c32 /dev/urandom | od -An -tx1 | tr -d ' \n'`.

use std::{collections::HashMap, fmt, time::Duration};

use base64::{
    Engine as _,
    engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD},
};
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// Signing context of authorization tokens.
pub const TOKEN_CONTEXT: &[u8] = b"rtpedge-token.v1.";
/// Signing context of service tickets.
pub const TICKET_CONTEXT: &[u8] = b"rtpedge-ticket.v1.";
/// Longest token or ticket accepted, bytes (anything longer is refused unread).
pub const MAX_LEN: usize = 8192;

/// A service that can be inserted into a running call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Service {
    /// Higher DSCP class, higher rate limit.
    QosUpgrade,
    /// Splice a third leg.
    AddParty,
    /// Split a multi-party call into subgroups.
    Split,
    /// Fork media to a recorder.
    Fork,
}

impl Service {
    /// The spelling in claims.
    pub const fn as_str(self) -> &'static str {
        match self {
            Service::QosUpgrade => "qos-upgrade",
            Service::AddParty => "add-party",
            Service::Split => "split",
            Service::Fork => "fork",
        }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an authorization token says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenClaims {
    /// The account calls are set up for.
    pub account: String,
    /// Services the account may insert (names as in [`Service`], or others the operator
    /// defines).
    pub services: Vec<String>,
    /// Expiry, unix seconds (invalid from this second on).
    pub exp: u64,
    /// Issued at, unix seconds.
    pub iat: u64,
    /// Unique per token.
    pub nonce: String,
}

impl TokenClaims {
    /// Whether the token allows `service`.
    pub fn allows(&self, service: &str) -> bool {
        self.services.iter().any(|s| s == service)
    }
}

/// What a service ticket says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketClaims {
    /// The call to change.
    pub call_id: String,
    /// The account paying for it.
    pub account: String,
    /// What to insert.
    pub service: Service,
    /// Service parameters (e.g. `{"dscp": 46}`, `{"recorder": "192.0.2.9:4000"}`).
    #[serde(default)]
    pub params: serde_json::Map<String, serde_json::Value>,
    /// Expiry, unix seconds.
    pub exp: u64,
    /// Unique per ticket (see [`NonceCache`]).
    pub nonce: String,
}

/// Why a token, ticket or key was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Not `base64url.base64url`, bad base64, or claims that are not the expected JSON.
    #[error("malformed {what}: {detail}")]
    Malformed {
        /// `token` or `ticket`.
        what: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// No trusted key verifies the signature (a forged or altered text, or an unknown key).
    #[error("bad signature: no trusted key verifies it")]
    BadSignature,
    /// Past its expiry.
    #[error("expired at {exp} (now {now})")]
    Expired {
        /// Expiry, unix s.
        exp: u64,
        /// The time checked, unix s.
        now: u64,
    },
    /// Issued in the future (clock skew beyond the leeway, or a forged time).
    #[error("not valid yet: issued at {iat} (now {now})")]
    NotYetValid {
        /// Issued at, unix s.
        iat: u64,
        /// The time checked, unix s.
        now: u64,
    },
    /// For another account.
    #[error("issued for account {found:?}, not {expected:?}")]
    WrongAccount {
        /// The account of the request.
        expected: String,
        /// The account in the claims.
        found: String,
    },
    /// A ticket for another call.
    #[error("ticket for call {found:?}, not {expected:?}")]
    WrongCall {
        /// The call of the request.
        expected: String,
        /// The call in the ticket.
        found: String,
    },
    /// The service is not among those allowed.
    #[error("service {0} is not allowed")]
    ServiceNotAllowed(String),
    /// A ticket already used.
    #[error("ticket already used (nonce {0:?})")]
    Replayed(String),
    /// Too many live tickets remembered to accept another one safely.
    #[error("replay cache full")]
    ReplayCacheFull,
    /// A key text that is not a 32-byte key in hex or base64, or not a valid public key.
    #[error("bad key: {0}")]
    BadKey(String),
    /// A verifier needs at least one trusted key.
    #[error("no trusted keys configured")]
    NoKeys,
}

impl AuthError {
    /// A stable machine-readable code (for ng / HTTP error replies).
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Malformed { .. } => "malformed",
            AuthError::BadSignature => "bad-signature",
            AuthError::Expired { .. } => "expired",
            AuthError::NotYetValid { .. } => "not-yet-valid",
            AuthError::WrongAccount { .. } => "wrong-account",
            AuthError::WrongCall { .. } => "wrong-call",
            AuthError::ServiceNotAllowed(_) => "service-not-allowed",
            AuthError::Replayed(_) => "replayed",
            AuthError::ReplayCacheFull => "replay-cache-full",
            AuthError::BadKey(_) => "bad-key",
            AuthError::NoKeys => "no-keys",
        }
    }
}

fn malformed(what: &'static str, detail: impl Into<String>) -> AuthError {
    AuthError::Malformed {
        what,
        detail: detail.into(),
    }
}

/// Decodes 32 (or 64) key bytes from hex or any common base64 form.
fn key_bytes(text: &str) -> Result<Vec<u8>, AuthError> {
    let t = text.trim();
    if (t.len() == 64 || t.len() == 128) && t.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(t
            .as_bytes()
            .chunks_exact(2)
            .map(|p| match p {
                [hi, lo] => (hex_val(*hi) << 4) | hex_val(*lo),
                _ => 0,
            })
            .collect());
    }
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|e| e.decode(t).ok())
        .ok_or_else(|| AuthError::BadKey("neither 64 hex digits nor base64".into()))
}

fn hex_val(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        b'A'..=b'F' => b - b'A' + 10,
        _ => 0,
    }
}

/// Parses a trusted public key from hex or base64 text.
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, AuthError> {
    let bytes: [u8; 32] = key_bytes(text)?
        .try_into()
        .map_err(|v: Vec<u8>| AuthError::BadKey(format!("{} bytes, not 32", v.len())))?;
    VerifyingKey::from_bytes(&bytes)
        .map_err(|_| AuthError::BadKey("not a valid Ed25519 public key".into()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Verifies tokens and tickets against one or more trusted public keys (several during a key
/// rollover: any of them may have signed).
#[derive(Clone, Debug)]
pub struct Verifier {
    keys: Vec<VerifyingKey>,
    leeway_s: u64,
}

impl Verifier {
    /// A verifier trusting `keys` (at least one), no clock leeway.
    pub fn new(keys: Vec<VerifyingKey>) -> Result<Self, AuthError> {
        if keys.is_empty() {
            return Err(AuthError::NoKeys);
        }
        Ok(Self { keys, leeway_s: 0 })
    }

    /// A verifier from key texts (hex or base64), as the daemon's configuration holds them.
    pub fn from_key_texts<I, S>(texts: I) -> Result<Self, AuthError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let keys = texts
            .into_iter()
            .map(|t| parse_public_key(t.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(keys)
    }

    /// Tolerates clocks that differ by up to `leeway` (expiry and issue time).
    pub fn with_leeway(mut self, leeway: Duration) -> Self {
        self.leeway_s = leeway.as_secs();
        self
    }

    /// Verifies an authorization token at `now_unix` (seconds): signature, expiry, issue
    /// time; with `account`, that it names that account; with `service`, that it allows it.
    pub fn verify_token(
        &self,
        token: &str,
        now_unix: u64,
        account: Option<&str>,
        service: Option<&str>,
    ) -> Result<TokenClaims, AuthError> {
        let c: TokenClaims = self.open(token, TOKEN_CONTEXT, "token")?;
        self.check_exp(c.exp, now_unix)?;
        if c.iat > now_unix.saturating_add(self.leeway_s) {
            return Err(AuthError::NotYetValid {
                iat: c.iat,
                now: now_unix,
            });
        }
        if let Some(expected) = account.filter(|a| *a != c.account) {
            return Err(AuthError::WrongAccount {
                expected: expected.to_string(),
                found: c.account,
            });
        }
        if let Some(s) = service.filter(|s| !c.allows(s)) {
            return Err(AuthError::ServiceNotAllowed(s.to_string()));
        }
        Ok(c)
    }

    /// Verifies a service ticket for `call_id` of `account` at `now_unix`: signature, expiry,
    /// call and account; with `allowed` (the services of the call's authorization token), that
    /// the service is among them.
    pub fn verify_ticket(
        &self,
        ticket: &str,
        now_unix: u64,
        call_id: &str,
        account: &str,
        allowed: Option<&[String]>,
    ) -> Result<TicketClaims, AuthError> {
        let c: TicketClaims = self.open(ticket, TICKET_CONTEXT, "ticket")?;
        self.check_exp(c.exp, now_unix)?;
        if c.call_id != call_id {
            return Err(AuthError::WrongCall {
                expected: call_id.to_string(),
                found: c.call_id,
            });
        }
        if c.account != account {
            return Err(AuthError::WrongAccount {
                expected: account.to_string(),
                found: c.account,
            });
        }
        if let Some(allowed) = allowed
            && !allowed.iter().any(|s| s == c.service.as_str())
        {
            return Err(AuthError::ServiceNotAllowed(c.service.as_str().to_string()));
        }
        Ok(c)
    }

    fn check_exp(&self, exp: u64, now: u64) -> Result<(), AuthError> {
        if now >= exp.saturating_add(self.leeway_s) {
            return Err(AuthError::Expired { exp, now });
        }
        Ok(())
    }

    /// Splits, checks the signature, and only then parses the claims.
    fn open<T: DeserializeOwned>(
        &self,
        text: &str,
        context: &[u8],
        what: &'static str,
    ) -> Result<T, AuthError> {
        if text.len() > MAX_LEN {
            return Err(malformed(what, format!("longer than {MAX_LEN} bytes")));
        }
        let (payload, sig) = text
            .split_once('.')
            .ok_or_else(|| malformed(what, "expected base64url(claims).base64url(signature)"))?;
        if sig.contains('.') {
            return Err(malformed(what, "more than two parts"));
        }
        let sig: [u8; 64] = URL_SAFE_NO_PAD
            .decode(sig)
            .map_err(|e| malformed(what, format!("signature: {e}")))?
            .try_into()
            .map_err(|v: Vec<u8>| {
                malformed(what, format!("signature of {} bytes, not 64", v.len()))
            })?;
        let claims = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|e| malformed(what, format!("claims: {e}")))?;
        let sig = Signature::from_bytes(&sig);
        let msg = [context, payload.as_bytes()].concat();
        // verify_strict: no malleable signatures, no small-order keys.
        if !self
            .keys
            .iter()
            .any(|k| k.verify_strict(&msg, &sig).is_ok())
        {
            return Err(AuthError::BadSignature);
        }
        serde_json::from_slice(&claims).map_err(|e| malformed(what, format!("claims: {e}")))
    }
}

/// Signs tokens and tickets (tests, and operators' tooling; the authorization service is
/// normally a separate system holding the private key).
#[derive(Clone)]
pub struct Signer {
    key: SigningKey,
}

impl fmt::Debug for Signer {
    /// Never prints the private key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("public", &self.public_key_hex())
            .finish()
    }
}

impl Signer {
    /// From a 32-byte private seed.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self {
            key: SigningKey::from_bytes(&seed),
        }
    }

    /// From a private key text: a 32-byte seed, or a 64-byte seed‖public pair (whose public
    /// half must match), in hex or base64.
    pub fn from_key_text(text: &str) -> Result<Self, AuthError> {
        let bytes = key_bytes(text)?;
        match bytes.len() {
            32 | 64 => {
                let mut seed = [0u8; 32];
                seed.copy_from_slice(&bytes[..32]);
                let s = Self::from_seed(seed);
                if bytes.len() == 64 && bytes[32..] != s.key.verifying_key().to_bytes() {
                    return Err(AuthError::BadKey(
                        "public half does not match the seed".into(),
                    ));
                }
                Ok(s)
            }
            n => Err(AuthError::BadKey(format!("{n} bytes, not 32 or 64"))),
        }
    }

    /// The public key to give verifiers.
    pub fn public_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// The public key as 64 hex digits.
    pub fn public_key_hex(&self) -> String {
        hex(&self.public_key().to_bytes())
    }

    /// The public key as standard base64.
    pub fn public_key_base64(&self) -> String {
        STANDARD.encode(self.public_key().to_bytes())
    }

    /// A signed authorization token.
    pub fn sign_token(&self, claims: &TokenClaims) -> Result<String, AuthError> {
        self.seal(claims, TOKEN_CONTEXT, "token")
    }

    /// A signed service ticket.
    pub fn sign_ticket(&self, claims: &TicketClaims) -> Result<String, AuthError> {
        self.seal(claims, TICKET_CONTEXT, "ticket")
    }

    fn seal<T: Serialize>(
        &self,
        claims: &T,
        context: &[u8],
        what: &'static str,
    ) -> Result<String, AuthError> {
        let json = serde_json::to_vec(claims).map_err(|e| malformed(what, e.to_string()))?;
        let payload = URL_SAFE_NO_PAD.encode(json);
        let sig = self.key.sign(&[context, payload.as_bytes()].concat());
        Ok(format!(
            "{payload}.{}",
            URL_SAFE_NO_PAD.encode(sig.to_bytes())
        ))
    }
}

/// Remembers the nonces of tickets already used until they expire, so that a ticket inserts
/// its service once. Bounded: when full of live nonces, new tickets are refused
/// ([`AuthError::ReplayCacheFull`]) rather than forgetting a live one.
#[derive(Clone, Debug)]
pub struct NonceCache {
    seen: HashMap<String, u64>,
    max: usize,
}

impl NonceCache {
    /// A cache of at most `max` live nonces.
    pub fn new(max: usize) -> Self {
        Self {
            seen: HashMap::new(),
            max,
        }
    }

    /// Records `nonce` (valid until `exp`) at `now_unix`, or refuses it as a replay.
    pub fn check(&mut self, nonce: &str, exp: u64, now_unix: u64) -> Result<(), AuthError> {
        if self.seen.get(nonce).is_some_and(|e| *e > now_unix) {
            return Err(AuthError::Replayed(nonce.to_string()));
        }
        if self.seen.len() >= self.max {
            self.seen.retain(|_, e| *e > now_unix);
            if self.seen.len() >= self.max {
                return Err(AuthError::ReplayCacheFull);
            }
        }
        self.seen.insert(nonce.to_string(), exp);
        Ok(())
    }

    /// Forgets a nonce (its ticket was not used after all).
    pub fn forget(&mut self, nonce: &str) {
        self.seen.remove(nonce);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_767_222_000;

    fn signer(n: u8) -> Signer {
        Signer::from_seed([n; 32])
    }

    fn claims() -> TokenClaims {
        TokenClaims {
            account: "acme".into(),
            services: vec!["qos-upgrade".into(), "fork".into()],
            exp: NOW + 3600,
            iat: NOW - 10,
            nonce: "n-1".into(),
        }
    }

    fn ticket() -> TicketClaims {
        let mut params = serde_json::Map::new();
        params.insert("dscp".into(), serde_json::json!(46));
        TicketClaims {
            call_id: "call-1@host".into(),
            account: "acme".into(),
            service: Service::QosUpgrade,
            params,
            exp: NOW + 60,
            nonce: "t-1".into(),
        }
    }

    fn verifier(n: u8) -> Verifier {
        Verifier::new(vec![signer(n).public_key()]).unwrap()
    }

    #[test]
    fn valid_token_verifies_and_checks_account_and_service() {
        let token = signer(1).sign_token(&claims()).unwrap();
        let v = verifier(1);
        assert_eq!(v.verify_token(&token, NOW, None, None).unwrap(), claims());
        assert_eq!(
            v.verify_token(&token, NOW, Some("acme"), Some("fork"))
                .unwrap(),
            claims()
        );
        assert_eq!(
            v.verify_token(&token, NOW, Some("mallory"), None),
            Err(AuthError::WrongAccount {
                expected: "mallory".into(),
                found: "acme".into()
            })
        );
        assert_eq!(
            v.verify_token(&token, NOW, Some("acme"), Some("add-party")),
            Err(AuthError::ServiceNotAllowed("add-party".into()))
        );
        // The format: two base64url parts, the first the claims JSON.
        let (payload, sig) = token.split_once('.').unwrap();
        let json: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        assert_eq!(json["account"], "acme");
        assert_eq!(json["services"], serde_json::json!(["qos-upgrade", "fork"]));
        assert_eq!(URL_SAFE_NO_PAD.decode(sig).unwrap().len(), 64);
    }

    #[test]
    fn expired_and_not_yet_valid_tokens_are_refused() {
        let token = signer(1).sign_token(&claims()).unwrap();
        let v = verifier(1);
        assert_eq!(
            v.verify_token(&token, NOW + 3600, None, None),
            Err(AuthError::Expired {
                exp: NOW + 3600,
                now: NOW + 3600
            })
        );
        assert!(v.verify_token(&token, NOW + 3599, None, None).is_ok());
        let v = v.with_leeway(Duration::from_secs(30));
        assert!(v.verify_token(&token, NOW + 3629, None, None).is_ok());
        let future = signer(1)
            .sign_token(&TokenClaims {
                iat: NOW + 600,
                ..claims()
            })
            .unwrap();
        assert!(matches!(
            verifier(1).verify_token(&future, NOW, None, None),
            Err(AuthError::NotYetValid { .. })
        ));
    }

    #[test]
    fn bad_signature_tampered_claims_and_unknown_key_are_refused() {
        let token = signer(1).sign_token(&claims()).unwrap();
        let v = verifier(1);
        // A flipped signature bit.
        let (payload, sig) = token.split_once('.').unwrap();
        let mut raw = URL_SAFE_NO_PAD.decode(sig).unwrap();
        raw[10] ^= 1;
        let forged = format!("{payload}.{}", URL_SAFE_NO_PAD.encode(&raw));
        assert_eq!(
            v.verify_token(&forged, NOW, None, None),
            Err(AuthError::BadSignature)
        );
        // Claims changed (more services, another account), signature kept.
        let tampered = TokenClaims {
            services: vec!["qos-upgrade".into(), "fork".into(), "add-party".into()],
            ..claims()
        };
        let payload2 = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&tampered).unwrap());
        assert_eq!(
            v.verify_token(&format!("{payload2}.{sig}"), NOW, None, None),
            Err(AuthError::BadSignature)
        );
        // Signed by a key the verifier does not trust.
        let other = signer(2).sign_token(&claims()).unwrap();
        assert_eq!(
            v.verify_token(&other, NOW, None, None),
            Err(AuthError::BadSignature)
        );
        // Trusted once the key is added (rollover: both keys trusted).
        let both =
            Verifier::from_key_texts([signer(1).public_key_hex(), signer(2).public_key_base64()])
                .unwrap();
        assert!(both.verify_token(&other, NOW, None, None).is_ok());
        assert!(both.verify_token(&token, NOW, None, None).is_ok());
    }

    #[test]
    fn malformed_texts_get_precise_errors() {
        let v = verifier(1);
        let token = signer(1).sign_token(&claims()).unwrap();
        let (payload, sig) = token.split_once('.').unwrap();
        let bad = |t: &str| match v.verify_token(t, NOW, None, None) {
            Err(AuthError::Malformed {
                what: "token",
                detail,
            }) => detail,
            other => panic!("{t:?}: {other:?}"),
        };
        assert!(bad("").contains("expected"));
        assert!(bad("abc").contains("expected"));
        assert!(bad(&format!("{token}.x")).contains("more than two"));
        assert!(bad(&format!("{payload}.!!")).contains("signature"));
        assert!(
            bad(&format!("{payload}.{}", URL_SAFE_NO_PAD.encode([0u8; 10]))).contains("10 bytes")
        );
        assert!(bad(&format!("{payload}=.{sig}")).contains("claims"));
        assert!(bad(&"a".repeat(MAX_LEN + 1)).contains("longer"));
        // Well signed but not token claims: a signature is checked before the JSON is read.
        let junk = URL_SAFE_NO_PAD.encode(b"{\"hello\": 1}");
        let s = signer(1)
            .key
            .sign(&[TOKEN_CONTEXT, junk.as_bytes()].concat());
        let t = format!("{junk}.{}", URL_SAFE_NO_PAD.encode(s.to_bytes()));
        assert!(bad(&t).contains("claims"));
        let unsigned = format!("{junk}.{sig}");
        assert_eq!(
            v.verify_token(&unsigned, NOW, None, None),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn tickets_verify_for_their_call_and_account_only() {
        let s = signer(3);
        let v = verifier(3);
        let t = s.sign_ticket(&ticket()).unwrap();
        let c = v
            .verify_ticket(&t, NOW, "call-1@host", "acme", None)
            .unwrap();
        assert_eq!(c.service, Service::QosUpgrade);
        assert_eq!(c.params["dscp"], 46);
        let allowed = vec!["qos-upgrade".to_string()];
        assert!(
            v.verify_ticket(&t, NOW, "call-1@host", "acme", Some(&allowed))
                .is_ok()
        );
        assert_eq!(
            v.verify_ticket(&t, NOW, "call-1@host", "acme", Some(&["fork".to_string()])),
            Err(AuthError::ServiceNotAllowed("qos-upgrade".into()))
        );
        assert!(matches!(
            v.verify_ticket(&t, NOW, "call-2@host", "acme", None),
            Err(AuthError::WrongCall { .. })
        ));
        assert!(matches!(
            v.verify_ticket(&t, NOW, "call-1@host", "mallory", None),
            Err(AuthError::WrongAccount { .. })
        ));
        assert!(matches!(
            v.verify_ticket(&t, NOW + 60, "call-1@host", "acme", None),
            Err(AuthError::Expired { .. })
        ));
        assert_eq!(
            verifier(4).verify_ticket(&t, NOW, "call-1@host", "acme", None),
            Err(AuthError::BadSignature)
        );
        // A token never verifies as a ticket, nor a ticket as a token (signing contexts).
        let token = s.sign_token(&claims()).unwrap();
        assert_eq!(
            v.verify_ticket(&token, NOW, "call-1@host", "acme", None),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            v.verify_token(&t, NOW, None, None),
            Err(AuthError::BadSignature)
        );
        // Service names on the wire.
        let json = serde_json::to_value(ticket()).unwrap();
        assert_eq!(json["service"], "qos-upgrade");
        for (s, name) in [
            (Service::AddParty, "add-party"),
            (Service::Split, "split"),
            (Service::Fork, "fork"),
        ] {
            assert_eq!(serde_json::to_value(s).unwrap(), name);
            assert_eq!(s.as_str(), name);
        }
    }

    #[test]
    fn key_texts_in_hex_and_base64() {
        let s = signer(5);
        let hex_pub = s.public_key_hex();
        assert_eq!(hex_pub.len(), 64);
        assert_eq!(parse_public_key(&hex_pub).unwrap(), s.public_key());
        assert_eq!(
            parse_public_key(&hex_pub.to_uppercase()).unwrap(),
            s.public_key()
        );
        assert_eq!(
            parse_public_key(&s.public_key_base64()).unwrap(),
            s.public_key()
        );
        let url = URL_SAFE_NO_PAD.encode(s.public_key().to_bytes());
        assert_eq!(
            parse_public_key(&format!(" {url}\n")).unwrap(),
            s.public_key()
        );
        assert!(matches!(parse_public_key("zz"), Err(AuthError::BadKey(_))));
        assert!(matches!(
            parse_public_key(&STANDARD.encode([1u8; 16])),
            Err(AuthError::BadKey(_))
        ));
        assert_eq!(Verifier::new(vec![]).err(), Some(AuthError::NoKeys));
        assert_eq!(
            Verifier::from_key_texts(Vec::<String>::new()).err(),
            Some(AuthError::NoKeys)
        );
        // Private keys: seed, or seed‖public.
        let seed_hex = hex(&[5u8; 32]);
        assert_eq!(
            Signer::from_key_text(&seed_hex).unwrap().public_key(),
            s.public_key()
        );
        let pair = [[5u8; 32].as_slice(), &s.public_key().to_bytes()].concat();
        assert_eq!(
            Signer::from_key_text(&STANDARD.encode(&pair))
                .unwrap()
                .public_key(),
            s.public_key()
        );
        let wrong_pair = [[5u8; 32].as_slice(), &[0u8; 32]].concat();
        assert!(Signer::from_key_text(&hex(&wrong_pair)).is_err());
        assert!(!format!("{s:?}").contains(&seed_hex), "Debug hides the key");
    }

    #[test]
    fn nonce_cache_refuses_replays_until_expiry() {
        let mut c = NonceCache::new(2);
        c.check("a", NOW + 10, NOW).unwrap();
        assert_eq!(
            c.check("a", NOW + 10, NOW),
            Err(AuthError::Replayed("a".into()))
        );
        c.check("b", NOW + 10, NOW).unwrap();
        assert_eq!(c.check("c", NOW + 10, NOW), Err(AuthError::ReplayCacheFull));
        // Expired nonces make room (an expired ticket fails verification anyway).
        c.check("c", NOW + 30, NOW + 10).unwrap();
        c.check("a", NOW + 30, NOW + 10).unwrap();
    }
}
