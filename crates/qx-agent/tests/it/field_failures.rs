//! Three failures seen in the field, each made impossible and proven so (docs/spec.md §4): a
//! running binary replaced without ETXTBSY (step 4); a file installed where nothing runs it is
//! a FAILED update (step 6); migrations run before the restart, and a failing one restores
//! everything without restarting anything (step 5).

use std::fs;
use std::path::{Path, PathBuf};

use qx_agent::AgentError;
use qx_agent::ApplyOptions;
use qx_core::status::Outcome;
use qx_testkit::host::{demo_binary, exe_inode, is_running, Lab};
use qx_testkit::release::ComponentSpec;

use crate::support::host::{agent, host_at_v1, inode, node, run_qx_update, service, update_log};

#[test]
fn running_binary_is_replaced_without_etxtbsy() {
    let lab = Lab::new().unwrap();
    host_at_v1(&lab);
    let pid = lab.host.service_pid("quantix-node").unwrap();
    let bin = lab.host.path("/data/bin/qx-node");
    let old_inode = inode(&bin);
    assert_eq!(exe_inode(pid), Some(old_inode));

    // The hazard is real: writing into the running executable fails with ETXTBSY.
    let err = fs::OpenOptions::new()
        .write(true)
        .open(&bin)
        .expect_err("ETXTBSY expected");
    assert_eq!(err.raw_os_error(), Some(26), "{err}");

    // The release does not restart the service, so the old process must keep running.
    lab.publish(&lab.release("1.1.0").component(node("1.1.0")))
        .unwrap();
    agent(&lab)
        .apply(&ApplyOptions::default())
        .expect("apply while running");

    assert_eq!(fs::read(&bin).unwrap(), demo_binary("1.1.0").unwrap());
    assert_ne!(inode(&bin), old_inode, "a new inode was renamed into place");
    assert!(is_running(pid), "the old process keeps running");
    assert_eq!(exe_inode(pid), Some(old_inode), "still on its old inode");
    // The next start runs the new version.
    service(&lab.host, "restart", "quantix-node");
    let new_pid = lab.host.service_pid("quantix-node").unwrap();
    assert_eq!(exe_inode(new_pid), Some(inode(&bin)));
}

