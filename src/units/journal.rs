//! A model's log from the systemd journal, through libsystemd (the `systemd`
//! crate): its unit's own output, and what llmvisor logged about it (`MODEL=`).
//! Blocking calls: use from `spawn_blocking` in async code.

use std::time::Duration;

use systemd::journal::{Journal, JournalRecord, OpenOptions};

/// Which entries to read.
#[derive(Clone, Debug)]
pub struct Query<'a> {
    /// `llmvisor-model-<name>.service`.
    pub unit: &'a str,
    /// Also llmvisor's own lines with `MODEL=<name>` (the process manager's
    /// captured output, starts, stops, failures).
    pub model: Option<&'a str>,
    /// Only this run of the unit (`_SYSTEMD_INVOCATION_ID`).
    pub invocation: Option<&'a str>,
}

fn open(q: &Query<'_>) -> Result<Journal, String> {
    let mut j = OpenOptions::default()
        .system(true)
        .current_user(true)
        .local_only(true)
        .open()
        .map_err(|e| format!("cannot open the journal: {e}"))?;
    let err = |e: systemd::Error| format!("journal match: {e}");
    j.match_add("_SYSTEMD_UNIT", q.unit).map_err(err)?;
    if let Some(inv) = q.invocation {
        j.match_add("_SYSTEMD_INVOCATION_ID", inv).map_err(err)?;
    } else {
        // The same unit under a user's manager (`systemd-user`).
        j.match_or().map_err(err)?;
        j.match_add("_SYSTEMD_USER_UNIT", q.unit).map_err(err)?;
    }
    if let Some(model) = q.model {
        j.match_or().map_err(err)?;
        j.match_add("SYSLOG_IDENTIFIER", "llmvisor").map_err(err)?;
        j.match_add("MODEL", model).map_err(err)?;
    }
    Ok(j)
}

/// One entry as a line: `2026-11-23T12:00:00Z llmvisor-mock[123]: message`.
fn line(j: &Journal, r: &JournalRecord) -> String {
    let when = j
        .timestamp()
        .map(|t| humantime::format_rfc3339_seconds(t).to_string())
        .unwrap_or_default();
    let who = r
        .get("SYSLOG_IDENTIFIER")
        .or_else(|| r.get("_COMM"))
        .map_or("?", String::as_str);
    let pid = r.get("_PID").map(|p| format!("[{p}]")).unwrap_or_default();
    let msg = r.get("MESSAGE").map_or("", String::as_str);
    format!("{when} {who}{pid}: {msg}")
}

/// The last `lines` entries, oldest first.
pub fn tail(q: &Query<'_>, lines: usize) -> Result<Vec<String>, String> {
    let mut j = open(q)?;
    j.seek_tail().map_err(|e| format!("journal seek: {e}"))?;
    let mut out = Vec::new();
    while out.len() < lines {
        match j.previous_entry() {
            Ok(Some(r)) => out.push(line(&j, &r)),
            Ok(None) => break,
            Err(e) => return Err(format!("journal read: {e}")),
        }
    }
    out.reverse();
    Ok(out)
}

/// Just the messages of the last `lines` entries (for error messages).
pub fn messages(q: &Query<'_>, lines: usize) -> Vec<String> {
    let Ok(mut j) = open(q) else {
        return Vec::new();
    };
    last_messages(&mut j, lines)
}

/// The messages of the last `lines` entries `j` matches, oldest first.
fn last_messages(j: &mut Journal, lines: usize) -> Vec<String> {
    if j.seek_tail().is_err() {
        return Vec::new();
    }
    let mut out = Vec::new();
    while out.len() < lines {
        match j.previous_entry() {
            Ok(Some(r)) => out.push(r.get("MESSAGE").cloned().unwrap_or_default()),
            _ => break,
        }
    }
    out.reverse();
    out
}

/// The messages of the last `lines` entries whose `SYSLOG_IDENTIFIER` is
/// `identifier` (a stream's identifier survives when journald could not tell the
/// writer's unit: [`super::oom_report::run`]).
pub fn messages_of_identifier(identifier: &str, lines: usize) -> Vec<String> {
    let opened = OpenOptions::default().system(true).local_only(true).open();
    let Ok(mut j) = opened else {
        return Vec::new();
    };
    if j.match_add("SYSLOG_IDENTIFIER", identifier).is_err() {
        return Vec::new();
    }
    last_messages(&mut j, lines)
}

/// Print the last `lines` entries, then every new one as it arrives (`-f`), until
/// `emit` returns false.
pub fn follow(q: &Query<'_>, lines: usize, emit: impl FnMut(&str) -> bool) -> Result<(), String> {
    follow_while(q, lines, emit, || true)
}

/// [`follow`], also ending within a second once `alive` returns false (a quiet
/// journal calls no `emit`: the operator's page left and nothing would notice).
pub fn follow_while(
    q: &Query<'_>,
    lines: usize,
    mut emit: impl FnMut(&str) -> bool,
    alive: impl Fn() -> bool,
) -> Result<(), String> {
    for l in tail(q, lines)? {
        if !emit(&l) {
            return Ok(());
        }
    }
    let mut j = open(q)?;
    j.seek_tail().map_err(|e| format!("journal seek: {e}"))?;
    // After seek_tail the cursor sits past the end; step back onto the last entry
    // so the next read is the first new one.
    let _ = j.previous();
    while alive() {
        match j.await_next_entry(Some(Duration::from_secs(1))) {
            Ok(Some(r)) => {
                if !emit(&line(&j, &r)) {
                    return Ok(());
                }
            }
            Ok(None) => {}
            Err(e) => return Err(format!("journal read: {e}")),
        }
    }
    Ok(())
}
