//! `zstd-window`: a patch for system images that a host applies with bounded memory, reading
//! the base from its booted slot.
//!
//! The target is cut into segments ([`IMAGES`]: 4 MiB); each is one zstd frame compressed with
//! a reference prefix: a window of the base (16 MiB) followed by the previous segment of the
//! target (what a long-window patch gains from the target's own repeats). The window starts a
//! little before the place in the base that corresponds to the segment's (same share of the
//! length; an image's files keep their order from one release to the next, so a changed file's
//! old bytes lie there): the encoder tries a few starts and keeps the smallest frame. A host
//! holds one prefix, one segment and one frame at a time.
//!
//! Format (integers little-endian):
//!
//! ```text
//! magic        "QXZW" 0x01
//! target_len   u64
//! segment_len  u64   every segment's length but the last's (which is the rest)
//! count        u64   the number of segments: target_len / segment_len rounded up
//! count × (window_start u64, window_len u64, frame_len u64)
//! count × frame      a zstd frame rebuilding its segment, its prefix base[window] followed by
//!                    the previous segment of the target (nothing before the first)
//! ```

use std::io::{Read, Write};

use zstd::zstd_safe;

use crate::{DeltaError, Result};

const MAGIC: &[u8; 5] = b"QXZW\x01";
/// How a target is cut and which base bytes each segment may see.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Layout {
    /// Bytes of target per frame.
    pub segment: usize,
    /// Bytes of base per frame's prefix.
    pub window: usize,
    /// How far before the segment's place in the base a window may start: every one is
    /// tried, the smallest frame is kept.
    pub befores: &'static [usize],
}

/// What the publish tool uses: 4 MiB segments, 16 MiB windows starting 0 to 12 MiB before
/// (a host holds 28 MiB at most; on the benchmark's images 8 MiB segments with 24 MiB windows
/// were smaller, but the agent's peak then passed 64 MiB).
pub(crate) const IMAGES: Layout = Layout {
    segment: 4 << 20,
    window: 16 << 20,
    befores: &[0, 3 << 20, 6 << 20, 9 << 20, 12 << 20],
};

/// Compression level: the strongest (publishing is slower; applying is not).
const LEVEL: i32 = 22;
/// What a decoder accepts at most: its memory is a window, a segment and a frame.
const MAX_SEGMENT: u64 = 16 << 20;
const MAX_WINDOW: u64 = 32 << 20;
/// Segments shorter than this only in a patch of one segment (bounds the header).
const MIN_SEGMENT: u64 = 64 << 10;
/// zstd's window covers a prefix and a segment: at most 2^27 bytes.
const MAX_WINDOW_LOG: u32 = 27;

pub(crate) fn encode(base: &[u8], target: &[u8], layout: Layout) -> Result<Vec<u8>> {
    let segments: Vec<&[u8]> = target.chunks(layout.segment).collect();
    let frames = frames_parallel(&segments, |i, segment| {
        let at = i * layout.segment;
        let previous = i.checked_sub(1).map_or(&[][..], |p| segments[p]);
        let windows = windows(base.len(), target.len(), at, layout);
        smallest_frame(base, previous, segment, windows)
    })?;
    let mut patch = Vec::new();
    patch.extend_from_slice(MAGIC);
    for v in [target.len(), layout.segment, segments.len()] {
        patch.extend_from_slice(&(v as u64).to_le_bytes());
    }
    for ((start, len), frame) in &frames {
        for v in [*start, *len, frame.len()] {
            patch.extend_from_slice(&(v as u64).to_le_bytes());
        }
    }
    frames.iter().for_each(|(_, f)| patch.extend_from_slice(f));
    Ok(patch)
}

/// The base windows (start, length) the segment starting at `at` in the target may use: the
/// place in the base with the same share of its length, minus each of the layout's `befores`.
fn windows(base_len: usize, target_len: usize, at: usize, layout: Layout) -> Vec<(usize, usize)> {
    let len = layout.window.min(base_len);
    let place = (at as u128 * base_len as u128 / target_len.max(1) as u128) as usize;
    let mut starts: Vec<usize> = layout
        .befores
        .iter()
        .map(|b| place.saturating_sub(*b).min(base_len - len))
        .collect();
    starts.dedup();
    starts.into_iter().map(|s| (s, len)).collect()
}

