//! The SQLite CDR store (the default): one file, WAL journal, created on first start.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension as _, params};

use super::{COLUMNS, CdrStore, MIGRATIONS, StoreError, reason_from_str, upsert_set_clause};
use crate::engine::Cdr;

/// CDRs in a SQLite file.
pub struct SqliteStore {
    conn: Connection,
    upsert_sql: String,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and applies pending migrations.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Location(format!("{}: {e}", dir.display())))?;
        }
        let conn = Connection::open(path)?;
        Self::init(conn)
    }

    /// An in-memory database (tests).
    pub fn in_memory() -> Result<Self, StoreError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(mut conn: Connection) -> Result<Self, StoreError> {
        // WAL: readers (operators' SQL) never block the writer; NORMAL sync is durable across
        // process crashes, which is what write-ahead rows protect against.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate(&mut conn)?;
        let placeholders = (1..=super::COLUMN_COUNT)
            .map(|i| format!("?{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let upsert_sql = format!(
            "INSERT INTO cdrs ({COLUMNS}) VALUES ({placeholders}) \
             ON CONFLICT (call_id, offer_at) DO UPDATE SET {}",
            upsert_set_clause()
        );
        Ok(Self { conn, upsert_sql })
    }

    /// The schema version in effect.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        Ok(self.conn.query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations WHERE version < 100",
            [],
            |r| r.get(0),
        )?)
    }
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)",
    )?;
    let current: i64 = conn.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_migrations WHERE version < 100",
        [],
        |r| r.get(0),
    )?;
    let known = MIGRATIONS.last().map_or(0, |m| m.0);
    if current > known && current < 100 {
        return Err(StoreError::SchemaTooNew {
            found: current,
            known,
        });
    }
    for (version, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
        let tx = conn.transaction()?;
        tx.execute_batch(&sql.replace(
            "BIGSERIAL_OR_INTEGER_PK",
            "INTEGER PRIMARY KEY AUTOINCREMENT",
        ))?;
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, strftime('%s','now'))",
            params![version],
        )?;
        tx.commit()?;
    }
    Ok(())
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn upsert_on(conn: &Connection, sql: &str, c: &Cdr) -> Result<(), StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    stmt.execute(params![
        c.call_id,
        c.from_tag,
        c.to_tag,
        c.account,
        c.offer_at,
        c.answer_at,
        c.end_at,
        c.end_reason.map(|r| r.as_str()),
        c.duration_ms,
        to_i64(c.packets_ab),
        to_i64(c.bytes_ab),
        to_i64(c.packets_ba),
        to_i64(c.bytes_ba),
        c.lost_ab,
        c.lost_ba,
        to_i64(c.jitter_ab_us),
        to_i64(c.jitter_ba_us),
        c.dscp,
        to_i64(c.dropped_xdp),
        c.charge,
        super::join_list(&c.flags),
        super::join_list(&c.services),
    ])?;
    Ok(())
}

impl CdrStore for SqliteStore {
    fn upsert(&mut self, c: &Cdr) -> Result<(), StoreError> {
        upsert_on(&self.conn, &self.upsert_sql, c)
    }

    fn upsert_batch(&mut self, cdrs: &[&Cdr]) -> Result<(), StoreError> {
        // One transaction (one WAL commit) for the lot instead of one per row.
        let tx = self.conn.transaction()?;
        for c in cdrs {
            upsert_on(&tx, &self.upsert_sql, c)?;
        }
        tx.commit()?;
        Ok(())
    }

    fn close_open_rows(&mut self, now_ms: i64) -> Result<usize, StoreError> {
        Ok(self.conn.execute(
            "UPDATE cdrs SET end_at = ?1, end_reason = 'restart',
                duration_ms = CASE WHEN answer_at IS NULL THEN 0 ELSE MAX(?1 - answer_at, 0) END
             WHERE end_at IS NULL",
            params![now_ms],
        )?)
    }

