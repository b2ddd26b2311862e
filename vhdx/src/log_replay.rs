//! Finding the active log sequence (MS-VHDX 2.3.3) and replaying it into an in-memory
//! overlay, so a read-only open sees the replayed file without ever writing to it. The log is
//! read through [`LogRegion`]: a buffer holding it whole, or (an open) the file itself, of which
//! the search reads each sector's entry header and then only the entries it verifies.

use std::borrow::Cow;
use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::guid::Guid;
use crate::layout::{LOG_SECTOR_SIZE, MIB};
use crate::log_entry::{
    Descriptor, EntryHeader, LogEntry, DATA_SECTOR_PAYLOAD, HEADER_SIZE, LEADING_BYTES,
};

/// Largest log we read into memory. Hyper-V and qemu write 1 MiB logs; a larger field is
/// accepted up to this bound and refused beyond it rather than allocated.
pub const MAX_LOG_LENGTH: u64 = 256 * MIB;
/// Bytes of checksumming the search may spend, per byte of log, before giving up: a valid
/// log needs about one pass; a hostile one with overlapping claimed entries could need n².
const SCAN_BUDGET_PER_LOG_BYTE: u64 = 16;

/// The replayable part of the log: entries from the tail to the head, oldest first.
#[derive(Debug, Clone)]
pub struct ActiveSequence {
    /// Log offsets and verified entries, oldest first.
    pub entries: Vec<(u64, LogEntry)>,
}

impl ActiveSequence {
    pub fn head(&self) -> &EntryHeader {
        &self
            .entries
            .last()
            .expect("a sequence is never empty")
            .1
            .header
    }
    pub fn first_sequence_number(&self) -> u64 {
        self.entries[0].1.header.sequence_number
    }
}

/// The log region as the search and the replay read it.
pub trait LogRegion {
    /// Bytes in the region (a multiple of 4 KiB).
    fn region_len(&self) -> u64;
    /// Bytes `offset..offset + len` of the region (inside it, never wrapping). Offsets in
    /// errors are relative to the region's start.
    fn bytes(&self, offset: u64, len: usize) -> Result<Cow<'_, [u8]>>;
    /// The first `len` bytes of every 4 KiB sector of the region, one after another (a
    /// region may serve them in one read; an error names the sector that failed).
    fn sector_heads(&self, len: usize) -> Result<Vec<u8>> {
        sector_by_sector_heads(self, len)
    }
}

impl LogRegion for [u8] {
    fn region_len(&self) -> u64 {
        self.len() as u64
    }
    fn bytes(&self, offset: u64, len: usize) -> Result<Cow<'_, [u8]>> {
        Ok(Cow::Borrowed(&self[offset as usize..offset as usize + len]))
    }
}

impl LogRegion for Vec<u8> {
    fn region_len(&self) -> u64 {
        self.as_slice().region_len()
    }
    fn bytes(&self, offset: u64, len: usize) -> Result<Cow<'_, [u8]>> {
        self.as_slice().bytes(offset, len)
    }
}

/// [`LogRegion::sector_heads`] read one sector at a time.
pub(crate) fn sector_by_sector_heads<L: LogRegion + ?Sized>(
    log: &L,
    len: usize,
) -> Result<Vec<u8>> {
    let sectors = (log.region_len() / LOG_SECTOR_SIZE) as usize;
    let mut out = Vec::with_capacity(sectors * len);
    for i in 0..sectors {
        out.extend_from_slice(&log.bytes(i as u64 * LOG_SECTOR_SIZE, len)?);
    }
    Ok(out)
}

/// `len` bytes of the ring starting at `offset`, wrapping at the end.
fn ring_bytes<L: LogRegion + ?Sized>(log: &L, offset: u64, len: u64) -> Result<Vec<u8>> {
    let n = log.region_len();
    let first = (n - offset).min(len);
    let mut out = Vec::with_capacity(len as usize);
    out.extend_from_slice(&log.bytes(offset, first as usize)?);
    if len > first {
        out.extend_from_slice(&log.bytes(0, (len - first) as usize)?);
    }
    Ok(out)
}

