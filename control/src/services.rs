//! Mid-call service insertion: a request carrying a signed ticket is verified, paid for with
//! one usage token of the call's account, and applied by the engine. Sans-IO like the engine
//! and charging (the time comes in; the ledger is the only storage), so the whole chain runs
//! in virtual time in tests; the HTTP API and the event channel are thin drivers over
//! [`handle_service`].
//!
//! Order, so that a refusal changes nothing: the call (exists, answered, has an account) →
//! the ticket (signature, expiry, call, account, allowed services) → the request's service and
//! parameters (must agree with the ticket's) → the engine's dry run → the ticket's nonce (a
//! ticket inserts its service once) → one usage token → the engine applies it. If applying
//! fails after all, the token is given back and the ticket may be used again.

use std::net::SocketAddr;

use rtpedge_dataplane::RateLimit;
use serde_json::{Map, Value, json};

use crate::{
    billing::{
        LedgerError,
        auth::{AuthError, Service, TicketClaims},
    },
    charging::Charging,
    engine::{
        EngineError, Timestamp,
        service::{ServiceApplied, ServiceChange, ServiceTarget},
    },
};

/// DSCP of a QoS upgrade that names none: EF.
pub const DEFAULT_QOS_DSCP: u8 = 46;

/// A service request as the HTTP API and the event channel carry it:
/// `{"ticket": "...", "service": "qos"|"qos-upgrade"|"add-party"|"split"|"fork", ...params}`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServiceRequest {
    /// The signed ticket.
    pub ticket: String,
    /// The service asked for; None: the ticket's.
    pub service: Option<String>,
    /// Parameters (the ticket's own parameters take precedence and must not be contradicted).
    pub params: Map<String, Value>,
}

impl ServiceRequest {
    /// From a JSON object: `ticket` (required), `service`, and every other key a parameter
    /// (or a nested `params` object).
    pub fn from_json(v: &Value) -> Result<Self, ServiceError> {
        let obj = v
            .as_object()
            .ok_or_else(|| ServiceError::BadRequest("expected a JSON object".into()))?;
        let ticket = obj
            .get("ticket")
            .and_then(Value::as_str)
            .ok_or_else(|| ServiceError::BadRequest("\"ticket\" (a string) is required".into()))?
            .to_string();
        let service = match obj.get("service") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                return Err(ServiceError::BadRequest(
                    "\"service\" must be a string".into(),
                ));
            }
        };
        let mut params = Map::new();
        for (k, val) in obj {
            match k.as_str() {
                "ticket" | "service" | "call_id" => {}
                "params" => match val {
                    Value::Object(m) => params.extend(m.clone()),
                    _ => {
                        return Err(ServiceError::BadRequest(
                            "\"params\" must be an object".into(),
                        ));
                    }
                },
                _ => {
                    params.insert(k.clone(), val.clone());
                }
            }
        }
        Ok(Self {
            ticket,
            service,
            params,
        })
    }
}

/// Why a service request was refused. Each has a stable code and an HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// No such call.
    #[error("no call {0:?}")]
    NoSuchCall(String),
    /// The call is not answered yet.
    #[error("call {0:?} has not been answered yet")]
    NotAnswered(String),
    /// The call has ended.
    #[error("call {0:?} has ended")]
    CallEnded(String),
    /// The call is billed to no account, so no token can pay for a service.
    #[error("call {0:?} has no billing account to take a usage token from")]
    NoAccount(String),
    /// No keys to verify tickets with.
    #[error("service tickets are not accepted: no ticket keys configured ([auth] ticket_keys)")]
    NotConfigured,
    /// The ticket was refused.
    #[error("ticket refused: {0}")]
    Ticket(AuthError),
    /// The request is malformed or contradicts the ticket.
    #[error("{0}")]
    BadRequest(String),
    /// The account has no usage tokens left.
    #[error("account {0:?} has no usage tokens left")]
    NoTokens(String),
    /// The account is blocked.
    #[error("account {0:?} is blocked")]
    Blocked(String),
    /// The call's account does not exist in the ledger.
    #[error("no account {0:?}")]
    UnknownAccount(String),
    /// The ledger failed.
    #[error("ledger: {0}")]
    Ledger(LedgerError),
    /// The bridge or data plane refused the change (nothing was charged).
    #[error("applying the service failed: {0}")]
    Apply(EngineError),
}

