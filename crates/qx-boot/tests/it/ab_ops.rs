//! A/B operations on a host root in a temporary directory: grubenv made by the
//! real `grub-editenv`, slots as directories (`SlotTarget::Path`), health
//! checks as real processes. (Slots on real block devices: install_loop.rs.)

use std::fs;

use crate::support::Sandbox;
use jiff::Timestamp;
use qx_boot::ab::{self, BootCheck};
use qx_boot::cli::{self, AbCommand};
use qx_boot::{install_image, AbState, BootError, ImageFile, InstallRequest, Slot};
use qx_core::{Outcome, Sha256};

const TRUE: &[&str] = &["sh", "-c", "exit 0"];
const FALSE: &[&str] = &["sh", "-c", "echo disk not ready >&2; exit 4"];

fn pending(sb: &Sandbox, from: Slot, to: Slot, version: &str) {
    let t: Timestamp = "2026-01-16T12:00:00Z".parse().expect("ts");
    AbState::pending(from, to, version, t)
        .store(sb.root())
        .expect("store state");
}

fn state(sb: &Sandbox) -> AbState {
    AbState::load(sb.root()).expect("load").expect("state file")
}

fn cli_out(sb: &Sandbox, cfg: &qx_boot::AbConfig, cmd: AbCommand, json: bool) -> (i32, String) {
    let mut out = Vec::new();
    let code = cli::run_to(&cmd, &sb.ctx(cfg), json, &mut out).expect("cli");
    (code, String::from_utf8(out).expect("utf8"))
}

#[test]
fn status_reports_booted_slot_counters_and_next_boot() {
    let sb = Sandbox::new("A", &["ORDER=A B", "A_LEFT=2", "A_OK=1", "B_LEFT=0"]);
    let cfg = sb.config(&[]);
    let s = ab::status(&sb.ctx(&cfg)).expect("status");
    assert_eq!(s.booted, Some(Slot::A));
    assert_eq!(s.order, vec![Slot::A, Slot::B]);
    assert_eq!(s.next_boot, Some(Slot::A));
    assert_eq!(s.slots[0].tries_left, 2);
    assert!(s.slots[0].good && s.slots[0].booted);
    assert!(!s.slots[1].good);
    let (code, json) = cli_out(&sb, &cfg, AbCommand::Status, true);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(v["booted"], "A");
    assert_eq!(v["slots"][1]["tries_left"], 0);
    assert_eq!(v["state"], serde_json::Value::Null);
    let (_, text) = cli_out(&sb, &cfg, AbCommand::Status, false);
    assert!(text.contains("booted slot: A"), "{text}");
    assert!(
        text.contains("next boot:   slot A (ORDER \"A B\")"),
        "{text}"
    );
}

#[test]
fn status_without_quantix_slot_says_why() {
    let sb = Sandbox::new("A", &["ORDER=A B"]);
    fs::write(sb.path("/proc/cmdline"), "root=/dev/sda1 quiet\n").expect("cmdline");
    let s = ab::status(&sb.ctx(&sb.config(&[]))).expect("status");
    assert_eq!(s.booted, None);
    assert!(
        s.booted_error
            .as_deref()
            .is_some_and(|e| e.contains("quantix.slot")),
        "{:?}",
        s.booted_error
    );
    let err = ab::verify(&sb.ctx(&sb.config(&[]))).expect_err("no slot");
    assert!(matches!(err, BootError::SlotMissing { .. }), "{err}");
}

#[test]
fn status_shows_rescue_when_no_slot_has_tries() {
    let sb = Sandbox::new("A", &["ORDER=A B", "A_LEFT=0", "B_LEFT=0"]);
    let s = ab::status(&sb.ctx(&sb.config(&[]))).expect("status");
    assert_eq!(s.next_boot, None);
}

#[test]
fn verify_marks_booted_slot_good_and_resets_tries() {
    let sb = Sandbox::new(
        "A",
        &["ORDER=B A", "A_LEFT=2", "B_LEFT=0", "X_UNKNOWN=keep me"],
    );
    let cfg = sb.config(&[TRUE, TRUE]);
    let (code, text) = cli_out(&sb, &cfg, AbCommand::Verify, false);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("slot A marked good (3 boot attempts)"),
        "{text}"
    );
    sb.assert_vars(&[
        ("A_LEFT", "3"),
        ("A_OK", "1"),
        ("ORDER", "A B"),
        ("X_UNKNOWN", "keep me"),
    ]);
    // unknown key kept in its place, new keys appended (grub-editenv order)
    assert_eq!(
        sb.env(),
        "ORDER=A B\nA_LEFT=3\nB_LEFT=0\nX_UNKNOWN=keep me\nA_OK=1\n"
    );
    assert!(sb.history().is_empty(), "no update was pending");
    let log = sb.read("/var/log/quantix/update.log").expect("update log");
    assert!(log.contains("health check"), "{log}");
}

