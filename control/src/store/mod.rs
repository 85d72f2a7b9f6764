//! CDR storage: one row per call in the table `cdrs`, readable with plain SQL.
//!
//! Rows are written ahead: a row is inserted when the call is answered (`end_at` NULL) and
//! completed when it ends, so a crash never loses a call that was answered; at start-up, rows
//! still open are closed with reason `restart` (the media of those calls did not survive). Times
//! are unix milliseconds (INTEGER). Schema changes are numbered migrations recorded in
//! `schema_migrations`.
//!
//! Backends: SQLite (default, a file created on first start) and PostgreSQL (a `postgres://`
//! URL, when several hosts share CDRs). The [`writer`] runs a store on its own thread so that
//! the engine never waits for a disk or a network round trip.

mod postgres;
mod sqlite;
pub mod writer;

pub use self::postgres::PostgresStore;
pub use self::sqlite::SqliteStore;

use crate::engine::Cdr;

/// Errors of the CDR store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL failed.
    #[error("postgres: {0}")]
    Postgres(#[from] ::postgres::Error),
    /// The database has a newer schema than this build knows.
    #[error("database schema v{found} is newer than this build's v{known}; refusing to write")]
    SchemaTooNew {
        /// Version in the database.
        found: i64,
        /// Latest version this build knows.
        known: i64,
    },
    /// The location is not usable.
    #[error("CDR database {0}")]
    Location(String),
}

/// Numbered schema migrations of the CDR table; each runs once, in order, in a transaction.
/// SQL that both backends accept. Versions 100 and up belong to the billing ledger, which
/// shares the database and the `schema_migrations` table.
pub const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        "CREATE TABLE cdrs (
        id            BIGSERIAL_OR_INTEGER_PK,
        call_id       TEXT    NOT NULL,
        from_tag      TEXT    NOT NULL,
        to_tag        TEXT,
        account       TEXT,
        offer_at      BIGINT  NOT NULL,
        answer_at     BIGINT,
        end_at        BIGINT,
        end_reason    TEXT,
        duration_ms   BIGINT  NOT NULL DEFAULT 0,
        packets_ab    BIGINT  NOT NULL DEFAULT 0,
        bytes_ab      BIGINT  NOT NULL DEFAULT 0,
        packets_ba    BIGINT  NOT NULL DEFAULT 0,
        bytes_ba      BIGINT  NOT NULL DEFAULT 0,
        lost_ab       BIGINT  NOT NULL DEFAULT 0,
        lost_ba       BIGINT  NOT NULL DEFAULT 0,
        jitter_ab_us  BIGINT  NOT NULL DEFAULT 0,
        jitter_ba_us  BIGINT  NOT NULL DEFAULT 0,
        dscp          INTEGER,
        dropped_xdp   BIGINT  NOT NULL DEFAULT 0,
        UNIQUE (call_id, offer_at)
    );
    CREATE INDEX cdrs_call_id ON cdrs (call_id);
    CREATE INDEX cdrs_open ON cdrs (end_at);",
    ),
    (
        2,
        "ALTER TABLE cdrs ADD COLUMN charge BIGINT;
    ALTER TABLE cdrs ADD COLUMN flags TEXT NOT NULL DEFAULT '';
    ALTER TABLE cdrs ADD COLUMN services TEXT NOT NULL DEFAULT '';",
    ),
];

/// Where CDRs go.
pub trait CdrStore: Send {
    /// Inserts or updates the row of `cdr` (keyed by call-id and offer time).
    fn upsert(&mut self, cdr: &Cdr) -> Result<(), StoreError>;
    /// Upserts several rows, in order, all or none (one transaction where the backend has
    /// them).
    fn upsert_batch(&mut self, cdrs: &[&Cdr]) -> Result<(), StoreError> {
        cdrs.iter().try_for_each(|c| self.upsert(c))
    }
    /// Closes rows left open by a previous run with reason `restart`; returns how many.
    fn close_open_rows(&mut self, now_ms: i64) -> Result<usize, StoreError>;
    /// The CDRs of a call-id, oldest first.
    fn by_call_id(&mut self, call_id: &str) -> Result<Vec<Cdr>, StoreError>;
}

/// Opens the store named by `location`: a `postgres://` / `postgresql://` URL, or a SQLite file
/// path (parent directories are created).
pub fn open(location: &str) -> Result<Box<dyn CdrStore>, StoreError> {
    if location.starts_with("postgres://") || location.starts_with("postgresql://") {
        Ok(Box::new(PostgresStore::connect(location)?))
    } else {
        Ok(Box::new(SqliteStore::open(location)?))
    }
}

/// The columns in a fixed order, shared by both backends' statements.
pub(crate) const COLUMNS: &str = "call_id, from_tag, to_tag, account, offer_at, answer_at, \
    end_at, end_reason, duration_ms, packets_ab, bytes_ab, packets_ba, bytes_ba, lost_ab, \
    lost_ba, jitter_ab_us, jitter_ba_us, dscp, dropped_xdp, charge, flags, services";

/// Number of columns in [`COLUMNS`].
pub(crate) const COLUMN_COUNT: usize = 22;

/// A list column (`flags`, `services`) as stored: comma-separated, no spaces.
pub(crate) fn join_list(items: &[String]) -> String {
    items.join(",")
}

/// The inverse of [`join_list`].
pub(crate) fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .filter(|x| !x.is_empty())
        .map(str::to_string)
        .collect()
}

/// `SET col = excluded.col` for every column but the key.
pub(crate) fn upsert_set_clause() -> String {
    COLUMNS
        .split(',')
        .map(str::trim)
        .filter(|c| *c != "call_id" && *c != "offer_at")
        .map(|c| format!("{c} = excluded.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// An end reason read back from the database.
pub(crate) fn reason_from_str(s: &str) -> Option<crate::engine::EndReason> {
    use crate::engine::EndReason as R;
    [
        R::Delete,
        R::OfferTimeout,
        R::MediaTimeout,
        R::SilentTimeout,
        R::FinalTimeout,
        R::CreditExhausted,
        R::Operator,
        R::Fraud,
        R::Shutdown,
        R::Restart,
        R::Error,
    ]
    .into_iter()
    .find(|r| r.as_str() == s)
}
