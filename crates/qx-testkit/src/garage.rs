//! A real S3-compatible object store for the tests: Garage nodes on loopback ports, each in a
//! temporary directory, under a shell that stops the node and removes its directory when the
//! test process ends (the pipe it waits on closes).
//!
//! [`shared`] is one single-node store per test process (each server under test gets its own
//! prefix in its bucket); [`Cluster::start`] makes a cluster of its own, whose nodes a test may
//! kill and restart.
//!
//! The `garage` program is found through `QX_GARAGE`, then `PATH`; `cargo xtask test` installs
//! it (`cargo install garage`) when missing.

use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use qx_server::config::{ObjectStoreConfig, DEFAULT_STAGING_SWEEP_AGE};

/// The region the nodes answer to.
pub const REGION: &str = "garage";
/// The bucket every cluster has.
pub const BUCKET: &str = "qx-releases";

/// A bucket and a key that may read and write it.
#[derive(Debug, Clone)]
pub struct Bucket {
    /// The S3 endpoints, one per node (`http://127.0.0.1:<port>`).
    pub endpoints: Vec<String>,
    pub bucket: String,
    pub key_id: String,
    pub secret: String,
}

impl Bucket {
    /// The server configuration of a store under `prefix`, through the node `node`'s endpoint.
    pub fn config(&self, prefix: &str, node: usize) -> ObjectStoreConfig {
        ObjectStoreConfig {
            bucket: self.bucket.clone(),
            prefix: prefix.to_owned(),
            endpoint: Some(self.endpoints[node % self.endpoints.len()].clone()),
            region: REGION.to_owned(),
            access_key_id: Some(self.key_id.clone()),
            secret_access_key: Some(self.secret.clone()),
            sweep_age: DEFAULT_STAGING_SWEEP_AGE,
        }
    }

    /// The environment of a `qx-update-server` process on this bucket under `prefix`.
    pub fn env(&self, prefix: &str, node: usize) -> Vec<(&'static str, String)> {
        vec![
            ("RELEASE_STORE", format!("s3://{}/{prefix}", self.bucket)),
            (
                "AWS_ENDPOINT_URL",
                self.endpoints[node % self.endpoints.len()].clone(),
            ),
            ("AWS_REGION", REGION.to_owned()),
            ("AWS_ACCESS_KEY_ID", self.key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret.clone()),
        ]
    }
}

/// One Garage node.
pub struct Node {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub s3_port: u16,
    pub rpc_port: u16,
    /// The running server, if any.
    server: Mutex<Option<Child>>,
    /// Held until the node is dropped or the process exits: then the shell kills the server
    /// (by its pid file) and removes the directory.
    _keeper: (Child, ChildStdin),
}

/// A running cluster and its bucket.
pub struct Cluster {
    pub nodes: Vec<Node>,
    pub bucket: Bucket,
}

static SHARED: OnceLock<Cluster> = OnceLock::new();
static NEXT_PREFIX: AtomicU32 = AtomicU32::new(0);

/// The single-node store of this test process (started on first use).
pub fn shared() -> &'static Bucket {
    &SHARED.get_or_init(|| Cluster::start(1)).bucket
}

/// A prefix no other server of this process uses.
pub fn fresh_prefix() -> String {
    format!(
        "t{}-{}",
        std::process::id(),
        NEXT_PREFIX.fetch_add(1, Ordering::Relaxed)
    )
}

/// The prefix standing for a release directory: the same for the same directory (a server
/// restarted on it finds its releases again), another for another one.
pub fn prefix_for(release_dir: &Path) -> String {
    let digest = qx_core::Sha256::of(release_dir.as_os_str().as_encoded_bytes());
    format!("d{}", &digest.to_hex()[..16])
}

/// True when the test run asks every test server to keep its releases in Garage
/// (`QX_TEST_STORE=garage`).
pub fn selected() -> bool {
    std::env::var("QX_TEST_STORE").is_ok_and(|v| v == "garage")
}

