//! Credit control in virtual time: every `Instant` is `t0 + offset`.

use std::time::{Duration, Instant};

use super::*;
use crate::billing::{AccountSpec, Ledger, MemoryLedger, embedded::serve, tariff::tests::combo};

/// Time only: 0.50/min, 60/1, 0.10 connection fee, volume free.
fn voice() -> Tariff {
    Tariff {
        id: "voice".into(),
        per_kilobyte: Money(0),
        ..combo()
    }
}

fn config(unreachable: UnreachablePolicy) -> CreditConfig {
    CreditConfig {
        slice_seconds: 30,
        slice_bytes: 1_000_000,
        renew_at_percent: 80,
        request_timeout: Duration::from_secs(2),
        unreachable,
    }
}

fn cc(unreachable: UnreachablePolicy) -> CreditControl {
    CreditControl::new(config(unreachable)).unwrap()
}

fn s(secs: u64) -> Duration {
    Duration::from_secs(secs)
}

fn ms(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

fn call(id: &str, account: &str, tariff: Tariff, mode: Mode) -> OpenCall {
    OpenCall {
        call_id: id.into(),
        account: account.into(),
        tariff,
        mode,
    }
}

fn drain(c: &mut CreditControl) -> Vec<CreditEvent> {
    std::iter::from_fn(|| c.poll_event()).collect()
}

fn one_reserve(c: &mut CreditControl) -> Reserve {
    match drain(c).as_slice() {
        [CreditEvent::Reserve(r)] => r.clone(),
        other => panic!("expected one Reserve, got {other:?}"),
    }
}

fn grant(seconds: u64, amount: i64) -> GrantAnswer {
    GrantAnswer::Granted(Granted {
        seconds,
        bytes: 0,
        amount: Money(amount),
    })
}

fn usage(e: &CreditEvent) -> &Usage {
    match e {
        CreditEvent::Usage(u) => u,
        other => panic!("expected Usage, got {other:?}"),
    }
}

#[test]
fn reservation_renewal_and_exhaustion_cut_at_the_exact_deadline() {
    let t0 = Instant::now();
    let mut c = cc(UnreachablePolicy::FailClosed);
    c.open(t0, call("c1", "alice", voice(), Mode::Prepaid))
        .unwrap();
    // The first slice: 30 s, priced with the fee and the 60 s initial block.
    let r = one_reserve(&mut c);
    assert_eq!(
        r,
        Reserve {
            call_id: "c1".into(),
            account: "alice".into(),
            request_id: r.request_id,
            seconds: 30,
            bytes: 0,
            amount: Money(60),
            initial: true,
        }
    );
    assert_eq!(
        c.poll_timeout(),
        Some(t0 + s(2)),
        "the answer is awaited for request_timeout"
    );
    c.on_grant(t0 + ms(5), r.request_id, grant(30, 60));
    // Renewal at 80 % of the slice.
    assert_eq!(c.poll_timeout(), Some(t0 + s(24)));
    c.handle_timeout(t0 + s(24) - Duration::from_nanos(1));
    assert!(drain(&mut c).is_empty());
    c.handle_timeout(t0 + s(24));
    let ev = drain(&mut c);
    assert_eq!(ev.len(), 2, "{ev:?}");
    let u = usage(&ev[0]);
    assert_eq!(
        (u.seconds, u.amount, u.released, u.charge, u.is_final),
        (24, Money(60), Money(60), Money(60), false)
    );
    let CreditEvent::Reserve(r2) = &ev[1] else {
        panic!("{ev:?}")
    };
    // 30 → 60 s lies inside the initial 60 s block: free.
    assert_eq!((r2.seconds, r2.amount, r2.initial), (30, Money(0), false));
    c.on_grant(t0 + s(24), r2.request_id, grant(30, 0));
    assert_eq!(c.poll_timeout(), Some(t0 + s(54)));
    c.handle_timeout(t0 + s(54));
    let ev = drain(&mut c);
    assert_eq!(usage(&ev[0]).seconds, 30);
    let CreditEvent::Reserve(r3) = &ev[1] else {
        panic!("{ev:?}")
    };
    // 60 → 90 s: 30 s at 0.50/min.
    assert_eq!(r3.amount, Money(25));
    c.on_grant(
        t0 + s(54),
        r3.request_id,
        GrantAnswer::Denied(DenyReason::InsufficientCredit),
    );
    let view = c.session("c1", t0 + s(55)).unwrap();
    assert_eq!((view.state, view.granted_ms), ("denied", 60_000));
    // The cut is due exactly when the granted 60 s end, and not a nanosecond earlier.
    assert_eq!(c.poll_timeout(), Some(t0 + s(60)));
    c.handle_timeout(t0 + s(60) - Duration::from_nanos(1));
    assert!(drain(&mut c).is_empty());
    c.handle_timeout(t0 + s(60));
    let ev = drain(&mut c);
    assert_eq!(
        ev[0],
        CreditEvent::Cut(Cut {
            call_id: "c1".into(),
            account: "alice".into(),
            reason: CutReason::CreditExhausted,
            charge: Money(60),
        })
    );
    let u = usage(&ev[1]);
    assert!(u.is_final);
    assert_eq!((u.seconds, u.amount, u.charge), (6, Money(0), Money(60)));
    assert!(c.is_empty());
    assert_eq!(c.poll_timeout(), None);
    let k = c.counters();
    assert_eq!((k.grants, k.denials, k.cuts_credit_exhausted), (2, 1, 1));
    assert_eq!(
        CutReason::CreditExhausted.end_reason().as_str(),
        "credit-exhausted"
    );
}

#[test]
fn a_late_timer_does_not_make_the_call_cost_more() {
    let t0 = Instant::now();
    let mut c = cc(UnreachablePolicy::FailClosed);
    c.open(t0, call("c1", "alice", voice(), Mode::Prepaid))
        .unwrap();
    let r = one_reserve(&mut c);
    c.on_grant(t0, r.request_id, grant(30, 60));
    // Nobody called handle_timeout at 24 s; the owner wakes up at 95 s.
    c.handle_timeout(t0 + s(95));
    let ev = drain(&mut c);
    let CreditEvent::Cut(cut) = &ev[0] else {
        panic!("{ev:?}")
    };
    assert_eq!(cut.charge, Money(60), "billed up to the granted 30 s only");
}

/// The embedded ledger answers synchronously; partial grants use the last credit exactly.
#[test]
fn embedded_ledger_partial_grant_uses_the_last_credit_exactly() {
    let t0 = Instant::now();
    let mut l = MemoryLedger::new();
    l.put_tariff(&voice()).unwrap();
    l.put_account(
        "alice",
        &AccountSpec {
            balance: 100,
            tariff: "voice".into(),
            mode: Mode::Prepaid,
        },
    )
    .unwrap();
    let mut c = cc(UnreachablePolicy::FailClosed);
    let mut all = Vec::new();
    c.open(t0, call("c1", "alice", voice(), Mode::Prepaid))
        .unwrap();
    all.extend(serve(&mut c, &mut l, t0).events);
    assert_eq!(l.account("alice").unwrap().reserved, Money(60));
    // Drive the timers until the call is cut.
    while let Some(t) = c.poll_timeout() {
        c.handle_timeout(t);
        let served = serve(&mut c, &mut l, t);
        assert!(served.errors.is_empty());
        all.extend(served.events);
    }
    // 100 pays for the fee (10) and 108 s (90): the call is cut at 108 s.
    let cut = all
        .iter()
        .find_map(|e| match e {
            CreditEvent::Cut(cut) => Some(cut.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        (cut.reason, cut.charge),
        (CutReason::CreditExhausted, Money(100))
    );
    let grants: Vec<(u64, Money)> = all
        .iter()
        .filter_map(|e| match e {
            CreditEvent::Reserve(r) => Some((r.seconds, r.amount)),
            _ => None,
        })
        .collect();
    assert_eq!(
        grants,
        vec![
            (30, Money(60)),
            (30, Money(0)),
            (30, Money(25)),
            (30, Money(25)),
            (30, Money(25))
        ]
    );
    assert_eq!(c.counters().partial_grants, 1);
    // Every report adds up: debits = charge, the reservation is fully released.
    let usages: Vec<&Usage> = all
        .iter()
        .filter_map(|e| match e {
            CreditEvent::Usage(u) => Some(u),
            _ => None,
        })
        .collect();
    assert_eq!(usages.iter().map(|u| u.amount).sum::<Money>(), Money(100));
    assert!(usages.last().unwrap().is_final);
    let a = l.account("alice").unwrap();
    assert_eq!((a.balance, a.reserved), (Money(0), Money(0)));
    let reserved: Money = l
        .entries("alice", 100)
        .unwrap()
        .iter()
        .map(|e| e.reserved_delta)
        .sum();
    assert_eq!(reserved, Money(0));
}

#[test]
fn topup_during_a_call_extends_it() {
    let t0 = Instant::now();
    let mut l = MemoryLedger::new();
    l.put_tariff(&voice()).unwrap();
    l.put_account(
        "alice",
        &AccountSpec {
            balance: 100,
            tariff: "voice".into(),
            mode: Mode::Prepaid,
        },
    )
    .unwrap();
    let mut c = cc(UnreachablePolicy::FailClosed);
    c.open(t0, call("c1", "alice", voice(), Mode::Prepaid))
        .unwrap();
    serve(&mut c, &mut l, t0);
    // Run until the credit is denied (the 104.4 s renewal finds nothing available).
    while c.session("c1", t0).is_some_and(|v| v.state != "denied") {
        let t = c.poll_timeout().unwrap();
        c.handle_timeout(t);
        serve(&mut c, &mut l, t);
    }
    assert_eq!(c.poll_timeout(), Some(t0 + s(108)), "the cut is scheduled");
    // Top-up before the cut: the call asks again and goes on.
    let now = t0 + s(106);
    l.topup("alice", Money(1000)).unwrap();
    assert_eq!(c.topup(now, "alice"), 1);
    let served = serve(&mut c, &mut l, now);
    assert!(
        served
            .events
            .iter()
            .any(|e| matches!(e, CreditEvent::Reserve(_)))
    );
    assert!(c.poll_timeout().unwrap() > t0 + s(108));
    c.handle_timeout(t0 + s(108));
    assert!(
        !serve(&mut c, &mut l, t0 + s(108))
            .events
            .iter()
            .any(|e| matches!(e, CreditEvent::Cut(_)))
    );
    // Hang up at 200 s: 10 + 50 × 200 / 60 = 176.67 → 177.
    for t in (109..200).step_by(5) {
        c.handle_timeout(t0 + s(t));
        serve(&mut c, &mut l, t0 + s(t));
    }
    assert_eq!(c.end(t0 + s(200), "c1"), Some(Money(177)));
    serve(&mut c, &mut l, t0 + s(200));
    let a = l.account("alice").unwrap();
    assert_eq!((a.balance, a.reserved), (Money(1100 - 177), Money(0)));
    assert_eq!(c.end(t0 + s(201), "c1"), None);
}

#[test]
fn block_cuts_all_calls_of_the_account_and_refuses_new_ones() {
    let t0 = Instant::now();
    let mut c = cc(UnreachablePolicy::FailClosed);
    for (id, acct) in [("a1", "alice"), ("a2", "alice"), ("b1", "bob")] {
        c.open(t0, call(id, acct, voice(), Mode::Prepaid)).unwrap();
        let r = one_reserve(&mut c);
        c.on_grant(t0, r.request_id, grant(30, 60));
    }
    c.open(t0, call("a3", "alice", voice(), Mode::Postpaid))
        .unwrap();
    assert_eq!(c.block(t0 + s(10), "alice"), 3);
    let ev = drain(&mut c);
    let cuts: Vec<(&str, CutReason, Money)> = ev
        .iter()
        .filter_map(|e| match e {
            CreditEvent::Cut(cut) => Some((cut.call_id.as_str(), cut.reason, cut.charge)),
            _ => None,
        })
        .collect();
    assert_eq!(
        cuts,
        vec![
            ("a1", CutReason::AccountBlocked, Money(60)),
            ("a2", CutReason::AccountBlocked, Money(60)),
            ("a3", CutReason::AccountBlocked, Money(60)),
        ]
    );
    assert_eq!(
        ev.iter()
            .filter(|e| matches!(e, CreditEvent::Usage(u) if u.is_final))
            .count(),
        3
    );
    assert_eq!(c.len(), 1, "bob's call goes on");
    assert!(c.is_blocked("alice"));
    assert_eq!(
        c.open(t0 + s(11), call("a4", "alice", voice(), Mode::Prepaid)),
        Err(CreditError::AccountBlocked("alice".into()))
    );
    c.unblock("alice");
    c.open(t0 + s(12), call("a4", "alice", voice(), Mode::Prepaid))
        .unwrap();
    let r = one_reserve(&mut c).request_id;
    assert_eq!(
        c.open(t0 + s(12), call("a4", "alice", voice(), Mode::Prepaid)),
        Err(CreditError::AlreadyOpen("a4".into()))
    );
    // The billing system says bob is exhausted: cut now.
    assert_eq!(c.exhausted(t0 + s(13), "bob"), 1);
    let ev = drain(&mut c);
    assert!(matches!(&ev[0], CreditEvent::Cut(cut) if cut.reason == CutReason::CreditExhausted));
    // A denial saying "blocked" cuts that call at once.
    c.on_grant(
        t0 + s(14),
        r,
        GrantAnswer::Denied(DenyReason::AccountBlocked),
    );
    let ev = drain(&mut c);
    assert!(
        matches!(&ev[0], CreditEvent::Cut(cut) if cut.reason == CutReason::AccountBlocked && cut.charge == Money(0))
    );
    assert!(c.is_empty());
    assert_eq!(CutReason::AccountBlocked.end_reason().as_str(), "operator");
}

#[test]
fn postpaid_calls_are_rated_at_the_end() {
    let t0 = Instant::now();
    let mut l = MemoryLedger::new();
    l.put_tariff(&combo()).unwrap();
    l.put_account(
        "corp",
        &AccountSpec {
            balance: 0,
            tariff: "combo".into(),
            mode: Mode::Postpaid,
        },
    )
    .unwrap();
    let mut c = cc(UnreachablePolicy::FailClosed);
    c.open(t0, call("p1", "corp", combo(), Mode::Postpaid))
        .unwrap();
    assert!(drain(&mut c).is_empty(), "no reservation");
    assert_eq!(c.poll_timeout(), None, "no deadline");
    // The worked example: 90 s of G.711 both ways, 1 548 000 bytes → 10 + 75 + 4644.
    c.on_usage(t0 + s(60), "p1", 1_000_000);
    c.on_usage(t0 + s(90), "p1", 1_548_000);
    assert_eq!(c.session("p1", t0 + s(90)).unwrap().charge, Money(4729));
    assert_eq!(c.end(t0 + s(90), "p1"), Some(Money(4729)));
    let served = serve(&mut c, &mut l, t0 + s(90));
    let u = usage(&served.events[0]);
    assert_eq!(
        (
            u.seconds, u.bytes, u.amount, u.released, u.charge, u.is_final, u.mode
        ),
        (
            90,
            1_548_000,
            Money(4729),
            Money(0),
            Money(4729),
            true,
            Mode::Postpaid
        )
    );
    assert_eq!(l.account("corp").unwrap().balance, Money(-4729));
}

#[test]
fn volume_slices_renew_on_bytes_and_cut_when_the_bytes_are_used() {
    let t0 = Instant::now();
    let mut c = cc(UnreachablePolicy::FailClosed);
    c.open(t0, call("v1", "alice", combo(), Mode::Prepaid))
        .unwrap();
    let r = one_reserve(&mut c);
    // 30 s and 1 MB: 10 + 50 + 1000 KB × 3.
    assert_eq!((r.seconds, r.bytes, r.amount), (30, 1_000_000, Money(3060)));
    c.on_grant(
        t0,
        r.request_id,
        GrantAnswer::Granted(Granted {
            seconds: 30,
            bytes: 1_000_000,
            amount: Money(3060),
        }),
    );
    c.on_usage(t0 + s(5), "v1", 799_999);
    assert!(drain(&mut c).is_empty());
    // 80 % of the bytes: report and renew, long before 80 % of the time.
    c.on_usage(t0 + s(6), "v1", 800_000);
    let ev = drain(&mut c);
    assert_eq!(usage(&ev[0]).bytes, 800_000);
    let CreditEvent::Reserve(r2) = &ev[1] else {
        panic!("{ev:?}")
    };
    assert_eq!(r2.amount, Money(3000));
    c.on_grant(
        t0 + s(6),
        r2.request_id,
        GrantAnswer::Granted(Granted {
            seconds: 30,
            bytes: 1_000_000,
            amount: Money(3000),
        }),
    );
    // The byte horizon (2 MB) is reached with a renewal out: the cut waits for its answer.
    c.on_usage(t0 + s(8), "v1", 2_100_000);
    let ev = drain(&mut c);
    let CreditEvent::Reserve(r3) = &ev[1] else {
        panic!("{ev:?}")
    };
    assert!(!ev.iter().any(|e| matches!(e, CreditEvent::Cut(_))));
    c.on_grant(
        t0 + s(8),
        r3.request_id,
        GrantAnswer::Denied(DenyReason::InsufficientCredit),
    );
    let ev = drain(&mut c);
    let CreditEvent::Cut(cut) = &ev[0] else {
        panic!("{ev:?}")
    };
    // Billed: the 2 MB granted (not the 2.1 MB seen), 60 s block, fee.
    assert_eq!(cut.charge, Money(10 + 50 + 6000));
    let u = usage(&ev[1]);
    assert_eq!(u.charge, Money(6060));
}

#[test]
fn the_first_slice_denied_cuts_at_once_and_costs_nothing() {
    let t0 = Instant::now();
    let mut l = MemoryLedger::new();
    l.put_tariff(&voice()).unwrap();
    l.put_account(
        "broke",
        &AccountSpec {
            balance: 0,
            tariff: "voice".into(),
            mode: Mode::Prepaid,
        },
    )
    .unwrap();
    let mut c = cc(UnreachablePolicy::FailClosed);
    c.open(t0, call("c1", "broke", voice(), Mode::Prepaid))
        .unwrap();
    let ev = serve(&mut c, &mut l, t0).events;
    assert!(
        matches!(&ev[1], CreditEvent::Cut(cut) if cut.reason == CutReason::CreditExhausted && cut.charge == Money(0))
    );
    assert!(usage(&ev[2]).is_final);
    // Credit for less than the fee and the initial block buys nothing either.
    l.topup("broke", Money(59)).unwrap();
    c.open(t0, call("c2", "broke", voice(), Mode::Prepaid))
        .unwrap();
    let ev = serve(&mut c, &mut l, t0).events;
    assert!(matches!(&ev[1], CreditEvent::Cut(_)), "{ev:?}");
    let a = l.account("broke").unwrap();
    assert_eq!(
        (a.balance, a.reserved),
        (Money(59), Money(0)),
        "the 59 reserved is released"
    );
    // Unknown accounts are denied too.
    c.open(t0, call("c3", "ghost", voice(), Mode::Prepaid))
        .unwrap();
    let ev = serve(&mut c, &mut l, t0).events;
    assert!(matches!(&ev[1], CreditEvent::Cut(_)));
}

#[test]
fn billing_unreachable_fail_closed() {
    let t0 = Instant::now();
    let mut c = cc(UnreachablePolicy::FailClosed);
    // The first request times out: the call ends then, free.
    c.open(t0, call("c0", "alice", voice(), Mode::Prepaid))
        .unwrap();
    let r0 = one_reserve(&mut c);
    assert_eq!(c.poll_timeout(), Some(t0 + s(2)));
    c.handle_timeout(t0 + s(2));
    let ev = drain(&mut c);
    assert!(
        matches!(&ev[0], CreditEvent::Cut(cut) if cut.reason == CutReason::BillingUnavailable && cut.charge == Money(0))
    );
    c.on_grant(t0 + s(3), r0.request_id, grant(30, 60));
    assert_eq!(c.counters().stale_answers, 1, "a late answer is ignored");

    // A renewal times out: the call ends when its current slice does.
    let t1 = t0 + s(100);
    c.open(t1, call("c1", "alice", voice(), Mode::Prepaid))
        .unwrap();
    let r = one_reserve(&mut c);
    c.on_grant(t1, r.request_id, grant(30, 60));
    c.handle_timeout(t1 + s(24));
    assert_eq!(drain(&mut c).len(), 2);
    assert_eq!(c.poll_timeout(), Some(t1 + s(26)));
    c.handle_timeout(t1 + s(26));
    assert!(drain(&mut c).is_empty());
    assert_eq!(
        c.session("c1", t1 + s(26)).unwrap().state,
        "billing-unreachable"
    );
    assert_eq!(c.poll_timeout(), Some(t1 + s(30)));
    c.handle_timeout(t1 + s(30));
    let ev = drain(&mut c);
    assert!(
        matches!(&ev[0], CreditEvent::Cut(cut) if cut.reason == CutReason::BillingUnavailable && cut.charge == Money(60))
    );

    // Disconnected: no request goes out; a new call ends at once, a running one at its slice end.
    let t2 = t0 + s(200);
    c.open(t2, call("c2", "alice", voice(), Mode::Prepaid))
        .unwrap();
    let r = one_reserve(&mut c);
    c.on_grant(t2, r.request_id, grant(30, 60));
    c.set_connected(t2 + s(10), false);
    c.open(t2 + s(11), call("c3", "alice", voice(), Mode::Prepaid))
        .unwrap();
    let ev = drain(&mut c);
    assert!(matches!(&ev[0], CreditEvent::Cut(cut) if cut.call_id == "c3"));
    c.handle_timeout(t2 + s(24));
    assert!(
        drain(&mut c).is_empty(),
        "nothing is sent while disconnected"
    );
    c.handle_timeout(t2 + s(30));
    let ev = drain(&mut c);
    assert!(
        matches!(&ev[0], CreditEvent::Cut(cut) if cut.call_id == "c2" && cut.reason == CutReason::BillingUnavailable)
    );
    let k = c.counters();
    assert_eq!(
        (k.request_timeouts, k.outages, k.cuts_billing_unavailable),
        (2, 1, 4)
    );
    assert_eq!(k.provisional_grants, 0);
    assert!(k.unreachable_holds >= 3);
}

#[test]
fn billing_unreachable_fail_open_for_n_seconds() {
    let t0 = Instant::now();
    let mut c = cc(UnreachablePolicy::FailOpen { max: s(45) });
    c.open(t0, call("c1", "alice", voice(), Mode::Prepaid))
        .unwrap();
    let r = one_reserve(&mut c);
    c.on_grant(t0, r.request_id, grant(30, 60));
    // The outage starts at 10 s: provisional credit until 55 s at most.
    c.set_connected(t0 + s(10), false);
    assert_eq!(c.outage_since(), Some(t0 + s(10)));
    // A call answered during the outage runs on a provisional first slice.
    c.open(t0 + s(20), call("c2", "alice", voice(), Mode::Prepaid))
        .unwrap();
    assert!(
        drain(&mut c).is_empty(),
        "no request is sent while disconnected"
    );
    assert!(c.session("c2", t0 + s(20)).unwrap().provisional);
    c.handle_timeout(t0 + s(24));
    assert!(drain(&mut c).is_empty());
    let v = c.session("c1", t0 + s(24)).unwrap();
    assert_eq!(
        (v.granted_ms, v.provisional),
        (55_000, true),
        "capped at the outage budget"
    );
    // No more provisional credit after 55 s: both calls end exactly then.
    let mut cuts = Vec::new();
    while let Some(t) = c.poll_timeout() {
        c.handle_timeout(t);
        for e in drain(&mut c) {
            if let CreditEvent::Cut(cut) = e {
                cuts.push((cut.call_id, cut.reason, t, cut.charge));
            }
        }
    }
    assert_eq!(
        cuts,
        vec![
            (
                "c1".into(),
                CutReason::BillingUnavailable,
                t0 + s(55),
                Money(60)
            ),
            (
                "c2".into(),
                CutReason::BillingUnavailable,
                t0 + s(55),
                Money(60)
            ),
        ]
    );
    let k = c.counters();
    assert!(k.provisional_grants >= 2);
    assert_eq!(k.provisional_ms, 25_000 + 35_000);

    // Reconnected during the outage: the call asks for a real slice at once, with the usage.
    let mut c = cc(UnreachablePolicy::FailOpen { max: s(45) });
    c.open(t0, call("c1", "alice", voice(), Mode::Prepaid))
        .unwrap();
    let r = one_reserve(&mut c);
    c.on_grant(t0, r.request_id, grant(30, 60));
    c.set_connected(t0 + s(10), false);
    c.handle_timeout(t0 + s(24));
    c.set_connected(t0 + s(40), true);
    let ev = drain(&mut c);
    assert_eq!(usage(&ev[0]).seconds, 40);
    let CreditEvent::Reserve(r2) = &ev[1] else {
        panic!("{ev:?}")
    };
    c.on_grant(t0 + s(40), r2.request_id, grant(30, r2.amount.0));
    let v = c.session("c1", t0 + s(40)).unwrap();
    assert_eq!(
        (v.granted_ms, v.provisional, v.state),
        (85_000, false, "granted")
    );
    c.handle_timeout(t0 + s(55));
    assert!(
        !drain(&mut c)
            .iter()
            .any(|e| matches!(e, CreditEvent::Cut(_)))
    );

    // Request timeouts alone (still "connected") also fall back to provisional slices.
    let mut c = cc(UnreachablePolicy::FailOpen { max: s(45) });
    c.open(t0, call("c1", "alice", voice(), Mode::Prepaid))
        .unwrap();
    drain(&mut c);
    c.handle_timeout(t0 + s(2));
    assert!(drain(&mut c).is_empty());
    let v = c.session("c1", t0 + s(2)).unwrap();
    assert_eq!((v.granted_ms, v.provisional), (30_000, true));
    assert_eq!(c.counters().request_timeouts, 1);
    // At 24 s the renewal goes out for real (connected), and is answered: the outage is over.
    c.handle_timeout(t0 + s(24));
    let ev = drain(&mut c);
    let CreditEvent::Reserve(r) = &ev[1] else {
        panic!("{ev:?}")
    };
    c.on_grant(t0 + s(24), r.request_id, grant(30, 60));
    assert_eq!(c.outage_since(), None);
    assert_eq!(c.end(t0 + s(50), "c1"), Some(Money(60)));
}

#[test]
fn the_owner_can_fail_a_request_at_once() {
    let t0 = Instant::now();
    let mut c = cc(UnreachablePolicy::FailClosed);
    c.open(t0, call("c1", "alice", voice(), Mode::Prepaid))
        .unwrap();
    let r = one_reserve(&mut c);
    c.on_request_failed(t0 + ms(1), r.request_id);
    let ev = drain(&mut c);
    assert!(matches!(&ev[0], CreditEvent::Cut(cut) if cut.reason == CutReason::BillingUnavailable));
    assert_eq!(c.counters().requests_failed, 1);
}

#[test]
fn end_releases_the_reservation_and_reports_the_charge() {
    let t0 = Instant::now();
    let mut c = cc(UnreachablePolicy::FailClosed);
    c.open(t0, call("c1", "alice", voice(), Mode::Prepaid))
        .unwrap();
    let r = one_reserve(&mut c);
    c.on_grant(t0, r.request_id, grant(30, 60));
    assert_eq!(c.session("c1", t0 + s(1)).unwrap().reserved, Money(60));
    assert_eq!(c.end(t0 + s(10), "c1"), Some(Money(60)));
    let ev = drain(&mut c);
    let u = usage(&ev[0]);
    assert_eq!(
        (u.seconds, u.amount, u.released, u.charge, u.is_final),
        (10, Money(60), Money(60), Money(60), true)
    );
    assert_eq!(c.poll_timeout(), None);
    // Ended while a request is out: a late answer is ignored.
    c.open(t0, call("c2", "alice", voice(), Mode::Prepaid))
        .unwrap();
    let r = one_reserve(&mut c);
    assert_eq!(c.end(t0 + ms(100), "c2"), Some(Money(0)));
    drain(&mut c);
    c.on_grant(t0 + ms(200), r.request_id, grant(30, 60));
    assert!(drain(&mut c).is_empty());
    c.on_grant_amount(t0 + ms(200), RequestId(999), Money(5));
    assert_eq!(c.counters().stale_answers, 2);
    c.on_usage(t0, "nope", 5);
    assert_eq!(c.end(t0, "nope"), None);
}

#[test]
fn timers_of_many_calls_fire_in_order() {
    let t0 = Instant::now();
    let mut c = cc(UnreachablePolicy::FailClosed);
    for (i, id) in ["late", "early"].iter().enumerate() {
        let at = t0 + s(10 * (1 - i as u64));
        c.open(at, call(id, "alice", voice(), Mode::Prepaid))
            .unwrap();
        let r = one_reserve(&mut c);
        c.on_grant(at, r.request_id, grant(30, 60));
    }
    assert_eq!(
        c.poll_timeout(),
        Some(t0 + s(24)),
        "the early call renews first"
    );
    c.handle_timeout(t0 + s(24));
    let ev = drain(&mut c);
    assert!(matches!(&ev[1], CreditEvent::Reserve(r) if r.call_id == "early"));
    assert_eq!(
        c.poll_timeout(),
        Some(t0 + s(26)),
        "early's request timeout"
    );
    // Both due at once are both handled: early's request timed out (fail closed) and its
    // slice is over; late's renewal is due.
    c.handle_timeout(t0 + s(34));
    let ids: Vec<String> = drain(&mut c)
        .into_iter()
        .filter_map(|e| match e {
            CreditEvent::Reserve(r) => Some(r.call_id),
            CreditEvent::Cut(cut) => Some(format!("cut:{}", cut.call_id)),
            _ => None,
        })
        .collect();
    assert_eq!(ids, vec!["cut:early".to_string(), "late".to_string()]);
}

#[test]
fn bad_configurations_are_refused() {
    for bad in [
        CreditConfig {
            slice_seconds: 0,
            ..config(UnreachablePolicy::FailClosed)
        },
        CreditConfig {
            renew_at_percent: 100,
            ..config(UnreachablePolicy::FailClosed)
        },
        CreditConfig {
            renew_at_percent: 0,
            ..config(UnreachablePolicy::FailClosed)
        },
        CreditConfig {
            slice_bytes: 0,
            ..config(UnreachablePolicy::FailClosed)
        },
        CreditConfig {
            request_timeout: Duration::ZERO,
            ..config(UnreachablePolicy::FailClosed)
        },
    ] {
        assert!(matches!(
            CreditControl::new(bad),
            Err(CreditError::BadConfig(_))
        ));
    }
    // Absurd grants and policies do not overflow Instant arithmetic.
    let t0 = Instant::now();
    let mut c = cc(UnreachablePolicy::FailOpen { max: Duration::MAX });
    c.open(t0, call("c1", "alice", voice(), Mode::Prepaid))
        .unwrap();
    let r = one_reserve(&mut c);
    c.on_grant(t0, r.request_id, grant(u64::MAX, i64::MAX));
    c.handle_timeout(t0 + s(1));
    c.set_connected(t0 + s(2), false);
    assert_eq!(c.end(t0 + s(3), "c1"), Some(Money(60)));
}

#[test]
fn a_volume_tariff_grant_without_bytes_is_a_denial() {
    let t0 = Instant::now();
    let mut c = cc(UnreachablePolicy::FailClosed);
    c.open(t0, call("v1", "alice", combo(), Mode::Prepaid))
        .unwrap();
    let r = one_reserve(&mut c);
    c.on_grant(t0, r.request_id, grant(30, 60));
    let ev = drain(&mut c);
    assert!(matches!(&ev[0], CreditEvent::Cut(cut) if cut.reason == CutReason::CreditExhausted));
    assert_eq!(c.counters().denials, 1);
    // The reserved amount is still released at the end.
    assert_eq!(usage(&ev[1]).released, Money(60));
}

#[test]
fn a_call_ended_before_its_request_was_served_leaves_nothing_reserved() {
    let t0 = Instant::now();
    let mut l = MemoryLedger::new();
    l.put_tariff(&voice()).unwrap();
    l.put_account(
        "alice",
        &AccountSpec {
            balance: 100,
            tariff: "voice".into(),
            mode: Mode::Prepaid,
        },
    )
    .unwrap();
    let mut c = cc(UnreachablePolicy::FailClosed);
    c.open(t0, call("c1", "alice", voice(), Mode::Prepaid))
        .unwrap();
    // The owner ends the call before it serves the queued Reserve.
    assert_eq!(c.end(t0 + ms(3), "c1"), Some(Money(0)));
    let served = serve(&mut c, &mut l, t0 + ms(3));
    assert!(served.errors.is_empty());
    let a = l.account("alice").unwrap();
    assert_eq!((a.balance, a.reserved), (Money(100), Money(0)));
    assert_eq!(c.counters().stale_answers, 1);
}
