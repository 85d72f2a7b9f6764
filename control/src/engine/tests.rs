//! Engine tests in virtual time, against the in-memory media plane and data plane. Packets are
//! "delivered" through the fake data plane, which decides them with the kernel program's logic,
//! so these tests check what media would pass, not just what state the engine keeps.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use rtpedge_dataplane::{Counter, Dataplane, FakeDataplane, PinholeState, Verdict};

use super::*;
use crate::test_support::{EDGE, audio, fake_engine};

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

const CALLER: &str = "192.0.2.10:4000";
const CALLEE: &str = "198.51.100.20:5000";

struct T {
    e: Engine<FakeMedia, FakeDataplane>,
    now: Timestamp,
}

impl T {
    fn new() -> Self {
        Self::with(EngineConfig::default())
    }

    fn with(cfg: EngineConfig) -> Self {
        let start = Timestamp {
            mono: Instant::now(),
            unix_ms: 1_800_000_000_000,
        };
        T {
            e: fake_engine(cfg),
            now: start,
        }
    }

    fn advance(&mut self, d: Duration) {
        self.now = self.now.plus(d);
        self.e.dataplane_mut().advance(d);
    }

    fn offer(
        &mut self,
        call: &str,
        from: &str,
        media: Vec<MediaDesc>,
        flags: Flags,
    ) -> Vec<Advertised> {
        self.e
            .offer(
                self.now,
                OfferRequest {
                    call_id: call.into(),
                    from_tag: from.into(),
                    to_tag: None,
                    media,
                    flags,
                },
            )
            .expect("offer")
    }

    fn answer(
        &mut self,
        call: &str,
        from: &str,
        to: &str,
        media: Vec<MediaDesc>,
    ) -> Vec<Advertised> {
        self.e
            .answer(
                self.now,
                AnswerRequest {
                    call_id: call.into(),
                    from_tag: from.into(),
                    to_tag: to.into(),
                    media,
                    flags: Flags::default(),
                },
            )
            .expect("answer")
    }

    /// A basic call: caller offers audio, callee answers. Returns (leg facing caller, leg facing
    /// callee) RTP addresses.
    fn call(&mut self, id: &str) -> (SocketAddr, SocketAddr) {
        let o = self.offer(id, "ftag", vec![audio(CALLER)], Flags::default());
        let a = self.answer(id, "ftag", "ttag", vec![audio(CALLEE)]);
        (a[0].rtp, o[0].rtp)
    }

    fn deliver(&mut self, from: &str, to: SocketAddr) -> Verdict {
        self.e.dataplane_mut().deliver(sa(from), to, 214)
    }

    fn events(&mut self) -> Vec<EngineEvent> {
        std::iter::from_fn(|| self.e.poll_event()).collect()
    }
}

#[test]
fn offer_provisions_and_advertises_the_leg_facing_the_answerer() {
    let mut t = T::new();
    let o = t.offer("c1", "ftag", vec![audio(CALLER)], Flags::default());
    assert_eq!(o.len(), 1);
    assert_eq!(o[0].rtp.ip().to_string(), EDGE);
    assert_eq!(
        o[0].rtcp,
        Some(SocketAddr::new(o[0].rtp.ip(), o[0].rtp.port() + 1))
    );
    assert_eq!(
        t.e.media().legs.len(),
        2,
        "both legs provisioned at the offer"
    );
    // The leg facing the caller knows the caller; its pinhole exists but is closed.
    let caller_leg =
        t.e.media()
            .legs
            .values()
            .find(|l| l.info.rtp != o[0].rtp)
            .unwrap()
            .clone();
    assert_eq!(caller_leg.remote.unwrap().rtp, Some(sa(CALLER)));
    let ph =
        t.e.dataplane()
            .pinhole(caller_leg.info.rtp)
            .unwrap()
            .unwrap();
    assert_eq!(ph.state, PinholeState::Closed);
    assert_eq!(
        t.deliver(CALLER, caller_leg.info.rtp),
        Verdict::Drop(Counter::Closed)
    );
    // Nothing is spliced before the answer.
    assert!(t.e.media().splices.is_empty());
}

#[test]
fn answer_splices_opens_pinholes_with_dscp_and_opens_a_cdr() {
    let mut t = T::new();
    let (a_leg, b_leg) = t.call("c1");
    assert_ne!(a_leg, b_leg);
    assert_eq!(t.e.media().splices.len(), 1);
    assert_eq!(t.deliver(CALLER, a_leg), Verdict::Pass(Dscp::new(46).ok()));
    assert_eq!(t.deliver(CALLEE, b_leg), Verdict::Pass(Dscp::new(46).ok()));
    for l in t.e.media().legs.values() {
        assert_eq!(l.dscp, Some(46), "outgoing media marked EF");
    }
    let ev = t.events();
    assert_eq!(ev.len(), 1);
    let EngineEvent::CdrOpened(cdr) = &ev[0] else {
        panic!("{ev:?}")
    };
    assert_eq!(cdr.call_id, "c1");
    assert_eq!(cdr.to_tag.as_deref(), Some("ttag"));
    assert_eq!(cdr.end_at, None);
}