/// The `garage` program.
pub fn program() -> PathBuf {
    if let Some(p) = std::env::var_os("QX_GARAGE") {
        return p.into();
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join("garage"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "garage is not installed (not in PATH, QX_GARAGE unset): the object-store tests \
                 need it; `cargo xtask test` installs it with cargo install"
            )
        })
}

/// Runs `garage -c <config> <args>` and returns its standard output; panics with its error
/// output when it fails.
pub fn cli(config: &Path, args: &[&str]) -> String {
    let out = Command::new(program())
        .arg("-c")
        .arg(config)
        .args(args)
        .output()
        .expect("run garage");
    assert!(
        out.status.success(),
        "garage {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A loopback port free at the time of asking.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl Node {
    fn create(secret: &str, replication: usize) -> Node {
        let dir = tempfile::Builder::new()
            .prefix("qx-garage-")
            .tempdir()
            .expect("temporary directory for a garage node")
            .keep();
        let mut node = Node {
            _keeper: keeper(&dir),
            config: dir.join("garage.toml"),
            dir,
            s3_port: 0,
            rpc_port: 0,
            server: Mutex::new(None),
        };
        // A port found free may be taken by another test's node before ours binds it: then
        // ours exits, and it starts again on other ports.
        let mut last = String::new();
        for _ in 0..5 {
            node.configure(secret, replication);
            match node.try_start() {
                Ok(()) => return node,
                Err(e) => last = e,
            }
        }
        panic!(
            "garage node in {} did not start: {last}",
            node.dir.display()
        );
    }

    /// Writes the node's configuration on ports free now.
    fn configure(&mut self, secret: &str, replication: usize) {
        let (rpc_port, s3_port, admin_port) = (free_port(), free_port(), free_port());
        let text = format!(
            "metadata_dir = \"{d}/meta\"\ndata_dir = \"{d}/data\"\ndb_engine = \"sqlite\"\n\
             replication_factor = {replication}\nrpc_bind_addr = \"127.0.0.1:{rpc_port}\"\n\
             rpc_public_addr = \"127.0.0.1:{rpc_port}\"\nrpc_secret = \"{secret}\"\n\
             [s3_api]\ns3_region = \"{REGION}\"\napi_bind_addr = \"127.0.0.1:{s3_port}\"\n\
             root_domain = \".s3.garage.localhost\"\n[admin]\napi_bind_addr = \"127.0.0.1:{admin_port}\"\n",
            d = self.dir.display()
        );
        std::fs::write(&self.config, text).expect("write garage.toml");
        self.s3_port = s3_port;
        self.rpc_port = rpc_port;
    }

    /// Starts the node's server (again, after [`Node::kill`]) and waits until it answers.
    pub fn start(&self) {
        if let Err(e) = self.try_start() {
            panic!("garage node in {} did not start: {e}", self.dir.display());
        }
    }

    /// Starts the server and waits until it is ready: its node key written and both of its
    /// ports answering, while it still runs (a server that could not bind a port exits).
    fn try_start(&self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .expect("the node's log file");
        let mut child = Command::new(program())
            .arg("-c")
            .arg(&self.config)
            .arg("server")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("the node's log file"))
            .stderr(log)
            .spawn()
            .expect("start a garage node");
        std::fs::write(self.dir.join("pid"), child.id().to_string()).expect("write the pid file");
        let mut exited = None;
        let answers = |port: u16| std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
        let ready = crate::wait::poll(Duration::from_secs(60), Duration::from_millis(100), || {
            if let Ok(Some(status)) = child.try_wait() {
                exited = Some(status);
                return true;
            }
            self.dir.join("meta/node_key").exists()
                && answers(self.s3_port)
                && answers(self.rpc_port)
        });
        if let Some(status) = exited.or_else(|| child.try_wait().ok().flatten()) {
            let _ = std::fs::remove_file(self.dir.join("pid"));
            return Err(format!("it exited ({status}); see server.log"));
        }
        *self.server.lock().unwrap_or_else(|e| e.into_inner()) = Some(child);
        if ready {
            Ok(())
        } else {
            Err("it did not answer within 60 s".into())
        }
    }

    /// Kills the node's server with SIGKILL (its data stays for [`Node::start`]).
    pub fn kill(&self) {
        let mut server = self.server.lock().unwrap_or_else(|e| e.into_inner());
        let mut child = server.take().expect("the node runs");
        child.kill().expect("kill -9 the node");
        child.wait().expect("reap the node");
        let _ = std::fs::remove_file(self.dir.join("pid"));
    }

    /// `<id>@127.0.0.1:<rpc port>`.
    fn id(&self) -> String {
        cli(&self.config, &["node", "id", "-q"]).trim().to_owned()
    }
}

