//! Online backups of a SQLite database (the usage store, or another service's, such
//! as Open WebUI's `webui.db`) while it is being written: SQLite's backup API copies
//! one consistent snapshot into a new file. Copying the live file instead would
//! miss what still sits in its `-wal` (and copying both is a race with the next
//! checkpoint). The copy is written beside the destination, checked with
//! `PRAGMA integrity_check`, switched to the rollback journal (one self-contained
//! file, no `-wal` to carry), synced and only then renamed into place, so the
//! destination is either the previous backup or a complete new one.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};

/// Why a backup could not be made.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The source database does not exist.
    #[error("no database at {0}")]
    NoSource(PathBuf),
    /// SQLite refused a step (open, copy, check).
    #[error("{what}: {source}")]
    Sqlite {
        /// What was being done.
        what: String,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// Writing, syncing or renaming the file failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The copy failed SQLite's integrity check.
    #[error("the copy of {src} failed its integrity check: {detail}")]
    Integrity {
        /// The source database.
        src: PathBuf,
        /// The first problems `PRAGMA integrity_check` reported.
        detail: String,
    },
    /// The source stayed locked past the deadline.
    #[error("{0} stayed busy (locked by a writer) for {1:?}; try again")]
    Busy(PathBuf, Duration),
}

/// What a backup copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupReport {
    /// Pages in the copy.
    pub pages: i64,
    /// Size of the copy in bytes.
    pub bytes: u64,
    /// `PRAGMA user_version` of the copy (the usage store's schema version).
    pub user_version: i64,
}

/// How long a busy source is waited for.
const BUSY_DEADLINE: Duration = Duration::from_secs(60);

fn sqlite(what: impl Into<String>) -> impl FnOnce(rusqlite::Error) -> BackupError {
    let what = what.into();
    move |source| BackupError::Sqlite { what, source }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BackupError {
    let what = what.into();
    move |source| BackupError::Io { what, source }
}

/// Copy the database at `src` into the file `dest` (replaced if it exists) with
/// SQLite's online backup, while other connections keep writing to `src`.
pub fn backup(src: &Path, dest: &Path) -> Result<BackupReport, BackupError> {
    if !src.exists() {
        return Err(BackupError::NoSource(src.to_path_buf()));
    }
    // Read-only: the backup only reads, and a connection of root's creates no file
    // in another service's directory (SQLite gives a `-shm` it must create the
    // database's owner).
    let from = Connection::open_with_flags(
        src,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sqlite(format!("cannot open {}", src.display())))?;
    from.busy_timeout(Duration::from_secs(5))
        .map_err(sqlite("busy_timeout"))?;

    let dir = match dest.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "backup.sqlite".into());
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = copy_into(src, &from, &tmp);
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    std::fs::rename(&tmp, dest).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(format!(
            "cannot rename {} to {}",
            tmp.display(),
            dest.display()
        ))(e)
    })?;
    // The rename itself survives a crash once the directory is synced.
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(report)
}

