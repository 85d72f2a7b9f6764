//! Fixtures shared by the unit tests of the engine, the charging layer and services: an
//! engine on the fake media and data planes, an audio stream, and an in-memory ledger with a
//! per-second tariff.

use std::net::SocketAddr;

use rtpedge_dataplane::FakeDataplane;

use crate::{
    billing::{AccountSpec, Ledger, MemoryLedger, Mode, Tariff, TariffSpec, fraud::FraudConfig},
    engine::{
        AnswerRequest, Direction, Engine, EngineConfig, FakeMedia, Flags, MediaDesc, OfferRequest,
        Timestamp,
    },
};

/// The edge's media address in the fake media plane.
pub(crate) const EDGE: &str = "203.0.113.1";

/// An engine with `cfg` on the fake media plane (address [`EDGE`]) and the fake data plane.
pub(crate) fn fake_engine(cfg: EngineConfig) -> Engine<FakeMedia, FakeDataplane> {
    Engine::new(
        cfg,
        FakeMedia::new(EDGE.parse().unwrap()),
        FakeDataplane::new(),
    )
}

/// Offers the call `id` (from tag `f`, billed to `account`, the caller's media `caller`) and
/// answers it (to tag `t`, the callee's media `callee`); returns the caller-facing and the
/// callee-facing legs of its first stream.
pub(crate) fn offer_answer(
    engine: &mut Engine<FakeMedia, FakeDataplane>,
    now: Timestamp,
    id: &str,
    account: Option<&str>,
    caller: MediaDesc,
    callee: MediaDesc,
) -> (SocketAddr, SocketAddr) {
    let callee_leg = engine
        .offer(
            now,
            OfferRequest {
                call_id: id.into(),
                from_tag: "f".into(),
                to_tag: None,
                media: vec![caller],
                flags: Flags {
                    account: account.map(str::to_string),
                    ..Flags::default()
                },
            },
        )
        .unwrap()[0]
        .rtp;
    let caller_leg = engine
        .answer(
            now,
            AnswerRequest {
                call_id: id.into(),
                from_tag: "f".into(),
                to_tag: "t".into(),
                media: vec![callee],
                flags: Flags::default(),
            },
        )
        .unwrap()[0]
        .rtp;
    (caller_leg, callee_leg)
}

/// A send-receive PCMU audio stream with RTP at `rtp` ("addr:port").
pub(crate) fn audio(rtp: &str) -> MediaDesc {
    MediaDesc {
        kind: "audio".into(),
        protocol: "RTP/AVP".into(),
        rtp: rtp.parse().unwrap(),
        rtcp: None,
        rtcp_mux: false,
        direction: Direction::SendRecv,
        codec: Some("PCMU/8000".into()),
    }
}

/// An in-memory ledger with the tariff `t1` (`per_minute`, nothing per kilobyte, 1 s
/// increments, no connection fee) and `accounts` as (name, balance, mode) on it.
pub(crate) fn ledger_t1(per_minute: i64, accounts: &[(&str, i64, Mode)]) -> MemoryLedger {
    let mut ledger = MemoryLedger::new();
    let t = Tariff::from_spec(
        "t1",
        &TariffSpec {
            per_minute,
            per_kilobyte: 0,
            increment_s: 1,
            initial_increment_s: None,
            connection_fee: 0,
        },
    )
    .unwrap();
    ledger.put_tariff(&t).unwrap();
    for &(name, balance, mode) in accounts {
        ledger
            .put_account(
                name,
                &AccountSpec {
                    balance,
                    tariff: "t1".into(),
                    mode,
                },
            )
            .unwrap();
    }
    ledger
}

/// Fraud rules without the call-rate limit (tests start calls faster than any caller would).
pub(crate) fn no_call_rate_limit() -> FraudConfig {
    FraudConfig {
        call_rate: None,
        ..FraudConfig::default()
    }
}
