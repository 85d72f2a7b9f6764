//! One `rtpedge` daemon per test, on loopback, in a temporary directory: started with
//! `--no-xdp` and one worker, ng on the given port, the HTTP API on ng + 10000 and the event
//! channel on ng + 20000 (tests running at once use distinct ng ports and media ranges), CDRs
//! in SQLite in its directory; ready once it answers an ng ping; killed and its directory
//! removed on drop. Plus the SDP and CDR helpers the daemon tests share.
//!
//! Include with `#[path = "support/daemon.rs"] mod daemon;` next to
//! `#[path = "support/http.rs"] mod http_client;`, which this module uses.

// Each test crate includes this file and uses only part of it.
#![allow(dead_code)]

use std::{
    ffi::OsString,
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use rtpedge::ng::{NgClient, Value};

use crate::http_client::http;

/// A running daemon; killed and its directory removed on drop.
pub struct Daemon {
    child: Child,
    pub ng: SocketAddr,
    pub http: SocketAddr,
    pub ws: SocketAddr,
    pub dir: PathBuf,
}

/// How to start a [`Daemon`]: beyond the common flags, extra arguments, a configuration file
/// and environment variables.
pub struct Builder {
    tag: String,
    ng_port: u16,
    ports: String,
    args: Vec<OsString>,
    config: Option<String>,
    env: Vec<(OsString, OsString)>,
}

impl Builder {
    /// Extra command-line arguments, after the common ones.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// The text of a configuration file, written to `rtpedge.toml` in the daemon's directory
    /// and passed with `--config`.
    pub fn config(mut self, text: impl Into<String>) -> Self {
        self.config = Some(text.into());
        self
    }

    /// An environment variable (after `RUST_LOG=warn`, so it may override that).
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Starts the daemon and waits (up to 20 s) until it answers an ng ping.
    pub fn start(self) -> Daemon {
        let dir = std::env::temp_dir().join(format!(
            "rtpedge-{}-{}-{}",
            self.tag,
            std::process::id(),
            self.ng_port
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ng: SocketAddr = format!("127.0.0.1:{}", self.ng_port).parse().unwrap();
        let http: SocketAddr = format!("127.0.0.1:{}", self.ng_port + 10000)
            .parse()
            .unwrap();
        let ws: SocketAddr = format!("127.0.0.1:{}", self.ng_port + 20000)
            .parse()
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rtpedge"));
        if let Some(text) = &self.config {
            let conf = dir.join("rtpedge.toml");
            std::fs::write(&conf, text).unwrap();
            cmd.arg("--config").arg(conf);
        }
        cmd.args(["--ng", &ng.to_string()])
            .args(["--http", &http.to_string()])
            .args(["--ws", &ws.to_string()])
            .args(["--ports", &self.ports])
            .args(["--no-xdp", "--workers", "1"])
            .args(&self.args)
            .arg("--cdr-db")
            .arg(dir.join("cdr.sqlite"))
            .env("RUST_LOG", "warn")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let child = cmd.spawn().expect("start rtpedge");
        let d = Daemon {
            child,
            ng,
            http,
            ws,
            dir,
        };
        let c = d.client();
        let deadline = Instant::now() + Duration::from_secs(20);
        while c.ping().is_err() {
            assert!(Instant::now() < deadline, "daemon did not answer ping");
        }
        d
    }
}

impl Daemon {
    /// A daemon with ng on `127.0.0.1:ng_port` and media ports `ports` ("first-last"); its
    /// directory is `rtpedge-<tag>-<pid>-<ng_port>` under the temporary directory.
    pub fn builder(tag: &str, ng_port: u16, ports: &str) -> Builder {
        Builder {
            tag: tag.into(),
            ng_port,
            ports: ports.into(),
            args: Vec::new(),
            config: None,
            env: Vec::new(),
        }
    }

    /// An ng client with a 300 ms timeout.
    pub fn client(&self) -> NgClient {
        NgClient::new(self.ng)
            .unwrap()
            .with_timeout(Duration::from_millis(300))
    }

    /// The CDR database.
    pub fn cdr_db(&self) -> PathBuf {
        self.dir.join("cdr.sqlite")
    }

    /// Sends SIGTERM and waits (up to 15 s) for the daemon to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "daemon did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Through the API: tariff `tariff` at 1 unit per second (1 s increments, no fee), and
    /// the prepaid account `acme` with `balance` on it.
    pub fn prepaid_acme(&self, tariff: &str, balance: i64) {
        let (s, b) = http(
            self.http,
            "PUT",
            &format!("/v1/tariffs/{tariff}"),
            r#"{"per_minute": 60, "per_kilobyte": 0, "increment_s": 1, "connection_fee": 0}"#,
        );
        assert_eq!(s, 200, "{b}");
        let (s, b) = http(
            self.http,
            "PUT",
            "/v1/accounts/acme",
            &format!(r#"{{"balance": {balance}, "tariff": "{tariff}", "mode": "prepaid"}}"#),
        );
        assert_eq!(s, 200, "{b}");
    }

    /// Offers (from tag `a`, billed to `acme`, caller media at `caller_port`) and answers (to
    /// tag `b`, callee media at `callee_port`) a call; returns the offer's and the answer's
    /// replies.
    pub fn billed_call(&self, call_id: &str, caller_port: u16, callee_port: u16) -> (Value, Value) {
        let ng = NgClient::new(self.ng)
            .unwrap()
            .with_timeout(Duration::from_millis(500));
        let offer = ng
            .offer(
                call_id,
                "a",
                &sdp(caller_port),
                &[("account", Value::from("acme"))],
            )
            .unwrap();
        let answer = ng
            .answer(call_id, "a", "b", &sdp(callee_port), &[])
            .unwrap();
        (offer, answer)
    }

    /// Deletes (over ng) a call that [`Daemon::billed_call`] set up.
    pub fn delete_billed_call(&self, call_id: &str) {
        NgClient::new(self.ng)
            .unwrap()
            .delete(call_id, Some("a"), None, &[])
            .unwrap();
    }

    /// The CDR of `call_id` once it has an end reason (or as it is after 5 s).
    pub fn cdr(&self, call_id: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (s, body) = http(self.http, "GET", &format!("/v1/cdrs?call_id={call_id}"), "");
            assert_eq!(s, 200, "{body}");
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            if !v[0]["end_reason"].is_null() || Instant::now() > deadline {
                return v[0].clone();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A one-line PCMU audio SDP with media at `127.0.0.1:port`.
pub fn sdp(port: u16) -> Vec<u8> {
    format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {port} RTP/AVP 0\r\n"
    )
    .into_bytes()
}

/// The `m=audio` port of an SDP.
pub fn media_port(sdp: &[u8]) -> u16 {
    String::from_utf8_lossy(sdp)
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|l| l.split(' ').next())
        .and_then(|p| p.parse().ok())
        .expect("m= port")
}

/// An RTP packet of 20 ms of PCMU silence: sequence number `seq`, source `ssrc`.
pub fn rtp_silence(ssrc: u32, seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, 0x00];
    p.extend(seq.to_be_bytes());
    p.extend((seq as u32 * 160).to_be_bytes());
    p.extend(ssrc.to_be_bytes());
    p.extend([0xd5; 160]);
    p
}