#[test]
fn verify_with_failing_health_check_leaves_slot_unmarked_and_exits_1() {
    let sb = Sandbox::new(
        "B",
        &["ORDER=B A", "A_LEFT=3", "A_OK=1", "B_LEFT=1", "B_OK=0"],
    );
    pending(&sb, Slot::A, Slot::B, "2.0.0");
    let before = fs::read(sb.grubenv()).expect("read");
    let cfg = sb.config(&[TRUE, FALSE]);
    let (code, text) = cli_out(&sb, &cfg, AbCommand::Verify, false);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("FAIL sh -c echo disk not ready"), "{text}");
    assert!(text.contains("exited with status 4"), "{text}");
    assert!(text.contains("| disk not ready"), "{text}");
    assert!(text.contains("slot B NOT marked good"), "{text}");
    assert_eq!(
        fs::read(sb.grubenv()).expect("read"),
        before,
        "grubenv changed"
    );
    assert!(state(&sb).pending, "pending state must stay");
    let log = sb.read("/var/log/quantix/update.log").expect("log");
    assert!(
        log.contains("NOT marked good; 1 boot attempts left"),
        "{log}"
    );
}

#[test]
fn verify_on_last_attempt_says_next_boot_falls_back() {
    let sb = Sandbox::new("B", &["ORDER=B A", "A_LEFT=3", "A_OK=1", "B_LEFT=0"]);
    pending(&sb, Slot::A, Slot::B, "2.0.0");
    let r = ab::verify(&sb.ctx(&sb.config(&[FALSE]))).expect("verify");
    assert!(!r.marked_good);
    assert_eq!(r.tries_left, 0);
    let log = sb.read("/var/log/quantix/update.log").expect("log");
    assert!(log.contains("the next boot falls back to slot A"), "{log}");
}

#[test]
fn verify_completes_pending_update_of_booted_slot() {
    let sb = Sandbox::new(
        "B",
        &["ORDER=B A", "A_LEFT=3", "A_OK=1", "B_LEFT=2", "B_OK=0"],
    );
    pending(&sb, Slot::A, Slot::B, "2.0.0");
    let r = ab::verify(&sb.ctx(&sb.config(&[TRUE]))).expect("verify");
    assert!(r.marked_good);
    assert!(matches!(
        r.boot_check,
        BootCheck::TrialBoot {
            slot: Slot::B,
            tries_left: 2,
            ..
        }
    ));
    sb.assert_vars(&[("B_LEFT", "3"), ("B_OK", "1"), ("ORDER", "B A")]);
    let s = state(&sb);
    assert!(!s.pending);
    assert_eq!(s.outcome, Some(Outcome::Success));
    let h = sb.history();
    assert_eq!(h.len(), 1);
    assert_eq!(h[0]["kind"], "full");
    assert_eq!(h[0]["version"], "2.0.0");
    assert_eq!(h[0]["outcome"], "success");
    // a second verify (next boot) only resets the counter
    let r = ab::verify(&sb.ctx(&sb.config(&[TRUE]))).expect("verify");
    assert!(r.completed.is_none());
    assert_eq!(sb.history().len(), 1);
}

#[test]
fn verify_on_old_slot_keeps_a_waiting_update_first() {
    // an update into B was installed from A; A rebooted before B got its turn
    // (e.g. picked by hand): A is marked good but B keeps its trial boot
    let sb = Sandbox::new(
        "A",
        &["ORDER=B A", "A_LEFT=2", "A_OK=1", "B_LEFT=3", "B_OK=0"],
    );
    pending(&sb, Slot::A, Slot::B, "2.0.0");
    let r = ab::verify(&sb.ctx(&sb.config(&[TRUE]))).expect("verify");
    assert!(r.marked_good);
    assert!(matches!(
        r.boot_check,
        BootCheck::PendingNotBooted {
            pending: Slot::B,
            tries_left: 3,
            ..
        }
    ));
    sb.assert_vars(&[("ORDER", "B A"), ("A_LEFT", "3")]);
    assert!(state(&sb).pending);
}