/// The entry header at the start of slot `i`, if one decodes there.
fn header_at<L: LogRegion + ?Sized>(log: &L, i: usize) -> Result<Option<EntryHeader>> {
    let bytes = log.bytes(i as u64 * LOG_SECTOR_SIZE, HEADER_SIZE)?;
    Ok(EntryHeader::decode(&bytes).ok())
}

enum Slot {
    Unchecked,
    Invalid,
    Valid(LogEntry),
}

struct Scanner<'a, L: ?Sized> {
    log: &'a L,
    guid: Guid,
    slots: Vec<Slot>,
    budget_bytes: u64,
}

impl<L: LogRegion + ?Sized> Scanner<'_, L> {
    /// Verify the entry starting at slot `i`, once.
    fn entry(&mut self, i: usize) -> Result<Option<&LogEntry>> {
        if let Slot::Unchecked = self.slots[i] {
            let offset = i as u64 * LOG_SECTOR_SIZE;
            let header = header_at(self.log, i)?;
            let verified = match header {
                Some(h)
                    if h.log_guid == self.guid
                        && u64::from(h.entry_length) <= self.log.region_len() =>
                {
                    let len = u64::from(h.entry_length);
                    if len > self.budget_bytes {
                        return Err(Error::unsupported(
                            "log",
                            offset,
                            "log search exceeded its work limit (overlapping entries claim too much of the ring)",
                        ));
                    }
                    self.budget_bytes -= len;
                    LogEntry::decode(&ring_bytes(self.log, offset, len)?, self.guid).ok()
                }
                _ => None,
            };
            self.slots[i] = match verified {
                Some(e) => Slot::Valid(e),
                None => Slot::Invalid,
            };
        }
        Ok(match &self.slots[i] {
            Slot::Valid(e) => Some(e),
            _ => None,
        })
    }
}

/// Find the active sequence in `log` (the whole log region) for `log_guid`.
///
/// Rules (MS-VHDX 2.3.3): entries must verify (signature, checksum, matching LogGuid and
/// sequence numbers in descriptors and data sectors); a sequence is a run of entries laid
/// end to end around the ring whose sequence numbers rise by exactly one; it is valid when
/// its newest entry's Tail is the offset of its oldest entry. The active sequence is the valid
/// one whose newest entry has the highest sequence number. Entries of other LogGuids are
/// stale and ignored. `Ok(None)`: no valid sequence at all.
pub fn find_active_sequence<L: LogRegion + ?Sized>(
    log: &L,
    log_guid: Guid,
) -> Result<Option<ActiveSequence>> {
    let log_len = log.region_len();
    assert!(log_len % LOG_SECTOR_SIZE == 0 && log_len <= MAX_LOG_LENGTH);
    let slot_count = (log_len / LOG_SECTOR_SIZE) as usize;
    // Cheap pass: headers that could start an entry of this log, newest first.
    let mut candidates: Vec<(u64, usize)> = Vec::new();
    for (i, head) in log
        .sector_heads(HEADER_SIZE)?
        .chunks_exact(HEADER_SIZE)
        .enumerate()
    {
        if let Ok(h) = EntryHeader::decode(head) {
            if h.log_guid == log_guid && u64::from(h.tail) < log_len {
                candidates.push((h.sequence_number, i));
            }
        }
    }
    candidates.sort_unstable_by(|a, b| b.cmp(a));
    let mut scanner = Scanner {
        log,
        guid: log_guid,
        slots: (0..slot_count).map(|_| Slot::Unchecked).collect(),
        budget_bytes: SCAN_BUDGET_PER_LOG_BYTE * log_len + 64 * MIB,
    };
    for (_, head_slot) in candidates {
        let Some(head) = scanner.entry(head_slot)? else {
            continue;
        };
        let head_seq = head.header.sequence_number;
        let tail_slot = (head.header.tail as u64 / LOG_SECTOR_SIZE) as usize;
        // Walk from the tail to the head; each step must be the next sequence number.
        let mut entries: Vec<(u64, LogEntry)> = Vec::new();
        let mut slot = tail_slot;
        let mut expected: Option<u64> = None;
        let mut bytes_walked = 0u64;
        let complete = loop {
            let Some(entry) = scanner.entry(slot)? else {
                break false;
            };
            let seq = entry.header.sequence_number;
            if expected.is_some_and(|e| e != seq) || seq > head_seq {
                break false;
            }
            bytes_walked += u64::from(entry.header.entry_length);
            if bytes_walked > log_len {
                break false; // went round the ring: not a sequence
            }
            let next =
                (slot as u64 * LOG_SECTOR_SIZE + u64::from(entry.header.entry_length)) % log_len;
            entries.push((slot as u64 * LOG_SECTOR_SIZE, entry.clone()));
            if slot == head_slot {
                break seq == head_seq;
            }
            expected = Some(seq + 1);
            slot = (next / LOG_SECTOR_SIZE) as usize;
        };
        if complete {
            return Ok(Some(ActiveSequence { entries }));
        }
    }
    Ok(None)
}

