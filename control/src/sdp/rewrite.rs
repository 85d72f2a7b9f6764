//! The rewriter: a plan of per-line actions (keep, drop, replace) and insertions over the
//! original lines, then one pass that copies the kept lines verbatim.
//!
//! See the [module documentation](super) for the semantics of connection addresses and `a=rtcp`.

use std::net::IpAddr;

use super::model::{AttributeKind, Direction, MediaDescription, RtcpAttribute, SessionDescription};

/// What to change in a session description. `Rewrite::default()` changes nothing: the output
/// is the input, byte for byte.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rewrite {
    /// Replace the `o=` address (and its address type): ng `replace: [origin]`.
    pub origin_address: Option<IpAddr>,
    /// What to do with the `o=` session version.
    pub origin_version: VersionChange,
    /// Replace the `s=` value (ng `replace: [session-name]`); inserts `s=` after `o=` when the
    /// body has none. CR, LF and NUL are dropped; an empty name is written as `-`.
    pub session_name: Option<String>,
    /// Force the session-level `c=` address (ng `replace: [session-connection]`). Only an
    /// existing session `c=` line is rewritten; see the module docs for the default choice.
    pub session_connection: Option<IpAddr>,
    /// Remove ICE attributes at every level (ng `ICE: remove`): `ice-ufrag`, `ice-pwd`,
    /// `ice-options`, `ice-lite`, `ice-mismatch`, `ice-pacing`, `candidate`,
    /// `end-of-candidates`, `remote-candidates`.
    pub strip_ice: bool,
    /// How `a=rtcp` lines are written (ng `full-rtcp-attribute`, `no-rtcp-attribute`).
    pub rtcp_attribute: RtcpAttributeStyle,
    /// Per media section, by position. Sections without an entry (and entries past the last
    /// section) change nothing.
    pub media: Vec<MediaRewrite>,
}

/// What happens to the `o=` session version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum VersionChange {
    /// Leave it as sent.
    #[default]
    Keep,
    /// Add one (decimal, any length, so it never overflows). A version that is not a decimal
    /// number is left as sent.
    Increment,
    /// Write this value (for an engine that keeps its own version per leg).
    Set(u64),
}

/// The style of `a=rtcp` lines the rewriter writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RtcpAttributeStyle {
    /// `a=rtcp:PORT`, plus `IN IP4|IP6 ADDR` only when the RTCP address differs from the
    /// section's (rewritten) connection address.
    #[default]
    Auto,
    /// Always `a=rtcp:PORT IN IP4|IP6 ADDR` (ng `full-rtcp-attribute`).
    Full,
    /// No `a=rtcp` at all: existing lines are removed in every section (ng `no-rtcp-attribute`).
    Omit,
}

/// What to change in one media section. `MediaRewrite::default()` changes nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MediaRewrite {
    /// The new `m=` port (the `/<count>`, proto and formats are kept). 0 rejects the stream.
    pub port: Option<u16>,
    /// The address the peer must send this section's media to (see the module docs for where
    /// it is written).
    pub address: Option<IpAddr>,
    /// The `a=rtcp` line.
    pub rtcp: RtcpRewrite,
    /// The `a=rtcp-mux` line.
    pub rtcp_mux: RtcpMuxRewrite,
    /// Replace the section's direction attribute (or add one when it has none).
    pub direction: Option<Direction>,
    /// Replace the `m=` line's proto token (ng `transport-protocol`); the rest of the line is
    /// kept. Only written when it differs from the token as sent.
    pub proto: Option<String>,
    /// Remove the section's `a=rtcp-fb` lines (a feedback profile converted to one without).
    pub strip_rtcp_fb: bool,
}

impl MediaRewrite {
    /// Reject the stream: port 0, everything else kept.
    pub fn reject() -> MediaRewrite {
        MediaRewrite {
            port: Some(0),
            ..MediaRewrite::default()
        }
    }
}

/// What happens to a section's `a=rtcp` line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RtcpRewrite {
    /// Leave it (or its absence) as sent.
    #[default]
    Keep,
    /// Write `a=rtcp:PORT`, replacing the existing line in place or adding one at the end of
    /// the section. `address`: where RTCP goes when it is not the section's address; written
    /// per [`RtcpAttributeStyle`].
    Set { port: u16, address: Option<IpAddr> },
    /// Remove it.
    Remove,
}

/// What happens to a section's `a=rtcp-mux` line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RtcpMuxRewrite {
    /// Leave it (or its absence) as sent.
    #[default]
    Keep,
    /// Offer multiplexing: make sure `a=rtcp-mux` is present; `a=rtcp` is still written as
    /// [`RtcpRewrite`] says, for a peer that declines.
    Offer,
    /// RTCP is multiplexed (an answer accepting it, or an offer requiring it): `a=rtcp-mux`
    /// present and no `a=rtcp` line, whatever [`RtcpRewrite`] says.
    Use,
    /// Remove `a=rtcp-mux`.
    Remove,
}

