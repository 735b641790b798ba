//! The management page: the static files of `web/`, embedded into the binary and served at `/`
//! on the API listener. The page talks only to the public `/v1` API, like any script would.
//!
//! Files are listed one by one (no directory walk, no new dependency): adding a file to `web/`
//! means adding a line to `ASSETS`, and a unit test checks that every file in `web/` is listed.

use std::sync::OnceLock;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use sha2::{Digest, Sha256};

/// One embedded file: the URL path it is served at, its content type and bytes.
pub struct Asset {
    pub path: &'static str,
    pub content_type: &'static str,
    pub body: &'static [u8],
}

macro_rules! asset {
    ($path:literal, $file:literal, $type:expr) => {
        Asset {
            path: $path,
            content_type: $type,
            body: include_bytes!(concat!("../../web/", $file)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

pub const ASSETS: &[Asset] = &[
    asset!("/", "index.html", "text/html; charset=utf-8"),
    asset!("/style.css", "style.css", "text/css; charset=utf-8"),
    asset!("/app.js", "app.js", JS),
    asset!("/api.js", "api.js", JS),
    asset!("/ui.js", "ui.js", JS),
    asset!("/sims.js", "sims.js", JS),
    asset!("/sim-detail.js", "sim-detail.js", JS),
    asset!("/device-config.js", "device-config.js", JS),
    asset!("/chart.js", "chart.js", JS),
    asset!("/groups.js", "groups.js", JS),
    asset!("/network.js", "network.js", JS),
    asset!("/vendor/qrcode.js", "vendor/qrcode.js", JS),
    asset!("/favicon.svg", "favicon.svg", "image/svg+xml"),
];

/// Only arcd itself: no external script, style, image, font or connection, no inline script,
/// no framing. Inline SVG (the QR code, the chart) needs no exception.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; font-src 'self'; \
     object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Routes for every asset (GET and HEAD). Unknown paths fall through to the API's JSON 404.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    ASSETS.iter().fold(Router::new(), |router, asset| {
        router.route(
            asset.path,
            get(move |headers: HeaderMap| async move { serve(asset, &headers) }),
        )
    })
}

/// Strong ETag per asset (hash of its bytes), computed once.
fn etag_of(asset: &Asset) -> &'static str {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    let etags = ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                let digest = Sha256::digest(a.body);
                format!("\"{}\"", hex::encode(&digest[..12]))
            })
            .collect()
    });
    ASSETS
        .iter()
        .position(|a| a.path == asset.path)
        .and_then(|i| etags.get(i))
        .map(String::as_str)
        .unwrap_or("\"\"")
}

fn serve(asset: &'static Asset, request_headers: &HeaderMap) -> Response {
    let etag = etag_of(asset);
    let fresh = request_headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|tag| tag.trim() == etag));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (StatusCode::OK, asset.body).into_response()
    };
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    // File names are not versioned, so the browser must revalidate; the ETag makes that a 304.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(value) = HeaderValue::from_str(etag) {
        headers.insert(header::ETAG, value);
    }
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

/// Bytes of all assets together (the page weight budget is checked against this in tests).
pub fn total_asset_bytes() -> usize {
    ASSETS.iter().map(|a| a.body.len()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file under web/ is embedded (a forgotten file would 404 in the browser).
    #[test]
    fn every_file_in_web_is_listed() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("web");
        let mut stack = vec![root.clone()];
        let mut files = Vec::new();
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).expect("web/ readable") {
                let path = entry.expect("dir entry").path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    files.push(path);
                }
            }
        }
        for file in files {
            let relative = file
                .strip_prefix(&root)
                .expect("under web/")
                .to_string_lossy()
                .replace('\\', "/");
            let url = if relative == "index.html" {
                "/".to_string()
            } else {
                format!("/{relative}")
            };
            assert!(
                ASSETS.iter().any(|a| a.path == url),
                "web/{relative} is not listed in ASSETS"
            );
        }
    }
}