/// What the overlay holds for one run of file bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Run {
    Zero {
        end: u64,
    },
    /// One 4 KiB sector: `leading` ‖ the overlay's payload bytes at `payload_at` (4084) ‖
    /// `trailing`.
    Sector {
        leading: [u8; 8],
        trailing: [u8; 4],
        payload_at: u64,
    },
}

impl Run {
    fn end(&self, start: u64) -> u64 {
        match *self {
            Run::Zero { end } => end,
            Run::Sector { .. } => start + LOG_SECTOR_SIZE,
        }
    }
}

/// The replayed log as a map of file runs; reads of the image go through it.
#[derive(Debug, Clone, Default)]
pub struct Overlay {
    runs: BTreeMap<u64, Run>,
    /// The data sectors' payloads (4084 bytes each) the runs point into: copied out of the
    /// log, so the log itself is not kept.
    payloads: Vec<u8>,
    /// Length the replayed file has: at least the head entry's LastFileOffset.
    pub replayed_len: u64,
}

impl Overlay {
    /// Replay `seq` (entries oldest first) over a file of `file_len` bytes.
    pub fn replay<L: LogRegion + ?Sized>(
        log: &L,
        seq: &ActiveSequence,
        file_len: u64,
    ) -> Result<Overlay> {
        let head = seq.head();
        if file_len < head.flushed_file_offset {
            return Err(Error::Truncated {
                structure: "file (log FlushedFileOffset)",
                offset: file_len,
                needed: head.flushed_file_offset,
                available: file_len,
            });
        }
        let mut overlay = Overlay {
            runs: BTreeMap::new(),
            payloads: Vec::new(),
            replayed_len: file_len.max(head.last_file_offset),
        };
        for (log_offset, entry) in &seq.entries {
            for d in &entry.descriptors {
                let (start, end) = d.range().expect("checked by LogEntry::decode");
                let run = match *d {
                    Descriptor::Zero { .. } => Run::Zero { end },
                    Descriptor::Data {
                        leading,
                        trailing,
                        data_sector,
                        ..
                    } => {
                        let at = (log_offset + entry.data_payload_offset(data_sector))
                            % log.region_len();
                        let payload_at = overlay.payloads.len() as u64;
                        overlay
                            .payloads
                            .extend_from_slice(&log.bytes(at, DATA_SECTOR_PAYLOAD)?);
                        Run::Sector {
                            leading,
                            trailing,
                            payload_at,
                        }
                    }
                };
                overlay.insert(start, end, run);
                overlay.replayed_len = overlay.replayed_len.max(end);
            }
        }
        Ok(overlay)
    }

    /// Number of runs (for diagnostics and bounds in tests).
    pub fn run_count(&self) -> usize {
        self.runs.len()
    }