/// What happens to one original line.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    Keep,
    Remove,
    Replace(Vec<u8>),
}

struct Plan<'a> {
    sd: &'a SessionDescription,
    actions: Vec<Action>,
    /// `inserts[i]`: new lines (without terminator) that go before original line `i`;
    /// `inserts[lines.len()]` goes at the end.
    inserts: Vec<Vec<Vec<u8>>>,
}

/// Apply `rw` to `sd`. Lines the rewrite does not touch are copied byte for byte, with their
/// own line endings; new lines use the body's [`LineEnding`](super::LineEnding). A body that did
/// not end with a line ending still does not (unless its unterminated last line was removed and
/// the new last line is an empty one, which keeps its terminator so that it is not lost).
pub fn rewrite(sd: &SessionDescription, rw: &Rewrite) -> Vec<u8> {
    let mut plan = Plan {
        sd,
        actions: vec![Action::Keep; sd.lines.len()],
        inserts: vec![Vec::new(); sd.lines.len() + 1],
    };
    plan.origin(rw);
    plan.session_name(rw);
    if rw.strip_ice {
        for a in &sd.attributes {
            if matches!(a.kind, AttributeKind::Ice(_)) {
                plan.set(a.line, Action::Remove);
            }
        }
    }
    let effective = plan.connections(rw);
    let default = MediaRewrite::default();
    for (i, m) in sd.media.iter().enumerate() {
        let mr = rw.media.get(i).unwrap_or(&default);
        let address = effective.get(i).copied().flatten();
        plan.media(rw, m, mr, address);
    }
    plan.emit()
}

impl SessionDescription {
    /// [`rewrite`] as a method.
    pub fn rewrite(&self, rw: &Rewrite) -> Vec<u8> {
        rewrite(self, rw)
    }
}

