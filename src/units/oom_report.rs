//! The kernel's own count of OOM kills in a model unit, read from inside the unit
//! by its `ExecStopPost=` (`llmvisor exit-report`) and found again in the unit's
//! journal when its exit is reported.
//!
//! Why from inside: on the unified (v2) hierarchy systemd reads `memory.events`
//! and sets the unit's `Result=oom-kill` itself, which stays the first truth. On
//! the legacy (v1) hierarchy systemd cannot see an OOM kill (its `Result` is
//! `signal`), and once the unit has ended systemd has already removed its memory
//! cgroup, so llmvisor cannot read the count afterwards; a memcg eventfd
//! (`cgroup.event_control`) would need `/sys/fs/cgroup` writable, which llmvisor's
//! own sandbox (`ProtectControlGroups=yes`) rightly refuses. `ExecStopPost=` runs
//! after the main process has ended but while the unit's cgroup still exists, so
//! the count is read there (checked in a Debian 12 container, systemd 252 on
//! cgroup v1: tests/system_limits.rs).
//!
//! The kernel counts an OOM kill against the memory cgroup of the killed task
//! (`memory.oom_control`'s `oom_kill` on v1, `memory.events`' `oom_kill` on v2),
//! whether the unit's own `MemoryMax`, its slice's or the whole host ran out.

use std::path::{Path, PathBuf};

/// The subcommand the unit's `ExecStopPost=` runs (hidden from `--help`).
pub const SUBCOMMAND: &str = "exit-report";

/// How the report line starts; the count follows.
const PREFIX: &str = "llmvisor exit-report: oom_kill=";

/// The unit's `ExecStopPost=` command: this very binary (the store path on NixOS,
/// readable inside the unit's `ProtectSystem=strict` sandbox), or `None` when its
/// path is unknown or would need quoting.
pub fn command() -> Option<Vec<String>> {
    static EXE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let exe = EXE.get_or_init(|| {
        let exe = std::env::current_exe().ok()?.to_str()?.to_string();
        let plain = exe
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./+@".contains(c));
        plain.then_some(exe)
    });
    Some(vec![exe.clone()?, SUBCOMMAND.to_string()])
}

/// The memory cgroup's OOM-kill counter of a process, from its `/proc/<pid>/cgroup`
/// text: the v1 `memory` hierarchy's `memory.oom_control` if there is one, else
/// the unified hierarchy's `memory.events`.
fn counter_file(proc_cgroup: &str, root: &Path) -> Option<PathBuf> {
    let mut unified = None;
    for line in proc_cgroup.lines() {
        let mut f = line.splitn(3, ':');
        let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
        let rel = path.trim_start_matches('/');
        if controllers.split(',').any(|c| c == "memory") {
            return Some(root.join("memory").join(rel).join("memory.oom_control"));
        }
        if controllers.is_empty() {
            unified = Some(root.join(rel).join("memory.events"));
        }
    }
    unified
}

/// The `oom_kill` value of a `memory.oom_control` or `memory.events` text.
fn oom_kills(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
}

/// What `llmvisor exit-report` prints, given `/proc/self/cgroup`, the cgroup file
/// system's root and `$SERVICE_RESULT`: the count when the kernel killed anything
/// or the unit failed (so llmvisor knows the report is complete), nothing after a
/// clean stop without kills.
pub fn report(proc_cgroup: &str, root: &Path, service_result: Option<&str>) -> Option<String> {
    let failed = service_result.is_some_and(|r| r != "success");
    let Some(file) = counter_file(proc_cgroup, root) else {
        return failed.then(|| "llmvisor exit-report: no memory cgroup".to_string());
    };
    match std::fs::read_to_string(&file).map(|t| oom_kills(&t)) {
        Ok(Some(n)) if n > 0 || failed => Some(format!("{PREFIX}{n} ({})", file.display())),
        Ok(Some(_)) => None,
        Ok(None) => {
            failed.then(|| format!("llmvisor exit-report: no oom_kill in {}", file.display()))
        }
        Err(e) => failed.then(|| format!("llmvisor exit-report: {}: {e}", file.display())),
    }
}

/// `llmvisor exit-report`: print the report of this process's own cgroup, ending
/// with ` invocation=<$INVOCATION_ID>`. Always succeeds: a unit's end must not
/// depend on it.
///
/// Why the invocation is in the text: journald learns a stdout line's
/// `_SYSTEMD_UNIT` and `_SYSTEMD_INVOCATION_ID` by reading the writer's cgroup
/// from `/proc`, and a process as short-lived as this one may be gone by then
/// (systemd issue #2913, open): the line is kept, with the stream's
/// `SYSLOG_IDENTIFIER` (`llmvisor`), but a query by unit and invocation misses
/// it. [`of_invocation`] finds it by the identifier and this suffix instead.
pub fn run() {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let result = std::env::var("SERVICE_RESULT").ok();
    if let Some(line) = report(&own, Path::new("/sys/fs/cgroup"), result.as_deref()) {
        match std::env::var("INVOCATION_ID") {
            Ok(id) if !id.is_empty() => println!("{line} invocation={id}"),
            _ => println!("{line}"),
        }
    }
}

