//! `llmvisor gpus` and `llmvisor profile …`: GPUs and profiles, from the running
//! llmvisor's admin API (or, for `gpus` without one, straight from NVML or the
//! configuration's simulated GPUs).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::config::{GpuSettings, Settings};
use crate::gpu::{Inventory, human};

/// The admin key for `/admin/*`, when the configuration has one.
pub const ADMIN_KEY_ENV: &str = "LLMVISOR_ADMIN_KEY";

/// `GET`/`POST` an admin path of the running llmvisor: (status, JSON body).
pub async fn admin(
    settings: &Settings,
    method: http::Method,
    path: &str,
    body: Option<Value>,
) -> Result<(u16, Value), String> {
    let base =
        super::status::api_base(settings).ok_or("the configuration has no listen address")?;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("{base}{path}"))
        .header("content-type", "application/json");
    if let Ok(key) = std::env::var(ADMIN_KEY_ENV) {
        req = req.header("authorization", format!("Bearer {}", key.trim()));
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = req
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .map_err(|_| format!("{base} did not answer within 10 s"))?
        .map_err(|e| format!("cannot reach llmvisor at {base}: {e}"))?;
    let status = resp.status().as_u16();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("reading {path}: {e}"))?
        .to_bytes();
    let v: Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("{path} is not JSON: {e}"))?;
    if status >= 400 {
        let msg = v["error"]["message"]
            .as_str()
            .unwrap_or("error")
            .to_string();
        let hint = if status == 401 {
            format!(" (set {ADMIN_KEY_ENV} to the admin key)")
        } else {
            String::new()
        };
        return Err(format!("{path}: {status}: {msg}{hint}"));
    }
    Ok((status, v))
}

/// The GPU table from a report (`/admin/gpus` shape).
pub fn gpu_table(r: &Value) -> String {
    let mut out = String::new();
    let source = r["source"].as_str().unwrap_or("?");
    match source {
        "none" => {
            out.push_str(r["message"].as_str().unwrap_or(crate::gpu::NO_DRIVER));
            out.push('\n');
            return out;
        }
        "simulated" => out.push_str("SIMULATED GPUs ([gpu] simulate): memory in use is what the models placed there declare (vram)\n"),
        _ => out.push_str(&format!(
            "NVML, driver {}\n",
            r["driver_version"].as_str().unwrap_or("?")
        )),
    }
    let mut rows = vec![
        [
            "GPU",
            "NAME",
            "UUID",
            "MEMORY USED",
            "FREE",
            "UTIL",
            "TEMP",
            "POWER",
            "PROCESSES / MODELS",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for g in r["gpus"].as_array().into_iter().flatten() {
        let b = |k: &str| g[k].as_u64().map_or("-".into(), human);
        let procs: Vec<String> = g["processes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                let who = p["model"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("pid {}", p["pid"]));
                match p["used_memory"].as_u64() {
                    Some(m) => format!("{who} {}", human(m)),
                    None => who,
                }
            })
            .collect();
        let models: Vec<String> = g["models"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| {
                let name = m["model"].as_str()?;
                (!procs.iter().any(|p| p.starts_with(name)))
                    .then(|| format!("{name} ({})", m["state"].as_str().unwrap_or("?")))
            })
            .collect();
        let mut all = procs;
        all.extend(models);
        rows.push(vec![
            g["index"].to_string(),
            g["name"].as_str().unwrap_or("?").to_string(),
            g["uuid"].as_str().unwrap_or("?").to_string(),
            format!("{} / {}", b("memory_used"), b("memory_total")),
            b("memory_free"),
            g["utilization_percent"]
                .as_u64()
                .map_or("-".into(), |u| format!("{u}%")),
            g["temperature_celsius"]
                .as_u64()
                .map_or("-".into(), |t| format!("{t}°C")),
            g["power_watts"]
                .as_f64()
                .map_or("-".into(), |w| format!("{w:.0} W")),
            if all.is_empty() {
                "-".into()
            } else {
                all.join(", ")
            },
        ]);
    }
    out.push_str(&table(&rows));
    out
}

fn table(rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// The report of this host's GPUs without a running llmvisor.
pub fn local_report(gpu: &GpuSettings) -> Value {
    let inv = Inventory::open(gpu);
    let snap = inv.snapshot();
    let mut v = serde_json::json!({
        "source": snap.source.as_str(),
        "gpus": snap.gpus,
        "message": match &snap.source {
            crate::gpu::Source::None { reason } => Some(reason.clone()),
            _ => snap.error.clone(),
        },
    });
    if let crate::gpu::Source::Nvml { driver_version } = &snap.source {
        v["driver_version"] = driver_version.clone().into();
    }
    v
}

/// `llmvisor profile status` as text.
pub fn profile_text(p: &Value) -> String {
    let mut out = String::new();
    let list = |v: &Value| -> String {
        let items: Vec<String> = v
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect();
        if items.is_empty() {
            "none".into()
        } else {
            items.join(", ")
        }
    };
    out.push_str(&format!(
        "now {}{}\nactive: {}\n",
        p["now"].as_str().unwrap_or("?"),
        if p["test_clock"] == true {
            " (test clock)"
        } else {
            ""
        },
        list(&p["active"])
    ));
    if let Some(o) = p["override"].as_object() {
        out.push_str(&format!(
            "override: {} until {}\n",
            o["profile"].as_str().unwrap_or("?"),
            o["until"].as_str().unwrap_or("resumed by hand")
        ));
    }
    if let Some(n) = p["next_switch"].as_str() {
        out.push_str(&format!("next switch: {n}\n"));
    }
    let mut rows = vec![
        [
            "PROFILE",
            "ACTIVE",
            "WINDOWS",
            "EXCLUSIVE",
            "PRELOAD",
            "MODELS",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for pr in p["profiles"].as_array().into_iter().flatten() {
        rows.push(vec![
            pr["name"].as_str().unwrap_or("?").to_string(),
            if pr["active"] == true { "yes" } else { "no" }.into(),
            list(&pr["windows"]),
            if pr["exclusive"] == true { "yes" } else { "no" }.into(),
            list(&pr["preload"]),
            list(&pr["models"]),
        ]);
    }
    out.push_str(&table(&rows));
    out
}
