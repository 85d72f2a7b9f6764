//! The PostgreSQL CDR store, for deployments where several hosts share CDRs.

use postgres::{Client, NoTls};

use super::{COLUMNS, CdrStore, MIGRATIONS, StoreError, reason_from_str, upsert_set_clause};
use crate::engine::Cdr;

/// CDRs in a PostgreSQL database.
pub struct PostgresStore {
    client: Client,
    upsert_sql: String,
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user@host/db`) and applies pending migrations.
    pub fn connect(url: &str) -> Result<Self, StoreError> {
        let mut client = Client::connect(url, NoTls)?;
        migrate(&mut client)?;
        let placeholders = (1..=super::COLUMN_COUNT)
            .map(|i| format!("${i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let upsert_sql = format!(
            "INSERT INTO cdrs ({COLUMNS}) VALUES ({placeholders}) \
             ON CONFLICT (call_id, offer_at) DO UPDATE SET {}",
            upsert_set_clause()
        );
        Ok(Self { client, upsert_sql })
    }

    /// The schema version in effect.
    pub fn schema_version(&mut self) -> Result<i64, StoreError> {
        let row = self.client.query_one(
            "SELECT COALESCE(MAX(version), 0)::BIGINT FROM schema_migrations WHERE version < 100",
            &[],
        )?;
        Ok(row.get(0))
    }
}

fn migrate(client: &mut Client) -> Result<(), StoreError> {
    client.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
    )?;
    // Hosts sharing the database may start together: serialise migrations.
    let mut tx = client.transaction()?;
    tx.batch_execute("LOCK TABLE schema_migrations IN EXCLUSIVE MODE")?;
    let current: i64 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0)::BIGINT FROM schema_migrations WHERE version < 100",
            &[],
        )?
        .get(0);
    let known = MIGRATIONS.last().map_or(0, |m| m.0);
    if current > known && current < 100 {
        return Err(StoreError::SchemaTooNew {
            found: current,
            known,
        });
    }
    for (version, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
        tx.batch_execute(&sql.replace("BIGSERIAL_OR_INTEGER_PK", "BIGSERIAL PRIMARY KEY"))?;
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at)
             VALUES ($1, EXTRACT(EPOCH FROM now())::BIGINT)",
            &[version],
        )?;
    }
    tx.commit()?;
    Ok(())
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl CdrStore for PostgresStore {
    fn upsert(&mut self, c: &Cdr) -> Result<(), StoreError> {
        let reason = c.end_reason.map(|r| r.as_str());
        let dscp = c.dscp.map(i32::from);
        self.client.execute(
            self.upsert_sql.as_str(),
            &[
                &c.call_id,
                &c.from_tag,
                &c.to_tag,
                &c.account,
                &c.offer_at,
                &c.answer_at,
                &c.end_at,
                &reason,
                &c.duration_ms,
                &to_i64(c.packets_ab),
                &to_i64(c.bytes_ab),
                &to_i64(c.packets_ba),
                &to_i64(c.bytes_ba),
                &c.lost_ab,
                &c.lost_ba,
                &to_i64(c.jitter_ab_us),
                &to_i64(c.jitter_ba_us),
                &dscp,
                &to_i64(c.dropped_xdp),
                &c.charge,
                &super::join_list(&c.flags),
                &super::join_list(&c.services),
            ],
        )?;
        Ok(())
    }

    fn close_open_rows(&mut self, now_ms: i64) -> Result<usize, StoreError> {
        let n = self.client.execute(
            "UPDATE cdrs SET end_at = $1, end_reason = 'restart',
                duration_ms = CASE WHEN answer_at IS NULL THEN 0 ELSE GREATEST($1 - answer_at, 0) END
             WHERE end_at IS NULL",
            &[&now_ms],
        )?;
        Ok(n as usize)
    }

    fn by_call_id(&mut self, call_id: &str) -> Result<Vec<Cdr>, StoreError> {
        let rows = self.client.query(
            format!("SELECT {COLUMNS} FROM cdrs WHERE call_id = $1 ORDER BY offer_at").as_str(),
            &[&call_id],
        )?;
        let u = |v: i64| v.max(0) as u64;
        Ok(rows
            .iter()
            .map(|r| Cdr {
                call_id: r.get(0),
                from_tag: r.get(1),
                to_tag: r.get(2),
                account: r.get(3),
                offer_at: r.get(4),
                answer_at: r.get(5),
                end_at: r.get(6),
                end_reason: r
                    .get::<_, Option<String>>(7)
                    .as_deref()
                    .and_then(reason_from_str),
                duration_ms: r.get(8),
                packets_ab: u(r.get(9)),
                bytes_ab: u(r.get(10)),
                packets_ba: u(r.get(11)),
                bytes_ba: u(r.get(12)),
                lost_ab: r.get(13),
                lost_ba: r.get(14),
                jitter_ab_us: u(r.get(15)),
                jitter_ba_us: u(r.get(16)),
                dscp: r
                    .get::<_, Option<i32>>(17)
                    .and_then(|d| u8::try_from(d).ok()),
                dropped_xdp: u(r.get(18)),
                charge: r.get(19),
                flags: super::split_list(r.get::<_, &str>(20)),
                services: super::split_list(r.get::<_, &str>(21)),
            })
            .collect())
    }
}
