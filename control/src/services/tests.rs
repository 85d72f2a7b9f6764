//! Service insertion in virtual time: engine + charging + an in-memory ledger, fake bridge and
//! data plane.

use std::net::SocketAddr;

use rtpedge_dataplane::{Counter, Dataplane, FakeDataplane, Verdict};
use serde_json::json;

use super::*;
use crate::{
    billing::{
        Ledger, Mode,
        auth::{Signer, Verifier},
    },
    charging::ChargingConfig,
    engine::{Engine, EngineConfig, FakeMedia, Flags, OfferRequest},
    test_support::{audio, fake_engine, ledger_t1, no_call_rate_limit, offer_answer},
};

const A: &str = "192.0.2.10:4000";
const B: &str = "198.51.100.20:5000";

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

struct World {
    engine: Engine<FakeMedia, FakeDataplane>,
    charging: Charging,
    signer: Signer,
    now: Timestamp,
    /// Caller-facing and callee-facing legs of "c1".
    legs: (SocketAddr, SocketAddr),
}

impl World {
    /// Account `acme` with `tokens` usage tokens, a running call `c1` billed to it.
    fn new(tokens: u32) -> Self {
        let mut ledger = ledger_t1(
            60,
            &[
                ("acme", 10_000, Mode::Prepaid),
                ("other", 10_000, Mode::Prepaid),
            ],
        );
        if tokens > 0 {
            ledger.add_tokens("acme", tokens).unwrap();
        }
        let signer = Signer::from_seed([9u8; 32]);
        let charging = Charging::new(
            ChargingConfig {
                fraud: no_call_rate_limit(),
                ticket_verifier: Some(Verifier::new(vec![signer.public_key()]).unwrap()),
                ..ChargingConfig::default()
            },
            Box::new(ledger),
        )
        .unwrap();
        let mut w = World {
            engine: fake_engine(EngineConfig::default()),
            charging,
            signer,
            now: Timestamp {
                mono: std::time::Instant::now(),
                unix_ms: 1_767_222_000_000,
            },
            legs: (sa("0.0.0.0:0"), sa("0.0.0.0:0")),
        };
        w.legs = w.call("c1", Some("acme"));
        w
    }

    fn call(&mut self, id: &str, account: Option<&str>) -> (SocketAddr, SocketAddr) {
        let legs = offer_answer(&mut self.engine, self.now, id, account, audio(A), audio(B));
        self.pump();
        legs
    }

    fn pump(&mut self) -> Vec<crate::engine::Cdr> {
        let mut cdrs = Vec::new();
        while let Some(ev) = self.engine.poll_event() {
            if let Some(c) = self.charging.on_engine_event(self.now.mono, ev) {
                cdrs.push(c);
            }
        }
        cdrs
    }

    fn unix(&self) -> u64 {
        (self.now.unix_ms / 1000) as u64
    }

    fn ticket(&self, service: Service, params: serde_json::Value) -> String {
        self.ticket_with(|c| {
            c.service = service;
            c.params = params.as_object().cloned().unwrap_or_default();
        })
    }

    fn ticket_with(&self, f: impl FnOnce(&mut TicketClaims)) -> String {
        let mut c = TicketClaims {
            call_id: "c1".into(),
            account: "acme".into(),
            service: Service::QosUpgrade,
            params: Map::new(),
            exp: self.unix() + 60,
            nonce: format!("n-{}", rand_nonce()),
        };
        f(&mut c);
        self.signer.sign_ticket(&c).unwrap()
    }

    fn request(
        &mut self,
        call: &str,
        ticket: String,
        body: serde_json::Value,
    ) -> Result<ServiceOutcome, ServiceError> {
        let mut v = body;
        v["ticket"] = json!(ticket);
        let req = ServiceRequest::from_json(&v)?;
        handle_service(self.now, &mut self.engine, &mut self.charging, call, &req)
    }

    fn tokens(&mut self) -> u32 {
        self.charging.account("acme").unwrap().tokens
    }

