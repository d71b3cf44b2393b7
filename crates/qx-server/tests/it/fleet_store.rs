//! The fleet store on both engines: every test body runs against SQLite (quick tier) and
//! PostgreSQL (slow tier: a throwaway cluster from `qx_testkit::postgres`). Clocks are
//! injected: every `now` is a number the test picks.

use std::collections::BTreeSet;
use std::sync::Arc;

use qx_core::fleet::{
    CheckIn, CheckInReason, Event, EventType, Labels, LabelsPatch, Liveness, Scope, SlotReport,
};
use qx_core::Sha256;
use qx_server::fleet::sql::SqlStore;
use qx_server::fleet::store::{
    EnrollRefused, FleetError, FleetStore, HostQuery, LabelMatch, LivenessRule, NewEnrollmentToken,
    NewHost, NewOperatorToken,
};
use qx_server::fleet::{connect, postgres, sqlite};

/// Runs `body` on SQLite and on PostgreSQL, as `<name>::sqlite` and `<name>::postgres`.
macro_rules! both_engines {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(super::Db::new(super::Kind::Sqlite)).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[ignore = "slow tier: needs a PostgreSQL cluster; `cargo xtask test` installs and runs it"]
            async fn postgres() {
                super::$name(super::Db::new(super::Kind::Postgres)).await;
            }
        }
    )*};
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    Postgres,
}

/// A fresh database of one engine.
pub struct Db {
    kind: Kind,
    target: String,
    _dir: Option<tempfile::TempDir>,
}

impl Db {
    pub fn new(kind: Kind) -> Self {
        match kind {
            Kind::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let target = dir.path().join("fleet.db").display().to_string();
                Db {
                    kind,
                    target,
                    _dir: Some(dir),
                }
            }
            Kind::Postgres => Db {
                kind,
                target: qx_testkit::postgres::database().url,
                _dir: None,
            },
        }
    }

    /// A store on this database, not migrated (each call is another "server").
    async fn open(&self) -> SqlStore {
        match self.kind {
            Kind::Sqlite => sqlite::open(std::path::Path::new(&self.target))
                .await
                .unwrap(),
            Kind::Postgres => postgres::open(&self.target).await.unwrap(),
        }
    }

    /// A migrated store, as the server gets it.
    async fn store(&self) -> Arc<dyn FleetStore> {
        connect(&self.target).await.unwrap()
    }
}

const RULE: LivenessRule = LivenessRule {
    grace: 60_000,
    offline_after: 3_600_000,
};
const T0: i64 = 1_700_000_000_000;

