//! The on-disk history log behind `--history-dir` (SPEC §10): append-only,
//! checksummed records in segment files, so that every message acknowledged
//! to its publisher survives a restart, SIGTERM or SIGKILL.
//!
//! A record is `len: u32 LE`, `check: 8 bytes`, then `len` bytes of body:
//! `channel_len: u8`, channel, `epoch_len: u8`, epoch, `offset: u64 LE`,
//! `ts_ms: u64 LE`, and the serialised `message` frame (UTF-8, the rest).
//! `check` is the first 8 bytes of SHA-256 over the length and the body
//! (SHA-256 is already in the binary for HS256; a torn or flipped record is
//! what it must catch, not an adversary). [`encode`] and [`decode`] are pure
//! and fuzzed; [`decode`] returns the longest valid prefix, and [`Log::open`]
//! cuts a file back to it: a torn tail is dropped and reported, the records
//! before it are kept, and content never stops the start.
//!
//! Files in the directory are `history-<seq>.log` (appended to) and
//! `history-<seq>.base` (written by [`Log::compact`]: the retained records
//! only). A `.base` supersedes every file with a lower sequence number, so a
//! crash in the middle of a compaction leaves either the old files or the
//! new base, never both counted. `*.tmp` files are unfinished compactions.
//!
//! Writes: [`Log::append`] hands the record to the kernel with one `write`
//! before the publisher is acknowledged (that survives the process being
//! killed); [`Log::sync`] or [`Log::take_sync_job`] makes it survive power
//! loss, at most once per interval the shell chooses, so a steady stream of
//! small messages costs one flash write per interval rather than one per
//! message.
//!
//! ```
//! use tessera::history::disk::{decode, encode, RecordRef};
//! let mut bytes = Vec::new();
//! encode(RecordRef { channel: "ops", epoch: "e1", offset: 7, ts_ms: 5, frame: "{}" }, &mut bytes);
//! let d = decode(&bytes);
//! assert_eq!((d.records.len(), d.valid_len, d.problem), (1, bytes.len(), None));
//! assert_eq!(d.records[0].offset, 7);
//! ```

use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// Bytes before a record's body: its length and its checksum.
const HEAD: usize = 4 + 8;
/// The largest body accepted: a frame is at most `--max-message-bytes`
/// plus its envelope; anything longer is damage, not a record.
pub const MAX_BODY: usize = 64 << 20;
/// A `.log` segment is closed and a new one started past this size.
pub const SEGMENT_BYTES: u64 = 4 << 20;
/// Longest channel name and epoch a record may carry.
const MAX_NAME: usize = 64;

/// One retained message as stored on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub channel: String,
    pub epoch: String,
    pub offset: u64,
    pub ts_ms: u64,
    /// The serialised `message` frame exactly as sent to subscribers. Empty
    /// for a *channel marker*: the channel's epoch and last offset without a
    /// message (written by compaction for a channel with nothing retained).
    pub frame: String,
}

impl Record {
    /// The borrowed form of this record.
    pub fn as_ref(&self) -> RecordRef<'_> {
        RecordRef {
            channel: &self.channel,
            epoch: &self.epoch,
            offset: self.offset,
            ts_ms: self.ts_ms,
            frame: &self.frame,
        }
    }

    /// Whether this is a channel marker rather than a message.
    pub fn is_marker(&self) -> bool {
        self.frame.is_empty()
    }
}

/// A record by reference, for appending without copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    pub channel: &'a str,
    pub epoch: &'a str,
    pub offset: u64,
    pub ts_ms: u64,
    pub frame: &'a str,
}

fn check(len: &[u8], body: &[u8]) -> [u8; 8] {
    let mut h = Sha256::new();
    h.update(len);
    h.update(body);
    let d = h.finalize();
    let mut out = [0u8; 8];
    out.copy_from_slice(&d[..8]);
    out
}

