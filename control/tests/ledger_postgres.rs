//! The PostgreSQL ledger against a real server: a throwaway cluster in a temporary directory
//! (Unix socket only), as in `postgres_store.rs`. Needs the Debian `postgresql` package and
//! root; fails under `CI` if either is missing, skips loudly elsewhere.

use std::sync::{Arc, Barrier};

use rtpedge::{
    billing::{
        AccountSpec, Ledger, LedgerError, Mode, Money, PostgresLedger, Tariff, ledger::EntryKind,
    },
    store::PostgresStore,
};

#[path = "support/pg.rs"]
mod pg;

use pg::Cluster;

fn skip_or_fail(why: &str) {
    pg::skip_or_fail("ledger_postgres", why);
}

fn combo() -> Tariff {
    Tariff {
        id: "combo".into(),
        per_minute: Money(50),
        per_kilobyte: Money(3),
        increment_s: 1,
        initial_increment_s: 60,
        connection_fee: Money(10),
    }
}

fn spec(balance: i64, mode: Mode) -> AccountSpec {
    AccountSpec {
        balance,
        tariff: "combo".into(),
        mode,
    }
}

#[test]
fn postgres_ledger_rules_journal_shared_migrations_and_concurrent_hosts() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return skip_or_fail("needs root to run a throwaway cluster as the postgres user");
    }
    let Some(bin) = pg::pg_bin() else {
        return skip_or_fail("PostgreSQL server binaries not installed");
    };
    let cluster = Cluster::start(bin, "pg-ledger", 30_000);
    let url = cluster.url();

    // The CDR store and two ledger hosts share the database and its schema_migrations.
    let mut cdrs = PostgresStore::connect(&url).expect("CDR store");
    let mut a = PostgresLedger::connect(&url).expect("connect + migrate");
    let mut b = PostgresLedger::connect(&url).expect("second host");
    assert_eq!(a.schema_version().unwrap(), 100);
    assert_eq!(b.schema_version().unwrap(), 100);
    let cdr_version = cdrs.schema_version().unwrap();
    assert!((1..100).contains(&cdr_version));
    drop(cdrs);
    PostgresStore::connect(&url).expect("the CDR store reopens a database with billing tables");

    // Tariffs and accounts.
    assert!(matches!(
        a.tariff("combo"),
        Err(LedgerError::NoSuchTariff(_))
    ));
    a.put_tariff(&combo()).unwrap();
    assert_eq!(b.tariff("combo").unwrap(), combo());
    assert!(matches!(
        a.put_account(
            "alice",
            &AccountSpec {
                tariff: "nope".into(),
                ..spec(100, Mode::Prepaid)
            }
        ),
        Err(LedgerError::NoSuchTariff(_))
    ));
    a.put_account("alice", &spec(100, Mode::Prepaid)).unwrap();

    // Reserve (partial), settle, top-up, block, tokens — through either host.
    assert_eq!(a.reserve("alice", Money(70), "c1").unwrap(), Money(70));
    assert_eq!(b.reserve("alice", Money(70), "c2").unwrap(), Money(30));
    assert!(matches!(
        a.reserve("alice", Money(1), "c3"),
        Err(LedgerError::Insufficient { .. })
    ));
    let acct = b.settle("alice", "c1", Money(70), Money(61)).unwrap();
    assert_eq!((acct.balance, acct.reserved), (Money(39), Money(30)));
    assert_eq!(a.topup("alice", Money(50)).unwrap(), Money(89));
    assert!(a.block("alice").unwrap().blocked);
    assert!(matches!(
        b.reserve("alice", Money(1), "c4"),
        Err(LedgerError::Blocked(_))
    ));
    b.settle("alice", "c2", Money(30), Money(30)).unwrap();
    assert!(!b.unblock("alice").unwrap().blocked);
    assert!(matches!(
        a.take_token("alice", None),
        Err(LedgerError::NoTokens(_))
    ));
    assert_eq!(a.add_tokens("alice", 1).unwrap(), 1);
    assert_eq!(b.take_token("alice", Some("c5")).unwrap(), 0);
    let acct = a.account("alice").unwrap();
    assert_eq!(
        (acct.balance, acct.reserved, acct.tokens),
        (Money(59), Money(0), 0)
    );

    // Post-paid goes below zero.
    a.put_account("corp", &spec(0, Mode::Postpaid)).unwrap();
    assert_eq!(
        b.settle("corp", "p1", Money(0), Money(4729))
            .unwrap()
            .balance,
        Money(-4729)
    );

    // The journal.
    let entries = b.entries("alice", 100).unwrap();
    let kinds: Vec<EntryKind> = entries.iter().map(|e| e.kind).collect();
    use EntryKind as K;
    assert_eq!(
        kinds,
        vec![
            K::Open,
            K::Reserve,
            K::Reserve,
            K::Settle,
            K::Topup,
            K::Block,
            K::Settle,
            K::Unblock,
            K::TokensAdded,
            K::TokenTaken
        ]
    );
    assert_eq!(entries.iter().map(|e| e.amount).sum::<Money>(), Money(59));
    assert_eq!(entries[2].call_id.as_deref(), Some("c2"));
    assert_eq!(entries[2].note.as_deref(), Some("partial: 30 of 70"));
    assert_eq!(
        a.entries("alice", 3).unwrap(),
        entries[entries.len() - 3..].to_vec()
    );
    // Append-only: rows cannot be changed or removed with plain SQL.
    let mut raw = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    assert!(
        raw.execute("UPDATE ledger_entries SET amount = 0", &[])
            .is_err()
    );
    assert!(raw.execute("DELETE FROM ledger_entries", &[]).is_err());

    // Two hosts reserving from one account at once never grant more than the balance.
    a.put_account("shared", &spec(500, Mode::Prepaid)).unwrap();
    drop((a, b));
    let barrier = Arc::new(Barrier::new(2));
    let hosts: Vec<_> = (0..2)
        .map(|h| {
            let url = url.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut l = PostgresLedger::connect(&url).unwrap();
                barrier.wait();
                let mut granted = Money::ZERO;
                for i in 0..40 {
                    match l.reserve("shared", Money(10), &format!("h{h}-{i}")) {
                        Ok(g) => granted += g,
                        Err(LedgerError::Insufficient { .. }) => {}
                        Err(e) => panic!("{e}"),
                    }
                }
                granted
            })
        })
        .collect();
    let total: Money = hosts.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(total, Money(500));
    let mut l = rtpedge::billing::ledger::open(&url).unwrap();
    let shared = l.account("shared").unwrap();
    assert_eq!((shared.balance, shared.reserved), (Money(500), Money(500)));
    assert_eq!(l.entries("shared", 1000).unwrap().len(), 1 + 50);
}
