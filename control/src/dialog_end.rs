//! Asks the SIP proxy to end a dialog whose media rtpedge cut (credit exhausted): Kamailio's
//! dialog module RPC `dlg.terminate_dlg` (Call-ID, From-tag, To-tag; Kamailio sends BYE both
//! ways) over its `jsonrpcs` module on HTTP, like rtpengine's `--b2b-url` with the Kamailio
//! format. `dlg.end_dlg` would need the dialog's `h_entry`/`h_id`, which rtpedge never sees;
//! the tags identify the dialog as well.
//!
//! Never blocks the control loop: requests go through a bounded queue to a thread of their
//! own, which POSTs them one by one (a small HTTP/1.1 client over `TcpStream`, with
//! timeouts). Outcomes are logged and counted (`/metrics`:
//! `rtpedge_dialog_end_total{result="ok"|"not-found"|"error"|"dropped"}`).

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream, ToSocketAddrs},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use crossbeam_channel::{Sender, TrySendError};
use serde_json::{Value, json};

/// The JSON-RPC method called.
pub const METHOD: &str = "dlg.terminate_dlg";
/// Requests waiting beyond this are dropped (and counted).
const QUEUE: usize = 1024;
/// Connect, write and read timeout of one request.
const TIMEOUT: Duration = Duration::from_secs(3);
/// Longest response read.
const MAX_RESPONSE: u64 = 64 * 1024;

/// A `http://HOST:PORT/PATH` endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// `HOST:PORT` as written (for the Host header and resolution).
    pub authority: String,
    /// Path, `/` at least.
    pub path: String,
}

/// Why an endpoint URL is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct UrlError(String);

impl Endpoint {
    /// Parses `http://HOST[:PORT][/PATH]` (port 80 by default; no TLS).
    pub fn parse(url: &str) -> Result<Self, UrlError> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| UrlError(format!("{url:?}: only http:// URLs are supported")))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            return Err(UrlError(format!("{url:?}: no host")));
        }
        let has_port = match authority.rfind(':') {
            Some(i) => !authority[i..].contains(']'),
            None => false,
        };
        let authority = if has_port {
            let port = authority.rsplit(':').next().unwrap_or("");
            port.parse::<u16>()
                .map_err(|_| UrlError(format!("{url:?}: bad port {port:?}")))?;
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        Ok(Self {
            authority,
            path: path.to_string(),
        })
    }
}

/// The JSON-RPC request body.
pub fn request_body(id: u64, call_id: &str, from_tag: &str, to_tag: &str) -> Value {
    json!({
        "jsonrpc": "2.0",
        "method": METHOD,
        "params": [call_id, from_tag, to_tag],
        "id": id,
    })
}

/// How one request ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Kamailio ended the dialog.
    Ok,
    /// Kamailio does not know the dialog (already ended): not an error.
    NotFound,
    /// Transport, HTTP or JSON-RPC failure.
    Error(String),
}

/// Reads a JSON-RPC answer: an HTTP status line, headers, and a JSON body with `result` or
/// `error`.
pub fn interpret(response: &[u8]) -> Outcome {
    let text = String::from_utf8_lossy(response);
    let status: u16 = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let v: Option<Value> = serde_json::from_str(body.trim()).ok();
    let err = v
        .as_ref()
        .and_then(|v| v.get("error"))
        .filter(|e| !e.is_null());
    match (status, err) {
        (_, Some(e)) => {
            let msg = e
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            if msg.to_ascii_lowercase().contains("not found") {
                Outcome::NotFound
            } else {
                Outcome::Error(format!("JSON-RPC error: {e}"))
            }
        }
        (200, None) if v.is_some() => Outcome::Ok,
        (200, None) => Outcome::Error(format!("HTTP 200 without a JSON-RPC answer: {body:?}")),
        (s, None) => Outcome::Error(format!("HTTP status {s}")),
    }
}

