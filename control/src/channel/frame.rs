//! Frames of the channel: the typed form of one WebSocket text message, its JSON encoding and
//! its validation.
//!
//! # What this module owns
//! The wire format (field names, types, ranges, which frame types need which fields — the
//! contract documented in [`crate::channel`]), the parser that turns untrusted text into a
//! [`Frame`] or a precise [`FrameError`], and the encoder.
//!
//! # What it must not touch
//! Sequencing, acknowledgement and sessions ([`super::session`]) and any I/O. A frame that is
//! well-formed here may still be refused by the session (e.g. a request without `seq`).

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The WebSocket subprotocol the channel speaks (`Sec-WebSocket-Protocol`).
pub const SUBPROTOCOL: &str = "rtpedge.v1";

/// Largest sequence number or acknowledgement accepted: 2^53 − 1, so that JavaScript peers
/// represent every value exactly.
pub const MAX_SEQ: u64 = (1 << 53) - 1;

/// Longest `package` or `action` accepted, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// Longest session id accepted, in bytes.
pub const MAX_SESSION_LEN: usize = 64;

/// Well-known packages (the `package` header). Others are allowed and routed to the application.
pub mod package {
    /// Channel control: CONNECT, SUBSCRIBE, UNSUBSCRIBE, SHUTDOWN. Handled by the channel itself.
    pub const SESSION: &str = "session";
    /// Credit control between the daemon and a billing system.
    pub const BILLING: &str = "billing";
    /// Call events (answered, ended, CDR).
    pub const CALL: &str = "call";
    /// Operational events (alarms, policy changes).
    pub const EVENTS: &str = "events";
}

/// Well-known actions (the `action` header). Others are allowed.
pub mod action {
    /// Open or resume a session (the handshake; first frame of every connection).
    pub const CONNECT: &str = "CONNECT";
    /// Subscribe this session to the published messages of some packages.
    pub const SUBSCRIBE: &str = "SUBSCRIBE";
    /// Stop receiving the published messages of some packages.
    pub const UNSUBSCRIBE: &str = "UNSUBSCRIBE";
    /// The session ends for good (either side); it cannot be resumed afterwards.
    pub const SHUTDOWN: &str = "SHUTDOWN";
    /// Ask for a slice of credit.
    pub const RESERVE: &str = "RESERVE";
    /// A slice of credit granted.
    pub const GRANT: &str = "GRANT";
    /// Usage report.
    pub const USAGE: &str = "USAGE";
    /// An account has no credit left: its calls must end.
    pub const EXHAUSTED: &str = "EXHAUSTED";
    /// An account was topped up.
    pub const TOPUP: &str = "TOPUP";
    /// An account is blocked: its calls must end.
    pub const BLOCK: &str = "BLOCK";
    /// A notification (call events and the like).
    pub const NOTIFY: &str = "NOTIFY";
}

/// Error codes of `error` frames and of refused CONNECTs (HTTP-like, stable).
pub mod code {
    /// The frame could not be parsed or violates the format.
    pub const BAD_FRAME: u16 = 400;
    /// The session to resume is unknown or has expired.
    pub const UNKNOWN_SESSION: u16 = 404;
    /// A sequence gap: the frame was dropped; it is retransmitted after a resume.
    pub const SEQUENCE_GAP: u16 = 409;
    /// Resumption impossible: frames needed have left a retransmission window, or the two
    /// sides' sequence state disagrees.
    pub const RESUME_IMPOSSIBLE: u16 = 412;
    /// The first frame of a connection must be a CONNECT request.
    pub const CONNECT_REQUIRED: u16 = 428;
    /// Internal error (e.g. no randomness for a session id).
    pub const INTERNAL: u16 = 500;
    /// No handler for this package/action.
    pub const NOT_IMPLEMENTED: u16 = 501;
    /// The service cannot take this now (shutting down, too many sessions).
    pub const UNAVAILABLE: u16 = 503;
}

/// The `type` control header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FrameType {
    /// Asks the peer for a `response` (or an `error`) carrying `correlation` = this `seq`.
    Request,
    /// Answers a request.
    Response,
    /// A one-way message (notification, event, push).
    Message,
    /// A bare acknowledgement (no `seq`).
    Ack,
    /// An error report (`code`, `reason`; `correlation` when it answers a frame).
    Error,
}

