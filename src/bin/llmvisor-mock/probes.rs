//! Probes of the limits a backend runs under, for the system tests: which device
//! nodes it can open (`--report-open`), how many processes it can fork (`--fork`),
//! how much memory it can take (`--alloc-mb`) and how much CPU a busy loop gets
//! (`--busy-threads`). Results are under `probes` in `GET /mock/stats`.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

/// What to probe, from the command line.
#[derive(Clone, Debug, Default)]
pub struct Probes {
    /// Device nodes (or any paths) to open read-write on every stats request.
    pub report_open: Vec<PathBuf>,
    /// Processes to fork at start-up.
    pub fork: Option<u32>,
    /// MiB to allocate and touch, `alloc_after` after start-up.
    pub alloc_mb: Option<u64>,
    /// Delay before the allocation.
    pub alloc_after: Duration,
    /// Threads spinning at start-up, for `busy_for`.
    pub busy_threads: u32,
    /// How long they spin.
    pub busy_for: Duration,
}

/// Results of the start-up probes.
static RESULTS: Mutex<Option<Map<String, Value>>> = Mutex::new(None);

fn record(key: &str, value: Value) {
    RESULTS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_with(Map::new)
        .insert(key.into(), value);
}

/// The errno's name (`ENXIO`), or `ok`.
fn outcome(r: std::io::Result<()>) -> String {
    match r {
        Ok(()) => "ok".into(),
        Err(e) => match e.raw_os_error() {
            Some(n) => format!("{:?}", nix::errno::Errno::from_raw(n)),
            None => e.to_string(),
        },
    }
}

impl Probes {
    /// Start the start-up probes (forks now; the allocation and the busy loop on
    /// threads of their own).
    pub fn start(&self) {
        if let Some(n) = self.fork {
            record("fork", fork_children(n));
        }
        if self.busy_threads > 0 {
            let (threads, busy_for) = (self.busy_threads, self.busy_for);
            std::thread::spawn(move || record("busy", busy(threads, busy_for)));
        }
        if let Some(mb) = self.alloc_mb {
            let after = self.alloc_after;
            std::thread::spawn(move || {
                std::thread::sleep(after);
                allocate(mb);
            });
        }
    }

    /// `probes` for `/mock/stats`: the start-up results and, now, what each
    /// `--report-open` path's `open(O_RDWR)` returned.
    pub fn snapshot(&self) -> Value {
        let mut out = RESULTS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_default();
        if !self.report_open.is_empty() {
            let open: Map<String, Value> = self
                .report_open
                .iter()
                .map(|p| {
                    let r = std::fs::OpenOptions::new()
                        .read(true)
                        .write(true)
                        .open(p)
                        .map(drop);
                    (p.display().to_string(), Value::String(outcome(r)))
                })
                .collect();
            out.insert("open".into(), Value::Object(open));
        }
        Value::Object(out)
    }
}

/// Fork `n` children that wait for their parent's death (and die with it);
/// stop at the first error.
#[allow(unsafe_code)]
fn fork_children(n: u32) -> Value {
    let mut forked = 0;
    let mut error = Value::Null;
    for _ in 0..n {
        // SAFETY: the child only makes raw system calls (prctl, pause), which
        // are async-signal-safe, and never returns.
        match unsafe { nix::unistd::fork() } {
            Ok(nix::unistd::ForkResult::Child) => {
                let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
                loop {
                    nix::unistd::pause();
                }
            }
            Ok(nix::unistd::ForkResult::Parent { .. }) => forked += 1,
            Err(e) => {
                error = Value::String(format!("{e:?}"));
                break;
            }
        }
    }
    eprintln!("llmvisor-mock: forked {forked} of {n} processes (error: {error})");
    json!({"asked": n, "forked": forked, "error": error})
}

/// Spin `threads` threads for `busy_for`; the process's CPU time over that wall time.
fn busy(threads: u32, busy_for: Duration) -> Value {
    let cpu = || {
        nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)
            .map(|u| {
                let t = |v: nix::sys::time::TimeVal| {
                    v.tv_sec() as f64 + v.tv_usec() as f64 / 1_000_000.0
                };
                t(u.user_time()) + t(u.system_time())
            })
            .unwrap_or(0.0)
    };
    let (c0, t0) = (cpu(), Instant::now());
    let spinners: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(move || {
                let mut x = 0u64;
                while t0.elapsed() < busy_for {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            })
        })
        .collect();
    for s in spinners {
        let _ = s.join();
    }
    let (cpu_s, wall_s) = (cpu() - c0, t0.elapsed().as_secs_f64());
    eprintln!("llmvisor-mock: {threads} busy threads used {cpu_s:.2} s of CPU in {wall_s:.2} s");
    json!({"threads": threads, "cpu_s": cpu_s, "wall_s": wall_s})
}

/// Allocate and touch `mb` MiB, 1 MiB at a time, saying how far it got every
/// 8 MiB; then hold it.
fn allocate(mb: u64) {
    let mut held: Vec<Vec<u8>> = Vec::new();
    for i in 1..=mb {
        // Non-zero bytes: every page is written, so it is really charged.
        held.push(vec![0x5a; 1 << 20]);
        if i % 8 == 0 || i == mb {
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "llmvisor-mock: allocated {i} MiB");
            let _ = err.flush();
        }
    }
    record("alloc_mb", json!(mb));
    loop {
        std::thread::sleep(Duration::from_secs(3600));
        std::hint::black_box(&held);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_report_names_the_errno() {
        let p = Probes {
            report_open: vec!["/dev/null".into(), "/nonexistent/llmvisor".into()],
            ..Probes::default()
        };
        assert_eq!(
            p.snapshot()["open"],
            json!({"/dev/null": "ok", "/nonexistent/llmvisor": "ENOENT"})
        );
    }

    #[test]
    fn forks_and_busy_threads_report_what_they_got() {
        let f = fork_children(2);
        assert_eq!(f, json!({"asked": 2, "forked": 2, "error": null}));
        let b = busy(1, Duration::from_millis(200));
        assert!(b["wall_s"].as_f64().unwrap() >= 0.2, "{b}");
        assert!(b["cpu_s"].as_f64().unwrap() > 0.0, "{b}");
    }
}
