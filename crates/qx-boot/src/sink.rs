//! [`ImageSink`]: one file of a system image written into a slot's file system in one pass,
//! whatever the bytes come from (a download, a file, a reconstruction).
//!
//! The bytes arrive in order through [`ImageSink::write`] (or [`ImageSink::copy_from`]) and
//! go to a temporary file next to the target, `.<name>.<16 hex digits of the expected
//! SHA-256>.tmp`. The caller's thread only copies them into the current block
//! ([`BLOCK`], a few reused buffers); two threads do the rest, block by block:
//! - the writer writes the block, starts its writeback (so that the final fsync finds little
//!   left to write) and records a fast checksum of it (xxh3-64, one per [`BLOCK`] of the file);
//! - the hasher computes the SHA-256 of the whole stream, once.
//!
//! Then, in this order:
//! 1. [`ImageSink::digest`]: SHA-256 and length of everything written (a caller that retries,
//!    the download, compares them and calls [`ImageSink::restart`] on a mismatch);
//! 2. [`ImageSink::sync`]: size and SHA-256 checked against the expected ones (a mismatch
//!    removes the temporary file), then fsync → [`SyncedImage`];
//! 3. [`SyncedImage::verify`]: the file is read back from the disk without the page cache
//!    (`O_DIRECT`; where a file system refuses it, the file's cached pages are dropped and it
//!    is read normally) on one thread, while the calling thread compares each block's
//!    checksum with the one recorded while writing → [`VerifiedImage`]. This proves the disk
//!    holds the bytes whose SHA-256 was checked, at the disk's speed, without a second SHA-256
//!    pass;
//! 4. [`VerifiedImage::install`]: rename over the target, fsync the directory. A verified
//!    image that is dropped without being installed removes its temporary file.
//!
//! Resume: [`ImageSink::open`] continues a temporary file of the same expected content left
//! by an interrupted sink (a cut link, a kill -9): it re-reads the prefix the file holds
//! (hashing it and computing its checksums, nothing written) and [`ImageSink::held`] says
//! where the stream goes on. A prefix that is not the content's (torn by a power cut) is
//! caught by the final SHA-256. A temporary file of other content is removed.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

use qx_core::fs::swap_into_place;
use qx_core::{Sha256, Sha256Hasher};
use xxhash_rust::xxh3::Xxh3;

use crate::error::{BootError, Result};

/// The unit of writing, checksumming and reading back: 4 MiB.
pub const BLOCK: usize = 4 << 20;

/// Alignment of the read-back buffers and offsets (`O_DIRECT`).
const ALIGN: usize = 4096;

/// Buffers in flight between the caller, the writer and the hasher (plus the one being filled).
const IN_FLIGHT: usize = 2;

/// What the stream must end as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expected {
    pub sha256: Sha256,
    pub size: u64,
}

/// One file written into a slot, as [`VerifiedImage::install`] reports it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct InstalledFile {
    pub name: String,
    pub size: u64,
    pub sha256: Sha256,
    /// Where it came from: the update's file or URL, or the booted slot.
    pub source: PathBuf,
}

/// A block on its way to the writer: `data[..len]`; `write: false` for a prefix that is on
/// the disk already (resume: only checksummed and hashed).
struct Job {
    data: Vec<u8>,
    len: usize,
    write: bool,
}

/// The writer and hasher threads of a sink.
struct Pipeline {
    jobs: SyncSender<Job>,
    free: Receiver<Vec<u8>>,
    writer: JoinHandle<io::Result<(File, Vec<u64>)>>,
    hasher: JoinHandle<Sha256Hasher>,
}

/// What the stream was, once its threads are done.
struct Streamed {
    file: File,
    sums: Vec<u64>,
    sha256: Sha256,
    size: u64,
}

/// A file of an image being written into a slot (see the module documentation).
pub struct ImageSink {
    name: String,
    temp: PathBuf,
    dest: PathBuf,
    source: PathBuf,
    expected: Option<Expected>,
    held: u64,
    block: Vec<u8>,
    fill: usize,
    pipe: Option<Pipeline>,
    done: Option<Streamed>,
}