/// The smallest of `segment`'s frames over `windows`, with its window; each frame's prefix is
/// the window followed by the `previous` segment of the target.
fn smallest_frame(
    base: &[u8],
    previous: &[u8],
    segment: &[u8],
    windows: Vec<(usize, usize)>,
) -> Result<((usize, usize), Vec<u8>)> {
    let mut best: Option<((usize, usize), Vec<u8>)> = None;
    for (start, len) in windows {
        let prefix = [&base[start..start + len], previous].concat();
        let f = frame(&prefix, segment)?;
        if best.as_ref().is_none_or(|(_, b)| f.len() < b.len()) {
            best = Some(((start, len), f));
        }
    }
    best.ok_or_else(|| DeltaError::Encode(std::io::Error::other("a layout without windows")))
}

/// `make(i, segment)` for every segment, on as many threads as there are cores (two at most:
/// a frame at level 22 takes some hundred MiB), in segment order.
fn frames_parallel<T: Send>(
    segments: &[&[u8]],
    make: impl Fn(usize, &[u8]) -> Result<T> + Sync,
) -> Result<Vec<T>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(2));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let done: Vec<Vec<(usize, Result<T>)>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(segment) = segments.get(i) else {
                            return out;
                        };
                        out.push((i, make(i, segment)));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    let mut made: Vec<(usize, Result<T>)> = done.into_iter().flatten().collect();
    made.sort_by_key(|(i, _)| *i);
    made.into_iter().map(|(_, f)| f).collect()
}

fn frame(prefix: &[u8], segment: &[u8]) -> Result<Vec<u8>> {
    let bits = usize::BITS - (prefix.len() + segment.len()).max(1).leading_zeros();
    let mut enc = zstd::stream::write::Encoder::with_ref_prefix(Vec::new(), LEVEL, prefix)
        .map_err(DeltaError::Encode)?;
    enc.long_distance_matching(true)
        .and_then(|()| enc.window_log(bits.clamp(10, MAX_WINDOW_LOG)))
        .and_then(|()| enc.include_checksum(false))
        .and_then(|()| enc.set_pledged_src_size(Some(segment.len() as u64)))
        .map_err(DeltaError::Encode)?;
    enc.write_all(segment).map_err(DeltaError::Encode)?;
    enc.finish().map_err(DeltaError::Encode)
}

/// Where a decoder reads the base: its length and a positioned read of exact length.
pub(crate) trait Base {
    fn len(&self) -> u64;
    fn read_exact_at(&self, buf: &mut [u8], pos: u64) -> std::io::Result<()>;
}

impl Base for &[u8] {
    fn len(&self) -> u64 {
        <[u8]>::len(self) as u64
    }

    fn read_exact_at(&self, buf: &mut [u8], pos: u64) -> std::io::Result<()> {
        let from = usize::try_from(pos).ok();
        let bytes = from.and_then(|f| self.get(f..f.checked_add(buf.len())?));
        let bytes = bytes.ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(bytes);
        Ok(())
    }
}

/// The base in a file, whose length is taken once when it is opened.
pub(crate) struct FileBase<'a> {
    pub file: &'a std::fs::File,
    pub len: u64,
}

impl Base for FileBase<'_> {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_exact_at(&self, buf: &mut [u8], pos: u64) -> std::io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self.file, buf, pos)
    }
}

/// One segment's entry in the header.
struct Entry {
    window_start: u64,
    window_len: u64,
    frame_len: u64,
}