#[test]
fn media_from_a_third_address_never_passes_with_default_flags() {
    let mut t = T::new();
    let (a_leg, _) = t.call("c1");
    // NAT'ed caller (default flags): learning; the first source is latched.
    assert!(matches!(t.deliver(CALLER, a_leg), Verdict::Pass(_)));
    for attacker in ["192.0.2.10:4002", "192.0.2.66:4000", "198.51.100.20:5000"] {
        assert_eq!(
            t.deliver(attacker, a_leg),
            Verdict::Drop(Counter::WrongSource),
            "{attacker}"
        );
    }
    // The bridge got the same strict policy.
    let leg = t.e.media().leg_at(a_leg).unwrap();
    assert_eq!(leg.remote.unwrap().handover, None);
}

#[test]
fn trusted_addresses_get_exact_pinholes() {
    let mut t = T::new();
    let flags = Flags {
        received_from: Some("192.0.2.10".parse().unwrap()),
        ..Flags::default()
    };
    t.offer("c1", "ftag", vec![audio(CALLER)], flags);
    let a = t.answer("c1", "ftag", "ttag", vec![audio(CALLEE)]);
    let ph = t.e.dataplane().pinhole(a[0].rtp).unwrap().unwrap();
    assert_eq!(
        ph.policy,
        rtpedge_dataplane::RemotePolicy::Exact(sa(CALLER))
    );
    assert_eq!(
        t.deliver("192.0.2.10:4999", a[0].rtp),
        Verdict::Drop(Counter::WrongSource)
    );
    let rtcp =
        t.e.dataplane()
            .pinhole(a[0].rtcp.unwrap())
            .unwrap()
            .unwrap();
    assert_eq!(
        rtcp.policy,
        rtpedge_dataplane::RemotePolicy::Exact(sa("192.0.2.10:4001"))
    );
}

#[test]
fn delete_stops_media_at_once_writes_one_cdr_and_releases_later() {
    let mut t = T::new();
    let (a_leg, b_leg) = t.call("c1");
    t.events();
    if let Some(l) =
        t.e.media_mut()
            .legs
            .values_mut()
            .find(|l| l.info.rtp == a_leg)
    {
        l.counters.packets_in = 500;
        l.counters.bytes_in = 86_000;
    }
    // Genuine media latches the learning pinhole; an injector is then dropped (counted in
    // the CDR).
    assert!(matches!(t.deliver(CALLER, a_leg), Verdict::Pass(_)));
    assert_eq!(
        t.deliver("192.0.2.66:1", a_leg),
        Verdict::Drop(Counter::WrongSource)
    );
    t.advance(Duration::from_secs(90));
    let report = t.e.delete(t.now, "c1").unwrap();
    assert_eq!(report.state, "ended");
    assert_eq!(report.media[0].from_a.packets, 500);
    // No packet passes once delete returned: the unsplice is in effect in the media plane
    // (flushed), and the pinholes are closed.
    assert_eq!(t.e.media().unflushed, 0);
    assert_eq!(t.deliver(CALLER, a_leg), Verdict::Drop(Counter::Closed));
    assert_eq!(t.deliver(CALLEE, b_leg), Verdict::Drop(Counter::Closed));
    assert!(t.e.media().splices.is_empty());
    let ev = t.events();
    assert_eq!(ev.len(), 1);
    let EngineEvent::CdrClosed(cdr) = &ev[0] else {
        panic!("{ev:?}")
    };
    assert_eq!(cdr.end_reason, Some(EndReason::Delete));
    assert_eq!(cdr.duration_ms, 90_000);
    assert_eq!((cdr.packets_ab, cdr.bytes_ab), (500, 86_000));
    assert_eq!(cdr.dropped_xdp, 1);
    assert_eq!(cdr.dscp, Some(46));
    // A retransmitted delete is answered the same, without a second CDR.
    assert_eq!(t.e.delete(t.now, "c1").unwrap(), report);
    assert!(t.events().is_empty());
    // Released after the delete delay: legs gone, pinholes gone.
    assert_eq!(
        t.e.poll_timeout(),
        Some(t.now.mono + Duration::from_secs(30))
    );
    t.advance(Duration::from_secs(30));
    t.e.handle_timeout(t.now);
    assert!(t.e.media().legs.is_empty());
    assert_eq!(t.e.media().released.len(), 2);
    assert_eq!(t.deliver(CALLER, a_leg), Verdict::Drop(Counter::NoPinhole));
    assert!(matches!(t.e.query("c1"), Err(EngineError::UnknownCall)));
}

#[test]
fn reinvite_updates_remotes_without_dropping_the_call() {
    let mut t = T::new();
    let (a_leg, _) = t.call("c1");
    let splices = t.e.media().splices.clone();
    // The caller moves (re-INVITE with a new address): same legs, same splice, pinhole open.
    let o = t.offer(
        "c1",
        "ftag",
        vec![audio("192.0.2.11:4100")],
        Flags::default(),
    );
    assert_eq!(t.e.media().legs.len(), 2, "no new legs");
    assert_eq!(t.e.media().splices, splices, "still spliced");
    let leg = t.e.media().leg_at(a_leg).unwrap();
    assert_eq!(leg.remote.unwrap().rtp, Some(sa("192.0.2.11:4100")));
    assert!(matches!(
        t.deliver("192.0.2.11:4100", a_leg),
        Verdict::Pass(_)
    ));
    // The re-offer's answer comes from the callee again.
    let a = t.answer("c1", "ftag", "ttag", vec![audio(CALLEE)]);
    assert_eq!(a[0].rtp, a_leg);
    assert_ne!(o[0].rtp, a_leg);
}

