//! The ng front end: turns ng requests into engine calls and engine results into ng replies, in
//! rtpengine's shapes, so Kamailio's and OpenSIPS' rtpengine modules work unchanged.
//!
//! It owns the reply cache (a retransmitted cookie gets the same reply and the command is not
//! run twice) and the SDP work around the engine: parsing the offer/answer into media
//! descriptions, and rewriting it with the addresses the engine allocated. It does no I/O: the
//! daemon hands it a datagram and sends back what it returns.

mod report;
mod transport;

use std::net::{IpAddr, SocketAddr};

use rtpedge_dataplane::Dataplane;

use crate::{
    engine::{
        self, Advertised, AnswerRequest, CallReport, Engine, EngineError, MediaDesc, MediaPlane,
        MuxAdvert, OfferRequest, StreamReport, Timestamp,
    },
    ng::{
        self, Ice, Options, ReplyCache, Request, Tos, Value, Warning, Warnings, encode_reply, reply,
    },
    sdp::{
        self, MediaRewrite, Rewrite, RtcpAttributeStyle, RtcpMuxRewrite, RtcpRewrite, VersionChange,
    },
};

/// Decides whether an offer may create a new call (fraud guard, authorization). Consulted
/// only for new calls; re-offers of a call already admitted are not asked again.
pub trait Admission {
    /// `Ok(account)`: admitted, billed to `account` when it is `Some` (e.g. the account an
    /// authorization token names); `Err(reason)`: refused, with the reason for the reply.
    fn admit(
        &mut self,
        now: Timestamp,
        call_id: &str,
        source: Option<IpAddr>,
        account: Option<&str>,
        token: Option<&str>,
    ) -> Result<Option<String>, String>;

    /// Inserts a service into a running call (ng `service`, an rtpedge extension). Without
    /// a charging layer there is no one to verify tickets or take tokens: refused.
    fn insert_service(
        &mut self,
        _now: Timestamp,
        _engine: &mut dyn crate::engine::service::ServiceTarget,
        _call_id: &str,
        _req: &crate::services::ServiceRequest,
    ) -> Result<crate::services::ServiceOutcome, crate::services::ServiceError> {
        Err(crate::services::ServiceError::NotConfigured)
    }
}

/// Admits every call (no fraud guard, no authorization).
pub struct AdmitAll;

impl Admission for AdmitAll {
    fn admit(
        &mut self,
        _: Timestamp,
        _: &str,
        _: Option<IpAddr>,
        _: Option<&str>,
        _: Option<&str>,
    ) -> Result<Option<String>, String> {
        Ok(None)
    }
}

/// What `delete` answers for a call it does not know (rtpengine's wording).
const DELETE_NOT_FOUND: &str = "Call-ID not found or tags didn't match";

/// The ng request handler.
pub struct NgServer {
    cache: ReplyCache,
    /// Requests answered, by command and result (`ok`, `pong`, `error`, `load limit`), and
    /// retransmissions answered from the cache.
    counts: std::collections::BTreeMap<(&'static str, String), u64>,
    /// Per family, the address written into SDP instead of the legs' own.
    advertised: Vec<IpAddr>,
    /// Account of offers that name none, from the SIP From user.
    account_mapping: Option<crate::billing::mapping::AccountMapping>,
}

impl NgServer {
    /// A handler; `advertised` (one per family) replaces the legs' addresses in SDP (host
    /// behind 1:1 NAT).
    pub fn new(advertised: Vec<IpAddr>) -> Self {
        Self {
            cache: ReplyCache::default(),
            counts: std::collections::BTreeMap::new(),
            advertised,
            account_mapping: None,
        }
    }

    /// Attributes offers that name no account (ng `account`, authorization token) by the SIP
    /// From user (ng `from-uri` / `from-user`).
    pub fn with_account_mapping(
        mut self,
        m: Option<crate::billing::mapping::AccountMapping>,
    ) -> Self {
        self.account_mapping = m;
        self
    }

