//! The Settings → Updates page, served by the daemon at `/`. Plain HTML, CSS and JavaScript
//! embedded in the binary; the page calls the local API (see `api`) with the host's token,
//! which it asks for once and keeps in the browser tab's session storage. The static files
//! need no token. The helpers the page shares with the update server's dashboard
//! (`qx_core::api::COMMON_JS`) are served at `/common.js`, before its own `app.js`.

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use qx_core::api::{host, COMMON_JS};

const INDEX_HTML: &str = include_str!("../../web/index.html");
const APP_JS: &str = include_str!("../../web/app.js");
const STYLE_CSS: &str = include_str!("../../web/style.css");

/// Scripts and styles come only from this origin; no inline code, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}

/// Routes of the page, `qx_core::api::host::PAGE_ROUTES`: the page at `/` (also
/// `/settings/updates`), `/common.js`, `/app.js`, `/style.css`.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            host::PAGE,
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            host::PAGE_SETTINGS,
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            host::PAGE_COMMON_SCRIPT,
            get(|| async { asset("text/javascript; charset=utf-8", COMMON_JS) }),
        )
        .route(
            host::PAGE_SCRIPT,
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            host::PAGE_STYLE,
            get(|| async { asset("text/css; charset=utf-8", STYLE_CSS) }),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_keeps_the_rules_both_pages_keep() {
        qx_testkit::page::assert_page_rules(&qx_testkit::page::Page {
            html: INDEX_HTML,
            common_js: COMMON_JS,
            common_src: host::PAGE_COMMON_SCRIPT,
            app_js: APP_JS,
            app_src: host::PAGE_SCRIPT,
            style_href: host::PAGE_STYLE,
        });
    }
}