fn hash(secret: &str) -> Sha256 {
    Sha256::of(secret.as_bytes())
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn enrollment_token(s: &dyn FleetStore, secret: &str, uses: u32, token_labels: Labels) {
    s.create_enrollment_token(NewEnrollmentToken {
        id: format!("et-{secret}"),
        name: Some(format!("token {secret}")),
        hash: hash(secret),
        product: "quantix-node".into(),
        labels: token_labels,
        expires_at: T0 + 86_400_000,
        uses,
        now: T0,
    })
    .await
    .unwrap();
}

fn new_host(id: &str, host_labels: Labels, now: i64) -> NewHost {
    NewHost {
        id: id.into(),
        token_hash: hash(&format!("host-token-{id}")),
        hostname: Some(format!("{id}.lan")),
        labels: host_labels,
        enrollment_key: None,
        now,
    }
}

/// Enrolls `ids` with one token that has enough uses.
async fn enroll_all(s: &dyn FleetStore, ids: &[String]) {
    let secret = format!("bulk-{}", ids.len());
    enrollment_token(s, &secret, ids.len() as u32, Labels::new()).await;
    for id in ids {
        s.enroll(hash(&secret), new_host(id, Labels::new(), T0))
            .await
            .unwrap()
            .unwrap();
    }
}

fn report(channel: &str, versions: &[(&str, &str)], host_labels: Labels) -> CheckIn {
    CheckIn {
        reason: CheckInReason::Check,
        agent_version: "0.1.0".into(),
        channel: channel.into(),
        installed: versions
            .iter()
            .map(|(c, v)| (c.to_string(), v.to_string()))
            .collect(),
        booted_slot: Some("a".into()),
        slots: vec![
            SlotReport {
                name: "a".into(),
                version: Some("1.0.0".into()),
                state: "good".into(),
            },
            SlotReport {
                name: "b".into(),
                version: None,
                state: "empty".into(),
            },
        ],
        pending: None,
        last_result: None,
        health: Some("ok".into()),
        labels: host_labels,
        uptime_s: 42,
        time: Some("1999-01-01T00:00:00Z".into()),
    }
}

fn event(seq: u64, kind: EventType) -> Event {
    Event {
        seq,
        kind,
        time: "1999-01-01T00:00:00Z".into(),
        version: Some("1.1.0".into()),
        component: None,
        stage: None,
        exit_code: None,
        message: None,
        count: None,
    }
}

fn failed(seq: u64, message: &str) -> Event {
    Event {
        message: Some(message.into()),
        stage: Some("install".into()),
        exit_code: Some(3),
        ..event(seq, EventType::Failed)
    }
}

fn query() -> HostQuery {
    HostQuery {
        limit: 100,
        ..HostQuery::default()
    }
}

async fn ids(s: &dyn FleetStore, q: HostQuery, now: i64) -> Vec<String> {
    s.list_hosts(q, RULE, now)
        .await
        .unwrap()
        .hosts
        .into_iter()
        .map(|h| h.id)
        .collect()
}

both_engines!(
    operator_tokens_create_find_list_revoke,
    operator_token_name_taken_while_active,
    enroll_creates_host_with_token_and_host_labels,
    enroll_refuses_unknown_token,
    enroll_refuses_expired_token,
    enroll_refuses_used_up_token,
    enroll_refuses_revoked_token,
    enroll_last_use_race_has_one_winner,
    host_token_lookup_after_decommission,
    check_in_records_report_versions_and_labels,
    check_in_of_unknown_host_is_refused,
    events_replayed_batch_counted_once,
    events_out_of_order_stored_and_state_follows_highest_seq,
    events_state_per_type,
    events_seq_beyond_range_refused_and_nothing_stored,
    host_detail_has_newest_events_first,
    patch_labels_sets_and_removes,
    label_selector_semantics,
    list_filters_product_channel_version_state,
    liveness_from_next_due_in_sql,
    paging_over_1000_hosts_yields_each_once,
    paging_refuses_foreign_cursor,
    counts_grouped,
    migrate_is_idempotent,
);

async fn operator_tokens_create_find_list_revoke(db: Db) {
    let s = db.store().await;
    let t = |name: &str, scopes: Vec<Scope>, now| NewOperatorToken {
        name: name.into(),
        scopes,
        hash: hash(name),
        now,
    };
    s.create_operator_token(t("ci", vec![Scope::Publish], T0))
        .await
        .unwrap();
    s.create_operator_token(t("ops", vec![Scope::Read, Scope::Rollout], T0 + 1))
        .await
        .unwrap();
    let ci = s.operator_token(hash("ci")).await.unwrap().unwrap();
    assert_eq!(
        (
            ci.name.as_str(),
            ci.scopes.as_slice(),
            ci.created_at,
            ci.revoked_at
        ),
        ("ci", &[Scope::Publish][..], T0, None)
    );
    assert!(s.operator_token(hash("nobody")).await.unwrap().is_none());
    let names: Vec<String> = s
        .list_operator_tokens()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, ["ci", "ops"]);
    assert!(s.revoke_operator_token("ci".into(), T0 + 5).await.unwrap());
    assert!(!s.revoke_operator_token("ci".into(), T0 + 6).await.unwrap());
    assert!(!s
        .revoke_operator_token("nobody".into(), T0 + 6)
        .await
        .unwrap());
    let ci = s.operator_token(hash("ci")).await.unwrap().unwrap();
    assert_eq!(ci.revoked_at, Some(T0 + 5));
}

async fn operator_token_name_taken_while_active(db: Db) {
    let s = db.store().await;
    let t = |secret: &str| NewOperatorToken {
        name: "deploy".into(),
        scopes: vec![Scope::Admin],
        hash: hash(secret),
        now: T0,
    };
    s.create_operator_token(t("one")).await.unwrap();
    let err = s.create_operator_token(t("two")).await.unwrap_err();
    assert!(matches!(err, FleetError::Conflict(_)), "{err:?}");
    assert!(s.operator_token(hash("two")).await.unwrap().is_none());
    assert!(s
        .revoke_operator_token("deploy".into(), T0 + 1)
        .await
        .unwrap());
    s.create_operator_token(t("two")).await.unwrap();
    assert_eq!(s.list_operator_tokens().await.unwrap().len(), 2);
}