#[test]
fn reinvite_from_the_callee_swaps_roles_by_tag() {
    let mut t = T::new();
    let (a_leg, b_leg) = t.call("c1");
    // Callee's re-INVITE: from-tag is the callee's; the offer advertises the caller-facing leg.
    let o = t.offer(
        "c1",
        "ttag",
        vec![audio("198.51.100.21:5100")],
        Flags::default(),
    );
    assert_eq!(o[0].rtp, a_leg);
    assert_eq!(
        t.e.media().leg_at(b_leg).unwrap().remote.unwrap().rtp,
        Some(sa("198.51.100.21:5100"))
    );
    let a = t.answer("c1", "ttag", "ftag", vec![audio(CALLER)]);
    assert_eq!(a[0].rtp, b_leg);
    assert!(
        t.e.offer(
            t.now,
            OfferRequest {
                call_id: "c1".into(),
                from_tag: "stranger".into(),
                to_tag: None,
                media: vec![audio(CALLER)],
                flags: Flags::default(),
            }
        )
        .is_err()
    );
}

#[test]
fn media_sections_added_and_removed_by_reinvite() {
    let mut t = T::new();
    t.call("c1");
    let mut video = audio("192.0.2.10:6000");
    video.kind = "video".into();
    let o = t.offer("c1", "ftag", vec![audio(CALLER), video], Flags::default());
    assert_eq!(o.len(), 2);
    assert_eq!(t.e.media().legs.len(), 4);
    let mut vans = audio("198.51.100.20:7000");
    vans.kind = "video".into();
    let a = t.answer("c1", "ftag", "ttag", vec![audio(CALLEE), vans]);
    assert_eq!(t.e.media().splices.len(), 2);
    assert!(
        matches!(t.deliver("192.0.2.10:6000", a[1].rtp), Verdict::Pass(Some(d)) if d.value() == 34)
    );
    // Video removed again (port 0 in the next offer).
    let mut off = audio("192.0.2.10:0");
    off.kind = "video".into();
    let o = t.offer("c1", "ftag", vec![audio(CALLER), off], Flags::default());
    assert_eq!(o[1].rtp.port(), 0);
    assert_eq!(t.e.media().splices.len(), 1);
    assert_eq!(
        t.deliver("192.0.2.10:6000", a[1].rtp),
        Verdict::Drop(Counter::Closed)
    );
}

#[test]
fn every_timer_ends_the_call_once_with_its_reason() {
    // Offer timeout.
    let mut t = T::new();
    t.offer("c1", "ftag", vec![audio(CALLER)], Flags::default());
    t.advance(Duration::from_secs(119));
    t.e.handle_timeout(t.now);
    assert!(t.events().is_empty());
    t.advance(Duration::from_secs(1));
    t.e.handle_timeout(t.now);
    let ev = t.events();
    assert!(
        matches!(&ev[..], [EngineEvent::CdrClosed(c)] if c.end_reason == Some(EndReason::OfferTimeout) && c.answer_at.is_none())
    );

    // Final timeout.
    let mut t = T::with(EngineConfig {
        final_timeout: Some(Duration::from_secs(3600)),
        ..EngineConfig::default()
    });
    t.call("c2");
    t.events();
    t.advance(Duration::from_secs(3600));
    t.e.handle_timeout(t.now);
    let ev = t.events();
    assert!(
        matches!(&ev[..], [EngineEvent::CdrClosed(c)] if c.end_reason == Some(EndReason::FinalTimeout) && c.duration_ms == 3_600_000)
    );
}

#[test]
fn media_timeout_needs_every_leg_silent() {
    let mut t = T::new();
    let (a_leg, b_leg) = t.call("c1");
    t.events();
    let ids: Vec<LegId> = t.e.media().legs.keys().copied().collect();
    // One leg still receives: no end.
    for l in t.e.media_mut().legs.values_mut() {
        l.idle = Some(if l.info.rtp == a_leg {
            Duration::from_secs(61)
        } else {
            Duration::from_secs(2)
        });
    }
    t.e.handle_media_event(
        t.now,
        BridgeEvent::MediaTimeout {
            leg: ids[0],
            idle: None,
        },
    );
    assert!(t.events().is_empty());
    for l in t.e.media_mut().legs.values_mut() {
        l.idle = Some(Duration::from_secs(61));
    }
    t.e.handle_media_event(
        t.now,
        BridgeEvent::MediaTimeout {
            leg: ids[1],
            idle: None,
        },
    );
    let ev = t.events();
    assert!(
        matches!(&ev[..], [EngineEvent::CdrClosed(c)] if c.end_reason == Some(EndReason::MediaTimeout))
    );
    assert_eq!(t.deliver(CALLEE, b_leg), Verdict::Drop(Counter::Closed));
}