    fn a_media_passes(&mut self) -> bool {
        let leg = self.legs.0;
        matches!(
            self.engine.dataplane_mut().deliver(sa(A), leg, 214),
            Verdict::Pass(_)
        )
    }

    /// Everything observable about the call's media: bridge legs, splices, pinholes.
    fn media_state(&self) -> String {
        format!(
            "{:?} {:?} {:?}",
            self.engine.media().legs,
            self.engine.media().splices,
            self.engine.dataplane().pinholes().unwrap()
        )
    }
}

fn rand_nonce() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(1);
    N.fetch_add(1, Ordering::Relaxed)
}

#[test]
fn a_valid_ticket_applies_the_qos_upgrade_and_takes_one_token() {
    let mut w = World::new(3);
    let t = w.ticket(Service::QosUpgrade, json!({"dscp": 34}));
    let out = w
        .request("c1", t, json!({"service": "qos", "rate": "200/50"}))
        .unwrap();
    assert_eq!(out.tokens_left, 2);
    assert_eq!(w.tokens(), 2);
    assert_eq!(out.service, Service::QosUpgrade);
    let j = out.to_json();
    assert_eq!(j["dscp"], 34);
    assert_eq!(j["rate"], "200/50");
    assert_eq!(j["legs"], 2);
    // Bridge legs and every pinhole of the call carry the new class and rate.
    for l in w.engine.media().legs.values() {
        assert_eq!(l.dscp, Some(34));
    }
    let holes = w.engine.dataplane().pinholes().unwrap();
    assert_eq!(holes.len(), 4, "RTP and RTCP of both legs");
    for p in holes {
        assert_eq!(p.dscp.map(|d| d.value()), Some(34));
        assert_eq!(p.rate.map(|r| (r.pps, r.burst)), Some((200, 50)));
    }
    assert!(w.a_media_passes(), "media still flows");
    // Recorded in the CDR at the end.
    w.engine.delete(w.now, "c1").unwrap();
    let cdrs = w.pump();
    let end = cdrs.iter().find(|c| c.end_at.is_some()).unwrap();
    assert_eq!(end.services, vec!["qos-upgrade".to_string()]);
    assert_eq!(end.dscp, Some(34));
}

