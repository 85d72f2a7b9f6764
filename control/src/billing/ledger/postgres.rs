//! The PostgreSQL ledger, for deployments where several hosts share accounts: every mutation
//! locks the account row (`SELECT … FOR UPDATE`) inside its transaction, so two hosts reserving
//! from one account never both spend the same credit.

use postgres::{Client, GenericClient, NoTls, Row};

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

/// Billing data in a PostgreSQL database (normally the CDR database).
pub struct PostgresLedger {
    client: Client,
}

impl PostgresLedger {
    /// Connects to `url` (`postgres://user@host/db`) and applies pending billing migrations.
    pub fn connect(url: &str) -> Result<Self, LedgerError> {
        let mut client = Client::connect(url, NoTls)?;
        migrate(&mut client)?;
        Ok(Self { client })
    }

    /// The billing schema version in effect (0 if none).
    pub fn schema_version(&mut self) -> Result<i64, LedgerError> {
        Ok(self
            .client
            .query_one(
                "SELECT COALESCE(MAX(version), 0)::BIGINT FROM schema_migrations
                 WHERE version >= $1 AND version < $2",
                &[&MIGRATION_BASE, &MIGRATION_END],
            )?
            .get(0))
    }

    /// Loads (locked), applies `rule`, stores and journals in one transaction; a refused rule
    /// rolls back.
    fn mutate<R>(
        &mut self,
        id: &str,
        call_id: Option<&str>,
        rule: impl FnOnce(&mut Account) -> Result<(R, Change), LedgerError>,
    ) -> Result<(R, Account), LedgerError> {
        let mut tx = self.client.transaction()?;
        let mut account = load_account(&mut tx, id, true)?
            .ok_or_else(|| LedgerError::NoSuchAccount(id.to_string()))?;
        let (r, change) = rule(&mut account)?;
        if !is_noop(&change) {
            let now = now_ms();
            store_account(&mut tx, &account, now)?;
            append(&mut tx, &entry_for(&account, &change, call_id, now))?;
        }
        tx.commit()?;
        Ok((r, account))
    }
}

fn migrate(client: &mut Client) -> Result<(), LedgerError> {
    client.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
    )?;
    // Hosts sharing the database may start together: serialise migrations (as the CDR store).
    let mut tx = client.transaction()?;
    tx.batch_execute("LOCK TABLE schema_migrations IN EXCLUSIVE MODE")?;
    let current: i64 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0)::BIGINT FROM schema_migrations
             WHERE version >= $1 AND version < $2",
            &[&MIGRATION_BASE, &MIGRATION_END],
        )?
        .get(0);
    let known = latest_version();
    if current > known {
        return Err(LedgerError::SchemaTooNew {
            found: current,
            known,
        });
    }
    for m in MIGRATIONS.iter().filter(|m| m.version > current) {
        tx.batch_execute(
            &m.common
                .replace("BIGSERIAL_OR_INTEGER_PK", "BIGSERIAL PRIMARY KEY"),
        )?;
        tx.batch_execute(m.postgres)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at)
             VALUES ($1, EXTRACT(EPOCH FROM now())::BIGINT)",
            &[&m.version],
        )?;
    }
    tx.commit()?;
    Ok(())
}

fn account_from_row(r: &Row) -> Result<Account, LedgerError> {
    let mode: String = r.try_get(4)?;
    Ok(Account {
        id: r.try_get(0)?,
        balance: Money(r.try_get(1)?),
        reserved: Money(r.try_get(2)?),
        tariff: r.try_get(3)?,
        mode: mode.parse()?,
        blocked: r.try_get(5)?,
        tokens: u32_col("tokens", r.try_get(6)?)?,
    })
}

fn load_account(
    c: &mut impl GenericClient,
    id: &str,
    lock: bool,
) -> Result<Option<Account>, LedgerError> {
    let sql = format!(
        "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = $1{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    c.query_opt(sql.as_str(), &[&id])?
        .as_ref()
        .map(account_from_row)
        .transpose()
}

fn store_account(c: &mut impl GenericClient, a: &Account, now: i64) -> Result<(), LedgerError> {
    c.execute(
        "UPDATE accounts SET balance = $2, reserved = $3, tariff = $4, mode = $5, blocked = $6,
            tokens = $7, updated_at = $8 WHERE id = $1",
        &[
            &a.id,
            &a.balance.0,
            &a.reserved.0,
            &a.tariff,
            &a.mode.as_str(),
            &a.blocked,
            &i64::from(a.tokens),
            &now,
        ],
    )?;
    Ok(())
}

fn append(c: &mut impl GenericClient, e: &LedgerEntry) -> Result<(), LedgerError> {
    c.execute(
        "INSERT INTO ledger_entries (at_ms, account, kind, amount, reserved_delta, tokens_delta,
            balance_after, reserved_after, tokens_after, call_id, note)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        &[
            &e.at_ms,
            &e.account,
            &e.kind.as_str(),
            &e.amount.0,
            &e.reserved_delta.0,
            &e.tokens_delta,
            &e.balance_after.0,
            &e.reserved_after.0,
            &i64::from(e.tokens_after),
            &e.call_id,
            &e.note,
        ],
    )?;
    Ok(())
}

