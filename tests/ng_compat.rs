//! rtpedge against rtpengine itself: the same ng conversation (ping, offer, answer, RTP both
//! ways, query, list, delete, and the usual errors) sent to `rtpengine-daemon` (Debian's, in
//! userspace mode) and to the `rtpedge` daemon, and the replies compared by shape: every key
//! rtpengine returns must be in rtpedge's reply, with the same type, recursively — except the
//! few listed in `GAPS`, each with the reason. Errors must carry rtpengine's `error-reason`
//! text. This is what lets Kamailio's and OpenSIPS' modules, and scripts reading statistics,
//! work unchanged.
//!
//! Needs the `rtpengine` binary (scripts/setup installs rtpengine-daemon): fails under `CI`
//! without it, skips loudly elsewhere.

use std::{
    net::{SocketAddr, UdpSocket},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use rtpedge::ng::{NgClient, Value};
use rtpedge_tests::{require_root, rtpedge_bin};

/// Keys rtpengine returns that rtpedge does not, by path (`*` matches any one key or index).
const GAPS: &[(&str, &str)] = &[(
    "tags.*.medias.*.flags",
    "rtpengine adds its ICE role ('ICE controlling'); rtpedge does no ICE (it strips it)",
)];

struct Server {
    child: Child,
    ng: SocketAddr,
    dir: std::path::PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn wait_ready(ng: SocketAddr) {
    let client = NgClient::new(ng)
        .unwrap()
        .with_timeout(Duration::from_millis(200));
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.ping().is_err() {
        assert!(Instant::now() < deadline, "no pong from {ng}");
    }
}

fn rtpengine(ng_port: u16, ports: (u16, u16)) -> Server {
    let dir = std::env::temp_dir().join(format!(
        "rtpedge-compat-rtpe-{}-{ng_port}",
        std::process::id()
    ));
    let _ = std::fs::create_dir_all(&dir);
    let ng: SocketAddr = format!("127.0.0.1:{ng_port}").parse().unwrap();
    let child = Command::new("rtpengine")
        .args([
            // Only these flags: never the host's /etc/rtpengine/rtpengine.conf.
            "--config-file=none",
            "--foreground",
            "--log-stderr",
            "--table=-1",
            "--interface=127.0.0.1",
            &format!("--listen-ng={ng}"),
            // Its own CLI port: the default (2224) may belong to another rtpengine.
            &format!("--listen-cli=127.0.0.1:{}", ng_port + 2),
            &format!("--port-min={}", ports.0),
            &format!("--port-max={}", ports.1),
            "--num-threads=1",
            "--log-level=3",
            "--delete-delay=0",
        ])
        .arg(format!("--pidfile={}", dir.join("pid").display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start rtpengine");
    wait_ready(ng);
    Server { child, ng, dir }
}

fn rtpedge(ng_port: u16, ports: (u16, u16)) -> Server {
    let dir = std::env::temp_dir().join(format!(
        "rtpedge-compat-edge-{}-{ng_port}",
        std::process::id()
    ));
    let _ = std::fs::create_dir_all(&dir);
    let ng: SocketAddr = format!("127.0.0.1:{ng_port}").parse().unwrap();
    let child = Command::new(rtpedge_bin())
        .args([
            "--ng",
            &ng.to_string(),
            "--ports",
            &format!("{}-{}", ports.0, ports.1),
        ])
        .args([
            "--no-xdp",
            "--workers",
            "1",
            "--delete-delay",
            "0",
            "--http",
            "off",
            "--ws",
            "off",
        ])
        .arg("--cdr-db")
        .arg(dir.join("cdr.sqlite"))
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start rtpedge");
    wait_ready(ng);
    Server { child, ng, dir }
}

fn sdp(port: u16) -> Vec<u8> {
    format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
    )
    .into_bytes()
}

fn media_port(sdp: &[u8]) -> u16 {
    String::from_utf8_lossy(sdp)
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|l| l.split(' ').next())
        .and_then(|p| p.parse().ok())
        .expect("m= port")
}

fn rtp(seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, 0x00];
    p.extend(seq.to_be_bytes());
    p.extend((seq as u32 * 160).to_be_bytes());
    p.extend(0x2222u32.to_be_bytes());
    p.extend([0xd5; 160]);
    p
}

/// The whole conversation; returns the replies by step name.
fn converse(server: &Server) -> Vec<(&'static str, Value)> {
    let ng = NgClient::new(server.ng)
        .unwrap()
        .with_timeout(Duration::from_millis(500));
    let caller = UdpSocket::bind("127.0.0.1:0").unwrap();
    let callee = UdpSocket::bind("127.0.0.1:0").unwrap();
    let rf = Value::list([Value::from("IP4"), Value::from("127.0.0.1")]);
    let extra = [
        ("received-from", rf.clone()),
        ("ICE", Value::from("remove")),
    ];
    let req = |d: Value| ng.request(d).expect("a reply");
    let mut out = Vec::new();
    out.push(("ping", req(Value::dict([("command", Value::from("ping"))]))));
    let offer = ng
        .offer(
            "compat-1",
            "tag-a",
            &sdp(caller.local_addr().unwrap().port()),
            &extra,
        )
        .unwrap();
    let to_callee = media_port(offer.get_bytes("sdp").unwrap());
    out.push(("offer", offer));
    let answer = ng
        .answer(
            "compat-1",
            "tag-a",
            "tag-b",
            &sdp(callee.local_addr().unwrap().port()),
            &extra,
        )
        .unwrap();
    let to_caller = media_port(answer.get_bytes("sdp").unwrap());
    out.push(("answer", answer));
    for seq in 0..10 {
        caller.send_to(&rtp(seq), ("127.0.0.1", to_caller)).unwrap();
        callee.send_to(&rtp(seq), ("127.0.0.1", to_callee)).unwrap();
    }
    callee
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut buf = [0u8; 2048];
    callee.recv_from(&mut buf).expect("media relayed");
    std::thread::sleep(Duration::from_millis(200));
    out.push(("query", ng.query("compat-1", None, None).unwrap()));
    out.push(("list", req(Value::dict([("command", Value::from("list"))]))));
    out.push((
        "delete",
        ng.delete("compat-1", Some("tag-a"), None, &[]).unwrap(),
    ));
    let cmd = |pairs: &[(&str, Value)]| Value::dict(pairs.iter().cloned());
    out.push((
        "answer-unknown-call",
        req(cmd(&[
            ("command", "answer".into()),
            ("call-id", "nope".into()),
            ("from-tag", "a".into()),
            ("to-tag", "b".into()),
            ("sdp", Value::from(sdp(5000))),
        ])),
    ));
    out.push((
        "offer-without-sdp",
        req(cmd(&[
            ("command", "offer".into()),
            ("call-id", "x".into()),
            ("from-tag", "a".into()),
        ])),
    ));
    out.push(("unknown-command", req(cmd(&[("command", "frob".into())]))));
    out.push((
        "delete-unknown-call",
        req(cmd(&[
            ("command", "delete".into()),
            ("call-id", "nope".into()),
            ("from-tag", "a".into()),
        ])),
    ));
    out
}

fn gap(path: &str) -> bool {
    GAPS.iter().any(|(g, _)| {
        let gs: Vec<&str> = g.split('.').collect();
        let ps: Vec<&str> = path.split('.').collect();
        gs.len() == ps.len() && gs.iter().zip(&ps).all(|(g, p)| *g == "*" || g == p)
    })
}

/// Every key of `reference` is in `candidate` with the same type, recursively.
fn same_shape(reference: &Value, candidate: &Value, path: &str, problems: &mut Vec<String>) {
    match (reference, candidate) {
        (Value::Dict(r), Value::Dict(_)) => {
            for (k, v) in r {
                let key = String::from_utf8_lossy(k);
                let p = if path.is_empty() {
                    key.to_string()
                } else {
                    format!("{path}.{key}")
                };
                if gap(&p) {
                    continue;
                }
                match candidate.get(k) {
                    Some(c) => same_shape(v, c, &p, problems),
                    None => problems.push(format!("missing {p}")),
                }
            }
        }
        (Value::List(r), Value::List(c)) => {
            if gap(path) {
                return;
            }
            if r.len() != c.len() && !r.is_empty() {
                problems.push(format!(
                    "{path}: {} items, rtpengine has {}",
                    c.len(),
                    r.len()
                ));
            }
            for (i, (rv, cv)) in r.iter().zip(c).enumerate() {
                same_shape(rv, cv, &format!("{path}.{i}"), problems);
            }
        }
        (Value::Int(_), Value::Int(_)) | (Value::Bytes(_), Value::Bytes(_)) => {}
        (r, c) => problems.push(format!(
            "{path}: {} here, {} in rtpengine",
            c.type_name(),
            r.type_name()
        )),
    }
}

/// Root and the rtpengine binary are there (fails under `CI` without them, skips loudly
/// elsewhere).
fn can_compare(test: &str) -> bool {
    if !require_root(test) {
        return false;
    }
    if Command::new("rtpengine").arg("--version").output().is_err() {
        if std::env::var_os("CI").is_some() {
            panic!("rtpengine is not installed (scripts/setup installs rtpengine-daemon)");
        }
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr().lock(),
            "\n*** SKIPPED {test}: rtpengine not installed ***\n"
        );
        return false;
    }
    true
}

