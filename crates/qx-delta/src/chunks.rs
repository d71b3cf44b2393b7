//! Content-defined chunks of a full system image (docs/deltas.md, "Images"): a host rebuilds
//! a new image from the chunks its booted slot already holds and fetches only the others.
//!
//! The publish tool cuts the image into chunks at content-defined boundaries ([`PARAMS`]), so
//! an insertion or removal moves only the chunks around it; every chunk is compressed alone
//! into the **pack** (one artifact, the chunks in image order), and the **index** (one small
//! artifact, signed through its SHA-256 in the manifest) lists each chunk's length, packed
//! length and SHA-256. A host cuts its booted image the same way ([`scan`]: a map from
//! SHA-256 to place, a few dozen bytes a chunk), and [`plan`] says, chunk by chunk in image
//! order, where each comes from: the booted image, or a range of the pack — consecutive missing
//! chunks are one range. Every chunk is checked against its SHA-256 before it is used, and the
//! whole image against the manifest's after.
//!
//! Memory is bounded whatever the image size: the index and the map (about 100 bytes a chunk:
//! under 1 MiB for 512 MiB of image) and one fetch of at most [`MAX_FETCH`] bytes.

use std::collections::HashMap;
use std::io::{Read, Write};

use fastcdc::v2020::StreamCDC;
use qx_core::Sha256;

use crate::{DeltaError, Result};

/// Chunk sizes: minimum, average, maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    pub min: u32,
    pub avg: u32,
    pub max: u32,
}

/// The sizes the publish tool cuts with (the index records them; a host cuts with the index's).
/// A 16 KiB average: on two Debian-built images a host fetched 14 % fewer bytes than with
/// 64 KiB (BENCHMARKS.md, "Image deltas"), for a 40-byte index entry per chunk.
pub const PARAMS: Params = Params {
    min: 4 << 10,
    avg: 16 << 10,
    max: 64 << 10,
};

/// The most a host fetches from the pack in one request.
pub const MAX_FETCH: u64 = 8 << 20;
/// The largest index accepted: 16 Mi chunks.
const MAX_CHUNKS: u64 = 16 << 20;
const MAGIC: &[u8; 5] = b"QXCI\x01";
/// Bytes of one index entry: length, packed length, SHA-256.
const ENTRY: usize = 4 + 4 + 32;
const HEADER: usize = MAGIC.len() + 3 * 4 + 8 + 8;

/// One chunk of an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub len: u32,
    /// Its size compressed in the pack.
    pub pack_len: u32,
    pub sha256: Sha256,
}

/// The chunks of an image, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Index {
    pub params: Params,
    pub image_size: u64,
    pub chunks: Vec<Entry>,
}

/// Where the bytes of one run of chunks come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Chunk `chunk` is at `offset` in the booted image.
    Local { chunk: usize, offset: u64 },
    /// Chunks `first..first + count` are `len` bytes at `offset` in the pack.
    Pack {
        first: usize,
        count: usize,
        offset: u64,
        len: u64,
    },
}

impl Index {
    /// The index's bytes: `QXCI` 1, min, avg, max (u32), image size, chunk count (u64), then
    /// per chunk its length, packed length (u32) and SHA-256; little-endian.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + self.chunks.len() * ENTRY);
        out.extend_from_slice(MAGIC);
        for v in [self.params.min, self.params.avg, self.params.max] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&self.image_size.to_le_bytes());
        out.extend_from_slice(&(self.chunks.len() as u64).to_le_bytes());
        for c in &self.chunks {
            out.extend_from_slice(&c.len.to_le_bytes());
            out.extend_from_slice(&c.pack_len.to_le_bytes());
            out.extend_from_slice(c.sha256.as_bytes());
        }
        out
    }

    /// Parses and checks an index: sizes the chunker accepts, chunk lengths within them that
    /// add up to the image size, an entry count that matches the bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let bad = |m: &str| DeltaError::Corrupt(format!("chunk index: {m}"));
        let rest = bytes
            .strip_prefix(MAGIC)
            .ok_or_else(|| bad("not a chunk index"))?;
        let mut r = Fields(rest);
        let params = Params {
            min: r.u32()?,
            avg: r.u32()?,
            max: r.u32()?,
        };
        let image_size = r.u64()?;
        let count = r.u64()?;
        check_params(params).map_err(|m| bad(&m))?;
        if count > MAX_CHUNKS || r.0.len() as u64 != count * ENTRY as u64 {
            return Err(bad("the entry count does not match its length"));
        }
        let mut chunks = Vec::with_capacity(count as usize);
        let mut total = 0u64;
        for _ in 0..count {
            let (len, pack_len) = (r.u32()?, r.u32()?);
            let sha256 = Sha256::from_bytes(r.bytes32()?);
            if len == 0 || len > params.max || u64::from(pack_len) > packed_bound(len) {
                return Err(bad("a chunk's length is outside the chunk sizes"));
            }
            total += u64::from(len);
            chunks.push(Entry {
                len,
                pack_len,
                sha256,
            });
        }
        if total != image_size {
            return Err(bad("the chunks do not add up to the image size"));
        }
        Ok(Self {
            params,
            image_size,
            chunks,
        })
    }

    /// The pack's size: every chunk compressed.
    pub fn pack_size(&self) -> u64 {
        self.chunks.iter().map(|c| u64::from(c.pack_len)).sum()
    }
}

