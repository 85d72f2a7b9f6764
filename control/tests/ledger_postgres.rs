//! The PostgreSQL ledger against a real server: a throwaway cluster in a temporary directory
//! (Unix socket only), as in `postgres_store.rs`. Needs the Debian `postgresql` package and
//! root; fails under `CI` if either is missing, skips loudly elsewhere.

use std::{
    path::PathBuf,
    process::Command,
    sync::{Arc, Barrier},
};

use rtpedge::{
    billing::{
        AccountSpec, Ledger, LedgerError, Mode, Money, PostgresLedger, Tariff, ledger::EntryKind,
    },
    store::PostgresStore,
};

fn skip_or_fail(why: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("ledger_postgres: {why} (CI must provide it: scripts/setup installs postgresql)");
    }
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr().lock(),
        "\n*** SKIPPED ledger_postgres: {why} ***\n"
    );
}

fn pg_bin() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop()
}

/// A PostgreSQL cluster in a temporary directory, stopped and removed on drop.
struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
}

impl Cluster {
    fn start(bin: PathBuf) -> Self {
        let dir = std::env::temp_dir().join(format!("rtpedge-pg-ledger-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // Another range than postgres_store.rs, so both tests can run at once.
        let port = 30_000 + (std::process::id() % 10_000) as u16;
        let as_pg = |args: &[&str]| {
            let out = Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .args(args)
                .output()
                .expect("runuser");
            assert!(
                out.status.success(),
                "{args:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        Command::new("chown")
            .args(["postgres:postgres", dir.to_str().unwrap()])
            .status()
            .unwrap();
        let data = dir.join("data");
        let initdb = bin.join("initdb");
        as_pg(&[
            initdb.to_str().unwrap(),
            "-D",
            data.to_str().unwrap(),
            "-A",
            "trust",
            "-U",
            "postgres",
        ]);
        let pg_ctl = bin.join("pg_ctl");
        let opts = format!("-p {port} -k {} -c listen_addresses=''", dir.display());
        as_pg(&[
            pg_ctl.to_str().unwrap(),
            "-D",
            data.to_str().unwrap(),
            "-o",
            &opts,
            "-w",
            "-l",
            dir.join("log").to_str().unwrap(),
            "start",
        ]);
        Cluster { dir, bin, port }
    }

    fn url(&self) -> String {
        format!(
            "postgresql:///postgres?host={}&port={}&user=postgres",
            self.dir.display(),
            self.port
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args([
                "-D",
                data.to_str().unwrap_or_default(),
                "-m",
                "immediate",
                "stop",
            ])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
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
    let Some(bin) = pg_bin() else {
        return skip_or_fail("PostgreSQL server binaries not installed");
    };
    let cluster = Cluster::start(bin);
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