/// The temporary name of `name` in a slot while content `expected` is written.
pub fn temp_name(name: &str, expected: Option<&Expected>) -> String {
    match expected {
        Some(e) => format!(".{name}.{}.tmp", &e.sha256.to_hex()[..16]),
        None => format!(".{name}.copy.tmp"),
    }
}

/// True for a temporary file of a sink for `name` (any content).
pub fn is_temp_of(file: &str, name: &str) -> bool {
    file.strip_prefix('.')
        .and_then(|f| f.strip_prefix(name))
        .and_then(|f| f.strip_prefix('.'))
        .is_some_and(|rest| rest.ends_with(".tmp") || rest == "qx-new")
}

impl ImageSink {
    /// A sink for `dir/name`. With `expected`, a temporary file of that content left by an
    /// interrupted sink is continued (its prefix re-read); temporary files of `name` with
    /// other content are removed. Without it (content unknown: a copy), it starts empty.
    pub fn open(dir: &Path, name: &str, expected: Option<Expected>) -> Result<ImageSink> {
        let temp = dir.join(temp_name(name, expected.as_ref()));
        remove_other_temps(dir, name, &temp)?;
        let mut sink = ImageSink {
            name: name.to_owned(),
            dest: dir.join(name),
            source: PathBuf::new(),
            expected,
            held: 0,
            block: vec![0; BLOCK],
            fill: 0,
            pipe: None,
            done: None,
            temp,
        };
        match expected {
            Some(e) => sink.resume(e.size)?,
            None => remove_if_exists(&sink.temp)?,
        }
        Ok(sink)
    }

    /// Where the content comes from (reported in [`InstalledFile::source`]).
    pub fn with_source(mut self, source: impl Into<PathBuf>) -> Self {
        self.source = source.into();
        self
    }

    /// The temporary file being written.
    pub fn temp_path(&self) -> &Path {
        &self.temp
    }

    /// Bytes of the stream received so far (after [`ImageSink::open`]: the prefix kept from
    /// an interrupted sink; the stream goes on from there).
    pub fn held(&self) -> u64 {
        self.held
    }