impl FrameType {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            FrameType::Request => "request",
            FrameType::Response => "response",
            FrameType::Message => "message",
            FrameType::Ack => "ack",
            FrameType::Error => "error",
        }
    }

    /// Whether frames of this type are delivered reliably (carry `seq`).
    pub fn is_sequenced(self) -> bool {
        !matches!(self, FrameType::Ack)
    }

    fn from_wire(s: &str) -> Option<Self> {
        Some(match s {
            "request" => FrameType::Request,
            "response" => FrameType::Response,
            "message" => FrameType::Message,
            "ack" => FrameType::Ack,
            "error" => FrameType::Error,
            _ => return None,
        })
    }
}

impl fmt::Display for FrameType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A session id: 1 to 64 characters of `A-Z a-z 0-9 . _ -`. Server-issued ids are 32 random
/// hex digits (128 bits): knowing one is what lets a peer resume (take over) a session.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct SessionId(String);

impl SessionId {
    /// Validates an id received from a peer.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("empty session id".into());
        }
        if s.len() > MAX_SESSION_LEN {
            return Err(format!(
                "session id of {} bytes (at most {MAX_SESSION_LEN})",
                s.len()
            ));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(format!(
                "character {c:?} in session id (allowed: A-Z a-z 0-9 . _ -)"
            ));
        }
        Ok(Self(s.to_owned()))
    }

    /// A fresh random id (128 bits from the OS, as 32 hex digits).
    pub fn random() -> Result<Self, getrandom::Error> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes)?;
        let mut s = String::with_capacity(32);
        for b in bytes {
            // Writing to a String cannot fail.
            let _ = fmt::Write::write_fmt(&mut s, format_args!("{b:02x}"));
        }
        Ok(Self(s))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What was wrong with a frame. Messages name the field and the problem; they are sent back to
/// peers verbatim as the `reason` of an `error` frame (code [`code::BAD_FRAME`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Not JSON at all (serde_json's message, with line and column).
    #[error("not valid JSON: {0}")]
    Json(String),
    /// JSON, but not an object.
    #[error("a frame must be a JSON object, got {0}")]
    NotObject(&'static str),
    /// A required field is absent.
    #[error("field `{field}` is missing{context}")]
    Missing {
        /// The field.
        field: &'static str,
        /// Why it is required (starts with "; " or is empty).
        context: &'static str,
    },
    /// A field has the wrong JSON type.
    #[error("field `{field}`: expected {expected}, got {got}")]
    WrongType {
        /// The field.
        field: &'static str,
        /// What it must be.
        expected: &'static str,
        /// A short description of what it was.
        got: String,
    },
    /// A field has the right type but an unacceptable value.
    #[error("field `{field}`: {problem}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// A field that this frame type must not carry.
    #[error("field `{field}` is not allowed on {kind} frames")]
    NotAllowed {
        /// The field.
        field: &'static str,
        /// The frame type.
        kind: FrameType,
    },
}

/// A frame that could not be accepted, with the sequence number it carried if that much could be
/// read (so that the receiver can consume it and answer; see the channel docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Malformed {
    /// What was wrong.
    pub error: FrameError,
    /// The frame's `seq`, when it was a valid sequence number.
    pub seq: Option<u64>,
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for Malformed {}

/// One frame. See the module docs of [`crate::channel`] for the contract.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Value")]
pub struct Frame {
    /// `type`.
    #[serde(rename = "type")]
    pub kind: FrameType,
    /// `session`: the session id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionId>,
    /// `seq`: this direction's sequence number (≥ 1) of a reliably delivered frame.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// `ack`: cumulative acknowledgement, the highest in-order `seq` received from the peer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ack: Option<u64>,
    /// `correlation`: on responses (and errors answering a frame), the `seq` answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correlation: Option<u64>,
    /// `package`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub package: Option<String>,
    /// `action`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// `code`: numeric error or status code (100–999).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<u16>,
    /// `reason`: human-readable text accompanying `code`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `payload`: any JSON; absent is `null`.
    #[serde(skip_serializing_if = "Value::is_null", default)]
    pub payload: Value,
}

