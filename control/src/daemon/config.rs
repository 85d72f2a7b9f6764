//! The daemon's configuration: embedded defaults, overridden by a TOML file (`--config`),
//! overridden by environment variables and flags. Every value is validated here, with an error
//! that names the setting, so a bad configuration stops the daemon before it binds anything.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

/// Configuration as the file spells it; every field optional.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// ng control socket, `ADDR:PORT`.
    pub ng: Option<String>,
    /// HTTP API, `ADDR:PORT` (`off` disables it).
    pub http: Option<String>,
    /// Event channel (WebSocket, subprotocol rtpedge.v1), `ADDR:PORT` (`off` disables it).
    pub ws: Option<String>,
    /// Address legs bind and SDP advertises.
    pub media_address: Option<String>,
    /// Address written into SDP instead, when the host is behind 1:1 NAT.
    pub advertised_address: Option<String>,
    /// Media port range `LO-HI`.
    pub ports: Option<String>,
    /// Interface to attach the XDP data plane to.
    pub interface: Option<String>,
    /// Run without the XDP data plane.
    pub no_xdp: Option<bool>,
    /// Forward answered calls' RTP in the kernel (XDP fast path).
    pub fast_path: Option<bool>,
    /// XDP mode: auto, native, generic.
    pub xdp_mode: Option<String>,
    /// bpffs pin root.
    pub pin_root: Option<String>,
    /// CDR database: SQLite path or postgres:// URL.
    pub cdr_db: Option<String>,
    /// Bridge worker threads (0: one per core).
    pub workers: Option<usize>,
    /// Media port pairs kept bound ahead of calls, per media address (0: bind on demand).
    pub port_reserve: Option<usize>,
    /// New calls beyond this are refused with `load limit`.
    pub max_calls: Option<usize>,
    /// Timeouts in seconds.
    #[serde(default)]
    pub timeouts: FileTimeouts,
    /// DSCP per media type.
    #[serde(default)]
    pub dscp: FileDscp,
    /// Charging.
    #[serde(default)]
    pub billing: FileBilling,
    /// Fraud guard.
    #[serde(default)]
    pub fraud: FileFraud,
    /// Call-setup authorization.
    #[serde(default)]
    pub auth: FileAuth,
}

/// `[fraud]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileFraud {
    /// New calls per second allowed per source address and per account (unset: no limit).
    pub calls_per_second: Option<u32>,
    /// Burst of new calls above the rate.
    pub burst: Option<u32>,
    /// `flag` (record it in the CDR) or `block` (refuse the offer and block the client).
    pub action: Option<String>,
    /// More packets than this after BYE flag the call (`media-after-bye`).
    pub media_after_bye_packets: Option<u64>,
}

/// `[auth]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAuth {
    /// Ed25519 public keys (hex or base64) of the authorization service. When set, an offer
    /// creating a call must carry a valid token (ng `auth-token`).
    #[serde(default)]
    pub public_keys: Vec<String>,
    /// Ed25519 public keys that sign mid-call service tickets (`POST
    /// /v1/calls/{call_id}/services`). Unset: the `public_keys`; neither: services are refused.
    #[serde(default)]
    pub ticket_keys: Vec<String>,
}

/// `[billing]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileBilling {
    /// Account of calls whose offer names none (ng `account`); unset: such calls are free.
    pub default_account: Option<String>,
    /// Seconds of credit reserved per slice (default 30).
    pub slice_seconds: Option<u32>,
    /// When the billing backend is unreachable, keep calls up for this many seconds
    /// (fail open); 0 or unset: end them when their current slice ends (fail closed).
    pub fail_open_seconds: Option<u64>,
    /// `embedded` (the ledger in the CDR database, default) or `external` (a billing system
    /// connected to the event channel with role `billing` grants credit).
    pub backend: Option<String>,
    /// Kamailio `jsonrpcs` over HTTP (`http://HOST:PORT/PATH`): when a call is cut for lack of
    /// credit, ask Kamailio to end its SIP dialog (`dlg.terminate_dlg`).
    pub end_dialog_url: Option<String>,
    /// `from-user`: offers that name no account are billed to the SIP From user (ng
    /// `from-uri` / `from-user`), reduced by `account_pattern` and translated by
    /// `account_map`.
    pub account_from: Option<String>,
    /// A regular expression applied to the From user: its first capture group (or the whole
    /// match) is the account key; no match: the default account.
    pub account_pattern: Option<String>,
    /// From user (or pattern result) → account; when given, unlisted users get the default.
    #[serde(default)]
    pub account_map: std::collections::HashMap<String, String>,
}

