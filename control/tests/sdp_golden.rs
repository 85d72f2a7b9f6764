//! Golden tests of `rtpedge::sdp`: every `tests/sdp_golden/NAME.sdp` is parsed, checked against
//! the `remote` expectations in `NAME.json`, rewritten with the `rewrite` spec in `NAME.json` and
//! compared byte for byte with `NAME.expected.sdp`. The identity rewrite of every input must
//! reproduce it exactly.
//!
//! `SDP_GOLDEN_BLESS=1 cargo test -p rtpedge --test sdp_golden` (re)writes the expected files;
//! review the result with `git diff` before committing it.
//!
//! Spec format (unknown keys are errors, to catch typos):
//! ```json
//! {
//!   "description": "...",
//!   "rewrite": {
//!     "origin_address": "203.0.113.1", "origin_version": "keep" | "increment" | 42,
//!     "session_name": "...", "session_connection": "...", "strip_ice": true,
//!     "rtcp_attribute": "auto" | "full" | "omit",
//!     "media": [{ "port": 30000, "address": "...",
//!                 "rtcp": "keep" | "remove" | { "port": 30001, "address": "..." },
//!                 "rtcp_mux": "keep" | "offer" | "use" | "remove",
//!                 "direction": "sendrecv" | "sendonly" | "recvonly" | "inactive",
//!                 "proto": "RTP/AVP", "strip_rtcp_fb": true }]
//!   },
//!   "remote": [{ "rtp": "ip:port" | null, "rtcp": "ip:port" | null, "rtcp_mux": false,
//!                "proto": "RTP/AVP", "direction": "sendrecv", "disabled": false, "ice": false,
//!                "on_hold": false, "sdes": false, "dtls": false, "mid": "0" }]
//! }
//! ```

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use rtpedge::sdp::{
    self, Direction, MediaRewrite, RemoteMedia, Rewrite, RtcpAttributeStyle, RtcpMuxRewrite,
    RtcpRewrite, VersionChange,
};
use serde_json::{Map, Value};

type Result<T> = std::result::Result<T, String>;

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdp_golden")
}

/// The input files, sorted.
fn inputs() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(golden_dir())
        .expect("tests/sdp_golden exists")
        .map(|e| e.expect("readable directory").path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            name.ends_with(".sdp") && !name.ends_with(".expected.sdp")
        })
        .collect();
    v.sort();
    v
}

fn object<'a>(v: &'a Value, what: &str, allowed: &[&str]) -> Result<&'a Map<String, Value>> {
    let map = v
        .as_object()
        .ok_or_else(|| format!("{what}: expected an object"))?;
    for key in map.keys() {
        if !allowed.contains(&key.as_str()) {
            return Err(format!("{what}: unknown key `{key}`"));
        }
    }
    Ok(map)
}

fn ip(v: &Value, what: &str) -> Result<IpAddr> {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{what}: expected an IP address, got {v}"))
}

fn port(v: &Value, what: &str) -> Result<u16> {
    v.as_u64()
        .and_then(|n| u16::try_from(n).ok())
        .ok_or_else(|| format!("{what}: expected a port, got {v}"))
}

fn direction(v: &Value, what: &str) -> Result<Direction> {
    v.as_str()
        .and_then(Direction::from_name)
        .ok_or_else(|| format!("{what}: expected a direction, got {v}"))
}

