//! The PostgreSQL CDR store against a real server: a throwaway cluster this test creates in a
//! temporary directory (Unix socket only, no TCP), so it never touches a system instance.
//! Needs the Debian `postgresql` package (scripts/setup installs it) and root (the cluster runs
//! as the `postgres` user). Fails under `CI` if either is missing; skips loudly elsewhere.

use std::path::Path;

use rtpedge::{
    engine::{Cdr, EndReason},
    store::{CdrStore, PostgresStore},
};

#[path = "support/pg.rs"]
mod pg;

use pg::Cluster;

fn skip_or_fail(why: &str) {
    pg::skip_or_fail("postgres_store", why);
}

fn cdr(call_id: &str) -> Cdr {
    Cdr {
        call_id: call_id.into(),
        from_tag: "f".into(),
        to_tag: Some("t".into()),
        account: None,
        offer_at: 1_000,
        answer_at: Some(2_000),
        end_at: None,
        end_reason: None,
        duration_ms: 0,
        packets_ab: 0,
        bytes_ab: 0,
        packets_ba: 0,
        bytes_ba: 0,
        lost_ab: 0,
        lost_ba: 0,
        jitter_ab_us: 0,
        jitter_ba_us: 0,
        dscp: Some(46),
        dropped_xdp: 0,
        charge: None,
        flags: Vec::new(),
        services: Vec::new(),
    }
}

#[test]
fn postgres_store_write_ahead_restart_and_shared_migrations() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        skip_or_fail("needs root to run a throwaway cluster as the postgres user");
        return;
    }
    let Some(bin) = pg::pg_bin() else {
        skip_or_fail("PostgreSQL server binaries not installed");
        return;
    };
    assert!(Path::new("/usr/sbin/runuser").exists() || Path::new("/sbin/runuser").exists());
    let cluster = Cluster::start(bin, "pg", 20_000);
    let mut a = PostgresStore::connect(&cluster.url()).expect("connect + migrate");
    // A second host starting against the same database migrates nothing twice.
    let mut b = PostgresStore::connect(&cluster.url()).expect("second host");
    assert_eq!(a.schema_version().unwrap(), 2);
    assert_eq!(b.schema_version().unwrap(), 2);

    let mut c = cdr("pg-1");
    a.upsert(&c).unwrap();
    c.end_at = Some(32_000);
    c.end_reason = Some(EndReason::MediaTimeout);
    c.duration_ms = 30_000;
    c.packets_ab = 1500;
    c.lost_ab = 3;
    c.dropped_xdp = 12;
    c.charge = Some(250);
    c.flags = vec!["call-rate".into()];
    b.upsert(&c).unwrap();
    assert_eq!(a.by_call_id("pg-1").unwrap(), vec![c]);

    a.upsert(&cdr("pg-open")).unwrap();
    assert_eq!(b.close_open_rows(10_000).unwrap(), 1);
    let r = &a.by_call_id("pg-open").unwrap()[0];
    assert_eq!(
        (r.end_reason, r.duration_ms),
        (Some(EndReason::Restart), 8_000)
    );

    // Through the location-based opener too.
    let mut s = rtpedge::store::open(&cluster.url()).unwrap();
    assert_eq!(s.by_call_id("pg-1").unwrap().len(), 1);
}
