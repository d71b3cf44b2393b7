//! The A/B state GRUB keeps in its environment block, and the verbs that move
//! it. This is the one place that spells the variable names; every other
//! module reads the state through [`tries_left`], [`is_good`], [`order`] and
//! [`next_boot`], and changes it through [`make_unbootable`], [`try_next`],
//! [`mark_good`] and [`fall_back`].
//!
//! The variables, as `packaging/grub/README.md` ("Environment variables")
//! describes them and `packaging/grub/grub.cfg` reads them:
//!
//! | variable | values | meaning |
//! |---|---|---|
//! | `ORDER` | `A B` or `B A` | slots in boot preference order |
//! | `A_LEFT`, `B_LEFT` | `0`…`9` | boot attempts left (GRUB decrements before booting) |
//! | `A_OK`, `B_OK` | `1` or `0` | the slot booted and passed its health checks |
//!
//! Each verb sets its variables in a fixed order: a variable missing from the
//! block is appended where `grub-editenv set` would append it, so the bytes
//! written are what the same `grub-editenv set` calls would write.

use crate::config::MAX_TRIES;
use crate::error::Result;
use crate::grubenv::GrubEnv;
use crate::slot::Slot;

/// grubenv variable holding the slot order.
pub const ORDER: &str = "ORDER";

/// grubenv variable with the boot attempts left of `slot` (`A_LEFT`).
pub fn left_key(slot: Slot) -> String {
    format!("{slot}_LEFT")
}

/// grubenv variable with the good flag of `slot` (`A_OK`).
pub fn ok_key(slot: Slot) -> String {
    format!("{slot}_OK")
}

/// Boot attempts left for `slot`, as GRUB sees them: a missing or
/// unrecognised value counts as 0 (GRUB's lookup chain only knows 1..=9).
pub fn tries_left(env: &GrubEnv, slot: Slot) -> u8 {
    match env.get(&left_key(slot)) {
        Some(v) if v.len() == 1 => v
            .parse::<u8>()
            .ok()
            .filter(|n| *n <= MAX_TRIES)
            .unwrap_or(0),
        _ => 0,
    }
}

/// Whether `slot` is marked good (`X_OK=1`).
pub fn is_good(env: &GrubEnv, slot: Slot) -> bool {
    env.get(&ok_key(slot)) == Some("1")
}

/// The slot order as GRUB walks it: the words of `ORDER` that are `A` or `B`
/// (each once); `"A B"` when `ORDER` is not set (the fragment's default).
pub fn order(env: &GrubEnv) -> Vec<Slot> {
    let raw = env.get(ORDER).unwrap_or("A B");
    let mut out = Vec::new();
    for word in raw.split_ascii_whitespace() {
        if let Ok(s) = word.parse::<Slot>() {
            if !out.contains(&s) {
                out.push(s);
            }
        }
    }
    out
}

/// The slot GRUB will pick on the next boot, `None` if no slot has attempts
/// left (GRUB's rescue path).
pub fn next_boot(env: &GrubEnv) -> Option<Slot> {
    order(env).into_iter().find(|s| tries_left(env, *s) > 0)
}

/// `ORDER` with `first` in front.
pub fn put_first(env: &mut GrubEnv, first: Slot) -> Result<()> {
    env.set(ORDER, &format!("{first} {}", first.other()))
}

/// Take `slot` out of the boot rotation (`X_LEFT=0`, `X_OK=0`, the other slot
/// first): before its files are rewritten, or when the operator marks it bad.
pub fn make_unbootable(env: &mut GrubEnv, slot: Slot) -> Result<()> {
    env.set(&left_key(slot), "0")?;
    env.set(&ok_key(slot), "0")?;
    put_first(env, slot.other())
}

/// Give a newly written `slot` its trial boots: first in `ORDER`,
/// `X_LEFT=tries`, `X_OK=0` until it proves itself.
pub fn try_next(env: &mut GrubEnv, slot: Slot, tries: u8) -> Result<()> {
    env.set(&left_key(slot), &tries.to_string())?;
    env.set(&ok_key(slot), "0")?;
    put_first(env, slot)
}

/// `slot` booted well: `X_LEFT=tries`, `X_OK=1`, and first in `ORDER` unless
/// `keep_order` (an update in the other slot still waits for its trial boot).
pub fn mark_good(env: &mut GrubEnv, slot: Slot, tries: u8, keep_order: bool) -> Result<()> {
    env.set(&left_key(slot), &tries.to_string())?;
    env.set(&ok_key(slot), "1")?;
    if keep_order {
        return Ok(());
    }
    put_first(env, slot)
}

/// GRUB gave up on `failed` (no attempts left) and booted the other slot:
/// record it (`X_OK=0`, `X_LEFT=0`, the running slot first).
pub fn fall_back(env: &mut GrubEnv, failed: Slot) -> Result<()> {
    env.set(&ok_key(failed), "0")?;
    env.set(&left_key(failed), "0")?;
    put_first(env, failed.other())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> GrubEnv {
        let mut e = GrubEnv::new();
        for (k, v) in vars {
            e.set(k, v).expect("set");
        }
        e
    }

    fn vars(e: &GrubEnv) -> Vec<(String, String)> {
        e.vars()
            .map(|(k, v)| {
                (
                    String::from_utf8_lossy(k).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn verbs_set_their_variables_in_grub_editenv_order() {
        type Verb = fn(&mut GrubEnv) -> Result<()>;
        type Case = (&'static str, Verb, &'static [(&'static str, &'static str)]);
        let cases: [Case; 5] = [
            (
                "make_unbootable",
                |e| make_unbootable(e, Slot::B),
                &[("B_LEFT", "0"), ("B_OK", "0"), ("ORDER", "A B")],
            ),
            (
                "try_next",
                |e| try_next(e, Slot::B, 3),
                &[("B_LEFT", "3"), ("B_OK", "0"), ("ORDER", "B A")],
            ),
            (
                "mark_good",
                |e| mark_good(e, Slot::A, 3, false),
                &[("A_LEFT", "3"), ("A_OK", "1"), ("ORDER", "A B")],
            ),
            (
                "mark_good keeping the order",
                |e| mark_good(e, Slot::A, 2, true),
                &[("A_LEFT", "2"), ("A_OK", "1")],
            ),
            (
                "fall_back",
                |e| fall_back(e, Slot::B),
                &[("B_OK", "0"), ("B_LEFT", "0"), ("ORDER", "A B")],
            ),
        ];
        for (name, verb, want) in cases {
            let mut e = GrubEnv::new();
            verb(&mut e).expect(name);
            let want: Vec<_> = want
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            assert_eq!(vars(&e), want, "{name}");
        }
    }

    #[test]
    fn reads_follow_grub() {
        let e = env(&[("ORDER", "B A B C"), ("A_LEFT", "3"), ("B_LEFT", "x")]);
        assert_eq!(order(&e), vec![Slot::B, Slot::A]);
        assert_eq!(tries_left(&e, Slot::B), 0);
        assert_eq!(next_boot(&e), Some(Slot::A));
        assert_eq!(order(&GrubEnv::new()), vec![Slot::A, Slot::B]);
        assert!(!is_good(&e, Slot::A));
    }
}