fn rewrite_spec(v: &Value) -> Result<Rewrite> {
    let m = object(
        v,
        "rewrite",
        &[
            "origin_address",
            "origin_version",
            "session_name",
            "session_connection",
            "strip_ice",
            "rtcp_attribute",
            "media",
        ],
    )?;
    let mut rw = Rewrite::default();
    if let Some(a) = m.get("origin_address") {
        rw.origin_address = Some(ip(a, "origin_address")?);
    }
    if let Some(v) = m.get("origin_version") {
        rw.origin_version = match (v.as_str(), v.as_u64()) {
            (Some("keep"), _) => VersionChange::Keep,
            (Some("increment"), _) => VersionChange::Increment,
            (None, Some(n)) => VersionChange::Set(n),
            _ => return Err(format!("origin_version: unexpected {v}")),
        };
    }
    if let Some(s) = m.get("session_name") {
        rw.session_name = Some(s.as_str().ok_or("session_name: a string")?.to_owned());
    }
    if let Some(a) = m.get("session_connection") {
        rw.session_connection = Some(ip(a, "session_connection")?);
    }
    if let Some(b) = m.get("strip_ice") {
        rw.strip_ice = b.as_bool().ok_or("strip_ice: a boolean")?;
    }
    if let Some(s) = m.get("rtcp_attribute") {
        rw.rtcp_attribute = match s.as_str() {
            Some("auto") => RtcpAttributeStyle::Auto,
            Some("full") => RtcpAttributeStyle::Full,
            Some("omit") => RtcpAttributeStyle::Omit,
            _ => return Err(format!("rtcp_attribute: unexpected {s}")),
        };
    }
    for (i, mv) in m
        .get("media")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let what = format!("media[{i}]");
        let mm = object(
            mv,
            &what,
            &[
                "port",
                "address",
                "rtcp",
                "rtcp_mux",
                "direction",
                "proto",
                "strip_rtcp_fb",
            ],
        )?;
        let mut mr = MediaRewrite::default();
        if let Some(p) = mm.get("port") {
            mr.port = Some(port(p, &what)?);
        }
        if let Some(a) = mm.get("address") {
            mr.address = Some(ip(a, &what)?);
        }
        if let Some(r) = mm.get("rtcp") {
            mr.rtcp = match r.as_str() {
                Some("keep") => RtcpRewrite::Keep,
                Some("remove") => RtcpRewrite::Remove,
                Some(other) => return Err(format!("{what}.rtcp: unexpected `{other}`")),
                None => {
                    let o = object(r, &what, &["port", "address"])?;
                    RtcpRewrite::Set {
                        port: port(o.get("port").unwrap_or(&Value::Null), &what)?,
                        address: o.get("address").map(|a| ip(a, &what)).transpose()?,
                    }
                }
            };
        }
        if let Some(x) = mm.get("rtcp_mux") {
            mr.rtcp_mux = match x.as_str() {
                Some("keep") => RtcpMuxRewrite::Keep,
                Some("offer") => RtcpMuxRewrite::Offer,
                Some("use") => RtcpMuxRewrite::Use,
                Some("remove") => RtcpMuxRewrite::Remove,
                _ => return Err(format!("{what}.rtcp_mux: unexpected {x}")),
            };
        }
        if let Some(d) = mm.get("direction") {
            mr.direction = Some(direction(d, &what)?);
        }
        if let Some(p) = mm.get("proto") {
            mr.proto = Some(
                p.as_str()
                    .ok_or_else(|| format!("{what}.proto: a string"))?
                    .to_owned(),
            );
        }
        if let Some(b) = mm.get("strip_rtcp_fb") {
            mr.strip_rtcp_fb = b
                .as_bool()
                .ok_or_else(|| format!("{what}.strip_rtcp_fb: a boolean"))?;
        }
        rw.media.push(mr);
    }
    Ok(rw)
}

fn check_remote(expected: &Value, actual: &RemoteMedia<'_>, what: &str) -> Result<()> {
    let m = object(
        expected,
        what,
        &[
            "rtp",
            "rtcp",
            "rtcp_mux",
            "proto",
            "direction",
            "disabled",
            "ice",
            "on_hold",
            "sdes",
            "dtls",
            "mid",
        ],
    )?;
    let socket = |v: &Value| -> Result<Option<SocketAddr>> {
        match v {
            Value::Null => Ok(None),
            Value::String(s) => s
                .parse()
                .map(Some)
                .map_err(|_| format!("{what}: bad socket address {s}")),
            _ => Err(format!("{what}: expected a socket address or null")),
        }
    };
    let mut problems = Vec::new();
    let mut compare = |key: &str, want: String, got: String| {
        if want != got {
            problems.push(format!("{key}: expected {want}, got {got}"));
        }
    };
    for (key, v) in m {
        match key.as_str() {
            "rtp" => compare(
                key,
                format!("{:?}", socket(v)?),
                format!("{:?}", actual.rtp),
            ),
            "rtcp" => compare(
                key,
                format!("{:?}", socket(v)?),
                format!("{:?}", actual.rtcp),
            ),
            "rtcp_mux" => compare(key, v.to_string(), actual.rtcp_mux.to_string()),
            "proto" => compare(key, v.to_string(), format!("{:?}", actual.proto)),
            "direction" => compare(
                key,
                format!("{:?}", direction(v, what)?),
                format!("{:?}", actual.direction),
            ),
            "disabled" => compare(key, v.to_string(), actual.disabled.to_string()),
            "ice" => compare(key, v.to_string(), actual.ice.to_string()),
            "on_hold" => compare(key, v.to_string(), actual.is_on_hold().to_string()),
            "sdes" => compare(key, v.to_string(), actual.sdes.to_string()),
            "dtls" => compare(key, v.to_string(), actual.dtls.to_string()),
            "mid" => compare(
                key,
                v.to_string(),
                format!("{:?}", actual.mid.unwrap_or("")),
            ),
            _ => {}
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("{what}: {}", problems.join("; ")))
    }
}

/// Lines with their terminators, terminators made visible.
fn visible_lines(text: &[u8]) -> Vec<String> {
    text.split_inclusive(|&b| b == b'\n')
        .map(|line| {
            let s = String::from_utf8_lossy(line);
            let body = s.trim_end_matches(['\r', '\n']);
            let end = &s[body.len()..];
            let end = match end {
                "\r\n" => "⏎CRLF",
                "\n" => "⏎LF",
                "" => "∅ (no line ending)",
                other => return format!("{body}{other:?}"),
            };
            format!("{body}{end}")
        })
        .collect()
}

