//! The SQLite ledger (the default): normally the same file as the CDRs, its own connection.
//! Mutations run in `BEGIN IMMEDIATE` transactions, so the CDR writer's connection and
//! operators' SQL never interleave with a half-applied change.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension as _, Row, Transaction, TransactionBehavior, params};

use super::{
    Ledger, LedgerEntry, LedgerError, MIGRATION_BASE, MIGRATION_END, MIGRATIONS, entry_for,
    is_noop, latest_version, now_ms, u32_col,
};
use crate::billing::{
    Account, AccountSpec, Money, Tariff,
    account::{Change, check_id},
};

const ACCOUNT_COLUMNS: &str = "id, balance, reserved, tariff, mode, blocked, tokens";
const ENTRY_COLUMNS: &str = "id, at_ms, account, kind, amount, reserved_delta, tokens_delta, \
    balance_after, reserved_after, tokens_after, call_id, note";

/// Billing data in a SQLite file.
pub struct SqliteLedger {
    conn: Connection,
}

impl SqliteLedger {
    /// Opens (creating if needed) the database at `path` and applies pending billing
    /// migrations. Use the CDR database's path: both share one file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, LedgerError> {
        let path = path.as_ref();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| LedgerError::Location(format!("{}: {e}", dir.display())))?;
        }
        Self::init(Connection::open(path)?)
    }

    /// An in-memory database (tests).
    pub fn in_memory() -> Result<Self, LedgerError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(mut conn: Connection) -> Result<Self, LedgerError> {
        // Same settings as the CDR store: WAL so readers never block the writer.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate(&mut conn)?;
        Ok(Self { conn })
    }

    /// The billing schema version in effect (0 if none).
    pub fn schema_version(&self) -> Result<i64, LedgerError> {
        Ok(self.conn.query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations
             WHERE version >= ?1 AND version < ?2",
            params![MIGRATION_BASE, MIGRATION_END],
            |r| r.get(0),
        )?)
    }

    fn tx(&mut self) -> Result<Transaction<'_>, LedgerError> {
        Ok(self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?)
    }

    /// Loads, applies `rule`, stores and journals in one transaction; a refused rule rolls
    /// back (nothing written).
    fn mutate<R>(
        &mut self,
        id: &str,
        call_id: Option<&str>,
        rule: impl FnOnce(&mut Account) -> Result<(R, Change), LedgerError>,
    ) -> Result<(R, Account), LedgerError> {
        let tx = self.tx()?;
        let mut account =
            load_account(&tx, id)?.ok_or_else(|| LedgerError::NoSuchAccount(id.to_string()))?;
        let (r, change) = rule(&mut account)?;
        if !is_noop(&change) {
            let now = now_ms();
            store_account(&tx, &account, now)?;
            append(&tx, &entry_for(&account, &change, call_id, now))?;
        }
        tx.commit()?;
        Ok((r, account))
    }
}

fn migrate(conn: &mut Connection) -> Result<(), LedgerError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)",
    )?;
    // IMMEDIATE: a second process opening the same file waits instead of migrating twice.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let current: i64 = tx.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_migrations
         WHERE version >= ?1 AND version < ?2",
        params![MIGRATION_BASE, MIGRATION_END],
        |r| r.get(0),
    )?;
    let known = latest_version();
    if current > known {
        return Err(LedgerError::SchemaTooNew {
            found: current,
            known,
        });
    }
    for m in MIGRATIONS.iter().filter(|m| m.version > current) {
        tx.execute_batch(&m.common.replace(
            "BIGSERIAL_OR_INTEGER_PK",
            "INTEGER PRIMARY KEY AUTOINCREMENT",
        ))?;
        tx.execute_batch(m.sqlite)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, strftime('%s','now'))",
            params![m.version],
        )?;
    }
    tx.commit()?;
    Ok(())
}

fn account_from_row(r: &Row<'_>) -> Result<Account, LedgerError> {
    let mode: String = r.get(4)?;
    Ok(Account {
        id: r.get(0)?,
        balance: Money(r.get(1)?),
        reserved: Money(r.get(2)?),
        tariff: r.get(3)?,
        mode: mode.parse()?,
        blocked: r.get(5)?,
        tokens: u32_col("tokens", r.get(6)?)?,
    })
}