fn copy_into(src: &Path, from: &Connection, tmp: &Path) -> Result<BackupReport, BackupError> {
    let _ = std::fs::remove_file(tmp);
    let mut to =
        Connection::open(tmp).map_err(sqlite(format!("cannot create {}", tmp.display())))?;
    {
        let b = Backup::new(from, &mut to).map_err(sqlite("cannot start the backup"))?;
        // All pages in one step: one read transaction, so one consistent snapshot.
        // In WAL mode it does not block the writer; smaller steps would restart
        // from scratch each time another connection commits.
        let started = Instant::now();
        loop {
            match b
                .step(-1)
                .map_err(sqlite(format!("cannot copy {}", src.display())))?
            {
                StepResult::Done => break,
                // More, Busy, Locked (the enum is non-exhaustive): try again.
                _ => {
                    if started.elapsed() >= BUSY_DEADLINE {
                        return Err(BackupError::Busy(src.to_path_buf(), BUSY_DEADLINE));
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }
    // One file, no -wal beside it: the copy is restored by putting it in place.
    to.query_row("PRAGMA journal_mode = DELETE", [], |r| {
        r.get::<_, String>(0)
    })
    .map_err(sqlite("cannot set the copy's journal mode"))?;
    let check: Vec<String> = {
        let mut stmt = to
            .prepare("PRAGMA integrity_check")
            .map_err(sqlite("integrity_check"))?;
        stmt.query_map([], |r| r.get::<_, String>(0))
            .and_then(|rows| rows.collect())
            .map_err(sqlite("integrity_check"))?
    };
    if check != ["ok"] {
        return Err(BackupError::Integrity {
            src: src.to_path_buf(),
            detail: check.into_iter().take(5).collect::<Vec<_>>().join("; "),
        });
    }
    let pages: i64 = to
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .map_err(sqlite("page_count"))?;
    let user_version: i64 = to
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(sqlite("user_version"))?;
    to.close()
        .map_err(|(_, e)| sqlite(format!("cannot close {}", tmp.display()))(e))?;
    let file = std::fs::File::open(tmp).map_err(io(format!("cannot open {}", tmp.display())))?;
    file.sync_all()
        .map_err(io(format!("cannot sync {}", tmp.display())))?;
    let bytes = file
        .metadata()
        .map_err(io(format!("cannot stat {}", tmp.display())))?
        .len();
    Ok(BackupReport {
        pages,
        bytes,
        user_version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{HumanDuration, StoreConfig};
    use crate::store::{RequestRecord, Store, open_ro};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    fn count(path: &Path) -> i64 {
        open_ro(path)
            .unwrap()
            .query_row("SELECT count(*) FROM requests", [], |r| r.get(0))
            .unwrap()
    }

    /// Backups of a store whose writer thread commits every 100 ms while a second
    /// thread keeps sending records: each copy is a complete, consistent database
    /// (integrity_check, rows in order), self-contained (rollback journal, no
    /// `-wal` beside it) and never has fewer rows than the one before; the last,
    /// made after the writer caught up, has every row.
    #[test]
    fn backups_of_a_store_being_written_are_consistent_and_complete() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage.sqlite");
        let store = Store::open(
            &StoreConfig {
                enabled: true,
                path: None,
                keep: HumanDuration::secs(0),
                queue: 100_000,
                // The default: a transaction per 1024 rows.
                batch: 1024,
            },
            &path,
        );
        assert!(store.enabled());
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let load = {
            let (store, stop, sent) = (store.clone(), stop.clone(), sent.clone());
            std::thread::spawn(move || {
                // Bounded: at most 50,000 records or 20 s.
                let t0 = Instant::now();
                for i in 0..50_000u64 {
                    if stop.load(Ordering::Relaxed) || t0.elapsed() > Duration::from_secs(20) {
                        break;
                    }
                    store.request(RequestRecord {
                        ts_ms: i as i64,
                        request_id: format!("r{i}"),
                        status: 200,
                        ..Default::default()
                    });
                    sent.fetch_add(1, Ordering::Relaxed);
                    if i % 200 == 0 {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }
            })
        };
        // The store is live: rows committed, the -wal file in use.
        let deadline = Instant::now() + Duration::from_secs(10);
        while store.stats.written.load(Ordering::Relaxed) < 500 {
            assert!(Instant::now() < deadline, "nothing written");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(dir.path().join("usage.sqlite-wal").exists());

        let dest = dir.path().join("backup/usage.sqlite");
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        let mut last = 0;
        for _ in 0..5 {
            let r = backup(&path, &dest).unwrap();
            assert_eq!(r.user_version, crate::store::schema::VERSION);
            assert!(r.pages > 0 && r.bytes > 0, "{r:?}");
            assert!(!dest.with_file_name("usage.sqlite-wal").exists());
            let conn = Connection::open(&dest).unwrap();
            let mode: String = conn
                .query_row("PRAGMA journal_mode", [], |r| r.get(0))
                .unwrap();
            assert_eq!(mode, "delete");
            // Batches commit whole and in order: the copy holds a prefix of what
            // was sent, ids 1..=n with no gap.
            let (n, max): (i64, i64) = conn
                .query_row(
                    "SELECT count(*), coalesce(max(id), 0) FROM requests",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .unwrap();
            assert_eq!(n, max, "a gap in the copied rows");
            assert!(n >= last, "a later backup has fewer rows ({n} < {last})");
            last = n;
            std::thread::sleep(Duration::from_millis(150));
        }
        stop.store(true, Ordering::Relaxed);
        load.join().unwrap();
        let total = sent.load(Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(20);
        while store.stats.written.load(Ordering::Relaxed) < total {
            assert!(
                Instant::now() < deadline,
                "the writer did not catch up: {} of {total} written, {} dropped",
                store.stats.written.load(Ordering::Relaxed),
                store.stats.dropped.load(Ordering::Relaxed)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(store.stats.dropped.load(Ordering::Relaxed), 0);
        backup(&path, &dest).unwrap();
        assert_eq!(count(&dest) as u64, total);
        assert!(last as u64 <= total);
        // Nothing left behind but the backup.
        let names: Vec<_> = std::fs::read_dir(dest.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["usage.sqlite"]);
    }

    #[test]
    fn a_missing_or_broken_source_fails_and_keeps_the_last_backup() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("b.sqlite");
        std::fs::write(&dest, b"previous backup").unwrap();
        let e = backup(&dir.path().join("none.sqlite"), &dest).unwrap_err();
        assert!(matches!(e, BackupError::NoSource(_)), "{e}");
        let junk = dir.path().join("junk.sqlite");
        std::fs::write(&junk, vec![0x42u8; 8192]).unwrap();
        let e = backup(&junk, &dest).unwrap_err();
        assert!(matches!(e, BackupError::Sqlite { .. }), "{e}");
        assert_eq!(std::fs::read(&dest).unwrap(), b"previous backup");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(!names.iter().any(|n| n.contains(".tmp-")), "{names:?}");
    }
}