/// Appends one encoded record to `out`. Names longer than 64 bytes are
/// the caller's bug (channel names are at most 64 characters, epochs 32);
/// they are cut to 64 bytes at a character boundary rather than written as
/// something [`decode`] would refuse.
pub fn encode(rec: RecordRef<'_>, out: &mut Vec<u8>) {
    let channel = cut(rec.channel);
    let epoch = cut(rec.epoch);
    let body_len = 1 + channel.len() + 1 + epoch.len() + 16 + rec.frame.len();
    let start = out.len();
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&[0u8; 8]);
    out.push(channel.len() as u8);
    out.extend_from_slice(channel.as_bytes());
    out.push(epoch.len() as u8);
    out.extend_from_slice(epoch.as_bytes());
    out.extend_from_slice(&rec.offset.to_le_bytes());
    out.extend_from_slice(&rec.ts_ms.to_le_bytes());
    out.extend_from_slice(rec.frame.as_bytes());
    let sum = check(&out[start..start + 4], &out[start + HEAD..]);
    out[start + 4..start + HEAD].copy_from_slice(&sum);
}

fn cut(s: &str) -> &str {
    if s.len() <= MAX_NAME {
        return s;
    }
    let mut end = MAX_NAME;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// What [`decode`] could read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// The records of the valid prefix, in order.
    pub records: Vec<Record>,
    /// Length of the valid prefix: every byte after it is a torn or damaged
    /// tail.
    pub valid_len: usize,
    /// Why decoding stopped before the end, if it did.
    pub problem: Option<&'static str>,
}

/// Decodes the longest valid prefix of `bytes`.
pub fn decode(bytes: &[u8]) -> Decoded {
    let mut records = Vec::new();
    let mut at = 0;
    let problem = loop {
        let rest = &bytes[at..];
        if rest.is_empty() {
            break None;
        }
        match decode_one(rest) {
            Ok((rec, used)) => {
                records.push(rec);
                at += used;
            }
            Err(p) => break Some(p),
        }
    };
    Decoded {
        records,
        valid_len: at,
        problem,
    }
}

fn decode_one(b: &[u8]) -> Result<(Record, usize), &'static str> {
    let len_bytes = b.get(..4).ok_or("torn record head")?;
    let mut len4 = [0u8; 4];
    len4.copy_from_slice(len_bytes);
    let len = u32::from_le_bytes(len4) as usize;
    if len > MAX_BODY {
        return Err("record length out of range");
    }
    let sum = b.get(4..HEAD).ok_or("torn record head")?;
    let body = b.get(HEAD..HEAD + len).ok_or("torn record body")?;
    if sum != check(len_bytes, body) {
        return Err("checksum mismatch");
    }
    let mut r = Reader(body);
    let channel = r.name()?;
    let epoch = r.name()?;
    let offset = r.u64()?;
    let ts_ms = r.u64()?;
    let frame = std::str::from_utf8(r.0).map_err(|_| "frame is not UTF-8")?;
    if channel.is_empty() || epoch.is_empty() {
        return Err("empty channel or epoch");
    }
    let rec = Record {
        channel: channel.to_owned(),
        epoch: epoch.to_owned(),
        offset,
        ts_ms,
        frame: frame.to_owned(),
    };
    Ok((rec, HEAD + len))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if self.0.len() < n {
            return Err("record body too short");
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn name(&mut self) -> Result<&'a str, &'static str> {
        let n = *self.take(1)?.first().ok_or("record body too short")? as usize;
        if n > MAX_NAME {
            return Err("name too long");
        }
        std::str::from_utf8(self.take(n)?).map_err(|_| "name is not UTF-8")
    }

    fn u64(&mut self) -> Result<u64, &'static str> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }
}

/// A torn or damaged tail cut at [`Log::open`] (the shell logs it as
/// `history_tail_cut`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cut {
    pub file: PathBuf,
    pub kept_bytes: u64,
    pub dropped_bytes: u64,
    pub reason: &'static str,
}

/// What [`Log::open`] found.
pub struct Opened {
    pub log: Log,
    /// Every record kept, in append order (per channel: offsets ascending).
    pub records: Vec<Record>,
    pub cuts: Vec<Cut>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Log,
    Base,
}

/// A file name of ours: `history-<16 hex digits>.log|.base`.
fn parse_name(name: &str) -> Option<(u64, Kind)> {
    let rest = name.strip_prefix("history-")?;
    let (seq, kind) = if let Some(s) = rest.strip_suffix(".log") {
        (s, Kind::Log)
    } else {
        (rest.strip_suffix(".base")?, Kind::Base)
    };
    if seq.len() != 16 || !seq.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some((u64::from_str_radix(seq, 16).ok()?, kind))
}