fn load_account(tx: &Connection, id: &str) -> Result<Option<Account>, LedgerError> {
    let mut stmt = tx.prepare_cached(&format!(
        "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = ?1"
    ))?;
    let mut rows = stmt.query(params![id])?;
    match rows.next()? {
        Some(r) => Ok(Some(account_from_row(r)?)),
        None => Ok(None),
    }
}

fn store_account(tx: &Connection, a: &Account, now: i64) -> Result<(), LedgerError> {
    tx.prepare_cached(
        "UPDATE accounts SET balance = ?2, reserved = ?3, tariff = ?4, mode = ?5, blocked = ?6,
            tokens = ?7, updated_at = ?8 WHERE id = ?1",
    )?
    .execute(params![
        a.id,
        a.balance.0,
        a.reserved.0,
        a.tariff,
        a.mode.as_str(),
        a.blocked,
        i64::from(a.tokens),
        now
    ])?;
    Ok(())
}

fn append(tx: &Connection, e: &LedgerEntry) -> Result<(), LedgerError> {
    tx.prepare_cached(
        "INSERT INTO ledger_entries (at_ms, account, kind, amount, reserved_delta, tokens_delta,
            balance_after, reserved_after, tokens_after, call_id, note)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?
    .execute(params![
        e.at_ms,
        e.account,
        e.kind.as_str(),
        e.amount.0,
        e.reserved_delta.0,
        e.tokens_delta,
        e.balance_after.0,
        e.reserved_after.0,
        i64::from(e.tokens_after),
        e.call_id,
        e.note
    ])?;
    Ok(())
}

fn tariff_exists(tx: &Connection, id: &str) -> Result<bool, LedgerError> {
    Ok(tx
        .query_row("SELECT 1 FROM tariffs WHERE id = ?1", params![id], |_| {
            Ok(())
        })
        .optional()?
        .is_some())
}

impl Ledger for SqliteLedger {
    fn put_tariff(&mut self, t: &Tariff) -> Result<(), LedgerError> {
        t.validate()?;
        self.conn.execute(
            "INSERT INTO tariffs (id, per_minute, per_kilobyte, increment_s, initial_increment_s,
                connection_fee, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (id) DO UPDATE SET per_minute = excluded.per_minute,
                per_kilobyte = excluded.per_kilobyte, increment_s = excluded.increment_s,
                initial_increment_s = excluded.initial_increment_s,
                connection_fee = excluded.connection_fee, updated_at = excluded.updated_at",
            params![
                t.id,
                t.per_minute.0,
                t.per_kilobyte.0,
                t.increment_s,
                t.initial_increment_s,
                t.connection_fee.0,
                now_ms()
            ],
        )?;
        Ok(())
    }