#[test]
fn hold_uses_the_silent_timeout() {
    let mut t = T::new();
    let (a_leg, _) = t.call("c1");
    let mut hold = audio(CALLER);
    hold.direction = Direction::SendOnly;
    t.offer("c1", "ftag", vec![hold], Flags::default());
    assert_eq!(
        t.e.media().leg_at(a_leg).unwrap().media_timeout,
        Some(Duration::from_secs(3600))
    );
    let ids: Vec<LegId> = t.e.media().legs.keys().copied().collect();
    for l in t.e.media_mut().legs.values_mut() {
        l.idle = Some(Duration::from_secs(61));
    }
    t.events();
    t.e.handle_media_event(
        t.now,
        BridgeEvent::MediaTimeout {
            leg: ids[0],
            idle: None,
        },
    );
    assert!(t.events().is_empty(), "61 s of silence is fine on hold");
    for l in t.e.media_mut().legs.values_mut() {
        l.idle = Some(Duration::from_secs(3601));
    }
    t.e.handle_media_event(
        t.now,
        BridgeEvent::MediaTimeout {
            leg: ids[0],
            idle: None,
        },
    );
    assert!(
        matches!(&t.events()[..], [EngineEvent::CdrClosed(c)] if c.end_reason == Some(EndReason::SilentTimeout))
    );
}

#[test]
fn refused_requests_leave_nothing_behind() {
    let mut t = T::new();
    t.e.media_mut().fail_provision = true;
    let r = t.e.offer(
        t.now,
        OfferRequest {
            call_id: "c1".into(),
            from_tag: "ftag".into(),
            to_tag: None,
            media: vec![audio(CALLER)],
            flags: Flags::default(),
        },
    );
    assert!(matches!(r, Err(EngineError::Media(_))));
    assert!(t.e.call_ids().is_empty());
    assert!(t.e.media().legs.is_empty());
    assert!(t.e.dataplane().pinholes().unwrap().is_empty());
    // Answer for an unknown call, delete of an unknown call, answer with a foreign tag.
    assert!(matches!(
        t.e.answer(
            t.now,
            AnswerRequest {
                call_id: "nope".into(),
                from_tag: "f".into(),
                to_tag: "t".into(),
                media: vec![],
                flags: Flags::default(),
            }
        ),
        Err(EngineError::UnknownCall)
    ));
    assert!(matches!(
        t.e.delete(t.now, "nope"),
        Err(EngineError::UnknownCall)
    ));
    t.offer("c2", "ftag", vec![audio(CALLER)], Flags::default());
    assert!(matches!(
        t.e.answer(
            t.now,
            AnswerRequest {
                call_id: "c2".into(),
                from_tag: "other".into(),
                to_tag: "t".into(),
                media: vec![audio(CALLEE)],
                flags: Flags::default(),
            }
        ),
        Err(EngineError::UnknownTag(_))
    ));
    assert!(matches!(
        t.e.answer(
            t.now,
            AnswerRequest {
                call_id: "c2".into(),
                from_tag: "ftag".into(),
                to_tag: "t".into(),
                media: vec![audio(CALLEE), audio(CALLEE)],
                flags: Flags::default(),
            }
        ),
        Err(EngineError::Invalid(_))
    ));
}

#[test]
fn load_limit_refuses_new_calls_only() {
    let mut t = T::with(EngineConfig {
        max_calls: 1,
        ..EngineConfig::default()
    });
    t.call("c1");
    let r = t.e.offer(
        t.now,
        OfferRequest {
            call_id: "c2".into(),
            from_tag: "f".into(),
            to_tag: None,
            media: vec![audio(CALLER)],
            flags: Flags::default(),
        },
    );
    assert!(matches!(r, Err(EngineError::LoadLimit)));
    // Re-offers of existing calls still work.
    t.offer("c1", "ftag", vec![audio(CALLER)], Flags::default());
}

#[test]
fn tos_overrides_the_default_class_and_handover_opens_any_source() {
    let mut t = T::new();
    let flags = Flags {
        tos: Some(34 << 2),
        media_handover: true,
        ..Flags::default()
    };
    t.offer("c1", "ftag", vec![audio(CALLER)], flags);
    let a = t.answer("c1", "ftag", "ttag", vec![audio(CALLEE)]);
    assert!(
        matches!(t.deliver("192.0.2.99:7", a[0].rtp), Verdict::Pass(Some(d)) if d.value() == 34)
    );
    let leg = t.e.media().leg_at(a[0].rtp).unwrap();
    assert_eq!(leg.remote.unwrap().handover, Some(policy::HANDOVER_PACKETS));
}

#[test]
fn shutdown_ends_every_call_with_a_cdr() {
    let mut t = T::new();
    t.call("c1");
    t.offer("c2", "f2", vec![audio(CALLER)], Flags::default());
    t.events();
    t.e.shutdown(t.now);
    let ev = t.events();
    let closed = ev
        .iter()
        .filter(|e| matches!(e, EngineEvent::CdrClosed(_)))
        .count();
    let released = ev
        .iter()
        .filter(|e| matches!(e, EngineEvent::Released { .. }))
        .count();
    assert_eq!((closed, released), (2, 2));
    assert!(ev.iter().all(|e| match e {
        EngineEvent::CdrClosed(c) => c.end_reason == Some(EndReason::Shutdown),
        _ => true,
    }));
    assert!(t.e.media().legs.is_empty());
    assert!(t.e.call_ids().is_empty());
}

