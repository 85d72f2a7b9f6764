//! The money ledger: tariffs, accounts and an append-only journal of every change of money,
//! reservation or usage tokens. Owns storage of billing data and nothing else: the balance rules
//! are [`Account`]'s (`apply_*`), rating is [`super::tariff`]'s, and when to reserve is credit
//! control's.
//!
//! Every mutation is one transaction: load the account row (locked), apply the rule, store the
//! row, append a [`LedgerEntry`]. A refused mutation (blocked, insufficient, no tokens) writes
//! nothing.
//!
//! # Schema (migrations 100+)
//! Billing shares the CDR database and its `schema_migrations` table. Its versions are 100 to
//! 199, so the CDR store's numbering (1, 2, …) never collides; each side only looks at its own
//! range.
//! - `tariffs (id TEXT PK, per_minute, per_kilobyte, increment_s, initial_increment_s,
//!   connection_fee, updated_at)` — money in minor units (BIGINT), times in unix ms.
//! - `accounts (id TEXT PK, balance, reserved, tariff → tariffs.id, mode 'prepaid'|'postpaid',
//!   blocked BOOLEAN, tokens, created_at, updated_at)`.
//! - `ledger_entries (id PK, at_ms, account, kind, amount, reserved_delta, tokens_delta,
//!   balance_after, reserved_after, tokens_after, call_id, note)` — append-only (triggers refuse
//!   UPDATE and DELETE): who (`account`), what (`kind`, `note`), when (`at_ms`, unix ms), how
//!   much (`amount` = change of the balance, `reserved_delta`, `tokens_delta`, and the state
//!   after), and for reserves, settlements and tokens the `call_id`.

mod memory;
mod postgres;
mod sqlite;

use std::{fmt, str::FromStr};

use serde::Serialize;

pub use self::memory::MemoryLedger;
pub use self::postgres::PostgresLedger;
pub use self::sqlite::SqliteLedger;
use super::{Account, AccountSpec, Money, Tariff, TariffError, account::Change};

/// First schema version that belongs to billing (the CDR store uses versions below it).
pub const MIGRATION_BASE: i64 = 100;
/// First version past billing's range.
pub const MIGRATION_END: i64 = 200;

/// One billing migration: SQL both backends accept (with `BIGSERIAL_OR_INTEGER_PK` replaced as
/// in the CDR store), then backend-specific SQL.
pub(crate) struct Migration {
    pub version: i64,
    pub common: &'static str,
    pub sqlite: &'static str,
    pub postgres: &'static str,
}

/// Billing's migrations, in order; versions in `MIGRATION_BASE..MIGRATION_END`.
pub(crate) const MIGRATIONS: &[Migration] = &[Migration {
    version: 100,
    common: "CREATE TABLE tariffs (
        id                  TEXT    PRIMARY KEY,
        per_minute          BIGINT  NOT NULL CHECK (per_minute >= 0),
        per_kilobyte        BIGINT  NOT NULL CHECK (per_kilobyte >= 0),
        increment_s         BIGINT  NOT NULL CHECK (increment_s >= 1),
        initial_increment_s BIGINT  NOT NULL CHECK (initial_increment_s >= 1),
        connection_fee      BIGINT  NOT NULL CHECK (connection_fee >= 0),
        updated_at          BIGINT  NOT NULL
    );
    CREATE TABLE accounts (
        id          TEXT    PRIMARY KEY,
        balance     BIGINT  NOT NULL,
        reserved    BIGINT  NOT NULL DEFAULT 0 CHECK (reserved >= 0),
        tariff      TEXT    NOT NULL REFERENCES tariffs (id),
        mode        TEXT    NOT NULL CHECK (mode IN ('prepaid', 'postpaid')),
        blocked     BOOLEAN NOT NULL DEFAULT FALSE,
        tokens      BIGINT  NOT NULL DEFAULT 0 CHECK (tokens >= 0),
        created_at  BIGINT  NOT NULL,
        updated_at  BIGINT  NOT NULL
    );
    CREATE TABLE ledger_entries (
        id              BIGSERIAL_OR_INTEGER_PK,
        at_ms           BIGINT  NOT NULL,
        account         TEXT    NOT NULL,
        kind            TEXT    NOT NULL,
        amount          BIGINT  NOT NULL,
        reserved_delta  BIGINT  NOT NULL,
        tokens_delta    BIGINT  NOT NULL,
        balance_after   BIGINT  NOT NULL,
        reserved_after  BIGINT  NOT NULL,
        tokens_after    BIGINT  NOT NULL,
        call_id         TEXT,
        note            TEXT
    );
    CREATE INDEX ledger_entries_account ON ledger_entries (account, id);
    CREATE INDEX ledger_entries_call_id ON ledger_entries (call_id);",
    sqlite: "CREATE TRIGGER ledger_entries_no_update BEFORE UPDATE ON ledger_entries
        BEGIN SELECT RAISE(ABORT, 'ledger_entries is append-only'); END;
    CREATE TRIGGER ledger_entries_no_delete BEFORE DELETE ON ledger_entries
        BEGIN SELECT RAISE(ABORT, 'ledger_entries is append-only'); END;",
    postgres: "CREATE FUNCTION ledger_entries_append_only() RETURNS trigger LANGUAGE plpgsql AS
        $$ BEGIN RAISE EXCEPTION 'ledger_entries is append-only'; END $$;
    CREATE TRIGGER ledger_entries_append_only BEFORE UPDATE OR DELETE ON ledger_entries
        FOR EACH ROW EXECUTE FUNCTION ledger_entries_append_only();",
}];

