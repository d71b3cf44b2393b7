//! A full image rebuilt from the chunks the booted slot already holds (docs/deltas.md,
//! "Images"), instead of downloaded whole.
//!
//! 1. the chunk index named by the signed manifest is fetched (at most 16 MiB) and checked
//!    against its size and SHA-256, then parsed ([`qx_delta::chunks::Index::parse`]);
//! 2. the booted slot's image is cut into chunks the same way ([`qx_delta::chunks::scan`]);
//! 3. in image order, each chunk is read from the booted image or fetched from the pack (runs
//!    of missing chunks in one ranged request of at most 8 MiB), checked against its SHA-256,
//!    and handed to the writer — the same one-pass slot writer a download feeds, which checks
//!    the whole image against the manifest's SHA-256 at the end.
//!
//! When the chunks to fetch would come to more than three quarters of the image, nothing is
//! written and the image is downloaded whole (one stream beats many ranges).
//!
//! Memory stays bounded whatever the image size: the index, a map of the booted image's chunks
//! (about 100 bytes a chunk), one fetched range and one chunk. Any failure is returned with its
//! reason; the caller then downloads the image whole.

use std::fs::File;
use std::io::BufReader;
use std::os::unix::fs::FileExt;
use std::path::Path;

use qx_core::{ArtifactRef, Sha256};
use qx_delta::chunks::{self, Entry, Index, Source, MAX_FETCH};

use crate::download::Downloader;
use crate::transaction::journal::crash_point;

/// What a rebuild took from where.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rebuilt {
    /// Bytes of the pack fetched.
    pub fetched: u64,
    /// Bytes of the image read from the booted slot.
    pub reused: u64,
}

/// Step 1 of the module documentation.
pub fn fetch_index(d: &Downloader, url: &str, expected: &ArtifactRef) -> Result<Index, String> {
    let (bytes, _) = d.get_bytes(url).map_err(|e| e.to_string())?;
    if bytes.len() as u64 != expected.size_bytes || Sha256::of(&bytes) != expected.sha256 {
        return Err(format!(
            "the chunk index {} does not match the manifest",
            expected.artifact
        ));
    }
    Index::parse(&bytes).map_err(|e| e.to_string())
}

/// Steps 2–3 of the module documentation: writes the image from byte `skip` on (the writer
/// already holds the bytes before it) into `out`.
pub fn rebuild(
    d: &Downloader,
    pack_url: &str,
    pack: &ArtifactRef,
    index: &Index,
    booted: &Path,
    skip: u64,
    out: &mut dyn FnMut(&[u8]) -> Result<(), String>,
) -> Result<Rebuilt, String> {
    let at = |p: &Path| {
        let p = p.display().to_string();
        move |e: std::io::Error| format!("{p}: {e}")
    };
    let file = File::open(booted).map_err(at(booted))?;
    let local = chunks::scan(BufReader::new(&file), index.params).map_err(at(booted))?;
    let plan = chunks::plan(index, &local, MAX_FETCH);
    worth_it(index, &plan)?;
    let mut w = Writer {
        out,
        skip,
        pos: 0,
        half: index.image_size / 2,
        done: Rebuilt::default(),
    };
    for source in &plan {
        match *source {
            Source::Local { chunk, offset } => {
                let e = &index.chunks[chunk];
                if w.wants(e) {
                    let mut data = vec![0u8; e.len as usize];
                    file.read_exact_at(&mut data, offset).map_err(at(booted))?;
                    chunks::check(e, &data).map_err(|e| e.to_string())?;
                    w.done.reused += data.len() as u64;
                    w.put(&data)?;
                } else {
                    w.pos += u64::from(e.len);
                }
            }
            Source::Pack {
                first,
                count,
                offset,
                len,
            } => {
                let entries = &index.chunks[first..first + count];
                w.pack_run(d, pack_url, pack, entries, offset, len)?;
            }
        }
    }
    Ok(w.done)
}

/// Refuses a rebuild that would not save a quarter of the whole download: scanning the booted
/// slot is already paid, but many ranged requests cost more than one stream.
fn worth_it(index: &Index, plan: &[Source]) -> Result<(), String> {
    let fetched = chunks::fetched_bytes(plan);
    if fetched.saturating_mul(4) > index.image_size.saturating_mul(3) {
        return Err(format!(
            "the booted slot holds too little of the new image ({fetched} of its {} bytes would be downloaded)",
            index.image_size
        ));
    }
    Ok(())
}

/// The image being written: where it stands, and what the writer already held.
struct Writer<'a> {
    out: &'a mut dyn FnMut(&[u8]) -> Result<(), String>,
    skip: u64,
    pos: u64,
    /// Half the image: a crash point for the tests once it is written.
    half: u64,
    done: Rebuilt,
}

impl Writer<'_> {
    /// False for a chunk wholly inside what the writer already holds.
    fn wants(&self, e: &Entry) -> bool {
        self.pos + u64::from(e.len) > self.skip
    }

    /// Writes a checked chunk, leaving out what the writer already holds of it.
    fn put(&mut self, data: &[u8]) -> Result<(), String> {
        let held = self.skip.saturating_sub(self.pos).min(data.len() as u64) as usize;
        (self.out)(&data[held..])?;
        let before = self.pos;
        self.pos += data.len() as u64;
        if before < self.half && self.pos >= self.half {
            crash_point("image-rebuilding");
        }
        Ok(())
    }

    /// One run of missing chunks: fetched in one range unless the writer already holds them.
    fn pack_run(
        &mut self,
        d: &Downloader,
        url: &str,
        pack: &ArtifactRef,
        entries: &[Entry],
        offset: u64,
        len: u64,
    ) -> Result<(), String> {
        let run: u64 = entries.iter().map(|e| u64::from(e.len)).sum();
        if self.pos + run <= self.skip {
            self.pos += run;
            return Ok(());
        }
        let bytes = d
            .get_range(url, &pack.sha256, offset, len)
            .map_err(|e| e.to_string())?;
        self.done.fetched += len;
        let mut at = 0usize;
        for e in entries {
            let packed = bytes
                .get(at..at + e.pack_len as usize)
                .ok_or_else(|| "a pack range is shorter than its chunks".to_owned())?;
            at += e.pack_len as usize;
            if self.wants(e) {
                let data = chunks::unpack(e, packed).map_err(|e| e.to_string())?;
                self.put(&data)?;
            } else {
                self.pos += u64::from(e.len);
            }
        }
        Ok(())
    }
}