impl Cluster {
    /// Starts `n` nodes (replication factor `n`), connects them, lays them out, creates the
    /// bucket [`BUCKET`] and a key for it.
    pub fn start(n: usize) -> Cluster {
        let secret = hex(&rand::random::<[u8; 32]>());
        let nodes: Vec<Node> = (0..n).map(|_| Node::create(&secret, n)).collect();
        let first = &nodes[0].config;
        let ids: Vec<String> = nodes.iter().map(Node::id).collect();
        for id in &ids[1..] {
            cli(first, &["node", "connect", id]);
        }
        for id in &ids {
            let short = id.split('@').next().unwrap_or(id);
            cli(first, &["layout", "assign", "-z", "dc1", "-c", "1G", short]);
        }
        cli(first, &["layout", "apply", "--version", "1"]);
        let created =
            crate::wait::poll(Duration::from_secs(60), Duration::from_millis(200), || {
                Command::new(program())
                    .arg("-c")
                    .arg(first)
                    .args(["bucket", "create", BUCKET])
                    .output()
                    .is_ok_and(|o| o.status.success())
            });
        assert!(created, "garage did not create bucket {BUCKET}");
        let key = cli(first, &["key", "create", "qx-key"]);
        let field = |name: &str| {
            key.lines()
                .find_map(|l| l.trim().strip_prefix(name).map(|v| v.trim().to_owned()))
                .unwrap_or_else(|| panic!("no {name:?} in garage's key output: {key}"))
        };
        let (key_id, key_secret) = (field("Key ID:"), field("Secret key:"));
        cli(
            first,
            &[
                "bucket", "allow", "--read", "--write", "--owner", BUCKET, "--key", "qx-key",
            ],
        );
        let endpoints = nodes
            .iter()
            .map(|n| format!("http://127.0.0.1:{}", n.s3_port))
            .collect();
        Cluster {
            nodes,
            bucket: Bucket {
                endpoints,
                bucket: BUCKET.to_owned(),
                key_id,
                secret: key_secret,
            },
        }
    }
}

/// A shell that, once its stdin closes, kills the server named by `dir/pid` and removes `dir`.
fn keeper(dir: &Path) -> (Child, ChildStdin) {
    let script = r#"cat >/dev/null
[ -f "$1/pid" ] && kill -9 "$(cat "$1/pid")" 2>/dev/null
rm -rf "$1""#;
    let mut child = Command::new("/bin/sh")
        .args(["-c", script, "sh"])
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the node's keeper");
    let stdin = child.stdin.take().expect("piped stdin");
    (child, stdin)
}

impl Cluster {
    /// Waits until node 0 is connected to every node (`garage status` knows each one's host
    /// name): a restarted node takes some seconds to be back.
    pub fn wait_connected(&self) {
        let n = self.nodes.len();
        let connected =
            crate::wait::poll(Duration::from_secs(60), Duration::from_millis(250), || {
                let Ok(out) = Command::new(program())
                    .arg("-c")
                    .arg(&self.nodes[0].config)
                    .arg("status")
                    .output()
                else {
                    return false;
                };
                let text = String::from_utf8_lossy(&out.stdout);
                let known = text
                    .lines()
                    .filter(|l| {
                        let mut fields = l.split_whitespace();
                        let id = fields.next().unwrap_or_default();
                        id.len() == 16
                            && id.bytes().all(|b| b.is_ascii_hexdigit())
                            && fields.next().is_some_and(|host| host != "?")
                    })
                    .count();
                known == n
            });
        assert!(
            connected,
            "the garage nodes did not all connect within 60 s"
        );
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