impl Plan<'_> {
    fn set(&mut self, line: usize, action: Action) {
        if let Some(slot) = self.actions.get_mut(line) {
            *slot = action;
        }
    }

    fn insert_before(&mut self, line: usize, content: Vec<u8>) {
        if let Some(slot) = self.inserts.get_mut(line) {
            slot.push(content);
        }
    }

    fn content(&self, line: usize) -> &[u8] {
        self.sd
            .lines
            .get(line)
            .and_then(|l| self.sd.raw.get(l.start..l.end))
            .unwrap_or_default()
    }

    fn origin(&mut self, rw: &Rewrite) {
        let o = &self.sd.origin;
        let mut edits: Vec<(std::ops::Range<usize>, Vec<u8>)> = Vec::new();
        let version = match rw.origin_version {
            VersionChange::Keep => None,
            VersionChange::Increment => increment_decimal(&o.session_version),
            VersionChange::Set(v) => Some(v.to_string()),
        };
        if let Some(v) = version {
            edits.push((o.version_range.clone(), v.into_bytes()));
        }
        if let Some(addr) = rw.origin_address {
            edits.push((
                o.addr_type_range.clone(),
                addr_type(addr).as_bytes().to_vec(),
            ));
            edits.push((o.address_range.clone(), addr.to_string().into_bytes()));
        }
        if edits.is_empty() {
            return;
        }
        let mut content = self.content(o.line).to_vec();
        // Back to front, so earlier ranges stay valid.
        edits.sort_by_key(|(r, _)| std::cmp::Reverse(r.start));
        for (range, text) in edits {
            if range.end <= content.len() && range.start <= range.end {
                content.splice(range, text);
            }
        }
        self.set(o.line, Action::Replace(content));
    }

    fn session_name(&mut self, rw: &Rewrite) {
        let Some(name) = &rw.session_name else {
            return;
        };
        let mut line = b"s=".to_vec();
        let clean: Vec<u8> = name
            .bytes()
            .filter(|b| !matches!(b, b'\r' | b'\n' | 0))
            .collect();
        if clean.is_empty() {
            line.push(b'-');
        } else {
            line.extend_from_slice(&clean);
        }
        match self.sd.session_name {
            Some(idx) => self.set(idx, Action::Replace(line)),
            None => self.insert_before(self.sd.origin.line + 1, line),
        }
    }

    /// Decide where connection addresses go (module docs, "Connection addresses"). Returns each
    /// section's connection address after the rewrite.
    fn connections(&mut self, rw: &Rewrite) -> Vec<Option<IpAddr>> {
        let sd = self.sd;
        let session_addr = sd.connection.as_ref().map(|c| c.address);
        // What each section that relies on the session `c=` needs it to say.
        let mut votes: Vec<(usize, IpAddr)> = Vec::new();
        for (i, m) in sd.media.iter().enumerate() {
            if m.connection.is_some() {
                continue;
            }
            let mr = rw.media.get(i);
            let port = mr.and_then(|r| r.port).unwrap_or(m.port);
            let want = match mr.and_then(|r| r.address) {
                Some(a) => Some(a),
                // A rejected stream's address means nothing: it does not get a vote.
                None if port == 0 => None,
                None => session_addr,
            };
            if let Some(a) = want {
                votes.push((i, a));
            }
        }
        let new_session = match &sd.connection {
            Some(c) => {
                let chosen = rw
                    .session_connection
                    .or_else(|| most_common(&votes))
                    .unwrap_or(c.address);
                if chosen != c.address {
                    self.set(c.line, Action::Replace(connection_line(chosen)));
                }
                Some(chosen)
            }
            None => None,
        };
        let mut effective = Vec::with_capacity(sd.media.len());
        for (i, m) in sd.media.iter().enumerate() {
            let requested = rw.media.get(i).and_then(|r| r.address);
            match (&m.connection, requested) {
                (Some(c), Some(a)) => {
                    if a != c.address {
                        self.set(c.line, Action::Replace(connection_line(a)));
                    }
                    effective.push(Some(a));
                }
                (Some(c), None) => effective.push(Some(c.address)),
                (None, _) => {
                    let vote = votes.iter().find(|(v, _)| *v == i).map(|(_, a)| *a);
                    match vote {
                        Some(a) if Some(a) != new_session => {
                            let at = media_connection_position(sd, m);
                            self.insert_before(at, connection_line(a));
                            effective.push(Some(a));
                        }
                        Some(a) => effective.push(Some(a)),
                        None => effective.push(new_session),
                    }
                }
            }
        }
        effective
    }

    fn media(
        &mut self,
        rw: &Rewrite,
        m: &MediaDescription,
        mr: &MediaRewrite,
        address: Option<IpAddr>,
    ) {
        // `m=` edits, back to front so the earlier range stays valid.
        let mut edits: Vec<(std::ops::Range<usize>, Vec<u8>)> = Vec::new();
        if let Some(proto) = mr.proto.as_deref().filter(|p| *p != m.proto) {
            edits.push((m.proto_range.clone(), proto.as_bytes().to_vec()));
        }
        if let Some(port) = mr.port.filter(|&p| p != m.port) {
            edits.push((m.port_range.clone(), port.to_string().into_bytes()));
        }
        if !edits.is_empty() {
            let mut content = self.content(m.line).to_vec();
            let mut changed = false;
            for (range, text) in edits {
                if range.start <= range.end && range.end <= content.len() {
                    content.splice(range, text);
                    changed = true;
                }
            }
            if changed {
                self.set(m.line, Action::Replace(content));
            }
        }

        // a=rtcp: what the line should say, `None` for no line.
        let rtcp_touched = rw.rtcp_attribute == RtcpAttributeStyle::Omit
            || mr.rtcp_mux == RtcpMuxRewrite::Use
            || mr.rtcp != RtcpRewrite::Keep;
        let rtcp_want = match mr.rtcp {
            _ if rw.rtcp_attribute == RtcpAttributeStyle::Omit => None,
            _ if mr.rtcp_mux == RtcpMuxRewrite::Use => None,
            RtcpRewrite::Keep | RtcpRewrite::Remove => None,
            RtcpRewrite::Set {
                port,
                address: rtcp_addr,
            } => Some(RtcpAttribute {
                port,
                address: match rw.rtcp_attribute {
                    RtcpAttributeStyle::Full => rtcp_addr.or(address),
                    _ => rtcp_addr.filter(|a| Some(*a) != address),
                },
            }),
        };
        let rtcp_line = |r: RtcpAttribute| {
            let mut line = format!("a=rtcp:{}", r.port);
            if let Some(a) = r.address {
                line.push_str(&format!(" IN {} {a}", addr_type(a)));
            }
            line.into_bytes()
        };

        let mut has_direction = false;
        let mut has_rtcp = false;
        let mut has_mux = false;
        for a in &m.attributes {
            match a.kind {
                AttributeKind::Ice(_) if rw.strip_ice => self.set(a.line, Action::Remove),
                AttributeKind::Direction(d) => {
                    if let Some(want) = mr.direction {
                        // The first one becomes the wanted direction, repeats go.
                        let action = if has_direction {
                            Action::Remove
                        } else if want == d {
                            Action::Keep
                        } else {
                            Action::Replace(format!("a={}", want.as_str()).into_bytes())
                        };
                        self.set(a.line, action);
                    }
                    has_direction = true;
                }
                AttributeKind::Rtcp(existing) => {
                    has_rtcp = true;
                    if rtcp_touched {
                        match rtcp_want {
                            Some(want) if want == existing => {}
                            Some(want) => self.set(a.line, Action::Replace(rtcp_line(want))),
                            None => self.set(a.line, Action::Remove),
                        }
                    }
                }
                AttributeKind::Other
                    if mr.strip_rtcp_fb && a.name.eq_ignore_ascii_case("rtcp-fb") =>
                {
                    self.set(a.line, Action::Remove);
                }
                AttributeKind::RtcpMux => {
                    has_mux = true;
                    if mr.rtcp_mux == RtcpMuxRewrite::Remove {
                        self.set(a.line, Action::Remove);
                    }
                }
                _ => {}
            }
        }

        // Additions go after the section's last non-blank line.
        let end = (m.line..m.end)
            .rev()
            .find(|&i| self.sd.lines.get(i).is_some_and(|l| l.kind != 0))
            .map_or(m.end, |i| i + 1);
        if let (Some(d), false) = (mr.direction, has_direction) {
            self.insert_before(end, format!("a={}", d.as_str()).into_bytes());
        }
        if let (Some(want), false) = (rtcp_want, has_rtcp) {
            self.insert_before(end, rtcp_line(want));
        }
        if matches!(mr.rtcp_mux, RtcpMuxRewrite::Offer | RtcpMuxRewrite::Use) && !has_mux {
            self.insert_before(end, b"a=rtcp-mux".to_vec());
        }
    }

    fn emit(self) -> Vec<u8> {
        let sd = self.sd;
        let eol = sd.line_ending.as_bytes();
        // (content, own terminator if it is an original line)
        let mut out: Vec<(&[u8], &[u8])> = Vec::with_capacity(sd.lines.len() + 8);
        for (i, inserts) in self.inserts.iter().enumerate() {
            for new in inserts {
                out.push((new, eol));
            }
            let Some(line) = sd.lines.get(i) else {
                continue;
            };
            let own_eol = sd.raw.get(line.end..line.next).unwrap_or_default();
            match self.actions.get(i) {
                Some(Action::Keep) | None => out.push((
                    sd.raw.get(line.start..line.end).unwrap_or_default(),
                    own_eol,
                )),
                Some(Action::Replace(content)) => out.push((content, own_eol)),
                Some(Action::Remove) => {}
            }
        }
        let trailing_eol = sd.lines.last().is_none_or(|l| l.next > l.end);
        let mut buf = Vec::with_capacity(sd.raw.len() + 256);
        let last = out.len().saturating_sub(1);
        for (i, (content, own_eol)) in out.into_iter().enumerate() {
            buf.extend_from_slice(content);
            // An empty last line without its terminator would vanish: it keeps it (this only
            // happens when the original unterminated last line was removed).
            if i < last || trailing_eol || content.is_empty() {
                // Only the original last line can lack a terminator.
                buf.extend_from_slice(if own_eol.is_empty() { eol } else { own_eol });
            }
        }
        buf
    }
}