fn file_name(seq: u64, kind: Kind) -> String {
    match kind {
        Kind::Log => format!("history-{seq:016x}.log"),
        Kind::Base => format!("history-{seq:016x}.base"),
    }
}

/// The durable history log of one `--history-dir`.
pub struct Log {
    dir: PathBuf,
    /// The file appended to, its sequence number and length.
    file: File,
    path: PathBuf,
    seq: u64,
    len: u64,
    /// Bytes of the other live files (older segments, the base).
    older_bytes: u64,
    /// Older live files, by sequence number (deleted at compaction).
    older: Vec<PathBuf>,
    unsynced: bool,
    scratch: Vec<u8>,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log")
            .field("dir", &self.dir)
            .field("seq", &self.seq)
            .field("disk_bytes", &self.disk_bytes())
            .finish()
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn open_append(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new().append(true).create(true).mode(0o600).open(path)
}

impl Log {
    /// Opens `dir` (created if missing), reads every live file in order and
    /// cuts damaged tails. Fails only on I/O errors (permissions, a full
    /// disk while cutting), never because of what the files contain.
    pub fn open(dir: &Path) -> io::Result<Opened> {
        std::fs::create_dir_all(dir)?;
        let mut found: Vec<(u64, Kind, PathBuf)> = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with("history-") && name.ends_with(".tmp") {
                // An unfinished compaction: the files it would replace are intact.
                std::fs::remove_file(entry.path())?;
                continue;
            }
            if let Some((seq, kind)) = parse_name(name) {
                found.push((seq, kind, entry.path()));
            }
        }
        found.sort_by_key(|(seq, _, _)| *seq);
        // The newest base supersedes everything older than it.
        if let Some(base) = found.iter().rposition(|(_, k, _)| *k == Kind::Base) {
            for (_, _, path) in found.drain(..base) {
                std::fs::remove_file(path)?;
            }
        }

        let mut records = Vec::new();
        let mut cuts = Vec::new();
        let mut sizes = Vec::new();
        for (_, _, path) in &found {
            let mut bytes = Vec::new();
            File::open(path)?.read_to_end(&mut bytes)?;
            let d = decode(&bytes);
            if d.valid_len < bytes.len() {
                let f = OpenOptions::new().write(true).open(path)?;
                f.set_len(d.valid_len as u64)?;
                f.sync_all()?;
                cuts.push(Cut {
                    file: path.clone(),
                    kept_bytes: d.valid_len as u64,
                    dropped_bytes: (bytes.len() - d.valid_len) as u64,
                    reason: d.problem.unwrap_or("damaged tail"),
                });
            }
            sizes.push(d.valid_len as u64);
            records.extend(d.records);
        }

        // Append to the last file while it has room, else start a new one.
        let mut older: Vec<PathBuf> = found.iter().map(|(_, _, p)| p.clone()).collect();
        let mut older_bytes: u64 = sizes.iter().sum();
        let (seq, path, len) = match (found.last(), sizes.last()) {
            (Some((seq, _, p)), Some(&len)) if len < SEGMENT_BYTES => {
                older.pop();
                older_bytes -= len;
                (*seq, p.clone(), len)
            }
            (last, _) => {
                let seq = last.map_or(0, |(s, _, _)| s + 1);
                (seq, dir.join(file_name(seq, Kind::Log)), 0)
            }
        };
        let file = open_append(&path)?;
        sync_dir(dir)?;
        let log = Log {
            dir: dir.to_path_buf(),
            file,
            path,
            seq,
            len,
            older_bytes,
            older,
            unsynced: false,
            scratch: Vec::new(),
        };
        Ok(Opened { log, records, cuts })
    }

    /// Appends one record with a single `write` before returning: once this
    /// returns Ok, the record survives the process being killed. A failed
    /// write is undone (the file is cut back) so that later records are not
    /// stranded behind a torn one.
    pub fn append(&mut self, rec: RecordRef<'_>) -> io::Result<()> {
        if self.len >= SEGMENT_BYTES {
            self.rotate()?;
        }
        self.scratch.clear();
        encode(rec, &mut self.scratch);
        if let Err(e) = self.file.write_all(&self.scratch) {
            // Best effort: if even this fails, the next open cuts the tail.
            let _ = self.file.set_len(self.len);
            return Err(e);
        }
        self.len += self.scratch.len() as u64;
        self.unsynced = true;
        if self.scratch.capacity() > 64 << 10 {
            self.scratch = Vec::new();
        }
        Ok(())
    }