    fn by_call_id(&mut self, call_id: &str) -> Result<Vec<Cdr>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM cdrs WHERE call_id = ?1 ORDER BY offer_at"
        ))?;
        let rows = stmt.query_map(params![call_id], |r| {
            let u = |i: usize| -> rusqlite::Result<u64> { Ok(r.get::<_, i64>(i)?.max(0) as u64) };
            Ok(Cdr {
                call_id: r.get(0)?,
                from_tag: r.get(1)?,
                to_tag: r.get(2)?,
                account: r.get(3)?,
                offer_at: r.get(4)?,
                answer_at: r.get(5)?,
                end_at: r.get(6)?,
                end_reason: r
                    .get::<_, Option<String>>(7)?
                    .as_deref()
                    .and_then(reason_from_str),
                duration_ms: r.get(8)?,
                packets_ab: u(9)?,
                bytes_ab: u(10)?,
                packets_ba: u(11)?,
                bytes_ba: u(12)?,
                lost_ab: r.get(13)?,
                lost_ba: r.get(14)?,
                jitter_ab_us: u(15)?,
                jitter_ba_us: u(16)?,
                dscp: r.get(17)?,
                dropped_xdp: u(18)?,
                charge: r.get(19)?,
                flags: super::split_list(&r.get::<_, String>(20)?),
                services: super::split_list(&r.get::<_, String>(21)?),
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }
}

impl SqliteStore {
    /// Whether a row for the call exists (tests).
    pub fn has_call(&self, call_id: &str) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT 1 FROM cdrs WHERE call_id = ?1 LIMIT 1",
                params![call_id],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::engine::EndReason;

    pub(crate) fn sample(call_id: &str) -> Cdr {
        Cdr {
            call_id: call_id.into(),
            from_tag: "f".into(),
            to_tag: Some("t".into()),
            account: Some("acme".into()),
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
    fn write_ahead_row_then_completed_row() {
        let mut s = SqliteStore::in_memory().unwrap();
        let mut c = sample("c1");
        s.upsert(&c).unwrap();
        assert_eq!(s.by_call_id("c1").unwrap(), vec![c.clone()]);
        c.end_at = Some(62_000);
        c.end_reason = Some(EndReason::Delete);
        c.duration_ms = 60_000;
        c.packets_ab = 3000;
        c.bytes_ab = 516_000;
        c.lost_ba = -2;
        c.charge = Some(150);
        c.flags = vec!["media-after-bye".into()];
        c.services = vec!["qos-upgrade".into(), "add-party".into()];
        s.upsert(&c).unwrap();
        assert_eq!(s.by_call_id("c1").unwrap(), vec![c], "one row, completed");
    }

    #[test]
    fn restart_closes_rows_left_open() {
        let mut s = SqliteStore::in_memory().unwrap();
        s.upsert(&sample("open")).unwrap();
        let mut done = sample("done");
        done.end_at = Some(5_000);
        done.end_reason = Some(EndReason::Delete);
        s.upsert(&done).unwrap();
        assert_eq!(s.close_open_rows(9_000).unwrap(), 1);
        let r = &s.by_call_id("open").unwrap()[0];
        assert_eq!(
            (r.end_at, r.end_reason, r.duration_ms),
            (Some(9_000), Some(EndReason::Restart), 7_000)
        );
        assert_eq!(
            s.by_call_id("done").unwrap()[0].end_reason,
            Some(EndReason::Delete)
        );
    }

    #[test]
    fn same_call_id_twice_is_two_calls() {
        let mut s = SqliteStore::in_memory().unwrap();
        s.upsert(&sample("c1")).unwrap();
        let mut again = sample("c1");
        again.offer_at = 50_000;
        s.upsert(&again).unwrap();
        assert_eq!(s.by_call_id("c1").unwrap().len(), 2);
    }

    #[test]
    fn file_database_is_created_migrated_once_and_queryable_with_plain_sql() {
        let dir = std::env::temp_dir().join(format!("rtpedge-cdr-test-{}", std::process::id()));
        let path = dir.join("sub/cdr.sqlite");
        let _ = std::fs::remove_dir_all(&dir);
        {
            let mut s = SqliteStore::open(&path).unwrap();
            assert_eq!(s.schema_version().unwrap(), 2);
            s.upsert(&sample("c1")).unwrap();
        }
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.schema_version().unwrap(), 2, "migrations are not re-run");
        assert!(s.has_call("c1").unwrap());
        let conn = Connection::open(&path).unwrap();
        let cols: Vec<String> = conn
            .prepare("SELECT name FROM pragma_table_info('cdrs')")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        for required in [
            "call_id",
            "from_tag",
            "to_tag",
            "offer_at",
            "answer_at",
            "end_at",
            "end_reason",
            "duration_ms",
            "packets_ab",
            "bytes_ab",
            "packets_ba",
            "bytes_ba",
            "lost_ab",
            "lost_ba",
            "dropped_xdp",
            "charge",
            "flags",
            "services",
        ] {
            assert!(cols.iter().any(|c| c == required), "column {required}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL);
             INSERT INTO schema_migrations VALUES (99, 0);",
        )
        .unwrap();
        assert!(matches!(
            SqliteStore::init(conn),
            Err(StoreError::SchemaTooNew { found: 99, .. })
        ));
    }
}
