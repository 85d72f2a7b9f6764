//! The parser: split into lines (keeping byte ranges), then give the lines we act on a typed
//! meaning. Structure lines (`v=`, `o=`, `c=`, `m=`, `a=`) must be well formed; lines that are
//! only passed through (`i=`, `b=`, `t=`, `k=`, unknown letters, blank lines) are kept as bytes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::Range;

use super::error::{SdpError, echo};
use super::model::{
    Attribute, AttributeKind, Connection, Crypto, Direction, Fingerprint, IceAttribute, Line,
    LineEnding, MediaDescription, Origin, RtcpAttribute, Rtpmap, SessionDescription, Setup,
    Transport, parse_decimal,
};

/// Bounds against hostile input, checked before anything is allocated per line or section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest body accepted, in bytes.
    pub max_bytes: usize,
    /// Most lines accepted (blank ones included).
    pub max_lines: usize,
    /// Most `m=` sections accepted.
    pub max_media: usize,
}

impl Limits {
    /// 64 KiB, 4096 lines, 64 media sections: far above any real offer (a browser offer with
    /// ten transceivers is a few hundred lines), far below what could hurt.
    pub const DEFAULT: Limits = Limits {
        max_bytes: 64 * 1024,
        max_lines: 4096,
        max_media: 64,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}

/// Parse an SDP body with the [default limits](Limits::DEFAULT).
pub fn parse(text: &[u8]) -> Result<SessionDescription, SdpError> {
    parse_with_limits(text, &Limits::DEFAULT)
}

/// Parse an SDP body.
pub fn parse_with_limits(text: &[u8], limits: &Limits) -> Result<SessionDescription, SdpError> {
    if text.len() > limits.max_bytes {
        return Err(SdpError::TooLarge {
            len: text.len(),
            max: limits.max_bytes,
        });
    }
    let lines = split_lines(text, limits.max_lines)?;
    Parser {
        raw: text,
        lines: &lines,
        limits,
    }
    .run()
    .map(|p| SessionDescription {
        raw: text.to_vec(),
        line_ending: match lines.first() {
            Some(l) if l.next - l.end == 1 => LineEnding::Lf,
            _ => LineEnding::CrLf,
        },
        lines,
        origin: p.origin,
        session_name: p.session_name,
        connection: p.connection,
        attributes: p.attributes,
        media: p.media,
    })
}

/// Split on LF; a CR directly before the LF belongs to the terminator. Any other CR, and any NUL,
/// is rejected: a peer that splits lines differently would see a different SDP than we do.
fn split_lines(text: &[u8], max_lines: usize) -> Result<Vec<Line>, SdpError> {
    let mut lines = Vec::new();
    let mut pos = 0;
    while pos < text.len() {
        if lines.len() >= max_lines {
            return Err(SdpError::TooManyLines { max: max_lines });
        }
        let rest = text.get(pos..).unwrap_or_default();
        let (end, next) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => {
                let lf = pos + i;
                let end = if i > 0 && rest.get(i - 1) == Some(&b'\r') {
                    lf - 1
                } else {
                    lf
                };
                (end, lf + 1)
            }
            None => (text.len(), text.len()),
        };
        let number = lines.len() + 1;
        let content = text.get(pos..end).unwrap_or_default();
        if content.iter().any(|&b| b == 0 || b == b'\r') {
            return Err(SdpError::InvalidCharacter { line: number });
        }
        let kind = if content.iter().all(u8::is_ascii_whitespace) {
            0
        } else {
            match content {
                [letter, b'=', ..] if letter.is_ascii_alphabetic() => *letter,
                _ if !content.contains(&b'=') => {
                    return Err(SdpError::MissingEquals { line: number });
                }
                _ => return Err(SdpError::InvalidType { line: number }),
            }
        };
        lines.push(Line {
            start: pos,
            end,
            next,
            kind,
        });
        pos = next;
    }
    Ok(lines)
}

struct Parser<'a> {
    raw: &'a [u8],
    lines: &'a [Line],
    limits: &'a Limits,
}

struct Parsed {
    origin: Origin,
    session_name: Option<usize>,
    connection: Option<Connection>,
    attributes: Vec<Attribute>,
    media: Vec<MediaDescription>,
}