#[test]
fn boot_check_records_rollback_once() {
    let sb = Sandbox::new(
        "A",
        &["ORDER=B A", "A_LEFT=2", "A_OK=1", "B_LEFT=0", "B_OK=0"],
    );
    pending(&sb, Slot::A, Slot::B, "2.0.0");
    let cfg = sb.config(&[]);
    let (code, text) = cli_out(&sb, &cfg, AbCommand::BootCheck, false);
    assert_eq!(code, 0);
    assert!(
        text.starts_with("ROLLBACK recorded: version 2.0.0 in slot B"),
        "{text}"
    );
    let s = state(&sb);
    assert!(!s.pending);
    assert_eq!(s.outcome, Some(Outcome::RolledBack));
    assert!(s
        .reason
        .as_deref()
        .is_some_and(|r| r.contains("3 attempts")));
    sb.assert_vars(&[("B_OK", "0"), ("ORDER", "A B")]);
    // A's counter is not boot-check's business (verify resets it)
    assert_eq!(sb.var("A_LEFT").as_deref(), Some("2"));
    let h = sb.history();
    assert_eq!(h.len(), 1);
    assert_eq!(h[0]["outcome"], "rolled_back");
    assert_eq!(h[0]["version"], "2.0.0");
    assert!(h[0]["reason"]
        .as_str()
        .is_some_and(|r| r.contains("fell back to slot A")));
    assert!(h[0]["time"]
        .as_str()
        .is_some_and(|t| t.parse::<Timestamp>().is_ok()));
    let log = sb.read("/var/log/quantix/update.log").expect("log");
    assert!(log.contains("boot-check: rollback: version 2.0.0"), "{log}");
    // idempotent
    let r = ab::boot_check(&sb.ctx(&cfg)).expect("again");
    assert_eq!(r, BootCheck::NoPendingUpdate { booted: Slot::A });
    assert_eq!(sb.history().len(), 1);
}

#[test]
fn boot_check_reports_trial_boot() {
    let sb = Sandbox::new("B", &["ORDER=B A", "A_LEFT=3", "A_OK=1", "B_LEFT=1"]);
    pending(&sb, Slot::A, Slot::B, "2.0.0");
    let r = ab::boot_check(&sb.ctx(&sb.config(&[]))).expect("boot-check");
    assert_eq!(
        r,
        BootCheck::TrialBoot {
            slot: Slot::B,
            version: "2.0.0".into(),
            tries_left: 1
        }
    );
    assert!(state(&sb).pending);
}

#[test]
fn boot_check_with_tries_left_does_not_record_rollback() {
    let sb = Sandbox::new("A", &["ORDER=B A", "A_LEFT=3", "A_OK=1", "B_LEFT=2"]);
    pending(&sb, Slot::A, Slot::B, "2.0.0");
    let before = fs::read(sb.grubenv()).expect("read");
    let r = ab::boot_check(&sb.ctx(&sb.config(&[]))).expect("boot-check");
    assert!(
        matches!(r, BootCheck::PendingNotBooted { tries_left: 2, .. }),
        "{r:?}"
    );
    assert!(state(&sb).pending);
    assert!(sb.history().is_empty());
    assert_eq!(fs::read(sb.grubenv()).expect("read"), before);
}

#[test]
fn boot_check_without_state_file() {
    let sb = Sandbox::new("A", &["ORDER=A B", "A_LEFT=2"]);
    let r = ab::boot_check(&sb.ctx(&sb.config(&[]))).expect("boot-check");
    assert_eq!(r, BootCheck::NoPendingUpdate { booted: Slot::A });
}

#[test]
fn corrupt_grubenv_is_refused_and_left_untouched() {
    let sb = Sandbox::new("A", &["ORDER=A B", "A_LEFT=2"]);
    let mut bytes = fs::read(sb.grubenv()).expect("read");
    bytes[0] = b'X';
    fs::write(sb.grubenv(), &bytes).expect("write");
    for cmd in [
        AbCommand::Verify,
        AbCommand::MarkGood,
        AbCommand::MarkBad,
        AbCommand::Status,
    ] {
        let mut out = Vec::new();
        let err = cli::run_to(&cmd, &sb.ctx(&sb.config(&[TRUE])), false, &mut out)
            .expect_err("corrupt grubenv");
        assert!(
            matches!(err, BootError::GrubenvCorrupt { .. }),
            "{cmd:?}: {err}"
        );
        assert_eq!(
            fs::read(sb.grubenv()).expect("read"),
            bytes,
            "{cmd:?} wrote"
        );
    }
}