/// `[timeouts]` (seconds).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTimeouts {
    /// Offered, never answered.
    pub offer: Option<u64>,
    /// No media in either direction.
    pub media: Option<u64>,
    /// No media while on hold.
    pub silent: Option<u64>,
    /// Maximum call duration (0: none). `final` in the file.
    #[serde(rename = "final")]
    pub final_: Option<u64>,
    /// Ended calls are kept this long.
    pub delete_delay: Option<u64>,
    /// NAT learning window.
    pub learn_window: Option<u64>,
    /// A released media port is reused only after this long.
    pub port_quarantine: Option<u64>,
}

/// `[dscp]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDscp {
    /// Audio (default 46, EF).
    pub audio: Option<u8>,
    /// Video (default 34, AF41).
    pub video: Option<u8>,
}

/// Validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// ng control socket.
    pub ng: SocketAddr,
    /// HTTP API socket (None: disabled).
    pub http: Option<SocketAddr>,
    /// Event channel socket (None: disabled).
    pub ws: Option<SocketAddr>,
    /// Credit decisions by an external billing system over the event channel.
    pub external_billing: bool,
    /// Media addresses (bound by legs): at most one IPv4 and one IPv6 (dual stack). A leg uses
    /// the one of its remote's family.
    pub media_addresses: Vec<IpAddr>,
    /// Addresses advertised in SDP instead, per family (hosts behind 1:1 NAT).
    pub advertised_addresses: Vec<IpAddr>,
    /// Media port range.
    pub ports: (u16, u16),
    /// XDP interface.
    pub interface: Option<String>,
    /// No XDP at all.
    pub no_xdp: bool,
    /// In-kernel forwarding of answered calls (with the XDP data plane only).
    pub fast_path: bool,
    /// XDP mode.
    pub xdp_mode: String,
    /// Pin root.
    pub pin_root: PathBuf,
    /// CDR database location.
    pub cdr_db: String,
    /// Bridge workers.
    pub workers: usize,
    /// Port pairs kept bound ahead of calls, per media address.
    pub port_reserve: usize,
    /// Call limit.
    pub max_calls: usize,
    /// Offer timeout.
    pub offer_timeout: Duration,
    /// Media timeout.
    pub media_timeout: Duration,
    /// Silent timeout.
    pub silent_timeout: Duration,
    /// Final timeout.
    pub final_timeout: Option<Duration>,
    /// Delete delay.
    pub delete_delay: Duration,
    /// Learning window.
    pub learn_window: Duration,
    /// Released media ports rest this long before reuse.
    pub port_quarantine: Duration,
    /// DSCP of audio.
    pub dscp_audio: Option<u8>,
    /// DSCP of video.
    pub dscp_video: Option<u8>,
    /// Default billing account.
    pub default_account: Option<String>,
    /// Credit slice length.
    pub slice_seconds: u32,
    /// Fail-open window when billing is unreachable (None: fail closed).
    pub fail_open: Option<Duration>,
    /// Fraud guard.
    pub fraud: crate::billing::fraud::FraudConfig,
    /// Token verification for call setup (None: not required).
    pub verifier: Option<crate::billing::auth::Verifier>,
    /// Ticket verification for mid-call services (None: services are refused).
    pub ticket_verifier: Option<crate::billing::auth::Verifier>,
    /// Where to ask the SIP proxy to end the dialog of a call cut for lack of credit.
    pub end_dialog: Option<crate::dialog_end::Endpoint>,
    /// Account of offers that name none, from the SIP From user.
    pub account_mapping: Option<crate::billing::mapping::AccountMapping>,
}

