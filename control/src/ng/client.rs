//! A small blocking ng client over UDP (IPv4 or IPv6), for the load generator and for
//! compatibility tests against rtpengine and rtpedge.
//!
//! Each request gets a fresh cookie; the datagram is retransmitted with the same cookie when no
//! reply arrives within the per-attempt timeout (as Kamailio does, so the server's reply cache
//! is exercised), and replies are matched by cookie: stray datagrams and replies to other
//! cookies are skipped. The client is deliberately not `Sync`: concurrent requests on one
//! socket would read each other's replies, so use one client per thread.

use std::cell::Cell;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::time::{Duration, Instant, SystemTime};

use super::bencode::{self, Value};
use super::message::decode_body;

/// Default wait for a reply before retransmitting.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// Default number of transmissions (the first plus retransmissions).
pub const DEFAULT_ATTEMPTS: u32 = 3;

/// Why a request did not produce a usable reply.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Socket trouble.
    #[error("ng socket: {0}")]
    Io(#[from] io::Error),
    /// No reply with our cookie after all attempts.
    #[error("no reply after {attempts} attempts")]
    Timeout { attempts: u32 },
    /// A reply with our cookie whose body did not decode.
    #[error("malformed reply: {0}")]
    Malformed(String),
    /// `result: error`.
    #[error("error reply: {reason}")]
    Error { reason: String, reply: Value },
    /// `result: load limit`.
    #[error("load limit{}", message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    LoadLimit { message: Option<String> },
    /// A `result` other than the expected one (e.g. ping answered with `ok`).
    #[error("unexpected result {result:?}")]
    UnexpectedResult {
        result: Option<String>,
        reply: Value,
    },
}

/// A blocking ng client bound to one server address.
pub struct NgClient {
    socket: UdpSocket,
    server: SocketAddr,
    timeout: Duration,
    attempts: u32,
    /// Per-client cookie prefix (process id and clock), so that clients in several processes
    /// and successive runs do not reuse cookies within the server's cache TTL.
    prefix: String,
    seq: Cell<u64>,
}