impl Parser<'_> {
    fn run(&self) -> Result<Parsed, SdpError> {
        let first = self
            .lines
            .iter()
            .position(|l| l.kind != 0)
            .ok_or(SdpError::Empty)?;
        let mut origin = None;
        let mut session_name = None;
        let mut connection = None;
        let mut attributes = Vec::new();
        let mut media: Vec<MediaDescription> = Vec::new();

        for (idx, line) in self.lines.iter().enumerate().skip(first) {
            let number = idx + 1;
            let in_media = !media.is_empty();
            match line.kind {
                0 => {}
                b'v' if idx == first => {
                    let value = self.text(idx, "v=")?.trim_end();
                    if value != "0" {
                        return Err(SdpError::UnsupportedVersion {
                            line: number,
                            value: echo(value),
                        });
                    }
                }
                _ if idx == first => return Err(SdpError::MissingVersion { line: number }),
                // One session per body; `o=`, `s=`, `t=` belong to the session level.
                b'v' | b'o' | b's' | b't' if in_media => {
                    return Err(SdpError::UnexpectedLine {
                        line: number,
                        kind: char::from(line.kind),
                    });
                }
                b'v' => {
                    return Err(SdpError::UnexpectedLine {
                        line: number,
                        kind: 'v',
                    });
                }
                b'o' => {
                    if origin.is_some() {
                        return Err(SdpError::DuplicateLine {
                            line: number,
                            kind: 'o',
                        });
                    }
                    origin = Some(self.origin(idx)?);
                }
                b's' => {
                    if session_name.is_some() {
                        return Err(SdpError::DuplicateLine {
                            line: number,
                            kind: 's',
                        });
                    }
                    session_name = Some(idx);
                }
                b'm' => {
                    if media.len() >= self.limits.max_media {
                        return Err(SdpError::TooManyMedia {
                            line: number,
                            max: self.limits.max_media,
                        });
                    }
                    if let Some(last) = media.last_mut() {
                        last.end = idx;
                    }
                    media.push(self.media(idx)?);
                }
                b'c' => {
                    let slot = match media.last_mut() {
                        Some(m) => &mut m.connection,
                        None => &mut connection,
                    };
                    // One address per level: a second one would be ambiguous about where the
                    // media goes (layered multicast is not something a relay takes part in).
                    if slot.is_some() {
                        return Err(SdpError::DuplicateLine {
                            line: number,
                            kind: 'c',
                        });
                    }
                    *slot = Some(self.connection(idx)?);
                }
                b'a' => {
                    let attr = self.attribute(idx)?;
                    match media.last_mut() {
                        Some(m) => m.attributes.push(attr),
                        None => attributes.push(attr),
                    }
                }
                _ => {}
            }
        }
        let origin = origin.ok_or(SdpError::MissingOrigin)?;
        check_attributes(&attributes)?;
        for m in &media {
            check_attributes(&m.attributes)?;
        }
        Ok(Parsed {
            origin,
            session_name,
            connection,
            attributes,
            media,
        })
    }

    /// The line's content after `x=`, which must be UTF-8.
    fn text(&self, idx: usize, field: &'static str) -> Result<&str, SdpError> {
        let line = self.lines.get(idx).ok_or(SdpError::Empty)?;
        let bytes = self.raw.get(line.start + 2..line.end).unwrap_or_default();
        std::str::from_utf8(bytes).map_err(|_| SdpError::NonUtf8 {
            line: idx + 1,
            field,
        })
    }

    fn origin(&self, idx: usize) -> Result<Origin, SdpError> {
        let value = self.text(idx, "o=")?;
        let fields: Vec<(Range<usize>, &str)> = fields(value).collect();
        let [user, id, version, net, addr_type, address] = fields.as_slice() else {
            return Err(SdpError::InvalidOrigin {
                line: idx + 1,
                found: fields.len(),
            });
        };
        // Ranges relative to the line content, which starts with `o=`.
        let shift = |r: &Range<usize>| r.start + 2..r.end + 2;
        Ok(Origin {
            username: user.1.to_owned(),
            session_id: id.1.to_owned(),
            session_version: version.1.to_owned(),
            net_type: net.1.to_owned(),
            addr_type: addr_type.1.to_owned(),
            address: address.1.to_owned(),
            line: idx,
            version_range: shift(&version.0),
            addr_type_range: shift(&addr_type.0),
            address_range: shift(&address.0),
        })
    }

    fn connection(&self, idx: usize) -> Result<Connection, SdpError> {
        let value = self.text(idx, "c=")?;
        let fields: Vec<&str> = fields(value).map(|(_, f)| f).collect();
        let [net, addr_type, address] = fields.as_slice() else {
            return Err(SdpError::InvalidConnection {
                line: idx + 1,
                reason: "expected `IN <addrtype> <address>`",
            });
        };
        Ok(Connection {
            address: ip_address(idx + 1, net, addr_type, address, true)?,
            line: idx,
        })
    }

    fn media(&self, idx: usize) -> Result<MediaDescription, SdpError> {
        let number = idx + 1;
        let value = self.text(idx, "m=")?;
        let mut it = fields(value);
        let (Some((_, media_type)), Some((port_range, port_field)), Some((proto_range, proto))) =
            (it.next(), it.next(), it.next())
        else {
            return Err(SdpError::InvalidMedia { line: number });
        };
        let formats: Vec<String> = it.map(|(_, f)| f.to_owned()).collect();
        if formats.is_empty() {
            return Err(SdpError::NoFormats { line: number });
        }
        let (port_text, count_text) = match port_field.split_once('/') {
            Some((p, c)) => (p, Some(c)),
            None => (port_field, None),
        };
        let invalid_port = || SdpError::InvalidPort {
            line: number,
            value: echo(port_field),
        };
        let port: u16 = parse_decimal(port_text).ok_or_else(invalid_port)?;
        let port_count = match count_text {
            Some(c) => Some(
                parse_decimal::<u16>(c)
                    .filter(|&n| n > 0)
                    .ok_or_else(invalid_port)?,
            ),
            None => None,
        };
        Ok(MediaDescription {
            media_type: media_type.to_owned(),
            port,
            port_count,
            proto: proto.to_owned(),
            transport: Transport::from_proto(proto),
            formats,
            connection: None,
            attributes: Vec::new(),
            line: idx,
            end: self.lines.len(),
            port_range: port_range.start + 2..port_range.start + 2 + port_text.len(),
            proto_range: proto_range.start + 2..proto_range.end + 2,
        })
    }

    fn attribute(&self, idx: usize) -> Result<Attribute, SdpError> {
        let number = idx + 1;
        let text = self.text(idx, "a=")?.trim_end();
        let (name, value) = match text.split_once(':') {
            Some((n, v)) => (n, Some(v)),
            None => (text, None),
        };
        if name.is_empty() || name.bytes().any(|b| b.is_ascii_whitespace()) {
            return Err(SdpError::InvalidAttribute {
                line: number,
                name: echo(name),
                reason: "empty name or whitespace in the name",
            });
        }
        let kind = attribute_kind(number, name, value)?;
        Ok(Attribute {
            name: name.to_owned(),
            value: value.map(str::to_owned),
            kind,
            line: idx,
        })
    }
}

