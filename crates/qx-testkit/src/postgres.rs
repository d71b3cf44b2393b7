//! A throwaway PostgreSQL cluster for the fleet store's tests: started once per test process
//! in a temporary directory (a Unix socket there, no TCP listener), one fresh database per
//! test, stopped and removed when the process exits.
//!
//! The server runs under a small shell that waits on a pipe this process holds: when the
//! process ends — passed, failed or aborted — the pipe closes and the shell stops the
//! server and removes the directory. As root (initdb refuses root) the cluster runs as the
//! `postgres` user.

use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// The port number in the socket's name (no TCP listener is opened).
const PORT: u16 = 5432;
/// The superuser the tests connect as.
const SUPERUSER: &str = "postgres";

struct Cluster {
    bin: PathBuf,
    socket_dir: PathBuf,
    /// Held until the process exits: its end of the pipe keeps the server running.
    _keepalive: Mutex<(Child, ChildStdin)>,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();
static NEXT_DB: AtomicU32 = AtomicU32::new(0);

/// A fresh, empty database in this process's cluster.
#[derive(Debug, Clone)]
pub struct Database {
    /// `postgres://…` with the socket directory as `host`.
    pub url: String,
    pub name: String,
}

/// Creates a fresh database (starting the cluster on first use).
pub fn database() -> Database {
    let c = CLUSTER.get_or_init(start);
    let name = format!(
        "qx_{}_{}",
        std::process::id(),
        NEXT_DB.fetch_add(1, Ordering::Relaxed)
    );
    psql(c, &format!("CREATE DATABASE {name}"));
    Database {
        url: format!(
            "postgres://{SUPERUSER}@localhost/{name}?host={}&port={PORT}",
            c.socket_dir.display()
        ),
        name,
    }
}

fn psql(c: &Cluster, statement: &str) {
    let out = Command::new(c.bin.join("psql"))
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
        .arg(&c.socket_dir)
        .args([
            "-p",
            &PORT.to_string(),
            "-U",
            SUPERUSER,
            "-d",
            "postgres",
            "-c",
            statement,
        ])
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "psql {statement:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The directory of the newest installed PostgreSQL's programs.
fn bin_dir() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "PostgreSQL is not installed (no /usr/lib/postgresql/<version>/bin/initdb): the \
             fleet store's PostgreSQL tests need it; `cargo xtask test` installs it (Debian \
             package postgresql)"
        ),
    }
}

/// Runs `cmd` as the cluster's owner: as root, the `postgres` user.
fn as_owner(program: &Path) -> Command {
    if rustix::process::geteuid().is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn start() -> Cluster {
    let bin = bin_dir();
    // Under /tmp whatever TMPDIR says: the `postgres` user must reach it, and the socket's
    // path must stay under the 107 bytes a Unix socket's name may have.
    let dir = tempfile::Builder::new()
        .prefix("qx-pg-")
        .tempdir_in("/tmp")
        .expect("temporary directory for the cluster")
        .keep();
    if rustix::process::geteuid().is_root() {
        let st = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(&dir)
            .status()
            .expect("run chown");
        assert!(st.success(), "chown postgres {}", dir.display());
    }
    let data = dir.join("data");
    let out = as_owner(&bin.join("initdb"))
        .arg("-D")
        .arg(&data)
        .args([
            "-U",
            SUPERUSER,
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ])
        .output()
        .expect("run initdb");
    assert!(
        out.status.success(),
        "initdb {} failed: {}",
        data.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let keepalive = serve(&bin, &dir, &data);
    let ready = crate::wait::poll(Duration::from_secs(60), Duration::from_millis(50), || {
        Command::new(bin.join("pg_isready"))
            .arg("-q")
            .arg("-h")
            .arg(&dir)
            .args(["-p", &PORT.to_string()])
            .status()
            .is_ok_and(|s| s.success())
    });
    assert!(
        ready,
        "the test PostgreSQL cluster in {} did not start",
        dir.display()
    );
    Cluster {
        bin,
        socket_dir: dir,
        _keepalive: Mutex::new(keepalive),
    }
}

/// Starts the server under a shell that stops it and removes `dir` once its stdin closes.
fn serve(bin: &Path, dir: &Path, data: &Path) -> (Child, ChildStdin) {
    let script = r#""$1/postgres" -D "$2" -k "$3" -p "$4" -c listen_addresses= \
        -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
        -c max_connections=200 >"$3/server.log" 2>&1 &
pid=$!
cat >/dev/null
kill -INT "$pid"
wait "$pid"
rm -rf "$3""#;
    let mut child = as_owner(Path::new("/bin/sh"))
        .args(["-c", script, "sh"])
        .arg(bin)
        .arg(data)
        .arg(dir)
        .arg(PORT.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start the test PostgreSQL server");
    let stdin = child.stdin.take().expect("piped stdin");
    (child, stdin)
}
