//! Cuts an image into a chunk pack, or rebuilds an image from a base and a pack the way a host
//! does, for measuring (the image-delta benchmark runs it under a timer):
//!
//! ```text
//! chunks pack IMAGE PACK INDEX [AVG_KIB LEVEL]   (prints the chunk count)
//! chunks apply BASE INDEX PACK OUT               (prints the bytes fetched from the pack)
//! ```
//!
//! `pack` cuts with the publish tool's sizes and level unless `AVG_KIB LEVEL` are given (then
//! the minimum and maximum are a quarter and four times the average, as in
//! [`chunks::PARAMS`]). `apply` scans BASE, plans, reads the planned pack ranges (each at most
//! [`chunks::MAX_FETCH`] bytes) and writes every chunk, checked, to OUT: the host side's
//! memory, without the network.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::process::ExitCode;

use fastcdc::v2020::StreamCDC;
use qx_core::Sha256;
use qx_delta::chunks::{self, Entry, Index, Params, Source};

/// The publish tool's pack level (qx-publish's `CHUNK_LEVEL`).
const PUBLISH_LEVEL: i32 = 9;

type Res<T> = Result<T, String>;

fn open(path: &str) -> Res<File> {
    File::open(path).map_err(|e| format!("{path}: {e}"))
}

fn create(path: &str) -> Res<File> {
    File::create(path).map_err(|e| format!("{path}: {e}"))
}

/// Cuts with `params` and packs at `level` (what [`chunks::pack`] does with its own sizes).
fn pack_with(image: File, out: &mut impl Write, params: Params, level: i32) -> Res<Index> {
    let mut index = Index {
        params,
        image_size: 0,
        chunks: Vec::new(),
    };
    let cut = StreamCDC::new(BufReader::new(image), params.min, params.avg, params.max);
    for chunk in cut {
        let chunk = chunk.map_err(|e| e.to_string())?;
        let packed = zstd::bulk::compress(&chunk.data, level).map_err(|e| e.to_string())?;
        out.write_all(&packed).map_err(|e| e.to_string())?;
        index.image_size += chunk.data.len() as u64;
        index.chunks.push(Entry {
            len: chunk.data.len() as u32,
            pack_len: packed.len() as u32,
            sha256: Sha256::of(&chunk.data),
        });
    }
    Ok(index)
}

fn pack(image: &str, pack: &str, index: &str, variant: Option<(u32, i32)>) -> Res<String> {
    let input = open(image)?;
    let mut out = BufWriter::new(create(pack)?);
    let built = match variant {
        None => chunks::pack(BufReader::new(input), &mut out, PUBLISH_LEVEL)
            .map_err(|e| e.to_string())?,
        Some((avg_kib, level)) => {
            let avg = avg_kib << 10;
            let params = Params {
                min: avg / 4,
                avg,
                max: avg * 4,
            };
            pack_with(input, &mut out, params, level)?
        }
    };
    out.flush().map_err(|e| e.to_string())?;
    std::fs::write(index, built.to_bytes()).map_err(|e| format!("{index}: {e}"))?;
    Ok(built.chunks.len().to_string())
}

fn apply(base: &str, index: &str, pack: &str, out: &str) -> Res<String> {
    let bytes = std::fs::read(index).map_err(|e| format!("{index}: {e}"))?;
    let index = Index::parse(&bytes).map_err(|e| e.to_string())?;
    let local = chunks::scan(BufReader::new(open(base)?), index.params)
        .map_err(|e| format!("{base}: {e}"))?;
    let plan = chunks::plan(&index, &local, chunks::MAX_FETCH);
    drop(local);
    let (base, pack) = (open(base)?, open(pack)?);
    let mut out = BufWriter::new(create(out)?);
    let mut buf = Vec::new();
    for source in &plan {
        match *source {
            Source::Local { chunk, offset } => {
                let entry = &index.chunks[chunk];
                buf.resize(entry.len as usize, 0);
                base.read_exact_at(&mut buf, offset)
                    .map_err(|e| e.to_string())?;
                chunks::check(entry, &buf).map_err(|e| e.to_string())?;
                out.write_all(&buf).map_err(|e| e.to_string())?;
            }
            Source::Pack {
                first,
                count,
                offset,
                len,
            } => {
                buf.resize(len as usize, 0);
                pack.read_exact_at(&mut buf, offset)
                    .map_err(|e| e.to_string())?;
                let mut at = 0usize;
                for entry in &index.chunks[first..first + count] {
                    let end = at + entry.pack_len as usize;
                    let data = chunks::unpack(entry, &buf[at..end]).map_err(|e| e.to_string())?;
                    out.write_all(&data).map_err(|e| e.to_string())?;
                    at = end;
                }
            }
        }
    }
    out.flush().map_err(|e| e.to_string())?;
    Ok(chunks::fetched_bytes(&plan).to_string())
}

fn run(args: &[String]) -> Res<String> {
    match args {
        [verb, image, p, index] if verb == "pack" => pack(image, p, index, None),
        [verb, image, p, index, avg, level] if verb == "pack" => {
            let avg = avg.parse().map_err(|_| format!("bad average size {avg}"))?;
            let level = level.parse().map_err(|_| format!("bad level {level}"))?;
            pack(image, p, index, Some((avg, level)))
        }
        [verb, base, index, p, out] if verb == "apply" => apply(base, index, p, out),
        _ => Err("usage: chunks pack IMAGE PACK INDEX [AVG_KIB LEVEL] | \
                  chunks apply BASE INDEX PACK OUT"
            .to_owned()),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(s) => {
            println!("{s}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("chunks: {e}");
            ExitCode::FAILURE
        }
    }
}
