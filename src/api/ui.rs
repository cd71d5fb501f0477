//! `/ui`: the operator's page, three static files compiled into the binary
//! (`src/api/ui/`: plain HTML, CSS and JavaScript, no library, no build step, no
//! request leaves the host: it works offline and behind `tailscale serve`). The
//! page reads `/admin/events` and acts through the `/admin` routes, so it has
//! exactly their rights: on this host without an `[admin]` key, with the key
//! (entered once, kept in the tab's session storage, sent as a Bearer header)
//! from anywhere. Without a key the page itself is refused to anyone but this
//! host, so nobody is shown a page that cannot work. See docs/ui.md.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{ApiError, App};

const INDEX: &str = include_str!("ui/index.html");
const SCRIPT: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/style.css");
const ICON: &str = include_str!("ui/icon.svg");

/// Only this page's own files; no inline script or style, no other origin.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn file(body: &'static str, content_type: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Revalidated each load: a new llmvisor brings its own page.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    r
}

/// Without an `[admin]` key the page is for this host only.
fn refused(app: &App, peer: SocketAddr, headers: &HeaderMap) -> Option<Response> {
    if app.policy().auth.has_admin_key() || super::admin::local(peer, headers) {
        return None;
    }
    Some(
        (
            StatusCode::FORBIDDEN,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "llmvisor's page answers only on this host's loopback interface, not through a \
             proxy, because no [admin] key is configured. Configure one (services.llmvisor.\
             adminKeyFile on NixOS) to open the page from elsewhere, or use an SSH tunnel.\n",
        )
            .into_response(),
    )
}

/// `GET /ui`: the page.
pub async fn page(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    refused(&app, peer, &headers).unwrap_or_else(|| file(INDEX, "text/html; charset=utf-8"))
}

/// `GET /ui/{file}`: its script, style sheet and icon.
pub async fn asset(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    if let Some(r) = refused(&app, peer, &headers) {
        return r;
    }
    match name.as_str() {
        "" | "index.html" => file(INDEX, "text/html; charset=utf-8"),
        "app.js" => file(SCRIPT, "text/javascript; charset=utf-8"),
        "style.css" => file(STYLE, "text/css; charset=utf-8"),
        "icon.svg" => file(ICON, "image/svg+xml"),
        _ => ApiError::UnknownUrl(format!("GET /ui/{name}")).into_response(),
    }
}