#[test]
fn corrupt_state_file_is_refused() {
    let sb = Sandbox::new("A", &["ORDER=A B", "A_LEFT=2"]);
    fs::create_dir_all(sb.path("/quantix")).expect("mkdir");
    fs::write(sb.path("/quantix/ab-update-state.json"), "{oops").expect("write");
    let err = ab::boot_check(&sb.ctx(&sb.config(&[]))).expect_err("corrupt state");
    assert!(matches!(err, BootError::StateParse { .. }), "{err}");
}

#[test]
fn mark_good_completes_update_without_checks() {
    let sb = Sandbox::new("B", &["ORDER=B A", "A_LEFT=3", "A_OK=1", "B_LEFT=2"]);
    pending(&sb, Slot::A, Slot::B, "2.0.0");
    let cfg = sb.config(&[FALSE]);
    let (code, text) = cli_out(&sb, &cfg, AbCommand::MarkGood, false);
    assert_eq!(code, 0);
    assert!(text.contains("update to version 2.0.0 completed"), "{text}");
    assert_eq!(sb.var("B_OK").as_deref(), Some("1"));
    let h = sb.history();
    assert!(h[0]["reason"]
        .as_str()
        .is_some_and(|r| r.contains("operator")));
}

#[test]
fn mark_bad_switches_to_the_other_slot() {
    let sb = Sandbox::new(
        "B",
        &["ORDER=B A", "A_LEFT=3", "A_OK=1", "B_LEFT=2", "B_OK=0"],
    );
    pending(&sb, Slot::A, Slot::B, "2.0.0");
    let (code, text) = cli_out(&sb, &sb.config(&[]), AbCommand::MarkBad, false);
    assert_eq!(code, 0);
    assert!(text.contains("the next boot uses slot A"), "{text}");
    assert_eq!(sb.env(), "ORDER=A B\nA_LEFT=3\nA_OK=1\nB_LEFT=0\nB_OK=0\n");
    let s = state(&sb);
    assert_eq!(s.outcome, Some(Outcome::RolledBack));
    assert_eq!(sb.history()[0]["outcome"], "rolled_back");
}

#[test]
fn mark_bad_refuses_when_no_slot_would_be_left() {
    for vars in [
        &["ORDER=B A", "A_LEFT=3", "A_OK=0", "B_LEFT=2"][..],
        &["ORDER=B A", "A_LEFT=0", "A_OK=1", "B_LEFT=2"][..],
    ] {
        let sb = Sandbox::new("B", vars);
        let before = fs::read(sb.grubenv()).expect("read");
        let err = ab::mark_bad(&sb.ctx(&sb.config(&[]))).expect_err("no fallback");
        assert!(matches!(err, BootError::NoFallback { .. }), "{err}");
        assert_eq!(fs::read(sb.grubenv()).expect("read"), before);
    }
}

#[test]
fn ab_commands_write_the_configured_update_log_not_the_default() {
    let sb = Sandbox::new("B", &["ORDER=B A", "A_LEFT=3", "A_OK=1", "B_LEFT=2"]);
    pending(&sb, Slot::A, Slot::B, "2.0.0");
    let cfg = sb.config(&[]);
    let elsewhere = sb.path("/srv/quantix/logs/updates.log");
    let ctx = qx_boot::AbContext::new(&cfg, sb.root(), &elsewhere);
    for (cmd, line) in [
        (
            AbCommand::BootCheck,
            " ab: boot-check: trial boot of version 2.0.0",
        ),
        (AbCommand::MarkGood, " ab: slot B marked good"),
    ] {
        let mut out = Vec::new();
        let code = cli::run_to(&cmd, &ctx, false, &mut out).expect("ab command");
        assert_eq!(code, 0, "{cmd:?}");
        let log = fs::read_to_string(&elsewhere).expect("the configured update log");
        assert!(log.contains(line), "{cmd:?}: {log}");
    }
    assert!(
        !sb.path("/var/log/quantix/update.log").exists(),
        "the default update log was written"
    );
}

// ------------------------------------------------------------ install_image

fn image(sb: &Sandbox, name: &str, content: &[u8]) -> ImageFile {
    let p = sb.path(&format!("/data/updates/staging/{name}"));
    fs::create_dir_all(p.parent().expect("dir")).expect("mkdir");
    fs::write(&p, content).expect("write");
    ImageFile {
        path: p,
        sha256: Sha256::of(content),
    }
}