async fn enroll_creates_host_with_token_and_host_labels(db: Db) {
    let s = db.store().await;
    enrollment_token(
        &*s,
        "e1",
        2,
        labels(&[("site", "berlin"), ("tier", "edge")]),
    )
    .await;
    let host_labels = labels(&[("site", "paris"), ("rack", "7")]);
    let h = s
        .enroll(hash("e1"), new_host("h1", host_labels, T0))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(h.id, "h1");
    assert_eq!(h.product, "quantix-node");
    assert_eq!(
        h.labels,
        labels(&[("rack", "7"), ("site", "berlin"), ("tier", "edge")])
    );
    let auth = s
        .host_by_token(hash("host-token-h1"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (auth.id.as_str(), auth.product.as_str(), auth.decommissioned),
        ("h1", "quantix-node", false)
    );
    let d = s.host("h1".into(), 10, RULE, T0).await.unwrap().unwrap();
    assert_eq!(d.host.labels, h.labels);
    assert_eq!(d.host.state, "idle");
    assert_eq!(d.host.liveness, Liveness::Online);
    assert_eq!(d.host.hostname.as_deref(), Some("h1.lan"));
    assert_eq!(d.host.last_checkin, None);
    assert!(s
        .enroll(hash("e1"), new_host("h2", Labels::new(), T0))
        .await
        .unwrap()
        .is_ok());
}

async fn enroll_refuses_unknown_token(db: Db) {
    let s = db.store().await;
    let r = s
        .enroll(hash("never-issued"), new_host("h1", Labels::new(), T0))
        .await
        .unwrap();
    assert_eq!(r, Err(EnrollRefused::Unknown));
    assert!(s.host("h1".into(), 0, RULE, T0).await.unwrap().is_none());
}

async fn enroll_refuses_expired_token(db: Db) {
    let s = db.store().await;
    enrollment_token(&*s, "e1", 5, Labels::new()).await;
    let expires = T0 + 86_400_000;
    let r = s
        .enroll(hash("e1"), new_host("h1", Labels::new(), expires))
        .await
        .unwrap();
    assert_eq!(r, Err(EnrollRefused::Expired));
    assert!(s.host("h1".into(), 0, RULE, T0).await.unwrap().is_none());
    assert!(s
        .enroll(hash("e1"), new_host("h1", Labels::new(), expires - 1))
        .await
        .unwrap()
        .is_ok());
}

async fn enroll_refuses_used_up_token(db: Db) {
    let s = db.store().await;
    enrollment_token(&*s, "e1", 1, Labels::new()).await;
    assert!(s
        .enroll(hash("e1"), new_host("h1", Labels::new(), T0))
        .await
        .unwrap()
        .is_ok());
    let r = s
        .enroll(hash("e1"), new_host("h2", Labels::new(), T0))
        .await
        .unwrap();
    assert_eq!(r, Err(EnrollRefused::UsedUp));
    assert!(s.host("h2".into(), 0, RULE, T0).await.unwrap().is_none());
}

async fn enroll_refuses_revoked_token(db: Db) {
    let s = db.store().await;
    enrollment_token(&*s, "e1", 5, Labels::new()).await;
    assert!(s
        .revoke_enrollment_token("et-e1".into(), T0 + 1)
        .await
        .unwrap());
    assert!(!s
        .revoke_enrollment_token("et-e1".into(), T0 + 2)
        .await
        .unwrap());
    assert!(!s
        .revoke_enrollment_token("et-none".into(), T0 + 2)
        .await
        .unwrap());
    let r = s
        .enroll(hash("e1"), new_host("h1", Labels::new(), T0 + 3))
        .await
        .unwrap();
    assert_eq!(r, Err(EnrollRefused::Revoked));
    assert!(s.host("h1".into(), 0, RULE, T0).await.unwrap().is_none());
}

/// Two servers (two stores on one database), eight enrollments at once on a one-use token.
async fn enroll_last_use_race_has_one_winner(db: Db) {
    let first: Arc<dyn FleetStore> = db.store().await;
    let second: Arc<dyn FleetStore> = Arc::new(db.open().await);
    enrollment_token(&*first, "last", 1, Labels::new()).await;
    let start = Arc::new(tokio::sync::Barrier::new(8));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let s = if i % 2 == 0 {
            first.clone()
        } else {
            second.clone()
        };
        let start = start.clone();
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            s.enroll(
                hash("last"),
                new_host(&format!("racer{i}"), Labels::new(), T0),
            )
            .await
            .unwrap()
        }));
    }
    let mut won = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => won += 1,
            Err(why) => assert_eq!(why, EnrollRefused::UsedUp),
        }
    }
    assert_eq!(won, 1);
    assert_eq!(
        first
            .list_hosts(query(), RULE, T0)
            .await
            .unwrap()
            .hosts
            .len(),
        1
    );
}

async fn host_token_lookup_after_decommission(db: Db) {
    let s = db.store().await;
    enroll_all(&*s, &["h1".into()]).await;
    assert!(s.decommission("h1".into(), T0 + 1).await.unwrap());
    assert!(!s.decommission("h1".into(), T0 + 2).await.unwrap());
    assert!(!s.decommission("nobody".into(), T0 + 2).await.unwrap());
    let auth = s
        .host_by_token(hash("host-token-h1"))
        .await
        .unwrap()
        .unwrap();
    assert!(auth.decommissioned);
    assert!(s
        .host_by_token(hash("host-token-nobody"))
        .await
        .unwrap()
        .is_none());
    assert!(ids(&*s, query(), T0).await.is_empty());
    let all = HostQuery {
        decommissioned: true,
        ..query()
    };
    let list = s.list_hosts(all, RULE, T0).await.unwrap();
    assert_eq!(list.hosts[0].liveness, Liveness::Decommissioned);
    let gone = HostQuery {
        liveness: Some(Liveness::Decommissioned),
        ..query()
    };
    assert_eq!(ids(&*s, gone, T0).await, ["h1"]);
}

