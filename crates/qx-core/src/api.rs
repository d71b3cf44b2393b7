//! The wire protocol, spelled once: the update server's and the host agent's route templates,
//! header and query-parameter names, and URL builders that percent-encode every path segment.
//! The server registers these templates (axum's `{name}` syntax) and builds its metrics route
//! list from them; every client builds its URLs here. The script both web pages share is here
//! too (`COMMON_JS`, `listener` feature), with its route on each server.

use std::fmt::Display;

use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};

/// The header carrying the base64 of a manifest's `.minisig` file.
pub const SIGNATURE_HEADER: &str = "x-qx-signature";
/// A request header asking the server for an artifact's bytes themselves, never a redirect
/// (docs/spec.md §13): a host sends it after the redirect target failed it, and for ranges.
pub const NO_REDIRECT_HEADER: &str = "x-qx-no-redirect";
/// The query parameter naming a channel (`?channel=stable`).
pub const CHANNEL_PARAM: &str = "channel";
/// The query parameter naming the source channel of a promotion (`?from=dev`).
pub const FROM_PARAM: &str = "from";
/// The channel used when a request names none.
pub const DEFAULT_CHANNEL: &str = "stable";

/// Routes of the update server.
pub mod server {
    pub const HEALTH: &str = "/health";
    pub const METRICS: &str = "/metrics";
    pub const CHANNELS: &str = "/api/v1/channels";
    pub const MANIFEST: &str = "/api/v1/{product}/manifest";
    pub const RELEASES: &str = "/api/v1/{product}/releases";
    pub const ARTIFACT: &str = "/api/v1/{product}/releases/{version}/{artifact}";
    pub const PUBLISH: &str = "/api/v1/{product}/publish";
    pub const PROMOTE: &str = "/api/v1/{product}/releases/{version}/promote";
    /// `DELETE` yanks the release from a channel.
    pub const RELEASE: &str = "/api/v1/{product}/releases/{version}";
    /// `GET` the signed channel state, `PUT` a new one (compare-and-swap on `seq`).
    pub const CHANNEL: &str = "/api/v1/{product}/channels/{channel}";

    // The fleet API (docs/spec.md §9). Static segments win over `{product}` in the router,
    // so `hosts`, `tokens`, `enrollment-tokens` and `fleet` cannot be product names.
    /// `POST` an enrollment token (scope `admin`).
    pub const ENROLLMENT_TOKENS: &str = "/api/v1/enrollment-tokens";
    /// `DELETE` revokes an enrollment token (scope `admin`); hosts enrolled with it stay.
    pub const ENROLLMENT_TOKEN: &str = "/api/v1/enrollment-tokens/{id}";
    /// `POST` with an enrollment token: a host enrolls.
    pub const ENROLL: &str = "/api/v1/hosts/enroll";
    /// `GET` the host list (filters, paging).
    pub const HOSTS: &str = "/api/v1/hosts";
    /// `GET` a host with its events, `PATCH` its labels, `DELETE` decommissions it.
    pub const HOST: &str = "/api/v1/hosts/{id}";
    /// `POST` a check-in (host token).
    pub const CHECKIN: &str = "/api/v1/hosts/{id}/checkin";
    /// `POST` an event batch (host token).
    pub const HOST_EVENTS: &str = "/api/v1/hosts/{id}/events";
    /// `POST` an operator token, `GET` the list (scope `admin`).
    /// `GET`: which operator token the request carries and its scopes (any valid token).
    pub const WHOAMI: &str = "/api/v1/whoami";
    pub const TOKENS: &str = "/api/v1/tokens";
    /// `DELETE` revokes an operator token.
    pub const TOKEN: &str = "/api/v1/tokens/{name}";
    /// Server-sent events of fleet changes, for the dashboard (scope `read`).
    pub const FLEET_EVENTS: &str = "/api/v1/fleet/events";
    /// The fleet overview counts for the dashboard (scope `read`).
    pub const FLEET_SUMMARY: &str = "/api/v1/fleet/summary";
    // Staged rollouts and pins (docs/spec.md §10).
    /// `GET` the rollouts of a product (`?channel=`), newest first (scope `read`).
    pub const ROLLOUTS: &str = "/api/v1/{product}/rollouts";
    /// `GET` one rollout's status (scope `read`).
    pub const ROLLOUT: &str = "/api/v1/{product}/rollouts/{id}";
    /// `POST`: no new offers, no wave opens (scope `rollout`).
    pub const ROLLOUT_PAUSE: &str = "/api/v1/{product}/rollouts/{id}/pause";
    /// `POST`: runs again; failures seen so far are acknowledged (scope `rollout`).
    pub const ROLLOUT_RESUME: &str = "/api/v1/{product}/rollouts/{id}/resume";
    /// `POST`: ends it, hosts keep what they run (scope `rollout`); a revert is a signed
    /// channel state instead.
    pub const ROLLOUT_ABORT: &str = "/api/v1/{product}/rollouts/{id}/abort";
    /// `GET ?host=ID`: what that host gets and when (scope `read`).
    pub const ROLLOUT_PREVIEW: &str = "/api/v1/{product}/rollouts/{id}/preview";
    /// `GET` the pins, `POST` one (scope `rollout` to change, `read` to list).
    pub const PINS: &str = "/api/v1/{product}/pins";
    /// `DELETE` a pin (scope `rollout`).
    pub const PIN: &str = "/api/v1/{product}/pins/{id}";
    /// The query parameter naming a host (`?host=ID`).
    pub const HOST_PARAM: &str = "host";

