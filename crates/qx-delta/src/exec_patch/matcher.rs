//! Approximate matching of a target against a base, block-copy style: a suffix array of the
//! base finds the longest exact match at each target position; a match is extended forwards
//! and backwards while at least half of its bytes agree, so a region that changed only in a
//! few bytes (addresses, constants) becomes one `add` of mostly zero differences, which
//! compresses to almost nothing. What matches nothing is copied as `extra` bytes.

use std::cmp::Ordering;

/// One step of the patch: add `add` bytes of difference to the base at the base cursor
/// (advancing it), copy `copy` bytes as they are, then move the base cursor by `seek`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Op {
    pub add: usize,
    pub copy: usize,
    pub seek: i64,
}

/// The base and its suffix array.
pub(crate) struct Index<'a> {
    base: &'a [u8],
    sa: Vec<i32>,
}

impl<'a> Index<'a> {
    /// Indexes `base` (at most `i32::MAX` bytes; the caller checks).
    pub fn new(base: &'a [u8]) -> Self {
        let mut sa = vec![0i32; base.len()];
        divsufsort::sort_in_place(base, &mut sa);
        Index { base, sa }
    }

    /// The longest prefix of `needle` found in the base: (its position, its length).
    fn longest(&self, needle: &[u8]) -> (usize, usize) {
        let suffix = |k: usize| &self.base[self.sa[k] as usize..];
        let first_not_less = self
            .sa
            .partition_point(|&s| self.base[s as usize..].cmp(needle) == Ordering::Less);
        let mut best = (0, 0);
        for k in [first_not_less.wrapping_sub(1), first_not_less] {
            if k < self.sa.len() {
                let len = common_prefix(suffix(k), needle);
                if len > best.1 {
                    best = (self.sa[k] as usize, len);
                }
            }
        }
        best
    }
}

fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Targets at least this long are matched in two halves on two threads.
const SPLIT_AT: usize = 4 << 20;

/// The steps that rebuild `target` from the indexed base; a long target's two halves are
/// matched at once on two threads (the steps of a half leave the base cursor at 0, where the
/// next half starts).
pub(crate) fn ops_parallel(index: &Index, target: &[u8]) -> Vec<Op> {
    if target.len() < SPLIT_AT {
        return ops(index, target);
    }
    let (front, back) = target.split_at(target.len() / 2);
    let (mut first, second) = std::thread::scope(|s| {
        let h = s.spawn(|| ops(index, back));
        let first = ops(index, front);
        (first, h.join())
    });
    match second {
        Ok(second) => first.extend(second),
        Err(panic) => std::panic::resume_unwind(panic),
    }
    first
}

/// The steps that rebuild `target` from the indexed base.
pub(crate) fn ops(index: &Index, target: &[u8]) -> Vec<Op> {
    let mut m = Matcher {
        base: index.base,
        target,
        last_scan: 0,
        last_pos: 0,
        ops: Vec::new(),
    };
    let (mut scan, mut len) = (0usize, 0usize);
    while scan < target.len() {
        let found = m.next_match(index, scan + len);
        (scan, len) = (found.scan, found.len);
        if found.len != found.old_score || scan == target.len() {
            m.emit(scan, found.pos);
        }
    }
    m.ops
}

/// An exact match at `scan` in the target, `pos` in the base, and how many of its bytes the
/// current offset already explains.
struct Found {
    scan: usize,
    len: usize,
    pos: usize,
    old_score: usize,
}

struct Matcher<'a> {
    base: &'a [u8],
    target: &'a [u8],
    last_scan: usize,
    last_pos: usize,
    ops: Vec<Op>,
}

impl Matcher<'_> {
    /// Whether base[p + offset] (offset = last_pos - last_scan) equals target[p].
    fn agrees_at_last_offset(&self, p: usize) -> bool {
        let b = (p + self.last_pos).checked_sub(self.last_scan);
        b.and_then(|b| self.base.get(b)) == Some(&self.target[p])
    }

    /// From `scan`, the first position whose exact match is worth a new step: one that the
    /// current offset does not already explain (by more than 8 bytes), or the end.
    fn next_match(&self, index: &Index, mut scan: usize) -> Found {
        let mut old_score = 0usize;
        let mut scored_to = scan;
        while scan < self.target.len() {
            let (pos, len) = index.longest(&self.target[scan..]);
            while scored_to < scan + len {
                old_score += usize::from(self.agrees_at_last_offset(scored_to));
                scored_to += 1;
            }
            if (len == old_score && len != 0) || len > old_score + 8 {
                return Found {
                    scan,
                    len,
                    pos,
                    old_score,
                };
            }
            if self.agrees_at_last_offset(scan) {
                old_score = old_score.saturating_sub(1);
            }
            scan += 1;
        }
        Found {
            scan,
            len: 0,
            pos: 0,
            old_score,
        }
    }

    /// Ends the current step just before the match at (`scan`, `pos`).
    fn emit(&mut self, scan: usize, pos: usize) {
        let mut fwd = self.forward_extent(scan);
        let mut back = if scan < self.target.len() {
            self.backward_extent(scan, pos)
        } else {
            0
        };
        if self.last_scan + fwd > scan - back {
            let keep = self.split_overlap(scan, pos, fwd, back);
            let overlap = self.last_scan + fwd - (scan - back);
            fwd = fwd + keep - overlap;
            back -= keep;
        }
        let copy = (scan - back) - (self.last_scan + fwd);
        let seek = (pos - back) as i64 - (self.last_pos + fwd) as i64;
        self.ops.push(Op {
            add: fwd,
            copy,
            seek,
        });
        self.last_scan = scan - back;
        self.last_pos = pos - back;
    }

    /// How far the previous match extends forwards with at least half its bytes agreeing.
    fn forward_extent(&self, scan: usize) -> usize {
        let (mut s, mut best_s, mut best) = (0i64, 0i64, 0usize);
        let mut i = 0;
        while self.last_scan + i < scan && self.last_pos + i < self.base.len() {
            s += i64::from(self.base[self.last_pos + i] == self.target[self.last_scan + i]);
            i += 1;
            if s * 2 - i as i64 > best_s * 2 - best as i64 {
                best_s = s;
                best = i;
            }
        }
        best
    }

    /// How far the new match at (`scan`, `pos`) extends backwards in the same way.
    fn backward_extent(&self, scan: usize, pos: usize) -> usize {
        let (mut s, mut best_s, mut best) = (0i64, 0i64, 0usize);
        let mut i = 1;
        while scan >= self.last_scan + i && pos >= i {
            s += i64::from(self.base[pos - i] == self.target[scan - i]);
            if s * 2 - i as i64 > best_s * 2 - best as i64 {
                best_s = s;
                best = i;
            }
            i += 1;
        }
        best
    }

    /// Where the two extensions should meet when they overlap: how many overlapping bytes go
    /// to the forward one.
    fn split_overlap(&self, scan: usize, pos: usize, fwd: usize, back: usize) -> usize {
        let overlap = self.last_scan + fwd - (scan - back);
        let (mut s, mut best_s, mut keep) = (0i64, 0i64, 0usize);
        for i in 0..overlap {
            let t = self.last_scan + fwd - overlap + i;
            s += i64::from(self.target[t] == self.base[self.last_pos + fwd - overlap + i]);
            s -= i64::from(self.target[scan - back + i] == self.base[pos - back + i]);
            if s > best_s {
                best_s = s;
                keep = i + 1;
            }
        }
        keep
    }
}