    /// Takes up the temporary file's prefix: at most `size` bytes are kept (a longer file is
    /// removed), re-read and fed to the checksums and the hash without being written.
    fn resume(&mut self, size: u64) -> Result<()> {
        let mut file = match File::open(&self.temp) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(BootError::io(&self.temp, "open", e)),
        };
        let len = file
            .metadata()
            .map_err(|e| BootError::io(&self.temp, "stat", e))?
            .len();
        if len > size {
            drop(file);
            return remove_if_exists(&self.temp);
        }
        loop {
            let n = read_full(&mut file, &mut self.block[self.fill..])
                .map_err(|e| BootError::io(&self.temp, "read", e))?;
            if n == 0 {
                break;
            }
            self.fill += n;
            self.held += n as u64;
            if self.fill == BLOCK {
                self.send(false)?;
            }
        }
        if self.fill > 0 {
            self.send(false)?;
        }
        Ok(())
    }

    /// Appends `data` to the stream.
    pub fn write(&mut self, mut data: &[u8]) -> Result<()> {
        self.check_room(data.len() as u64)?;
        while !data.is_empty() {
            let n = (BLOCK - self.fill).min(data.len());
            self.block[self.fill..self.fill + n].copy_from_slice(&data[..n]);
            self.fill += n;
            self.held += n as u64;
            data = &data[n..];
            if self.fill == BLOCK {
                self.send(true)?;
            }
        }
        Ok(())
    }

    /// Appends everything `reader` gives, read straight into the sink's blocks; returns the
    /// bytes read. A read error is reported on `source` (`read`).
    pub fn copy_from(&mut self, reader: &mut dyn Read, source: &Path) -> Result<u64> {
        let mut total = 0u64;
        loop {
            let n = match reader.read(&mut self.block[self.fill..]) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(BootError::io(source, "read", e)),
            };
            self.check_room(n as u64)?;
            self.fill += n;
            self.held += n as u64;
            total += n as u64;
            if self.fill == BLOCK {
                self.send(true)?;
            }
        }
        Ok(total)
    }

    /// Refuses a stream that grows past the expected size.
    fn check_room(&self, n: u64) -> Result<()> {
        match self.expected {
            Some(e) if self.held + n > e.size => Err(BootError::SizeMismatch {
                path: self.source_or_temp(),
                expected: e.size,
                actual: self.held + n,
            }),
            _ if self.done.is_some() => Err(BootError::io(
                &self.temp,
                "write",
                io::Error::other("the image was already finished; restart it first"),
            )),
            _ => Ok(()),
        }
    }

    fn source_or_temp(&self) -> PathBuf {
        if self.source.as_os_str().is_empty() {
            self.temp.clone()
        } else {
            self.source.clone()
        }
    }

    /// Hands the current block to the writer and takes a free buffer in its place.
    fn send(&mut self, write: bool) -> Result<()> {
        if self.pipe.is_none() {
            self.pipe = Some(self.start()?);
        }
        let sent = match &self.pipe {
            Some(pipe) => pipe.free.recv().ok().and_then(|next| {
                let data = std::mem::replace(&mut self.block, next);
                let job = Job {
                    data,
                    len: self.fill,
                    write,
                };
                pipe.jobs.send(job).ok()
            }),
            None => None,
        };
        self.fill = 0;
        if sent.is_none() {
            // A thread stopped: its error says why.
            self.stop().map(|_| ())?;
            return Err(BootError::io(
                &self.temp,
                "write",
                io::Error::other("the writer stopped"),
            ));
        }
        Ok(())
    }

    /// Opens the temporary file at its end and starts the writer and hasher threads.
    fn start(&self) -> Result<Pipeline> {
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.temp)
            .map_err(|e| BootError::io(&self.temp, "create", e))?;
        file.seek(SeekFrom::End(0))
            .map_err(|e| BootError::io(&self.temp, "seek", e))?;
        Pipeline::start(file).map_err(|e| BootError::io(&self.temp, "start writer", e))
    }

    /// Ends the threads; returns what they made of the stream.
    fn stop(&mut self) -> Result<Option<Streamed>> {
        let Some(pipe) = self.pipe.take() else {
            return Ok(None);
        };
        let (written, hasher) = pipe.join();
        let (file, sums) = written.map_err(|e| BootError::io(&self.temp, "write", e))?;
        let (sha256, size) = hasher
            .ok_or_else(|| BootError::io(&self.temp, "hash", io::Error::other("hasher panicked")))?
            .finish();
        Ok(Some(Streamed {
            file,
            sums,
            sha256,
            size,
        }))
    }

    /// SHA-256 and length of the whole stream; ends the stream (until [`ImageSink::restart`]).
    pub fn digest(&mut self) -> Result<(Sha256, u64)> {
        if self.done.is_none() {
            if self.fill > 0 || self.pipe.is_none() {
                self.send(true)?;
            }
            self.done = self.stop()?;
        }
        match &self.done {
            Some(d) => Ok((d.sha256, d.size)),
            None => Err(BootError::io(
                &self.temp,
                "hash",
                io::Error::other("no stream"),
            )),
        }
    }

    /// Drops everything received: the temporary file is removed and the stream starts again
    /// from zero.
    pub fn restart(&mut self) -> Result<()> {
        let _ = self.stop();
        self.done = None;
        self.fill = 0;
        self.held = 0;
        remove_if_exists(&self.temp)
    }

    /// Step 2: the stream checked against the expected size and SHA-256 (on a mismatch the
    /// temporary file is removed), then fsynced.
    pub fn sync(mut self) -> Result<SyncedImage> {
        let (sha256, size) = self.digest()?;
        if let Some(e) = self.expected {
            let mismatch = if size != e.size {
                Some(BootError::SizeMismatch {
                    path: self.source_or_temp(),
                    expected: e.size,
                    actual: size,
                })
            } else if sha256 != e.sha256 {
                Some(BootError::HashMismatch {
                    path: self.source_or_temp(),
                    expected: e.sha256.to_string(),
                    actual: sha256.to_string(),
                })
            } else {
                None
            };
            if let Some(err) = mismatch {
                self.restart()?;
                return Err(err);
            }
        }
        let Some(done) = self.done.take() else {
            return Err(BootError::io(
                &self.temp,
                "fsync",
                io::Error::other("no stream"),
            ));
        };
        done.file
            .sync_all()
            .map_err(|e| BootError::io(&self.temp, "fsync", e))?;
        Ok(SyncedImage {
            file: InstalledFile {
                name: self.name.clone(),
                size,
                sha256,
                source: self.source.clone(),
            },
            temp: Temp(Some(self.temp.clone())),
            dest: self.dest.clone(),
            sums: done.sums,
        })
    }
}