    /// Closes the current segment (synced) and starts the next one.
    fn rotate(&mut self) -> io::Result<()> {
        self.file.sync_data()?;
        self.unsynced = false;
        let seq = self.seq + 1;
        let path = self.dir.join(file_name(seq, Kind::Log));
        let file = open_append(&path)?;
        sync_dir(&self.dir)?;
        self.older.push(std::mem::replace(&mut self.path, path));
        self.older_bytes += self.len;
        self.file = file;
        self.seq = seq;
        self.len = 0;
        Ok(())
    }

    /// `fdatasync` of what was appended since the last sync, if anything.
    /// Blocking: call it from a timer, not per message.
    pub fn sync(&mut self) -> io::Result<()> {
        if self.unsynced {
            self.file.sync_data()?;
            self.unsynced = false;
        }
        Ok(())
    }

    /// For a sync off the event loop: a second handle to the current file
    /// when something is unsynced (call `sync_data` on it, e.g. in
    /// `smol::unblock`). Marks the data synced; if the handle cannot be
    /// made, syncs here instead.
    pub fn take_sync_job(&mut self) -> Option<File> {
        if !self.unsynced {
            return None;
        }
        match self.file.try_clone() {
            Ok(f) => {
                self.unsynced = false;
                Some(f)
            }
            Err(_) => {
                let _ = self.sync();
                None
            }
        }
    }

    /// Whether anything appended is not yet synced.
    pub fn has_unsynced(&self) -> bool {
        self.unsynced
    }

    /// Bytes the log occupies now.
    pub fn disk_bytes(&self) -> u64 {
        self.older_bytes + self.len
    }

    /// True when the log holds much more than the `retained_bytes` history
    /// still keeps (encoded size): over twice that plus one segment.
    pub fn wants_compaction(&self, retained_bytes: u64) -> bool {
        self.disk_bytes() > retained_bytes.saturating_mul(2).saturating_add(SEGMENT_BYTES)
    }

