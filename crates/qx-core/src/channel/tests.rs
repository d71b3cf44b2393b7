use super::*;

const H1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const H2: &str = "2222222222222222222222222222222222222222222222222222222222222222";
const H3: &str = "3333333333333333333333333333333333333333333333333333333333333333";

fn sample() -> String {
    format!(
        r#"{{"schema": 1, "product": "quantix-os", "channel": "stable", "seq": 42,
  "issued": "2026-12-01T10:00:00Z", "expires": "2027-01-01T10:00:00Z",
  "current": "1.4.2",
  "releases": [{{"version": "1.4.2", "manifest_sha256": "{H2}"}},
               {{"version": "1.4.1", "manifest_sha256": "{H1}"}}],
  "revoked": [{{"version": "1.5.0", "action": "revert"}}],
  "rollout": null}}"#
    )
}

fn parse(text: &str) -> Result<ChannelState, ChannelError> {
    ChannelState::parse(text.as_bytes(), UnknownFields::Reject)
}

fn v(s: &str) -> Version {
    Version::parse(s).expect("version")
}

fn invalid_paths(text: &str) -> Vec<String> {
    match parse(text) {
        Err(ChannelError::Invalid(p)) => p.into_iter().map(|p| p.path).collect(),
        other => panic!("expected rule problems, got {other:?}"),
    }
}

#[test]
fn the_documented_example_parses_and_round_trips() {
    let state = parse(&sample()).expect("valid");
    assert_eq!(state.seq, 42);
    assert_eq!(state.revocation(&v("1.5.0")), Some(RevokeAction::Revert));
    let again = parse(std::str::from_utf8(&state.to_bytes()).expect("utf8")).expect("again");
    assert_eq!(again, state);
}

#[test]
fn unknown_fields_are_refused_by_servers_and_ignored_by_agents() {
    let text = sample().replacen("\"seq\"", "\"colour\": 1, \"seq\"", 1);
    match parse(&text) {
        Err(ChannelError::UnknownFields(f)) => assert_eq!(f, vec!["colour".to_string()]),
        other => panic!("{other:?}"),
    }
    assert!(ChannelState::parse(text.as_bytes(), UnknownFields::Ignore).is_ok());
}

#[test]
fn each_broken_rule_is_reported_with_its_path() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "current not listed",
            "\"current\": \"1.4.2\"",
            "\"current\": \"1.3.0\"",
        ),
        ("seq zero", "\"seq\": 42", "\"seq\": 0"),
        (
            "expires before issued",
            "\"expires\": \"2027-01-01T10:00:00Z\"",
            "\"expires\": \"2026-01-01T10:00:00Z\"",
        ),
        ("schema 2", "\"schema\": 1", "\"schema\": 2"),
        (
            "revoked and installable",
            "\"1.5.0\", \"action\"",
            "\"1.4.1\", \"action\"",
        ),
    ];
    let expected = ["current", "seq", "expires", "schema", "revoked[0].version"];
    for ((name, from, to), path) in cases.iter().zip(expected) {
        let text = sample().replacen(from, to, 1);
        assert_ne!(text, sample(), "{name}: the case did not change the sample");
        assert_eq!(invalid_paths(&text), vec![path.to_string()], "{name}");
    }
}

#[test]
fn a_release_listed_twice_is_refused() {
    let text = sample().replacen("\"1.4.1\", \"manifest", "\"1.4.2\", \"manifest", 1);
    assert_eq!(
        invalid_paths(&text),
        vec!["releases[1].version".to_string()]
    );
}

#[test]
fn syntax_and_structure_errors_name_what_is_wrong() {
    assert!(matches!(parse("{"), Err(ChannelError::Syntax(_))));
    match parse(&sample().replacen("\"seq\": 42", "\"seq\": \"x\"", 1)) {
        Err(ChannelError::Structure { path, .. }) => assert_eq!(path, "seq"),
        other => panic!("{other:?}"),
    }
}

