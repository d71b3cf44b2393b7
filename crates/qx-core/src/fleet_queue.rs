//! The host's durable queue of fleet events (docs/spec.md §9): what happened on the host, kept
//! until the update server has stored it. The agent and the A/B boot commands (`qx-update ab
//! boot-check`, `ab verify`) record into it; the agent sends it after each check-in and each
//! apply and forgets what the server acknowledged.
//!
//! Layout, under the agent's state directory (`/data/updates/fleet/`):
//! - `events.jsonl`: one [`Event`] per line, in sequence order. Appended and fsynced; rewritten
//!   (temporary file + rename) only when events are acknowledged or dropped, or when a torn
//!   last line (a power cut during an append) has to go;
//! - `seq`: the highest sequence number handed out when the file was last rewritten; the next
//!   event takes one more than the highest of this and the file's events, so the sequence only
//!   grows, also across acknowledgements and crashes;
//! - `lock`: `flock`ed by every operation, so that the daemon, a CLI apply and a boot command
//!   never interleave.
//!
//! Bounded ([`QueueLimits`]: 1,000 events or 1 MiB by default). When an event does not fit,
//! the oldest events are dropped and one `dropped` event saying how many were lost is queued
//! before it (it takes the next sequence number). Delivery is at least once: events are
//! removed only after the server named a `last_seq` at or above them, so a crash between a send
//! and its acknowledgement sends them again, and the server counts them once by `(host, seq)`.

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::fleet::{Event, EventType, MAX_MESSAGE};
use crate::fs::{append_line, create_dir_all_durable, under_root, write_atomic, FsError};

/// Where the queue lives on a host (under the agent's root).
pub const QUEUE_DIR: &str = "/data/updates/fleet";
const EVENTS_FILE: &str = "events.jsonl";
const SEQ_FILE: &str = "seq";
const LOCK_FILE: &str = "lock";

/// Room kept for the `dropped` event when older events are dropped.
const DROPPED_RESERVE: usize = 512;

/// How much the queue holds at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// The most events (the `dropped` event counts as one).
    pub max_events: usize,
    /// The most bytes of `events.jsonl`.
    pub max_bytes: usize,
}

impl Default for QueueLimits {
    fn default() -> Self {
        Self {
            max_events: 1000,
            max_bytes: 1 << 20,
        }
    }
}

/// Why the queue could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("fleet event queue: {0}")]
    Fs(#[from] FsError),
    #[error("fleet event queue {}: cannot lock it: {source}; check the permissions of {}", path.display(), path.display())]
    Lock { path: PathBuf, source: io::Error },
}

/// The queue of one host: see the module documentation.
#[derive(Debug, Clone)]
pub struct EventQueue {
    dir: PathBuf,
    limits: QueueLimits,
}

/// The queue as read from disk.
struct Loaded {
    /// Each event with the length of its line (newline included).
    events: Vec<(Event, usize)>,
    /// False when a line was unreadable or the file does not end with a newline: the next
    /// write rewrites the file instead of appending.
    clean: bool,
    /// The `seq` file.
    stored_seq: u64,
}

impl Loaded {
    fn bytes(&self) -> usize {
        self.events.iter().map(|(_, n)| n).sum()
    }

    fn highest(&self) -> u64 {
        self.events
            .iter()
            .map(|(e, _)| e.seq)
            .max()
            .unwrap_or(0)
            .max(self.stored_seq)
    }
}

impl EventQueue {
    /// The queue of the host below `root` (`/data/updates/fleet`), default limits.
    pub fn under_root(root: &Path) -> Self {
        Self::in_dir(
            under_root(root, Path::new(QUEUE_DIR)),
            QueueLimits::default(),
        )
    }

