//! The spool a sink reads: the local audit file and its rotated files, walked forward in chain
//! order and followed as the current one grows. Only complete lines (ending in `\n`) are read,
//! so a record being appended is never sent half-written. At the end of the file it has open,
//! the reader moves to the file holding the next seq ([`crate::audit::open_holding`]: the
//! oldest rotated file `<name>.<last seq>` reaching it, else the current file), from its
//! beginning; so a reader behind by several rotations, or restarted meanwhile, reads every
//! rotated file in between. Records already delivered are skipped by `seq`. A current file that
//! shrank (rewritten in place) is read again from its start.

use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Most bytes one read returns (bounds a batch's memory with very large records).
const MAX_READ_BYTES: usize = 4 << 20;

/// One audit record as it is in the file.
#[derive(Debug, Clone)]
pub struct Record {
    /// Its sequence number.
    pub seq: u64,
    /// The line's exact bytes, without its `\n`.
    pub line: Vec<u8>,
    /// Offset just after the line's `\n`.
    pub end: u64,
}

/// The first line of a file: its `seq` and the hex SHA-256 of its bytes (the chain identity).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirstLine {
    /// Its sequence number.
    pub seq: u64,
    /// The hex SHA-256 of its bytes.
    pub hash: String,
    /// Whether it is an `audit.rotated` record continuing the line the reader read last in
    /// the file it left (see [`Spool::advance`]); `false` when there is no such file.
    pub continues_left_file: bool,
}

/// A reader of an audit file that follows it across rotations, record by record.
pub struct Spool {
    /// The audit file's path (the current file).
    path: PathBuf,
    /// The file open now: the current one or a rotated one.
    open_path: PathBuf,
    file: Option<File>,
    id: (u64, u64),
    offset: u64,
    /// Lines without a readable `seq` that were passed over (reported by the caller).
    pub unreadable: u64,
    /// The hash of the last line read in the file [`Spool::advance`] left.
    left_hash: Option<String>,
}

/// The `seq` of a line: the writer puts it first (`{"unmapped":{"loggate":{"seq":N,…`, or
/// `{"seq":N,…` in files of earlier builds); anything else is parsed.
pub fn seq_of(line: &[u8]) -> Option<u64> {
    const PREFIXES: [&[u8]; 2] = [b"{\"unmapped\":{\"loggate\":{\"seq\":", b"{\"seq\":"];
    for prefix in PREFIXES {
        if let Some(rest) = line.strip_prefix(prefix) {
            let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
            if digits > 0 && matches!(rest.get(digits), Some(b',' | b'}')) {
                return std::str::from_utf8(&rest[..digits]).ok()?.parse().ok();
            }
        }
    }
    let value: serde_json::Value = serde_json::from_slice(line).ok()?;
    crate::audit::record_seq(&value)
}

impl Spool {
    /// A reader of the audit file at `path`; nothing is opened yet.
    pub fn new(path: &Path) -> Spool {
        Spool {
            path: path.to_path_buf(),
            open_path: path.to_path_buf(),
            file: None,
            id: (0, 0),
            offset: 0,
            unreadable: 0,
            left_hash: None,
        }
    }

