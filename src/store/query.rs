//! Reading the store: `llmvisor usage`, `llmvisor events`, and the operator
//! page's requests and charts (`/admin/requests`, `/admin/usage`).

use std::collections::BTreeMap;

use rusqlite::Connection;
use serde::Serialize;

use super::{EventRecord, RequestRecord};

/// How `usage` groups requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum By {
    /// One row for everything.
    Total,
    /// Per client.
    Client,
    /// Per public name asked for.
    Route,
    /// Per instance or provider model that served.
    Target,
    /// Per UTC day.
    Day,
}

impl By {
    fn column(self) -> &'static str {
        match self {
            By::Total => "'total'",
            By::Client => "client",
            By::Route => "route",
            By::Target => "target",
            By::Day => "strftime('%Y-%m-%d', ts_ms / 1000, 'unixepoch')",
        }
    }
}

/// One group of `llmvisor usage`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct UsageRow {
    /// The group (client, route, target, day or `total`).
    pub key: String,
    /// Requests.
    pub requests: u64,
    /// Answered with status 400 or more (client cancellations, 499, not included).
    pub errors: u64,
    /// Cancelled by the client (499).
    pub cancelled: u64,
    /// Prompt tokens (from the responses' usage).
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
    /// Median total time.
    pub p50_ms: Option<u64>,
    /// 95th percentile total time.
    pub p95_ms: Option<u64>,
    /// Median time to first token.
    pub ttft_p50_ms: Option<u64>,
    /// 95th percentile time to first token.
    pub ttft_p95_ms: Option<u64>,
    /// Provider cost in USD.
    pub cost_usd: f64,
}