#[test]
fn address_family_bridges_an_ipv4_caller_to_an_ipv6_callee() {
    let mut t = T::new();
    let media =
        FakeMedia::new(EDGE.parse().unwrap()).with_other_address("2001:db8::1".parse().unwrap());
    t.e = Engine::new(EngineConfig::default(), media, FakeDataplane::new());
    let flags = Flags {
        other_side_ipv6: Some(true),
        ..Flags::default()
    };
    let o = t.offer("c1", "ftag", vec![audio(CALLER)], flags);
    assert!(
        o[0].rtp.is_ipv6(),
        "the callee is offered the edge's IPv6 leg"
    );
    let a = t.answer("c1", "ftag", "ttag", vec![audio("[2001:db8::20]:5000")]);
    assert!(
        a[0].rtp.is_ipv4(),
        "the caller is answered with the IPv4 leg"
    );
    assert_eq!(
        t.deliver(CALLER, a[0].rtp),
        Verdict::Pass(Dscp::new(46).ok())
    );
    assert!(matches!(
        t.deliver("[2001:db8::20]:5000", o[0].rtp),
        Verdict::Pass(_)
    ));
    // Without an IPv6 media address the request is refused, and nothing is left behind.
    let mut t = T::new();
    let flags = Flags {
        other_side_ipv6: Some(true),
        ..Flags::default()
    };
    let r = t.e.offer(
        t.now,
        OfferRequest {
            call_id: "c2".into(),
            from_tag: "f".into(),
            to_tag: None,
            media: vec![audio(CALLER)],
            flags,
        },
    );
    assert!(r.unwrap_err().to_string().contains("no IPv6 media address"));
    assert!(t.e.media().legs.is_empty());
}

#[test]
fn release_reports_media_that_kept_arriving_after_the_end() {
    let mut t = T::new();
    let (a_leg, _) = t.call("c1");
    t.deliver(CALLER, a_leg);
    t.e.delete(t.now, "c1").unwrap();
    for _ in 0..7 {
        assert_eq!(t.deliver(CALLER, a_leg), Verdict::Drop(Counter::Closed));
    }
    t.events();
    t.advance(Duration::from_secs(30));
    t.e.handle_timeout(t.now);
    assert_eq!(
        t.events(),
        vec![EngineEvent::Released {
            call_id: "c1".into(),
            packets_after_end: 7
        }]
    );
}

// ---------------------------------------------------------------------------------------------
// Fast path (in-kernel forwarding of answered calls)
// ---------------------------------------------------------------------------------------------

fn fast() -> T {
    T::with(EngineConfig {
        fast_path: true,
        ..EngineConfig::default()
    })
}

impl T {
    /// `packets` (172-byte payloads) from the remote of the leg bound on `local` passed its
    /// pinhole and reached the bridge, which said so.
    fn bridge_heard(&mut self, local: SocketAddr, packets: u64) {
        let remote = self
            .e
            .media()
            .leg_at(local)
            .and_then(|l| l.remote)
            .and_then(|r| r.rtp)
            .expect("signalled remote");
        for _ in 0..packets {
            let v = self.e.dataplane_mut().deliver(remote, local, 214);
            assert!(matches!(v, Verdict::Pass(_)), "{v:?}");
        }
        let leg = {
            let l = self
                .e
                .media_mut()
                .legs
                .values_mut()
                .find(|l| l.info.rtp == local)
                .expect("leg");
            l.counters.packets_in = packets;
            l.counters.bytes_in = packets * 172;
            l.idle = Some(Duration::ZERO);
            l.info.id
        };
        let from = self.e.media().legs[&leg].remote.and_then(|r| r.rtp);
        self.e.handle_media_event(
            self.now,
            BridgeEvent::FirstPacket {
                leg,
                from: from.unwrap_or_else(|| sa("0.0.0.0:0")),
            },
        );
    }

    fn forward(&self, local: SocketAddr) -> Option<rtpedge_dataplane::ForwardSpec> {
        self.e.dataplane().forward(local).unwrap()
    }
}

#[test]
fn fast_path_is_off_by_default() {
    let mut t = T::new();
    let (a_leg, b_leg) = t.call("c1");
    t.bridge_heard(a_leg, 5);
    t.bridge_heard(b_leg, 5);
    assert_eq!(t.forward(a_leg), None);
    assert_eq!(t.forward(b_leg), None);
}

#[test]
fn fast_path_takes_over_once_both_sides_were_heard() {
    let mut t = fast();
    let (a_leg, b_leg) = t.call("c1");
    t.events();
    // Only the caller has spoken: the way back to the callee is unknown yet.
    t.bridge_heard(a_leg, 3);
    assert_eq!(t.forward(a_leg), None);
    t.bridge_heard(b_leg, 2);
    let to_callee = t
        .forward(a_leg)
        .expect("caller's media forwarded in the kernel");
    assert_eq!(to_callee.via, b_leg, "leaves from the callee-facing leg");
    assert_eq!(to_callee.to, sa(CALLEE));
    assert_eq!(to_callee.dscp.map(|d| d.value()), Some(46));
    let to_caller = t.forward(b_leg).expect("callee's media too");
    assert_eq!((to_caller.via, to_caller.to), (a_leg, sa(CALLER)));

    // The kernel forwards from now on; reports add its counts to the bridge's.
    for _ in 0..100 {
        assert!(matches!(t.deliver(CALLER, a_leg), Verdict::Pass(_)));
    }
    t.advance(Duration::from_secs(10));
    let report = t.e.delete(t.now, "c1").unwrap();
    let from_a = &report.media[0].from_a;
    assert_eq!(from_a.packets, 3 + 100);
    assert_eq!(from_a.bytes, 3 * 172 + 100 * (214 - 42));
    // Ending the call takes the media back from the kernel (and closes the pinholes first).
    assert_eq!(t.forward(a_leg), None);
    assert_eq!(t.forward(b_leg), None);
    assert_eq!(t.deliver(CALLER, a_leg), Verdict::Drop(Counter::Closed));
    let ev = t.events();
    let [EngineEvent::CdrClosed(cdr)] = &ev[..] else {
        panic!("{ev:?}")
    };
    assert_eq!(cdr.packets_ab, 103);
}

