//! Request datagrams: framing (cookie + body), body decoding (bencode or JSON) and typing.
//!
//! [`parse_request`] turns one datagram into a [`ParsedRequest`]: the cookie, the body's
//! encoding (replies use the same one), a typed [`Request`] and the [`Warnings`] for what was
//! ignored. On failure it returns a [`RequestError`] that still carries the cookie whenever one
//! could be read, so the server can answer `result: error` with a precise `error-reason`
//! ([`RequestError::reply`]). Without a cookie there is nothing to answer (rtpengine drops
//! such datagrams too).
//!
//! Duplicate keys: entries are applied in arrival order, so for single-valued keys the last
//! one wins, while list-valued keys (`flags`, `replace`, ...) accumulate, exactly as
//! rtpengine's dictionary iteration behaves. `rtpp-flags` is applied where it appears (Kamailio
//! puts it last).
//!
//! Tags: for offer and answer, `from-tag` is the tag of the party that sent the offer and
//! `to-tag` that of the answerer (Kamailio swaps the SIP From/To tags accordingly when the
//! offer or answer travels in the other direction). rtpengine swaps them internally for
//! answers; rtpedge leaves them as sent.

use super::bencode::{self, DecodeError, Value};
use super::json::{self, JsonError};
use super::options::{Fields, Options, Warnings, quote};
use super::reply;

/// Longest cookie accepted. Kamailio's are under 35 bytes; a longer one is not answered, so
/// that hostile datagrams cannot fill the reply cache with large keys.
pub const MAX_COOKIE_LEN: usize = 256;

/// The commands rtpedge serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    Ping,
    Offer,
    Answer,
    Delete,
    Query,
    List,
    /// rtpedge extension: insert a service into a running call (signed ticket).
    Service,
}

impl Command {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Ping => "ping",
            Command::Offer => "offer",
            Command::Answer => "answer",
            Command::Delete => "delete",
            Command::Query => "query",
            Command::List => "list",
            Command::Service => "service",
        }
    }

    /// Looks up a command name. rtpengine matches command names exactly (case-sensitive), and
    /// so does rtpedge.
    pub fn lookup(name: &[u8]) -> CommandLookup {
        match name {
            b"ping" => CommandLookup::Served(Command::Ping),
            b"offer" => CommandLookup::Served(Command::Offer),
            b"answer" => CommandLookup::Served(Command::Answer),
            b"delete" => CommandLookup::Served(Command::Delete),
            b"query" => CommandLookup::Served(Command::Query),
            b"list" => CommandLookup::Served(Command::List),
            b"service" => CommandLookup::Served(Command::Service),
            _ => match UNSUPPORTED_COMMANDS.iter().find(|c| c.as_bytes() == name) {
                Some(c) => CommandLookup::Unsupported(c),
                None => CommandLookup::Unknown,
            },
        }
    }
}

/// The result of [`Command::lookup`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandLookup {
    /// A command rtpedge serves.
    Served(Command),
    /// A command rtpengine defines that rtpedge does not serve (yet).
    Unsupported(&'static str),
    /// Not an ng command at all.
    Unknown,
}

/// Commands rtpengine defines (daemon/control_ng.h) that rtpedge does not serve.
const UNSUPPORTED_COMMANDS: &[&str] = &[
    "start recording",
    "stop recording",
    "pause recording",
    "start forwarding",
    "stop forwarding",
    "block DTMF",
    "unblock DTMF",
    "block media",
    "unblock media",
    "play media",
    "stop media",
    "play DTMF",
    "statistics",
    "silence media",
    "unsilence media",
    "publish",
    "subscribe request",
    "subscribe answer",
    "unsubscribe",
    "inject start",
    "inject stop",
    "connect",
    "cli",
    "CLI",
    "transform",
    "create",
    "create answer",
    "mesh",
];

/// How a body was encoded; the reply uses the same encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encoding {
    /// A bencoded dictionary (what Kamailio and OpenSIPS send).
    #[default]
    Bencode,
    /// A JSON object (body starting with `{`).
    Json,
}

impl Encoding {
    /// `true` for [`Encoding::Json`].
    pub fn is_json(self) -> bool {
        self == Encoding::Json
    }
}

/// `offer`: `call-id`, `from-tag` and `sdp` are required.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub call_id: String,
    /// The offerer's tag.
    pub from_tag: String,
    /// Present on re-offers within a dialogue.
    pub to_tag: Option<String>,
    pub via_branch: Option<String>,
    /// The SDP body to rewrite (bytes as received).
    pub sdp: Vec<u8>,
    pub options: Options,
}