    /// Requests answered so far, by (command, result).
    pub fn counts(&self) -> impl Iterator<Item = (&(&'static str, String), &u64)> {
        self.counts.iter()
    }

    /// Drops cached replies older than the cache's TTL.
    pub fn expire(&mut self, now: Timestamp) {
        self.cache.expire(now.mono);
    }

    /// Handles one request datagram; returns the reply datagram (None: nothing to answer, e.g.
    /// no cookie).
    pub fn handle<M: MediaPlane, D: Dataplane>(
        &mut self,
        engine: &mut Engine<M, D>,
        admission: &mut dyn Admission,
        datagram: &[u8],
        from: SocketAddr,
        now: Timestamp,
    ) -> Option<Vec<u8>> {
        let stage = self.decode(datagram, from, now);
        self.complete(engine, admission, stage, false, now)
    }

    /// Handles the request datagrams that arrived together, in order, and returns each reply
    /// (None: nothing to answer). Each reply is what [`NgServer::handle`] would give; the
    /// calls the batch deletes have their media stopped together first, so the media plane is
    /// waited for once per batch, not once per delete.
    pub fn handle_batch<'a, M: MediaPlane, D: Dataplane>(
        &mut self,
        engine: &mut Engine<M, D>,
        admission: &mut dyn Admission,
        datagrams: impl IntoIterator<Item = (&'a [u8], SocketAddr)>,
        now: Timestamp,
        replies: &mut Vec<(Vec<u8>, SocketAddr)>,
    ) {
        let stages: Vec<(Stage, SocketAddr)> = datagrams
            .into_iter()
            .map(|(d, from)| (self.decode(d, from, now), from))
            .collect();
        let mut deletes = 0;
        for (stage, _) in &stages {
            if let Stage::Parsed(p) = stage
                && let Request::Delete(d) = &p.request
            {
                engine.stop_media(&d.call_id);
                deletes += 1;
            }
        }
        if deletes > 0 {
            engine.flush_media();
        }
        // A retransmission in the same batch as its original is answered from the cache once
        // the original has run.
        let repeated: Vec<bool> = (0..stages.len())
            .map(|i| match &stages[i].0 {
                Stage::Parsed(p) => stages[..i]
                    .iter()
                    .any(|(s, _)| matches!(s, Stage::Parsed(q) if q.cookie == p.cookie)),
                Stage::Done(_) => false,
            })
            .collect();
        for ((stage, from), repeated) in stages.into_iter().zip(repeated) {
            if let Some(reply) = self.complete(engine, admission, stage, repeated, now) {
                replies.push((reply, from));
            }
        }
    }

    /// A datagram decoded: answered from the reply cache, refused as malformed, or a request
    /// to execute.
    fn decode(&mut self, datagram: &[u8], from: SocketAddr, now: Timestamp) -> Stage {
        if let Ok((cookie, _)) = ng::split_cookie(datagram)
            && let Some(cached) = self.cache.get(cookie, now.mono)
        {
            let reply = cached.to_vec();
            *self
                .counts
                .entry(("retransmission", "cached".into()))
                .or_default() += 1;
            return Stage::Done(Some(reply));
        }
        match ng::parse_request(datagram) {
            Ok(p) => Stage::Parsed(Box::new(p)),
            Err(e) => {
                *self
                    .counts
                    .entry(("malformed", "error".into()))
                    .or_default() += 1;
                tracing::debug!(%from, reason = %e.reason(), "malformed ng request");
                let Some(bytes) = e.reply() else {
                    return Stage::Done(None);
                };
                match e.cookie {
                    Some(cookie) => {
                        self.cache.insert(&cookie, bytes.clone(), now.mono);
                        Stage::Done(Some(bytes))
                    }
                    None => Stage::Done(None),
                }
            }
        }
    }

    /// Executes a decoded request and caches its reply; `repeated`: its cookie came earlier
    /// in the same batch, so the reply may be cached by now.
    fn complete<M: MediaPlane, D: Dataplane>(
        &mut self,
        engine: &mut Engine<M, D>,
        admission: &mut dyn Admission,
        stage: Stage,
        repeated: bool,
        now: Timestamp,
    ) -> Option<Vec<u8>> {
        let p = match stage {
            Stage::Done(reply) => return reply,
            Stage::Parsed(p) => *p,
        };
        if repeated && let Some(cached) = self.cache.get(&p.cookie, now.mono) {
            *self
                .counts
                .entry(("retransmission", "cached".into()))
                .or_default() += 1;
            return Some(cached.to_vec());
        }
        let mut warnings = p.warnings;
        let command = p.request.command().as_str();
        let json = p.encoding.is_json();
        let (result, bytes) = match self.execute(engine, admission, p.request, &mut warnings, now) {
            Answer::Report(r) if !json => {
                let warning = warnings.to_text();
                let bytes = report::report_datagram(&p.cookie, &r, now.unix_ms, warning.as_deref());
                ("ok".to_string(), bytes)
            }
            Answer::Report(r) => {
                let mut value = report_reply(&r, now.unix_ms);
                reply::add_warning(&mut value, warnings.to_text().as_deref());
                ("ok".to_string(), encode_reply(&p.cookie, &value, json))
            }
            Answer::Value(mut value) => {
                let result = value.get_str("result").unwrap_or("none").to_string();
                reply::add_warning(&mut value, warnings.to_text().as_deref());
                (result, encode_reply(&p.cookie, &value, json))
            }
        };
        *self.counts.entry((command, result)).or_default() += 1;
        self.cache.insert(&p.cookie, bytes.clone(), now.mono);
        Some(bytes)
    }

    fn execute<M: MediaPlane, D: Dataplane>(
        &self,
        engine: &mut Engine<M, D>,
        admission: &mut dyn Admission,
        request: Request,
        warnings: &mut Warnings,
        now: Timestamp,
    ) -> Answer {
        match request {
            Request::Ping => Answer::Value(reply::pong()),
            Request::Offer(o) => {
                let supports_limit = o.options.supports_load_limit;
                let result = self.offer(engine, admission, o, warnings, now);
                Answer::Value(into_reply(result, supports_limit))
            }
            Request::Answer(a) => {
                let supports_limit = a.options.supports_load_limit;
                let result = self.answer(engine, a, warnings, now);
                Answer::Value(into_reply(result, supports_limit))
            }
            Request::Delete(d) => match engine.delete(now, &d.call_id) {
                Ok(report) if d.options.flags.fast => {
                    Answer::Value(reply::ok().with("created", report.created_ms / 1000))
                }
                Ok(report) => Answer::Report(report),
                Err(EngineError::UnknownCall) if d.options.flags.fatal => {
                    Answer::Value(reply::error(DELETE_NOT_FOUND))
                }
                Err(EngineError::UnknownCall) => {
                    Answer::Value(reply::ok().with("warning", DELETE_NOT_FOUND))
                }
                Err(e) => Answer::Value(reply::error(&e.to_string())),
            },
            Request::Query(q) => match engine.query(&q.call_id) {
                Ok(report) => Answer::Report(report),
                Err(e) => Answer::Value(reply::error(&e.to_string())),
            },
            Request::Service(s) => Answer::Value({
                let outcome = json_of(&s.params)
                    .and_then(|p| crate::services::ServiceRequest::from_json(&p))
                    .and_then(|req| admission.insert_service(now, engine, &s.call_id, &req));
                match outcome {
                    Ok(out) => {
                        let mut r = reply::ok();
                        if let serde_json::Value::Object(m) = out.to_json() {
                            for (k, v) in m {
                                if let Some(v) = bencode_of(&v) {
                                    r.insert(k.replace('_', "-"), v);
                                }
                            }
                        }
                        r
                    }
                    Err(e) => reply::error(&e.to_string()).with("error-code", e.code()),
                }
            }),
            Request::List(l) => Answer::Value({
                let calls: Vec<Value> = engine
                    .call_ids()
                    .into_iter()
                    .take(l.limit as usize)
                    .map(Value::from)
                    .collect();
                reply::ok().with("calls", Value::List(calls))
            }),
        }
    }

    fn offer<M: MediaPlane, D: Dataplane>(
        &self,
        engine: &mut Engine<M, D>,
        admission: &mut dyn Admission,
        o: ng::Offer,
        warnings: &mut Warnings,
        now: Timestamp,
    ) -> Result<Value, Refusal> {
        let sd =
            sdp::parse(&o.sdp).map_err(|e| Refusal::Error(format!("Failed to parse SDP: {e}")))?;
        let media = media_of(&sd, o.options.media_address)?;
        let mut flags = flags_of(&o.options, warnings);
        if !engine.has_call(&o.call_id) {
            let admitted = admission
                .admit(
                    now,
                    &o.call_id,
                    flags.received_from,
                    flags.account.as_deref(),
                    o.options.auth_token.as_deref(),
                )
                .map_err(|reason| Refusal::Error(format!("Call refused: {reason}")))?;
            if flags.account.is_none() {
                flags.account = admitted;
            }
        }
        // Precedence: ng `account` (or the token's) > the From-user mapping > the default
        // account (applied by charging).
        if flags.account.is_none()
            && let Some(m) = &self.account_mapping
        {
            flags.account = m.account_for(
                o.options.from_uri.as_deref(),
                o.options.from_user.as_deref(),
            );
        }
        let adverts = engine
            .offer(
                now,
                OfferRequest {
                    call_id: o.call_id,
                    from_tag: o.from_tag,
                    to_tag: o.to_tag,
                    media,
                    flags,
                },
            )
            .map_err(Refusal::Engine)?;
        let out = sdp::rewrite(
            &sd,
            &self.rewrite_of(&sd, &adverts, &o.options, false, warnings),
        );
        Ok(reply::ok().with("sdp", out))
    }

    fn answer<M: MediaPlane, D: Dataplane>(
        &self,
        engine: &mut Engine<M, D>,
        a: ng::Answer,
        warnings: &mut Warnings,
        now: Timestamp,
    ) -> Result<Value, Refusal> {
        let sd =
            sdp::parse(&a.sdp).map_err(|e| Refusal::Error(format!("Failed to parse SDP: {e}")))?;
        let media = media_of(&sd, a.options.media_address)?;
        let flags = flags_of(&a.options, warnings);
        let adverts = engine
            .answer(
                now,
                AnswerRequest {
                    call_id: a.call_id,
                    from_tag: a.from_tag,
                    to_tag: a.to_tag,
                    media,
                    flags,
                },
            )
            .map_err(Refusal::Engine)?;
        let out = sdp::rewrite(
            &sd,
            &self.rewrite_of(&sd, &adverts, &a.options, true, warnings),
        );
        Ok(reply::ok().with("sdp", out))
    }

    /// The SDP changes that make the peer send to rtpedge's legs, and the transport protocol
    /// changes asked for (or, in an answer, the offered protocol back, as rtpengine does).
    fn rewrite_of(
        &self,
        sd: &sdp::SessionDescription,
        adverts: &[Advertised],
        opts: &Options,
        answer: bool,
        warnings: &mut Warnings,
    ) -> Rewrite {
        let addr = |a: &Advertised| {
            self.advertised
                .iter()
                .copied()
                .find(|x| x.is_ipv4() == a.rtp.is_ipv4())
                .unwrap_or(a.rtp.ip())
        };
        let origin = opts.replace.origin || opts.replace.origin_full;
        Rewrite {
            origin_address: origin.then(|| adverts.first().map(addr)).flatten(),
            origin_version: if opts.replace.force_increment_sdp_version || opts.replace.sdp_version
            {
                VersionChange::Increment
            } else {
                VersionChange::Keep
            },
            session_name: opts.replace.session_name.then(|| "rtpedge".to_string()),
            session_connection: None,
            // rtpedge does not do ICE: candidates would route media around the relay.
            strip_ice: true,
            rtcp_attribute: if opts.flags.no_rtcp_attribute {
                RtcpAttributeStyle::Omit
            } else if opts.flags.full_rtcp_attribute {
                RtcpAttributeStyle::Full
            } else {
                RtcpAttributeStyle::default()
            },
            media: adverts
                .iter()
                .enumerate()
                .map(|(i, a)| {
                    if a.rtp.port() == 0 {
                        return MediaRewrite::reject();
                    }
                    let mut mr = MediaRewrite {
                        port: Some(a.rtp.port()),
                        address: Some(addr(a)),
                        rtcp: match a.rtcp {
                            Some(r) => RtcpRewrite::Set {
                                port: r.port(),
                                address: None,
                            },
                            None => RtcpRewrite::Remove,
                        },
                        rtcp_mux: match a.rtcp_mux {
                            MuxAdvert::Use => RtcpMuxRewrite::Use,
                            MuxAdvert::Offer => RtcpMuxRewrite::Offer,
                            MuxAdvert::No => RtcpMuxRewrite::Remove,
                        },
                        ..MediaRewrite::default()
                    };
                    if let Some(m) = sd.media().get(i) {
                        protocol_change(&mut mr, m.proto(), i, a, opts, answer, warnings);
                    }
                    mr
                })
                .collect(),
        }
    }
}

/// The `m=` protocol toward the receiver of this SDP: ng `transport-protocol` if given; in an
/// answer without it, the protocol the offerer offered (rtpengine ignores an answerer's
/// protocol change unless `transport-protocol=accept`). Conversions that need keys are not
/// made: the section stays as it is and the reply gets a warning saying why.
fn protocol_change(
    mr: &mut MediaRewrite,
    proto: &str,
    i: usize,
    advert: &Advertised,
    opts: &Options,
    answer: bool,
    warnings: &mut Warnings,
) {
    let target = match (opts.transport_protocol, answer) {
        (Some(t), _) => Some(t),
        (None, true) if !opts.transport_accept => advert
            .offered_protocol
            .as_deref()
            .and_then(|p| ng::TransportProtocol::parse(p.as_bytes())),
        (None, _) => None,
    };
    let Some(target) = target else {
        return;
    };
    match transport::convert(proto, target) {
        Ok(transport::Conversion::Unchanged) => {}
        Ok(transport::Conversion::Rewrite {
            proto,
            strip_rtcp_fb,
        }) => {
            mr.proto = Some(proto.to_string());
            mr.strip_rtcp_fb = strip_rtcp_fb;
        }
        Err(transport::Unsupported(reason)) => {
            warnings.push(Warning::TransportNotConverted {
                section: i + 1,
                from: proto.to_string(),
                to: target.as_str().to_string(),
                reason,
            });
        }
    }
}

/// What a request produced: a reply dictionary, or a call's statistics (`query`, `delete`),
/// which are written to bencode directly.
enum Answer {
    Value(Value),
    Report(CallReport),
}

/// A request datagram between decoding and execution.
enum Stage {
    /// Nothing to execute: the cached reply, a malformed request's error, or no answer.
    Done(Option<Vec<u8>>),
    /// A request to execute.
    Parsed(Box<ng::ParsedRequest>),
}

/// Why an offer or answer was refused.
enum Refusal {
    Error(String),
    Engine(EngineError),
}

/// An ng dictionary as the service layer's JSON: keys in lower case with `-` and spaces as
/// `_` (`remote-rtcp` → `remote_rtcp`), strings as strings, integers as numbers.
fn json_of(v: &Value) -> Result<serde_json::Value, crate::services::ServiceError> {
    let bad = |m: String| crate::services::ServiceError::BadRequest(m);
    Ok(match v {
        Value::Int(i) => serde_json::Value::from(*i),
        Value::Bytes(b) => serde_json::Value::String(
            String::from_utf8(b.clone()).map_err(|_| bad("a value is not UTF-8".into()))?,
        ),
        Value::List(items) => {
            serde_json::Value::Array(items.iter().map(json_of).collect::<Result<Vec<_>, _>>()?)
        }
        Value::Dict(pairs) => {
            let mut m = serde_json::Map::new();
            for (k, val) in pairs {
                let key = String::from_utf8_lossy(k)
                    .to_ascii_lowercase()
                    .replace(['-', ' '], "_");
                m.insert(key, json_of(val)?);
            }
            serde_json::Value::Object(m)
        }
    })
}

/// A service answer's JSON as ng values (null left out, booleans as `yes`/`no`).
fn bencode_of(v: &serde_json::Value) -> Option<Value> {
    Some(match v {
        serde_json::Value::Null => return None,
        serde_json::Value::Bool(b) => Value::from(if *b { "yes" } else { "no" }),
        serde_json::Value::Number(n) => Value::Int(n.as_i64()?),
        serde_json::Value::String(s) => Value::from(s.as_str()),
        serde_json::Value::Array(a) => Value::List(a.iter().filter_map(bencode_of).collect()),
        serde_json::Value::Object(o) => Value::dict(
            o.iter()
                .filter_map(|(k, v)| Some((k.replace('_', "-"), bencode_of(v)?))),
        ),
    })
}

fn into_reply(result: Result<Value, Refusal>, supports_load_limit: bool) -> Value {
    match result {
        Ok(v) => v,
        Err(Refusal::Error(reason)) => reply::error(&reason),
        Err(Refusal::Engine(EngineError::LoadLimit)) => reply::overload(supports_load_limit, None),
        Err(Refusal::Engine(e)) => reply::error(&e.to_string()),
    }
}

/// The media descriptions the engine needs, from a parsed offer or answer. `media_address` (ng
/// `media address`) overrides the SDP's connection address (a sender known to misstate it).
fn media_of(
    sd: &sdp::SessionDescription,
    media_address: Option<IpAddr>,
) -> Result<Vec<MediaDesc>, Refusal> {
    sd.remote_media_all()
        .map(|m| {
            let rtp = match m.rtp {
                Some(a) => a,
                None if m.disabled => SocketAddr::from(([0, 0, 0, 0], 0)),
                None => {
                    return Err(Refusal::Error(format!(
                        "Incomplete SDP specification: media section {} has no connection address",
                        m.index + 1
                    )));
                }
            };
            let rtp = match media_address {
                Some(ip) => SocketAddr::new(ip, rtp.port()),
                None => rtp,
            };
            let rtcp = match (media_address, m.rtcp) {
                (Some(ip), Some(r)) => Some(SocketAddr::new(ip, r.port())),
                (_, r) => r,
            };
            Ok(MediaDesc {
                kind: m.media_type.to_string(),
                protocol: m.proto.to_string(),
                rtp: if m.disabled {
                    SocketAddr::new(rtp.ip(), 0)
                } else {
                    rtp
                },
                rtcp,
                rtcp_mux: m.rtcp_mux,
                codec: codec_of(sd, m.index),
                direction: match m.direction {
                    sdp::Direction::SendRecv => engine::Direction::SendRecv,
                    sdp::Direction::SendOnly => engine::Direction::SendOnly,
                    sdp::Direction::RecvOnly => engine::Direction::RecvOnly,
                    sdp::Direction::Inactive => engine::Direction::Inactive,
                },
            })
        })
        .collect()
}

/// Static RTP payload types (RFC 3551) by number: `ENCODING/CLOCK`.
fn static_codec(pt: u8) -> Option<&'static str> {
    Some(match pt {
        0 => "PCMU/8000",
        3 => "GSM/8000",
        4 => "G723/8000",
        8 => "PCMA/8000",
        9 => "G722/8000",
        18 => "G729/8000",
        _ => return None,
    })
}

/// The first format of a media section as `ENCODING/CLOCK` (its `a=rtpmap`, or the static
/// payload type's name).
fn codec_of(sd: &sdp::SessionDescription, index: usize) -> Option<String> {
    let m = sd.media().get(index)?;
    let first = m.formats().first()?;
    let pt: u8 = first.parse().ok()?;
    let mapped = m.attributes().iter().find_map(|a| match a.kind() {
        sdp::AttributeKind::Rtpmap(Some(r)) if r.payload_type == pt => {
            Some(format!("{}/{}", r.encoding, r.clock_rate))
        }
        _ => None,
    });
    mapped.or_else(|| static_codec(pt).map(str::to_string))
}

/// The engine's flags from ng options.
fn flags_of(opts: &Options, warnings: &mut Warnings) -> engine::Flags {
    if matches!(opts.ice, Some(Ice::Force)) {
        warnings.push(Warning::UnsupportedValue {
            key: "ICE",
            value: "force".into(),
        });
    }
    if opts.flags.asymmetric && opts.flags.media_handover {
        warnings.push(Warning::Contradiction {
            kept: "asymmetric",
            ignored: "media handover",
        });
    }
    let m = &opts.rtcp_mux;
    engine::Flags {
        asymmetric: opts.flags.asymmetric,
        rtcp_mux: engine::RtcpMuxFlags {
            offer: m.offer,
            require: m.require,
            demux: m.demux,
            accept: m.accept,
            reject: m.reject,
        },
        trust_address: opts.flags.trust_address == Some(true),
        sip_source_address: opts.flags.trust_address == Some(false),
        media_handover: opts.flags.media_handover,
        received_from: opts.received_from.map(|r| r.address),
        tos: match opts.tos {
            Some(Tos::Value(v)) => Some(v),
            _ => None,
        },
        account: opts.account.clone(),
        other_side_ipv6: opts.address_family.map(|f| f == ng::AddressFamily::Ip6),
    }
}

fn endpoint(addr: Option<SocketAddr>) -> Value {
    match addr {
        Some(a) => Value::dict([
            ("family", Value::from(family(a))),
            ("address", Value::from(a.ip().to_string())),
            ("port", Value::from(a.port())),
        ]),
        None => Value::new_dict(),
    }
}

fn family(a: SocketAddr) -> &'static str {
    if a.is_ipv4() { "IPv4" } else { "IPv6" }
}

