//! The CONNECT handshake: the first frame of every connection (a request in package `session`,
//! without `seq`) and its response, in typed form.
//!
//! # What this module owns
//! The CONNECT request and response shapes (headers and payload fields), their encoding and
//! their validation with precise errors.
//!
//! # What it must not touch
//! The decision to resume (that is [`super::session::Session::resume`], applied by the server)
//! and any I/O.

use serde_json::{Map, Value, json};

use super::{
    frame::{Frame, FrameError, FrameType, MAX_NAME_LEN, MAX_SEQ, SessionId, action, package},
    session::WindowBounds,
};

/// Most packages one SUBSCRIBE (or CONNECT) may name.
pub const MAX_SUBSCRIPTIONS: usize = 32;

/// What a reconnecting peer knows about the session it wants to resume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResumeRequest {
    /// The session.
    pub session: SessionId,
    /// The highest in-order seq it received (its cumulative ack).
    pub received: u64,
    /// Its unacknowledged frames.
    pub window: WindowBounds,
}

/// A CONNECT request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnectRequest {
    /// Resume this session, or (None) open a new one.
    pub resume: Option<ResumeRequest>,
    /// The peer's role, e.g. `billing` (the daemon sends billing requests to the most recently
    /// connected `billing` session).
    pub role: Option<String>,
    /// Packages to subscribe to (added to the session's subscriptions).
    pub subscribe: Vec<String>,
}

impl ConnectRequest {
    /// The request as a frame.
    pub fn to_frame(&self) -> Frame {
        let mut frame = Frame::new(FrameType::Request);
        frame.package = Some(package::SESSION.into());
        frame.action = Some(action::CONNECT.into());
        let mut payload = Map::new();
        if let Some(role) = &self.role {
            payload.insert("role".into(), Value::String(role.clone()));
        }
        if !self.subscribe.is_empty() {
            payload.insert("subscribe".into(), json!(self.subscribe));
        }
        if let Some(r) = &self.resume {
            frame.session = Some(r.session.clone());
            frame.ack = Some(r.received);
            payload.insert(
                "window".into(),
                json!({"first": r.window.first, "next": r.window.next}),
            );
        }
        frame.payload = Value::Object(payload);
        frame
    }

    /// Reads a CONNECT request (the caller has checked package and action).
    pub fn from_frame(frame: &Frame) -> Result<Self, FrameError> {
        if frame.seq.is_some() {
            return Err(FrameError::Invalid {
                field: "seq",
                problem: "CONNECT is not sequenced (it opens the connection); remove `seq`".into(),
            });
        }
        let empty = Map::new();
        let payload = match &frame.payload {
            Value::Null => &empty,
            Value::Object(m) => m,
            other => {
                return Err(FrameError::WrongType {
                    field: "payload",
                    expected: "an object",
                    got: kind(other).into(),
                });
            }
        };
        let role = match payload.get("role") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_NAME_LEN => Some(s.clone()),
            Some(Value::String(_)) => {
                return Err(FrameError::Invalid {
                    field: "payload.role",
                    problem: format!("must be 1 to {MAX_NAME_LEN} bytes"),
                });
            }
            Some(other) => {
                return Err(FrameError::WrongType {
                    field: "payload.role",
                    expected: "a string",
                    got: kind(other).into(),
                });
            }
        };
        let subscribe = packages(payload.get("subscribe"), "payload.subscribe")?;
        let resume = match &frame.session {
            None => None,
            Some(session) => {
                let window = match payload.get("window") {
                    None | Some(Value::Null) => {
                        return Err(FrameError::Missing {
                            field: "payload.window",
                            context: "; a resuming CONNECT gives its unacknowledged seqs as {\"first\": F, \"next\": N}",
                        });
                    }
                    Some(Value::Object(w)) => WindowBounds {
                        first: bound(w.get("first"), "payload.window.first")?,
                        next: bound(w.get("next"), "payload.window.next")?,
                    },
                    Some(other) => {
                        return Err(FrameError::WrongType {
                            field: "payload.window",
                            expected: "an object {\"first\": F, \"next\": N}",
                            got: kind(other).into(),
                        });
                    }
                };
                if window.first > window.next {
                    return Err(FrameError::Invalid {
                        field: "payload.window",
                        problem: format!("first {} > next {}", window.first, window.next),
                    });
                }
                Some(ResumeRequest {
                    session: session.clone(),
                    received: frame.ack.unwrap_or(0),
                    window,
                })
            }
        };
        Ok(Self {
            resume,
            role,
            subscribe,
        })
    }
}