fn percentile(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Requests since `since_ms`, grouped; groups sorted by key, with a `total` row last
/// when grouping.
pub fn usage(conn: &Connection, since_ms: i64, by: By) -> rusqlite::Result<Vec<UsageRow>> {
    let sql = format!(
        "SELECT {}, status, prompt_tokens, completion_tokens, total_ms, ttft_ms, cost_usd
         FROM requests WHERE ts_ms >= ?1",
        by.column()
    );
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query([since_ms])?;
    #[derive(Default)]
    struct Acc {
        row: UsageRow,
        total: Vec<u64>,
        ttft: Vec<u64>,
    }
    let mut groups: BTreeMap<String, Acc> = BTreeMap::new();
    let mut all = Acc::default();
    while let Some(r) = rows.next()? {
        let key: String = r.get(0)?;
        let status: u16 = r.get(1)?;
        let prompt: Option<i64> = r.get(2)?;
        let completion: Option<i64> = r.get(3)?;
        let total: i64 = r.get(4)?;
        let ttft: Option<i64> = r.get(5)?;
        let cost: Option<f64> = r.get(6)?;
        for acc in [groups.entry(key).or_default(), &mut all] {
            acc.row.requests += 1;
            if status == 499 {
                acc.row.cancelled += 1;
            } else if status >= 400 {
                acc.row.errors += 1;
            }
            acc.row.prompt_tokens += prompt.unwrap_or(0).max(0) as u64;
            acc.row.completion_tokens += completion.unwrap_or(0).max(0) as u64;
            acc.row.cost_usd += cost.unwrap_or(0.0);
            acc.total.push(total.max(0) as u64);
            if let Some(t) = ttft {
                acc.ttft.push(t.max(0) as u64);
            }
        }
    }
    let finish = |key: String, mut acc: Acc| {
        acc.total.sort_unstable();
        acc.ttft.sort_unstable();
        UsageRow {
            key,
            p50_ms: percentile(&acc.total, 0.50),
            p95_ms: percentile(&acc.total, 0.95),
            ttft_p50_ms: percentile(&acc.ttft, 0.50),
            ttft_p95_ms: percentile(&acc.ttft, 0.95),
            ..acc.row
        }
    };
    let mut out: Vec<UsageRow> = Vec::new();
    if by != By::Total {
        out.extend(groups.into_iter().map(|(k, a)| finish(k, a)));
    }
    out.push(finish("total".into(), all));
    Ok(out)
}

/// Model events since `since_ms`, oldest first, optionally of one model.
pub fn events(
    conn: &Connection,
    since_ms: i64,
    model: Option<&str>,
) -> rusqlite::Result<Vec<EventRecord>> {
    let mut stmt = conn.prepare(
        "SELECT ts_ms, model, event, reason, detail, load_ms FROM events
         WHERE ts_ms >= ?1 AND (?2 IS NULL OR model = ?2) ORDER BY ts_ms, id",
    )?;
    let rows = stmt.query_map(rusqlite::params![since_ms, model], |r| {
        Ok(EventRecord {
            ts_ms: r.get(0)?,
            model: r.get(1)?,
            event: r.get(2)?,
            reason: r.get(3)?,
            detail: r.get(4)?,
            load_ms: r.get::<_, Option<i64>>(5)?.map(|v| v.max(0) as u64),
        })
    })?;
    rows.collect()
}

/// The latest `limit` requests, newest first, optionally of one client and of one
/// model (asked for or serving).
pub fn recent_requests(
    conn: &Connection,
    limit: usize,
    client: Option<&str>,
    model: Option<&str>,
) -> rusqlite::Result<Vec<RequestRecord>> {
    let mut stmt = conn.prepare(
        "SELECT ts_ms, request_id, client, route, target, endpoint, status, prompt_tokens,
                completion_tokens, queue_ms, cold_start_ms, ttft_ms, total_ms, error, cost_usd, stream
         FROM requests
         WHERE (?2 IS NULL OR client = ?2) AND (?3 IS NULL OR route = ?3 OR target = ?3)
         ORDER BY id DESC LIMIT ?1",
    )?;
    let u = |v: Option<i64>| v.map(|v| v.max(0) as u64);
    let rows = stmt.query_map(rusqlite::params![limit as i64, client, model], |r| {
        Ok(RequestRecord {
            ts_ms: r.get(0)?,
            request_id: r.get(1)?,
            client: r.get(2)?,
            route: r.get(3)?,
            target: r.get(4)?,
            endpoint: r.get(5)?,
            status: r.get(6)?,
            prompt_tokens: u(r.get(7)?),
            completion_tokens: u(r.get(8)?),
            queue_ms: u(r.get(9)?),
            cold_start_ms: u(r.get(10)?),
            ttft_ms: u(r.get(11)?),
            total_ms: r.get::<_, i64>(12)?.max(0) as u64,
            error: r.get(13)?,
            cost_usd: r.get(14)?,
            stream: r.get(15)?,
        })
    })?;
    rows.collect()
}

/// One bucket of one group of [`series`].
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SeriesPoint {
    /// Start of the bucket, Unix milliseconds.
    pub ts_ms: i64,
    /// The group (client, or the instance or provider model that served).
    pub key: String,
    /// Requests.
    pub requests: u64,
    /// Prompt plus completion tokens.
    pub tokens: u64,
}

/// Requests and tokens since `since_ms` in buckets of `bucket_ms`, per client
/// (`By::Client`) or per serving model (`By::Target`); oldest first. Buckets
/// without requests are left out.
pub fn series(
    conn: &Connection,
    since_ms: i64,
    bucket_ms: i64,
    by: By,
) -> rusqlite::Result<Vec<SeriesPoint>> {
    let sql = format!(
        "SELECT (ts_ms / ?2) * ?2 AS b, {} AS k, COUNT(*),
                SUM(COALESCE(prompt_tokens, 0) + COALESCE(completion_tokens, 0))
         FROM requests WHERE ts_ms >= ?1 GROUP BY b, k ORDER BY b, k",
        by.column()
    );
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map(rusqlite::params![since_ms, bucket_ms.max(1)], |r| {
        Ok(SeriesPoint {
            ts_ms: r.get(0)?,
            key: r.get(1)?,
            requests: r.get::<_, i64>(2)?.max(0) as u64,
            tokens: r.get::<_, i64>(3)?.max(0) as u64,
        })
    })?;
    rows.collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_and_percentiles() {
        let c = Connection::open_in_memory().unwrap();
        super::super::schema::migrate(&c).unwrap();
        let ins = |client: &str,
                   status: u16,
                   total: i64,
                   ttft: Option<i64>,
                   p: i64,
                   cost: Option<f64>| {
            c.execute(
                "INSERT INTO requests (ts_ms, request_id, client, route, target, endpoint, status, prompt_tokens, completion_tokens, total_ms, ttft_ms, cost_usd)
                 VALUES (1000, 'x', ?1, 'r', 't', 'chat/completions', ?2, ?3, 5, ?4, ?5, ?6)",
                rusqlite::params![client, status, p, total, ttft, cost],
            )
            .unwrap();
        };
        for i in 1..=20 {
            ins("a", 200, i * 10, Some(i), 10, None);
        }
        ins("b", 502, 5, None, 0, Some(0.25));
        ins("b", 499, 7, None, 0, None);
        let rows = usage(&c, 0, By::Client).unwrap();
        assert_eq!(rows.len(), 3);
        let a = &rows[0];
        assert_eq!((a.key.as_str(), a.requests, a.errors), ("a", 20, 0));
        assert_eq!((a.prompt_tokens, a.completion_tokens), (200, 100));
        assert_eq!((a.p50_ms, a.p95_ms), (Some(100), Some(190)));
        assert_eq!((a.ttft_p50_ms, a.ttft_p95_ms), (Some(10), Some(19)));
        let b = &rows[1];
        assert_eq!((b.errors, b.cancelled, b.cost_usd), (1, 1, 0.25));
        assert_eq!(rows[2].key, "total");
        assert_eq!(rows[2].requests, 22);
        assert!(usage(&c, 2000, By::Total).unwrap()[0].requests == 0);
    }

    #[test]
    fn recent_requests_and_series() {
        let c = Connection::open_in_memory().unwrap();
        super::super::schema::migrate(&c).unwrap();
        for (ts, client, target, p) in [
            (1_000, "a", "chat", 3),
            (2_000, "b", "chat", 4),
            (3_700_000, "a", "big", 5),
        ] {
            c.execute(
                "INSERT INTO requests (ts_ms, request_id, client, route, target, endpoint, status, prompt_tokens, completion_tokens, total_ms)
                 VALUES (?1, 'x', ?2, ?3, ?3, 'chat/completions', 200, ?4, 1, 10)",
                rusqlite::params![ts, client, target, p],
            )
            .unwrap();
        }
        let r = recent_requests(&c, 2, None, None).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!((r[0].target.as_str(), r[0].prompt_tokens), ("big", Some(5)));
        assert_eq!(r[1].client, "b");
        let a = recent_requests(&c, 10, Some("a"), Some("chat")).unwrap();
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].ts_ms, 1_000);
        let s = series(&c, 0, 3_600_000, By::Client).unwrap();
        let got: Vec<(i64, &str, u64, u64)> = s
            .iter()
            .map(|p| (p.ts_ms, p.key.as_str(), p.requests, p.tokens))
            .collect();
        assert_eq!(
            got,
            [(0, "a", 1, 4), (0, "b", 1, 5), (3_600_000, "a", 1, 6)]
        );
        assert_eq!(
            series(&c, 3_000_000, 3_600_000, By::Target).unwrap().len(),
            1
        );
    }
}