#[test]
fn file_installed_where_the_service_does_not_run_is_a_failed_update() {
    let lab = Lab::new().unwrap();
    // The init script runs /data/bin/qx-controlplane ...
    lab.host
        .write_file(
            "/data/bin/qx-controlplane",
            &demo_binary("1.0.0").unwrap(),
            0o755,
        )
        .unwrap();
    lab.host.set_version("qx-controlplane", "1.0.0").unwrap();
    lab.host
        .add_service(
            "quantix-controlplane",
            "/data/bin/qx-controlplane",
            "infinity",
        )
        .unwrap();
    service(&lab.host, "start", "quantix-controlplane");
    // ... but the release installs /data/bin/quantix-controlplane.
    lab.publish(
        &lab.release("1.1.0").component(
            ComponentSpec::file(
                "qx-controlplane",
                "/data/bin/quantix-controlplane",
                demo_binary("1.1.0").unwrap(),
            )
            .service("quantix-controlplane"),
        ),
    )
    .unwrap();

    // Through the real binary: the update is reported FAILED with a non-zero exit.
    let out = run_qx_update(lab.host.root(), &["apply", "--yes"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(42), "{stderr}");
    assert!(stderr.contains("did not take effect"), "{stderr}");
    assert!(stderr.contains("qx-controlplane"), "{stderr}");

    // Files restored: the stray file is gone, the real one untouched, the version unchanged.
    assert!(!lab.host.path("/data/bin/quantix-controlplane").exists());
    assert_eq!(
        lab.host.read("/data/bin/qx-controlplane").unwrap(),
        demo_binary("1.0.0").unwrap()
    );
    assert_eq!(
        lab.host.version("qx-controlplane").as_deref(),
        Some("1.0.0")
    );
    // The service was restarted again and runs the old binary.
    let pid = lab.host.service_pid("quantix-controlplane").unwrap();
    assert!(is_running(pid));
    assert_eq!(
        exe_inode(pid),
        Some(inode(&lab.host.path("/data/bin/qx-controlplane")))
    );
    let status = agent(&lab).status();
    let last = status.history.last().unwrap();
    assert_eq!(last.outcome, Outcome::Failed);
    assert!(last
        .reason
        .as_deref()
        .unwrap()
        .contains("did not take effect"));

    // The library reports the same typed error.
    let err = agent(&lab)
        .apply(&ApplyOptions::default())
        .expect_err("fails again");
    assert!(matches!(err, AgentError::NotEffective { .. }), "{err}");
}

const MIGRATE: &str = r#"#!/bin/sh
# quantix-migrate up: applies every sql/NNN_*.sql above the database's user_version in ONE
# transaction; any error rolls the whole transaction back.
set -eu
db="$QX_ROOT/data/db/app.db"
current=$(sqlite3 "$db" "PRAGMA user_version;")
script="BEGIN;"
for f in sql/*.sql; do
    num=$(basename "$f" | cut -d_ -f1 | sed 's/^0*//')
    if [ "$num" -gt "$current" ]; then
        script="$script
$(cat "$f")
PRAGMA user_version = $num;"
    fi
done
echo "migrating $db from $current"
printf '%s\nCOMMIT;\n' "$script" | sqlite3 -bail "$db"
echo "now at $(sqlite3 "$db" 'PRAGMA user_version;')"
"#;

fn migrations(sql2: &str) -> ComponentSpec {
    ComponentSpec::migrations(
        "db-migrations",
        "/data/lib/quantix-migrations",
        vec![
            ("quantix-migrate".into(), MIGRATE.as_bytes().to_vec(), 0o755),
            (
                "sql/001_users.sql".into(),
                b"CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT);".to_vec(),
                0o644,
            ),
            ("sql/002_email.sql".into(), sql2.as_bytes().to_vec(), 0o644),
        ],
        vec!["quantix-migrate".into(), "up".into()],
    )
}

fn columns(db: &Path) -> Vec<String> {
    let c = rusqlite::Connection::open(db).unwrap();
    let mut s = c
        .prepare("SELECT name FROM pragma_table_info('users')")
        .unwrap();
    s.query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
}

/// A host at 1.0.0: qx-node running, migrations 001 applied, a database with one user.
fn migrations_host(lab: &Lab) -> PathBuf {
    lab.host
        .write_file("/data/bin/qx-node", &demo_binary("1.0.0").unwrap(), 0o755)
        .unwrap();
    lab.host.set_version("qx-node", "1.0.0").unwrap();
    lab.host
        .write_file(
            "/data/lib/quantix-migrations/quantix-migrate",
            MIGRATE.as_bytes(),
            0o755,
        )
        .unwrap();
    lab.host
        .write_file(
            "/data/lib/quantix-migrations/sql/001_users.sql",
            b"CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT);",
            0o644,
        )
        .unwrap();
    lab.host.set_version("db-migrations", "1.0.0").unwrap();
    let db = lab.host.path("/data/db/app.db");
    fs::create_dir_all(db.parent().unwrap()).unwrap();
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch(
        "CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT); INSERT INTO users(name) VALUES ('ada'); PRAGMA user_version = 1;",
    )
    .unwrap();
    drop(c);
    // The service records the schema it sees when it starts.
    lab.host
        .add_service_with_hook(
            "quantix-node",
            "/data/bin/qx-node",
            "infinity",
            "sqlite3 \"$ROOT/data/db/app.db\" \"SELECT group_concat(name) FROM pragma_table_info('users')\" > \"$ROOT/run/schema-at-start\"",
        )
        .unwrap();
    service(&lab.host, "start", "quantix-node");
    db
}

#[test]
fn failing_migration_restores_everything_and_restarts_nothing() {
    let lab = Lab::new().unwrap();
    let db = migrations_host(&lab);
    let db_before = fs::read(&db).unwrap();
    let pid = lab.host.service_pid("quantix-node").unwrap();
    lab.publish(
        &lab.release("1.1.0")
            .component(node("1.1.0").service("quantix-node"))
            .component(migrations(
                "ALTER TABLE users ADD COLUMN email TEXT;\nINSERT INTO no_such_table VALUES (1);",
            )),
    )
    .unwrap();

    let err = agent(&lab)
        .apply(&ApplyOptions::default())
        .expect_err("migration fails");
    assert!(matches!(err, AgentError::MigrationFailed { .. }), "{err}");
    assert_eq!(err.exit_code(), 40);

    // No restart: same pid, still running the old inode.
    assert_eq!(lab.host.service_pid("quantix-node"), Some(pid));
    assert!(is_running(pid));
    // Every file restored.
    assert_eq!(
        lab.host.read("/data/bin/qx-node").unwrap(),
        demo_binary("1.0.0").unwrap()
    );
    assert!(!lab
        .host
        .path("/data/lib/quantix-migrations/sql/002_email.sql")
        .exists());
    assert_eq!(
        lab.host
            .read("/data/lib/quantix-migrations/quantix-migrate")
            .unwrap(),
        MIGRATE.as_bytes()
    );
    assert_eq!(lab.host.version("qx-node").as_deref(), Some("1.0.0"));
    assert_eq!(lab.host.version("db-migrations").as_deref(), Some("1.0.0"));
    // Database unchanged.
    assert_eq!(columns(&db), vec!["id", "name"]);
    assert_eq!(fs::read(&db).unwrap(), db_before);
    // The log holds the migration's stderr.
    let log = update_log(lab.host.root());
    assert!(
        log.contains("stderr | ") && log.contains("no such table: no_such_table"),
        "{log}"
    );
    assert!(log.contains("stdout | migrating"), "{log}");
}

#[test]
fn succeeding_migration_changes_the_schema_before_the_restart() {
    let lab = Lab::new().unwrap();
    let db = migrations_host(&lab);
    assert_eq!(
        fs::read_to_string(lab.host.path("/run/schema-at-start"))
            .unwrap()
            .trim(),
        "id,name"
    );
    let pid = lab.host.service_pid("quantix-node").unwrap();
    lab.publish(
        &lab.release("1.1.0")
            .component(node("1.1.0").service("quantix-node"))
            .component(migrations("ALTER TABLE users ADD COLUMN email TEXT;")),
    )
    .unwrap();
    agent(&lab).apply(&ApplyOptions::default()).expect("apply");
    assert_eq!(columns(&db), vec!["id", "name", "email"]);
    // The restarted service saw the new schema when it started.
    assert_eq!(
        fs::read_to_string(lab.host.path("/run/schema-at-start"))
            .unwrap()
            .trim(),
        "id,name,email"
    );
    let new_pid = lab.host.service_pid("quantix-node").unwrap();
    assert_ne!(new_pid, pid);
    assert_eq!(
        exe_inode(new_pid),
        Some(inode(&lab.host.path("/data/bin/qx-node")))
    );
    assert_eq!(lab.host.version("db-migrations").as_deref(), Some("1.1.0"));
    let log = update_log(lab.host.root());
    let migrate_at = log.find("migrate db-migrations: running").unwrap();
    let restart_at = log.find("restart quantix-node:").unwrap();
    assert!(
        migrate_at < restart_at,
        "migration logged before the restart"
    );
}