/// `answer`: `call-id`, `from-tag`, `to-tag` and `sdp` are required.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub call_id: String,
    /// The offerer's tag.
    pub from_tag: String,
    /// The answerer's tag.
    pub to_tag: String,
    pub via_branch: Option<String>,
    pub sdp: Vec<u8>,
    pub options: Options,
}

/// `delete`: `call-id` is required; tags narrow what is deleted (`flags.to_tag` says whether
/// the to-tag is honoured), `delete_delay` and `flags.fatal`/`fast`/`all` shape it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    pub call_id: String,
    pub from_tag: Option<String>,
    pub to_tag: Option<String>,
    pub via_branch: Option<String>,
    pub options: Options,
}

/// `query`: `call-id` is required; tags select the monologue to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub call_id: String,
    pub from_tag: Option<String>,
    pub to_tag: Option<String>,
    pub options: Options,
}

/// `list`: the call-ids of active calls, at most `limit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct List {
    /// `limit` (default [`List::DEFAULT_LIMIT`], as in rtpengine).
    pub limit: u32,
}

impl List {
    /// rtpengine's default `limit`.
    pub const DEFAULT_LIMIT: u32 = 32;
}

/// A typed ng request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Ping,
    Offer(Offer),
    Answer(Answer),
    Delete(Delete),
    Query(Query),
    List(List),
    Service(ServiceCommand),
}

/// `service` (rtpedge extension): `call-id`, and everything else as the service request's
/// keys (`ticket`, `service`, its parameters), untyped: the service layer reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceCommand {
    /// `call-id`.
    pub call_id: String,
    /// The other keys of the request (a dictionary, without `command` and `call-id`).
    pub params: Value,
}

impl Request {
    /// The command.
    pub fn command(&self) -> Command {
        match self {
            Request::Ping => Command::Ping,
            Request::Offer(_) => Command::Offer,
            Request::Answer(_) => Command::Answer,
            Request::Delete(_) => Command::Delete,
            Request::Query(_) => Command::Query,
            Request::List(_) => Command::List,
            Request::Service(_) => Command::Service,
        }
    }

    /// The call-id, for commands that have one.
    pub fn call_id(&self) -> Option<&str> {
        match self {
            Request::Ping | Request::List(_) => None,
            Request::Offer(r) => Some(&r.call_id),
            Request::Answer(r) => Some(&r.call_id),
            Request::Delete(r) => Some(&r.call_id),
            Request::Query(r) => Some(&r.call_id),
            Request::Service(r) => Some(&r.call_id),
        }
    }

    /// The options, for commands that have them.
    pub fn options(&self) -> Option<&Options> {
        match self {
            Request::Ping | Request::List(_) | Request::Service(_) => None,
            Request::Offer(r) => Some(&r.options),
            Request::Answer(r) => Some(&r.options),
            Request::Delete(r) => Some(&r.options),
            Request::Query(r) => Some(&r.options),
        }
    }
}

/// A successfully parsed datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedRequest {
    /// The opaque cookie, to be echoed in the reply and used as the reply-cache key.
    pub cookie: Vec<u8>,
    /// The body's encoding; reply in the same.
    pub encoding: Encoding,
    pub request: Request,
    /// What was ignored; [`Warnings::to_text`] gives the reply's `warning` value.
    pub warnings: Warnings,
}

/// Which required key is missing; the messages are rtpengine's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MissingKey {
    #[error("No SDP body in message")]
    Sdp,
    #[error("No call-id in message")]
    CallId,
    #[error("No from-tag in message")]
    FromTag,
    #[error("No to-tag in message")]
    ToTag,
}