/// The latest billing schema version this build knows.
pub fn latest_version() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// Errors of the ledger; the first group are answers about the account, the rest failures.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// No account with this id.
    #[error("no such account: {0}")]
    NoSuchAccount(String),
    /// No tariff with this id.
    #[error("no such tariff: {0}")]
    NoSuchTariff(String),
    /// The account is blocked.
    #[error("account {0} is blocked")]
    Blocked(String),
    /// Nothing left to reserve.
    #[error(
        "insufficient credit on account {account}: {available} available, {requested} requested"
    )]
    Insufficient {
        /// The account.
        account: String,
        /// `balance - reserved` (may be negative).
        available: Money,
        /// What was asked.
        requested: Money,
    },
    /// No usage tokens left.
    #[error("account {0} has no usage tokens left")]
    NoTokens(String),
    /// An amount that makes no sense here (negative, or zero where something must move).
    #[error("invalid amount {0}")]
    InvalidAmount(Money),
    /// An id that is empty or too long.
    #[error("invalid id {0:?} (1 to 128 characters)")]
    BadId(String),
    /// The tariff was refused.
    #[error("invalid tariff: {0}")]
    Tariff(#[from] TariffError),
    /// The result would not fit in 64 bits.
    #[error("amount out of range")]
    Overflow,
    /// SQLite failed.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL failed.
    #[error("postgres: {0}")]
    Postgres(#[from] ::postgres::Error),
    /// The database has a newer billing schema than this build knows.
    #[error("billing schema v{found} is newer than this build's v{known}; refusing to write")]
    SchemaTooNew {
        /// Version in the database.
        found: i64,
        /// Latest version this build knows.
        known: i64,
    },
    /// The location is not usable.
    #[error("ledger database {0}")]
    Location(String),
    /// A stored value is out of range (edited by hand?).
    #[error("ledger data is corrupt: {0}")]
    Corrupt(String),
}

impl LedgerError {
    /// A stable machine-readable code (for JSON errors and denial reasons).
    pub fn code(&self) -> &'static str {
        match self {
            LedgerError::NoSuchAccount(_) => "no-such-account",
            LedgerError::NoSuchTariff(_) => "no-such-tariff",
            LedgerError::Blocked(_) => "blocked",
            LedgerError::Insufficient { .. } => "insufficient-credit",
            LedgerError::NoTokens(_) => "no-tokens",
            LedgerError::InvalidAmount(_) => "invalid-amount",
            LedgerError::BadId(_) => "invalid-id",
            LedgerError::Tariff(_) => "invalid-tariff",
            LedgerError::Overflow => "overflow",
            LedgerError::Sqlite(_) | LedgerError::Postgres(_) | LedgerError::Location(_) => {
                "storage"
            }
            LedgerError::SchemaTooNew { .. } => "schema-too-new",
            LedgerError::Corrupt(_) => "corrupt",
        }
    }

    /// Whether the request was wrong (an HTTP 4xx) rather than the ledger failing (5xx).
    pub fn is_client_error(&self) -> bool {
        !matches!(
            self,
            LedgerError::Sqlite(_)
                | LedgerError::Postgres(_)
                | LedgerError::Location(_)
                | LedgerError::SchemaTooNew { .. }
                | LedgerError::Corrupt(_)
                | LedgerError::Overflow
        )
    }
}