impl Ledger for PostgresLedger {
    fn put_tariff(&mut self, t: &Tariff) -> Result<(), LedgerError> {
        t.validate()?;
        self.client.execute(
            "INSERT INTO tariffs (id, per_minute, per_kilobyte, increment_s, initial_increment_s,
                connection_fee, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (id) DO UPDATE SET per_minute = excluded.per_minute,
                per_kilobyte = excluded.per_kilobyte, increment_s = excluded.increment_s,
                initial_increment_s = excluded.initial_increment_s,
                connection_fee = excluded.connection_fee, updated_at = excluded.updated_at",
            &[
                &t.id,
                &t.per_minute.0,
                &t.per_kilobyte.0,
                &i64::from(t.increment_s),
                &i64::from(t.initial_increment_s),
                &t.connection_fee.0,
                &now_ms(),
            ],
        )?;
        Ok(())
    }

    fn tariff(&mut self, id: &str) -> Result<Tariff, LedgerError> {
        let r = self
            .client
            .query_opt(
                "SELECT id, per_minute, per_kilobyte, increment_s, initial_increment_s,
                    connection_fee FROM tariffs WHERE id = $1",
                &[&id],
            )?
            .ok_or_else(|| LedgerError::NoSuchTariff(id.to_string()))?;
        Ok(Tariff {
            id: r.try_get(0)?,
            per_minute: Money(r.try_get(1)?),
            per_kilobyte: Money(r.try_get(2)?),
            increment_s: u32_col("increment_s", r.try_get(3)?)?,
            initial_increment_s: u32_col("initial_increment_s", r.try_get(4)?)?,
            connection_fee: Money(r.try_get(5)?),
        })
    }

    fn put_account(&mut self, id: &str, spec: &AccountSpec) -> Result<Account, LedgerError> {
        check_id(id)?;
        let mut tx = self.client.transaction()?;
        // FOR SHARE: the tariff cannot change identity under us; it is only read.
        if tx
            .query_opt(
                "SELECT 1 FROM tariffs WHERE id = $1 FOR SHARE",
                &[&spec.tariff],
            )?
            .is_none()
        {
            return Err(LedgerError::NoSuchTariff(spec.tariff.clone()));
        }
        let now = now_ms();
        let (account, change) = match load_account(&mut tx, id, true)? {
            Some(mut a) => {
                let change = a.apply_update(spec);
                store_account(&mut tx, &a, now)?;
                (a, change)
            }
            None => {
                let a = Account::from_spec(id, spec);
                // Two hosts creating the same account at once: the second one's insert
                // conflicts and it fails cleanly rather than overwriting.
                tx.execute(
                    "INSERT INTO accounts (id, balance, reserved, tariff, mode, blocked, tokens,
                        created_at, updated_at) VALUES ($1, $2, 0, $3, $4, FALSE, 0, $5, $5)",
                    &[&a.id, &a.balance.0, &a.tariff, &a.mode.as_str(), &now],
                )?;
                let change = a.opened();
                (a, change)
            }
        };
        append(&mut tx, &entry_for(&account, &change, None, now))?;
        tx.commit()?;
        Ok(account)
    }

    fn account(&mut self, id: &str) -> Result<Account, LedgerError> {
        load_account(&mut self.client, id, false)?
            .ok_or_else(|| LedgerError::NoSuchAccount(id.to_string()))
    }

    super::account_operations!();

    fn entries(&mut self, id: &str, limit: usize) -> Result<Vec<LedgerEntry>, LedgerError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.client.query(
            format!(
                "SELECT {ENTRY_COLUMNS} FROM (SELECT {ENTRY_COLUMNS} FROM ledger_entries
                   WHERE account = $1 ORDER BY id DESC LIMIT $2) AS last ORDER BY id"
            )
            .as_str(),
            &[&id, &limit],
        )?;
        rows.iter()
            .map(|r| {
                let kind: String = r.try_get(3)?;
                Ok(LedgerEntry {
                    id: r.try_get(0)?,
                    at_ms: r.try_get(1)?,
                    account: r.try_get(2)?,
                    kind: kind.parse()?,
                    amount: Money(r.try_get(4)?),
                    reserved_delta: Money(r.try_get(5)?),
                    tokens_delta: r.try_get(6)?,
                    balance_after: Money(r.try_get(7)?),
                    reserved_after: Money(r.try_get(8)?),
                    tokens_after: u32_col("tokens_after", r.try_get(9)?)?,
                    call_id: r.try_get(10)?,
                    note: r.try_get(11)?,
                })
            })
            .collect()
    }
}