/// Refusals: each says what was wrong, takes no token and changes nothing.
#[test]
fn bad_tickets_and_missing_tokens_are_refused_and_change_nothing() {
    let mut w = World::new(1);
    let before = w.media_state();
    let fork = json!({"service": "fork", "recorder": "192.0.2.99:7000"});
    let good = |w: &World| w.ticket(Service::Fork, json!({}));
    // Bad signature: signed by another key.
    let other = Signer::from_seed([1u8; 32]);
    let forged = other
        .sign_ticket(&TicketClaims {
            call_id: "c1".into(),
            account: "acme".into(),
            service: Service::Fork,
            params: Map::new(),
            exp: w.unix() + 60,
            nonce: "x".into(),
        })
        .unwrap();
    let e = w.request("c1", forged, fork.clone()).unwrap_err();
    assert_eq!((e.code(), e.http_status()), ("bad-signature", 401));
    // Tampered: a valid ticket with one character of its signature changed.
    let mut tampered = good(&w);
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    let e = w.request("c1", tampered, fork.clone()).unwrap_err();
    assert_eq!(e.http_status(), 401, "{e}");
    // Expired.
    let t = w.ticket_with(|c| {
        c.service = Service::Fork;
        c.exp = 1_767_221_000;
    });
    let e = w.request("c1", t, fork.clone()).unwrap_err();
    assert_eq!((e.code(), e.http_status()), ("expired", 401));
    assert!(e.to_string().contains("expired"), "{e}");
    // Wrong account.
    let t = w.ticket_with(|c| {
        c.service = Service::Fork;
        c.account = "other".into();
    });
    let e = w.request("c1", t, fork.clone()).unwrap_err();
    assert_eq!((e.code(), e.http_status()), ("wrong-account", 403));
    // Wrong call.
    let t = w.ticket_with(|c| {
        c.service = Service::Fork;
        c.call_id = "c2".into();
    });
    let e = w.request("c1", t, fork.clone()).unwrap_err();
    assert_eq!((e.code(), e.http_status()), ("wrong-call", 403));
    // No such call.
    let e = w.request("nope", good(&w), fork.clone()).unwrap_err();
    assert_eq!((e.code(), e.http_status()), ("no-such-call", 404));
    // The request asks for another service than the ticket pays for.
    let e = w
        .request("c1", good(&w), json!({"service": "qos"}))
        .unwrap_err();
    assert_eq!(e.http_status(), 400);
    assert!(e.to_string().contains("ticket is for fork"), "{e}");
    // Parameters that contradict the ticket.
    let t = w.ticket(Service::Fork, json!({"recorder": "192.0.2.98:7000"}));
    let e = w.request("c1", t, fork.clone()).unwrap_err();
    assert!(e.to_string().contains("recorder"), "{e}");
    // Bad parameters.
    let e = w
        .request("c1", good(&w), json!({"recorder": "nowhere"}))
        .unwrap_err();
    assert_eq!(e.http_status(), 400);
    assert!(e.to_string().contains("not ADDR:PORT"), "{e}");
    assert_eq!(w.tokens(), 1, "no refusal took a token");
    assert_eq!(w.media_state(), before, "no refusal changed the media");
    // The one token pays for one fork; the next request finds none.
    w.request("c1", good(&w), fork.clone()).unwrap();
    assert_eq!(w.tokens(), 0);
    let after_fork = w.media_state();
    let e = w
        .request("c1", w.ticket(Service::QosUpgrade, json!({})), json!({}))
        .unwrap_err();
    assert_eq!((e.code(), e.http_status()), ("no-tokens", 402));
    assert!(e.to_string().contains("no usage tokens left"), "{e}");
    assert_eq!(w.media_state(), after_fork, "no QoS change without a token");
    assert!(
        w.engine
            .media()
            .legs
            .values()
            .all(|l| l.dscp == Some(46) && l.fork.is_some())
    );
}

#[test]
fn a_ticket_inserts_its_service_once() {
    let mut w = World::new(5);
    let t = w.ticket(Service::QosUpgrade, json!({}));
    w.request("c1", t.clone(), json!({})).unwrap();
    let e = w.request("c1", t, json!({})).unwrap_err();
    assert_eq!((e.code(), e.http_status()), ("replayed", 409));
    assert_eq!(w.tokens(), 4);
    // Counted under the ticket's service, though the request did not name it.
    let counts: Vec<_> = w
        .charging
        .service_counts()
        .map(|((s, o), n)| (s.clone(), *o, *n))
        .collect();
    assert_eq!(
        counts,
        vec![
            ("qos-upgrade".to_string(), "applied", 1),
            ("qos-upgrade".to_string(), "replayed", 1)
        ]
    );
}

#[test]
fn services_need_an_answered_call_and_ticket_keys() {
    let mut w = World::new(5);
    w.engine
        .offer(
            w.now,
            OfferRequest {
                call_id: "c2".into(),
                from_tag: "f".into(),
                to_tag: None,
                media: vec![audio(A)],
                flags: Flags {
                    account: Some("acme".into()),
                    ..Flags::default()
                },
            },
        )
        .unwrap();
    let t = w.ticket_with(|c| c.call_id = "c2".into());
    let e = w.request("c2", t, json!({})).unwrap_err();
    assert_eq!((e.code(), e.http_status()), ("call-not-answered", 409));
    w.engine.delete(w.now, "c1").unwrap();
    let e = w
        .request("c1", w.ticket(Service::QosUpgrade, json!({})), json!({}))
        .unwrap_err();
    assert_eq!((e.code(), e.http_status()), ("call-ended", 409));
    // A call billed to no account.
    w.call("c3", None);
    let t = w.ticket_with(|c| c.call_id = "c3".into());
    let e = w.request("c3", t, json!({})).unwrap_err();
    assert_eq!(e.code(), "no-account");
    assert_eq!(w.tokens(), 5);
}