/// Why a request was rejected. `Display` is the `error-reason` sent back; rtpengine's own
/// wording is kept where rtpengine has one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestErrorKind {
    /// No space in the datagram, or it starts with one: no cookie, no reply.
    #[error("Received invalid NG data (no cookie)")]
    NoCookie,
    /// The cookie is longer than [`MAX_COOKIE_LEN`]: not answered.
    #[error("Cookie too long ({len} bytes, limit {max})")]
    CookieTooLong { len: usize, max: usize },
    /// Nothing after the cookie.
    #[error("Invalid data (no payload)")]
    NoPayload,
    /// The body starts with neither `d` nor `{`.
    #[error("Invalid NG data format")]
    InvalidFormat,
    /// Malformed bencode.
    #[error("Could not decode bencode dictionary: {0}")]
    Bencode(#[from] DecodeError),
    /// Malformed or unsupported JSON.
    #[error("Failed to parse JSON document: {0}")]
    Json(#[from] JsonError),
    /// The JSON document is not an object.
    #[error("Could not decode JSON dictionary")]
    NotADictionary,
    /// No `command` key.
    #[error("Dictionary contains no key \"command\"")]
    MissingCommand,
    /// Not an ng command.
    #[error("Unrecognized command \"{0}\"")]
    UnknownCommand(String),
    /// An ng command rtpedge does not serve.
    #[error("Unsupported command \"{0}\"")]
    UnsupportedCommand(&'static str),
    /// A key with a value of the wrong type (e.g. `call-id` given as a list).
    #[error("Invalid type for key \"{key}\": expected {expected}, got {found}")]
    WrongType {
        key: String,
        expected: &'static str,
        found: &'static str,
    },
    /// A value that is the right type but unusable (an address that does not parse, ...).
    #[error("Invalid value for key \"{key}\": {reason}")]
    InvalidValue { key: String, reason: String },
    /// A value over its size limit.
    #[error("Value of key \"{key}\" too long ({len} bytes, limit {max})")]
    ValueTooLong { key: String, len: usize, max: usize },
    /// A list over its item limit.
    #[error("Too many items in key \"{key}\" (limit {max})")]
    TooManyItems { key: String, max: usize },
    /// A required key is missing (or empty).
    #[error("{0}")]
    Missing(MissingKey),
    /// `list` with a negative limit (rtpengine's message).
    #[error("invalid limit, must be >= 0")]
    InvalidLimit,
}

/// A rejected datagram: the reason, plus what is needed to answer it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}")]
pub struct RequestError {
    /// The cookie, when one could be read (`None`: do not reply).
    pub cookie: Option<Vec<u8>>,
    /// The body encoding, for the reply (bencode when it could not be told).
    pub encoding: Encoding,
    /// The command, if it was recognised before the error.
    pub command: Option<Command>,
    pub kind: RequestErrorKind,
}

impl RequestError {
    /// The `error-reason` text.
    pub fn reason(&self) -> String {
        self.kind.to_string()
    }

    /// The encoded `result: error` reply, or `None` when there is no cookie to answer.
    pub fn reply(&self) -> Option<Vec<u8>> {
        let cookie = self.cookie.as_deref()?;
        Some(reply::encode_reply(
            cookie,
            &reply::error(&self.reason()),
            self.encoding.is_json(),
        ))
    }
}

/// Splits a datagram at its first space into cookie and body (rtpengine's framing).
pub fn split_cookie(datagram: &[u8]) -> Result<(&[u8], &[u8]), RequestErrorKind> {
    match datagram.iter().position(|&b| b == b' ') {
        None | Some(0) => Err(RequestErrorKind::NoCookie),
        Some(i) if i > MAX_COOKIE_LEN => Err(RequestErrorKind::CookieTooLong {
            len: i,
            max: MAX_COOKIE_LEN,
        }),
        Some(i) => Ok((
            datagram.get(..i).unwrap_or_default(),
            datagram.get(i + 1..).unwrap_or_default(),
        )),
    }
}

/// Decodes a body (bencode dictionary or JSON object) into a dictionary [`Value`].
pub fn decode_body(body: &[u8]) -> Result<(Value, Encoding), RequestErrorKind> {
    match body.first() {
        None => Err(RequestErrorKind::NoPayload),
        Some(b'd') => Ok((bencode::decode(body)?, Encoding::Bencode)),
        Some(b'{') => {
            let value = json::from_json(body)?;
            if value.as_dict().is_none() {
                return Err(RequestErrorKind::NotADictionary);
            }
            Ok((value, Encoding::Json))
        }
        Some(_) => Err(RequestErrorKind::InvalidFormat),
    }
}

/// Parses one request datagram. See the module documentation.
pub fn parse_request(datagram: &[u8]) -> Result<ParsedRequest, RequestError> {
    let fail = |cookie: Option<&[u8]>, encoding, command, kind| RequestError {
        cookie: cookie.map(<[u8]>::to_vec),
        encoding,
        command,
        kind,
    };
    let (cookie, body) =
        split_cookie(datagram).map_err(|k| fail(None, Encoding::Bencode, None, k))?;
    // Tell the encoding before decoding, so that a malformed JSON body gets a JSON error reply.
    let guessed = if body.first() == Some(&b'{') {
        Encoding::Json
    } else {
        Encoding::Bencode
    };
    let (dict, encoding) = decode_body(body).map_err(|k| fail(Some(cookie), guessed, None, k))?;
    let (request, warnings) = request_from_dict(&dict)
        .map_err(|(command, k)| fail(Some(cookie), encoding, command, k))?;
    Ok(ParsedRequest {
        cookie: cookie.to_vec(),
        encoding,
        request,
        warnings,
    })
}

/// Types an already decoded request dictionary (shared by the bencode and JSON forms, and
/// usable by other transports). On error, also returns the command if it was recognised.
pub fn request_from_dict(
    dict: &Value,
) -> Result<(Request, Warnings), (Option<Command>, RequestErrorKind)> {
    let command = match dict.get("command") {
        None => return Err((None, RequestErrorKind::MissingCommand)),
        Some(Value::Bytes(name)) => match Command::lookup(name) {
            CommandLookup::Served(c) => c,
            CommandLookup::Unsupported(name) => {
                return Err((None, RequestErrorKind::UnsupportedCommand(name)));
            }
            CommandLookup::Unknown => {
                return Err((None, RequestErrorKind::UnknownCommand(quote(name))));
            }
        },
        Some(other) => {
            return Err((
                None,
                RequestErrorKind::WrongType {
                    key: "command".to_owned(),
                    expected: "string",
                    found: other.type_name(),
                },
            ));
        }
    };
    // Ping carries nothing else; rtpengine ignores any other keys.
    if command == Command::Ping {
        return Ok((Request::Ping, Warnings::default()));
    }
    let pairs = dict.as_dict().unwrap_or_default();
    if command == Command::Service {
        let call_id = match dict.get("call-id") {
            Some(Value::Bytes(b)) if !b.is_empty() => {
                String::from_utf8(b.clone()).map_err(|_| {
                    (
                        Some(command),
                        RequestErrorKind::WrongType {
                            key: "call-id".to_owned(),
                            expected: "UTF-8 string",
                            found: "bytes",
                        },
                    )
                })?
            }
            _ => return Err((Some(command), RequestErrorKind::Missing(MissingKey::CallId))),
        };
        let params = Value::dict(
            pairs
                .iter()
                .filter(|(k, _)| k.as_slice() != b"command" && k.as_slice() != b"call-id")
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        return Ok((
            Request::Service(ServiceCommand { call_id, params }),
            Warnings::default(),
        ));
    }
    let mut fields = Fields::default();
    for (key, value) in pairs {
        fields
            .apply_entry(key, value)
            .map_err(|k| (Some(command), k))?;
    }
    build(command, fields).map_err(|k| (Some(command), k))
}

/// Checks the per-command required keys (in rtpengine's order: sdp, call-id, from-tag,
/// to-tag) and builds the typed request. Empty strings count as missing.
fn build(command: Command, f: Fields) -> Result<(Request, Warnings), RequestErrorKind> {
    let missing = |k| RequestErrorKind::Missing(k);
    let nonempty = |s: Option<String>| s.filter(|s| !s.is_empty());
    let call_id = nonempty(f.call_id);
    let from_tag = nonempty(f.from_tag);
    let to_tag = nonempty(f.to_tag);
    let via_branch = nonempty(f.via_branch);
    let sdp = f.sdp.filter(|s| !s.is_empty());
    let request = match command {
        Command::Ping => Request::Ping,
        Command::Offer | Command::Answer => {
            let sdp = sdp.ok_or(missing(MissingKey::Sdp))?;
            let call_id = call_id.ok_or(missing(MissingKey::CallId))?;
            let from_tag = from_tag.ok_or(missing(MissingKey::FromTag))?;
            if command == Command::Offer {
                Request::Offer(Offer {
                    call_id,
                    from_tag,
                    to_tag,
                    via_branch,
                    sdp,
                    options: f.options,
                })
            } else {
                Request::Answer(Answer {
                    call_id,
                    from_tag,
                    to_tag: to_tag.ok_or(missing(MissingKey::ToTag))?,
                    via_branch,
                    sdp,
                    options: f.options,
                })
            }
        }
        Command::Delete => Request::Delete(Delete {
            call_id: call_id.ok_or(missing(MissingKey::CallId))?,
            from_tag,
            to_tag,
            via_branch,
            options: f.options,
        }),
        Command::Query => Request::Query(Query {
            call_id: call_id.ok_or(missing(MissingKey::CallId))?,
            from_tag,
            to_tag,
            options: f.options,
        }),
        // Built before the generic fields (see request_from_dict).
        Command::Service => return Err(RequestErrorKind::UnknownCommand("service".into())),
        Command::List => Request::List(List {
            limit: match f.limit {
                None => List::DEFAULT_LIMIT,
                Some(l) if l < 0 => return Err(RequestErrorKind::InvalidLimit),
                Some(l) => u32::try_from(l).unwrap_or(u32::MAX),
            },
        }),
    };
    Ok((request, f.warnings))
}
