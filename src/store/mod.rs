//! The usage store: one SQLite file (WAL) with a row per request and per model
//! event. Requests never wait for it: records go through a bounded channel to one
//! writer thread that commits in batches; when the channel is full the record is
//! dropped, counted (`llmvisor_store_dropped_total`) and logged once per interval.
//! A database that cannot be opened or written is logged, and llmvisor serves on.
//! At shutdown, [`Store::close`] waits (bounded) until the model events of the last
//! state changes are queued and every record accepted before it is committed.

pub mod backup;
pub mod events;
pub mod query;
mod schema;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender, sync_channel};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OpenFlags, params};

use crate::config::StoreConfig;

/// One finished request.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RequestRecord {
    /// Unix milliseconds when the request arrived.
    pub ts_ms: i64,
    /// `x-request-id`.
    pub request_id: String,
    /// Client name.
    pub client: String,
    /// Public name asked for.
    pub route: String,
    /// Instance or `provider/model` that served it (`-` if none).
    pub target: String,
    /// `chat/completions`, `completions`, `embeddings`, `rerank`.
    pub endpoint: String,
    /// HTTP status sent (499: the client left).
    pub status: u16,
    /// Prompt tokens from the response's `usage`.
    pub prompt_tokens: Option<u64>,
    /// Completion tokens from the response's `usage`.
    pub completion_tokens: Option<u64>,
    /// Time waiting for a slot.
    pub queue_ms: Option<u64>,
    /// Time waiting for a cold start.
    pub cold_start_ms: Option<u64>,
    /// Time to the first byte of the response body.
    pub ttft_ms: Option<u64>,
    /// Time to the end of the response.
    pub total_ms: u64,
    /// What went wrong, as a short code (`backend_error`, `queue_full`, …).
    pub error: Option<String>,
    /// Cost in USD of a provider request with prices configured.
    pub cost_usd: Option<f64>,
    /// Whether it was a stream.
    pub stream: bool,
}

/// One model lifecycle event.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EventRecord {
    /// Unix milliseconds.
    pub ts_ms: i64,
    /// Instance name.
    pub model: String,
    /// `start_requested`, `ready`, `stopped`, `failed`, `oom`.
    pub event: String,
    /// Why (stop reason: idle, profile, eviction, admin, reload, shutdown, crash).
    pub reason: Option<String>,
    /// Exit status, last error or other detail.
    pub detail: Option<String>,
    /// Load time of a `ready` event.
    pub load_ms: Option<u64>,
}

enum Record {
    Request(RequestRecord),
    Event(EventRecord),
    /// Commit everything received so far, then answer.
    Flush(SyncSender<()>),
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Counters shared with the metrics.
#[derive(Default)]
pub struct StoreStats {
    /// Records dropped because the channel was full or the store is off.
    pub dropped: AtomicU64,
    /// Records written.
    pub written: AtomicU64,
    /// Failed write batches.
    pub write_errors: AtomicU64,
    last_drop_log_ms: AtomicU64,
}

/// The handle requests use; cheap to clone.
#[derive(Clone)]
pub struct Store {
    /// An unbounded (linked-block) channel, bounded by `queued`: a bounded std
    /// channel allocates and touches every slot up front (20,000 records were
    /// about 5 MB of resident memory at idle).
    tx: Option<Sender<Record>>,
    /// Records sent and not yet taken by the writer, and the most allowed.
    queued: Arc<AtomicUsize>,
    queue: usize,
    /// Counters.
    pub stats: Arc<StoreStats>,
    path: Option<PathBuf>,
    /// Each finished request as it is recorded, for the operator's page
    /// (`/admin/events`); also when the store is off. Bounded: a slow page lags.
    live: tokio::sync::broadcast::Sender<Arc<RequestRecord>>,
}

/// Requests a slow `/admin/events` reader may fall behind before it lags.
const LIVE_REQUESTS: usize = 256;

/// How often a full channel is logged at most.
const DROP_LOG_INTERVAL_MS: u64 = 10_000;

impl Store {
    /// A store that records nothing (`[store] enabled = false`, or it could not open).
    pub fn disabled() -> Self {
        Self {
            tx: None,
            queued: Arc::default(),
            queue: 0,
            stats: Arc::new(StoreStats::default()),
            path: None,
            live: tokio::sync::broadcast::channel(LIVE_REQUESTS).0,
        }
    }