fn request(sb: &Sandbox, version: &str) -> InstallRequest {
    InstallRequest {
        version: version.to_owned(),
        target: None,
        system: image(
            sb,
            "system.squashfs",
            format!("squashfs {version}").as_bytes(),
        ),
        kernel: Some(image(sb, "vmlinuz", b"kernel")),
        initramfs: Some(image(sb, "initramfs", b"initramfs")),
    }
}

#[test]
fn install_into_directory_slot_switches_grub_and_writes_pending_state() {
    let sb = Sandbox::new(
        "A",
        &["ORDER=A B", "A_LEFT=3", "A_OK=1", "B_LEFT=0", "B_OK=0"],
    );
    let cfg = sb.config(&[]);
    fs::write(sb.path("/slots/b/system.squashfs"), b"old").expect("old file");
    let req = request(&sb, "2.0.0");
    let r = install_image(&sb.ctx(&cfg), &req).expect("install");
    assert_eq!((r.from, r.to), (Slot::A, Slot::B));
    assert_eq!(r.files.len(), 3);
    assert_eq!(
        fs::read(sb.path("/slots/b/system.squashfs")).expect("read"),
        b"squashfs 2.0.0"
    );
    assert_eq!(
        fs::read(sb.path("/slots/b/vmlinuz")).expect("read"),
        b"kernel"
    );
    assert_eq!(
        fs::read(sb.path("/slots/b/initramfs")).expect("read"),
        b"initramfs"
    );
    let leftovers: Vec<_> = fs::read_dir(sb.path("/slots/b"))
        .expect("ls")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    assert_eq!(sb.env(), "ORDER=B A\nA_LEFT=3\nA_OK=1\nB_LEFT=3\nB_OK=0\n");
    let s = state(&sb);
    assert!(s.pending);
    assert_eq!(
        (s.from, s.to, s.version.as_str()),
        (Slot::A, Slot::B, "2.0.0")
    );
    let log = sb.read("/var/log/quantix/update.log").expect("log");
    assert!(log.contains("read back and verified"), "{log}");
}

#[test]
fn install_copies_kernel_and_initramfs_of_booted_slot_when_not_shipped() {
    let sb = Sandbox::new("A", &["ORDER=A B", "A_LEFT=3", "A_OK=1", "B_LEFT=0"]);
    let cfg = sb.config(&[]);
    fs::write(sb.path("/slots/a/vmlinuz"), b"running kernel").expect("w");
    fs::write(sb.path("/slots/a/initramfs"), b"running initramfs").expect("w");
    let mut req = request(&sb, "2.0.0");
    req.kernel = None;
    req.initramfs = None;
    let r = install_image(&sb.ctx(&cfg), &req).expect("install");
    assert_eq!(
        fs::read(sb.path("/slots/b/vmlinuz")).expect("read"),
        b"running kernel"
    );
    assert_eq!(
        fs::read(sb.path("/slots/b/initramfs")).expect("read"),
        b"running initramfs"
    );
    let k = r
        .files
        .iter()
        .find(|f| f.name == "vmlinuz")
        .expect("kernel");
    assert_eq!(k.source, sb.path("/slots/a/vmlinuz"));
    assert_eq!(k.sha256, Sha256::of(b"running kernel"));
}

#[test]
fn install_with_wrong_sha256_leaves_slot_unbootable_and_state_untouched() {
    let sb = Sandbox::new(
        "A",
        &["ORDER=A B", "A_LEFT=3", "A_OK=1", "B_LEFT=3", "B_OK=1"],
    );
    let cfg = sb.config(&[]);
    let mut req = request(&sb, "2.0.0");
    req.system.sha256 = Sha256::of(b"something else");
    let err = install_image(&sb.ctx(&cfg), &req).expect_err("mismatch");
    assert!(matches!(err, BootError::HashMismatch { .. }), "{err}");
    assert!(err.to_string().contains("sha256 mismatch"), "{err}");
    sb.assert_vars(&[("B_LEFT", "0"), ("B_OK", "0"), ("ORDER", "A B")]);
    assert_eq!(AbState::load(sb.root()).expect("load"), None);
    assert!(!sb.path("/slots/b/system.squashfs").exists());
    assert!(!sb.path("/slots/b/.system.squashfs.qx-new").exists());
    let log = sb.read("/var/log/quantix/update.log").expect("log");
    assert!(log.contains("install: FAILED"), "{log}");
}