/// A line diff (longest common subsequence; golden files are small) with two lines of context.
fn diff(expected: &[u8], actual: &[u8]) -> String {
    let a = visible_lines(expected);
    let b = visible_lines(actual);
    let (n, m) = (a.len(), b.len());
    let mut lcs = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut ops: Vec<(char, &str)> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            ops.push((' ', &a[i]));
            i += 1;
            j += 1;
        } else if j < m && (i == n || lcs[i][j + 1] >= lcs[i + 1][j]) {
            ops.push(('+', &b[j]));
            j += 1;
        } else {
            ops.push(('-', &a[i]));
            i += 1;
        }
    }
    let near_change = |k: usize| {
        let lo = k.saturating_sub(2);
        let hi = (k + 2).min(ops.len() - 1);
        ops[lo..=hi].iter().any(|(c, _)| *c != ' ')
    };
    let mut out = String::from("--- expected\n+++ actual\n");
    let mut skipped = false;
    for (k, (c, line)) in ops.iter().enumerate() {
        if near_change(k) {
            let _ = writeln!(out, "{c} {line}");
            skipped = false;
        } else if !skipped {
            out.push_str("  ...\n");
            skipped = true;
        }
    }
    out
}

fn run_case(input_path: &Path, bless: bool) -> Result<()> {
    let name = input_path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_owned();
    let input = std::fs::read(input_path).map_err(|e| format!("{name}: {e}"))?;
    let spec_path = input_path.with_extension("json");
    let spec_text = std::fs::read_to_string(&spec_path)
        .map_err(|e| format!("{name}: {}: {e}", spec_path.display()))?;
    let spec: Value = serde_json::from_str(&spec_text).map_err(|e| format!("{name}.json: {e}"))?;
    let spec_map = object(
        &spec,
        &format!("{name}.json"),
        &["description", "rewrite", "remote"],
    )?;

    let sd = sdp::parse(&input).map_err(|e| format!("{name}: parse: {e}"))?;

    let identity = sdp::rewrite(&sd, &Rewrite::default());
    if identity != input {
        return Err(format!(
            "{name}: the identity rewrite is not byte-identical\n{}",
            diff(&input, &identity)
        ));
    }

    if let Some(remote) = spec_map.get("remote") {
        let remote = remote.as_array().ok_or("remote: expected an array")?;
        if remote.len() != sd.media().len() {
            return Err(format!(
                "{name}: `remote` lists {} sections, the SDP has {}",
                remote.len(),
                sd.media().len()
            ));
        }
        for (i, want) in remote.iter().enumerate() {
            let got = sd.remote_media(i).ok_or("missing section")?;
            check_remote(want, &got, &format!("{name}: remote[{i}]"))?;
        }
    }

    let rw = rewrite_spec(spec_map.get("rewrite").unwrap_or(&Value::Null))
        .map_err(|e| format!("{name}.json: {e}"))?;
    let actual = sdp::rewrite(&sd, &rw);
    // Whatever we produce must parse again.
    sdp::parse(&actual).map_err(|e| {
        format!(
            "{name}: the rewritten SDP does not parse: {e}\n{}",
            String::from_utf8_lossy(&actual)
        )
    })?;

    let expected_path = golden_dir().join(format!("{name}.expected.sdp"));
    if bless {
        std::fs::write(&expected_path, &actual).map_err(|e| format!("{name}: {e}"))?;
        return Ok(());
    }
    let expected = std::fs::read(&expected_path).map_err(|e| {
        format!(
            "{name}: {}: {e} (SDP_GOLDEN_BLESS=1 writes it)",
            expected_path.display()
        )
    })?;
    if actual != expected {
        return Err(format!(
            "{name}: rewrite differs from {name}.expected.sdp\n{}",
            diff(&expected, &actual)
        ));
    }
    Ok(())
}

#[test]
fn golden_rewrites() {
    let bless = std::env::var_os("SDP_GOLDEN_BLESS").is_some();
    let inputs = inputs();
    assert!(inputs.len() >= 11, "golden inputs missing: {inputs:?}");
    let failures: Vec<String> = inputs
        .iter()
        .filter_map(|p| run_case(p, bless).err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} golden cases failed:\n\n{}",
        failures.len(),
        inputs.len(),
        failures.join("\n\n")
    );
}

/// The expected outputs are SDP too: they parse, and their identity rewrite is exact.
#[test]
fn golden_outputs_round_trip() {
    for p in inputs() {
        let name = p.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
        let path = golden_dir().join(format!("{name}.expected.sdp"));
        let Ok(text) = std::fs::read(&path) else {
            continue; // reported by golden_rewrites
        };
        let sd = sdp::parse(&text).unwrap_or_else(|e| panic!("{name}.expected.sdp: {e}"));
        assert_eq!(sdp::rewrite(&sd, &Rewrite::default()), text, "{name}");
    }
}

#[test]
fn diff_is_readable() {
    let d = diff(b"v=0\r\na=x\r\nm=1\r\n", b"v=0\r\na=y\nm=1");
    assert!(d.contains("- a=x⏎CRLF"), "{d}");
    assert!(d.contains("+ a=y⏎LF"), "{d}");
    assert!(d.contains("+ m=1∅ (no line ending)"), "{d}");
}