/// Applies a patch, writing each segment as it is rebuilt: after an error `out` holds a part
/// of the target, which the caller throws away. Nothing in the patch is trusted.
pub(crate) fn decode(
    base: impl Base,
    mut patch: impl Read,
    mut out: impl Write,
    limit: u64,
) -> Result<u64> {
    let (target_len, segment_len, entries) = header(&mut patch, base.len(), limit)?;
    let (mut prefix, mut frame) = (Vec::new(), Vec::new());
    let mut segment = Vec::with_capacity(segment_len.min(target_len) as usize);
    let mut left = target_len;
    for e in &entries {
        // The window, then the previous segment (still in `segment`, empty at first).
        prefix.resize(e.window_len as usize, 0);
        base.read_exact_at(&mut prefix, e.window_start)
            .map_err(|e| corrupt(&format!("cannot read the base: {e}")))?;
        prefix.extend_from_slice(&segment);
        frame.resize(e.frame_len as usize, 0);
        patch
            .read_exact(&mut frame)
            .map_err(|_| corrupt("the patch ends inside a frame"))?;
        let want = left.min(segment_len);
        rebuild(&prefix, &frame, want, &mut segment)?;
        out.write_all(&segment).map_err(DeltaError::Write)?;
        left -= want;
    }
    if patch
        .read(&mut [0u8; 1])
        .map_err(|e| corrupt(&e.to_string()))?
        != 0
    {
        return Err(corrupt("bytes after the last frame"));
    }
    Ok(target_len)
}

/// The header: target length, segment length and every segment's entry, each checked
/// against the base, the limit and the bounds of a decoder's memory.
fn header(patch: &mut impl Read, base_len: u64, limit: u64) -> Result<(u64, u64, Vec<Entry>)> {
    let mut magic = [0u8; 5];
    patch
        .read_exact(&mut magic)
        .map_err(|_| corrupt("truncated header"))?;
    if &magic != MAGIC {
        return Err(corrupt("not a zstd-window patch (bad magic)"));
    }
    let [target_len, segment_len, count] = [u64s(patch)?, u64s(patch)?, u64s(patch)?];
    if target_len > limit {
        return Err(DeltaError::TooLong { limit });
    }
    if segment_len == 0 || segment_len > MAX_SEGMENT {
        return Err(corrupt("segment length out of bounds"));
    }
    if count != target_len.div_ceil(segment_len) || (count > 1 && segment_len < MIN_SEGMENT) {
        return Err(corrupt("segment count does not match the target's length"));
    }
    let max_frame = zstd_safe::compress_bound(segment_len as usize) as u64;
    let mut entries = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let e = Entry {
            window_start: u64s(patch)?,
            window_len: u64s(patch)?,
            frame_len: u64s(patch)?,
        };
        let end = e.window_start.checked_add(e.window_len);
        if e.window_len > MAX_WINDOW || end.is_none_or(|end| end > base_len) {
            return Err(corrupt("a window outside the base"));
        }
        if e.frame_len > max_frame {
            return Err(corrupt("a frame larger than its segment could compress to"));
        }
        entries.push(e);
    }
    Ok((target_len, segment_len, entries))
}

fn u64s(r: &mut impl Read) -> Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)
        .map_err(|_| corrupt("truncated header"))?;
    Ok(u64::from_le_bytes(b))
}

/// Decompresses `frame` with `prefix` into `segment`, which must come out exactly `want` bytes
/// long.
fn rebuild(prefix: &[u8], frame: &[u8], want: u64, segment: &mut Vec<u8>) -> Result<()> {
    segment.clear();
    segment.reserve_exact(want as usize);
    let mut dctx = zstd_safe::DCtx::create();
    let zstd_err = |code: usize| corrupt(zstd_safe::get_error_name(code));
    dctx.set_parameter(zstd_safe::DParameter::WindowLogMax(MAX_WINDOW_LOG))
        .map_err(zstd_err)?;
    dctx.ref_prefix(prefix).map_err(zstd_err)?;
    // zstd writes into the buffer's capacity and never grows it: a frame claiming more than
    // the capacity fails, one rebuilding more than `want` within it is refused below.
    let n = dctx.decompress(segment, frame).map_err(zstd_err)?;
    if n as u64 != want {
        return Err(corrupt("a frame rebuilds a segment of the wrong length"));
    }
    Ok(())
}

fn corrupt(what: &str) -> DeltaError {
    DeltaError::Corrupt(format!("zstd-window: {what}"))
}
