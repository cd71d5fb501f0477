//! The usage store through the real binary: rows with the right tokens for streamed
//! and plain requests, the injected usage chunk never reaching the client, model
//! events, `llmvisor usage` and `events`, a full channel, retention, a corrupt file,
//! `llmvisor store-backup` of a store being written.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{LLMVISOR, Llmvisor, eventually_blocking, mock_model};
use serde_json::{Value, json};

/// Wait until the store holds `n` request rows; return them.
fn rows(lv: &Llmvisor, n: usize) -> Vec<Value> {
    eventually_blocking(Duration::from_secs(10), || {
        let out = Command::new(LLMVISOR)
            .args(["usage", "--json", "--by", "client", "--since", "1h", "--db"])
            .arg(lv.usage_db())
            .output()
            .unwrap();
        if out.status.success() {
            let v: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
            let total = v.last().unwrap()["requests"].as_u64().unwrap() as usize;
            if total >= n {
                return Ok(v);
            }
        }
        Err(format!(
            "no {n} rows: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    })
}

fn sql(lv: &Llmvisor, q: &str) -> Vec<Vec<Value>> {
    let c = rusqlite::Connection::open(lv.usage_db()).unwrap();
    let mut st = c.prepare(q).unwrap();
    let n = st.column_count();
    st.query_map([], |r| {
        Ok((0..n)
            .map(|i| match r.get_ref(i).unwrap() {
                rusqlite::types::ValueRef::Null => Value::Null,
                rusqlite::types::ValueRef::Integer(v) => json!(v),
                rusqlite::types::ValueRef::Real(v) => json!(v),
                rusqlite::types::ValueRef::Text(t) => json!(String::from_utf8_lossy(t)),
                rusqlite::types::ValueRef::Blob(_) => Value::Null,
            })
            .collect())
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

#[tokio::test]
async fn rows_have_the_tokens_and_the_client_sees_exactly_what_it_asked_for() {
    let lv = Llmvisor::start(
        "",
        &mock_model("m", &["--max-tokens", "6"], "idle_ttl = \"0\""),
    )
    .await;
    let msg = json!([{"role": "user", "content": "one two three"}]);
    // Plain.
    let r = lv
        .client
        .post(lv.url("/v1/chat/completions"))
        .header("x-request-id", "plain-1")
        .json(&json!({"model": "m", "messages": msg}))
        .send()
        .await
        .unwrap();
    let plain: Value = r.json().await.unwrap();
    let want_prompt = plain["usage"]["prompt_tokens"].as_u64().unwrap();
    assert_eq!(plain["usage"]["completion_tokens"], 6);
    // A stream without include_usage: llmvisor asks for usage, the client must see
    // neither the usage chunk nor `"usage":null` fields.
    let text = lv
        .client
        .post(lv.url("/v1/chat/completions"))
        .json(&json!({"model": "m", "messages": msg, "stream": true}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!text.contains("usage"), "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    // A stream that asked for usage gets it, as the backend sent it.
    let asked = lv
        .client
        .post(lv.url("/v1/chat/completions"))
        .json(&json!({"model": "m", "messages": msg, "stream": true, "stream_options": {"include_usage": true}}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(asked.contains("\"completion_tokens\":6"), "{asked}");
    // Exactly one event (the usage chunk) more than the stream that did not ask.
    assert_eq!(
        asked.matches("data: {").count(),
        text.matches("data: {").count() + 1
    );
    // The backend was asked for usage on the plain stream.
    let last = lv.mock_stats("m").await;
    assert_eq!(
        last["last_request"]["stream_options"]["include_usage"],
        true
    );
    // Embeddings.
    let r = lv
        .post(
            "/v1/embeddings",
            &json!({"model": "m", "input": "hello world"}),
        )
        .await;
    assert_eq!(r.status(), 200);

    rows(&lv, 4);
    let got = sql(
        &lv,
        "SELECT request_id, endpoint, status, prompt_tokens, completion_tokens, stream, ttft_ms IS NOT NULL, client, route, target FROM requests ORDER BY id",
    );
    assert_eq!(got[0][0], "plain-1");
    for (i, row) in got.iter().take(3).enumerate() {
        assert_eq!(row[1], "chat/completions");
        assert_eq!(row[2], 200);
        assert_eq!(row[3], json!(want_prompt), "row {i}: {row:?}");
        assert_eq!(row[4], 6, "row {i}: {row:?}");
        assert_eq!(row[6], 1, "ttft of row {i}");
        assert_eq!(
            (row[7].as_str(), row[8].as_str(), row[9].as_str()),
            (Some("anonymous"), Some("m"), Some("m"))
        );
    }
    assert_eq!((got[1][5].clone(), got[0][5].clone()), (json!(1), json!(0)));
    assert_eq!(got[3][1], "embeddings");
    assert!(got[3][3].as_u64().unwrap() > 0);
    // Metrics count the same tokens.
    let m = lv.metrics_text().await;
    let series =
        "llmvisor_tokens_total{route=\"m\",target=\"m\",client=\"anonymous\",kind=\"completion\"}";
    assert_eq!(common::metric_value(&m, series), 18.0);
    assert!(
        m.contains("llmvisor_time_to_first_token_seconds_count{route=\"m\",target=\"m\"} 4"),
        "{m}"
    );
    // One request line per request in the log.
    assert!(
        lv.log()
            .lines()
            .any(|l| l.contains("request_id=\"plain-1\"") && l.contains("completion_tokens=6")),
        "{}",
        lv.log()
    );
}

#[tokio::test]
async fn usage_totals_match_and_events_tell_the_lifecycle() {
    let extra = "[clients.a]\nkey_sha256 = \"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"\n[clients.b]\nkey_sha256 = \"60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752\"\n";
    let lv = Llmvisor::start(
        extra,
        &mock_model(
            "m",
            &["--max-tokens", "3", "--startup-delay", "200ms"],
            "idle_ttl = \"3s\"",
        ),
    )
    .await;
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    for (key, n) in [("test", 3), ("test2", 2)] {
        for _ in 0..n {
            let r = lv
                .client
                .post(lv.url("/v1/chat/completions"))
                .bearer_auth(key)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
    }
    let r = lv
        .client
        .post(lv.url("/v1/chat/completions"))
        .bearer_auth("wrong")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let got = rows(&lv, 6);
    let by: std::collections::HashMap<String, &Value> = got
        .iter()
        .map(|r| (r["key"].as_str().unwrap().to_string(), r))
        .collect();
    assert_eq!(by["a"]["requests"], 3);
    assert_eq!(by["a"]["completion_tokens"], 9);
    assert_eq!(by["b"]["requests"], 2);
    assert_eq!(by["-"]["errors"], 1);
    assert_eq!(by["total"]["requests"], 6);
    assert!(by["a"]["p50_ms"].as_u64().is_some() && by["a"]["ttft_p95_ms"].as_u64().is_some());
    // The idle stop after 3 s is an event, with the load time of the start before it.
    lv.wait_state("m", "stopped", Duration::from_secs(10)).await;
    let text = eventually_blocking(Duration::from_secs(5), || {
        let out = Command::new(LLMVISOR)
            .args(["events", "--model", "m", "--db"])
            .arg(lv.usage_db())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if text.contains("stopped") {
            Ok(text)
        } else {
            Err(format!("no stop event: {text}"))
        }
    });
    let kinds: Vec<&str> = text
        .lines()
        .map(|l| l.split_whitespace().nth(2).unwrap())
        .collect();
    // (A machine slow enough to idle the model between the requests above would
    // add cycles after these three.)
    assert_eq!(
        kinds[..3],
        ["start_requested", "ready", "stopped"],
        "{text}"
    );
    assert!(text.contains("reason=idle"), "{text}");
    let load: f64 = text
        .split("load=")
        .nth(1)
        .unwrap()
        .split('s')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!((0.15..5.0).contains(&load), "{text}");
    // The table form answers too.
    let out = Command::new(LLMVISOR)
        .args(["usage", "--by", "route", "--db"])
        .arg(lv.usage_db())
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("m ") && l.split_whitespace().nth(1) == Some("5")),
        "{table}"
    );
}

#[tokio::test]
async fn a_full_channel_drops_and_counts_without_blocking_requests() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("u.sqlite");
    // Create the database, then hold its write lock so the writer stalls.
    let extra = format!(
        "\n[store]\npath = {:?}\nqueue = 2\nbatch = 1\n",
        db.display().to_string()
    );
    let lv = Llmvisor::start(&extra, &mock_model("m", &[], "idle_ttl = \"0\"")).await;
    let locker = rusqlite::Connection::open(&db).unwrap();
    locker.busy_timeout(Duration::from_secs(5)).unwrap();
    locker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let t = Instant::now();
    for _ in 0..40 {
        let r = lv
            .post(
                "/v1/chat/completions",
                &json!({"model": "m", "messages": []}),
            )
            .await;
        assert_eq!(r.status(), 200);
    }
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "requests were slowed down: {:?}",
        t.elapsed()
    );
    let dropped = lv.metric("llmvisor_store_dropped_records_total").await;
    assert!(dropped >= 30.0, "dropped {dropped}");
    locker.execute_batch("COMMIT").unwrap();
    lv.wait_log("usage store cannot keep up", Duration::from_secs(5))
        .await;
}

#[tokio::test]
async fn old_rows_are_pruned_and_a_corrupt_file_is_survived() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("u.sqlite");
    // A first run makes the schema; an old row is added behind its back.
    let extra = format!(
        "\n[store]\npath = {:?}\nkeep = \"7d\"\n",
        db.display().to_string()
    );
    let mut lv = Llmvisor::start(&extra, &mock_model("m", &[], "")).await;
    lv.terminate(Duration::from_secs(10));
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute(
        "INSERT INTO requests (ts_ms, request_id, client, route, target, endpoint, status, total_ms) VALUES (1000, 'ancient', 'x', 'm', 'm', 'chat/completions', 200, 1)",
        [],
    )
    .unwrap();
    drop(c);
    let lv = Llmvisor::start(&extra, &mock_model("m", &[], "")).await;
    lv.wait_log("pruned 1 requests", Duration::from_secs(5))
        .await;
    drop(lv);

    // Garbage where the database should be: logged, and serving goes on.
    std::fs::write(&db, vec![7u8; 4096]).unwrap();
    let _ = std::fs::remove_file(dir.path().join("u.sqlite-wal"));
    let _ = std::fs::remove_file(dir.path().join("u.sqlite-shm"));
    let lv = Llmvisor::start(&extra, &mock_model("m", &[], "")).await;
    lv.wait_log("usage store disabled", Duration::from_secs(5))
        .await;
    let r = lv
        .post(
            "/v1/chat/completions",
            &json!({"model": "m", "messages": []}),
        )
        .await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn provider_requests_carry_their_cost() {
    // The "provider" is a mock started through a model; the route reaches it as a
    // provider by its port.
    let backend = mock_model("cloudmock", &["--max-tokens", "10"], "idle_ttl = \"0\"");
    let port: u16 = backend
        .lines()
        .find_map(|l| l.strip_prefix("port = "))
        .unwrap()
        .parse()
        .unwrap();
    let extra = format!(
        "\n[providers.cloud]\nbase_url = \"http://127.0.0.1:{port}/v1\"\nprice_input = 2.5\nprice_output = 10.0\nmodels = {{ \"gpt\" = \"cloudmock\" }}\n\n[routes.smart]\ntargets = [\"cloud/gpt\"]\n"
    );
    let lv = Llmvisor::start(&extra, &backend).await;
    // Start the backend through its own name first.
    assert_eq!(
        lv.post(
            "/v1/chat/completions",
            &json!({"model": "cloudmock", "messages": []})
        )
        .await
        .status(),
        200
    );
    let r = lv
        .post(
            "/v1/chat/completions",
            &json!({"model": "smart", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let (p, c) = (
        v["usage"]["prompt_tokens"].as_f64().unwrap(),
        v["usage"]["completion_tokens"].as_f64().unwrap(),
    );
    let got = rows(&lv, 2);
    let want = (p * 2.5 + c * 10.0) / 1e6;
    assert!(
        (got.last().unwrap()["cost_usd"].as_f64().unwrap() - want).abs() < 1e-12,
        "{got:?}"
    );
    let cost = sql(
        &lv,
        "SELECT cost_usd, target FROM requests WHERE route = 'smart'",
    );
    assert_eq!(cost[0][1], "cloud/gpt");
}

/// `llmvisor store-backup` while llmvisor serves and records: each run exits 0 and
/// leaves one self-contained file (no `-wal`) that passes SQLite's integrity check
/// and holds a prefix of the rows; after the load, a last backup has every row.
/// (The backup API itself under a busy writer: src/store/backup.rs.)
// Two workers: the load runs while this thread blocks on the CLI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_backup_copies_a_store_while_it_is_written() {
    let lv = Llmvisor::start(
        "",
        &mock_model("m", &["--max-tokens", "2"], "idle_ttl = \"0\""),
    )
    .await;
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    let load = {
        let (client, url, body) = (
            lv.client.clone(),
            lv.url("/v1/chat/completions"),
            body.clone(),
        );
        tokio::spawn(async move {
            for _ in 0..120 {
                let r = client.post(&url).json(&body).send().await.unwrap();
                assert_eq!(r.status(), 200);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    rows(&lv, 5);
    let out_dir = tempfile::tempdir().unwrap();
    let dest = out_dir.path().join("usage.sqlite");
    let backup = |dest: &std::path::Path| {
        let out = Command::new(LLMVISOR)
            .args(["store-backup", "--db"])
            .arg(lv.usage_db())
            .arg(dest)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "store-backup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(text.contains("integrity ok"), "{text}");
        let c = rusqlite::Connection::open(dest).unwrap();
        let (n, max): (i64, i64) = c
            .query_row(
                "SELECT count(*), coalesce(max(id), 0) FROM requests",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(n, max, "a gap in the copied rows");
        n
    };
    let mut last = 0;
    while !load.is_finished() {
        let n = backup(&dest);
        assert!(n >= last, "{n} < {last}");
        assert!(!out_dir.path().join("usage.sqlite-wal").exists());
        last = n;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    load.await.unwrap();
    let total = rows(&lv, 120).last().unwrap()["requests"].as_i64().unwrap();
    assert_eq!(backup(&dest), total);
    // No source: exit 1, and the last backup stays.
    let out = Command::new(LLMVISOR)
        .args(["store-backup", "--db"])
        .arg(out_dir.path().join("none.sqlite"))
        .arg(&dest)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no usage store at"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(backup(&dest), total);
}

/// Every llmvisor metric the Grafana dashboard queries is one llmvisor registers
/// (families without samples yet are not in `/metrics`, so the source is the list).
#[test]
fn the_dashboard_queries_metrics_that_exist() {
    let src = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src/telemetry/metrics.rs"
    ))
    .unwrap();
    let mut registered = std::collections::BTreeSet::new();
    for (i, _) in src.match_indices("register(") {
        let rest = src[i + "register(".len()..].trim_start();
        if let Some(q) = rest.strip_prefix('"') {
            registered.insert(format!("llmvisor_{}", &q[..q.find('"').unwrap()]));
        }
    }
    assert!(registered.contains("llmvisor_requests"), "{registered:?}");
    let dash = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/nixos-modules/grafana/llmvisor-dashboard.json"
    ))
    .unwrap();
    let mut names = std::collections::BTreeSet::new();
    for (i, _) in dash.match_indices("llmvisor_") {
        let name: String = dash[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        names.insert(name);
    }
    assert!(names.len() >= 8, "{names:?}");
    for n in names {
        let base = ["_total", "_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| n.strip_suffix(s))
            .unwrap_or(&n);
        assert!(
            registered.contains(base) || registered.contains(&n),
            "the dashboard queries {n}, which llmvisor does not export ({registered:?})"
        );
    }
}