async fn check_in_records_report_versions_and_labels(db: Db) {
    let s = db.store().await;
    enrollment_token(&*s, "e1", 1, labels(&[("site", "berlin")])).await;
    s.enroll(hash("e1"), new_host("h1", Labels::new(), T0))
        .await
        .unwrap()
        .unwrap();
    s.patch_labels(
        "h1".into(),
        LabelsPatch {
            labels: [("owner".to_string(), Some("ops".to_string()))].into(),
        },
    )
    .await
    .unwrap();
    let first = report(
        "stable",
        &[("app", "1.0.0"), ("os", "2.0.0")],
        labels(&[("rack", "7"), ("site", "x"), ("owner", "me")]),
    );
    s.check_in("h1".into(), first, T0 + 10, T0 + 900_000)
        .await
        .unwrap();
    let second = report("beta", &[("app", "1.1.0")], labels(&[("gpu", "yes")]));
    s.check_in("h1".into(), second, T0 + 20, T0 + 1_000_000)
        .await
        .unwrap();
    let d = s
        .host("h1".into(), 10, RULE, T0 + 30)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.host.channel.as_deref(), Some("beta"));
    assert_eq!(
        d.host.versions,
        [("app".to_string(), "1.1.0".to_string())].into()
    );
    assert_eq!(
        d.host.labels,
        labels(&[("gpu", "yes"), ("owner", "ops"), ("site", "berlin")])
    );
    assert_eq!(d.host.agent_version.as_deref(), Some("0.1.0"));
    assert_eq!(
        d.host.last_checkin.as_deref(),
        Some("2023-11-14T22:13:20.02Z")
    );
    assert_eq!(
        d.host.next_checkin_due.as_deref(),
        Some("2023-11-14T22:30:00Z")
    );
    assert_eq!(d.booted_slot.as_deref(), Some("a"));
    assert_eq!(d.slots.len(), 2);
    assert_eq!(d.pending, None);
}

async fn check_in_of_unknown_host_is_refused(db: Db) {
    let s = db.store().await;
    let err = s
        .check_in(
            "nobody".into(),
            report("stable", &[("app", "1.0.0")], Labels::new()),
            T0,
            T0,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, FleetError::Invalid(_)), "{err:?}");
    let err = s
        .append_events("nobody".into(), vec![event(1, EventType::Offered)], T0)
        .await
        .unwrap_err();
    assert!(matches!(err, FleetError::Invalid(_)), "{err:?}");
}

async fn events_replayed_batch_counted_once(db: Db) {
    let s = db.store().await;
    enroll_all(&*s, &["h1".into()]).await;
    let batch = vec![
        event(1, EventType::Offered),
        event(2, EventType::DownloadStarted),
        event(3, EventType::DownloadDone),
    ];
    let a = s
        .append_events("h1".into(), batch.clone(), T0)
        .await
        .unwrap();
    assert_eq!((a.accepted, a.duplicates, a.last_seq), (3, 0, 3));
    let again = s.append_events("h1".into(), batch, T0 + 1).await.unwrap();
    assert_eq!(
        (again.accepted, again.duplicates, again.last_seq),
        (0, 3, 3)
    );
    let overlap = vec![
        event(3, EventType::DownloadDone),
        event(4, EventType::InstallStarted),
        event(4, EventType::InstallStarted),
    ];
    let o = s.append_events("h1".into(), overlap, T0 + 2).await.unwrap();
    assert_eq!((o.accepted, o.duplicates, o.last_seq), (1, 2, 4));
    let d = s.host("h1".into(), 100, RULE, T0).await.unwrap().unwrap();
    assert_eq!(d.events.len(), 4);
    let counts = s.counts(RULE, T0, 0).await.unwrap();
    assert!(counts.recent_failures.is_empty());
}

async fn events_out_of_order_stored_and_state_follows_highest_seq(db: Db) {
    let s = db.store().await;
    enroll_all(&*s, &["h1".into()]).await;
    let a = s
        .append_events(
            "h1".into(),
            vec![event(5, EventType::Confirmed), event(2, EventType::Offered)],
            T0,
        )
        .await
        .unwrap();
    assert_eq!((a.accepted, a.last_seq), (2, 5));
    let late = s
        .append_events(
            "h1".into(),
            vec![failed(3, "disk full"), event(4, EventType::Installed)],
            T0 + 1,
        )
        .await
        .unwrap();
    assert_eq!((late.accepted, late.last_seq), (2, 5));
    let d = s.host("h1".into(), 100, RULE, T0).await.unwrap().unwrap();
    assert_eq!(d.host.state, "confirmed");
    let seqs: Vec<u64> = d.events.iter().map(|e| e.event.seq).collect();
    assert_eq!(seqs, [5, 4, 3, 2]);
    assert_eq!(d.host.last_message.as_deref(), Some("disk full"));
    s.append_events("h1".into(), vec![event(6, EventType::Deferred)], T0 + 2)
        .await
        .unwrap();
    assert_eq!(
        s.host("h1".into(), 1, RULE, T0)
            .await
            .unwrap()
            .unwrap()
            .host
            .state,
        "confirmed"
    );
}