fn post(ep: &Endpoint, body: &str) -> Result<Vec<u8>, String> {
    let addrs: Vec<SocketAddr> = ep
        .authority
        .to_socket_addrs()
        .map_err(|e| format!("resolving {}: {e}", ep.authority))?
        .collect();
    let addr = addrs
        .first()
        .ok_or_else(|| format!("{} resolves to nothing", ep.authority))?;
    let mut s = TcpStream::connect_timeout(addr, TIMEOUT).map_err(|e| format!("{addr}: {e}"))?;
    s.set_read_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    let req = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        ep.path,
        ep.authority,
        body.len()
    );
    s.write_all(req.as_bytes())
        .map_err(|e| format!("{addr}: {e}"))?;
    let mut resp = Vec::new();
    s.take(MAX_RESPONSE)
        .read_to_end(&mut resp)
        .map_err(|e| format!("{addr}: {e}"))?;
    Ok(resp)
}

/// Counters of requests, by outcome.
#[derive(Debug, Default)]
pub struct Counters {
    /// Dialogs ended.
    pub ok: AtomicU64,
    /// Dialogs Kamailio did not know.
    pub not_found: AtomicU64,
    /// Failures.
    pub error: AtomicU64,
    /// Requests dropped because the queue was full.
    pub dropped: AtomicU64,
}

struct Job {
    call_id: String,
    from_tag: String,
    to_tag: String,
}

/// The client: a queue and its thread.
pub struct DialogEnder {
    tx: Sender<Job>,
    counters: Arc<Counters>,
}

impl DialogEnder {
    /// Starts the sender thread for `endpoint`.
    pub fn start(endpoint: Endpoint) -> std::io::Result<Self> {
        let (tx, rx) = crossbeam_channel::bounded::<Job>(QUEUE);
        let counters = Arc::new(Counters::default());
        let c = Arc::clone(&counters);
        std::thread::Builder::new()
            .name("rtpedge-dlg-end".into())
            .spawn(move || {
                let mut id = 0u64;
                for job in rx {
                    id += 1;
                    let body = request_body(id, &job.call_id, &job.from_tag, &job.to_tag);
                    let outcome = match post(&endpoint, &body.to_string()) {
                        Ok(resp) => interpret(&resp),
                        Err(e) => Outcome::Error(e),
                    };
                    match outcome {
                        Outcome::Ok => {
                            c.ok.fetch_add(1, Ordering::Relaxed);
                            tracing::info!(call = job.call_id, "SIP dialog ended by the proxy");
                        }
                        Outcome::NotFound => {
                            c.not_found.fetch_add(1, Ordering::Relaxed);
                            tracing::info!(call = job.call_id, "the proxy knows no such dialog");
                        }
                        Outcome::Error(e) => {
                            c.error.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(call = job.call_id, error = %e, "{METHOD} failed");
                        }
                    }
                }
            })?;
        Ok(Self { tx, counters })
    }