#[test]
fn fast_path_media_timeout_watches_the_kernel() {
    let mut t = fast();
    let (a_leg, b_leg) = t.call("c1");
    // Learning pinholes (untrusted SDP) latch the first packets.
    assert!(matches!(t.deliver(CALLER, a_leg), Verdict::Pass(_)));
    assert!(matches!(t.deliver(CALLEE, b_leg), Verdict::Pass(_)));
    t.bridge_heard(a_leg, 1);
    t.bridge_heard(b_leg, 1);
    assert!(t.forward(a_leg).is_some());
    t.events();
    // The bridge sees nothing any more; the kernel still forwards the caller's media.
    for l in t.e.media_mut().legs.values_mut() {
        l.idle = Some(Duration::from_secs(3600));
    }
    for _ in 0..3 {
        t.advance(Duration::from_secs(30));
        t.deliver(CALLER, a_leg);
        t.e.handle_timeout(t.now);
        let ids: Vec<LegId> = t.e.media().legs.keys().copied().collect();
        t.e.handle_media_event(
            t.now,
            BridgeEvent::MediaTimeout {
                leg: ids[0],
                idle: None,
            },
        );
        let ev = t.events();
        assert!(
            ev.is_empty(),
            "media flows in the kernel: no timeout: {ev:?}"
        );
    }
    // Silence in the kernel too: the engine's own watch ends the call at the timeout.
    let deadline = t.now.mono + Duration::from_secs(60);
    let mut ended = None;
    while let Some(at) = t.e.poll_timeout() {
        if at > deadline + Duration::from_secs(1) {
            break;
        }
        let step = at.saturating_duration_since(t.now.mono);
        t.advance(step);
        t.e.handle_timeout(t.now);
        if let Some(EngineEvent::CdrClosed(c)) = t.events().into_iter().next() {
            ended = Some((c.end_reason, t.now.mono));
            break;
        }
    }
    let (reason, at) = ended.expect("the call ends on kernel silence");
    assert_eq!(reason, Some(EndReason::MediaTimeout));
    assert!(at >= deadline && at <= deadline + Duration::from_millis(20));
}

#[test]
fn fast_path_reinvite_returns_to_the_bridge_then_back() {
    let mut t = fast();
    let (a_leg, b_leg) = t.call("c1");
    t.bridge_heard(a_leg, 1);
    t.bridge_heard(b_leg, 1);
    for _ in 0..10 {
        t.deliver(CALLEE, b_leg);
    }
    // The callee moves (re-INVITE from the callee with a new address).
    let moved = "198.51.100.21:5002";
    t.e.offer(
        t.now,
        OfferRequest {
            call_id: "c1".into(),
            from_tag: "ttag".into(),
            to_tag: Some("ftag".into()),
            media: vec![audio(moved)],
            flags: Flags::default(),
        },
    )
    .unwrap();
    assert_eq!(t.forward(a_leg), None, "re-offer: the bridge handles media");
    assert_eq!(t.forward(b_leg), None);
    t.answer("c1", "ttag", "ftag", vec![audio(CALLER)]);
    let to_callee = t.forward(a_leg).expect("back in the kernel");
    assert_eq!(to_callee.to, sa(moved), "to the new address");
    let report = t.e.query("c1").unwrap();
    assert_eq!(
        report.media[0].from_b.packets,
        1 + 10,
        "what was forwarded is kept"
    );
}

#[test]
fn fast_path_never_takes_legs_whose_remote_may_move() {
    let mut t = fast();
    let flags = Flags {
        media_handover: true,
        ..Flags::default()
    };
    let o = t.offer("c1", "ftag", vec![audio(CALLER)], flags);
    let a = t.answer("c1", "ftag", "ttag", vec![audio(CALLEE)]);
    let (a_leg, b_leg) = (a[0].rtp, o[0].rtp);
    t.bridge_heard(a_leg, 1);
    t.bridge_heard(b_leg, 1);
    assert_eq!(t.forward(a_leg), None);
    assert_eq!(t.forward(b_leg), None);
}

