//! The embedded server's write-ahead log: one preallocated file that each batch of writes is
//! appended to and fdatasynced before the batch is answered. Overwriting blocks that already
//! exist costs one cheap fdatasync, where a B-tree commit rewrites pages all over its file; the
//! store folds the log into redb now and then (a checkpoint) and starts it again from offset 0.
//!
//! A record is `magic u32 | payload length u32 | sequence u64 | crc32 u32 | payload`, the CRC
//! over the redb file's identity, the sequence and the payload. Replay reads records from offset
//! 0 while each is whole and carries the next sequence number: what lies after the last one (a
//! torn write, zeros, records of an earlier round that a checkpoint already holds) has a bad CRC
//! or an old number, and a log left beside a different redb file has a bad CRC throughout.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

const MAGIC: u32 = 0x5357_414c;
const HEADER: usize = 20;
/// Size of the log file; a batch that does not fit goes to redb directly.
pub const CAPACITY: u64 = 16 << 20;

/// The open log.
pub struct Wal {
    /// The log file, `CAPACITY` bytes of real (not sparse) blocks.
    file: File,
    /// Where the next record goes.
    pos: u64,
    /// Identity of the redb file the log belongs to, folded into every CRC.
    owner: u64,
}

impl Wal {
    /// Opens or creates the log and returns it with the payloads of the records numbered
    /// `first_seq`, `first_seq + 1`, ... in order. Appends then go after the last of them.
    pub fn open(path: &Path, owner: u64, first_seq: u64) -> std::io::Result<(Wal, Vec<Vec<u8>>)> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let mut records = Vec::new();
        let mut pos = 0usize;
        let mut seq = first_seq;
        while let Some((payload, next)) = record_at(&bytes, pos, owner, seq) {
            records.push(payload.to_vec());
            pos = next;
            seq += 1;
        }
        if (bytes.len() as u64) < CAPACITY {
            // Fill with real zeros once, so later appends overwrite allocated blocks and the
            // file's size never changes (no metadata to sync, no ENOSPC mid-run).
            let zeros = vec![0u8; 1 << 20];
            let mut len = bytes.len() as u64;
            while len < CAPACITY {
                let n = zeros.len().min((CAPACITY - len) as usize);
                file.write_all_at(&zeros[..n], len)?;
                len += n as u64;
            }
            file.sync_all()?;
            if let Some(dir) = path.parent() {
                File::open(dir)?.sync_all()?;
            }
        }
        Ok((
            Wal {
                file,
                pos: pos as u64,
                owner,
            },
            records,
        ))
    }

    /// Whether a record with this payload fits after the current end.
    pub fn fits(&self, payload_len: usize) -> bool {
        self.pos + (HEADER + payload_len) as u64 <= CAPACITY
    }

    /// Bytes in use.
    pub fn used(&self) -> u64 {
        self.pos
    }

    /// Appends one record, not yet durable (see `sync`). The caller checks `fits` first.
    pub fn append(&mut self, seq: u64, payload: &[u8]) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(HEADER + payload.len());
        buf.extend_from_slice(&MAGIC.to_le_bytes());
        buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        buf.extend_from_slice(&seq.to_le_bytes());
        buf.extend_from_slice(&crc(self.owner, seq, payload).to_le_bytes());
        buf.extend_from_slice(payload);
        self.file.write_all_at(&buf, self.pos)?;
        self.pos += buf.len() as u64;
        Ok(())
    }

    /// A handle that makes the appended records durable (`File::sync_data`), usable from
    /// another thread while appends go on.
    pub fn sync_handle(&self) -> std::io::Result<File> {
        self.file.try_clone()
    }

    /// Starts again from offset 0, once a checkpoint holds everything the log held.
    pub fn reset(&mut self) {
        self.pos = 0;
    }
}

fn crc(owner: u64, seq: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&owner.to_le_bytes());
    h.update(&seq.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// The record at `pos` if it is whole and numbered `seq`: its payload and where the next starts.
fn record_at(bytes: &[u8], pos: usize, owner: u64, seq: u64) -> Option<(&[u8], usize)> {
    let head = bytes.get(pos..pos.checked_add(HEADER)?)?;
    let word = |i: usize| u32::from_le_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
    if word(0) != MAGIC {
        return None;
    }
    let len = word(4) as usize;
    let mut s = [0u8; 8];
    s.copy_from_slice(&head[8..16]);
    if u64::from_le_bytes(s) != seq {
        return None;
    }
    let start = pos + HEADER;
    let payload = bytes.get(start..start.checked_add(len)?)?;
    (crc(owner, seq, payload) == word(16)).then_some((payload, start + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_come_back_in_order_and_a_torn_tail_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w");
        let (mut w, none) = Wal::open(&path, 9, 1).unwrap();
        assert!(none.is_empty());
        w.append(1, b"one").unwrap();
        w.sync_handle().unwrap().sync_data().unwrap();
        w.append(2, b"two").unwrap();
        let end = w.used();
        w.append(3, b"three").unwrap();
        drop(w);
        // Tear the third record: its last byte never reached the disk.
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&[0xff], end + HEADER as u64 + 4).unwrap();
        let (w, back) = Wal::open(&path, 9, 1).unwrap();
        assert_eq!(back, vec![b"one".to_vec(), b"two".to_vec()]);
        assert_eq!(w.used(), end, "appends go over the torn record");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), CAPACITY);
    }

    #[test]
    fn records_of_an_earlier_round_are_not_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w");
        let (mut w, _) = Wal::open(&path, 9, 1).unwrap();
        for seq in 1..=5 {
            w.append(seq, b"an old record, longer than the new ones")
                .unwrap();
        }
        // A checkpoint took 1..=5; the log starts again.
        w.reset();
        w.append(6, b"new").unwrap();
        drop(w);
        let (_, back) = Wal::open(&path, 9, 6).unwrap();
        assert_eq!(back, vec![b"new".to_vec()]);
        let (_, none) = Wal::open(&path, 9, 7).unwrap();
        assert!(none.is_empty());
        let (_, foreign) = Wal::open(&path, 8, 6).unwrap();
        assert!(
            foreign.is_empty(),
            "a log of another redb file is not replayed"
        );
    }
}