/// What a journal entry records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EntryKind {
    /// Account created (amount = initial balance).
    Open,
    /// Balance, tariff or mode set by `put_account` (amount = change of the balance).
    Update,
    /// Credit added.
    Topup,
    /// Credit moved into the reservation for a call.
    Reserve,
    /// Reservation released and the call's charge debited.
    Settle,
    /// Account blocked.
    Block,
    /// Account unblocked.
    Unblock,
    /// Usage tokens added.
    TokensAdded,
    /// One usage token taken for a service inserted into a call.
    TokenTaken,
}

impl EntryKind {
    const ALL: [EntryKind; 9] = [
        EntryKind::Open,
        EntryKind::Update,
        EntryKind::Topup,
        EntryKind::Reserve,
        EntryKind::Settle,
        EntryKind::Block,
        EntryKind::Unblock,
        EntryKind::TokensAdded,
        EntryKind::TokenTaken,
    ];

    /// The spelling in `ledger_entries.kind`.
    pub const fn as_str(self) -> &'static str {
        match self {
            EntryKind::Open => "open",
            EntryKind::Update => "update",
            EntryKind::Topup => "topup",
            EntryKind::Reserve => "reserve",
            EntryKind::Settle => "settle",
            EntryKind::Block => "block",
            EntryKind::Unblock => "unblock",
            EntryKind::TokensAdded => "tokens-added",
            EntryKind::TokenTaken => "token-taken",
        }
    }
}

impl fmt::Display for EntryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EntryKind {
    type Err = LedgerError;
    fn from_str(s: &str) -> Result<EntryKind, LedgerError> {
        EntryKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| LedgerError::Corrupt(format!("unknown ledger entry kind {s:?}")))
    }
}

/// One row of the journal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LedgerEntry {
    /// Sequence number (increasing).
    pub id: i64,
    /// When, unix ms.
    pub at_ms: i64,
    /// Whose money.
    pub account: String,
    /// What happened.
    pub kind: EntryKind,
    /// Change of the balance (a debit is negative).
    pub amount: Money,
    /// Change of the reservation.
    pub reserved_delta: Money,
    /// Change of the usage tokens.
    pub tokens_delta: i64,
    /// Balance after the change.
    pub balance_after: Money,
    /// Reservation after the change.
    pub reserved_after: Money,
    /// Tokens after the change.
    pub tokens_after: u32,
    /// The call, for reserves, settlements and tokens taken for a call.
    pub call_id: Option<String>,
    /// Detail for auditors.
    pub note: Option<String>,
}