/// The application part of a frame: what goes out through a session, which adds the control
/// headers (`type`, `session`, `seq`, `ack`, `correlation`).
#[derive(Clone, Debug, PartialEq)]
pub struct Body {
    /// `package`.
    pub package: String,
    /// `action`.
    pub action: String,
    /// `code`, optional.
    pub code: Option<u16>,
    /// `reason`, optional.
    pub reason: Option<String>,
    /// `payload`.
    pub payload: Value,
}

impl Body {
    /// A body with a package, an action and a payload.
    pub fn new(package: impl Into<String>, action: impl Into<String>, payload: Value) -> Self {
        Self {
            package: package.into(),
            action: action.into(),
            code: None,
            reason: None,
            payload,
        }
    }

    /// Adds a `code` and a `reason`.
    pub fn with_code(mut self, code: u16, reason: impl Into<String>) -> Self {
        self.code = Some(code);
        self.reason = Some(reason.into());
        self
    }
}

impl Frame {
    /// An empty frame of a type (all headers absent, payload null).
    pub fn new(kind: FrameType) -> Self {
        Self {
            kind,
            session: None,
            seq: None,
            ack: None,
            correlation: None,
            package: None,
            action: None,
            code: None,
            reason: None,
            payload: Value::Null,
        }
    }

    /// A frame of a type carrying a body.
    pub fn with_body(kind: FrameType, body: Body) -> Self {
        Self {
            package: Some(body.package),
            action: Some(body.action),
            code: body.code,
            reason: body.reason,
            payload: body.payload,
            ..Self::new(kind)
        }
    }

    /// An `error` frame.
    pub fn error(code: u16, reason: impl Into<String>) -> Self {
        Self {
            code: Some(code),
            reason: Some(reason.into()),
            ..Self::new(FrameType::Error)
        }
    }

    /// Whether this frame is in `package` with `action`.
    pub fn is(&self, package: &str, action: &str) -> bool {
        self.package.as_deref() == Some(package) && self.action.as_deref() == Some(action)
    }

    /// Parses and validates one frame from untrusted text. Never panics.
    pub fn parse(text: &str) -> Result<Frame, Malformed> {
        match serde_json::from_str::<Value>(text) {
            Ok(v) => Frame::from_value(v),
            Err(e) => Err(Malformed {
                error: FrameError::Json(e.to_string()),
                seq: None,
            }),
        }
    }