#[test]
fn install_refuses_when_booted_slot_is_not_marked_good() {
    let sb = Sandbox::new("A", &["ORDER=A B", "A_LEFT=2", "B_LEFT=0"]);
    let before = fs::read(sb.grubenv()).expect("read");
    let err =
        install_image(&sb.ctx(&sb.config(&[])), &request(&sb, "2.0.0")).expect_err("A not good");
    assert!(
        matches!(err, BootError::BootedSlotNotGood { slot: Slot::A, .. }),
        "{err}"
    );
    assert_eq!(fs::read(sb.grubenv()).expect("read"), before);
}

#[test]
fn install_refuses_while_booted_slot_is_pending_verification() {
    let sb = Sandbox::new(
        "B",
        &["ORDER=B A", "A_LEFT=3", "A_OK=1", "B_LEFT=2", "B_OK=1"],
    );
    pending(&sb, Slot::A, Slot::B, "2.0.0");
    let err =
        install_image(&sb.ctx(&sb.config(&[])), &request(&sb, "3.0.0")).expect_err("B pending");
    assert!(
        matches!(err, BootError::BootedSlotPending { slot: Slot::B, .. }),
        "{err}"
    );
    assert!(!sb.path("/slots/a/system.squashfs").exists());
}

#[test]
fn install_refuses_the_booted_slot_as_target() {
    let sb = Sandbox::new("A", &["ORDER=A B", "A_LEFT=3", "A_OK=1"]);
    let mut req = request(&sb, "2.0.0");
    req.target = Some(Slot::A);
    let err = install_image(&sb.ctx(&sb.config(&[])), &req).expect_err("booted");
    assert!(
        matches!(err, BootError::TargetIsBooted { slot: Slot::A }),
        "{err}"
    );
}

#[test]
fn install_refuses_missing_image_file_before_touching_grubenv() {
    let sb = Sandbox::new(
        "A",
        &["ORDER=A B", "A_LEFT=3", "A_OK=1", "B_LEFT=3", "B_OK=1"],
    );
    let before = fs::read(sb.grubenv()).expect("read");
    let mut req = request(&sb, "2.0.0");
    req.system.path = sb.path("/data/updates/staging/missing.squashfs");
    let err = install_image(&sb.ctx(&sb.config(&[])), &req).expect_err("missing");
    assert!(err.to_string().contains("missing.squashfs"), "{err}");
    assert_eq!(fs::read(sb.grubenv()).expect("read"), before);
}

#[test]
fn a_confirmed_signed_revert_is_also_reported_reverted_with_the_version_left() {
    let sb = Sandbox::new(
        "B",
        &["ORDER=B A", "A_LEFT=3", "A_OK=1", "B_LEFT=2", "B_OK=0"],
    );
    pending(&sb, Slot::A, Slot::B, "1.0.0");
    let cfg = sb.config(&[TRUE]);
    let ctx = sb.ctx(&cfg).with_events(true);
    ab::mark_revert(&ctx, "1.0.0", "1.1.0").expect("mark");
    assert_eq!(state(&sb).reverted_from.as_deref(), Some("1.1.0"));
    ab::verify(&ctx).expect("verify");
    let events = qx_core::fleet_queue::EventQueue::under_root(sb.root())
        .pending(100)
        .expect("queue");
    let kinds: Vec<_> = events.iter().map(|e| e.kind).collect();
    use qx_core::fleet::EventType;
    assert_eq!(kinds, [EventType::Confirmed, EventType::Reverted]);
    assert_eq!(
        events[1].version.as_deref(),
        Some("1.1.0"),
        "the version left"
    );
    assert!(
        events[1]
            .message
            .as_deref()
            .is_some_and(|m| m.contains("back to 1.0.0")),
        "{:?}",
        events[1]
    );
}

#[test]
fn mark_revert_leaves_another_versions_state_alone() {
    let sb = Sandbox::new("A", &["ORDER=A B", "A_LEFT=3", "A_OK=1"]);
    pending(&sb, Slot::A, Slot::B, "2.0.0");
    let cfg = sb.config(&[TRUE]);
    let ctx = sb.ctx(&cfg);
    ab::mark_revert(&ctx, "1.0.0", "1.1.0").expect("mark");
    assert_eq!(state(&sb).reverted_from, None);
}