impl ServiceError {
    /// A stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ServiceError::NoSuchCall(_) => "no-such-call",
            ServiceError::NotAnswered(_) => "call-not-answered",
            ServiceError::CallEnded(_) => "call-ended",
            ServiceError::NoAccount(_) => "no-account",
            ServiceError::NotConfigured => "not-configured",
            ServiceError::Ticket(e) => e.code(),
            ServiceError::BadRequest(_) => "bad-request",
            ServiceError::NoTokens(_) => "no-tokens",
            ServiceError::Blocked(_) => "account-blocked",
            ServiceError::UnknownAccount(_) => "no-such-account",
            ServiceError::Ledger(_) => "ledger",
            ServiceError::Apply(_) => "apply-failed",
        }
    }

    /// The HTTP status: 401 a ticket that is not genuine or not valid now, 403 a genuine
    /// ticket for something else, 402 no tokens (or blocked), 404 no such call, 409 the call
    /// or ticket is in the wrong state, 400 bad parameters, 503 not configured or the
    /// ledger failing, 500 the media plane failing.
    pub fn http_status(&self) -> u16 {
        match self {
            ServiceError::NoSuchCall(_) => 404,
            ServiceError::NotAnswered(_) | ServiceError::CallEnded(_) => 409,
            ServiceError::NoAccount(_) => 403,
            ServiceError::NotConfigured | ServiceError::Ledger(_) => 503,
            ServiceError::Ticket(e) => match e {
                AuthError::WrongAccount { .. }
                | AuthError::WrongCall { .. }
                | AuthError::ServiceNotAllowed(_) => 403,
                AuthError::Replayed(_) => 409,
                AuthError::ReplayCacheFull => 503,
                _ => 401,
            },
            ServiceError::BadRequest(_) => 400,
            ServiceError::NoTokens(_)
            | ServiceError::Blocked(_)
            | ServiceError::UnknownAccount(_) => 402,
            ServiceError::Apply(_) => 500,
        }
    }
}

/// A service applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceOutcome {
    /// The call.
    pub call_id: String,
    /// The account that paid one token.
    pub account: String,
    /// The service.
    pub service: Service,
    /// Tokens left on the account.
    pub tokens_left: u32,
    /// What changed.
    pub applied: ServiceApplied,
}

impl ServiceOutcome {
    /// The JSON answer (HTTP, event channel), also the payload of the `service` call event.
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "call_id": self.call_id,
            "account": self.account,
            "service": self.service.as_str(),
            "tokens_left": self.tokens_left,
        });
        let extra = match &self.applied {
            ServiceApplied::Qos { dscp, rate, legs } => json!({
                "dscp": dscp,
                "rate": rate.map(|r| r.to_string()),
                "legs": legs,
            }),
            ServiceApplied::PartyAdded {
                name,
                media,
                local,
                local_rtcp,
                kind,
                protocol,
                codec,
                parties,
            } => json!({
                "party": name,
                "media": media,
                "local": local.to_string(),
                "local_rtcp": local_rtcp.map(|a| a.to_string()),
                "rtcp_mux": local_rtcp.is_none(),
                "parties": parties,
                "sdp": party_sdp(*local, *local_rtcp, kind, protocol, codec.as_deref()),
            }),
            ServiceApplied::Split {
                media,
                groups,
                isolated,
            } => json!({ "media": media, "groups": groups, "isolated": isolated }),
            ServiceApplied::Forked {
                recorder,
                recorder_rtcp,
                legs,
            } => json!({
                "recorder": recorder.to_string(),
                "recorder_rtcp": recorder_rtcp.map(|a| a.to_string()),
                "legs": legs,
            }),
        };
        if let (Value::Object(o), Value::Object(e)) = (&mut v, extra) {
            o.extend(e);
        }
        v
    }
}

