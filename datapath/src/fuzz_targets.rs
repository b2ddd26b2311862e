//! Bodies of the cargo-fuzz targets for decoders of stored bytes (slot records, manifests,
//! change-tracking bitmaps), shared with the stable corpus replay test.

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

pub const TARGETS: [&str; 3] = ["slot_record", "manifest", "tracking_bitmap"];

pub fn run(name: &str, data: &[u8]) {
    match name {
        "slot_record" => slot_record(data),
        "manifest" => manifest(data),
        "tracking_bitmap" => tracking_bitmap(data),
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
    if let Encoded::Record { bytes, .. } = codec.encode(0, 1, &text, [3; 12]) {
        out.push(("slot_record", "text".to_string(), bytes));
    }
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
    out
}