#[test]
fn replies_have_rtpengines_shape() {
    if !can_compare("replies_have_rtpengines_shape") {
        return;
    }
    let reference = rtpengine(22251, (45000, 45999));
    let edge = rtpedge(22252, (46000, 46999));
    let theirs = converse(&reference);
    let ours = converse(&edge);
    let mut problems = Vec::new();
    for ((step, r), (_, c)) in theirs.iter().zip(&ours) {
        assert_eq!(r.get_str("result"), c.get_str("result"), "{step}: result");
        if let Some(reason) = r.get_str("error-reason") {
            let mine = c.get_str("error-reason").unwrap_or_default();
            assert!(
                mine.contains(reason),
                "{step}: error-reason {mine:?} lacks rtpengine's {reason:?}"
            );
        }
        if let Some(w) = r.get_str("warning") {
            assert_eq!(c.get_str("warning"), Some(w), "{step}: warning");
        }
        let mut p = Vec::new();
        same_shape(r, c, "", &mut p);
        problems.extend(p.into_iter().map(|x| format!("{step}: {x}")));
    }
    assert!(
        problems.is_empty(),
        "shape differences:\n{}",
        problems.join("\n")
    );
    // Statistics are real on both sides.
    for (name, replies) in [("rtpengine", &theirs), ("rtpedge", &ours)] {
        let q = &replies.iter().find(|(s, _)| *s == "query").unwrap().1;
        let packets = q
            .get("totals")
            .and_then(|t| t.get("RTP"))
            .and_then(|r| r.get_int("packets"));
        assert_eq!(packets, Some(20), "{name}: RTP packets in totals");
    }
}