/// The response to CONNECT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectResponse {
    /// The session this connection now carries.
    pub session: SessionId,
    /// Whether the requested session was resumed.
    pub resumed: bool,
    /// The session whose resumption was refused (then `code` and `reason` say why).
    pub previous: Option<SessionId>,
    /// The server's highest in-order seq received from the peer (also the `ack` header): the
    /// peer retransmits its frames after this one.
    pub received: u64,
    /// Why a resume was refused.
    pub code: Option<u16>,
    /// Why a resume was refused, in words.
    pub reason: Option<String>,
    /// The server's retransmission window, in frames.
    pub window: u64,
    /// The server's WebSocket ping interval, in milliseconds.
    pub keepalive_ms: u64,
    /// How long a detached session stays resumable, in milliseconds.
    pub expiry_ms: u64,
}

impl ConnectResponse {
    /// The response as a frame.
    pub fn to_frame(&self) -> Frame {
        let mut frame = Frame::new(FrameType::Response);
        frame.session = Some(self.session.clone());
        frame.package = Some(package::SESSION.into());
        frame.action = Some(action::CONNECT.into());
        frame.ack = Some(self.received);
        frame.code = self.code;
        frame.reason = self.reason.clone();
        let mut payload = json!({
            "resumed": self.resumed,
            "session": self.session,
            "received": self.received,
            "window": self.window,
            "keepalive_ms": self.keepalive_ms,
            "expiry_ms": self.expiry_ms,
        });
        if let (Some(prev), Value::Object(m)) = (&self.previous, &mut payload) {
            m.insert("previous".into(), Value::String(prev.to_string()));
        }
        frame.payload = payload;
        frame
    }

    /// Reads a CONNECT response.
    pub fn from_frame(frame: &Frame) -> Result<Self, FrameError> {
        if frame.kind != FrameType::Response || !frame.is(package::SESSION, action::CONNECT) {
            return Err(FrameError::Invalid {
                field: "type",
                problem: format!(
                    "expected the CONNECT response, got a {} frame ({}/{})",
                    frame.kind,
                    frame.package.as_deref().unwrap_or("-"),
                    frame.action.as_deref().unwrap_or("-")
                ),
            });
        }
        let Value::Object(p) = &frame.payload else {
            return Err(FrameError::WrongType {
                field: "payload",
                expected: "an object",
                got: kind(&frame.payload).into(),
            });
        };
        let resumed = match p.get("resumed") {
            Some(Value::Bool(b)) => *b,
            None => {
                return Err(FrameError::Missing {
                    field: "payload.resumed",
                    context: "",
                });
            }
            Some(other) => {
                return Err(FrameError::WrongType {
                    field: "payload.resumed",
                    expected: "a boolean",
                    got: kind(other).into(),
                });
            }
        };
        let session = frame.session.clone().ok_or(FrameError::Missing {
            field: "session",
            context: "; the CONNECT response names the session",
        })?;
        let previous = match p.get("previous") {
            Some(Value::String(s)) => {
                Some(SessionId::parse(s).map_err(|problem| FrameError::Invalid {
                    field: "payload.previous",
                    problem,
                })?)
            }
            _ => None,
        };
        let num = |field: &'static str| p.get(field).and_then(Value::as_u64).unwrap_or(0);
        Ok(Self {
            session,
            resumed,
            previous,
            received: frame.ack.unwrap_or(0),
            code: frame.code,
            reason: frame.reason.clone(),
            window: num("window"),
            keepalive_ms: num("keepalive_ms"),
            expiry_ms: num("expiry_ms"),
        })
    }
}

/// Reads a list of package names (`subscribe`, SUBSCRIBE's `packages`).
pub fn packages(value: Option<&Value>, field: &'static str) -> Result<Vec<String>, FrameError> {
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => {
            if items.len() > MAX_SUBSCRIPTIONS {
                return Err(FrameError::Invalid {
                    field,
                    problem: format!("{} packages (at most {MAX_SUBSCRIPTIONS})", items.len()),
                });
            }
            items
                .iter()
                .map(|v| match v {
                    Value::String(s) if !s.is_empty() && s.len() <= MAX_NAME_LEN => Ok(s.clone()),
                    Value::String(_) => Err(FrameError::Invalid {
                        field,
                        problem: format!("package names are 1 to {MAX_NAME_LEN} bytes"),
                    }),
                    other => Err(FrameError::WrongType {
                        field,
                        expected: "an array of strings",
                        got: format!("an array containing {}", kind(other)),
                    }),
                })
                .collect()
        }
        Some(other) => Err(FrameError::WrongType {
            field,
            expected: "an array of strings",
            got: kind(other).into(),
        }),
    }
}

fn bound(v: Option<&Value>, field: &'static str) -> Result<u64, FrameError> {
    match v {
        None => Err(FrameError::Missing { field, context: "" }),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(x) if (1..=MAX_SEQ).contains(&x) => Ok(x),
            _ => Err(FrameError::Invalid {
                field,
                problem: format!("{n} is not an integer from 1 to 2^53-1"),
            }),
        },
        Some(other) => Err(FrameError::WrongType {
            field,
            expected: "an integer from 1 to 2^53-1",
            got: kind(other).into(),
        }),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