/// A configuration error, naming the setting.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {setting}: {reason}")]
pub struct ConfigError {
    /// Which setting.
    pub setting: String,
    /// What is wrong.
    pub reason: String,
}

fn bad(setting: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        setting: setting.into(),
        reason: reason.into(),
    }
}

/// `IP[,IP]`: at most one address per family.
fn address_list(setting: &str, s: &str) -> Result<Vec<IpAddr>, ConfigError> {
    let mut out: Vec<IpAddr> = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let ip: IpAddr = part
            .parse()
            .map_err(|_| bad(setting, format!("{part:?} is not an IP address")))?;
        if out.iter().any(|o| o.is_ipv4() == ip.is_ipv4()) {
            return Err(bad(setting, "at most one IPv4 and one IPv6 address"));
        }
        out.push(ip);
    }
    if out.is_empty() {
        return Err(bad(setting, "no address given"));
    }
    Ok(out)
}

/// Reads a TOML file.
pub fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| bad(&path.display().to_string(), e.to_string()))?;
    toml::from_str(&text).map_err(|e| bad(&path.display().to_string(), e.to_string()))
}

/// Merges the layers (later wins) and validates.
pub fn resolve(file: FileConfig, over: FileConfig) -> Result<Config, ConfigError> {
    let pick = |a: Option<String>, b: Option<String>| b.or(a);
    let ng = pick(file.ng, over.ng).unwrap_or_else(|| "127.0.0.1:2223".into());
    let ng: SocketAddr = ng
        .parse()
        .map_err(|_| bad("ng", format!("{ng:?} is not ADDR:PORT")))?;
    let http = match pick(file.http, over.http).as_deref() {
        None => Some(SocketAddr::from(([127, 0, 0, 1], 8080))),
        Some("off") => None,
        Some(h) => Some(
            h.parse()
                .map_err(|_| bad("http", format!("{h:?} is not ADDR:PORT or off")))?,
        ),
    };
    let ws = match pick(file.ws, over.ws).as_deref() {
        None => Some(SocketAddr::from(([127, 0, 0, 1], 8081))),
        Some("off") => None,
        Some(w) => Some(
            w.parse()
                .map_err(|_| bad("ws", format!("{w:?} is not ADDR:PORT or off")))?,
        ),
    };
    let external_billing = match over
        .billing
        .backend
        .as_deref()
        .or(file.billing.backend.as_deref())
    {
        None | Some("embedded") => false,
        Some("external") => true,
        Some(other) => {
            return Err(bad(
                "billing.backend",
                format!("{other:?}: expected embedded or external"),
            ));
        }
    };
    if external_billing && ws.is_none() {
        return Err(bad(
            "billing.backend",
            "external billing needs the event channel (ws)",
        ));
    }
    let media = pick(file.media_address, over.media_address).unwrap_or_else(|| "127.0.0.1".into());
    let media_addresses = address_list("media-address", &media)?;
    if media_addresses.iter().any(IpAddr::is_unspecified) {
        return Err(bad(
            "media-address",
            "must be concrete addresses (they are written into SDP)",
        ));
    }
    let advertised_addresses = match pick(file.advertised_address, over.advertised_address) {
        Some(a) => address_list("advertised-address", &a)?,
        None => Vec::new(),
    };
    for a in &advertised_addresses {
        if !media_addresses.iter().any(|m| m.is_ipv4() == a.is_ipv4()) {
            return Err(bad(
                "advertised-address",
                format!("{a}: no media address of its family"),
            ));
        }
    }
    let ports_s = pick(file.ports, over.ports).unwrap_or_else(|| "30000-40000".into());
    let ports =
        rtpedge_dataplane::parse_port_range(&ports_s).map_err(|e| bad("ports", e.to_string()))?;
    if ports.1 - ports.0 < 3 {
        return Err(bad(
            "ports",
            "the range must hold at least two RTP/RTCP pairs",
        ));
    }
    let xdp_mode = pick(file.xdp_mode, over.xdp_mode).unwrap_or_else(|| "auto".into());
    xdp_mode
        .parse::<rtpedge_dataplane::AttachMode>()
        .map_err(|e| bad("xdp-mode", e.to_string()))?;
    let t = |f: Option<u64>, o: Option<u64>, d: u64| Duration::from_secs(o.or(f).unwrap_or(d));
    let (ft, ot) = (file.timeouts, over.timeouts);
    let dscp =
        |name: &str, f: Option<u8>, o: Option<u8>, d: u8| -> Result<Option<u8>, ConfigError> {
            let v = o.or(f).unwrap_or(d);
            if v > 63 {
                return Err(bad(name, format!("{v} is not a DSCP (0-63)")));
            }
            Ok(Some(v))
        };
    let final_s = ot.final_.or(ft.final_).unwrap_or(0);
    Ok(Config {
        ng,
        http,
        ws,
        external_billing,
        media_addresses,
        advertised_addresses,
        ports,
        interface: pick(file.interface, over.interface),
        no_xdp: over.no_xdp.or(file.no_xdp).unwrap_or(false),
        fast_path: over.fast_path.or(file.fast_path).unwrap_or(false),
        xdp_mode,
        pin_root: pick(file.pin_root, over.pin_root)
            .unwrap_or_else(|| rtpedge_dataplane::DEFAULT_PIN_ROOT.into())
            .into(),
        cdr_db: pick(file.cdr_db, over.cdr_db).unwrap_or_else(|| "rtpedge-data/cdr.sqlite".into()),
        workers: over.workers.or(file.workers).unwrap_or(0),
        port_reserve: over.port_reserve.or(file.port_reserve).unwrap_or(256),
        max_calls: over.max_calls.or(file.max_calls).unwrap_or(100_000),
        offer_timeout: t(ft.offer, ot.offer, 120),
        media_timeout: t(ft.media, ot.media, 60),
        silent_timeout: t(ft.silent, ot.silent, 3600),
        final_timeout: (final_s > 0).then(|| Duration::from_secs(final_s)),
        delete_delay: t(ft.delete_delay, ot.delete_delay, 30),
        learn_window: t(ft.learn_window, ot.learn_window, 3),
        port_quarantine: t(ft.port_quarantine, ot.port_quarantine, 10),
        dscp_audio: dscp("dscp.audio", file.dscp.audio, over.dscp.audio, 46)?,
        dscp_video: dscp("dscp.video", file.dscp.video, over.dscp.video, 34)?,
        default_account: over
            .billing
            .default_account
            .or(file.billing.default_account),
        slice_seconds: match over
            .billing
            .slice_seconds
            .or(file.billing.slice_seconds)
            .unwrap_or(30)
        {
            0 => return Err(bad("billing.slice_seconds", "must be at least 1")),
            s => s,
        },
        fail_open: over
            .billing
            .fail_open_seconds
            .or(file.billing.fail_open_seconds)
            .filter(|s| *s > 0)
            .map(Duration::from_secs),
        fraud: fraud_config(&file.fraud)?,
        verifier: if file.auth.public_keys.is_empty() {
            None
        } else {
            Some(
                crate::billing::auth::Verifier::from_key_texts(&file.auth.public_keys)
                    .map_err(|e| bad("auth.public_keys", e.to_string()))?,
            )
        },
        account_mapping: match over.billing.account_from.or(file.billing.account_from) {
            None if file.billing.account_pattern.is_some()
                || !file.billing.account_map.is_empty() =>
            {
                return Err(bad(
                    "billing.account_from",
                    "account_pattern / account_map need account_from = \"from-user\"",
                ));
            }
            None => None,
            Some(src) => Some(
                crate::billing::mapping::AccountMapping::new(
                    &src,
                    over.billing
                        .account_pattern
                        .as_deref()
                        .or(file.billing.account_pattern.as_deref()),
                    file.billing.account_map.clone(),
                )
                .map_err(|e| bad("billing.account_from", e.to_string()))?,
            ),
        },
        end_dialog: over
            .billing
            .end_dialog_url
            .or(file.billing.end_dialog_url)
            .map(|u| {
                crate::dialog_end::Endpoint::parse(&u)
                    .map_err(|e| bad("billing.end_dialog_url", e.to_string()))
            })
            .transpose()?,
        ticket_verifier: match (&file.auth.ticket_keys, &file.auth.public_keys) {
            (t, _) if !t.is_empty() => Some(
                crate::billing::auth::Verifier::from_key_texts(t)
                    .map_err(|e| bad("auth.ticket_keys", e.to_string()))?,
            ),
            (_, p) if !p.is_empty() => Some(
                crate::billing::auth::Verifier::from_key_texts(p)
                    .map_err(|e| bad("auth.public_keys", e.to_string()))?,
            ),
            _ => None,
        },
    })
}