/// Static RTP payload types (RFC 3551) of common codecs.
fn static_pt(codec: &str) -> Option<u8> {
    let name = codec.split('/').next().unwrap_or(codec);
    Some(match name.to_ascii_uppercase().as_str() {
        "PCMU" => 0,
        "GSM" => 3,
        "G723" => 4,
        "PCMA" => 8,
        "G722" => 9,
        "G728" => 15,
        "G729" => 18,
        _ => return None,
    })
}

/// The SDP an added party is given: where to send its media (one media section).
pub fn party_sdp(
    local: SocketAddr,
    local_rtcp: Option<SocketAddr>,
    kind: &str,
    protocol: &str,
    codec: Option<&str>,
) -> String {
    let fam = if local.is_ipv6() { "IP6" } else { "IP4" };
    let ip = local.ip();
    let codec = codec.unwrap_or("PCMU/8000");
    let (pt, rtpmap) = match static_pt(codec) {
        Some(pt) => (pt, format!("a=rtpmap:{pt} {codec}\r\n")),
        None => (96, format!("a=rtpmap:96 {codec}\r\n")),
    };
    let rtcp = match local_rtcp {
        Some(r) => format!("a=rtcp:{}\r\n", r.port()),
        None => "a=rtcp-mux\r\n".to_string(),
    };
    let kind = if kind.is_empty() { "audio" } else { kind };
    let protocol = if protocol.is_empty() {
        "RTP/AVP"
    } else {
        protocol
    };
    format!(
        "v=0\r\no=rtpedge 1 1 IN {fam} {ip}\r\ns=rtpedge\r\nc=IN {fam} {ip}\r\nt=0 0\r\n\
         m={kind} {port} {protocol} {pt}\r\n{rtpmap}{rtcp}a=sendrecv\r\n",
        port = local.port()
    )
}

/// The service a request names (`qos` is short for `qos-upgrade`).
pub fn parse_service(name: &str) -> Result<Service, ServiceError> {
    match name {
        "qos" | "qos-upgrade" => Ok(Service::QosUpgrade),
        "add-party" => Ok(Service::AddParty),
        "split" => Ok(Service::Split),
        "fork" => Ok(Service::Fork),
        other => Err(ServiceError::BadRequest(format!(
            "unknown service {other:?} (qos, add-party, split, fork)"
        ))),
    }
}

fn bad(msg: impl Into<String>) -> ServiceError {
    ServiceError::BadRequest(msg.into())
}

fn addr_param(p: &Map<String, Value>, key: &str) -> Result<Option<SocketAddr>, ServiceError> {
    match p.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => s
            .parse()
            .map(Some)
            .map_err(|_| bad(format!("{key}: {s:?} is not ADDR:PORT"))),
        Some(_) => Err(bad(format!("{key}: expected \"ADDR:PORT\""))),
    }
}

/// A non-negative integer, also written as a string (ng values from Kamailio's flags are).
fn uint_param(p: &Map<String, Value>, key: &str) -> Result<Option<u64>, ServiceError> {
    let n = match p.get(key) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => s.trim().parse().ok(),
        Some(v) => v.as_u64(),
    };
    n.map(Some)
        .ok_or_else(|| bad(format!("{key}: expected a non-negative integer")))
}

/// true/false, also as `yes`/`no`/`on`/`off`/`1`/`0` (ng).
fn bool_param(p: &Map<String, Value>, key: &str) -> Result<bool, ServiceError> {
    match p.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::Number(n)) if n.as_u64() == Some(0) => Ok(false),
        Some(Value::Number(n)) if n.as_u64() == Some(1) => Ok(true),
        Some(Value::String(s)) => match s.to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "1" => Ok(true),
            "false" | "no" | "off" | "0" => Ok(false),
            _ => Err(bad(format!("{key}: expected true or false"))),
        },
        Some(_) => Err(bad(format!("{key}: expected true or false"))),
    }
}