#[test]
fn fast_path_gives_way_to_a_recorder_fork_and_returns_after_qos() {
    let mut t = fast();
    let (a_leg, b_leg) = t.call("c1");
    t.bridge_heard(a_leg, 1);
    t.bridge_heard(b_leg, 1);
    assert!(t.forward(a_leg).is_some());
    // A QoS upgrade re-marks: the kernel's entries are rewritten with the new DSCP.
    t.e.handle_service(
        t.now,
        "c1",
        service::ServiceChange::Qos {
            dscp: 34,
            rate: None,
        },
    )
    .unwrap();
    let f = t.forward(a_leg).expect("still in the kernel");
    assert_eq!(f.dscp.map(|d| d.value()), Some(34));
    // A recorder fork needs every packet in the bridge: the call leaves the fast path for good.
    t.e.handle_service(
        t.now,
        "c1",
        service::ServiceChange::Fork {
            recorder: sa("192.0.2.200:9000"),
            recorder_rtcp: None,
            media: None,
        },
    )
    .unwrap();
    assert_eq!(t.forward(a_leg), None);
    assert_eq!(t.forward(b_leg), None);
    t.bridge_heard(a_leg, 2);
    assert_eq!(t.forward(a_leg), None);
}

// ---- rtcp-mux (ng `rtcp-mux`, rtpengine's decisions) and `asymmetric` ----

/// An audio stream at `rtp`, with `a=rtcp-mux` if `mux`.
fn audio_mux(rtp: &str, mux: bool) -> MediaDesc {
    MediaDesc {
        rtcp_mux: mux,
        ..audio(rtp)
    }
}

fn mux_flags(words: &str) -> Flags {
    let mut m = RtcpMuxFlags::default();
    for w in words.split_whitespace() {
        match w {
            "offer" => m.offer = true,
            "require" => m.require = true,
            "demux" => m.demux = true,
            "accept" => m.accept = true,
            "reject" => m.reject = true,
            other => panic!("{other}"),
        }
    }
    Flags {
        rtcp_mux: m,
        ..Flags::default()
    }
}

/// The RTCP port of the leg whose RTP address is `rtp`.
fn rtcp_port_of(t: &T, rtp: SocketAddr) -> SocketAddr {
    t.e.media()
        .leg_at(rtp)
        .unwrap()
        .info
        .rtcp
        .expect("two-port leg")
}

/// What one offer/answer with rtcp-mux settles, per side: (advertised in the offer to the
/// callee, advertised in the answer to the caller, caller leg muxed, callee leg muxed).
fn mux_outcome(
    caller_mux: bool,
    flags: &str,
    callee_mux: bool,
) -> (MuxAdvert, MuxAdvert, bool, bool) {
    let mut t = T::new();
    let o = t.offer(
        "m",
        "ftag",
        vec![audio_mux(CALLER, caller_mux)],
        mux_flags(flags),
    );
    let a = t.answer("m", "ftag", "ttag", vec![audio_mux(CALLEE, callee_mux)]);
    // Whatever the outcome, a muxed leg advertises no RTCP port, a non-muxed one does, and the
    // data plane admits exactly the RTCP ports in use.
    assert_eq!(a[0].rtcp.is_none(), a[0].rtcp_mux == MuxAdvert::Use);
    assert_eq!(o[0].rtcp.is_none(), o[0].rtcp_mux == MuxAdvert::Use);
    let muxed = |t: &T, leg: SocketAddr| {
        let spec = t.e.media().leg_at(leg).unwrap().remote.unwrap();
        let rtcp_pinhole = t.e.dataplane().pinhole(rtcp_port_of(t, leg)).unwrap();
        assert_eq!(
            rtcp_pinhole.is_none(),
            spec.rtcp_mux,
            "an RTCP pinhole exactly when the leg is not muxed ({leg})"
        );
        spec.rtcp_mux
    };
    let (caller_leg, callee_leg) = (a[0].rtp, o[0].rtp);
    let out = (
        o[0].rtcp_mux,
        a[0].rtcp_mux,
        muxed(&t, caller_leg),
        muxed(&t, callee_leg),
    );
    assert_eq!(
        out.2,
        out.1 == MuxAdvert::Use,
        "answer SDP matches the caller leg"
    );
    out
}

#[test]
fn rtcp_mux_modes_decide_each_legs_mux_as_rtpengine_does() {
    use MuxAdvert::{No, Offer, Use};
    // (caller offers mux, flags, callee answers mux) → (to callee, to caller, caller leg
    // muxed, callee leg muxed)
    let cases = [
        // Default: go along with the caller; the callee's answer decides both.
        (true, "", true, (Offer, Use, true, true)),
        (true, "", false, (Offer, No, false, false)),
        (false, "", false, (No, No, false, false)),
        // demux: the caller muxed, the callee offered two ports.
        (true, "demux", false, (No, Use, true, false)),
        // offer: mux offered to the callee even though the caller did not.
        (false, "offer", true, (Offer, No, false, true)),
        (false, "offer", false, (Offer, No, false, false)),
        // require: mux toward the callee, no RTCP port offered.
        (false, "require", true, (Use, No, false, true)),
        (true, "require", true, (Use, Use, true, true)),
        // reject: the caller's mux is refused, whatever the callee does.
        (true, "reject", true, (Offer, No, false, true)),
        (true, "demux reject", false, (No, No, false, false)),
        // accept: the caller's mux is accepted even if the callee declines.
        (true, "accept", false, (Offer, Use, true, false)),
    ];
    for (caller, flags, callee, want) in cases {
        assert_eq!(
            mux_outcome(caller, flags, callee),
            want,
            "caller mux {caller}, rtcp-mux [{flags}], callee mux {callee}"
        );
    }
}