/// The account operations of [`Ledger`], identical for every backend: each runs one rule of
/// [`Account`] through the backend's own atomic, journaled `mutate(id, call_id, rule)`. Expanded
/// inside each backend's `impl Ledger`, so the rules are written once.
macro_rules! account_operations {
    () => {
        fn topup(&mut self, id: &str, amount: Money) -> Result<Money, LedgerError> {
            Ok(self
                .mutate(id, None, |a| Ok(((), a.apply_topup(amount)?)))?
                .1
                .balance)
        }

        fn block(&mut self, id: &str) -> Result<Account, LedgerError> {
            Ok(self.mutate(id, None, |a| Ok(((), a.apply_block())))?.1)
        }

        fn unblock(&mut self, id: &str) -> Result<Account, LedgerError> {
            Ok(self.mutate(id, None, |a| Ok(((), a.apply_unblock())))?.1)
        }

        fn reserve(
            &mut self,
            id: &str,
            amount: Money,
            call_id: &str,
        ) -> Result<Money, LedgerError> {
            Ok(self
                .mutate(id, Some(call_id), |a| a.apply_reserve(amount))?
                .0)
        }

        fn settle(
            &mut self,
            id: &str,
            call_id: &str,
            reserved: Money,
            charged: Money,
        ) -> Result<Account, LedgerError> {
            Ok(self
                .mutate(id, Some(call_id), |a| {
                    Ok(((), a.apply_settle(reserved, charged)?))
                })?
                .1)
        }

        fn take_token(&mut self, id: &str, call_id: Option<&str>) -> Result<u32, LedgerError> {
            Ok(self.mutate(id, call_id, |a| a.apply_take_token())?.0)
        }

        fn add_tokens(&mut self, id: &str, n: u32) -> Result<u32, LedgerError> {
            Ok(self.mutate(id, None, |a| a.apply_add_tokens(n))?.0)
        }
    };
}
pub(crate) use account_operations;

/// Where tariffs and accounts live. Every mutation is atomic and journalled; see the module
/// docs. Implementations: [`SqliteLedger`], [`PostgresLedger`], [`MemoryLedger`].
pub trait Ledger: Send {
    /// Creates or replaces a tariff (validated first).
    fn put_tariff(&mut self, tariff: &Tariff) -> Result<(), LedgerError>;
    /// A tariff by id.
    fn tariff(&mut self, id: &str) -> Result<Tariff, LedgerError>;
    /// Creates the account, or sets its balance, tariff and mode (reservation, blocked flag and
    /// tokens are kept). The tariff must exist. Journalled as `open` or `update`.
    fn put_account(&mut self, id: &str, spec: &AccountSpec) -> Result<Account, LedgerError>;
    /// An account by id.
    fn account(&mut self, id: &str) -> Result<Account, LedgerError>;
    /// Adds `amount` (> 0) to the balance; returns the new balance.
    fn topup(&mut self, id: &str, amount: Money) -> Result<Money, LedgerError>;
    /// Blocks the account (idempotent): no reservations, no tokens.
    fn block(&mut self, id: &str) -> Result<Account, LedgerError>;
    /// Unblocks the account (idempotent).
    fn unblock(&mut self, id: &str) -> Result<Account, LedgerError>;
    /// Moves up to `amount` of the available credit (`balance - reserved`) into the
    /// reservation for `call_id`; returns what was granted. **Partial:** a prepaid account with
    /// less available gets the rest (a call may use the last seconds of credit); with nothing
    /// available it is [`LedgerError::Insufficient`]. Post-paid accounts are granted in full.
    fn reserve(&mut self, id: &str, amount: Money, call_id: &str) -> Result<Money, LedgerError>;
    /// Releases `reserved` (clamped to what is held) and debits `charged` for `call_id`; a
    /// post-paid account is settled with `reserved = 0` and just debited. Returns the account.
    fn settle(
        &mut self,
        id: &str,
        call_id: &str,
        reserved: Money,
        charged: Money,
    ) -> Result<Account, LedgerError>;
    /// Takes one usage token (for a service inserted into `call_id`); returns how many are
    /// left, or [`LedgerError::NoTokens`].
    fn take_token(&mut self, id: &str, call_id: Option<&str>) -> Result<u32, LedgerError>;
    /// Adds `n` (> 0) usage tokens; returns the new count.
    fn add_tokens(&mut self, id: &str, n: u32) -> Result<u32, LedgerError>;
    /// The journal of an account, oldest first, at most the last `limit` entries.
    fn entries(&mut self, id: &str, limit: usize) -> Result<Vec<LedgerEntry>, LedgerError>;
}