    /// Rewrites the log as exactly `retained`, in order: a new base file is
    /// written under a temporary name, synced, renamed into place (the
    /// commit point), and only then are the older files deleted.
    pub fn compact<'a>(&mut self, retained: impl IntoIterator<Item = RecordRef<'a>>) -> io::Result<()> {
        self.sync()?;
        let seq = self.seq + 1;
        let base = self.dir.join(file_name(seq, Kind::Base));
        let tmp = self.dir.join(format!("history-{seq:016x}.tmp"));
        let mut len = 0u64;
        {
            use std::os::unix::fs::OpenOptionsExt;
            let f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
            let mut w = io::BufWriter::new(f);
            let mut buf = Vec::new();
            for rec in retained {
                buf.clear();
                encode(rec, &mut buf);
                w.write_all(&buf)?;
                len += buf.len() as u64;
            }
            let f = w.into_inner().map_err(|e| e.into_error())?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &base)?;
        sync_dir(&self.dir)?;
        let file = open_append(&base)?;
        let mut old = std::mem::take(&mut self.older);
        old.push(std::mem::replace(&mut self.path, base));
        self.file = file;
        self.seq = seq;
        self.len = len;
        self.older_bytes = 0;
        self.unsynced = false;
        // The base is committed: from here a failure only leaves files that
        // the next open deletes as superseded.
        for p in old {
            std::fs::remove_file(p)?;
        }
        sync_dir(&self.dir)
    }

    /// Bytes `rec` takes on disk (for the retained-bytes count that
    /// [`Log::wants_compaction`] compares against).
    pub fn encoded_len(rec: RecordRef<'_>) -> u64 {
        (HEAD + 1 + cut(rec.channel).len() + 1 + cut(rec.epoch).len() + 16 + rec.frame.len()) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn tmpdir(tag: &str) -> PathBuf {
        static N: AtomicU32 = AtomicU32::new(0);
        let d = std::env::temp_dir().join(format!(
            "tessera-disk-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn rec(channel: &str, offset: u64, frame: &str) -> Record {
        Record {
            channel: channel.into(),
            epoch: "epochA".into(),
            offset,
            ts_ms: offset.wrapping_add(1000),
            frame: frame.into(),
        }
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn codec_round_trip_is_canonical() {
        let recs = [
            rec("ops", 1, r#"{"type":"message"}"#),
            rec("@é", 2, ""),
            rec("x", u64::MAX, "ü"),
        ];
        let mut bytes = Vec::new();
        for r in &recs {
            let before = bytes.len();
            encode(r.as_ref(), &mut bytes);
            assert_eq!(Log::encoded_len(r.as_ref()) as usize, bytes.len() - before);
        }
        let d = decode(&bytes);
        assert_eq!(d.records, recs);
        assert_eq!((d.valid_len, d.problem), (bytes.len(), None));
        let total: u64 = recs.iter().map(|r| Log::encoded_len(r.as_ref())).sum();
        assert_eq!(total as usize, bytes.len());
    }

    #[test]
    fn spec10_torn_tail_keeps_every_record_before_it() {
        let mut bytes = Vec::new();
        for i in 1..=3 {
            encode(rec("ops", i, "{}").as_ref(), &mut bytes);
        }
        let whole = bytes.len();
        encode(rec("ops", 4, "{\"a\":1}").as_ref(), &mut bytes);
        for cut_at in whole + 1..bytes.len() {
            let d = decode(&bytes[..cut_at]);
            assert_eq!(d.records.len(), 3, "cut at {cut_at}");
            assert_eq!(d.valid_len, whole);
            assert!(d.problem.is_some());
        }
    }

    #[test]
    fn spec10_flipped_bit_stops_at_the_damaged_record() {
        let mut bytes = Vec::new();
        encode(rec("ops", 1, "{}").as_ref(), &mut bytes);
        let first = bytes.len();
        encode(rec("ops", 2, "{}").as_ref(), &mut bytes);
        encode(rec("ops", 3, "{}").as_ref(), &mut bytes);
        for i in first..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            let d = decode(&b);
            assert!(d.valid_len >= first && d.records.len() < 3, "flip at {i}");
            assert_eq!(d.records[0], rec("ops", 1, "{}"));
        }
        // A huge length is refused without allocating it.
        let mut b = bytes.clone();
        b[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(&b).problem, Some("record length out of range"));
    }

    #[test]
    fn long_names_are_cut_at_a_char_boundary() {
        let long = "é".repeat(40);
        let mut bytes = Vec::new();
        encode(
            RecordRef {
                channel: &long,
                epoch: "e",
                offset: 1,
                ts_ms: 0,
                frame: "",
            },
            &mut bytes,
        );
        let d = decode(&bytes);
        assert_eq!(d.records[0].channel, "é".repeat(32));
    }

    #[test]
    fn spec10_open_append_reopen_and_cut_a_torn_tail() {
        let dir = tmpdir("reopen");
        let mut o = Log::open(&dir).unwrap();
        assert!(o.records.is_empty() && o.cuts.is_empty());
        for i in 1..=5 {
            o.log.append(rec("ops", i, "{}").as_ref()).unwrap();
        }
        o.log.sync().unwrap();
        let bytes = o.log.disk_bytes();
        drop(o);
        // A torn write: half a record at the end.
        let name = files(&dir).pop().unwrap();
        let path = dir.join(&name);
        let mut extra = Vec::new();
        encode(rec("ops", 6, "{}").as_ref(), &mut extra);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&extra[..extra.len() / 2]).unwrap();
        drop(f);

        let mut o = Log::open(&dir).unwrap();
        assert_eq!(o.records.len(), 5);
        assert_eq!(o.cuts.len(), 1);
        assert_eq!(o.cuts[0].kept_bytes, bytes);
        assert_eq!(o.cuts[0].dropped_bytes, (extra.len() / 2) as u64);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), bytes);
        // Appends after the cut are readable.
        o.log.append(rec("ops", 6, "{}").as_ref()).unwrap();
        drop(o);
        let o = Log::open(&dir).unwrap();
        assert_eq!(
            o.records.iter().map(|r| r.offset).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5, 6]
        );
        assert!(o.cuts.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn garbage_file_is_cut_to_nothing_not_a_refusal() {
        let dir = tmpdir("garbage");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(file_name(3, Kind::Log)), b"not a history log at all").unwrap();
        std::fs::write(dir.join("unrelated.txt"), b"left alone").unwrap();
        let mut o = Log::open(&dir).unwrap();
        assert!(o.records.is_empty());
        assert_eq!(o.cuts.len(), 1);
        o.log.append(rec("c", 1, "1").as_ref()).unwrap();
        drop(o);
        assert_eq!(Log::open(&dir).unwrap().records, vec![rec("c", 1, "1")]);
        assert!(dir.join("unrelated.txt").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn compaction_keeps_exactly_the_retained_records() {
        let dir = tmpdir("compact");
        let mut o = Log::open(&dir).unwrap();
        for i in 1..=100 {
            o.log.append(rec("ops", i, "{\"n\":1}").as_ref()).unwrap();
        }
        let before = o.log.disk_bytes();
        let keep: Vec<Record> = (91..=100).map(|i| rec("ops", i, "{\"n\":1}")).collect();
        let marker = rec("quiet", 7, "");
        let kept_bytes: u64 = keep.iter().map(|r| Log::encoded_len(r.as_ref())).sum();
        o.log
            .compact(keep.iter().map(Record::as_ref).chain([marker.as_ref()]))
            .unwrap();
        assert!(o.log.disk_bytes() < before);
        assert_eq!(o.log.disk_bytes(), kept_bytes + Log::encoded_len(marker.as_ref()));
        o.log.append(rec("ops", 101, "{}").as_ref()).unwrap();
        drop(o);
        assert_eq!(files(&dir).len(), 1);
        let o = Log::open(&dir).unwrap();
        let mut want = keep.clone();
        want.push(marker);
        want.push(rec("ops", 101, "{}"));
        assert_eq!(o.records, want);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_crash_inside_compaction_never_counts_records_twice() {
        let dir = tmpdir("crash");
        let mut o = Log::open(&dir).unwrap();
        for i in 1..=4 {
            o.log.append(rec("ops", i, "{}").as_ref()).unwrap();
        }
        drop(o);
        // Crash before the rename: a leftover temporary file is ignored.
        std::fs::write(dir.join("history-0000000000000001.tmp"), b"partial").unwrap();
        let o = Log::open(&dir).unwrap();
        assert_eq!(o.records.len(), 4);
        drop(o);
        assert!(!dir.join("history-0000000000000001.tmp").exists());
        // Crash after the rename, before the old files were deleted: the
        // base supersedes them.
        let mut base = Vec::new();
        encode(rec("ops", 4, "{}").as_ref(), &mut base);
        std::fs::write(dir.join(file_name(1, Kind::Base)), &base).unwrap();
        let o = Log::open(&dir).unwrap();
        assert_eq!(o.records, vec![rec("ops", 4, "{}")]);
        drop(o);
        assert_eq!(files(&dir), vec![file_name(1, Kind::Base)]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn segments_rotate_and_are_read_in_order() {
        let dir = tmpdir("rotate");
        let mut o = Log::open(&dir).unwrap();
        let big = "x".repeat(600 << 10);
        for i in 1..=15 {
            o.log.append(rec("big", i, &big).as_ref()).unwrap();
        }
        assert!(files(&dir).len() >= 2);
        let on_disk: u64 = files(&dir)
            .iter()
            .map(|f| std::fs::metadata(dir.join(f)).unwrap().len())
            .sum();
        assert_eq!(o.log.disk_bytes(), on_disk);
        assert!(o.log.wants_compaction(0));
        assert!(!o.log.wants_compaction(on_disk));
        drop(o);
        let o = Log::open(&dir).unwrap();
        assert_eq!(
            o.records.iter().map(|r| r.offset).collect::<Vec<_>>(),
            (1..=15).collect::<Vec<_>>()
        );
        assert_eq!(o.log.disk_bytes(), on_disk);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sync_jobs_only_when_something_is_unsynced() {
        let dir = tmpdir("sync");
        let mut o = Log::open(&dir).unwrap();
        assert!(o.log.take_sync_job().is_none());
        o.log.append(rec("a", 1, "1").as_ref()).unwrap();
        assert!(o.log.has_unsynced());
        let f = o.log.take_sync_job().unwrap();
        f.sync_data().unwrap();
        assert!(!o.log.has_unsynced());
        assert!(o.log.take_sync_job().is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