    /// A queue in `dir` with `limits`.
    pub fn in_dir(dir: PathBuf, limits: QueueLimits) -> Self {
        Self { dir, limits }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn limits(&self) -> QueueLimits {
        self.limits
    }

    fn events_path(&self) -> PathBuf {
        self.dir.join(EVENTS_FILE)
    }

    fn seq_path(&self) -> PathBuf {
        self.dir.join(SEQ_FILE)
    }

    /// Queues `event` (its `seq` is replaced by the next number, a long message is cut to
    /// [`MAX_MESSAGE`] bytes) and returns its sequence number. Drops the oldest events, and
    /// queues a `dropped` event, when it does not fit.
    pub fn record(&self, mut event: Event) -> Result<u64, QueueError> {
        let _lock = self.lock()?;
        let mut q = self.load()?;
        let mut seq = q.highest() + 1;
        event.message = event.message.map(|m| cut_message(&m));
        event.seq = seq;
        let mut line = to_line(&event);
        let fits = q.events.len() < self.limits.max_events
            && q.bytes() + line.len() < self.limits.max_bytes;
        if fits && q.clean {
            append_line(&self.events_path(), &line)?;
            return Ok(seq);
        }
        if !fits {
            if let Some(dropped) = self.make_room(&mut q, line.len() + 1, &event, seq) {
                let n = to_line(&dropped).len() + 1;
                q.events.push((dropped, n));
                seq += 1;
                event.seq = seq;
                line = to_line(&event);
            }
        }
        q.events.push((event, line.len() + 1));
        self.rewrite(&q.events)?;
        Ok(seq)
    }

    /// Drops the oldest events until `needed` bytes, one event and the `dropped` event fit;
    /// the `dropped` event (sequence number `seq`) when anything was dropped.
    fn make_room(&self, q: &mut Loaded, needed: usize, next: &Event, seq: u64) -> Option<Event> {
        let mut lost = 0u64;
        let mut dropped_events = 0usize;
        let mut bytes = q.bytes();
        while dropped_events < q.events.len()
            && (q.events.len() - dropped_events + 2 > self.limits.max_events
                || bytes + needed + DROPPED_RESERVE > self.limits.max_bytes)
        {
            let (old, n) = &q.events[dropped_events];
            // A `dropped` event that is itself dropped passes its count on.
            lost += match old.kind {
                EventType::Dropped => old.count.unwrap_or(0),
                _ => 1,
            };
            bytes -= n;
            dropped_events += 1;
        }
        q.events.drain(..dropped_events);
        (lost > 0).then(|| Event {
            seq,
            kind: EventType::Dropped,
            time: next.time.clone(),
            version: None,
            component: None,
            stage: None,
            exit_code: None,
            message: Some(format!(
                "the host's event queue was full (at most {} events or {} bytes): {lost} older event(s) were dropped",
                self.limits.max_events, self.limits.max_bytes
            )),
            count: Some(lost),
        })
    }

    /// Up to `max` queued events, oldest first.
    pub fn pending(&self, max: usize) -> Result<Vec<Event>, QueueError> {
        let _lock = self.lock()?;
        let q = self.load()?;
        Ok(q.events.into_iter().take(max).map(|(e, _)| e).collect())
    }

    /// How many events are queued.
    pub fn len(&self) -> Result<usize, QueueError> {
        let _lock = self.lock()?;
        Ok(self.load()?.events.len())
    }

    pub fn is_empty(&self) -> Result<bool, QueueError> {
        Ok(self.len()? == 0)
    }

    /// The highest sequence number handed out so far (0: none).
    pub fn last_seq(&self) -> Result<u64, QueueError> {
        let _lock = self.lock()?;
        Ok(self.load()?.highest())
    }

    /// The server holds every event up to `last_seq`: forget them. Returns how many were
    /// removed. The sequence never goes below `last_seq` afterwards (a host whose state was
    /// wiped, but whose identity was kept, continues above what the server has).
    pub fn acknowledge(&self, last_seq: u64) -> Result<usize, QueueError> {
        let _lock = self.lock()?;
        let q = self.load()?;
        let highest = q.highest().max(last_seq);
        if highest != q.stored_seq {
            // First the counter, then the events: a crash in between resends, never reuses.
            write_atomic(&self.seq_path(), format!("{highest}\n").as_bytes())?;
        }
        let before = q.events.len();
        let keep: Vec<(Event, usize)> = q
            .events
            .into_iter()
            .filter(|(e, _)| e.seq > last_seq)
            .collect();
        let removed = before - keep.len();
        if removed > 0 || !q.clean {
            self.rewrite(&keep)?;
        }
        Ok(removed)
    }

    fn rewrite(&self, events: &[(Event, usize)]) -> Result<(), QueueError> {
        let mut text = String::new();
        for (e, _) in events {
            text.push_str(&to_line(e));
            text.push('\n');
        }
        write_atomic(&self.events_path(), text.as_bytes())?;
        Ok(())
    }

    fn load(&self) -> Result<Loaded, QueueError> {
        let path = self.events_path();
        let mut text = String::new();
        match std::fs::File::open(&path) {
            Ok(mut f) => {
                // Bounded: a file grown past the limit by hand is read up to twice the limit.
                let cap = (self.limits.max_bytes as u64).saturating_mul(2);
                let mut bytes = Vec::new();
                f.by_ref()
                    .take(cap)
                    .read_to_end(&mut bytes)
                    .map_err(|e| FsError::new("read", &path, e))?;
                text = String::from_utf8_lossy(&bytes).into_owned();
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(FsError::new("open", &path, e).into()),
        }
        let mut clean = text.is_empty() || text.ends_with('\n');
        let mut events = Vec::new();
        for line in text.lines() {
            match serde_json::from_str::<Event>(line) {
                // Sequence order is kept: a line out of order is a damaged file.
                Ok(e)
                    if events
                        .last()
                        .is_none_or(|(l, _): &(Event, usize)| l.seq < e.seq) =>
                {
                    events.push((e, line.len() + 1))
                }
                _ => clean = false,
            }
        }
        let stored_seq = std::fs::read_to_string(self.seq_path())
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        Ok(Loaded {
            events,
            clean,
            stored_seq,
        })
    }

    fn lock(&self) -> Result<std::fs::File, QueueError> {
        let path = self.dir.join(LOCK_FILE);
        let lock_err = |source| QueueError::Lock {
            path: path.clone(),
            source,
        };
        create_dir_all_durable(&self.dir)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(lock_err)?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| lock_err(e.into()))?;
        Ok(file)
    }
}

fn to_line(event: &Event) -> String {
    // An event is strings, numbers and plain enums: serialising it cannot fail.
    serde_json::to_string(event).unwrap_or_default()
}

/// `text` cut to at most [`MAX_MESSAGE`] bytes at a character boundary, marked with `…` when
/// cut.
pub fn cut_message(text: &str) -> String {
    const MARK: &str = "…";
    if text.len() <= MAX_MESSAGE {
        return text.to_owned();
    }
    let mut end = MAX_MESSAGE - MARK.len();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{MARK}", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: EventType, version: &str) -> Event {
        Event {
            seq: 0,
            kind,
            time: "2026-12-01T10:00:00Z".into(),
            version: Some(version.into()),
            component: None,
            stage: None,
            exit_code: None,
            message: None,
            count: None,
        }
    }