/// The most a chunk of `len` bytes may take compressed (zstd's bound, and a frame's header).
fn packed_bound(len: u32) -> u64 {
    let len = u64::from(len);
    len + len / 128 + 1024
}

fn check_params(p: Params) -> std::result::Result<(), String> {
    use fastcdc::v2020 as f;
    let ok = (f::MINIMUM_MIN..=f::MINIMUM_MAX).contains(&p.min)
        && (f::AVERAGE_MIN..=f::AVERAGE_MAX).contains(&p.avg)
        && (f::MAXIMUM_MIN..=f::MAXIMUM_MAX).contains(&p.max)
        && p.min <= p.avg
        && p.avg <= p.max;
    ok.then_some(())
        .ok_or_else(|| format!("chunk sizes {}/{}/{} are not accepted", p.min, p.avg, p.max))
}

/// A little-endian field reader over the index's bytes.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N]> {
        let (head, rest) = self
            .0
            .split_first_chunk::<N>()
            .ok_or_else(|| DeltaError::Corrupt("chunk index: truncated".into()))?;
        self.0 = rest;
        Ok(*head)
    }
    fn u32(&mut self) -> Result<u32> {
        self.take::<4>().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Result<u64> {
        self.take::<8>().map(u64::from_le_bytes)
    }
    fn bytes32(&mut self) -> Result<[u8; 32]> {
        self.take::<32>()
    }
}

/// The publish tool's side: cuts `image` into chunks, writes each one compressed at `level`
/// into `pack`, and returns the index.
pub fn pack(image: impl Read, mut pack: impl Write, level: i32) -> Result<Index> {
    let p = PARAMS;
    let mut chunks = Vec::new();
    let mut image_size = 0u64;
    for chunk in StreamCDC::new(image, p.min, p.avg, p.max) {
        let chunk = chunk.map_err(|e| DeltaError::Encode(std::io::Error::other(e.to_string())))?;
        let packed = zstd::bulk::compress(&chunk.data, level).map_err(DeltaError::Encode)?;
        pack.write_all(&packed).map_err(DeltaError::Encode)?;
        image_size += chunk.data.len() as u64;
        chunks.push(Entry {
            len: chunk.data.len() as u32,
            pack_len: packed.len() as u32,
            sha256: Sha256::of(&chunk.data),
        });
    }
    Ok(Index {
        params: p,
        image_size,
        chunks,
    })
}

/// The chunks of a host's image, by SHA-256: where each one starts and how long it is.
#[derive(Debug, Default)]
pub struct Local {
    chunks: HashMap<Sha256, (u64, u32)>,
}

impl Local {
    pub fn len(&self) -> usize {
        self.chunks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }
}

/// The host's side: cuts `image` (the booted slot's) with the index's sizes.
pub fn scan(image: impl Read, params: Params) -> std::io::Result<Local> {
    let mut local = Local::default();
    for chunk in StreamCDC::new(image, params.min, params.avg, params.max) {
        let chunk = chunk.map_err(|e| std::io::Error::other(e.to_string()))?;
        local
            .chunks
            .entry(Sha256::of(&chunk.data))
            .or_insert((chunk.offset, chunk.data.len() as u32));
    }
    Ok(local)
}

/// Where each chunk of `index` comes from, in image order: the booted image when it holds a
/// chunk of the same SHA-256 and length, else the pack, consecutive missing chunks merged into
/// ranges of at most `max_fetch` bytes.
pub fn plan(index: &Index, local: &Local, max_fetch: u64) -> Vec<Source> {
    let mut out: Vec<Source> = Vec::new();
    let mut pack_offset = 0u64;
    for (i, c) in index.chunks.iter().enumerate() {
        match local.chunks.get(&c.sha256) {
            Some(&(offset, len)) if len == c.len => out.push(Source::Local { chunk: i, offset }),
            _ => {
                let add = u64::from(c.pack_len);
                match out.last_mut() {
                    Some(Source::Pack { count, len, .. }) if *len + add <= max_fetch => {
                        *count += 1;
                        *len += add;
                    }
                    _ => out.push(Source::Pack {
                        first: i,
                        count: 1,
                        offset: pack_offset,
                        len: add,
                    }),
                }
            }
        }
        pack_offset += u64::from(c.pack_len);
    }
    out
}

/// The bytes a plan fetches from the pack.
pub fn fetched_bytes(plan: &[Source]) -> u64 {
    plan.iter()
        .map(|s| match s {
            Source::Pack { len, .. } => *len,
            Source::Local { .. } => 0,
        })
        .sum()
}

/// Decompresses chunk `entry` from its packed bytes and checks it against its SHA-256.
pub fn unpack(entry: &Entry, packed: &[u8]) -> Result<Vec<u8>> {
    let data = zstd::bulk::decompress(packed, entry.len as usize)
        .map_err(|e| DeltaError::Corrupt(format!("a packed chunk: {e}")))?;
    check(entry, &data)?;
    Ok(data)
}

/// Checks a chunk's bytes (from the pack or the booted image) against its entry.
pub fn check(entry: &Entry, data: &[u8]) -> Result<()> {
    if data.len() != entry.len as usize || Sha256::of(data) != entry.sha256 {
        return Err(DeltaError::Corrupt(format!(
            "a chunk does not match its index entry (sha256 {})",
            entry.sha256.short()
        )));
    }
    Ok(())
}