impl Drop for ImageSink {
    fn drop(&mut self) {
        // What was received goes to the file and stays for a later resume; the threads end.
        if self.fill > 0 && self.done.is_none() {
            let _ = self.send(true);
        }
        let _ = self.stop();
    }
}

/// A temporary file removed on drop unless taken.
struct Temp(Option<PathBuf>);

impl Temp {
    fn path(&self) -> &Path {
        self.0.as_deref().unwrap_or(Path::new(""))
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// An image file complete and fsynced in its temporary file, not yet read back.
pub struct SyncedImage {
    file: InstalledFile,
    temp: Temp,
    dest: PathBuf,
    sums: Vec<u64>,
}

impl SyncedImage {
    /// The temporary file.
    pub fn temp_path(&self) -> &Path {
        self.temp.path()
    }

    /// Step 3: read back from the disk and compared, block by block, with the checksums of
    /// what was written; on a difference the temporary file is removed.
    pub fn verify(self) -> Result<VerifiedImage> {
        let path = self.temp.path().to_owned();
        let direct = read_back(&path, &self.sums, self.file.size, true);
        let checked = match direct {
            Err(ReadBackError::Io(e)) if e.kind() == io::ErrorKind::InvalidInput => {
                // O_DIRECT refused (tmpfs, some FUSE): drop the cached pages, read normally.
                read_back(&path, &self.sums, self.file.size, false)
            }
            other => other,
        };
        match checked {
            Ok(()) => Ok(VerifiedImage {
                file: self.file,
                temp: self.temp,
                dest: self.dest,
            }),
            Err(ReadBackError::Io(e)) => Err(BootError::io(&path, "read back", e)),
            Err(ReadBackError::Differs { offset }) => Err(BootError::ReadBack {
                path: self.dest,
                offset,
            }),
        }
    }
}

/// An image file read back and verified in its temporary file; dropped without
/// [`VerifiedImage::install`], the temporary file is removed.
pub struct VerifiedImage {
    file: InstalledFile,
    temp: Temp,
    dest: PathBuf,
}

impl VerifiedImage {
    /// The file as it will be installed.
    pub fn file(&self) -> &InstalledFile {
        &self.file
    }

    /// Step 4: renamed over the target, directory fsynced.
    pub fn install(mut self) -> Result<InstalledFile> {
        let Some(temp) = self.temp.0.take() else {
            return Err(BootError::io(
                &self.dest,
                "rename",
                io::Error::other("no file"),
            ));
        };
        swap_into_place(&temp, &self.dest, false)?;
        Ok(self.file)
    }
}

impl Pipeline {
    /// Threads for a stream that starts at the beginning of `file` (whose position is where
    /// the first block to write goes: after a resumed prefix).
    fn start(file: File) -> io::Result<Pipeline> {
        let (jobs, jobs_rx) = sync_channel::<Job>(1);
        let (hash_tx, hash_rx) = sync_channel::<Job>(1);
        let (free_tx, free) = sync_channel::<Vec<u8>>(IN_FLIGHT);
        for _ in 0..IN_FLIGHT {
            let _ = free_tx.send(vec![0; BLOCK]);
        }
        let writer = std::thread::Builder::new()
            .name("qx-image-write".into())
            .spawn(move || write_blocks(file, jobs_rx, hash_tx))?;
        let hasher = std::thread::Builder::new()
            .name("qx-image-hash".into())
            .spawn(move || hash_blocks(hash_rx, free_tx))?;
        Ok(Pipeline {
            jobs,
            free,
            writer,
            hasher,
        })
    }

    /// Closes the stream and waits for both threads.
    fn join(self) -> (io::Result<(File, Vec<u64>)>, Option<Sha256Hasher>) {
        drop(self.jobs);
        drop(self.free);
        let written = self
            .writer
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("writer panicked")));
        (written, self.hasher.join().ok())
    }
}