    fn queue(dir: &Path, max_events: usize, max_bytes: usize) -> EventQueue {
        EventQueue::in_dir(
            dir.join("fleet"),
            QueueLimits {
                max_events,
                max_bytes,
            },
        )
    }

    #[test]
    fn sequence_numbers_grow_by_one_and_survive_acknowledgement() {
        let dir = tempfile::tempdir().expect("tempdir");
        let q = queue(dir.path(), 100, 1 << 20);
        assert_eq!(q.last_seq().expect("seq"), 0);
        for want in 1..=3 {
            assert_eq!(
                q.record(event(EventType::Offered, "1.0.0")).expect("rec"),
                want
            );
        }
        let seqs: Vec<u64> = q.pending(10).expect("p").iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![1, 2, 3]);
        assert_eq!(q.acknowledge(2).expect("ack"), 2);
        assert_eq!(q.pending(10).expect("p").len(), 1);
        assert_eq!(q.acknowledge(3).expect("ack"), 1);
        assert!(q.is_empty().expect("empty"));
        // The counter outlives the events it numbered.
        assert_eq!(
            q.record(event(EventType::Installed, "1.0.0")).expect("r"),
            4
        );
        // Reopened: the same state.
        let again = queue(dir.path(), 100, 1 << 20);
        assert_eq!(again.last_seq().expect("seq"), 4);
    }

    #[test]
    fn a_full_queue_drops_the_oldest_and_counts_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let q = queue(dir.path(), 5, 1 << 20);
        for _ in 0..5 {
            q.record(event(EventType::Offered, "1.0.0")).expect("rec");
        }
        // The sixth does not fit: the oldest two go (room for `dropped` and the new one).
        let seq = q.record(event(EventType::Installed, "2.0.0")).expect("rec");
        let all = q.pending(100).expect("p");
        assert_eq!(all.len(), 5, "{all:?}");
        let kinds: Vec<(u64, EventType)> = all.iter().map(|e| (e.seq, e.kind)).collect();
        assert_eq!(
            kinds,
            vec![
                (3, EventType::Offered),
                (4, EventType::Offered),
                (5, EventType::Offered),
                (6, EventType::Dropped),
                (7, EventType::Installed),
            ]
        );
        assert_eq!(seq, 7);
        assert_eq!(all[3].count, Some(2));
        // Dropping a `dropped` event carries its count into the next one.
        for _ in 0..4 {
            q.record(event(EventType::Offered, "3.0.0")).expect("rec");
        }
        let all = q.pending(100).expect("p");
        assert!(all.len() <= 5, "{all:?}");
        let lost: u64 = all
            .iter()
            .filter(|e| e.kind == EventType::Dropped)
            .map(|e| e.count.unwrap_or(0))
            .sum();
        let real = all.iter().filter(|e| e.kind != EventType::Dropped).count() as u64;
        // 5 + 1 + 4 real events were recorded: every one is either queued or counted lost.
        assert_eq!(lost + real, 10, "{all:?}");
        let seqs: Vec<u64> = all.iter().map(|e| e.seq).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    }

    #[test]
    fn the_byte_bound_holds_with_long_messages() {
        let dir = tempfile::tempdir().expect("tempdir");
        let q = queue(dir.path(), 1000, 20_000);
        for _ in 0..20 {
            let mut e = event(EventType::Failed, "1.0.0");
            e.message = Some("x".repeat(10_000));
            q.record(e).expect("rec");
        }
        let size = std::fs::metadata(dir.path().join("fleet/events.jsonl"))
            .expect("stat")
            .len();
        assert!(size <= 20_000, "{size}");
        let all = q.pending(100).expect("p");
        let last = all.last().expect("last");
        assert_eq!(last.seq, q.last_seq().expect("seq"));
        assert!(last.message.as_ref().expect("m").len() <= MAX_MESSAGE);
        assert!(all.iter().any(|e| e.kind == EventType::Dropped), "{all:?}");
    }

    #[test]
    fn a_torn_last_line_is_dropped_and_the_file_repaired() {
        let dir = tempfile::tempdir().expect("tempdir");
        let q = queue(dir.path(), 100, 1 << 20);
        q.record(event(EventType::Offered, "1.0.0")).expect("rec");
        let path = dir.path().join("fleet/events.jsonl");
        let mut text = std::fs::read_to_string(&path).expect("read");
        text.push_str("{\"seq\":2,\"ty");
        std::fs::write(&path, text).expect("tear");
        assert_eq!(
            q.record(event(EventType::Installed, "1.0.0")).expect("r"),
            2
        );
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn an_acknowledgement_above_the_counter_moves_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let q = queue(dir.path(), 100, 1 << 20);
        q.record(event(EventType::Offered, "1.0.0")).expect("rec");
        assert_eq!(q.acknowledge(40).expect("ack"), 1);
        assert_eq!(q.record(event(EventType::Offered, "1.0.0")).expect("r"), 41);
    }

    #[test]
    fn long_messages_are_cut_at_a_character_boundary() {
        let long = "é".repeat(MAX_MESSAGE);
        let cut = cut_message(&long);
        assert!(cut.len() <= MAX_MESSAGE);
        assert!(cut.ends_with('…'));
        assert_eq!(cut_message("short"), "short");
    }
}