    /// Open (creating and migrating) the database and start the writer thread. On
    /// failure, log why and return a disabled store: serving goes on.
    pub fn open(cfg: &StoreConfig, path: &Path) -> Self {
        if !cfg.enabled {
            return Self::disabled();
        }
        let conn = match open_rw(path) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(
                    "usage store disabled: cannot open {}: {e}; requests are served but not recorded",
                    path.display()
                );
                return Self::disabled();
            }
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let stats = Arc::new(StoreStats::default());
        let writer = Writer {
            conn,
            rx,
            queued: queued.clone(),
            stats: stats.clone(),
            batch: cfg.batch.max(1) as usize,
            keep: cfg.keep.0,
            last_prune: None,
            path: path.to_path_buf(),
            last_error_log: None,
        };
        let spawned = std::thread::Builder::new()
            .name("llmvisor-store".into())
            .spawn(move || writer.run());
        if let Err(e) = spawned {
            tracing::error!("usage store disabled: cannot start its writer: {e}");
            return Self::disabled();
        }
        tracing::info!("usage store: {}", path.display());
        Self {
            tx: Some(tx),
            queued,
            queue: cfg.queue.max(1) as usize,
            stats,
            path: Some(path.to_path_buf()),
            live: tokio::sync::broadcast::channel(LIVE_REQUESTS).0,
        }
    }

    /// Whether records are kept.
    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// The database file, when enabled.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    fn send(&self, r: Record) {
        let Some(tx) = &self.tx else { return };
        let accepted = self.queued.fetch_add(1, Ordering::Relaxed) < self.queue;
        if accepted && tx.send(r).is_ok() {
            return;
        }
        self.queued.fetch_sub(1, Ordering::Relaxed);
        let n = self.stats.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        let now = now_ms() as u64;
        let last = self.stats.last_drop_log_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= DROP_LOG_INTERVAL_MS
            && self
                .stats
                .last_drop_log_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                "usage store cannot keep up: {n} records dropped so far (requests are not slowed down)"
            );
        }
    }

    /// Record a finished request (never blocks).
    pub fn request(&self, r: RequestRecord) {
        // A copy only while a page follows.
        if self.live.receiver_count() > 0 {
            let _ = self.live.send(Arc::new(r.clone()));
        }
        self.send(Record::Request(r));
    }

    /// Each request recorded from now on. A receiver that falls behind gets
    /// `Lagged` (and misses those records; they are still in the database).
    pub fn subscribe_requests(&self) -> tokio::sync::broadcast::Receiver<Arc<RequestRecord>> {
        self.live.subscribe()
    }

    /// Record a model event (never blocks).
    pub fn event(&self, e: EventRecord) {
        self.send(Record::Event(e));
    }

    /// At shutdown, after the models are stopped: wait until the writer has
    /// committed every record accepted before this call (the `stopped` events
    /// included: the fleet hands them over as it makes each change), for up to
    /// `within`. Returns whether everything was written in time.
    pub async fn close(&self, within: Duration) -> bool {
        let Some(tx) = self.tx.clone() else {
            return true;
        };
        let left = within;
        let done = tokio::task::spawn_blocking(move || {
            let (ack_tx, ack_rx) = sync_channel(1);
            let t0 = Instant::now();
            // Not bounded by the queue: the flush goes after every accepted record.
            let sent = tx.send(Record::Flush(ack_tx)).is_ok();
            sent && ack_rx
                .recv_timeout(left.saturating_sub(t0.elapsed()))
                .is_ok()
        })
        .await
        .unwrap_or(false);
        let written = self.stats.written.load(Ordering::Relaxed);
        if done {
            tracing::info!("usage store: all records written ({written} in this run)");
        } else {
            tracing::warn!(
                "usage store: not every record was written within {within:?} ({written} in this run)"
            );
        }
        done
    }
}

fn open_rw(path: &Path) -> rusqlite::Result<Connection> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        let _ = std::fs::create_dir_all(dir);
    }
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // Reading the header proves the file is a database (a corrupt one fails here).
    conn.query_row("PRAGMA quick_check", [], |r| r.get::<_, String>(0))
        .and_then(|ok| {
            if ok == "ok" {
                Ok(())
            } else {
                Err(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
                    Some(ok),
                ))
            }
        })?;
    schema::migrate(&conn)?;
    Ok(conn)
}

/// Open an existing database read-only (for `llmvisor usage` and `events`, which
/// run beside the service).
pub fn open_ro(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > schema::VERSION {
        return Err(rusqlite::Error::InvalidQuery);
    }
    Ok(conn)
}

struct Writer {
    conn: Connection,
    rx: Receiver<Record>,
    queued: Arc<AtomicUsize>,
    stats: Arc<StoreStats>,
    batch: usize,
    keep: Duration,
    last_prune: Option<Instant>,
    path: PathBuf,
    last_error_log: Option<Instant>,
}

/// How often old rows are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(24 * 3600);

/// How often the writer collects what arrived and commits it.
const FLUSH_EVERY: Duration = Duration::from_millis(100);

