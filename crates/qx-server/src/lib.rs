//! `qx-update-server`: stores signed releases per product and channel, serves manifests and
//! artifacts, accepts authenticated publishes (docs/spec.md §3).
//!
//! - [`cli`]: the command line of `qx-update-server` (serve, `token`, `enrollment-token`);
//! - [`config`]: the environment the server reads;
//! - [`storage`]: the [`storage::ReleaseStore`] trait and its local-disk backend;
//! - [`routes`]: the router, registering the route templates of [`qx_core::api::server`];
//! - [`state`]: the state handlers share; [`params`]: path and query parameters;
//! - [`handlers`]: the read-only endpoints; [`publish`]: publish, promote, yank;
//! - [`range`]: the `Range` header; [`metrics`]: Prometheus metrics;
//! - [`server`]: start (crash recovery, TLS), serve, shut down; [`protocol_errors`]: JSON
//!   bodies for hyper's own 400/414/431 answers to requests it cannot parse.
//!
//! Behaviour where docs/spec.md §3 leaves a choice:
//! - A URL segment or `channel` query value that breaks the name rules (`..`, `%2e%2e`, a
//!   decoded `/`, uppercase, empty, 65+ characters) is refused with 400 before any file is
//!   touched; a path with extra segments (a literal `../..`) matches no route and gets 404. A
//!   valid name that is unknown (product, channel not in `CHANNELS`, version, artifact not in
//!   the manifest) gets 404.
//! - `Range`: one range → 206; several → 416 (multipart/byteranges is not served); a malformed
//!   `bytes=` range → 416; another range unit → ignored (200, whole file, as RFC 9110 says);
//!   unsatisfiable → 416 with `Content-Range: bytes */LEN`. `If-Range` with our strong ETag → the
//!   range applies, anything else → 200 with the whole file. `If-None-Match` → 304 on both the
//!   manifest and the artifact endpoints.
//! - Yank writes `.yanked` into the release directory. A yanked release is listed with
//!   `"yanked": true`, is skipped by the manifest and channels endpoints, and its files stay
//!   downloadable so that hosts in the middle of a download can finish. Yanking twice is 200.
//! - Publish: malformed manifest JSON and malformed multipart → 400; every other manifest
//!   problem, a product other than the URL's, an unconfigured channel, a signature part that is
//!   not a minisign signature, unlisted/missing/duplicate parts and hash or size mismatches →
//!   422; parts out of order (`manifest`, `signature`, artifacts) → 400. A re-publish whose
//!   manifest bytes are identical (and whose artifacts therefore match) → 200; the stored
//!   signature is kept; when that release is yanked it stays yanked and the 200 body says
//!   `"yanked": true`. A version equal by SemVer precedence but spelled otherwise (other
//!   build metadata) → 409.
//! - Promote refuses a yanked source with 409.
//! - A query parameter given twice, a malformed percent escape or a non-UTF-8 query value → 400
//!   ([`params::QueryParams`]); hyper's own 400/414/431 answers get JSON bodies
//!   ([`protocol_errors`]). No error body names a file-system path (the log does); a full disk
//!   or quota during a publish or promote → 507.
//! - A release whose manifest is damaged is skipped (and logged) by the manifest, channels and
//!   release-list endpoints; the newest intact non-yanked release is offered instead.
//! - Channel state (docs/spec.md §8): `GET`/`PUT /api/v1/{product}/channels/{channel}`
//!   ([`handlers::channel`]). The server stores the publisher's exact bytes and signature and
//!   never signs; a `PUT` is parsed strictly, checked against the URL and the releases held
//!   on the channel (each listed release with its manifest's SHA-256), and stored only if its
//!   `seq` is higher than the stored one (compare-and-swap; 409 names the stored `seq`). With
//!   a state, the manifest and channels endpoints offer its `current`; a yank still marks the
//!   release on disk, but the state alone decides what is offered.
//! - A publish may omit artifact parts that an earlier release of the product (any
//!   configured channel) holds with the same name, size and SHA-256: they are hard-linked.
//! - The manifest each channel offers is cached in memory for at most
//!   [`state::MANIFEST_CACHE_TTL`] and dropped at once on any publish, promote, yank or stored
//!   channel state through this process; nothing else is cached (a restart rescans the disk).

pub mod access_log;
pub mod cli;
pub mod config;
pub mod error;
pub mod fleet;
pub mod handlers;
pub mod metrics;
pub mod params;
pub mod protocol_errors;
pub mod publish;
pub mod range;
pub mod routes;
pub mod server;
pub mod state;
pub mod storage;

pub use config::Config;
pub use error::ApiError;
pub use server::{serve, ServerError};