    /// The dashboard (no token: the page asks for one).
    pub const UI: &str = "/ui";
    /// The script both pages share (`api::COMMON_JS`); the page loads it first.
    pub const UI_COMMON_SCRIPT: &str = "/ui/common.js";
    /// The dashboard's script.
    pub const UI_SCRIPT: &str = "/ui/app.js";
    /// The dashboard's style sheet.
    pub const UI_STYLE: &str = "/ui/style.css";

    /// Every route the server answers, in registration order.
    pub const ROUTES: &[&str] = &[
        HEALTH,
        METRICS,
        CHANNELS,
        MANIFEST,
        RELEASES,
        ARTIFACT,
        PUBLISH,
        PROMOTE,
        RELEASE,
        CHANNEL,
        ENROLLMENT_TOKENS,
        ENROLLMENT_TOKEN,
        ENROLL,
        HOSTS,
        HOST,
        CHECKIN,
        HOST_EVENTS,
        WHOAMI,
        TOKENS,
        TOKEN,
        FLEET_SUMMARY,
        FLEET_EVENTS,
        UI,
        UI_COMMON_SCRIPT,
        UI_SCRIPT,
        UI_STYLE,
        ROLLOUTS,
        ROLLOUT,
        ROLLOUT_PAUSE,
        ROLLOUT_RESUME,
        ROLLOUT_ABORT,
        ROLLOUT_PREVIEW,
        PINS,
        PIN,
    ];
}

/// Routes of the host agent's local API and of its page.
pub mod host {
    pub const CHECK: &str = "/api/v1/updates/check";
    pub const APPLY: &str = "/api/v1/updates/apply";
    pub const STATUS: &str = "/api/v1/updates/status";
    pub const EVENTS: &str = "/api/v1/updates/events";
    /// The agent's metrics in the Prometheus text format.
    pub const METRICS: &str = "/api/v1/updates/metrics";

    /// Every route of the host API.
    pub const ROUTES: &[&str] = &[CHECK, APPLY, STATUS, EVENTS, METRICS];

    /// The Settings → Updates page (no token: the page asks for one).
    pub const PAGE: &str = "/";
    /// The same page at the path of the host's settings.
    pub const PAGE_SETTINGS: &str = "/settings/updates";
    /// The script both pages share (`api::COMMON_JS`); the page loads it first.
    pub const PAGE_COMMON_SCRIPT: &str = "/common.js";
    /// The page's script.
    pub const PAGE_SCRIPT: &str = "/app.js";
    /// The page's style sheet.
    pub const PAGE_STYLE: &str = "/style.css";

    /// Every route of the page (its static files need no token).
    pub const PAGE_ROUTES: &[&str] = &[
        PAGE,
        PAGE_SETTINGS,
        PAGE_COMMON_SCRIPT,
        PAGE_SCRIPT,
        PAGE_STYLE,
    ];
}

/// The script both embedded pages load before their own (`web/common.js` in this crate): the
/// sign-in token, API calls and their error answers, the error box, table cells and times.
/// Served by the update server at [`server::UI_COMMON_SCRIPT`] and by the host agent at
/// [`host::PAGE_COMMON_SCRIPT`].
#[cfg(feature = "listener")]
pub const COMMON_JS: &str = include_str!("../web/common.js");

/// Characters escaped in a path segment or a query value: controls, space, and everything
/// with a meaning in a URL.
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'&')
    .add(b'+')
    .add(b'/')
    .add(b'<')
    .add(b'=')
    .add(b'>')
    .add(b'?')
    .add(b'[')
    .add(b'\\')
    .add(b']')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

/// One path segment or query value, percent-encoded.
pub fn encode(value: impl Display) -> String {
    utf8_percent_encode(&value.to_string(), SEGMENT).to_string()
}