#[test]
fn fork_sends_every_leg_of_the_call_to_the_recorder() {
    let mut w = World::new(1);
    let t = w.ticket(Service::Fork, json!({}));
    let out = w
        .request(
            "c1",
            t,
            json!({"service": "fork", "recorder": "192.0.2.99:7000", "recorder_rtcp": "192.0.2.99:7001"}),
        )
        .unwrap();
    assert_eq!(out.to_json()["legs"], 2);
    for l in w.engine.media().legs.values() {
        assert_eq!(
            l.fork,
            Some(rtpedge_bridge::Fork {
                rtp: sa("192.0.2.99:7000"),
                rtcp: Some(sa("192.0.2.99:7001"))
            })
        );
        assert!(l.splice.is_some(), "still spliced");
    }
    // An IPv6 recorder cannot be reached from IPv4 legs.
    w.charging.add_tokens("acme", 1).unwrap();
    let t = w.ticket(Service::Fork, json!({}));
    let e = w
        .request("c1", t, json!({"recorder": "[2001:db8::9]:7000"}))
        .unwrap_err();
    assert_eq!(e.http_status(), 400);
    assert!(e.to_string().contains("address family"), "{e}");
    assert_eq!(w.tokens(), 1);
}

#[test]
fn add_party_splices_a_third_leg_and_split_makes_subgroups() {
    let mut w = World::new(3);
    let splice_before: Vec<_> = w.engine.media().splices.keys().copied().collect();
    let t = w.ticket(Service::AddParty, json!({}));
    let out = w
        .request(
            "c1",
            t,
            json!({"service": "add-party", "remote": "203.0.113.50:6000"}),
        )
        .unwrap();
    let j = out.to_json();
    assert_eq!(j["party"], "p1");
    assert_eq!(j["parties"], json!(["a", "b", "p1"]));
    let local: SocketAddr = j["local"].as_str().unwrap().parse().unwrap();
    let sdp = j["sdp"].as_str().unwrap();
    assert!(
        sdp.contains(&format!("m=audio {} RTP/AVP 0", local.port())),
        "{sdp}"
    );
    assert!(sdp.contains("c=IN IP4 203.0.113.1"), "{sdp}");
    // One splice of three legs replaced the two-leg one.
    let splices = &w.engine.media().splices;
    assert_eq!(splices.len(), 1);
    assert!(!splice_before.contains(splices.keys().next().unwrap()));
    assert_eq!(splices.values().next().unwrap().len(), 3);
    // The new party's pinhole is open for its remote, with the call's DSCP; others' are not.
    let dp = w.engine.dataplane_mut();
    assert!(matches!(
        dp.deliver(sa("203.0.113.50:6000"), local, 200),
        Verdict::Pass(_)
    ));
    assert_eq!(
        dp.deliver(sa("203.0.113.66:6000"), local, 200),
        Verdict::Drop(Counter::WrongSource)
    );
    assert!(w.a_media_passes());
    // Split: A talks with the new party, B is isolated.
    let t = w.ticket(Service::Split, json!({}));
    let out = w
        .request("c1", t, json!({"groups": [["a", "p1"], ["b"]]}))
        .unwrap();
    assert_eq!(out.to_json()["isolated"], json!(["b"]));
    let m = w.engine.media();
    let spliced: Vec<&Vec<_>> = m.splices.values().collect();
    assert_eq!(spliced.len(), 1);
    assert_eq!(spliced[0].len(), 2);
    let b_leg = m.leg_at(w.legs.1).unwrap();
    assert_eq!(b_leg.splice, None, "B is on its own");
    // A party of a family the host has no media address of: a bad request, and the token
    // taken for it is given back.
    let before = w.tokens();
    let t = w.ticket(Service::AddParty, json!({}));
    let e = w
        .request("c1", t, json!({"remote": "[2001:db8::5]:6000"}))
        .unwrap_err();
    assert_eq!(e.http_status(), 400, "{e}");
    assert!(e.to_string().contains("IPv6"), "{e}");
    assert_eq!(w.tokens(), before, "refunded");
    // Unknown party names and groups that cannot be spliced are refused (no token taken).
    let t = w.ticket(Service::Split, json!({}));
    let e = w
        .request("c1", t, json!({"groups": [["a", "zz"]]}))
        .unwrap_err();
    assert!(e.to_string().contains("no party \"zz\""), "{e}");
    assert_eq!(w.tokens(), 1);
    // The call ends cleanly: the third leg is released too, and the CDR lists both services.
    w.engine.delete(w.now, "c1").unwrap();
    let cdrs = w.pump();
    let end = cdrs.iter().find(|c| c.end_at.is_some()).unwrap();
    assert_eq!(end.services, vec!["add-party", "split"]);
    w.engine.shutdown(w.now);
    assert!(w.engine.media().legs.is_empty(), "every leg released");
    assert!(w.engine.dataplane().pinholes().unwrap().is_empty());
}