/// Typed meaning of a known attribute. Only `a=rtcp` must parse: it decides where RTCP goes.
fn attribute_kind(line: usize, name: &str, value: Option<&str>) -> Result<AttributeKind, SdpError> {
    if let Some(d) = Direction::from_name(name) {
        return Ok(AttributeKind::Direction(d));
    }
    if let Some(ice) = IceAttribute::from_name(name) {
        return Ok(AttributeKind::Ice(ice));
    }
    let v = value.unwrap_or_default();
    Ok(match name {
        "rtcp" => AttributeKind::Rtcp(rtcp_attribute(line, v)?),
        "rtcp-mux" => AttributeKind::RtcpMux,
        "crypto" => AttributeKind::Crypto(crypto(v)),
        "fingerprint" => AttributeKind::Fingerprint(fingerprint(v)),
        "setup" => AttributeKind::Setup(match v.trim() {
            "active" => Some(Setup::Active),
            "passive" => Some(Setup::Passive),
            "actpass" => Some(Setup::ActPass),
            "holdconn" => Some(Setup::HoldConn),
            _ => None,
        }),
        "rtpmap" => AttributeKind::Rtpmap(rtpmap(v)),
        "fmtp" => AttributeKind::Fmtp(fields(v).next().map(|(_, f)| f.to_owned())),
        "ptime" => AttributeKind::Ptime(parse_decimal(v.trim())),
        "mid" => AttributeKind::Mid,
        "group" => AttributeKind::Group,
        _ => AttributeKind::Other,
    })
}

fn rtcp_attribute(line: usize, value: &str) -> Result<RtcpAttribute, SdpError> {
    let invalid = |reason| SdpError::InvalidAttribute {
        line,
        name: "rtcp".to_owned(),
        reason,
    };
    let fields: Vec<&str> = fields(value).map(|(_, f)| f).collect();
    match fields.as_slice() {
        [port] => Ok(RtcpAttribute {
            port: parse_decimal(port).ok_or_else(|| invalid("invalid port"))?,
            address: None,
        }),
        [port, net, addr_type, address] => Ok(RtcpAttribute {
            port: parse_decimal(port).ok_or_else(|| invalid("invalid port"))?,
            address: Some(ip_address(line, net, addr_type, address, false)?),
        }),
        _ => Err(invalid("expected `<port> [IN IP4|IP6 <address>]`")),
    }
}

