//! Bounded streaming load for `bench/run.sh`: N chat streams at concurrency C against
//! one base URL; reports time to first byte, time to first token, tokens delivered
//! per second and errors as one JSON line. (oha measures whole responses; streams
//! need first-byte and per-token figures.)
//!
//! `cargo run --release --example streamload -- --url http://127.0.0.1:8080 \
//!     --model m --concurrency 64 --requests 256 --max-tokens 50`

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::Semaphore;

struct Args {
    url: String,
    model: String,
    concurrency: usize,
    requests: usize,
    max_tokens: u32,
    timeout: Duration,
}

fn parse() -> Args {
    let mut a = Args {
        url: "http://127.0.0.1:8080".into(),
        model: "m".into(),
        concurrency: 1,
        requests: 100,
        max_tokens: 16,
        timeout: Duration::from_secs(120),
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i + 1 < argv.len() {
        let v = argv[i + 1].clone();
        match argv[i].as_str() {
            "--url" => a.url = v,
            "--model" => a.model = v,
            "--concurrency" => a.concurrency = v.parse().expect("--concurrency N"),
            "--requests" => a.requests = v.parse().expect("--requests N"),
            "--max-tokens" => a.max_tokens = v.parse().expect("--max-tokens N"),
            "--timeout-secs" => {
                a.timeout = Duration::from_secs(v.parse().expect("--timeout-secs N"))
            }
            other => panic!("unknown argument {other}"),
        }
        i += 2;
    }
    a
}

#[derive(Default)]
struct One {
    ttfb: Option<Duration>,
    ttft: Option<Duration>,
    tokens: u64,
    ok: bool,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

#[tokio::main]
async fn main() {
    let args = parse();
    let client = reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(args.concurrency)
        .timeout(args.timeout)
        .build()
        .expect("client");
    let body = serde_json::json!({
        "model": args.model,
        "stream": true,
        "max_tokens": args.max_tokens,
        "messages": [{"role": "user", "content": "benchmark prompt of a few words"}],
    })
    .to_string();
    let url = format!("{}/v1/chat/completions", args.url);
    let gate = Arc::new(Semaphore::new(args.concurrency));
    let t0 = Instant::now();
    let mut tasks = Vec::with_capacity(args.requests);
    for _ in 0..args.requests {
        let permit = gate.clone().acquire_owned().await.expect("semaphore");
        let client = client.clone();
        let url = url.clone();
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let start = Instant::now();
            let mut one = One::default();
            let Ok(resp) = client
                .post(&url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
            else {
                return one;
            };
            if !resp.status().is_success() {
                return one;
            }
            let mut stream = resp.bytes_stream();
            let mut done = false;
            while let Some(chunk) = stream.next().await {
                let Ok(chunk) = chunk else { return one };
                if one.ttfb.is_none() {
                    one.ttfb = Some(start.elapsed());
                }
                let text = String::from_utf8_lossy(&chunk);
                let tokens = text.matches("\"content\":\"").count() as u64
                    - text.matches("\"content\":\"\"").count() as u64;
                if tokens > 0 && one.ttft.is_none() {
                    one.ttft = Some(start.elapsed());
                }
                one.tokens += tokens;
                done |= text.contains("data: [DONE]");
            }
            one.ok = done;
            one
        }));
    }
    let mut results = Vec::with_capacity(tasks.len());
    for t in tasks {
        results.push(t.await.unwrap_or_default());
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let ok = results.iter().filter(|r| r.ok).count();
    let tokens: u64 = results.iter().map(|r| r.tokens).sum();
    let ms = |f: fn(&One) -> Option<Duration>| {
        let mut v: Vec<f64> = results
            .iter()
            .filter_map(|r| f(r).map(|d| d.as_secs_f64() * 1000.0))
            .collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let ttfb = ms(|r| r.ttfb);
    let ttft = ms(|r| r.ttft);
    println!(
        "{}",
        serde_json::json!({
            "requests": results.len(),
            "ok": ok,
            "errors": results.len() - ok,
            "tokens": tokens,
            "elapsed_s": elapsed,
            "tokens_per_s": tokens as f64 / elapsed,
            "ttfb_p50_ms": percentile(&ttfb, 0.5),
            "ttfb_p99_ms": percentile(&ttfb, 0.99),
            "ttft_p50_ms": percentile(&ttft, 0.5),
            "ttft_p99_ms": percentile(&ttft, 0.99),
        })
    );
}
