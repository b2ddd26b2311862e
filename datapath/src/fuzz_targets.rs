//! Bodies of the cargo-fuzz targets for decoders of stored bytes (slot records, manifests,
//! change-tracking bitmaps, staging-log pages), shared with the stable corpus replay test.

use crate::keys::{DiskKeys, Secret32};
use crate::replica::block_record::{BlockCodec, Encoded};
use crate::replica::manifest::{Consistency, Manifest};

fn keys() -> DiskKeys {
    DiskKeys {
        data: Secret32::from_bytes([1; 32]),
        digest: Secret32::from_bytes([2; 32]),
    }
}

/// Decode arbitrary bytes as a slot record, encrypted and not.
pub fn slot_record(data: &[u8]) {
    for encrypt in [true, false] {
        let codec = BlockCodec::new(&keys(), 1, encrypt);
        if let Ok(block) = codec.decode(data, 0) {
            // Anything that decodes must carry its own digest.
            assert!(!block.is_empty());
        }
    }
}

/// Decode arbitrary bytes as a manifest.
pub fn manifest(data: &[u8]) {
    let _ = Manifest::decode(data, keys().digest.expose());
    let _ = Manifest::peek_key_id(data);
}

/// Decode arbitrary bytes as a change-tracking bitmap file.
pub fn tracking_bitmap(data: &[u8]) {
    let dir = std::env::temp_dir().join(format!("drplane-fuzz-ct-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("bitmap");
    if std::fs::write(&path, data).is_ok() {
        if let Ok((t, _)) = crate::tracking::ChangeTracker::open(&path, "fuzz", 1 << 20, 65536) {
            let _ = t.pending_blocks();
        }
    }
}

/// Decode arbitrary bytes as a staging log: header page, then entry pages with their records.
pub fn staging_log(data: &[u8]) {
    use crate::replica::slot_header::SlotHeader;
    use crate::replica::staging_log_format::{EntryHeader, LogHeader};
    let page = |at: usize| data.get(at..(at + 512).min(data.len())).unwrap_or(&[]);
    let _ = LogHeader::decode(page(0));
    let mut at = 512;
    while at < data.len() {
        let Ok(entry) = EntryHeader::decode(page(at)) else {
            break;
        };
        let len = entry.record_len as usize;
        let record = data.get(at + 512..).map(|r| &r[..len.min(r.len())]);
        if let Some(record) = record.filter(|_| entry.has_record) {
            let _ = SlotHeader::decode(record);
        }
        at = at + 512 + len.next_multiple_of(512);
    }
}

/// An NBD server's replies, as the live source's client reads them: negotiation, a read, the
/// dirty ranges of a bitmap context.
pub fn nbd_replies(data: &[u8]) {
    crate::live::nbd::transcript::exercise(data);
}

pub const TARGETS: [&str; 5] = [
    "slot_record",
    "manifest",
    "tracking_bitmap",
    "staging_log",
    "nbd_replies",
];

pub fn run(name: &str, data: &[u8]) {
    match name {
        "slot_record" => slot_record(data),
        "manifest" => manifest(data),
        "tracking_bitmap" => tracking_bitmap(data),
        "staging_log" => staging_log(data),
        "nbd_replies" => nbd_replies(data),
        other => panic!("unknown fuzz target {other}"),
    }
}

/// Valid inputs to start from.
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let codec = BlockCodec::new(&keys(), 1, true);
    let text: Vec<u8> = b"replica block "
        .iter()
        .cycle()
        .take(8192)
        .copied()
        .collect();
    let mut out = Vec::new();
    let record = codec.encode(0, 1, &text, [3; 12]);
    if let Encoded::Record { bytes, .. } = &record {
        out.push(("slot_record", "text".to_string(), bytes.clone()));
    }
    let mut log = crate::replica::staging_log_format::LogHeader {
        sequence: 4,
        time_nanos: 5,
        consistency: Consistency::Crash,
        entries: 2,
        end: 0,
    }
    .encode();
    log.extend(crate::replica::staging_log_format::entry_bytes(0, record));
    log.extend(crate::replica::staging_log_format::entry_bytes(
        1,
        Encoded::Zero { digest: [0; 32] },
    ));
    out.push(("staging_log", "two-entries".to_string(), log));
    let m = Manifest {
        sequence: 1,
        time_nanos: 2,
        consistency: Consistency::Crash,
        generation: 1,
        disk_size: 1 << 20,
        block_size: 65536,
        key_id: [7; 20],
        merkle_root: [8; 32],
        snapshot: "2026-11-26T00:00:00.0000000Z".into(),
    };
    out.push((
        "manifest",
        "one".to_string(),
        m.encode(keys().digest.expose()),
    ));
    out.push((
        "nbd_replies",
        "read-and-dirty-ranges".to_string(),
        nbd_seed(),
    ));
    out
}

/// A server's whole side of [`nbd_replies`]: a 64 KiB export, its read in two chunks, and a
/// bitmap with one dirty extent.
fn nbd_seed() -> Vec<u8> {
    use crate::live::nbd::transcript::{data, negotiation, status};
    let mut s = negotiation(65536, &[(2, "qemu:dirty-bitmap:b")]);
    data(&mut s, 1, false, 32768, &[0x5a; 32768]);
    data(&mut s, 1, true, 0, &[0; 32768]);
    status(&mut s, 2, 2, &[(4096, 0), (8192, 1), (53248, 0)]);
    s
}