#[test]
fn rtcp_mux_demux_media_passes_on_the_ports_each_side_uses() {
    let mut t = T::new();
    let o = t.offer(
        "d",
        "ftag",
        vec![audio_mux(CALLER, true)],
        mux_flags("demux"),
    );
    let a = t.answer("d", "ftag", "ttag", vec![audio(CALLEE)]);
    let (caller_leg, callee_leg) = (a[0].rtp, o[0].rtp);
    // The caller sends RTP and RTCP to one port; its leg's spare RTCP port admits nothing.
    assert!(matches!(t.deliver(CALLER, caller_leg), Verdict::Pass(_)));
    assert_eq!(
        t.deliver("192.0.2.10:4001", rtcp_port_of(&t, caller_leg)),
        Verdict::Drop(Counter::NoPinhole)
    );
    // The callee sends RTCP from and to its RTCP port.
    assert!(matches!(
        t.deliver("198.51.100.20:5001", rtcp_port_of(&t, callee_leg)),
        Verdict::Pass(_)
    ));
    // The bridge sends RTCP to the caller on its RTP port (muxed), to the callee on 5001.
    let caller = t.e.media().leg_at(caller_leg).unwrap().remote.unwrap();
    assert!(caller.rtcp_mux);
    assert_eq!(caller.rtcp, Some(sa(CALLER)));
    let callee = t.e.media().leg_at(callee_leg).unwrap().remote.unwrap();
    assert!(!callee.rtcp_mux);
    assert_eq!(callee.rtcp, Some(sa("198.51.100.20:5001")));
}

#[test]
fn a_reinvite_that_drops_mux_gives_the_leg_its_rtcp_pinhole_back() {
    let mut t = T::new();
    t.offer("r", "ftag", vec![audio_mux(CALLER, true)], Flags::default());
    let a = t.answer("r", "ftag", "ttag", vec![audio_mux(CALLEE, true)]);
    let caller_rtcp = rtcp_port_of(&t, a[0].rtp);
    assert!(t.e.dataplane().pinhole(caller_rtcp).unwrap().is_none());
    // The re-INVITE from the callee: toward the caller, whose leg negotiated mux, rtcp-mux is
    // kept without a fallback port (rtpengine); the caller declining it falls back to a pair.
    let o = t.offer("r", "ttag", vec![audio_mux(CALLEE, true)], Flags::default());
    assert_eq!(o[0].rtcp_mux, MuxAdvert::Use);
    let back = t.answer("r", "ttag", "ftag", vec![audio(CALLER)]);
    // The answerer declined: the offerer (the callee) falls back to its RTCP port as well.
    assert_eq!(back[0].rtcp_mux, MuxAdvert::No);
    assert!(
        t.e.dataplane()
            .pinhole(rtcp_port_of(&t, back[0].rtp))
            .unwrap()
            .is_some()
    );
    let ph = t.e.dataplane().pinhole(caller_rtcp).unwrap().unwrap();
    assert_eq!(ph.state, PinholeState::Open);
    assert!(matches!(
        t.deliver("192.0.2.10:4001", caller_rtcp),
        Verdict::Pass(_)
    ));
}

#[test]
fn asymmetric_holds_the_caller_to_its_address_and_sends_to_its_sdp_port() {
    let mut t = T::new();
    let flags = Flags {
        asymmetric: true,
        ..Flags::default()
    };
    t.offer("as", "ftag", vec![audio(CALLER)], flags);
    let a = t.answer("as", "ftag", "ttag", vec![audio(CALLEE)]);
    let leg = a[0].rtp;
    let rtcp = rtcp_port_of(&t, leg);
    for local in [leg, rtcp] {
        let ph = t.e.dataplane().pinhole(local).unwrap().unwrap();
        assert_eq!(
            ph.policy,
            rtpedge_dataplane::RemotePolicy::Address("192.0.2.10".parse().unwrap())
        );
    }
    // The caller sends from ports other than its SDP ports: admitted, every time, and nothing
    // is learned (a later port is admitted too).
    for src in ["192.0.2.10:6000", "192.0.2.10:6002", "192.0.2.10:4000"] {
        assert!(matches!(t.deliver(src, leg), Verdict::Pass(_)), "{src}");
    }
    assert!(matches!(
        t.deliver("192.0.2.10:6001", rtcp),
        Verdict::Pass(_)
    ));
    // A third address never passes, on either port.
    for local in [leg, rtcp] {
        assert_eq!(
            t.deliver("192.0.2.66:6000", local),
            Verdict::Drop(Counter::WrongSource)
        );
    }
    // The bridge sends to the SDP port and never learns.
    let spec = t.e.media().leg_at(leg).unwrap().remote.unwrap();
    assert_eq!(spec.policy, rtpedge_bridge::Policy::Asymmetric);
    assert_eq!(spec.rtp, Some(sa(CALLER)));
    assert_eq!(spec.rtcp, Some(sa("192.0.2.10:4001")));
    // The callee (no flag) keeps the default strict learning policy.
    let callee =
        t.e.media()
            .leg_at(
                t.e.media()
                    .legs
                    .values()
                    .find(|l| l.info.rtp != leg)
                    .unwrap()
                    .info
                    .rtp,
            )
            .unwrap();
    assert_eq!(
        callee.remote.unwrap().policy,
        rtpedge_bridge::Policy::Learning
    );
}