/// The reports among `lines` (messages of the stream identifier `llmvisor`)
/// that name `invocation` (see [`run`]), without that suffix.
pub fn of_invocation(lines: &[String], invocation: &str) -> Vec<String> {
    let suffix = format!(" invocation={invocation}");
    lines
        .iter()
        .filter(|l| is_report(l))
        .filter_map(|l| l.strip_suffix(&suffix))
        .map(str::to_string)
        .collect()
}

/// Whether `line` is a report of ours (of any kind).
fn is_report(line: &str) -> bool {
    line.starts_with("llmvisor exit-report: ")
}

/// Take the reports out of a unit's last output (they are not the backend's
/// words): `Some(kills)` when a count was reported, `None` when none was.
pub fn take(last_output: &mut Vec<String>) -> Option<u64> {
    let count = last_output
        .iter()
        .filter_map(|l| l.strip_prefix(PREFIX))
        .filter_map(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .max();
    last_output.retain(|l| !is_report(l));
    count
}

/// Whether the output holds a report at all (a count or why there is none).
pub fn reported(last_output: &[String]) -> bool {
    last_output.iter().any(|l| is_report(l))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cgroup file system laid out like the v1 and v2 hierarchies, with the
    /// files' real formats (Linux 6.1 and 6.18).
    fn tree(v1: bool, kills: u64) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        let unit = "llmvisor.slice/llmvisor-model-m.service";
        let (dir, file, text) = if v1 {
            (
                root.path().join("memory").join(unit),
                "memory.oom_control",
                format!("oom_kill_disable 0\nunder_oom 0\noom_kill {kills}\n"),
            )
        } else {
            (
                root.path().join(unit),
                "memory.events",
                format!("low 0\nhigh 0\nmax 12\noom 1\noom_kill {kills}\noom_group_kill 0\n"),
            )
        };
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(file), text).unwrap();
        root
    }

    const V1: &str = "9:name=systemd:/llmvisor.slice/llmvisor-model-m.service\n8:pids:/llmvisor.slice/llmvisor-model-m.service\n4:memory:/llmvisor.slice/llmvisor-model-m.service\n1:cpu:/\n0::/\n";
    const V2: &str = "0::/llmvisor.slice/llmvisor-model-m.service\n";

    #[test]
    fn the_count_is_read_from_the_units_own_memory_cgroup() {
        let t = tree(true, 1);
        let line = report(V1, t.path(), Some("signal")).unwrap();
        assert!(
            line.starts_with("llmvisor exit-report: oom_kill=1 ("),
            "{line}"
        );
        assert!(line.contains("memory/llmvisor.slice/llmvisor-model-m.service/memory.oom_control"));
        let t = tree(false, 2);
        let line = report(V2, t.path(), Some("oom-kill")).unwrap();
        assert!(
            line.starts_with("llmvisor exit-report: oom_kill=2 ("),
            "{line}"
        );
        // A failure without kills is reported (with 0), a clean stop is not.
        let t = tree(true, 0);
        assert!(
            report(V1, t.path(), Some("exit-code"))
                .unwrap()
                .contains("oom_kill=0")
        );
        assert_eq!(report(V1, t.path(), Some("success")), None);
        // Nothing readable: said on failure only.
        let none = tempfile::tempdir().unwrap();
        assert!(report(V1, none.path(), Some("signal")).is_some());
        assert_eq!(report(V1, none.path(), Some("success")), None);
        assert_eq!(report("", none.path(), None), None);
    }

    #[test]
    fn reports_are_taken_out_of_the_backends_output() {
        let mut out = vec![
            "llmvisor-mock: allocated 56 MiB".to_string(),
            "llmvisor exit-report: oom_kill=1 (/sys/fs/cgroup/memory/x/memory.oom_control)"
                .to_string(),
        ];
        assert!(reported(&out));
        assert_eq!(take(&mut out), Some(1));
        assert_eq!(out, ["llmvisor-mock: allocated 56 MiB"]);
        let mut out = vec!["llmvisor exit-report: no memory cgroup".to_string()];
        assert!(reported(&out));
        assert_eq!(take(&mut out), None);
        assert!(out.is_empty());
        assert_eq!(take(&mut vec!["oom_kill=3".to_string()]), None);
    }

    /// A report found by the identifier belongs to its invocation only; the
    /// count is read the same with the suffix on.
    #[test]
    fn reports_are_matched_to_their_invocation() {
        let lines = vec![
            "llmvisor exit-report: oom_kill=1 (/x/memory.oom_control) invocation=aa11".to_string(),
            "llmvisor exit-report: oom_kill=0 (/x/memory.oom_control) invocation=bb22".to_string(),
            "listening on 127.0.0.1:8080".to_string(),
        ];
        let mut mine = of_invocation(&lines, "aa11");
        assert_eq!(
            mine,
            ["llmvisor exit-report: oom_kill=1 (/x/memory.oom_control)"]
        );
        assert_eq!(take(&mut mine), Some(1));
        assert!(of_invocation(&lines, "cc33").is_empty());
        assert!(of_invocation(&lines, "aa1").is_empty());
        let mut with_suffix = vec![lines[0].clone()];
        assert_eq!(take(&mut with_suffix), Some(1));
    }

    #[test]
    fn the_command_is_this_binary() {
        let argv = command().unwrap();
        assert_eq!(argv[1], SUBCOMMAND);
        assert!(Path::new(&argv[0]).is_absolute(), "{argv:?}");
    }
}