fn plan_text(version: &str, sha: &str, waves: &str) -> String {
    let plan = format!(
        r#"{{"id": "r1", "version": "{version}", "manifest_sha256": "{sha}", "salt": "s", "waves": {waves}}}"#
    );
    sample()
        .replacen("\"rollout\": null", &format!("\"rollout\": {plan}"), 1)
        .replacen(
            "\"releases\": [",
            &format!("\"releases\": [{{\"version\": \"1.6.0\", \"manifest_sha256\": \"{H3}\"}}, "),
            1,
        )
}

#[test]
fn a_rollout_plan_must_name_a_listed_newer_release_and_growing_waves() {
    let good = r#"[{"percent": 1, "not_before": "2026-12-01T10:00:00Z"},
                   {"percent": 100, "not_before": "2026-12-02T10:00:00Z"}]"#;
    assert!(parse(&plan_text("1.6.0", H3, good)).is_ok());
    assert_eq!(
        invalid_paths(&plan_text("1.6.0", H1, good)),
        vec!["rollout.manifest_sha256"]
    );
    assert_eq!(
        invalid_paths(&plan_text("1.4.1", H1, good)),
        vec!["rollout.version"]
    );
    let shrinking = r#"[{"percent": 50, "not_before": "2026-12-01T10:00:00Z"},
                        {"percent": 10, "not_before": "2026-12-02T10:00:00Z"}]"#;
    assert_eq!(
        invalid_paths(&plan_text("1.6.0", H3, shrinking)),
        vec!["rollout.waves[1]"]
    );
    let over = r#"[{"percent": 101, "not_before": "2026-12-01T10:00:00Z"}]"#;
    assert_eq!(
        invalid_paths(&plan_text("1.6.0", H3, over)),
        vec!["rollout.waves[0].percent"]
    );
    assert_eq!(
        invalid_paths(&plan_text("1.6.0", H3, "[]")),
        vec!["rollout.waves"]
    );
}

#[test]
fn target_follows_current_revocations_and_chosen_versions() {
    let state = parse(&sample()).expect("valid");
    let current = state.current_release().expect("current");
    assert_eq!(state.target(None), Target::Update(current));
    assert_eq!(state.target(Some(&v("1.4.2"))), Target::UpToDate);
    assert_eq!(state.target(Some(&v("1.4.1"))), Target::Update(current));
    assert_eq!(state.target(Some(&v("1.5.0"))), Target::Revert(current));
    // A version above current that is not revoked (chosen on purpose) stays.
    assert_eq!(state.target(Some(&v("1.4.9"))), Target::UpToDate);
    let kept = parse(&sample().replacen("\"revert\"", "\"keep\"", 1)).expect("valid");
    assert_eq!(kept.target(Some(&v("1.5.0"))), Target::UpToDate);
}

#[test]
fn successor_increments_seq_and_renews_the_lifetime() {
    let state = parse(&sample()).expect("valid");
    let now: Timestamp = "2026-12-20T00:00:00Z".parse().expect("time");
    let next = state.successor(now, DEFAULT_LIFETIME);
    assert_eq!(next.seq, 43);
    assert_eq!(next.issued, now);
    assert_eq!(
        next.expires,
        "2027-01-19T00:00:00Z".parse::<Timestamp>().expect("time")
    );
    assert!(next.validate().is_ok());
    assert!(state.is_expired("2027-01-01T10:00:00Z".parse().expect("time")));
}

#[test]
fn seq_check_refuses_replays_and_conflicts() {
    let a = Sha256::of(b"a");
    let b = Sha256::of(b"b");
    assert_eq!(check_seq(None, 1, a), SeqCheck::Newer);
    assert_eq!(check_seq(Some((5, a)), 6, b), SeqCheck::Newer);
    assert_eq!(check_seq(Some((5, a)), 5, a), SeqCheck::Same);
    assert_eq!(
        check_seq(Some((5, a)), 5, b),
        SeqCheck::Conflicting { seen: 5 }
    );
    assert_eq!(
        check_seq(Some((5, a)), 4, a),
        SeqCheck::Replayed { seen: 5 }
    );
}
