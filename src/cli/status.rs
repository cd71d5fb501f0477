//! `llmvisor status`: one table of every model, from the running llmvisor's
//! `/health` and, where the models are systemd units, from systemd itself.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::config::Settings;
use crate::units::systemd::{Bus, SystemdManager};

/// The address to reach the API on: the first listener, with a wildcard address
/// replaced by loopback.
pub(super) fn api_base(settings: &Settings) -> Option<String> {
    let addr = settings.listen.first()?;
    let host = match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_string(),
        ip if ip.is_unspecified() => "[::1]".to_string(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        std::net::IpAddr::V4(ip) => ip.to_string(),
    };
    Some(format!("http://{host}:{}", addr.port()))
}

async fn health(base: &str) -> Result<Value, String> {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let uri: http::Uri = format!("{base}/health")
        .parse()
        .map_err(|e| format!("bad address {base}: {e}"))?;
    let resp = tokio::time::timeout(Duration::from_secs(5), client.get(uri))
        .await
        .map_err(|_| format!("{base} did not answer within 5 s"))?
        .map_err(|e| format!("cannot reach llmvisor at {base}: {e}"))?;
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("reading /health: {e}"))?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| format!("/health is not JSON: {e}"))
}

fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

fn human_secs(s: u64) -> String {
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

/// The table as text.
pub async fn render(settings: &Settings) -> Result<String, String> {
    let base = api_base(settings).ok_or("the configuration has no listen address")?;
    let h = health(&base).await?;
    let systemd = match h["unit_manager"].as_str() {
        Some("systemd") => SystemdManager::connect(Bus::System).await.ok(),
        Some("systemd-user") => SystemdManager::connect(Bus::User).await.ok(),
        _ => None,
    };
    let mut rows = vec![
        [
            "MODEL",
            "STATE",
            "UNIT",
            "PID",
            "GPUS",
            "MEMORY",
            "IN FLIGHT",
            "QUEUED",
            "IDLE FOR",
        ]
        .map(String::from)
        .to_vec(),
    ];
    // In configuration order.
    for spec in &settings.models {
        let name = &spec.name;
        let m = &h["models"][name];
        if m.is_null() {
            continue;
        }
        let unit = m["unit"].as_str().unwrap_or("-").to_string();
        let (pid, mem) = match &systemd {
            Some(s) => s.runtime(&unit).await.unwrap_or((0, None)),
            None => (0, None),
        };
        let gpus: Vec<String> = m["gpus"]
            .as_array()
            .map(|g| g.iter().map(|v| v.to_string()).collect())
            .unwrap_or_default();
        let mut state = m["state"].as_str().unwrap_or("?").to_string();
        if m["restarts_paused"] == true {
            state.push_str(" (paused)");
        }
        rows.push(vec![
            name.clone(),
            state,
            unit,
            if pid == 0 {
                "-".into()
            } else {
                pid.to_string()
            },
            if gpus.is_empty() {
                "-".into()
            } else {
                gpus.join(",")
            },
            mem.map_or("-".into(), human_bytes),
            m["in_flight"].to_string(),
            m["queued"].to_string(),
            m["idle_seconds"].as_u64().map_or("-".into(), human_secs),
        ]);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = format!(
        "llmvisor {} at {base}: {}, {} unit manager\n",
        h["version"].as_str().unwrap_or("?"),
        h["status"].as_str().unwrap_or("?"),
        h["unit_manager"].as_str().unwrap_or("?")
    );
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    // Settings lowered by out-of-memory restarts, and the profiles in force.
    for spec in &settings.models {
        let oom = &h["models"][&spec.name]["gpu"]["oom"];
        if oom.is_object() {
            let mut line = format!(
                "{}: max_concurrent {} (configured {})",
                spec.name, oom["max_concurrent"], oom["configured_max_concurrent"]
            );
            if let Some(f) = oom["gpu_memory_utilization"].as_f64() {
                line.push_str(&format!(
                    ", gpu_memory_utilization {f:.2} (configured {})",
                    oom["configured_gpu_memory_utilization"].as_f64().map_or(
                        format!(
                            "vLLM's {:.2}",
                            crate::gpu::oom::VLLM_DEFAULT_GPU_MEMORY_UTILIZATION
                        ),
                        |c| format!("{c:.2}"),
                    )
                ));
            }
            line.push_str(&format!(
                " after {}; a reload restores them\n",
                oom["reason"].as_str().unwrap_or("CUDA out of memory")
            ));
            out.push_str(&line);
        }
    }
    if let Some(active) = h["profiles"]["active"].as_array()
        && !settings.profiles.is_empty()
    {
        let names: Vec<&str> = active.iter().filter_map(Value::as_str).collect();
        out.push_str(&format!(
            "profiles active: {}\n",
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        ));
    }
    if let Some(m) = h["gpu"]["message"].as_str()
        && settings.models.iter().any(|m| m.gpu.count > 0)
    {
        out.push_str(&format!("GPUs: {m}\n"));
    }
    Ok(out)
}