/// The writer thread: writes each block at the file's position, starts its writeback,
/// records its checksums, passes it on to the hasher. `offset` counts the whole stream (a
/// resumed prefix, not written again, included).
fn write_blocks(
    mut file: File,
    jobs: Receiver<Job>,
    hasher: SyncSender<Job>,
) -> io::Result<(File, Vec<u64>)> {
    let mut offset = 0u64;
    let mut sums = BlockSums::new();
    for job in jobs {
        let data = &job.data[..job.len];
        if job.write {
            file.write_all(data)?;
            // Starts the writeback of these pages now (it does not wait for it), so the
            // final fsync finds little left to write, and keeps them out of the cache.
            let _ = rustix::fs::fadvise(
                &file,
                offset,
                std::num::NonZeroU64::new(job.len as u64),
                rustix::fs::Advice::DontNeed,
            );
        }
        sums.update(data);
        offset += job.len as u64;
        if hasher.send(job).is_err() {
            break;
        }
    }
    Ok((file, sums.finish()))
}

/// The hasher thread: the SHA-256 of the stream; buffers go back to the pool.
fn hash_blocks(jobs: Receiver<Job>, free: SyncSender<Vec<u8>>) -> Sha256Hasher {
    let mut h = Sha256Hasher::new();
    for job in jobs {
        h.update(&job.data[..job.len]);
        let _ = free.send(job.data);
    }
    h
}

/// One xxh3-64 per [`BLOCK`] of the file (the last one shorter), whatever the sizes of the
/// pieces it is fed in.
struct BlockSums {
    sums: Vec<u64>,
    cur: Xxh3,
    filled: usize,
}

impl BlockSums {
    fn new() -> Self {
        BlockSums {
            sums: Vec::new(),
            cur: Xxh3::new(),
            filled: 0,
        }
    }

    fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let n = (BLOCK - self.filled).min(data.len());
            self.cur.update(&data[..n]);
            self.filled += n;
            data = &data[n..];
            if self.filled == BLOCK {
                self.sums.push(self.cur.digest());
                self.cur.reset();
                self.filled = 0;
            }
        }
    }

    fn finish(mut self) -> Vec<u64> {
        if self.filled > 0 {
            self.sums.push(self.cur.digest());
        }
        self.sums
    }
}

/// A [`BLOCK`]-sized buffer aligned for `O_DIRECT`, carved out of a plain vector.
struct Aligned {
    raw: Vec<u8>,
    start: usize,
}

impl Aligned {
    fn new() -> Self {
        let raw = vec![0u8; BLOCK + ALIGN];
        let addr = raw.as_ptr() as usize;
        let start = (ALIGN - addr % ALIGN) % ALIGN;
        Aligned { raw, start }
    }

    fn bytes(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + BLOCK]
    }
}

enum ReadBackError {
    Io(io::Error),
    Differs { offset: u64 },
}

/// Reads `path` back from the disk (`direct`: with `O_DIRECT`; otherwise after dropping its
/// cached pages) on a reader thread and compares each block with its checksum here.
fn read_back(
    path: &Path,
    sums: &[u64],
    size: u64,
    direct: bool,
) -> std::result::Result<(), ReadBackError> {
    let mut opts = OpenOptions::new();
    opts.read(true);
    if direct {
        opts.custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32);
    }
    let file = opts.open(path).map_err(ReadBackError::Io)?;
    if !direct {
        rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed)
            .map_err(|e| ReadBackError::Io(e.into()))?;
    }
    let (full_tx, full) = sync_channel::<io::Result<(Aligned, usize)>>(1);
    let (free, free_rx) = sync_channel::<Aligned>(IN_FLIGHT);
    for _ in 0..IN_FLIGHT {
        let _ = free.send(Aligned::new());
    }
    std::thread::scope(|s| {
        s.spawn(move || read_blocks(&file, free_rx, full_tx));
        // Both channel ends are moved in: when the comparison stops early, the reader's next
        // send or receive fails and it ends too.
        compare_blocks(sums, size, full, free)
    })
}