/// Fill a route template's `{name}` placeholders with percent-encoded values. A placeholder
/// without a value is left as it is (a bug the route test catches).
pub fn fill(template: &str, values: &[(&str, &dyn Display)]) -> String {
    let mut out = template.to_owned();
    for (name, value) in values {
        out = out.replace(&format!("{{{name}}}"), &encode(value));
    }
    out
}

/// URLs of one update server, from its base URL (`https://updates.example:9000`, with an
/// optional path prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUrl {
    base: String,
}

impl ServerUrl {
    pub fn new(base: &str) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
        }
    }

    /// The base URL, without a trailing slash.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn at(&self, path: String) -> String {
        format!("{}{path}", self.base)
    }

    fn with_channel(&self, path: String, channel: Option<&dyn Display>) -> String {
        match channel {
            Some(c) => format!("{}{path}?{CHANNEL_PARAM}={}", self.base, encode(c)),
            None => self.at(path),
        }
    }

    pub fn health(&self) -> String {
        self.at(server::HEALTH.to_owned())
    }

    pub fn metrics(&self) -> String {
        self.at(server::METRICS.to_owned())
    }

    pub fn channels(&self) -> String {
        self.at(server::CHANNELS.to_owned())
    }

    /// `GET` the newest signed manifest of a channel.
    pub fn manifest(&self, product: impl Display, channel: impl Display) -> String {
        let path = fill(server::MANIFEST, &[("product", &product)]);
        self.with_channel(path, Some(&channel))
    }

    /// `GET` every release of a channel, newest first.
    pub fn releases(&self, product: impl Display, channel: impl Display) -> String {
        let path = fill(server::RELEASES, &[("product", &product)]);
        self.with_channel(path, Some(&channel))
    }

    /// `GET`/`HEAD` one file of a release (an artifact, `manifest.json` or its signature).
    pub fn artifact(
        &self,
        product: impl Display,
        version: impl Display,
        artifact: impl Display,
        channel: impl Display,
    ) -> String {
        let values: [(&str, &dyn Display); 3] = [
            ("product", &product),
            ("version", &version),
            ("artifact", &artifact),
        ];
        self.with_channel(fill(server::ARTIFACT, &values), Some(&channel))
    }

    /// `POST` a release (multipart).
    pub fn publish(&self, product: impl Display) -> String {
        self.at(fill(server::PUBLISH, &[("product", &product)]))
    }

    /// `POST` a promotion of `version` from channel `from`.
    pub fn promote(
        &self,
        product: impl Display,
        version: impl Display,
        from: impl Display,
    ) -> String {
        let path = fill(
            server::PROMOTE,
            &[("product", &product), ("version", &version)],
        );
        format!("{}{path}?{FROM_PARAM}={}", self.base, encode(from))
    }

    /// `GET`/`PUT` the signed channel state (docs/spec.md §8).
    pub fn channel_state(&self, product: impl Display, channel: impl Display) -> String {
        let path = fill(
            server::CHANNEL,
            &[("product", &product), ("channel", &channel)],
        );
        self.at(path)
    }

    /// `DELETE` (yank) a release from a channel.
    pub fn release(
        &self,
        product: impl Display,
        version: impl Display,
        channel: impl Display,
    ) -> String {
        let path = fill(
            server::RELEASE,
            &[("product", &product), ("version", &version)],
        );
        self.with_channel(path, Some(&channel))
    }

    /// `POST` an enrollment (with an enrollment token).
    pub fn enroll(&self) -> String {
        self.at(server::ENROLL.to_owned())
    }

    /// `POST` a host's check-in (with its host token).
    pub fn checkin(&self, host: impl Display) -> String {
        self.at(fill(server::CHECKIN, &[("id", &host)]))
    }

    /// `POST` a host's event batch (with its host token).
    pub fn host_events(&self, host: impl Display) -> String {
        self.at(fill(server::HOST_EVENTS, &[("id", &host)]))
    }

    /// `GET` the host list; `query` is appended as it is (`product=p&label=site%3Dlab`).
    pub fn hosts(&self, query: &str) -> String {
        let path = self.at(server::HOSTS.to_owned());
        if query.is_empty() {
            path
        } else {
            format!("{path}?{query}")
        }
    }

    /// `GET`, `PATCH` or `DELETE` one host.
    pub fn host(&self, host: impl Display) -> String {
        self.at(fill(server::HOST, &[("id", &host)]))
    }

    /// `POST` or `GET` operator tokens.
    pub fn tokens(&self) -> String {
        self.at(server::TOKENS.to_owned())
    }

    pub fn whoami(&self) -> String {
        self.at(server::WHOAMI.to_owned())
    }

    /// `DELETE` (revoke) an operator token.
    pub fn token(&self, name: impl Display) -> String {
        self.at(fill(server::TOKEN, &[("name", &name)]))
    }

    /// `POST` an enrollment token.
    pub fn enrollment_tokens(&self) -> String {
        self.at(server::ENROLLMENT_TOKENS.to_owned())
    }

    /// `DELETE` (revoke) an enrollment token.
    pub fn enrollment_token(&self, id: impl Display) -> String {
        self.at(fill(server::ENROLLMENT_TOKEN, &[("id", &id)]))
    }

    /// `GET` the fleet overview counts.
    pub fn fleet_summary(&self) -> String {
        self.at(server::FLEET_SUMMARY.to_owned())
    }

    /// `GET` the fleet's change stream (server-sent events).
    pub fn fleet_events(&self) -> String {
        self.at(server::FLEET_EVENTS.to_owned())
    }

    /// `GET` a product's rollouts (`channel`: only that channel's).
    pub fn rollouts(&self, product: impl Display, channel: Option<&str>) -> String {
        let path = fill(server::ROLLOUTS, &[("product", &product)]);
        self.with_channel(path, channel.as_ref().map(|c| c as &dyn Display))
    }

    /// `GET` one rollout; `POST` to `action` (`pause`, `resume`, `abort`) when given.
    pub fn rollout(&self, product: impl Display, id: impl Display, action: Option<&str>) -> String {
        let path = fill(server::ROLLOUT, &[("product", &product), ("id", &id)]);
        match action {
            Some(a) => self.at(format!("{path}/{}", encode(a))),
            None => self.at(path),
        }
    }

    /// `GET` what `host` gets from the rollout and when.
    pub fn rollout_preview(
        &self,
        product: impl Display,
        id: impl Display,
        host: impl Display,
    ) -> String {
        let path = fill(
            server::ROLLOUT_PREVIEW,
            &[("product", &product), ("id", &id)],
        );
        format!("{}?{}={}", self.at(path), server::HOST_PARAM, encode(host))
    }

    /// `GET` or `POST` a product's pins.
    pub fn pins(&self, product: impl Display) -> String {
        self.at(fill(server::PINS, &[("product", &product)]))
    }

    /// `DELETE` a pin.
    pub fn pin(&self, product: impl Display, id: impl Display) -> String {
        self.at(fill(server::PIN, &[("product", &product), ("id", &id)]))
    }

    /// The dashboard page.
    pub fn ui(&self) -> String {
        self.at(server::UI.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders_fill_every_placeholder_and_encode_segments() {
        let s = ServerUrl::new("http://127.0.0.1:9000/base/");
        assert_eq!(s.base(), "http://127.0.0.1:9000/base");
        assert_eq!(
            s.manifest("quantix-os", "stable"),
            "http://127.0.0.1:9000/base/api/v1/quantix-os/manifest?channel=stable"
        );
        assert_eq!(
            s.artifact("p", "1.0.0+b/1", "a b.tar.zst", "dev"),
            "http://127.0.0.1:9000/base/api/v1/p/releases/1.0.0%2Bb%2F1/a%20b.tar.zst?channel=dev"
        );
        assert_eq!(
            s.promote("p", "1.0.0", "dev"),
            "http://127.0.0.1:9000/base/api/v1/p/releases/1.0.0/promote?from=dev"
        );
        assert_eq!(
            s.release("p", "1.0.0", "a&b"),
            "http://127.0.0.1:9000/base/api/v1/p/releases/1.0.0?channel=a%26b"
        );
        assert_eq!(
            s.checkin("ab12"),
            "http://127.0.0.1:9000/base/api/v1/hosts/ab12/checkin"
        );
        assert_eq!(
            s.hosts("label=a%3Db"),
            "http://127.0.0.1:9000/base/api/v1/hosts?label=a%3Db"
        );
        for url in [
            s.enroll(),
            s.host_events("h"),
            s.host("h"),
            s.tokens(),
            s.token("alice"),
            s.enrollment_tokens(),
            s.enrollment_token("e"),
            s.health(),
            s.metrics(),
            s.channels(),
            s.releases("p", "dev"),
            s.publish("p"),
        ] {
            assert!(!url.contains('{'), "{url}");
        }
    }

    #[test]
    fn every_route_is_listed_once() {
        for routes in [server::ROUTES, host::ROUTES, host::PAGE_ROUTES] {
            let mut sorted = routes.to_vec();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), routes.len());
        }
    }
}