    /// Opens the file when it is not open yet; `false` while it does not exist.
    fn ensure_open(&mut self) -> io::Result<bool> {
        if self.file.is_some() {
            return Ok(true);
        }
        match File::open(&self.open_path) {
            Ok(f) => {
                self.adopt_file(self.open_path.clone(), f)?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn adopt_file(&mut self, path: PathBuf, file: File) -> io::Result<()> {
        let m = file.metadata()?;
        self.id = (m.dev(), m.ino());
        self.open_path = path;
        self.file = Some(file);
        self.offset = 0;
        Ok(())
    }

    /// Opens the file holding record `seq` (a rotated one, or the current one), from its
    /// start; `false` while there is no audit file yet.
    pub fn open_holding(&mut self, seq: u64) -> io::Result<bool> {
        match crate::audit::open_holding(&self.path, seq)? {
            Some((path, file)) => {
                self.left_hash = None;
                self.adopt_file(path, file)?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Whether the file open now is the current audit file (not a rotated one).
    pub fn is_current(&self) -> bool {
        self.open_path == self.path
    }

    /// The current audit file's path (where rotated files are found beside).
    pub fn current_path(&self) -> &Path {
        &self.path
    }

    /// The path of the file open now (the current file or a rotated one).
    pub fn open_path(&self) -> &Path {
        &self.open_path
    }

    /// The length of the file open now, measured through the handle the reader holds (not
    /// its path: a rotation renames it and puts a new file at the path, and the reader keeps
    /// the old one until it has read it all); `None` when nothing is open.
    pub fn open_len(&self) -> Option<u64> {
        self.file.as_ref()?.metadata().ok().map(|m| m.len())
    }

    /// The (device, inode) of the file open now, valid while [`Spool::open_len`] is `Some`:
    /// tells the open file apart from the files at the rotated and current paths.
    pub fn open_id(&self) -> (u64, u64) {
        self.id
    }

    /// The byte offset in the open file the next read starts at.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Continue reading at `offset` (a line start) of the open file.
    pub fn seek(&mut self, offset: u64) {
        self.offset = offset;
    }

    /// The open file's first complete line, if it has one.
    pub fn first_line(&mut self) -> io::Result<Option<FirstLine>> {
        if !self.ensure_open()? {
            return Ok(None);
        }
        let Some(file) = self.file.as_mut() else {
            return Ok(None);
        };
        file.seek(SeekFrom::Start(0))?;
        let mut line = Vec::new();
        BufReader::new(file.take(MAX_READ_BYTES as u64)).read_until(b'\n', &mut line)?;
        let Some(line) = line.strip_suffix(b"\n") else {
            return Ok(None);
        };
        let continues_left_file = self
            .left_hash
            .as_deref()
            .is_some_and(|last| crate::audit::continues_chain(line, last));
        Ok(seq_of(line).map(|seq| FirstLine {
            seq,
            hash: hex::encode(Sha256::digest(line)),
            continues_left_file,
        }))
    }

    /// Up to `max` complete records after the current offset whose `seq` is greater than
    /// `after` and at most `until` (the last durable record); lines at or below `after` are
    /// passed over. The offset moves past every line returned or passed over, never into an
    /// incomplete last line nor past `until`.
    pub fn read(&mut self, after: u64, until: u64, max: usize) -> io::Result<Vec<Record>> {
        let mut out = Vec::new();
        if !self.ensure_open()? {
            return Ok(out);
        }
        let Some(file) = self.file.as_mut() else {
            return Ok(out);
        };
        file.seek(SeekFrom::Start(self.offset))?;
        let mut reader = BufReader::with_capacity(64 * 1024, &*file);
        let mut bytes = 0;
        let mut line = Vec::new();
        while out.len() < max && bytes < MAX_READ_BYTES {
            line.clear();
            let n = reader.read_until(b'\n', &mut line)?;
            if n == 0 || line.last() != Some(&b'\n') {
                break; // end of file, or a line still being written
            }
            line.pop();
            let seq = seq_of(&line);
            if seq.is_some_and(|seq| seq > until) {
                break; // written, not yet on disk: a failed sync could still replace it
            }
            self.offset += n as u64;
            match seq {
                Some(seq) if seq > after => {
                    bytes += line.len();
                    out.push(Record {
                        seq,
                        line: std::mem::take(&mut line),
                        end: self.offset,
                    });
                }
                Some(_) => {}
                None => self.unreadable += 1,
            }
        }
        Ok(out)
    }

    /// Called at the end of the open file, everything read so far delivered: when the record
    /// `next_seq` is in another file (the open one was rotated, or replaced), or the open file
    /// became shorter than the offset (rewritten in place), opens that file from its start and
    /// returns `true`.
    pub fn advance(&mut self, next_seq: u64) -> io::Result<bool> {
        let Some(file) = self.file.as_ref() else {
            return Ok(false);
        };
        let shrunk = file.metadata()?.len() < self.offset;
        let Some((path, next)) = crate::audit::open_holding(&self.path, next_seq)? else {
            return Ok(false); // between a rename and the new file: wait for it
        };
        let m = next.metadata()?;
        if (m.dev(), m.ino()) == self.id && !shrunk {
            return Ok(false);
        }
        self.left_hash = if shrunk {
            None
        } else {
            crate::audit::hash_of_line_before(file, self.offset)?
        };
        self.adopt_file(path, next)?;
        Ok(true)
    }

    /// The `seq` of the open file's last complete line.
    pub fn last_seq(&mut self) -> io::Result<Option<u64>> {
        if !self.ensure_open()? {
            return Ok(None);
        }
        let Some(file) = self.file.as_mut() else {
            return Ok(None);
        };
        last_seq_of(file)
    }

    /// The `seq` of the current audit file's last complete line (the head, for the lag figure).
    pub fn head_seq(&self) -> io::Result<Option<u64>> {
        match File::open(&self.path) {
            Ok(mut f) => last_seq_of(&mut f),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// The `seq` of the last complete line of `file`.
fn last_seq_of(file: &mut File) -> io::Result<Option<u64>> {
    let len = file.metadata()?.len();
    let start = len.saturating_sub(64 * 1024);
    file.seek(SeekFrom::Start(start))?;
    let mut tail = Vec::new();
    file.take(len - start).read_to_end(&mut tail)?;
    let complete = match tail.iter().rposition(|b| *b == b'\n') {
        Some(i) => &tail[..i],
        None => return Ok(None),
    };
    let last = match complete.iter().rposition(|b| *b == b'\n') {
        Some(i) => &complete[i + 1..],
        None => complete,
    };
    Ok(seq_of(last))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn line(seq: u64) -> String {
        format!("{{\"seq\":{seq},\"prev\":\"x\",\"event\":\"e\"}}\n")
    }

    #[test]
    fn reads_only_complete_lines_after_the_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(format!("{}{}{}{{\"seq\":4,", line(1), line(2), line(3)).as_bytes())
            .unwrap();
        let mut spool = Spool::new(&path);
        let got = spool.read(1, u64::MAX, 10).unwrap();
        assert_eq!(got.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(got[1].end, spool.offset());
        assert!(got[0].line.ends_with(b"}"));
        f.write_all(b"\"prev\":\"x\"}\n").unwrap();
        let got = spool.read(3, u64::MAX, 10).unwrap();
        assert_eq!(got.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![4]);
        assert_eq!(spool.last_seq().unwrap(), Some(4));
        assert_eq!(spool.first_line().unwrap().unwrap().seq, 1);
    }

    #[test]
    fn stops_at_the_last_durable_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        std::fs::write(&path, line(1) + &line(2) + &line(3)).unwrap();
        let mut spool = Spool::new(&path);
        let got = spool.read(0, 2, 10).unwrap();
        assert_eq!(got.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2]);
        assert!(spool.read(2, 2, 10).unwrap().is_empty());
        // Once seq 3 is on disk it is read from where the reader stopped.
        assert_eq!(spool.read(2, 3, 10).unwrap()[0].seq, 3);
    }

    #[test]
    fn follows_a_replaced_file_from_its_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        std::fs::write(&path, line(1) + &line(2)).unwrap();
        let mut spool = Spool::new(&path);
        assert_eq!(spool.read(0, u64::MAX, 10).unwrap().len(), 2);
        assert!(!spool.advance(u64::MAX).unwrap());
        // Rotation: the old file moves away with one more record, a new one continues.
        let mut old = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        old.write_all(line(3).as_bytes()).unwrap();
        std::fs::rename(&path, dir.path().join("audit.jsonl.1")).unwrap();
        std::fs::write(&path, line(4)).unwrap();
        assert_eq!(
            spool.read(2, u64::MAX, 10).unwrap()[0].seq,
            3,
            "the old file is finished first"
        );
        assert!(spool.advance(u64::MAX).unwrap());
        assert_eq!(spool.read(3, u64::MAX, 10).unwrap()[0].seq, 4);
    }

    #[test]
    fn seq_is_read_fast_or_parsed() {
        assert_eq!(seq_of(b"{\"seq\":12,\"prev\":\"\"}"), Some(12));
        assert_eq!(seq_of(b"{\"prev\":\"\",\"seq\":13}"), Some(13));
        assert_eq!(seq_of(b"{\"seq\":\"x\"}"), None);
        assert_eq!(
            seq_of(b"{\"unmapped\":{\"loggate\":{\"seq\":14,\"prev\":\"\"}}}"),
            Some(14)
        );
        assert_eq!(
            seq_of(b"{\"class_uid\":1,\"unmapped\":{\"loggate\":{\"prev\":\"\",\"seq\":15}}}"),
            Some(15)
        );
        // One record, one place in the chain: both layouts at once is no seq.
        assert_eq!(
            seq_of(b"{\"class_uid\":1,\"seq\":3,\"prev\":\"\",\"unmapped\":{\"loggate\":{\"prev\":\"\",\"seq\":15}}}"),
            None
        );
        assert_eq!(seq_of(b"garbage"), None);
    }

    #[test]
    fn walks_the_rotated_files_in_chain_order_then_the_current_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let rotated = |last: u64| dir.path().join(format!("audit.jsonl.{last:012}"));
        std::fs::write(rotated(2), line(1) + &line(2)).unwrap();
        std::fs::write(rotated(4), line(3) + &line(4)).unwrap();
        std::fs::write(&path, line(5)).unwrap();
        let mut spool = Spool::new(&path);
        // A reader whose cursor is at seq 2 starts in the file holding seq 3.
        assert!(spool.open_holding(3).unwrap());
        assert_eq!(spool.open_path(), rotated(4));
        let mut got = Vec::new();
        let mut after = 2;
        for _ in 0..10 {
            let batch = spool.read(after, u64::MAX, 10).unwrap();
            if let Some(last) = batch.last() {
                after = last.seq;
                got.extend(batch.iter().map(|r| r.seq));
            } else if !spool.advance(after + 1).unwrap() {
                break;
            }
        }
        assert_eq!(got, vec![3, 4, 5]);
        assert_eq!(spool.open_path(), path);
        // At the end of the current file, nothing else to move to.
        assert!(!spool.advance(6).unwrap());
        assert_eq!(spool.head_seq().unwrap(), Some(5));
    }
}
