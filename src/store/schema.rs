//! The schema, versioned with `PRAGMA user_version`: each migration runs once, in
//! order, in one transaction with the version bump.

use rusqlite::Connection;

/// Migrations; entry `i` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: requests and model events.
    "CREATE TABLE requests (
        id INTEGER PRIMARY KEY,
        ts_ms INTEGER NOT NULL,
        request_id TEXT NOT NULL,
        client TEXT NOT NULL,
        route TEXT NOT NULL,
        target TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        status INTEGER NOT NULL,
        prompt_tokens INTEGER,
        completion_tokens INTEGER,
        queue_ms INTEGER,
        cold_start_ms INTEGER,
        ttft_ms INTEGER,
        total_ms INTEGER NOT NULL,
        error TEXT,
        cost_usd REAL,
        stream INTEGER NOT NULL DEFAULT 0
     );
     CREATE INDEX requests_ts ON requests (ts_ms);
     CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        ts_ms INTEGER NOT NULL,
        model TEXT NOT NULL,
        event TEXT NOT NULL,
        reason TEXT,
        detail TEXT,
        load_ms INTEGER
     );
     CREATE INDEX events_ts ON events (ts_ms);
     CREATE INDEX events_model ON events (model, ts_ms);",
];

/// The version this build writes.
pub const VERSION: i64 = MIGRATIONS.len() as i64;

/// Bring the database to [`VERSION`]. A database from a newer llmvisor is refused.
pub fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let current: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if current > VERSION {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_MISMATCH),
            Some(format!(
                "the database has schema version {current}, newer than this llmvisor's {VERSION}"
            )),
        ));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        conn.execute_batch(&format!(
            "BEGIN; {sql}; PRAGMA user_version = {}; COMMIT;",
            i + 1
        ))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrates_once_and_refuses_newer() {
        let c = Connection::open_in_memory().unwrap();
        migrate(&c).unwrap();
        migrate(&c).unwrap();
        let v: i64 = c
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, VERSION);
        c.execute_batch("PRAGMA user_version = 99").unwrap();
        assert!(migrate(&c).is_err());
    }
}