fn addr_type(addr: IpAddr) -> &'static str {
    match addr {
        IpAddr::V4(_) => "IP4",
        IpAddr::V6(_) => "IP6",
    }
}

fn connection_line(addr: IpAddr) -> Vec<u8> {
    format!("c=IN {} {addr}", addr_type(addr)).into_bytes()
}

/// Where a media-level `c=` goes: after `m=` and any `i=` (RFC 8866 line order).
fn media_connection_position(sd: &SessionDescription, m: &MediaDescription) -> usize {
    let mut at = m.line + 1;
    while at < m.end && sd.lines.get(at).is_some_and(|l| l.kind == b'i') {
        at += 1;
    }
    at
}

/// The address most sections want; a tie goes to the one wanted first.
fn most_common(votes: &[(usize, IpAddr)]) -> Option<IpAddr> {
    let mut best: Option<(IpAddr, usize)> = None;
    for (_, a) in votes {
        let n = votes.iter().filter(|(_, b)| b == a).count();
        if best.is_none_or(|(_, m)| n > m) {
            best = Some((*a, n));
        }
    }
    best.map(|(a, _)| a)
}

/// `"41"` → `"42"`, `"999"` → `"1000"`; `None` if not a decimal number.
pub(super) fn increment_decimal(s: &str) -> Option<String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut digits = s.as_bytes().to_vec();
    for d in digits.iter_mut().rev() {
        if *d == b'9' {
            *d = b'0';
        } else {
            *d += 1;
            return String::from_utf8(digits).ok();
        }
    }
    digits.insert(0, b'1');
    String::from_utf8(digits).ok()
}