fn stats(packets: u64, bytes: u64, errors: u64) -> Value {
    Value::dict([
        ("packets", Value::from(packets as i64)),
        ("bytes", Value::from(bytes as i64)),
        ("errors", Value::from(errors as i64)),
    ])
}

/// One stream entry (rtpengine lists a media section's RTP and RTCP ports as two streams).
fn stream_entry(
    local: SocketAddr,
    endpoint_addr: Option<SocketAddr>,
    advertised: Option<SocketAddr>,
    kind: &str,
    last_packet_s: i64,
    counters: Value,
) -> Value {
    let mut flags = vec![Value::from(kind)];
    if endpoint_addr.is_some() {
        flags.push(Value::from("filled"));
    }
    Value::dict([
        ("local port", Value::from(local.port())),
        ("local address", Value::from(local.ip().to_string())),
        ("family", Value::from(family(local))),
        ("endpoint", endpoint(endpoint_addr)),
        ("advertised endpoint", endpoint(advertised)),
        ("last packet", Value::from(last_packet_s)),
        ("flags", Value::List(flags)),
        ("stats", counters),
    ])
}

fn streams_of(s: &StreamReport, now_ms: i64, fallback_ms: i64) -> Vec<Value> {
    let last = s
        .idle
        .map_or(fallback_ms, |d| now_ms - d.as_millis() as i64)
        / 1000;
    let rtp_packets = s.packets.saturating_sub(s.rtcp_packets);
    let rtp_bytes = s.bytes.saturating_sub(s.rtcp_bytes);
    let mut v = Vec::with_capacity(2);
    if let Some(local) = s.local {
        let mut e = stream_entry(
            local,
            s.endpoint,
            s.advertised,
            "RTP",
            last,
            stats(rtp_packets, rtp_bytes, s.errors),
        );
        if let Some(ssrc) = s.ssrc {
            e.insert("SSRC", Value::from(i64::from(ssrc)));
        }
        v.push(e);
    }
    if let Some(local) = s.local_rtcp {
        let rtcp_of =
            |a: Option<SocketAddr>| a.map(|a| SocketAddr::new(a.ip(), a.port().wrapping_add(1)));
        v.push(stream_entry(
            local,
            rtcp_of(s.endpoint),
            rtcp_of(s.advertised),
            "RTCP",
            last,
            stats(s.rtcp_packets, s.rtcp_bytes, 0),
        ));
    }
    v
}