fn fraud_config(f: &FileFraud) -> Result<crate::billing::fraud::FraudConfig, ConfigError> {
    use crate::billing::fraud::{CallRateLimit, FraudAction, FraudConfig};
    let action = match f.action.as_deref() {
        None | Some("flag") => FraudAction::Flag,
        Some("block") => FraudAction::Block,
        Some(other) => {
            return Err(bad(
                "fraud.action",
                format!("{other:?}: expected flag or block"),
            ));
        }
    };
    let defaults = FraudConfig::default();
    Ok(FraudConfig {
        call_rate: match f.calls_per_second {
            None => None,
            Some(0) => return Err(bad("fraud.calls_per_second", "must be at least 1")),
            Some(calls) => Some(CallRateLimit {
                calls,
                per: Duration::from_secs(1),
                burst: f.burst.unwrap_or(calls.saturating_mul(2)),
            }),
        },
        on_call_rate: action,
        media_after_bye_packets: f
            .media_after_bye_packets
            .unwrap_or(defaults.media_after_bye_packets),
        ..defaults
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_defaults_run_on_loopback() {
        let c = resolve(FileConfig::default(), FileConfig::default()).unwrap();
        assert_eq!(c.ng, "127.0.0.1:2223".parse().unwrap());
        assert_eq!(
            c.media_addresses,
            vec!["127.0.0.1".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(c.ports, (30000, 40000));
        assert_eq!(c.cdr_db, "rtpedge-data/cdr.sqlite");
        assert_eq!(c.dscp_audio, Some(46));
        assert_eq!(c.final_timeout, None);
        assert_eq!(c.port_quarantine, Duration::from_secs(10));
    }

    #[test]
    fn port_quarantine_from_file_and_flag() {
        let file: FileConfig = toml::from_str("[timeouts]\nport_quarantine = 2\n").unwrap();
        let c = resolve(file.clone(), FileConfig::default()).unwrap();
        assert_eq!(c.port_quarantine, Duration::from_secs(2));
        let over = FileConfig {
            timeouts: FileTimeouts {
                port_quarantine: Some(0),
                ..FileTimeouts::default()
            },
            ..FileConfig::default()
        };
        assert_eq!(resolve(file, over).unwrap().port_quarantine, Duration::ZERO);
    }

    #[test]
    fn port_reserve_defaults_and_overrides() {
        let c = resolve(FileConfig::default(), FileConfig::default()).unwrap();
        assert_eq!(c.port_reserve, 256);
        let file: FileConfig = toml::from_str("port_reserve = 1000\n").unwrap();
        assert_eq!(
            resolve(file.clone(), FileConfig::default())
                .unwrap()
                .port_reserve,
            1000
        );
        let over = FileConfig {
            port_reserve: Some(0),
            ..FileConfig::default()
        };
        assert_eq!(resolve(file, over).unwrap().port_reserve, 0);
    }

    #[test]
    fn flags_override_the_file() {
        let file: FileConfig = toml::from_str(
            "ng = \"127.0.0.1:3000\"\nports = \"20000-20999\"\n[timeouts]\nmedia = 10\nfinal = 7200\n[dscp]\naudio = 40\n",
        )
        .unwrap();
        let over = FileConfig {
            ports: Some("31000-31999".into()),
            ..FileConfig::default()
        };
        let c = resolve(file, over).unwrap();
        assert_eq!(c.ng.port(), 3000);
        assert_eq!(c.ports, (31000, 31999));
        assert_eq!(c.media_timeout, Duration::from_secs(10));
        assert_eq!(c.dscp_audio, Some(40));
        assert_eq!(c.final_timeout, Some(Duration::from_secs(7200)));
    }

    #[test]
    fn dual_stack_media_addresses() {
        let over = FileConfig {
            media_address: Some("192.0.2.10, 2001:db8::10".into()),
            advertised_address: Some("203.0.113.10".into()),
            ..FileConfig::default()
        };
        let c = resolve(FileConfig::default(), over).unwrap();
        assert_eq!(c.media_addresses.len(), 2);
        assert_eq!(
            c.advertised_addresses,
            vec!["203.0.113.10".parse::<IpAddr>().unwrap()]
        );
        for bad_list in ["192.0.2.1,192.0.2.2", "", "2001:db8::1,x"] {
            let over = FileConfig {
                media_address: Some(bad_list.into()),
                ..FileConfig::default()
            };
            assert_eq!(
                resolve(FileConfig::default(), over).unwrap_err().setting,
                "media-address"
            );
        }
        let over = FileConfig {
            media_address: Some("192.0.2.10".into()),
            advertised_address: Some("2001:db8::1".into()),
            ..FileConfig::default()
        };
        assert_eq!(
            resolve(FileConfig::default(), over).unwrap_err().setting,
            "advertised-address"
        );
    }

    #[test]
    fn bad_values_name_their_setting() {
        let cases: [(FileConfig, &str); 5] = [
            (
                FileConfig {
                    ng: Some("nope".into()),
                    ..Default::default()
                },
                "ng",
            ),
            (
                FileConfig {
                    media_address: Some("0.0.0.0".into()),
                    ..Default::default()
                },
                "media-address",
            ),
            (
                FileConfig {
                    ports: Some("40000-30000".into()),
                    ..Default::default()
                },
                "ports",
            ),
            (
                FileConfig {
                    xdp_mode: Some("turbo".into()),
                    ..Default::default()
                },
                "xdp-mode",
            ),
            (
                FileConfig {
                    dscp: FileDscp {
                        audio: Some(64),
                        video: None,
                    },
                    ..Default::default()
                },
                "dscp.audio",
            ),
        ];
        for (over, setting) in cases {
            let e = resolve(FileConfig::default(), over).unwrap_err();
            assert_eq!(e.setting, setting, "{e}");
        }
        assert!(
            toml::from_str::<FileConfig>("bogus = 1").is_err(),
            "unknown keys are refused"
        );
    }

    #[test]
    fn billing_mapping_and_dialog_end_from_the_file() {
        let file: FileConfig = toml::from_str(
            "[billing]\naccount_from = \"from-user\"\naccount_pattern = \"^(\\\\w+)\"\n\
             end_dialog_url = \"http://127.0.0.1:5071/RPC\"\n\
             [billing.account_map]\nalice = \"acme\"\n",
        )
        .unwrap();
        let c = resolve(file, FileConfig::default()).unwrap();
        let m = c.account_mapping.expect("mapping");
        assert_eq!(
            m.account_for(Some("sip:alice@x"), None),
            Some("acme".into())
        );
        assert_eq!(m.account_for(Some("sip:bob@x"), None), None);
        assert_eq!(c.end_dialog.unwrap().path, "/RPC");
        for (text, setting) in [
            (
                "[billing]\naccount_from = \"to-user\"\n",
                "billing.account_from",
            ),
            (
                "[billing]\naccount_pattern = \"x\"\n",
                "billing.account_from",
            ),
            (
                "[billing]\nend_dialog_url = \"https://k/RPC\"\n",
                "billing.end_dialog_url",
            ),
        ] {
            let file: FileConfig = toml::from_str(text).unwrap();
            let e = resolve(file, FileConfig::default()).unwrap_err();
            assert_eq!(e.setting, setting, "{text}");
        }
    }
}
