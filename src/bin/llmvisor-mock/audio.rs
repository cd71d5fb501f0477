//! `POST /v1/audio/transcriptions` and `/translations` (vLLM's multipart
//! uploads): the body is read as it comes, never held, and counted — its length,
//! an FNV-1a 64 hash of all its bytes and the `model` field — so a test can tell
//! an upload went through whole and unchanged. The answer has vLLM's shape
//! (`{"text": …}`) plus those counts under `"mock"`.

use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use futures_util::StreamExt;

use crate::state::AppState;

/// FNV-1a 64 over a stream of chunks.
struct Fnv(u64);

impl Fnv {
    fn update(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x100_0000_01b3);
        }
    }
}

/// The handler of both paths.
pub async fn transcription(
    State(st): State<&'static AppState>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Response {
    let boundary = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|ct| ct.split("boundary=").nth(1))
        .map(|b| b.trim_matches('"').to_string());
    let Some(boundary) = boundary else {
        return (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({"error": {"message": "expected multipart/form-data", "type": "BadRequestError", "code": 400}})),
        )
            .into_response();
    };
    let (mut len, mut hash) = (0u64, Fnv(0xcbf2_9ce4_8422_2325));
    let (mut head, mut tail) = (Vec::new(), Vec::new());
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else {
            return StatusCode::BAD_REQUEST.into_response();
        };
        len += chunk.len() as u64;
        hash.update(&chunk);
        // Fields come before or after the file: the first and the last 64 KiB
        // hold them.
        if head.len() < 65536 {
            head.extend_from_slice(&chunk[..chunk.len().min(65536 - head.len())]);
        }
        tail.extend_from_slice(&chunk);
        if tail.len() > 131072 {
            tail.drain(..tail.len() - 65536);
        }
    }
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&head),
        String::from_utf8_lossy(&tail)
    );
    let model = text
        .split(&format!("--{boundary}"))
        .find_map(|part| {
            let (h, v) = part.split_once("\r\n\r\n")?;
            h.contains("name=\"model\"")
                .then(|| v.trim_end_matches("\r\n").to_string())
        })
        .unwrap_or_default();
    if model != st.cfg.served_name {
        return (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({"error": {"message": format!("The model `{model}` does not exist."), "type": "NotFoundError", "code": 404}})),
        )
            .into_response();
    }
    Json(serde_json::json!({
        "text": format!("mock transcription of {len} bytes"),
        "mock": {"bytes": len, "fnv1a64": format!("{:016x}", hash.0), "model": model},
    }))
    .into_response()
}