/// The reader thread: every block of the file in order, into the free buffers.
fn read_blocks(
    file: &File,
    free: Receiver<Aligned>,
    full: SyncSender<io::Result<(Aligned, usize)>>,
) {
    let mut offset = 0u64;
    while let Ok(mut buf) = free.recv() {
        let got = read_full_at(file, buf.bytes(), offset);
        let n = got.as_ref().map(|n| *n).unwrap_or(0);
        let last = got.is_err() || n < BLOCK;
        if full.send(got.map(|n| (buf, n))).is_err() || last {
            return;
        }
        offset += n as u64;
    }
}

/// Compares the blocks the reader delivers with `sums`, and the total length with `size`.
fn compare_blocks(
    sums: &[u64],
    size: u64,
    full: Receiver<io::Result<(Aligned, usize)>>,
    free: SyncSender<Aligned>,
) -> std::result::Result<(), ReadBackError> {
    let mut offset = 0u64;
    for (k, want) in sums.iter().enumerate() {
        let (mut buf, n) = match full.recv() {
            Ok(r) => r.map_err(ReadBackError::Io)?,
            Err(_) => return Err(ReadBackError::Differs { offset }),
        };
        let expected_len = (size - k as u64 * BLOCK as u64).min(BLOCK as u64) as usize;
        if n != expected_len || xxhash_rust::xxh3::xxh3_64(&buf.bytes()[..n]) != *want {
            return Err(ReadBackError::Differs { offset });
        }
        offset += n as u64;
        let _ = free.send(buf);
    }
    Ok(())
}

/// Fills `buf` from `reader` as far as it goes; returns the bytes read (less at the end).
fn read_full(reader: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match reader.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// [`read_full`] at a file offset.
fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], offset + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn remove_if_exists(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(BootError::io(path, "remove", e)),
    }
}