impl Writer {
    fn run(mut self) {
        self.prune_if_due();
        let mut buf = Vec::with_capacity(self.batch);
        let mut last_prune_check = Instant::now();
        loop {
            // Collect on a tick instead of blocking on the channel: a blocked
            // receiver makes every sender pay a wake-up (a futex call and a context
            // switch) on the request path; a ticking one costs senders nothing.
            std::thread::sleep(FLUSH_EVERY);
            if self.drain(&mut buf) {
                return;
            }
            if last_prune_check.elapsed() >= Duration::from_secs(60) {
                last_prune_check = Instant::now();
                self.prune_if_due();
            }
        }
    }

    /// Write everything that is in the channel, a batch per transaction, and
    /// answer the flushes found on the way; whether the senders are gone.
    fn drain(&mut self, buf: &mut Vec<Record>) -> bool {
        loop {
            let mut ack = None;
            let mut disconnected = false;
            while buf.len() < self.batch {
                match self.rx.try_recv() {
                    Ok(Record::Flush(a)) => {
                        ack = Some(a);
                        break;
                    }
                    Ok(r) => {
                        self.queued.fetch_sub(1, Ordering::Relaxed);
                        buf.push(r);
                    }
                    Err(std::sync::mpsc::TryRecvError::Empty) => break,
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                        disconnected = true;
                        break;
                    }
                }
            }
            // A full batch: more may be waiting (a tick at 30,000 requests per
            // second brings 3,000), so go on rather than leave them for the next
            // tick, by which time the channel is full and records are dropped.
            let full = buf.len() >= self.batch;
            if !buf.is_empty() {
                self.flush(buf);
            }
            if let Some(a) = ack {
                let _ = a.send(());
            } else if !full {
                return disconnected;
            }
        }
    }

    fn flush(&mut self, buf: &mut Vec<Record>) {
        let n = buf.len() as u64;
        match self.write(buf) {
            Ok(()) => {
                self.stats.written.fetch_add(n, Ordering::Relaxed);
            }
            Err(e) => {
                self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                self.stats.dropped.fetch_add(n, Ordering::Relaxed);
                if self
                    .last_error_log
                    .is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
                {
                    self.last_error_log = Some(Instant::now());
                    tracing::error!(
                        "usage store: cannot write to {}: {e}; {n} records lost, serving goes on",
                        self.path.display()
                    );
                }
            }
        }
        buf.clear();
    }

    fn write(&mut self, batch: &[Record]) -> rusqlite::Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut req = tx.prepare_cached(
                "INSERT INTO requests (ts_ms, request_id, client, route, target, endpoint, status,
                    prompt_tokens, completion_tokens, queue_ms, cold_start_ms, ttft_ms, total_ms,
                    error, cost_usd, stream)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
            )?;
            let mut ev = tx.prepare_cached(
                "INSERT INTO events (ts_ms, model, event, reason, detail, load_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for r in batch {
                match r {
                    Record::Request(r) => {
                        req.execute(params![
                            r.ts_ms,
                            r.request_id,
                            r.client,
                            r.route,
                            r.target,
                            r.endpoint,
                            r.status,
                            r.prompt_tokens.map(|v| v as i64),
                            r.completion_tokens.map(|v| v as i64),
                            r.queue_ms.map(|v| v as i64),
                            r.cold_start_ms.map(|v| v as i64),
                            r.ttft_ms.map(|v| v as i64),
                            r.total_ms as i64,
                            r.error,
                            r.cost_usd,
                            r.stream,
                        ])?;
                    }
                    Record::Flush(_) => {}
                    Record::Event(e) => {
                        ev.execute(params![
                            e.ts_ms,
                            e.model,
                            e.event,
                            e.reason,
                            e.detail,
                            e.load_ms.map(|v| v as i64),
                        ])?;
                    }
                }
            }
        }
        tx.commit()
    }

    fn prune_if_due(&mut self) {
        if self.last_prune.is_some_and(|t| t.elapsed() < PRUNE_EVERY) {
            return;
        }
        self.last_prune = Some(Instant::now());
        match prune(&self.conn, self.keep, now_ms()) {
            Ok((r, e)) if r + e > 0 => {
                tracing::info!(
                    "usage store: pruned {r} requests and {e} events older than {}",
                    humantime::format_duration(self.keep)
                )
            }
            Ok(_) => {}
            Err(e) => tracing::error!("usage store: cannot prune: {e}"),
        }
    }
}

/// Delete rows older than `keep` (0: keep everything). Returns rows deleted.
pub fn prune(conn: &Connection, keep: Duration, now_ms: i64) -> rusqlite::Result<(usize, usize)> {
    if keep.is_zero() {
        return Ok((0, 0));
    }
    let cutoff = now_ms - keep.as_millis() as i64;
    let r = conn.execute("DELETE FROM requests WHERE ts_ms < ?1", [cutoff])?;
    let e = conn.execute("DELETE FROM events WHERE ts_ms < ?1", [cutoff])?;
    Ok((r, e))
}

