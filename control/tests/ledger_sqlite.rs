//! The SQLite ledger shares the CDR database file with the CDR store: both migrate the same
//! `schema_migrations` table (CDRs below 100, billing 100 to 199) and write through their own
//! connections.

use rtpedge::{
    billing::{AccountSpec, Ledger, Mode, Money, SqliteLedger, Tariff, TariffSpec},
    store::{CdrStore, SqliteStore},
};

fn temp_db(name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("rtpedge-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("cdr.sqlite");
    (dir, path)
}

fn seed(l: &mut dyn Ledger) {
    let spec = TariffSpec {
        per_minute: 50,
        per_kilobyte: 3,
        increment_s: 1,
        initial_increment_s: Some(60),
        connection_fee: 10,
    };
    l.put_tariff(&Tariff::from_spec("combo", &spec).unwrap())
        .unwrap();
    l.put_account(
        "alice",
        &AccountSpec {
            balance: 1000,
            tariff: "combo".into(),
            mode: Mode::Prepaid,
        },
    )
    .unwrap();
}

#[test]
fn cdr_store_first_then_ledger_share_one_file() {
    let (dir, path) = temp_db("shared-a");
    let cdrs = SqliteStore::open(&path).unwrap();
    let cdr_version = cdrs.schema_version().unwrap();
    assert!((1..100).contains(&cdr_version));
    let mut ledger = SqliteLedger::open(&path).unwrap();
    assert_eq!(ledger.schema_version().unwrap(), 100);
    seed(&mut ledger);
    assert_eq!(ledger.reserve("alice", Money(60), "c1").unwrap(), Money(60));
    drop((cdrs, ledger));
    let mut ledger = SqliteLedger::open(&path).unwrap();
    assert_eq!(ledger.account("alice").unwrap().reserved, Money(60));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The CDR store looks only at its own versions, so billing's 100+ never count as "newer".
#[test]
fn ledger_first_then_cdr_store_reopens() {
    let (dir, path) = temp_db("shared-b");
    let mut ledger = SqliteLedger::open(&path).unwrap();
    seed(&mut ledger);
    let mut cdrs =
        SqliteStore::open(&path).expect("the CDR store opens a file with billing tables");
    assert!((1..100).contains(&cdrs.schema_version().unwrap()));
    assert!(cdrs.by_call_id("none").unwrap().is_empty());
    drop(cdrs);
    SqliteStore::open(&path).expect("and reopens it");
    let mut ledger = SqliteLedger::open(&path).expect("the ledger reopens it too");
    assert_eq!(ledger.schema_version().unwrap(), 100);
    assert_eq!(ledger.account("alice").unwrap().balance, Money(1000));
    std::fs::remove_dir_all(&dir).unwrap();
}