async fn events_state_per_type(db: Db) {
    use EventType::*;
    let s = db.store().await;
    enroll_all(&*s, &["h1".into()]).await;
    let steps = [
        (Offered, "updating"),
        (DownloadStarted, "updating"),
        (DownloadDone, "updating"),
        (InstallStarted, "updating"),
        (Installed, "installed"),
        (Reboot, "installed"),
        (Confirmed, "confirmed"),
        (Deferred, "confirmed"),
        (Cancelled, "confirmed"),
        (Dropped, "confirmed"),
        (Failed, "failed"),
        (Offered, "updating"),
        (RolledBack, "rolled_back"),
    ];
    for (i, (kind, state)) in steps.iter().enumerate() {
        let mut e = event(i as u64 + 1, *kind);
        if *kind == RolledBack {
            e.message = Some("boot counter exhausted".into());
        }
        s.append_events("h1".into(), vec![e], T0).await.unwrap();
        let got = s
            .host("h1".into(), 0, RULE, T0)
            .await
            .unwrap()
            .unwrap()
            .host
            .state;
        assert_eq!(&got, state, "after {kind:?}");
    }
    let d = s.host("h1".into(), 0, RULE, T0).await.unwrap().unwrap();
    assert_eq!(
        d.host.last_message.as_deref(),
        Some("boot counter exhausted")
    );
    assert!(d.events.is_empty());
}

async fn events_seq_beyond_range_refused_and_nothing_stored(db: Db) {
    let s = db.store().await;
    enroll_all(&*s, &["h1".into()]).await;
    let batch = vec![
        event(1, EventType::Offered),
        event(u64::MAX, EventType::Confirmed),
    ];
    let err = s.append_events("h1".into(), batch, T0).await.unwrap_err();
    assert!(matches!(err, FleetError::Invalid(_)), "{err:?}");
    let d = s.host("h1".into(), 10, RULE, T0).await.unwrap().unwrap();
    assert!(d.events.is_empty());
    assert_eq!(d.host.state, "idle");
}

async fn host_detail_has_newest_events_first(db: Db) {
    let s = db.store().await;
    enroll_all(&*s, &["h1".into()]).await;
    let batch: Vec<Event> = (1..=30).map(|i| event(i, EventType::Deferred)).collect();
    s.append_events("h1".into(), batch, T0 + 7).await.unwrap();
    let d = s.host("h1".into(), 5, RULE, T0).await.unwrap().unwrap();
    let seqs: Vec<u64> = d.events.iter().map(|e| e.event.seq).collect();
    assert_eq!(seqs, [30, 29, 28, 27, 26]);
    assert_eq!(d.events[0].received, "2023-11-14T22:13:20.007Z");
    assert_eq!(d.events[0].event, event(30, EventType::Deferred));
    assert!(s
        .host("nobody".into(), 5, RULE, T0)
        .await
        .unwrap()
        .is_none());
}

async fn patch_labels_sets_and_removes(db: Db) {
    let s = db.store().await;
    enrollment_token(
        &*s,
        "e1",
        1,
        labels(&[("site", "berlin"), ("tier", "edge")]),
    )
    .await;
    s.enroll(hash("e1"), new_host("h1", Labels::new(), T0))
        .await
        .unwrap()
        .unwrap();
    let patch = LabelsPatch {
        labels: [
            ("site".to_string(), Some("paris".to_string())),
            ("tier".to_string(), None),
            ("new".to_string(), Some("1".to_string())),
        ]
        .into(),
    };
    assert!(s.patch_labels("h1".into(), patch.clone()).await.unwrap());
    assert!(!s.patch_labels("nobody".into(), patch).await.unwrap());
    let d = s.host("h1".into(), 0, RULE, T0).await.unwrap().unwrap();
    assert_eq!(d.host.labels, labels(&[("new", "1"), ("site", "paris")]));
}