    /// Validates one frame from a parsed JSON value.
    pub fn from_value(value: Value) -> Result<Frame, Malformed> {
        let Value::Object(mut map) = value else {
            return Err(Malformed {
                error: FrameError::NotObject(json_kind(&value)),
                seq: None,
            });
        };
        // The seq first, so that a frame rejected for another reason can still be consumed.
        let seq = seq_field(&map, "seq", 1);
        let seq_hint = seq.as_ref().ok().copied().flatten();
        let fail = |error| Malformed {
            error,
            seq: seq_hint,
        };
        let seq = seq.map_err(fail)?;
        let kind = match map.get("type") {
            None => {
                return Err(fail(FrameError::Missing {
                    field: "type",
                    context: "; one of request, response, message, ack, error",
                }));
            }
            Some(Value::String(s)) => FrameType::from_wire(s).ok_or_else(|| {
                fail(FrameError::Invalid {
                    field: "type",
                    problem: format!(
                        "unknown frame type {}; expected request, response, message, ack or error",
                        describe_str(s)
                    ),
                })
            })?,
            Some(other) => {
                return Err(fail(FrameError::WrongType {
                    field: "type",
                    expected: "a string",
                    got: describe(other),
                }));
            }
        };
        let session = match map.get("session") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(SessionId::parse(s).map_err(|problem| {
                fail(FrameError::Invalid {
                    field: "session",
                    problem,
                })
            })?),
            Some(other) => {
                return Err(fail(FrameError::WrongType {
                    field: "session",
                    expected: "a string",
                    got: describe(other),
                }));
            }
        };
        let ack = seq_field(&map, "ack", 0).map_err(fail)?;
        let correlation = seq_field(&map, "correlation", 1).map_err(fail)?;
        let package = name_field(&map, "package").map_err(fail)?;
        let action = name_field(&map, "action").map_err(fail)?;
        let code = match map.get("code") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => match n.as_u64() {
                Some(c @ 100..=999) => Some(c as u16),
                _ => {
                    return Err(fail(FrameError::Invalid {
                        field: "code",
                        problem: format!("{n} is not an integer from 100 to 999"),
                    }));
                }
            },
            Some(other) => {
                return Err(fail(FrameError::WrongType {
                    field: "code",
                    expected: "an integer from 100 to 999",
                    got: describe(other),
                }));
            }
        };
        let reason = match map.get_mut("reason") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(std::mem::take(s)),
            Some(other) => {
                return Err(fail(FrameError::WrongType {
                    field: "reason",
                    expected: "a string",
                    got: describe(other),
                }));
            }
        };
        let payload = map.remove("payload").unwrap_or(Value::Null);

        // Per-type rules.
        match kind {
            FrameType::Ack => {
                if seq.is_some() {
                    return Err(fail(FrameError::NotAllowed { field: "seq", kind }));
                }
                if ack.is_none() {
                    return Err(fail(FrameError::Missing {
                        field: "ack",
                        context: "; an ack frame carries the cumulative acknowledgement",
                    }));
                }
            }
            FrameType::Request | FrameType::Message => {
                if package.is_none() {
                    return Err(fail(FrameError::Missing {
                        field: "package",
                        context: "",
                    }));
                }
                if action.is_none() {
                    return Err(fail(FrameError::Missing {
                        field: "action",
                        context: "",
                    }));
                }
            }
            FrameType::Response => {
                if seq.is_some() && correlation.is_none() {
                    return Err(fail(FrameError::Missing {
                        field: "correlation",
                        context: "; a response names the seq of the request it answers",
                    }));
                }
            }
            FrameType::Error => {
                if code.is_none() {
                    return Err(fail(FrameError::Missing {
                        field: "code",
                        context: "; an error frame carries a code and a reason",
                    }));
                }
            }
        }
        Ok(Frame {
            kind,
            session,
            seq,
            ack,
            correlation,
            package,
            action,
            code,
            reason,
            payload,
        })
    }

    /// The frame as JSON text.
    pub fn encode(&self) -> String {
        match serde_json::to_string(self) {
            Ok(s) => s,
            // Unreachable with `Value` payloads (string keys only); stay total anyway.
            Err(e) => format!(
                "{{\"type\":\"error\",\"code\":{},\"reason\":{:?}}}",
                code::INTERNAL,
                e.to_string()
            ),
        }
    }
}

impl TryFrom<Value> for Frame {
    type Error = FrameError;

    fn try_from(value: Value) -> Result<Self, Self::Error> {
        Frame::from_value(value).map_err(|m| m.error)
    }
}

/// Reads an optional integer field in `min..=MAX_SEQ`.
fn seq_field(
    map: &Map<String, Value>,
    field: &'static str,
    min: u64,
) -> Result<Option<u64>, FrameError> {
    let expected = if min == 0 {
        "an integer from 0 to 2^53-1"
    } else {
        "an integer from 1 to 2^53-1"
    };
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(v) if v >= min && v <= MAX_SEQ => Ok(Some(v)),
            _ => Err(FrameError::Invalid {
                field,
                problem: format!("{n} is not {expected}"),
            }),
        },
        Some(other) => Err(FrameError::WrongType {
            field,
            expected,
            got: describe(other),
        }),
    }
}

/// Reads an optional package or action name: a non-empty string of at most [`MAX_NAME_LEN`]
/// bytes without control characters.
fn name_field(map: &Map<String, Value>, field: &'static str) -> Result<Option<String>, FrameError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            if s.is_empty() {
                Err(FrameError::Invalid {
                    field,
                    problem: "empty string".into(),
                })
            } else if s.len() > MAX_NAME_LEN {
                Err(FrameError::Invalid {
                    field,
                    problem: format!("{} bytes (at most {MAX_NAME_LEN})", s.len()),
                })
            } else if s.chars().any(char::is_control) {
                Err(FrameError::Invalid {
                    field,
                    problem: "contains control characters".into(),
                })
            } else {
                Ok(Some(s.clone()))
            }
        }
        Some(other) => Err(FrameError::WrongType {
            field,
            expected: "a string",
            got: describe(other),
        }),
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A short description of a JSON value for error messages (strings truncated).
fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) => format!("string {}", describe_str(s)),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

fn describe_str(s: &str) -> String {
    const MAX: usize = 32;
    if s.len() <= MAX {
        format!("{s:?}")
    } else {
        let mut end = MAX;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{:?}…", &s[..end])
    }
}