/// Where the database goes without `[store] path`: systemd's `$STATE_DIRECTORY`
/// (`StateDirectory=llmvisor`), else `/var/lib/llmvisor` for root, else the user's
/// `$XDG_STATE_HOME/llmvisor` (`~/.local/state/llmvisor`).
pub fn default_path() -> PathBuf {
    if let Some(dir) = std::env::var_os("STATE_DIRECTORY") {
        // Several directories are separated by ':'; the first is ours.
        let first = dir
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or("")
            .to_string();
        if !first.is_empty() {
            return PathBuf::from(first).join("usage.sqlite");
        }
    }
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/llmvisor/usage.sqlite");
    }
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("llmvisor/usage.sqlite")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HumanDuration;

    fn cfg(queue: u32) -> StoreConfig {
        StoreConfig {
            enabled: true,
            path: None,
            keep: HumanDuration::secs(90 * 86400),
            queue,
            batch: 64,
        }
    }

    fn wait_written(s: &Store, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while s.stats.written.load(Ordering::Relaxed) < n {
            assert!(Instant::now() < deadline, "not written");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn rows_are_written_and_old_ones_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("u.sqlite");
        let s = Store::open(&cfg(100), &path);
        assert!(s.enabled());
        let now = now_ms();
        for (i, age_days) in [0i64, 1, 100].iter().enumerate() {
            s.request(RequestRecord {
                ts_ms: now - age_days * 86_400_000,
                request_id: format!("r{i}"),
                status: 200,
                ..Default::default()
            });
        }
        s.event(EventRecord {
            ts_ms: now,
            model: "m".into(),
            event: "ready".into(),
            load_ms: Some(1500),
            ..Default::default()
        });
        wait_written(&s, 4);
        let ro = open_ro(&path).unwrap();
        let n: i64 = ro
            .query_row("SELECT count(*) FROM requests", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 3);
        let rw = Connection::open(&path).unwrap();
        assert_eq!(
            prune(&rw, Duration::from_secs(90 * 86400), now).unwrap(),
            (1, 0)
        );
        let n: i64 = ro
            .query_row("SELECT count(*) FROM requests", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 2);
    }

    /// One tick writes everything that arrived since the last, however many
    /// batches that is (it once wrote one batch per tick: 1024 rows every 100 ms,
    /// and under load the rest of the queue filled and was dropped).
    #[test]
    fn a_tick_writes_every_waiting_batch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("u.sqlite");
        let (tx, rx) = std::sync::mpsc::channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let stats = Arc::new(StoreStats::default());
        let mut w = Writer {
            conn: open_rw(&path).unwrap(),
            rx,
            queued: queued.clone(),
            stats: stats.clone(),
            batch: 64,
            keep: Duration::from_secs(86400),
            last_prune: None,
            path: path.clone(),
            last_error_log: None,
        };
        let (ack, acked) = sync_channel(1);
        for i in 0..64 * 10 + 5 {
            if i == 100 {
                tx.send(Record::Flush(ack.clone())).unwrap();
            }
            queued.fetch_add(1, Ordering::Relaxed);
            tx.send(Record::Request(RequestRecord::default())).unwrap();
        }
        let mut buf = Vec::new();
        assert!(!w.drain(&mut buf), "the sender is still there");
        assert_eq!(stats.written.load(Ordering::Relaxed), 64 * 10 + 5);
        assert_eq!(queued.load(Ordering::Relaxed), 0);
        assert!(
            acked.try_recv().is_ok(),
            "the flush on the way was answered"
        );
        let n: i64 = open_ro(&path)
            .unwrap()
            .query_row("SELECT count(*) FROM requests", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 64 * 10 + 5);
        drop(tx);
        assert!(w.drain(&mut buf), "the senders are gone");
    }

    #[test]
    fn a_full_channel_drops_and_counts_instead_of_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("u.sqlite");
        // Hold the write lock so the writer stalls on its first batch.
        let blocker = Connection::open(&path).unwrap();
        let s = Store::open(&cfg(4), &path);
        blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
        let t = Instant::now();
        for _ in 0..1000 {
            s.request(RequestRecord::default());
        }
        assert!(t.elapsed() < Duration::from_secs(1), "record() blocked");
        assert!(s.stats.dropped.load(Ordering::Relaxed) >= 990);
        blocker.execute_batch("COMMIT").unwrap();
    }

    #[test]
    fn a_corrupt_file_disables_the_store_without_failing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("u.sqlite");
        std::fs::write(&path, vec![0x42u8; 8192]).unwrap();
        let s = Store::open(&cfg(10), &path);
        assert!(!s.enabled());
        s.request(RequestRecord::default());
        let s = Store::open(&cfg(10), Path::new("/proc/llmvisor-nope/u.sqlite"));
        assert!(!s.enabled());
    }
}