    fn tariff(&mut self, id: &str) -> Result<Tariff, LedgerError> {
        let row = self
            .conn
            .query_row(
                "SELECT id, per_minute, per_kilobyte, increment_s, initial_increment_s,
                    connection_fee FROM tariffs WHERE id = ?1",
                params![id],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, i64>(4)?,
                        r.get::<_, i64>(5)?,
                    ))
                },
            )
            .optional()?
            .ok_or_else(|| LedgerError::NoSuchTariff(id.to_string()))?;
        Ok(Tariff {
            id: row.0,
            per_minute: Money(row.1),
            per_kilobyte: Money(row.2),
            increment_s: u32_col("increment_s", row.3)?,
            initial_increment_s: u32_col("initial_increment_s", row.4)?,
            connection_fee: Money(row.5),
        })
    }

    fn put_account(&mut self, id: &str, spec: &AccountSpec) -> Result<Account, LedgerError> {
        check_id(id)?;
        let tx = self.tx()?;
        if !tariff_exists(&tx, &spec.tariff)? {
            return Err(LedgerError::NoSuchTariff(spec.tariff.clone()));
        }
        let now = now_ms();
        let (account, change) = match load_account(&tx, id)? {
            Some(mut a) => {
                let change = a.apply_update(spec);
                store_account(&tx, &a, now)?;
                (a, change)
            }
            None => {
                let a = Account::from_spec(id, spec);
                tx.execute(
                    "INSERT INTO accounts (id, balance, reserved, tariff, mode, blocked, tokens,
                        created_at, updated_at) VALUES (?1, ?2, 0, ?3, ?4, FALSE, 0, ?5, ?5)",
                    params![a.id, a.balance.0, a.tariff, a.mode.as_str(), now],
                )?;
                let change = a.opened();
                (a, change)
            }
        };
        append(&tx, &entry_for(&account, &change, None, now))?;
        tx.commit()?;
        Ok(account)
    }

    fn account(&mut self, id: &str) -> Result<Account, LedgerError> {
        load_account(&self.conn, id)?.ok_or_else(|| LedgerError::NoSuchAccount(id.to_string()))
    }

    super::account_operations!();

    fn entries(&mut self, id: &str, limit: usize) -> Result<Vec<LedgerEntry>, LedgerError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {ENTRY_COLUMNS} FROM (SELECT {ENTRY_COLUMNS} FROM ledger_entries
               WHERE account = ?1 ORDER BY id DESC LIMIT ?2) ORDER BY id"
        ))?;
        let mut rows = stmt.query(params![id, limit])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let kind: String = r.get(3)?;
            out.push(LedgerEntry {
                id: r.get(0)?,
                at_ms: r.get(1)?,
                account: r.get(2)?,
                kind: kind.parse()?,
                amount: Money(r.get(4)?),
                reserved_delta: Money(r.get(5)?),
                tokens_delta: r.get(6)?,
                balance_after: Money(r.get(7)?),
                reserved_after: Money(r.get(8)?),
                tokens_after: u32_col("tokens_after", r.get(9)?)?,
                call_id: r.get(10)?,
                note: r.get(11)?,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::billing::{Mode, tariff::tests::combo};

    #[test]
    fn sqlite_in_memory_conformance() {
        super::super::tests::conformance(&mut SqliteLedger::in_memory().unwrap());
    }

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("rtpedge-ledger-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn sqlite_file_conformance_persistence_and_migrations_once() {
        let dir = temp_dir("file");
        let path = dir.join("sub/cdr.sqlite");
        {
            let mut l = SqliteLedger::open(&path).unwrap();
            assert_eq!(l.schema_version().unwrap(), 100);
            super::super::tests::conformance(&mut l);
        }
        let mut l = SqliteLedger::open(&path).unwrap();
        assert_eq!(
            l.schema_version().unwrap(),
            100,
            "migrations are not re-run"
        );
        let a = l.account("alice").unwrap();
        assert_eq!((a.balance, a.tokens), (Money(470), 0));
        assert_eq!(l.entries("alice", 1000).unwrap().len(), 13);
        drop(l);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn journal_is_append_only_and_queryable_with_plain_sql() {
        let dir = temp_dir("audit");
        let path = dir.join("cdr.sqlite");
        let mut l = SqliteLedger::open(&path).unwrap();
        l.put_tariff(&combo()).unwrap();
        l.put_account(
            "alice",
            &AccountSpec {
                balance: 100,
                tariff: "combo".into(),
                mode: Mode::Prepaid,
            },
        )
        .unwrap();
        l.reserve("alice", Money(40), "call-1").unwrap();
        let conn = Connection::open(&path).unwrap();
        let (kind, amount, call): (String, i64, Option<String>) = conn
            .query_row(
                "SELECT kind, reserved_delta, call_id FROM ledger_entries ORDER BY id DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!(
            (kind.as_str(), amount, call.as_deref()),
            ("reserve", 40, Some("call-1"))
        );
        let upd = conn.execute("UPDATE ledger_entries SET amount = 1000000", []);
        assert!(upd.is_err(), "journal rows cannot be rewritten");
        assert!(conn.execute("DELETE FROM ledger_entries", []).is_err());
        // A hand-edited, out-of-range row is reported, not trusted.
        assert!(
            conn.execute("UPDATE accounts SET mode = 'gold'", [])
                .is_err(),
            "CHECK constraint"
        );
        conn.execute("UPDATE accounts SET tokens = 5000000000", [])
            .unwrap();
        drop(conn);
        assert!(matches!(l.account("alice"), Err(LedgerError::Corrupt(_))));
        drop(l);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_newer_billing_schema_is_refused_and_cdr_versions_are_ignored() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL);
             INSERT INTO schema_migrations VALUES (1, 0), (2, 0), (199, 0);",
        )
        .unwrap();
        assert!(matches!(
            SqliteLedger::init(conn),
            Err(LedgerError::SchemaTooNew {
                found: 199,
                known: 100
            })
        ));
        // CDR versions (below 100) do not count as billing's.
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL);
             INSERT INTO schema_migrations VALUES (1, 0), (7, 0);",
        )
        .unwrap();
        let l = SqliteLedger::init(conn).unwrap();
        assert_eq!(l.schema_version().unwrap(), 100);
    }
}