#[test]
fn a_setup_token_limits_the_services_of_its_call() {
    use crate::{billing::auth::TokenClaims, ngserver::Admission};
    let mut w = World::new(3);
    let token = w
        .signer
        .sign_token(&TokenClaims {
            account: "acme".into(),
            services: vec!["fork".into()],
            exp: w.unix() + 60,
            iat: w.unix(),
            nonce: "tok".into(),
        })
        .unwrap();
    // Admission records what the token allows (a verifier for setup tokens is not needed
    // for this: the call is admitted through a charging layer that has one).
    let mut c = Charging::new(
        ChargingConfig {
            verifier: Some(Verifier::new(vec![w.signer.public_key()]).unwrap()),
            ticket_verifier: Some(Verifier::new(vec![w.signer.public_key()]).unwrap()),
            ..ChargingConfig::default()
        },
        Box::new({
            let mut l = ledger_t1(0, &[("acme", 100, Mode::Postpaid)]);
            l.add_tokens("acme", 2).unwrap();
            l
        }),
    )
    .unwrap();
    assert_eq!(
        c.admit(w.now, "c1", None, None, Some(&token)),
        Ok(Some("acme".into()))
    );
    std::mem::swap(&mut w.charging, &mut c);
    let t = w.ticket(Service::QosUpgrade, json!({}));
    let e = w.request("c1", t, json!({})).unwrap_err();
    assert_eq!(
        (e.code(), e.http_status()),
        ("service-not-allowed", 403),
        "{e}"
    );
    let t = w.ticket(Service::Fork, json!({}));
    w.request("c1", t, json!({"recorder": "192.0.2.99:7000"}))
        .unwrap();
    assert_eq!(w.tokens(), 1);
}