fn crypto(value: &str) -> Option<Crypto> {
    let mut it = fields(value).map(|(_, f)| f);
    Some(Crypto {
        tag: parse_decimal(it.next()?)?,
        suite: it.next()?.to_owned(),
        key_params: it.next()?.to_owned(),
        session_params: it.map(str::to_owned).collect(),
    })
}

fn fingerprint(value: &str) -> Option<Fingerprint> {
    let fields: Vec<&str> = fields(value).map(|(_, f)| f).collect();
    let [hash, fp] = fields.as_slice() else {
        return None;
    };
    Some(Fingerprint {
        hash: (*hash).to_owned(),
        value: (*fp).to_owned(),
    })
}

fn rtpmap(value: &str) -> Option<Rtpmap> {
    let fields: Vec<&str> = fields(value).map(|(_, f)| f).collect();
    let [pt, encoding] = fields.as_slice() else {
        return None;
    };
    let mut parts = encoding.split('/');
    let name = parts.next().filter(|n| !n.is_empty())?;
    let clock_rate = parse_decimal(parts.next()?)?;
    let channels = match parts.next() {
        Some(c) => Some(parse_decimal(c)?),
        None => None,
    };
    if parts.next().is_some() {
        return None;
    }
    Some(Rtpmap {
        payload_type: parse_decimal(pt).filter(|&p: &u8| p <= 127)?,
        encoding: name.to_owned(),
        clock_rate,
        channels,
    })
}

/// `IN IP4|IP6 <address>`; in `c=` the address may carry `/<ttl>[/<count>]`.
fn ip_address(
    line: usize,
    net: &str,
    addr_type: &str,
    address: &str,
    allow_suffix: bool,
) -> Result<IpAddr, SdpError> {
    if net != "IN" {
        return Err(SdpError::UnknownNetworkType {
            line,
            value: echo(net),
        });
    }
    let host = match address.split_once('/') {
        Some((host, _)) if allow_suffix => host,
        _ => address,
    };
    let invalid = |addr_type| SdpError::InvalidAddress {
        line,
        addr_type,
        value: echo(address),
    };
    match addr_type {
        "IP4" => host
            .parse::<Ipv4Addr>()
            .map(IpAddr::V4)
            .map_err(|_| invalid("IP4")),
        "IP6" => host
            .parse::<Ipv6Addr>()
            .map(IpAddr::V6)
            .map_err(|_| invalid("IP6")),
        _ => Err(SdpError::UnknownAddressType {
            line,
            value: echo(addr_type),
        }),
    }
}

/// Attribute combinations that would be ambiguous: two `a=rtcp` lines, or contradicting
/// directions at the same level.
fn check_attributes(attributes: &[Attribute]) -> Result<(), SdpError> {
    let mut rtcp_seen = false;
    let mut direction: Option<Direction> = None;
    for a in attributes {
        match a.kind {
            AttributeKind::Rtcp(_) if rtcp_seen => {
                return Err(SdpError::InvalidAttribute {
                    line: a.line + 1,
                    name: a.name.clone(),
                    reason: "more than one `a=rtcp` in one section",
                });
            }
            AttributeKind::Rtcp(_) => rtcp_seen = true,
            AttributeKind::Direction(d) => match direction {
                Some(prev) if prev != d => {
                    return Err(SdpError::InvalidAttribute {
                        line: a.line + 1,
                        name: a.name.clone(),
                        reason: "contradicts an earlier direction attribute",
                    });
                }
                _ => direction = Some(d),
            },
            _ => {}
        }
    }
    Ok(())
}

/// Whitespace-separated fields with their byte ranges in `s`.
pub(super) fn fields(s: &str) -> impl Iterator<Item = (Range<usize>, &str)> {
    let bytes = s.as_bytes();
    let mut pos = 0;
    std::iter::from_fn(move || {
        while bytes.get(pos).is_some_and(u8::is_ascii_whitespace) {
            pos += 1;
        }
        let start = pos;
        while bytes.get(pos).is_some_and(|b| !b.is_ascii_whitespace()) {
            pos += 1;
        }
        // Both ends sit next to ASCII bytes (or the ends of `s`), so they are char boundaries.
        s.get(start..pos)
            .filter(|f| !f.is_empty())
            .map(|f| (start..pos, f))
    })
}