    fn insert(&mut self, start: u64, end: u64, run: Run) {
        // Everything is 4 KiB aligned, so only zero runs are ever split.
        let overlapping: Vec<(u64, Run)> = self
            .runs
            .range(..end)
            .rev()
            .take_while(|(s, r)| r.end(**s) > start)
            .map(|(s, r)| (*s, *r))
            .collect();
        for (s, r) in overlapping {
            self.runs.remove(&s);
            let e = r.end(s);
            if s < start {
                assert!(matches!(r, Run::Zero { .. }));
                self.runs.insert(s, Run::Zero { end: start });
            }
            if e > end {
                assert!(matches!(r, Run::Zero { .. }));
                self.runs.insert(end, Run::Zero { end: e });
            }
        }
        self.runs.insert(start, run);
    }

    /// True when a replayed run overlaps `[offset, offset+len)`.
    pub fn intersects(&self, offset: u64, len: u64) -> bool {
        let end = offset.saturating_add(len);
        self.runs
            .range(..end)
            .next_back()
            .is_some_and(|(s, r)| r.end(*s) > offset)
    }

    /// Patch `buf` (file bytes at `offset`) with the replayed runs it intersects.
    pub fn apply(&self, offset: u64, buf: &mut [u8]) {
        let end = offset.saturating_add(buf.len() as u64);
        let first = self
            .runs
            .range(..=offset)
            .next_back()
            .map_or(offset, |(s, _)| *s);
        for (&s, run) in self.runs.range(first..end) {
            let e = run.end(s);
            if e <= offset {
                continue;
            }
            let lo = s.max(offset);
            let hi = e.min(end);
            let dst = &mut buf[(lo - offset) as usize..(hi - offset) as usize];
            match *run {
                Run::Zero { .. } => dst.fill(0),
                Run::Sector {
                    leading,
                    trailing,
                    payload_at,
                } => {
                    let mut sector = [0u8; LOG_SECTOR_SIZE as usize];
                    sector[..LEADING_BYTES].copy_from_slice(&leading);
                    let p = payload_at as usize;
                    sector[LEADING_BYTES..LEADING_BYTES + DATA_SECTOR_PAYLOAD]
                        .copy_from_slice(&self.payloads[p..p + DATA_SECTOR_PAYLOAD]);
                    sector[LOG_SECTOR_SIZE as usize - 4..].copy_from_slice(&trailing);
                    dst.copy_from_slice(&sector[(lo - s) as usize..(hi - s) as usize]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log_entry::LogWrite;

    const GUID: Guid = Guid([7; 16]);

    fn entry(seq: u64, tail: u64, fill: u8, target: u64) -> Vec<u8> {
        let h = EntryHeader {
            checksum: 0,
            entry_length: 0,
            tail: tail as u32,
            sequence_number: seq,
            descriptor_count: 0,
            log_guid: GUID,
            flushed_file_offset: MIB,
            last_file_offset: 2 * MIB,
        };
        LogEntry::encode(
            &h,
            &[LogWrite::Data {
                file_offset: target,
                sector: vec![fill; 4096],
            }],
        )
    }

    fn place(log: &mut [u8], at: u64, bytes: &[u8]) {
        for (i, b) in bytes.iter().enumerate() {
            let n = log.len();
            log[(at as usize + i) % n] = *b;
        }
    }

    #[test]
    fn sequence_is_found_from_tail_to_head() {
        let mut log = vec![0u8; MIB as usize];
        place(&mut log, 0, &entry(10, 0, 1, 0));
        place(&mut log, 8192, &entry(11, 0, 2, 0));
        place(&mut log, 16384, &entry(12, 8192, 3, 4096));
        let seq = find_active_sequence(&log, GUID).unwrap().unwrap();
        let seqs: Vec<u64> = seq
            .entries
            .iter()
            .map(|(_, e)| e.header.sequence_number)
            .collect();
        assert_eq!(seqs, [11, 12]);
    }

    #[test]
    fn wrapped_sequence_crossing_the_ring_end_is_found() {
        let mut log = vec![0u8; MIB as usize];
        let n = MIB;
        place(&mut log, n - 4096, &entry(5, n - 4096, 9, 0)); // wraps: 8 KiB from the last slot
        place(&mut log, 4096, &entry(6, n - 4096, 8, 0));
        let seq = find_active_sequence(&log, GUID).unwrap().unwrap();
        assert_eq!(seq.entries.len(), 2);
        let overlay = Overlay::replay(&log, &seq, MIB).unwrap();
        let mut buf = vec![0u8; 4096];
        overlay.apply(0, &mut buf);
        assert!(buf.iter().all(|&b| b == 8));
    }

    #[test]
    fn head_whose_tail_is_not_in_its_chain_falls_back_to_older_valid_sequence() {
        let mut log = vec![0u8; MIB as usize];
        place(&mut log, 0, &entry(3, 0, 1, 0));
        // seq 9's tail points at an empty slot: not a valid sequence.
        place(&mut log, 65536, &entry(9, 32768, 2, 0));
        let seq = find_active_sequence(&log, GUID).unwrap().unwrap();
        assert_eq!(seq.head().sequence_number, 3);
    }

    #[test]
    fn stale_entries_of_another_log_guid_are_ignored() {
        let mut log = vec![0u8; MIB as usize];
        place(&mut log, 0, &entry(3, 0, 1, 0));
        assert!(find_active_sequence(&log, Guid([1; 16])).unwrap().is_none());
    }

    #[test]
    fn gap_in_sequence_numbers_breaks_the_chain() {
        let mut log = vec![0u8; MIB as usize];
        place(&mut log, 0, &entry(3, 0, 1, 0));
        place(&mut log, 8192, &entry(5, 0, 2, 0));
        let seq = find_active_sequence(&log, GUID).unwrap().unwrap();
        assert_eq!(seq.head().sequence_number, 3);
    }

    #[test]
    fn truncated_file_is_reported() {
        let mut log = vec![0u8; MIB as usize];
        place(&mut log, 0, &entry(3, 0, 1, 0));
        let seq = find_active_sequence(&log, GUID).unwrap().unwrap();
        assert!(matches!(
            Overlay::replay(&log, &seq, MIB - 4096),
            Err(Error::Truncated { .. })
        ));
    }

    #[test]
    fn zero_run_split_by_later_sector_keeps_both_sides() {
        let mut o = Overlay {
            replayed_len: MIB,
            ..Default::default()
        };
        o.payloads = vec![5u8; 8192];
        o.insert(0, 16384, Run::Zero { end: 16384 });
        o.insert(
            4096,
            8192,
            Run::Sector {
                leading: [1; 8],
                trailing: [2; 4],
                payload_at: 0,
            },
        );
        assert_eq!(o.run_count(), 3);
        let mut buf = vec![0xFFu8; 16384];
        o.apply(0, &mut buf);
        assert!(buf[..4096].iter().all(|&b| b == 0));
        assert_eq!(&buf[4096..4104], &[1; 8]);
        assert_eq!(buf[4200], 5);
        assert_eq!(&buf[8188..8192], &[2; 4]);
        assert!(buf[8192..].iter().all(|&b| b == 0));
    }

    #[test]
    fn intersects_sees_only_runs_overlapping_the_range() {
        let mut o = Overlay {
            replayed_len: MIB,
            ..Default::default()
        };
        o.insert(8192, 16384, Run::Zero { end: 16384 });
        assert!(!o.intersects(0, 8192));
        assert!(o.intersects(0, 8193));
        assert!(o.intersects(16383, 1));
        assert!(!o.intersects(16384, 4096));
        // Ranges ending at the top of the address space do not overflow.
        let mut buf = [1u8; 16];
        o.apply(u64::MAX - 8, &mut buf);
        assert_eq!(buf, [1u8; 16]);
    }
}