/// ng `service` (rtpedge extension): the same request in ng form, values as Kamailio's flags
/// give them (strings), keys in ng spelling.
#[test]
fn the_ng_service_command_inserts_a_service() {
    use crate::{
        ng::{self, Value as Ng},
        ngserver::{AdmitAll, NgServer},
    };
    let mut w = World::new(2);
    let mut server = NgServer::new(Vec::new());
    let from: SocketAddr = sa("127.0.0.1:9");
    let ticket = w.ticket(Service::AddParty, json!({}));
    let dgram = |cookie: &str, v: Ng| {
        let mut out = format!("{cookie} ").into_bytes();
        ng::encode(&v, &mut out);
        out
    };
    let req = Ng::new_dict()
        .with("command", "service")
        .with("call-id", "c1")
        .with("ticket", ticket.as_str())
        .with("service", "add-party")
        .with("remote", "203.0.113.50:6000")
        .with("rtcp-mux", "yes")
        .with("media", "0");
    let reply = server
        .handle(
            &mut w.engine,
            &mut w.charging,
            &dgram("s1", req.clone()),
            from,
            w.now,
        )
        .unwrap();
    let (_, body) = ng::split_cookie(&reply).unwrap();
    let v = ng::decode(body).unwrap();
    assert_eq!(v.get_str("result"), Some("ok"), "{v:?}");
    assert_eq!(v.get_str("party"), Some("p1"));
    assert_eq!(v.get("tokens-left"), Some(&Ng::Int(1)));
    assert_eq!(v.get_str("rtcp-mux"), Some("yes"), "a muxed party leg");
    assert!(v.get_str("sdp").unwrap().contains("a=rtcp-mux"));
    assert_eq!(w.tokens(), 1);
    // The same ticket again (new cookie): refused with a code.
    let reply = server
        .handle(
            &mut w.engine,
            &mut w.charging,
            &dgram("s2", req),
            from,
            w.now,
        )
        .unwrap();
    let v = ng::decode(ng::split_cookie(&reply).unwrap().1).unwrap();
    assert_eq!(v.get_str("result"), Some("error"));
    assert_eq!(v.get_str("error-code"), Some("replayed"));
    // Split in ng form: groups as one string.
    let t = w.ticket(Service::Split, json!({}));
    let req = Ng::new_dict()
        .with("command", "service")
        .with("call-id", "c1")
        .with("ticket", t.as_str())
        .with("groups", "a,p1;b");
    let reply = server
        .handle(
            &mut w.engine,
            &mut w.charging,
            &dgram("s3", req),
            from,
            w.now,
        )
        .unwrap();
    let v = ng::decode(ng::split_cookie(&reply).unwrap().1).unwrap();
    assert_eq!(v.get_str("result"), Some("ok"), "{v:?}");
    assert_eq!(v.get("isolated"), Some(&Ng::list(["b"])), "{v:?}");
    // Without a charging layer (AdmitAll), services are refused.
    let t = w.ticket(Service::Fork, json!({}));
    let req = Ng::new_dict()
        .with("command", "service")
        .with("call-id", "c1")
        .with("ticket", t.as_str())
        .with("recorder", "192.0.2.99:7000");
    let reply = server
        .handle(&mut w.engine, &mut AdmitAll, &dgram("s4", req), from, w.now)
        .unwrap();
    let v = ng::decode(ng::split_cookie(&reply).unwrap().1).unwrap();
    assert_eq!(v.get_str("error-code"), Some("not-configured"));
    // Two services applied, two events for the channel.
    let events = w.charging.take_service_events();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["service"], "add-party");
    assert_eq!(events[1]["service"], "split");
}

#[test]
fn a_call_whose_added_party_still_talks_does_not_time_out() {
    use rtpedge_bridge::BridgeEvent;
    use std::time::Duration;
    let mut w = World::new(1);
    let t = w.ticket(Service::AddParty, json!({}));
    let out = w
        .request("c1", t, json!({"remote": "203.0.113.50:6000"}))
        .unwrap();
    let party: SocketAddr = out.to_json()["local"].as_str().unwrap().parse().unwrap();
    let silent = Some(Duration::from_secs(600));
    let legs: Vec<_> = w.engine.media().legs.keys().copied().collect();
    for id in &legs {
        w.engine.media_mut().legs.get_mut(id).unwrap().idle = silent;
    }
    let party_leg = w.engine.media().leg_at(party).unwrap().info.id;
    w.engine.media_mut().legs.get_mut(&party_leg).unwrap().idle = Some(Duration::from_secs(1));
    let a_leg = w.engine.media().leg_at(w.legs.0).unwrap().info.id;
    w.engine.handle_media_event(
        w.now,
        BridgeEvent::MediaTimeout {
            leg: a_leg,
            idle: silent,
        },
    );
    assert_eq!(w.engine.active_calls(), 1, "c1 still up");
    // The party falls silent too: now the call times out.
    w.engine.media_mut().legs.get_mut(&party_leg).unwrap().idle = silent;
    w.engine.handle_media_event(
        w.now,
        BridgeEvent::MediaTimeout {
            leg: party_leg,
            idle: silent,
        },
    );
    assert_eq!(w.engine.active_calls(), 0);
}