/// `query`/`delete` statistics in rtpengine's shape: `created`, `created_us`, `last signal`,
/// `SSRC`, `tags` → `medias` → `streams` (RTP and RTCP port each) → `stats`, and `totals`.
fn report_reply(r: &CallReport, now_ms: i64) -> Value {
    let (rtp, rtcp) = report::totals(r);
    let peer = |tag: Option<&str>| -> Value {
        Value::List(
            tag.map(|t| {
                Value::dict([
                    ("tag", Value::from(t)),
                    ("type", Value::from("offer/answer")),
                ])
            })
            .into_iter()
            .collect(),
        )
    };
    let tag_value = |tag: &str, other: Option<&str>, side: usize| {
        let medias: Vec<Value> = r
            .media
            .iter()
            .map(|m| {
                let s = if side == 0 { &m.from_a } else { &m.from_b };
                let mut flags = vec![Value::from("initialized")];
                if s.local.is_some() {
                    flags.push(Value::from("send"));
                    flags.push(Value::from("recv"));
                }
                let mut media = Value::dict([
                    ("index", Value::from((m.index + 1) as i64)),
                    ("type", Value::from(m.kind.as_str())),
                    ("protocol", Value::from(m.protocol.as_str())),
                    (
                        "streams",
                        Value::List(streams_of(s, now_ms, r.last_signal_ms)),
                    ),
                    ("flags", Value::List(flags)),
                ]);
                if let Some(c) = &m.codec {
                    media.insert("codec", Value::from(c.as_str()));
                }
                media
            })
            .collect();
        let mut v = Value::dict([
            ("tag", Value::from(tag)),
            ("created", Value::from(r.created_ms / 1000)),
            ("subscriptions", peer(other)),
            ("subscribers", peer(other)),
            ("medias", Value::List(medias)),
        ]);
        if let Some(o) = other {
            v.insert("in dialogue with", Value::from(o));
        }
        v
    };
    let mut tags = Value::new_dict();
    tags.insert(&r.a_tag, tag_value(&r.a_tag, r.b_tag.as_deref(), 0));
    if let Some(b) = &r.b_tag {
        tags.insert(b, tag_value(b, Some(&r.a_tag), 1));
    }
    let totals = Value::dict([
        ("RTP", stats(rtp[0], rtp[1], rtp[2])),
        ("RTCP", stats(rtcp[0], rtcp[1], rtcp[2])),
    ]);
    reply::ok()
        .with("created", r.created_ms / 1000)
        .with("created_us", (r.created_ms % 1000) * 1000)
        .with("last signal", r.last_signal_ms / 1000)
        .with("SSRC", Value::new_dict())
        .with("tags", tags)
        .with("totals", totals)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use rtpedge_dataplane::FakeDataplane;

    use super::*;
    use crate::{
        billing::mapping::AccountMapping,
        engine::{EngineConfig, FakeMedia},
    };

    fn offer(call_id: &str, extra: &[(&str, &str)]) -> Vec<u8> {
        let mut v = Value::new_dict()
            .with("command", "offer")
            .with("call-id", call_id)
            .with("from-tag", "ft")
            .with(
                "sdp",
                "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n",
            );
        for (k, val) in extra {
            v = v.with(k, *val);
        }
        // One cookie per call: the reply cache answers a repeated cookie from the cache.
        let mut out = format!("{call_id} ").into_bytes();
        ng::encode(&v, &mut out);
        out
    }

    /// ng `account` > the From-user mapping > nothing (the default account, applied later).
    #[test]
    fn the_account_comes_from_the_ng_key_else_the_from_user_mapping() {
        let mapping = AccountMapping::new(
            "from-user",
            None,
            HashMap::from([("alice".to_string(), "acme".to_string())]),
        )
        .unwrap();
        let mut ng = NgServer::new(Vec::new()).with_account_mapping(Some(mapping));
        let mut engine = Engine::new(
            EngineConfig::default(),
            FakeMedia::new("203.0.113.1".parse().unwrap()),
            FakeDataplane::new(),
        );
        let from = "127.0.0.1:9".parse().unwrap();
        let now = Timestamp::now();
        for (call, extra, account) in [
            (
                "k1",
                vec![("account", "explicit"), ("from-uri", "sip:alice@x")],
                Some("explicit"),
            ),
            (
                "k2",
                vec![("from-uri", "<sip:alice@x>;tag=ft")],
                Some("acme"),
            ),
            ("k3", vec![("from-user", "alice")], Some("acme")),
            ("k4", vec![("from-uri", "sip:mallory@x")], None),
            ("k5", vec![], None),
        ] {
            let reply = ng
                .handle(&mut engine, &mut AdmitAll, &offer(call, &extra), from, now)
                .unwrap();
            assert!(
                String::from_utf8_lossy(&reply).contains("6:result2:ok"),
                "{}",
                String::from_utf8_lossy(&reply)
            );
            assert_eq!(
                engine.query(call).unwrap().account.as_deref(),
                account,
                "{call}"
            );
        }
    }

    /// A batch gives the same replies as its requests one by one, stops every deleted call's
    /// media before any reply, and waits for the media plane once instead of once per delete.
    #[test]
    fn a_batch_answers_as_one_by_one_and_waits_for_the_media_plane_once() {
        let now = Timestamp::now();
        let from: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let request = |cookie: &str, v: Value| {
            let mut out = format!("{cookie} ").into_bytes();
            ng::encode(&v, &mut out);
            out
        };
        let answer = |call: &str| {
            request(
                &format!("{call}-a"),
                Value::new_dict()
                    .with("command", "answer")
                    .with("call-id", call)
                    .with("from-tag", "ft")
                    .with("to-tag", "tt")
                    .with(
                        "sdp",
                        "v=0\r\no=- 2 1 IN IP4 198.51.100.2\r\ns=-\r\nc=IN IP4 198.51.100.2\r\nt=0 0\r\nm=audio 5000 RTP/AVP 0\r\n",
                    ),
            )
        };
        let delete = |cookie: &str, call: &str| {
            request(
                cookie,
                Value::new_dict()
                    .with("command", "delete")
                    .with("call-id", call)
                    .with("from-tag", "ft"),
            )
        };
        let query = request(
            "q3",
            Value::new_dict()
                .with("command", "query")
                .with("call-id", "c3"),
        );
        let batch: Vec<Vec<u8>> = vec![
            delete("d1", "c1"),
            query.clone(),
            delete("d2", "c2"),
            delete("d1", "c1"),
            delete("d9", "nobody"),
            b"garbage".to_vec(),
            b"dx d5:helloe".to_vec(),
        ];
        let mut replies = Vec::new();
        for batched in [true, false] {
            let mut ng = NgServer::new(Vec::new());
            let mut engine = Engine::new(
                EngineConfig::default(),
                FakeMedia::new("203.0.113.1".parse().unwrap()),
                FakeDataplane::new(),
            );
            for call in ["c1", "c2", "c3"] {
                for req in [offer(call, &[]), answer(call)] {
                    let r = ng
                        .handle(&mut engine, &mut AdmitAll, &req, from, now)
                        .unwrap();
                    assert!(String::from_utf8_lossy(&r).contains("6:result2:ok"));
                }
            }
            assert_eq!(engine.media().splices.len(), 3);
            let waits = engine.media().waits;
            let mut out = Vec::new();
            if batched {
                ng.handle_batch(
                    &mut engine,
                    &mut AdmitAll,
                    batch.iter().map(|d| (d.as_slice(), from)),
                    now,
                    &mut out,
                );
                assert_eq!(engine.media().waits - waits, 1, "one wait for both deletes");
            } else {
                for d in &batch {
                    if let Some(r) = ng.handle(&mut engine, &mut AdmitAll, d, from, now) {
                        out.push((r, from));
                    }
                }
                assert_eq!(engine.media().waits - waits, 2, "one wait per delete");
            }
            assert_eq!(engine.media().splices.len(), 1, "only c3 still spliced");
            assert_eq!(engine.media().unflushed, 0);
            replies.push(out);
        }
        assert_eq!(
            replies[0].len(),
            6,
            "garbage without a cookie gets no answer"
        );
        assert_eq!(replies[0], replies[1]);
        let text: Vec<String> = replies[0]
            .iter()
            .map(|(r, _)| String::from_utf8_lossy(r).into_owned())
            .collect();
        assert!(text[0].starts_with("d1 ") && text[0].contains("6:result2:ok"));
        assert!(
            text[0].contains("6:totals"),
            "the final statistics: {}",
            text[0]
        );
        assert_eq!(
            text[0], text[3],
            "the retransmission is answered from the cache"
        );
        assert!(text[4].contains("Call-ID not found"), "{}", text[4]);
        assert!(
            text[5].starts_with("dx ") && text[5].contains("5:error"),
            "{}",
            text[5]
        );
    }

    // ---- rtcp-mux, transport-protocol, asymmetric through the ng front end ----

    const CALLER_HEAD: &str =
        "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n";
    const CALLEE_HEAD: &str =
        "v=0\r\no=- 2 1 IN IP4 198.51.100.2\r\ns=-\r\nc=IN IP4 198.51.100.2\r\nt=0 0\r\n";
    /// The relay's SDP head for a body whose head was `head` (only `c=` changes).
    fn relayed_head(head: &str) -> String {
        head.replace("c=IN IP4 192.0.2.1", "c=IN IP4 203.0.113.1")
            .replace("c=IN IP4 198.51.100.2", "c=IN IP4 203.0.113.1")
    }

    struct Ng {
        ng: NgServer,
        engine: Engine<FakeMedia, FakeDataplane>,
        seq: u32,
    }

    impl Ng {
        fn new() -> Self {
            Ng {
                ng: NgServer::new(Vec::new()),
                engine: Engine::new(
                    EngineConfig::default(),
                    FakeMedia::new("203.0.113.1".parse().unwrap()),
                    FakeDataplane::new(),
                ),
                seq: 0,
            }
        }

        /// Sends a command; returns (sdp, warning).
        fn send(&mut self, dict: Value) -> (String, Option<String>) {
            self.seq += 1;
            let mut out = format!("c{} ", self.seq).into_bytes();
            ng::encode(&dict, &mut out);
            let reply = self
                .ng
                .handle(
                    &mut self.engine,
                    &mut AdmitAll,
                    &out,
                    "127.0.0.1:9".parse().unwrap(),
                    Timestamp::now(),
                )
                .unwrap();
            let (_, body) = ng::split_cookie(&reply).unwrap();
            let v = ng::decode(body).unwrap();
            assert_eq!(v.get_str("result"), Some("ok"), "{v:?}");
            (
                v.get_str("sdp").unwrap_or_default().to_string(),
                v.get_str("warning").map(str::to_string),
            )
        }

        fn offer(&mut self, media: &str, extra: &[(&str, Value)]) -> (String, Option<String>) {
            let mut v = Value::new_dict()
                .with("command", "offer")
                .with("call-id", "m1")
                .with("from-tag", "ft")
                .with("sdp", format!("{CALLER_HEAD}{media}"));
            for (k, x) in extra {
                v = v.with(k, x.clone());
            }
            self.send(v)
        }

        fn answer(&mut self, media: &str, extra: &[(&str, Value)]) -> (String, Option<String>) {
            let mut v = Value::new_dict()
                .with("command", "answer")
                .with("call-id", "m1")
                .with("from-tag", "ft")
                .with("to-tag", "tt")
                .with("sdp", format!("{CALLEE_HEAD}{media}"));
            for (k, x) in extra {
                v = v.with(k, x.clone());
            }
            self.send(v)
        }
    }

    fn list(items: &[&str]) -> Value {
        Value::List(items.iter().map(|s| Value::from(*s)).collect())
    }

    /// Every rtcp-mux mode, offer and answer, byte for byte. The caller's leg is 30000/30001,
    /// the callee's 30002/30003.
    #[test]
    fn rtcp_mux_modes_in_offer_and_answer_sdp() {
        let mux = "m=audio 4000 RTP/AVP 0\r\na=rtcp-mux\r\n";
        let plain = "m=audio 4000 RTP/AVP 0\r\n";
        let callee_mux = "m=audio 5000 RTP/AVP 0\r\na=rtcp-mux\r\n";
        let callee_plain = "m=audio 5000 RTP/AVP 0\r\n";
        /// (caller media, ng options, callee media, offer media out, answer media out)
        type Case<'a> = (&'a str, Vec<(&'a str, Value)>, &'a str, &'a str, &'a str);
        let cases: Vec<Case> = vec![
            // Default: the caller's mux offered on (with a fallback port), the callee decides.
            (
                mux,
                vec![],
                callee_mux,
                "m=audio 30002 RTP/AVP 0\r\na=rtcp-mux\r\na=rtcp:30003\r\n",
                "m=audio 30000 RTP/AVP 0\r\na=rtcp-mux\r\n",
            ),
            (
                mux,
                vec![],
                callee_plain,
                "m=audio 30002 RTP/AVP 0\r\na=rtcp-mux\r\na=rtcp:30003\r\n",
                "m=audio 30000 RTP/AVP 0\r\na=rtcp:30001\r\n",
            ),
            // demux (list and flag spellings): muxed caller, two ports toward the callee.
            (
                mux,
                vec![("rtcp-mux", list(&["demux"]))],
                callee_plain,
                "m=audio 30002 RTP/AVP 0\r\na=rtcp:30003\r\n",
                "m=audio 30000 RTP/AVP 0\r\na=rtcp-mux\r\n",
            ),
            (
                mux,
                vec![("flags", list(&["rtcp-mux-demux"]))],
                callee_plain,
                "m=audio 30002 RTP/AVP 0\r\na=rtcp:30003\r\n",
                "m=audio 30000 RTP/AVP 0\r\na=rtcp-mux\r\n",
            ),
            // offer: mux offered to the callee although the caller did not.
            (
                plain,
                vec![("rtcp-mux", list(&["offer"]))],
                callee_mux,
                "m=audio 30002 RTP/AVP 0\r\na=rtcp:30003\r\na=rtcp-mux\r\n",
                "m=audio 30000 RTP/AVP 0\r\na=rtcp:30001\r\n",
            ),
            // require: mux toward the callee without an a=rtcp alternative.
            (
                plain,
                vec![("rtcp-mux", list(&["require"]))],
                callee_mux,
                "m=audio 30002 RTP/AVP 0\r\na=rtcp-mux\r\n",
                "m=audio 30000 RTP/AVP 0\r\na=rtcp:30001\r\n",
            ),
            // reject: the caller's mux is refused even though the callee takes it.
            (
                mux,
                vec![("rtcp-mux", list(&["reject"]))],
                callee_mux,
                "m=audio 30002 RTP/AVP 0\r\na=rtcp-mux\r\na=rtcp:30003\r\n",
                "m=audio 30000 RTP/AVP 0\r\na=rtcp:30001\r\n",
            ),
            // accept: the caller's mux is accepted although the callee declines.
            (
                mux,
                vec![("rtcp-mux", list(&["accept"]))],
                callee_plain,
                "m=audio 30002 RTP/AVP 0\r\na=rtcp-mux\r\na=rtcp:30003\r\n",
                "m=audio 30000 RTP/AVP 0\r\na=rtcp-mux\r\n",
            ),
        ];
        for (caller, opts, callee, offer_out, answer_out) in cases {
            let mut ng = Ng::new();
            let (o, w) = ng.offer(caller, &opts);
            assert_eq!(
                o,
                format!("{}{offer_out}", relayed_head(CALLER_HEAD)),
                "{opts:?}"
            );
            assert_eq!(w, None);
            let (a, w) = ng.answer(callee, &[]);
            assert_eq!(
                a,
                format!("{}{answer_out}", relayed_head(CALLEE_HEAD)),
                "{opts:?}"
            );
            assert_eq!(w, None);
        }
    }

    #[test]
    fn transport_protocol_converts_feedback_profiles_both_ways() {
        let mut ng = Ng::new();
        let (o, w) = ng.offer(
            "m=audio 4000 RTP/AVPF 0\r\na=rtcp-fb:* nack\r\na=ptime:20\r\n",
            &[("transport-protocol", Value::from("RTP/AVP"))],
        );
        assert_eq!(w, None);
        assert_eq!(
            o,
            format!(
                "{}m=audio 30002 RTP/AVP 0\r\na=ptime:20\r\na=rtcp:30003\r\n",
                relayed_head(CALLER_HEAD)
            )
        );
        // The answer goes back to the caller in the protocol it offered.
        let (a, _) = ng.answer("m=audio 5000 RTP/AVP 0\r\n", &[]);
        assert_eq!(
            a,
            format!(
                "{}m=audio 30000 RTP/AVPF 0\r\na=rtcp:30001\r\n",
                relayed_head(CALLEE_HEAD)
            )
        );
    }

    #[test]
    fn an_answer_is_given_the_offered_protocol_unless_transport_protocol_accept() {
        let answer = "m=audio 5000 RTP/AVPF 0\r\na=rtcp-fb:0 nack\r\n";
        let mut ng = Ng::new();
        ng.offer("m=audio 4000 RTP/AVP 0\r\n", &[]);
        let (a, _) = ng.answer(answer, &[]);
        assert_eq!(
            a,
            format!(
                "{}m=audio 30000 RTP/AVP 0\r\na=rtcp:30001\r\n",
                relayed_head(CALLEE_HEAD)
            )
        );
        let mut ng = Ng::new();
        ng.offer("m=audio 4000 RTP/AVP 0\r\n", &[]);
        let (a, _) = ng.answer(answer, &[("transport-protocol", Value::from("accept"))]);
        assert_eq!(
            a,
            format!(
                "{}m=audio 30000 RTP/AVPF 0\r\na=rtcp-fb:0 nack\r\na=rtcp:30001\r\n",
                relayed_head(CALLEE_HEAD)
            )
        );
    }

    #[test]
    fn conversions_that_need_srtp_keys_leave_the_sdp_and_warn() {
        let mut ng = Ng::new();
        let (o, w) = ng.offer(
            "m=audio 4000 RTP/AVP 0\r\n",
            &[("transport-protocol", Value::from("RTP/SAVP"))],
        );
        assert_eq!(
            o,
            format!(
                "{}m=audio 30002 RTP/AVP 0\r\na=rtcp:30003\r\n",
                relayed_head(CALLER_HEAD)
            )
        );
        assert_eq!(
            w.as_deref(),
            Some(
                "transport protocol of media section 1 not converted from RTP/AVP to RTP/SAVP: \
                 SRTP with SDES keys would have to be generated and the media encrypted by the \
                 relay, which rtpedge does not do; SDP left unchanged"
            )
        );
        // rtpp-flags transport words, to DTLS.
        let mut ng = Ng::new();
        let (_, w) = ng.offer(
            "m=audio 4000 RTP/AVP 0\r\n",
            &[("rtpp-flags", Value::from("UDP/TLS/RTP/SAVPF"))],
        );
        assert!(
            w.as_deref()
                .is_some_and(|w| w.contains("from RTP/AVP to UDP/TLS/RTP/SAVPF: DTLS-SRTP")),
            "{w:?}"
        );
    }

    #[test]
    fn asymmetric_with_media_handover_warns_and_asymmetric_wins() {
        let mut ng = Ng::new();
        let (_, w) = ng.offer(
            "m=audio 4000 RTP/AVP 0\r\n",
            &[("flags", list(&["asymmetric", "media-handover"]))],
        );
        assert_eq!(
            w.as_deref(),
            Some("flag \"media handover\" contradicts \"asymmetric\", ignored")
        );
        let leg = ng
            .engine
            .media()
            .legs
            .values()
            .find(|l| l.info.rtp.port() == 30000)
            .unwrap();
        let spec = leg.remote.unwrap();
        assert_eq!(spec.policy, rtpedge_bridge::Policy::Asymmetric);
        assert_eq!(spec.handover, None);
    }
}