async fn label_selector_semantics(db: Db) {
    let s = db.store().await;
    let hosts: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
    enroll_all(&*s, &hosts).await;
    let set = |k: &str, v: &str| LabelsPatch {
        labels: [(k.to_string(), Some(v.to_string()))].into(),
    };
    s.patch_labels("a".into(), set("env", "prod"))
        .await
        .unwrap();
    s.patch_labels("b".into(), set("env", "test"))
        .await
        .unwrap();
    s.patch_labels("c".into(), set("env", "prod"))
        .await
        .unwrap();
    s.patch_labels("c".into(), set("gpu", "yes")).await.unwrap();
    let sel = |m: &[(&str, &str, bool)]| HostQuery {
        labels: m
            .iter()
            .map(|(k, v, eq)| LabelMatch {
                key: k.to_string(),
                value: v.to_string(),
                equal: *eq,
            })
            .collect(),
        ..query()
    };
    assert_eq!(
        ids(&*s, sel(&[("env", "prod", true)]), T0).await,
        ["a", "c"]
    );
    assert_eq!(
        ids(&*s, sel(&[("env", "prod", false)]), T0).await,
        ["b", "d"]
    );
    assert_eq!(
        ids(
            &*s,
            sel(&[("env", "prod", true), ("gpu", "yes", false)]),
            T0
        )
        .await,
        ["a"]
    );
    assert_eq!(
        ids(&*s, sel(&[("env", "nope", true)]), T0).await,
        Vec::<String>::new()
    );
}

async fn list_filters_product_channel_version_state(db: Db) {
    let s = db.store().await;
    let hosts: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
    enroll_all(&*s, &hosts).await;
    s.check_in(
        "a".into(),
        report("stable", &[("app", "1.0.0")], Labels::new()),
        T0,
        T0 + 1,
    )
    .await
    .unwrap();
    s.check_in(
        "b".into(),
        report("beta", &[("app", "1.1.0"), ("os", "1.0.0")], Labels::new()),
        T0,
        T0 + 1,
    )
    .await
    .unwrap();
    s.append_events("b".into(), vec![failed(1, "boom")], T0)
        .await
        .unwrap();
    let q = |f: &dyn Fn(&mut HostQuery)| {
        let mut q = query();
        f(&mut q);
        q
    };
    assert_eq!(
        ids(&*s, q(&|q| q.channel = Some("beta".into())), T0).await,
        ["b"]
    );
    assert_eq!(
        ids(&*s, q(&|q| q.version = Some("1.0.0".into())), T0).await,
        ["a", "b"]
    );
    assert_eq!(
        ids(&*s, q(&|q| q.state = Some("failed".into())), T0).await,
        ["b"]
    );
    assert_eq!(
        ids(&*s, q(&|q| q.state = Some("idle".into())), T0).await,
        ["a", "c"]
    );
    assert_eq!(
        ids(&*s, q(&|q| q.product = Some("quantix-node".into())), T0).await,
        ["a", "b", "c"]
    );
    assert!(ids(&*s, q(&|q| q.product = Some("other".into())), T0)
        .await
        .is_empty());
    let b = &s
        .list_hosts(q(&|q| q.channel = Some("beta".into())), RULE, T0)
        .await
        .unwrap()
        .hosts[0];
    assert_eq!(b.versions.len(), 2);
    assert_eq!(b.last_message.as_deref(), Some("boom"));
}