/// `groups`: `[["a","p1"],["b"]]`, or as one string `"a,p1;b"` (ng).
fn groups_param(p: &Map<String, Value>) -> Result<Vec<Vec<String>>, ServiceError> {
    let missing = || bad("groups: an array of arrays of party names is required");
    match p.get("groups") {
        Some(Value::String(s)) => Ok(s
            .split(';')
            .map(|g| {
                g.split(',')
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .filter(|g| !g.is_empty())
            .collect()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|g| {
                g.as_array()
                    .ok_or_else(|| bad("groups: each group is an array of party names"))?
                    .iter()
                    .map(|n| {
                        n.as_str()
                            .map(str::to_string)
                            .ok_or_else(|| bad("groups: party names are strings"))
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect(),
        _ => Err(missing()),
    }
}

fn media_param(p: &Map<String, Value>) -> Result<Option<usize>, ServiceError> {
    uint_param(p, "media")?
        .map(|m| usize::try_from(m).map_err(|_| bad("media: out of range")))
        .transpose()
}

/// The engine change a service and its parameters ask for.
pub fn change_of(service: Service, p: &Map<String, Value>) -> Result<ServiceChange, ServiceError> {
    Ok(match service {
        Service::QosUpgrade => {
            let dscp = match uint_param(p, "dscp")? {
                None => DEFAULT_QOS_DSCP,
                Some(d) if d <= 63 => d as u8,
                Some(d) => return Err(bad(format!("dscp: {d} is out of range 0..=63"))),
            };
            let rate = match p.get("rate") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(
                    s.parse::<RateLimit>()
                        .map_err(|e| bad(format!("rate: {e}")))?,
                ),
                Some(_) => return Err(bad("rate: expected \"PPS/BURST\", e.g. \"200/50\"")),
            };
            ServiceChange::Qos { dscp, rate }
        }
        Service::AddParty => ServiceChange::AddParty {
            media: media_param(p)?.unwrap_or(0),
            remote: addr_param(p, "remote")?
                .ok_or_else(|| bad("remote: the new party's \"ADDR:PORT\" is required"))?,
            remote_rtcp: addr_param(p, "remote_rtcp")?,
            rtcp_mux: bool_param(p, "rtcp_mux")?,
            name: match p.get("party") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(_) => return Err(bad("party: expected a name")),
            },
            trust_address: bool_param(p, "trust_address")?,
        },
        Service::Split => {
            let groups = groups_param(p)?;
            ServiceChange::Split {
                media: media_param(p)?.unwrap_or(0),
                groups,
            }
        }
        Service::Fork => ServiceChange::Fork {
            recorder: addr_param(p, "recorder")?
                .ok_or_else(|| bad("recorder: the recorder's \"ADDR:PORT\" is required"))?,
            recorder_rtcp: addr_param(p, "recorder_rtcp")?,
            media: media_param(p)?,
        },
    })
}

/// The ticket's parameters over the request's; a request value that contradicts the ticket
/// is refused (the ticket is what was paid for and signed).
fn merge_params(
    ticket: &Map<String, Value>,
    request: &Map<String, Value>,
) -> Result<Map<String, Value>, ServiceError> {
    let mut out = request.clone();
    for (k, v) in ticket {
        if let Some(r) = request.get(k)
            && r != v
        {
            return Err(bad(format!(
                "{k}: the request says {r}, the ticket says {v}"
            )));
        }
        out.insert(k.clone(), v.clone());
    }
    Ok(out)
}

fn engine_refusal(call_id: &str, e: EngineError) -> ServiceError {
    match e {
        EngineError::UnknownCall => ServiceError::NoSuchCall(call_id.to_string()),
        EngineError::NotAnswered => ServiceError::NotAnswered(call_id.to_string()),
        EngineError::CallEnded => ServiceError::CallEnded(call_id.to_string()),
        EngineError::Invalid(m) => ServiceError::BadRequest(m),
        EngineError::Dataplane(rtpedge_dataplane::DataplaneError::Invalid(m)) => {
            ServiceError::BadRequest(m)
        }
        // E.g. an IPv6 party on a host with IPv4 media addresses only.
        EngineError::Media(e @ rtpedge_bridge::BridgeError::NoAddressOfFamily(_)) => {
            ServiceError::BadRequest(e.to_string())
        }
        other => ServiceError::Apply(other),
    }
}

/// Verifies, pays for and applies a service request on a running call. An applied service is
/// also queued as an event for the channel's `call` subscribers
/// ([`Charging::take_service_events`]).
pub fn handle_service(
    now: Timestamp,
    engine: &mut dyn ServiceTarget,
    charging: &mut Charging,
    call_id: &str,
    req: &ServiceRequest,
) -> Result<ServiceOutcome, ServiceError> {
    // The service for the metrics: the ticket's once it verified, else what was asked.
    let mut ticketed = None;
    let result = handle(now, engine, charging, call_id, req, &mut ticketed);
    let service = ticketed
        .or_else(|| req.service.as_deref().and_then(|s| parse_service(s).ok()))
        .map_or("unknown", Service::as_str);
    let outcome = match &result {
        Ok(_) => "applied",
        Err(e) => e.code(),
    };
    charging.count_service(service, outcome);
    result
}

fn handle(
    now: Timestamp,
    engine: &mut dyn ServiceTarget,
    charging: &mut Charging,
    call_id: &str,
    req: &ServiceRequest,
    ticketed: &mut Option<Service>,
) -> Result<ServiceOutcome, ServiceError> {
    let account = engine
        .service_account(call_id)
        .map_err(|e| engine_refusal(call_id, e))?
        .or_else(|| charging.default_account().map(str::to_string))
        .ok_or_else(|| ServiceError::NoAccount(call_id.to_string()))?;
    if !charging.accepts_tickets() {
        return Err(ServiceError::NotConfigured);
    }
    let claims: TicketClaims = charging
        .verify_ticket(now, call_id, &account, &req.ticket)
        .map_err(ServiceError::Ticket)?;
    *ticketed = Some(claims.service);
    if let Some(asked) = &req.service {
        let asked = parse_service(asked)?;
        if asked != claims.service {
            return Err(bad(format!(
                "the ticket is for {}, the request asks for {}",
                claims.service, asked
            )));
        }
    }
    let params = merge_params(&claims.params, &req.params)?;
    let change = change_of(claims.service, &params)?;
    engine
        .check_service(call_id, &change)
        .map_err(|e| engine_refusal(call_id, e))?;
    charging
        .claim_ticket(now, &claims)
        .map_err(ServiceError::Ticket)?;
    let tokens_left = match charging.take_token(&account, call_id) {
        Ok(n) => n,
        Err(e) => {
            charging.unclaim_ticket(&claims);
            return Err(match e {
                LedgerError::NoTokens(a) => ServiceError::NoTokens(a),
                LedgerError::Blocked(a) => ServiceError::Blocked(a),
                LedgerError::NoSuchAccount(a) => ServiceError::UnknownAccount(a),
                other => ServiceError::Ledger(other),
            });
        }
    };
    match engine.handle_service(now, call_id, change) {
        Ok(applied) => {
            let out = ServiceOutcome {
                call_id: call_id.to_string(),
                account,
                service: claims.service,
                tokens_left,
                applied,
            };
            charging.push_service_event(out.to_json());
            Ok(out)
        }
        Err(e) => {
            charging.unclaim_ticket(&claims);
            if let Err(r) = charging.refund_token(&account) {
                tracing::error!(call = call_id, %account, error = %r, "refunding a usage token failed");
            }
            tracing::warn!(call = call_id, error = %e, "service could not be applied");
            Err(engine_refusal(call_id, e))
        }
    }
}

#[cfg(test)]
mod tests;