/// Opens the ledger named by `location`, like [`crate::store::open`]: a `postgres://` /
/// `postgresql://` URL, or a SQLite file path (normally the CDR database).
pub fn open(location: &str) -> Result<Box<dyn Ledger>, LedgerError> {
    if location.starts_with("postgres://") || location.starts_with("postgresql://") {
        Ok(Box::new(PostgresLedger::connect(location)?))
    } else {
        Ok(Box::new(SqliteLedger::open(location)?))
    }
}

/// Wall-clock unix ms for journal rows (the ledger is the I/O side; credit control is not).
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The journal row for `change` applied to `after`.
pub(crate) fn entry_for(
    after: &Account,
    change: &Change,
    call_id: Option<&str>,
    at_ms: i64,
) -> LedgerEntry {
    LedgerEntry {
        id: 0,
        at_ms,
        account: after.id.clone(),
        kind: change.kind,
        amount: change.amount,
        reserved_delta: change.reserved_delta,
        tokens_delta: change.tokens_delta,
        balance_after: after.balance,
        reserved_after: after.reserved,
        tokens_after: after.tokens,
        call_id: call_id.map(str::to_string),
        note: change.note.clone(),
    }
}

/// A zero-amount reservation changes nothing and is not journalled.
pub(crate) fn is_noop(change: &Change) -> bool {
    change.kind == EntryKind::Reserve && change.reserved_delta == Money::ZERO
}

/// Converts stored integers back, refusing values a correct ledger never writes.
pub(crate) fn u32_col(what: &str, v: i64) -> Result<u32, LedgerError> {
    u32::try_from(v).map_err(|_| LedgerError::Corrupt(format!("{what} = {v}")))
}

#[cfg(test)]
pub(crate) mod tests {
    //! The behaviour every backend must show, run against each of them.
    use super::*;
    use crate::billing::{Mode, tariff::tests::combo};

