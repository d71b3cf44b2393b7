//! Measuring aid (ignored test): per target section, how many difference bytes are non-zero and
//! what they compress to, with and without the projection. Run with
//! `QX_DIAG_BASE=… QX_DIAG_TARGET=… cargo test --release -p qx-delta diagnose -- --ignored --nocapture`.
#![allow(clippy::unwrap_used)]

use super::elf::{self, u64_at};
use super::format::{Header, Transform};
use super::project;

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// (name, file start, len) of every section.
fn sections(f: &[u8]) -> Vec<(String, usize, usize)> {
    let shoff = u64_at(f, 40).unwrap() as usize;
    let n = u16::from_le_bytes([f[60], f[61]]) as usize;
    let strndx = u16::from_le_bytes([f[62], f[63]]) as usize;
    let sh = |i: usize| shoff + i * 64;
    let stroff = u64_at(f, sh(strndx) + 24).unwrap() as usize;
    (1..n)
        .filter(|&i| u32_at(f, sh(i) + 4) != 8)
        .map(|i| {
            let name_at = stroff + u32_at(f, sh(i)) as usize;
            let end = f[name_at..].iter().position(|&c| c == 0).unwrap();
            let name = String::from_utf8_lossy(&f[name_at..name_at + end]).into_owned();
            let off = u64_at(f, sh(i) + 24).unwrap() as usize;
            let len = u64_at(f, sh(i) + 32).unwrap() as usize;
            (name, off, len)
        })
        .collect()
}

fn zlen(b: &[u8]) -> usize {
    zstd::bulk::compress(b, 19).unwrap().len()
}

#[test]
#[ignore = "measuring aid: needs QX_DIAG_BASE and QX_DIAG_TARGET"]
fn diagnose() {
    let base = std::fs::read(std::env::var("QX_DIAG_BASE").unwrap()).unwrap();
    let target = std::fs::read(std::env::var("QX_DIAG_TARGET").unwrap()).unwrap();
    let (b, t) = (elf::layout(&base).unwrap(), elf::layout(&target).unwrap());
    let mut header = Header {
        transform: Transform::Projection,
        target_len: target.len() as u64,
        base: b,
        target: t.clone().target_part(),
        stream_lens: [0; 3],
    };
    let ops = super::steps(&base, &target);
    let ops = super::steps(&project(&base, &header, &ops), &target);
    header.stream_lens = [0; 3];
    let projected = project(&base, &header, &ops);
    // Per target byte: the difference without and with the projection (None: an extra byte).
    let mut plain = vec![None; target.len()];
    let mut proj = vec![None; target.len()];
    let (mut old, mut new) = (0usize, 0usize);
    for op in &ops {
        for k in 0..op.add {
            plain[new + k] = Some(target[new + k].wrapping_sub(base[old + k]));
            proj[new + k] = Some(target[new + k].wrapping_sub(projected[old + k]));
        }
        new += op.add + op.copy;
        old = (old + op.add).wrapping_add_signed(op.seek as isize);
    }
    println!("steps {}", ops.len());
    println!(
        "{:<20} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "section", "len", "extra", "nz", "nz-proj", "z", "z-proj", "z-extra"
    );
    let mut tot = [0usize; 6];
    for (name, off, len) in sections(&target) {
        let r = off..(off + len).min(target.len());
        let extra: Vec<u8> = r
            .clone()
            .filter(|&i| plain[i].is_none())
            .map(|i| target[i])
            .collect();
        let d1: Vec<u8> = r.clone().filter_map(|i| plain[i]).collect();
        let d2: Vec<u8> = r.clone().filter_map(|i| proj[i]).collect();
        let nz = |d: &[u8]| d.iter().filter(|&&x| x != 0).count();
        let row = [
            extra.len(),
            nz(&d1),
            nz(&d2),
            zlen(&d1),
            zlen(&d2),
            zlen(&extra),
        ];
        println!(
            "{name:<20} {len:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            row[0], row[1], row[2], row[3], row[4], row[5]
        );
        for k in 0..6 {
            tot[k] += row[k];
        }
    }
    if let Some((_, off, len)) = sections(&target).into_iter().find(|s| s.0 == ".symtab") {
        let mut by = [0usize; 24];
        for i in off..off + len {
            by[(i - off) % 24] += usize::from(proj[i].is_some_and(|d| d != 0));
        }
        println!("symtab non-zero by entry byte: {by:?}");
    }
    println!(
        "{:<20} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "total",
        target.len(),
        tot[0],
        tot[1],
        tot[2],
        tot[3],
        tot[4],
        tot[5]
    );
}

#[test]
#[ignore = "measuring aid: needs QX_DIAG_BASE and QX_DIAG_TARGET"]
fn diagnose_calls() {
    use super::project::{Moves, Projection};
    let base = std::fs::read(std::env::var("QX_DIAG_BASE").unwrap()).unwrap();
    let target = std::fs::read(std::env::var("QX_DIAG_TARGET").unwrap()).unwrap();
    let ops = super::steps(&base, &target);
    let (b, t) = (elf::layout(&base).unwrap(), elf::layout(&target).unwrap());
    let moves = Moves::from_ops(&ops);
    let t = t.target_part();
    let p = Projection {
        base: &b,
        target: &t,
        moves: &moves,
    };
    let projected = p.apply(&base);
    // [unmapped operand, unmapped referent, projected ok, original ok, neither]
    let mut c = [0usize; 5];
    let mut shown = 0;
    for r in &b.code {
        let mut i = r.start as usize;
        while i + 5 < r.end() as usize {
            if base[i] != 0xE8 {
                i += 1;
                continue;
            }
            let at = i + 1;
            i += 5;
            let Some(at_t) = moves.target_offset_pub(at as u64) else {
                c[0] += 1;
                continue;
            };
            let at_t = at_t as usize;
            let tv = &target[at_t..at_t + 4];
            if projected[at..at + 4] == base[at..at + 4] && tv != &base[at..at + 4] {
                c[1] += 1;
                if shown < 10 {
                    shown += 1;
                    let rel = i32::from_le_bytes(base[at..at + 4].try_into().unwrap());
                    let to = (at as i64 + 4 + rel as i64) as u64;
                    println!(
                        "unmapped: at {at:#x} -> {at_t:#x}, referent off {to:#x} -> {:?}",
                        moves.target_offset_pub(to)
                    );
                }
                continue;
            }
            if tv == &projected[at..at + 4] {
                c[2] += 1;
            } else if tv == &base[at..at + 4] {
                c[3] += 1;
            } else {
                c[4] += 1;
            }
        }
    }
    println!("calls: operand unmapped {}, referent unmapped {}, projected ok {}, original ok {}, neither {}", c[0], c[1], c[2], c[3], c[4]);
}