/// Removes the temporary files of `name` in `dir` other than `keep`.
fn remove_other_temps(dir: &Path, name: &str, keep: &Path) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| BootError::io(dir, "list", e))?;
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        if is_temp_of(&file, name) && entry.path() != keep {
            remove_if_exists(&entry.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content(len: usize) -> Vec<u8> {
        (0..len as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
            .collect()
    }

    fn expected(data: &[u8]) -> Expected {
        Expected {
            sha256: Sha256::of(data),
            size: data.len() as u64,
        }
    }

    #[test]
    fn writes_verifies_and_installs_in_pieces_of_any_size() {
        let dir = tempfile::tempdir().expect("test step");
        let data = content(2 * BLOCK + 12_345);
        let mut sink = ImageSink::open(dir.path(), "system.squashfs", Some(expected(&data)))
            .expect("test step");
        for piece in data.chunks(300_001) {
            sink.write(piece).expect("test step");
        }
        let f = sink
            .sync()
            .expect("test step")
            .verify()
            .expect("test step")
            .install()
            .expect("test step");
        assert_eq!(f.sha256, Sha256::of(&data));
        assert_eq!(
            std::fs::read(dir.path().join("system.squashfs")).expect("test step"),
            data
        );
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .expect("test step")
            .flatten()
            .collect();
        assert_eq!(left.len(), 1, "temporary file left");
    }

    #[test]
    fn resumes_from_the_temporary_file_of_the_same_content() {
        let dir = tempfile::tempdir().expect("test step");
        let data = content(BLOCK + 5000);
        let exp = expected(&data);
        let mut sink = ImageSink::open(dir.path(), "x", Some(exp)).expect("test step");
        sink.write(&data[..BLOCK + 100]).expect("test step");
        drop(sink);
        let mut sink = ImageSink::open(dir.path(), "x", Some(exp)).expect("test step");
        assert_eq!(sink.held(), BLOCK as u64 + 100);
        sink.write(&data[BLOCK + 100..]).expect("test step");
        sink.sync()
            .expect("test step")
            .verify()
            .expect("test step")
            .install()
            .expect("test step");
        assert_eq!(
            std::fs::read(dir.path().join("x")).expect("test step"),
            data
        );
    }

    #[test]
    fn a_temporary_file_of_other_content_is_removed() {
        let dir = tempfile::tempdir().expect("test step");
        let old = content(1000);
        let mut sink = ImageSink::open(dir.path(), "x", Some(expected(&old))).expect("test step");
        sink.write(&old[..500]).expect("test step");
        let old_temp = sink.temp_path().to_owned();
        drop(sink);
        let new = content(2000);
        let sink = ImageSink::open(dir.path(), "x", Some(expected(&new))).expect("test step");
        assert_eq!(sink.held(), 0);
        assert!(!old_temp.exists());
    }

    #[test]
    fn wrong_content_is_refused_and_its_temporary_file_removed() {
        let dir = tempfile::tempdir().expect("test step");
        let data = content(10_000);
        let mut sink = ImageSink::open(dir.path(), "x", Some(expected(&data))).expect("test step");
        let mut bad = data.clone();
        bad[5] ^= 1;
        sink.write(&bad).expect("test step");
        let temp = sink.temp_path().to_owned();
        let err = sink.sync().err().expect("mismatch");
        assert!(matches!(err, BootError::HashMismatch { .. }), "{err}");
        assert!(!temp.exists());
    }

    #[test]
    fn a_longer_stream_is_refused_when_it_passes_the_size() {
        let dir = tempfile::tempdir().expect("test step");
        let data = content(10_000);
        let mut sink = ImageSink::open(dir.path(), "x", Some(expected(&data))).expect("test step");
        sink.write(&data).expect("test step");
        let err = sink.write(b"more").expect_err("too long");
        assert!(matches!(err, BootError::SizeMismatch { .. }), "{err}");
    }

    #[test]
    fn the_read_back_catches_a_change_on_the_disk() {
        let dir = tempfile::tempdir().expect("test step");
        let data = content(BLOCK + 777);
        let mut sink = ImageSink::open(dir.path(), "x", Some(expected(&data))).expect("test step");
        sink.write(&data).expect("test step");
        let synced = sink.sync().expect("test step");
        let f = OpenOptions::new()
            .write(true)
            .open(synced.temp_path())
            .expect("test step");
        f.write_at(b"!", BLOCK as u64 + 3).expect("test step");
        f.sync_all().expect("test step");
        let temp = synced.temp_path().to_owned();
        let err = synced.verify().err().expect("caught");
        assert!(
            matches!(err, BootError::ReadBack { offset, .. } if offset == BLOCK as u64),
            "{err}"
        );
        assert!(!temp.exists());
    }

    #[test]
    fn the_read_back_stops_at_the_first_changed_block_of_many() {
        let dir = tempfile::tempdir().expect("test step");
        let data = content(5 * BLOCK + 1);
        let mut sink = ImageSink::open(dir.path(), "x", Some(expected(&data))).expect("test step");
        sink.write(&data).expect("test step");
        let synced = sink.sync().expect("test step");
        let f = OpenOptions::new()
            .write(true)
            .open(synced.temp_path())
            .expect("test step");
        f.write_at(&[data[10] ^ 1], 10).expect("test step");
        f.sync_all().expect("test step");
        let err = synced.verify().err().expect("caught");
        assert!(
            matches!(err, BootError::ReadBack { offset: 0, .. }),
            "{err}"
        );
    }

    #[test]
    fn temp_names_are_recognised() {
        assert!(is_temp_of(
            ".system.squashfs.0123456789abcdef.tmp",
            "system.squashfs"
        ));
        assert!(is_temp_of(".vmlinuz.copy.tmp", "vmlinuz"));
        assert!(is_temp_of(".vmlinuz.qx-new", "vmlinuz"));
        assert!(!is_temp_of("vmlinuz", "vmlinuz"));
        assert!(!is_temp_of(".initramfs.copy.tmp", "vmlinuz"));
    }
}