/// What an SDP's first media section says about rtcp-mux: (`a=rtcp-mux` present, an RTCP port
/// other than the RTP port advertised). rtpengine writes `a=rtcp:<RTP port>` next to a mux it
/// uses, rtpedge no `a=rtcp`: both mean "no separate RTCP port".
fn mux_view(sdp: &[u8]) -> (bool, bool) {
    let text = String::from_utf8_lossy(sdp);
    let rtp = media_port(sdp);
    let mux = text.lines().any(|l| l.trim_end() == "a=rtcp-mux");
    let separate = text
        .lines()
        .find_map(|l| l.strip_prefix("a=rtcp:"))
        .and_then(|v| v.split(' ').next())
        .and_then(|p| p.trim().parse::<u16>().ok())
        .is_some_and(|p| p != rtp);
    (mux, separate)
}

fn mux_sdp(port: u16, mux: bool) -> Vec<u8> {
    let mut s = sdp(port);
    if mux {
        s.extend_from_slice(b"a=rtcp-mux\r\n");
    }
    s
}

/// One rtcp-mux case: its name, the offer's reply, the offer's and the answer's mux view.
type MuxStep = (String, Value, (bool, bool), (bool, bool));

/// For each rtcp-mux mode: the offer's and the answer's mux view, and the reply's shape.
fn mux_conversation(server: &Server) -> Vec<MuxStep> {
    let ng = NgClient::new(server.ng)
        .unwrap()
        .with_timeout(Duration::from_millis(500));
    let rf = Value::list([Value::from("IP4"), Value::from("127.0.0.1")]);
    let mut out = Vec::new();
    for (i, (caller_mux, mode, callee_mux)) in [
        (true, "", true),
        (true, "", false),
        (true, "demux", false),
        (false, "offer", true),
        (false, "require", true),
        (true, "reject", true),
        (true, "accept", false),
    ]
    .into_iter()
    .enumerate()
    {
        let call = format!("mux-{i}");
        let mut extra = vec![
            ("received-from", rf.clone()),
            ("ICE", Value::from("remove")),
        ];
        if !mode.is_empty() {
            extra.push(("rtcp-mux", Value::list([Value::from(mode)])));
        }
        let offer = ng
            .offer(
                &call,
                "tag-a",
                &mux_sdp(4000 + 2 * i as u16, caller_mux),
                &extra,
            )
            .unwrap();
        let answer = ng
            .answer(
                &call,
                "tag-a",
                "tag-b",
                &mux_sdp(5000 + 2 * i as u16, callee_mux),
                &extra[..2],
            )
            .unwrap();
        let step = format!("caller mux {caller_mux}, rtcp-mux [{mode}], callee mux {callee_mux}");
        let views = (
            mux_view(offer.get_bytes("sdp").unwrap()),
            mux_view(answer.get_bytes("sdp").unwrap()),
        );
        out.push((format!("{step}: offer"), offer, views.0, views.1));
        ng.delete(&call, Some("tag-a"), None, &[]).unwrap();
    }
    out
}

#[test]
fn rtcp_mux_options_decide_as_rtpengine_does() {
    if !can_compare("rtcp_mux_options_decide_as_rtpengine_does") {
        return;
    }
    let reference = rtpengine(22255, (52000, 52999));
    let edge = rtpedge(22256, (53000, 53999));
    let theirs = mux_conversation(&reference);
    let ours = mux_conversation(&edge);
    let mut problems = Vec::new();
    for ((step, r, r_offer, r_answer), (_, c, c_offer, c_answer)) in theirs.iter().zip(&ours) {
        assert_eq!(r.get_str("result"), c.get_str("result"), "{step}: result");
        same_shape(r, c, "", &mut problems);
        assert_eq!(
            (c_offer, c_answer),
            (r_offer, r_answer),
            "{step}: (a=rtcp-mux, separate RTCP port) in offer and answer"
        );
    }
    assert!(
        problems.is_empty(),
        "shape differences:\n{}",
        problems.join("\n")
    );
}