impl NgClient {
    /// A client for `server`, on an ephemeral local port of the same address family.
    pub fn new(server: impl ToSocketAddrs) -> io::Result<NgClient> {
        let server = server
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no server address"))?;
        let local: SocketAddr = match server {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket = UdpSocket::bind(local)?;
        // Connected: the kernel drops datagrams from any other source.
        socket.connect(server)?;
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let port = socket.local_addr().map(|a| a.port()).unwrap_or_default();
        Ok(NgClient {
            socket,
            server,
            timeout: DEFAULT_TIMEOUT,
            attempts: DEFAULT_ATTEMPTS,
            prefix: format!(
                "{:x}{:x}{:x}",
                std::process::id(),
                port,
                nanos & 0xffff_ffff
            ),
            seq: Cell::new(0),
        })
    }

    /// Sets the wait per attempt, between 1 ms and 1 hour (builder style).
    pub fn with_timeout(mut self, timeout: Duration) -> NgClient {
        self.timeout = timeout.clamp(Duration::from_millis(1), Duration::from_secs(3600));
        self
    }

    /// Sets the number of transmissions, at least 1 (builder style).
    pub fn with_attempts(mut self, attempts: u32) -> NgClient {
        self.attempts = attempts.max(1);
        self
    }

    /// The server address.
    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// The local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// The next cookie: `<prefix>_<sequence>`, no spaces.
    pub(super) fn next_cookie(&self) -> String {
        let seq = self.seq.get();
        self.seq.set(seq.wrapping_add(1));
        format!("{}_{seq}", self.prefix)
    }

    /// Sends `dict` (bencoded) and returns the reply dictionary, whatever its `result`.
    pub fn request(&self, dict: Value) -> Result<Value, ClientError> {
        let cookie = self.next_cookie();
        let mut datagram = Vec::with_capacity(cookie.len() + 256);
        datagram.extend_from_slice(cookie.as_bytes());
        datagram.push(b' ');
        bencode::encode(&dict, &mut datagram);
        let mut buf = vec![0u8; 65_536];
        for _ in 0..self.attempts {
            self.socket.send(&datagram)?;
            let deadline = Instant::now() + self.timeout;
            while let Some(left) = deadline
                .checked_duration_since(Instant::now())
                .filter(|d| !d.is_zero())
            {
                self.socket.set_read_timeout(Some(left))?;
                let len = match self.socket.recv(&mut buf) {
                    Ok(len) => len,
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock
                                | io::ErrorKind::TimedOut
                                | io::ErrorKind::Interrupted
                                // ICMP port unreachable from an earlier send: the server is
                                // not (yet) there; treat like a lost datagram.
                                | io::ErrorKind::ConnectionRefused
                        ) =>
                    {
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                };
                let Some(reply) = buf.get(..len) else {
                    continue;
                };
                let Some(body) = reply
                    .strip_prefix(cookie.as_bytes())
                    .and_then(|rest| rest.strip_prefix(b" "))
                else {
                    continue; // another cookie, or garbage: not ours
                };
                return decode_body(body)
                    .map(|(value, _)| value)
                    .map_err(|e| ClientError::Malformed(e.to_string()));
            }
        }
        Err(ClientError::Timeout {
            attempts: self.attempts,
        })
    }

    /// [`NgClient::request`], mapping `error` and `load limit` results to errors and
    /// requiring `expected` (`ok` or `pong`).
    pub fn request_expecting(&self, dict: Value, expected: &str) -> Result<Value, ClientError> {
        let reply = self.request(dict)?;
        match reply.get_str("result") {
            Some(r) if r == expected => Ok(reply),
            Some("error") => Err(ClientError::Error {
                reason: reply.get_str("error-reason").unwrap_or_default().to_owned(),
                reply,
            }),
            Some("load limit") => Err(ClientError::LoadLimit {
                message: reply.get_str("message").map(str::to_owned),
            }),
            other => Err(ClientError::UnexpectedResult {
                result: other.map(str::to_owned),
                reply,
            }),
        }
    }

    /// `ping`; `Ok` on `pong`.
    pub fn ping(&self) -> Result<(), ClientError> {
        self.request_expecting(Value::dict([("command", "ping".into())]), "pong")
            .map(|_| ())
    }

    /// `offer` with `extra` keys merged in (e.g. `flags`, `replace`, `received-from`); returns
    /// the `ok` reply (its `sdp` key holds the rewritten SDP).
    pub fn offer(
        &self,
        call_id: &str,
        from_tag: &str,
        sdp: &[u8],
        extra: &[(&str, Value)],
    ) -> Result<Value, ClientError> {
        let dict = Value::dict([
            ("command", "offer".into()),
            ("call-id", call_id.into()),
            ("from-tag", from_tag.into()),
            ("sdp", sdp.into()),
        ]);
        self.request_expecting(merge(dict, extra), "ok")
    }

    /// `answer`, like [`NgClient::offer`] plus the answerer's `to-tag`.
    pub fn answer(
        &self,
        call_id: &str,
        from_tag: &str,
        to_tag: &str,
        sdp: &[u8],
        extra: &[(&str, Value)],
    ) -> Result<Value, ClientError> {
        let dict = Value::dict([
            ("command", "answer".into()),
            ("call-id", call_id.into()),
            ("from-tag", from_tag.into()),
            ("to-tag", to_tag.into()),
            ("sdp", sdp.into()),
        ]);
        self.request_expecting(merge(dict, extra), "ok")
    }

    /// `delete`; tags are optional.
    pub fn delete(
        &self,
        call_id: &str,
        from_tag: Option<&str>,
        to_tag: Option<&str>,
        extra: &[(&str, Value)],
    ) -> Result<Value, ClientError> {
        let dict = with_tags(
            Value::dict([("command", "delete".into()), ("call-id", call_id.into())]),
            from_tag,
            to_tag,
        );
        self.request_expecting(merge(dict, extra), "ok")
    }

    /// `query`; tags are optional.
    pub fn query(
        &self,
        call_id: &str,
        from_tag: Option<&str>,
        to_tag: Option<&str>,
    ) -> Result<Value, ClientError> {
        let dict = with_tags(
            Value::dict([("command", "query".into()), ("call-id", call_id.into())]),
            from_tag,
            to_tag,
        );
        self.request_expecting(dict, "ok")
    }

    /// `list`; returns the call-ids.
    pub fn list(&self, limit: Option<u32>) -> Result<Vec<String>, ClientError> {
        let mut dict = Value::dict([("command", "list".into())]);
        if let Some(limit) = limit {
            dict.insert("limit", limit.into());
        }
        let reply = self.request_expecting(dict, "ok")?;
        Ok(reply
            .get("calls")
            .and_then(Value::as_list)
            .unwrap_or_default()
            .iter()
            .filter_map(|c| c.as_str().map(str::to_owned))
            .collect())
    }
}

fn with_tags(mut dict: Value, from_tag: Option<&str>, to_tag: Option<&str>) -> Value {
    if let Some(t) = from_tag {
        dict.insert("from-tag", t.into());
    }
    if let Some(t) = to_tag {
        dict.insert("to-tag", t.into());
    }
    dict
}

fn merge(mut dict: Value, extra: &[(&str, Value)]) -> Value {
    for (k, v) in extra {
        dict.insert(k, v.clone());
    }
    dict
}