    /// Runs the shared conformance checks on a fresh, empty ledger.
    pub(crate) fn conformance(l: &mut dyn Ledger) {
        // Tariffs.
        assert!(matches!(
            l.tariff("combo"),
            Err(LedgerError::NoSuchTariff(_))
        ));
        l.put_tariff(&combo()).unwrap();
        assert_eq!(l.tariff("combo").unwrap(), combo());
        let mut dearer = combo();
        dearer.per_minute = Money(60);
        l.put_tariff(&dearer).unwrap();
        assert_eq!(l.tariff("combo").unwrap().per_minute, Money(60));
        let mut invalid = combo();
        invalid.increment_s = 0;
        assert!(matches!(
            l.put_tariff(&invalid),
            Err(LedgerError::Tariff(_))
        ));

        // Accounts.
        let spec = AccountSpec {
            balance: 100,
            tariff: "combo".into(),
            mode: Mode::Prepaid,
        };
        assert!(matches!(
            l.account("alice"),
            Err(LedgerError::NoSuchAccount(_))
        ));
        let missing = AccountSpec {
            tariff: "nope".into(),
            ..spec.clone()
        };
        assert!(matches!(
            l.put_account("alice", &missing),
            Err(LedgerError::NoSuchTariff(_))
        ));
        assert!(matches!(
            l.put_account("", &spec),
            Err(LedgerError::BadId(_))
        ));
        let a = l.put_account("alice", &spec).unwrap();
        assert_eq!(
            (a.balance, a.reserved, a.blocked, a.tokens),
            (Money(100), Money(0), false, 0)
        );
        assert_eq!(l.account("alice").unwrap(), a);

        // Reserve: full, then partial, then refused.
        assert_eq!(l.reserve("alice", Money(70), "c1").unwrap(), Money(70));
        assert_eq!(l.reserve("alice", Money(70), "c2").unwrap(), Money(30));
        assert!(matches!(
            l.reserve("alice", Money(1), "c3"),
            Err(LedgerError::Insufficient {
                available: Money(0),
                ..
            })
        ));
        assert_eq!(l.reserve("alice", Money(0), "c3").unwrap(), Money(0));
        assert!(matches!(
            l.reserve("bob", Money(1), "c3"),
            Err(LedgerError::NoSuchAccount(_))
        ));
        // Settle c1: release 70, charge 61.
        let a = l.settle("alice", "c1", Money(70), Money(61)).unwrap();
        assert_eq!((a.balance, a.reserved), (Money(39), Money(30)));
        // Top-up during c2.
        assert_eq!(l.topup("alice", Money(50)).unwrap(), Money(89));
        assert!(matches!(
            l.topup("alice", Money(-5)),
            Err(LedgerError::InvalidAmount(_))
        ));
        assert_eq!(l.account("alice").unwrap().available(), Money(59));
        // PUT keeps the reservation, sets balance/tariff/mode.
        let a = l
            .put_account(
                "alice",
                &AccountSpec {
                    balance: 500,
                    ..spec.clone()
                },
            )
            .unwrap();
        assert_eq!((a.balance, a.reserved), (Money(500), Money(30)));

        // Block / unblock.
        let a = l.block("alice").unwrap();
        assert!(a.blocked);
        assert!(l.block("alice").unwrap().blocked, "idempotent");
        assert!(matches!(
            l.reserve("alice", Money(1), "c4"),
            Err(LedgerError::Blocked(_))
        ));
        let a = l.settle("alice", "c2", Money(30), Money(30)).unwrap();
        assert_eq!(
            (a.balance, a.reserved),
            (Money(470), Money(0)),
            "blocked accounts settle"
        );
        assert!(!l.unblock("alice").unwrap().blocked);

        // Tokens.
        assert!(matches!(
            l.take_token("alice", Some("c5")),
            Err(LedgerError::NoTokens(_))
        ));
        assert_eq!(l.add_tokens("alice", 2).unwrap(), 2);
        assert_eq!(l.take_token("alice", Some("c5")).unwrap(), 1);
        assert_eq!(l.take_token("alice", None).unwrap(), 0);
        assert!(matches!(
            l.take_token("alice", None),
            Err(LedgerError::NoTokens(_))
        ));

        // Post-paid: reserve in full, debit below zero.
        let p = l
            .put_account(
                "corp",
                &AccountSpec {
                    balance: 0,
                    tariff: "combo".into(),
                    mode: Mode::Postpaid,
                },
            )
            .unwrap();
        assert_eq!(p.mode, Mode::Postpaid);
        let p = l.settle("corp", "c6", Money(0), Money(4729)).unwrap();
        assert_eq!(p.balance, Money(-4729));

        // The journal: every change, in order, with the state after.
        let kinds: Vec<(EntryKind, i64, i64, Option<String>)> = l
            .entries("alice", 100)
            .unwrap()
            .into_iter()
            .map(|e| (e.kind, e.amount.0, e.reserved_delta.0, e.call_id))
            .collect();
        use EntryKind as K;
        let c = |s: &str| Some(s.to_string());
        assert_eq!(
            kinds,
            vec![
                (K::Open, 100, 0, None),
                (K::Reserve, 0, 70, c("c1")),
                (K::Reserve, 0, 30, c("c2")),
                (K::Settle, -61, -70, c("c1")),
                (K::Topup, 50, 0, None),
                (K::Update, 411, 0, None),
                (K::Block, 0, 0, None),
                (K::Block, 0, 0, None),
                (K::Settle, -30, -30, c("c2")),
                (K::Unblock, 0, 0, None),
                (K::TokensAdded, 0, 0, None),
                (K::TokenTaken, 0, 0, c("c5")),
                (K::TokenTaken, 0, 0, None),
            ]
        );
        let all = l.entries("alice", 100).unwrap();
        assert!(all.windows(2).all(|w| w[0].id < w[1].id));
        let last = all.last().unwrap();
        assert_eq!((last.balance_after, last.tokens_after), (Money(470), 0));
        assert_eq!(all[2].note.as_deref(), Some("partial: 30 of 70"));
        // The sum of the amounts is the balance.
        assert_eq!(all.iter().map(|e| e.amount).sum::<Money>(), Money(470));
        assert_eq!(
            l.entries("alice", 2).unwrap(),
            all[all.len() - 2..].to_vec()
        );
        assert!(l.entries("nobody", 10).unwrap().is_empty());
    }
}