async fn liveness_from_next_due_in_sql(db: Db) {
    let s = db.store().await;
    let hosts: Vec<String> = ["never", "on", "late", "gone"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    enroll_all(&*s, &hosts).await;
    let now = T0 + 10_000_000;
    let r = || report("stable", &[("app", "1.0.0")], Labels::new());
    s.check_in("on".into(), r(), T0, now - RULE.grace)
        .await
        .unwrap();
    s.check_in("late".into(), r(), T0, now - RULE.grace - 1)
        .await
        .unwrap();
    s.check_in("gone".into(), r(), T0, now - RULE.offline_after - 1)
        .await
        .unwrap();
    let by = |l| HostQuery {
        liveness: Some(l),
        ..query()
    };
    assert_eq!(ids(&*s, by(Liveness::Online), now).await, ["never", "on"]);
    assert_eq!(ids(&*s, by(Liveness::Overdue), now).await, ["late"]);
    assert_eq!(ids(&*s, by(Liveness::Offline), now).await, ["gone"]);
    for h in s.list_hosts(query(), RULE, now).await.unwrap().hosts {
        let want = match h.id.as_str() {
            "never" | "on" => Liveness::Online,
            "late" => Liveness::Overdue,
            _ => Liveness::Offline,
        };
        assert_eq!(h.liveness, want, "{}", h.id);
    }
}

async fn paging_over_1000_hosts_yields_each_once(db: Db) {
    let s = db.store().await;
    let hosts: Vec<String> = (0..1000)
        .map(|i| format!("host-{:x}", i * 7919 % 1000))
        .collect();
    enroll_all(&*s, &hosts).await;
    for (i, h) in hosts.iter().enumerate().filter(|(i, _)| i % 3 == 0) {
        let p = LabelsPatch {
            labels: [("third".to_string(), Some(format!("{}", i % 2)))].into(),
        };
        s.patch_labels(h.clone(), p).await.unwrap();
    }
    let mut seen = Vec::new();
    let mut cursor = None;
    let mut pages = 0;
    loop {
        let page = s
            .list_hosts(
                HostQuery {
                    limit: 37,
                    cursor,
                    ..query()
                },
                RULE,
                T0,
            )
            .await
            .unwrap();
        assert!(page.hosts.len() <= 37);
        pages += 1;
        seen.extend(page.hosts.into_iter().map(|h| h.id));
        cursor = page.next;
        if cursor.is_none() {
            break;
        }
    }
    assert_eq!(pages, 28);
    let unique: BTreeSet<&String> = seen.iter().collect();
    assert_eq!((seen.len(), unique.len()), (1000, 1000));
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted);
    let sel = HostQuery {
        labels: vec![LabelMatch {
            key: "third".into(),
            value: "0".into(),
            equal: false,
        }],
        limit: 100,
        ..query()
    };
    let mut n = 0;
    let mut q = sel;
    loop {
        let page = s.list_hosts(q.clone(), RULE, T0).await.unwrap();
        n += page.hosts.len();
        match page.next {
            Some(c) => q.cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(n, 1000 - 167);
}

async fn paging_refuses_foreign_cursor(db: Db) {
    let s = db.store().await;
    let q = HostQuery {
        cursor: Some("not base64!".into()),
        ..query()
    };
    let err = s.list_hosts(q, RULE, T0).await.unwrap_err();
    assert!(matches!(err, FleetError::Invalid(_)), "{err:?}");
}

async fn counts_grouped(db: Db) {
    let s = db.store().await;
    let hosts: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
    enroll_all(&*s, &hosts).await;
    let now = T0 + 10_000_000;
    s.check_in(
        "a".into(),
        report("stable", &[("app", "1.0.0")], Labels::new()),
        T0,
        now,
    )
    .await
    .unwrap();
    s.check_in(
        "b".into(),
        report("stable", &[("app", "1.0.0")], Labels::new()),
        T0,
        T0,
    )
    .await
    .unwrap();
    s.check_in(
        "c".into(),
        report("beta", &[("app", "1.1.0")], Labels::new()),
        T0,
        now,
    )
    .await
    .unwrap();
    s.decommission("d".into(), T0).await.unwrap();
    s.append_events("a".into(), vec![failed(1, "disk full")], T0 + 5)
        .await
        .unwrap();
    s.append_events("b".into(), vec![failed(1, "disk full")], T0 + 6)
        .await
        .unwrap();
    s.append_events("c".into(), vec![failed(1, "old")], T0 - 5)
        .await
        .unwrap();
    let c = s.counts(RULE, now, T0).await.unwrap();
    let v = |p: &str, ch: &str, comp: &str, ver: &str, n| {
        (
            (
                p.to_string(),
                ch.to_string(),
                comp.to_string(),
                ver.to_string(),
            ),
            n,
        )
    };
    assert_eq!(
        c.by_version,
        [
            v("quantix-node", "beta", "app", "1.1.0", 1),
            v("quantix-node", "stable", "app", "1.0.0", 2)
        ]
    );
    let st = |state: &str, n| (("quantix-node".to_string(), state.to_string()), n);
    assert_eq!(c.by_state, [st("failed", 3)]);
    assert_eq!(
        c.by_liveness,
        [(Liveness::Offline, 1), (Liveness::Online, 2)]
    );
    assert_eq!(
        c.recent_failures,
        [(("failed".to_string(), "disk full".to_string()), 2)]
    );
}

async fn migrate_is_idempotent(db: Db) {
    let s = db.store().await;
    s.migrate().await.unwrap();
    s.migrate().await.unwrap();
    enroll_all(&*s, &["h1".into()]).await;
    let again = db.store().await;
    assert_eq!(ids(&*again, query(), T0).await, ["h1"]);
}

both_engines!(migrate_twice_at_once);

/// Two servers starting together on a fresh database: both migrate, the schema is applied once.
async fn migrate_twice_at_once(db: Db) {
    let (a, b) = (db.open().await, db.open().await);
    let (ra, rb) = tokio::join!(a.migrate(), b.migrate());
    ra.unwrap();
    rb.unwrap();
    let s = db.store().await;
    enroll_all(&*s, &["h1".into()]).await;
    assert_eq!(ids(&*s, query(), T0).await, ["h1"]);
}

/// Tables, columns and index names of a schema.
type Schema = BTreeSet<(String, String)>;

async fn sqlite_schema(path: &str) -> Schema {
    use sqlx::Row;
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{path}"))
        .await
        .unwrap();
    let rows = sqlx::query(
        "SELECT m.name AS t, p.name AS c FROM sqlite_master m, pragma_table_info(m.name) p \
         WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%' AND m.name NOT LIKE '_sqlx%' \
         UNION ALL SELECT tbl_name, 'index ' || name FROM sqlite_master \
         WHERE type = 'index' AND sql IS NOT NULL",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    rows.iter().map(|r| (r.get("t"), r.get("c"))).collect()
}

async fn postgres_schema(url: &str) -> Schema {
    use sqlx::Row;
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    let rows = sqlx::query(
        "SELECT table_name::text AS t, column_name::text AS c FROM information_schema.columns \
         WHERE table_schema = 'public' AND table_name NOT LIKE '\\_sqlx%' \
         UNION ALL SELECT tablename::text, 'index ' || indexname::text FROM pg_indexes \
         WHERE schemaname = 'public' AND indexname NOT LIKE '%\\_pkey' \
         AND indexname NOT LIKE '%\\_key'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    rows.iter().map(|r| (r.get("t"), r.get("c"))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow tier: needs a PostgreSQL cluster; `cargo xtask test` installs and runs it"]
async fn schema_is_the_same_on_both_engines() {
    let (lite, pg) = (Db::new(Kind::Sqlite), Db::new(Kind::Postgres));
    lite.store().await;
    pg.store().await;
    let (a, b) = (
        sqlite_schema(&lite.target).await,
        postgres_schema(&pg.target).await,
    );
    assert!(a.len() > 40, "{a:?}");
    let only_sqlite: Vec<_> = a.difference(&b).collect();
    let only_postgres: Vec<_> = b.difference(&a).collect();
    assert!(
        only_sqlite.is_empty() && only_postgres.is_empty(),
        "schemas differ: only in SQLite {only_sqlite:?}, only in PostgreSQL {only_postgres:?}"
    );
}

both_engines!(concurrent_writes_all_land_and_a_failed_one_stays_alone);

/// Fifty hosts checking in and sending events at once (SQLite groups them into shared
/// transactions), with writes for an unknown host among them: every good write lands, every
/// bad one is refused alone.
async fn concurrent_writes_all_land_and_a_failed_one_stays_alone(db: Db) {
    let s = db.store().await;
    let hosts: Vec<String> = (0..50).map(|i| format!("h{i:02}")).collect();
    enroll_all(&*s, &hosts).await;
    let start = Arc::new(tokio::sync::Barrier::new(hosts.len() + 1));
    let mut tasks = Vec::new();
    for h in hosts.iter().cloned().chain(["nobody".to_string()]) {
        let (s, start) = (s.clone(), start.clone());
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            let r = report("stable", &[("app", "1.0.0")], labels(&[("me", &h)]));
            let checked = s.check_in(h.clone(), r, T0, T0 + 900_000).await;
            let batch = vec![event(1, EventType::Offered), event(2, EventType::Confirmed)];
            let sent = s.append_events(h.clone(), batch, T0).await;
            (
                h,
                checked.is_ok(),
                sent.map(|a| (a.accepted, a.last_seq)).ok(),
            )
        }));
    }
    for t in tasks {
        let (h, checked, sent) = t.await.unwrap();
        if h == "nobody" {
            assert_eq!((checked, sent), (false, None));
        } else {
            assert_eq!((checked, sent), (true, Some((2, 2))), "{h}");
        }
    }
    let list = s.list_hosts(query(), RULE, T0).await.unwrap().hosts;
    assert_eq!(list.len(), 50);
    for h in list {
        assert_eq!(
            (h.state.as_str(), h.labels.get("me")),
            ("confirmed", Some(&h.id)),
            "{}",
            h.id
        );
    }
}

/// SQLite: the writer leaves the WAL to the background checkpoint (here called by the test;
/// its task runs once an hour), which copies it all into the database file, after which the
/// WAL starts again from its beginning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_writer_never_checkpoints_and_the_checkpointer_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let hour = std::time::Duration::from_secs(3600);
    let s = sqlite::open_with(&dir.path().join("fleet.db"), hour)
        .await
        .unwrap();
    s.migrate().await.unwrap();
    let hosts: Vec<String> = (0..400).map(|i| format!("h{i:03}")).collect();
    enroll_all(&s, &hosts).await;
    for h in &hosts {
        let r = report("stable", &[("app", "1.0.0")], labels(&[]));
        s.check_in(h.clone(), r, T0, T0 + 900_000).await.unwrap();
    }
    let wal = s.checkpoint().await.unwrap().expect("SQLite checkpoints");
    // SQLite's own checkpoint, on the writer, would have restarted the WAL at 1,000 pages.
    assert!(wal.frames > 1000, "the writer checkpointed: {wal:?}");
    assert_eq!(wal.checkpointed, wal.frames, "all copied: {wal:?}");
    let r = report("stable", &[("app", "1.0.1")], labels(&[]));
    s.check_in(hosts[0].clone(), r, T0, T0 + 900_000)
        .await
        .unwrap();
    let wal = s.checkpoint().await.unwrap().expect("SQLite checkpoints");
    assert!(wal.frames < 100, "the WAL started again: {wal:?}");
    let list = s.list_hosts(query(), RULE, T0).await.unwrap();
    assert_eq!(list.hosts.len(), 100, "a page of the hosts reads back");
}