    /// Queues a request to end the dialog; never blocks.
    pub fn end(&self, call_id: &str, from_tag: &str, to_tag: &str) {
        let job = Job {
            call_id: call_id.to_string(),
            from_tag: from_tag.to_string(),
            to_tag: to_tag.to_string(),
        };
        match self.tx.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(j) | TrySendError::Disconnected(j)) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(call = j.call_id, "{METHOD} not sent: queue full");
            }
        }
    }

    /// The counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The Prometheus lines of the counters.
    pub fn metrics(&self) -> String {
        let c = &self.counters;
        let mut out = String::from(
            "# HELP rtpedge_dialog_end_total Requests to the SIP proxy to end a cut call's dialog (dlg.terminate_dlg), by result.\n# TYPE rtpedge_dialog_end_total counter\n",
        );
        for (label, v) in [
            ("ok", &c.ok),
            ("not-found", &c.not_found),
            ("error", &c.error),
            ("dropped", &c.dropped),
        ] {
            out.push_str(&format!(
                "rtpedge_dialog_end_total{{result=\"{label}\"}} {}\n",
                v.load(Ordering::Relaxed)
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::{net::TcpListener, time::Instant};

    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            Endpoint::parse("http://127.0.0.1:5060/RPC").unwrap(),
            Endpoint {
                authority: "127.0.0.1:5060".into(),
                path: "/RPC".into()
            }
        );
        assert_eq!(
            Endpoint::parse("http://kamailio").unwrap(),
            Endpoint {
                authority: "kamailio:80".into(),
                path: "/".into()
            }
        );
        assert_eq!(
            Endpoint::parse("http://[::1]:8080/RPC").unwrap().authority,
            "[::1]:8080"
        );
        assert_eq!(
            Endpoint::parse("http://[::1]/x").unwrap().authority,
            "[::1]:80"
        );
        assert!(Endpoint::parse("https://k/RPC").is_err());
        assert!(Endpoint::parse("http://k:99999/RPC").is_err());
        assert!(Endpoint::parse("http:///RPC").is_err());
    }

    #[test]
    fn answers() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 36\r\n\r\n{\"jsonrpc\":\"2.0\",\"result\":{},\"id\":1}";
        assert_eq!(interpret(ok), Outcome::Ok);
        let nf = b"HTTP/1.1 200 OK\r\n\r\n{\"jsonrpc\":\"2.0\",\"error\":{\"code\":404,\"message\":\"Dialog not found\"},\"id\":1}";
        assert_eq!(interpret(nf), Outcome::NotFound);
        let e = b"HTTP/1.1 200 OK\r\n\r\n{\"jsonrpc\":\"2.0\",\"error\":{\"code\":500,\"message\":\"Failed\"},\"id\":1}";
        assert!(matches!(interpret(e), Outcome::Error(m) if m.contains("Failed")));
        assert!(
            matches!(interpret(b"HTTP/1.1 404 Not Found\r\n\r\n"), Outcome::Error(m) if m.contains("404"))
        );
        assert!(matches!(interpret(b""), Outcome::Error(_)));
    }

    /// A one-shot HTTP server: returns the raw request it got, answers `reply`.
    fn server(reply: &'static str) -> (SocketAddr, std::thread::JoinHandle<String>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let h = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            // Read the headers, then Content-Length bytes of body.
            loop {
                let n = s.read(&mut buf).unwrap();
                req.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&req).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("Content-Length: "))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap();
                    if body.len() >= len {
                        break;
                    }
                }
                if n == 0 {
                    break;
                }
            }
            s.write_all(reply.as_bytes()).unwrap();
            String::from_utf8(req).unwrap()
        });
        (addr, h)
    }

    fn wait_for(c: &AtomicU64, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while c.load(Ordering::Relaxed) < n {
            assert!(Instant::now() < deadline, "counter did not reach {n}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn posts_the_exact_json_rpc_request_and_counts_the_outcome() {
        let (addr, srv) = server(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 38\r\n\r\n{\"jsonrpc\":\"2.0\",\"result\":\"ok\",\"id\":1}",
        );
        let ender =
            DialogEnder::start(Endpoint::parse(&format!("http://{addr}/RPC")).unwrap()).unwrap();
        let t0 = Instant::now();
        ender.end("call-1@host", "ftag", "ttag");
        assert!(t0.elapsed() < Duration::from_millis(50), "never blocks");
        let req = srv.join().unwrap();
        let (head, body) = req.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("POST /RPC HTTP/1.1\r\n"), "{head}");
        assert!(head.contains("Content-Type: application/json"), "{head}");
        let v: Value = serde_json::from_str(body).unwrap();
        assert_eq!(
            v,
            json!({"jsonrpc": "2.0", "method": "dlg.terminate_dlg",
                   "params": ["call-1@host", "ftag", "ttag"], "id": 1})
        );
        wait_for(&ender.counters().ok, 1);
        assert!(
            ender
                .metrics()
                .contains("rtpedge_dialog_end_total{result=\"ok\"} 1")
        );
    }

    #[test]
    fn failures_are_counted_not_fatal() {
        // Nothing listens on this port (bound, then closed).
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let ender =
            DialogEnder::start(Endpoint::parse(&format!("http://{addr}/RPC")).unwrap()).unwrap();
        ender.end("c", "f", "t");
        wait_for(&ender.counters().error, 1);
        let (addr, srv) = server(
            "HTTP/1.1 200 OK\r\nContent-Length: 73\r\n\r\n{\"jsonrpc\":\"2.0\",\"error\":{\"code\":404,\"message\":\"Not found\"},\"id\":1}",
        );
        let ender =
            DialogEnder::start(Endpoint::parse(&format!("http://{addr}/")).unwrap()).unwrap();
        ender.end("c", "f", "t");
        srv.join().unwrap();
        wait_for(&ender.counters().not_found, 1);
        assert!(
            ender
                .metrics()
                .contains("rtpedge_dialog_end_total{result=\"not-found\"} 1")
        );
    }
}
