//! The block pipeline and the slot record format: round trips, zero and incompressible blocks,
//! every kind of damage named, wrong keys refused, and the version-1 bytes pinned by a golden file.

use datapath::keys::{DiskKeys, Secret32};
use datapath::replica::block_record::{BlockCodec, Encoded, RecordError};
use datapath::replica::slot_header::{SlotHeader, HEADER_SIZE};
use proptest::prelude::*;

fn keys(seed: u8) -> DiskKeys {
    DiskKeys {
        data: Secret32::from_bytes([seed; 32]),
        digest: Secret32::from_bytes([seed ^ 0x5A; 32]),
    }
}

fn text_like(len: usize) -> Vec<u8> {
    let words = [
        "replica ",
        "snapshot ",
        "block ",
        "vhdx ",
        "azure ",
        "cycle ",
        "\n",
    ];
    let mut out = Vec::with_capacity(len);
    let mut i = 0usize;
    while out.len() < len {
        out.extend_from_slice(words[(i * 7 + i / 3) % words.len()].as_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}

fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn record(e: Encoded) -> (SlotHeader, Vec<u8>) {
    match e {
        Encoded::Record { header, bytes } => (header, bytes),
        Encoded::Zero { .. } => panic!("expected a stored record"),
    }
}

/// Fast levels use a smaller zstd hash table on blocks up to 128 KiB; blocks of every size on
/// either side of that bound, and a disk's short last block, must still compress and round-trip,
/// one thread switching between them.
#[test]
fn fast_levels_round_trip_across_block_sizes() {
    for level in [-5, -1, 1, 2] {
        let codec = BlockCodec::new(&keys(9), level, true);
        for len in [4096, 65536, 131072, 131073, 262144, 1 << 20, 65536 + 512] {
            let block = text_like(len);
            let (header, bytes) = record(codec.encode(5, 2, &block, [3; 12]));
            assert!(
                (header.stored_len as usize) < len / 2,
                "level {level}, {len} bytes: text stored in {} bytes",
                header.stored_len
            );
            assert_eq!(
                codec.decode(&bytes, 5).unwrap(),
                block,
                "level {level}, {len} bytes"
            );
        }
    }
}

#[test]
fn blocks_round_trip_encrypted_or_not() {
    for encrypt in [true, false] {
        let codec = BlockCodec::new(&keys(1), 3, encrypt);
        for block in [
            text_like(65536),
            random(65536, 3),
            text_like(4096),
            random(1000, 9),
        ] {
            let (header, bytes) = record(codec.encode(7, 2, &block, [4; 12]));
            assert_eq!(header.flags & 2 != 0, encrypt);
            assert_eq!(codec.decode(&bytes, 7).unwrap(), block);
        }
    }
}

#[test]
fn zero_blocks_are_not_stored_and_incompressible_ones_are_stored_raw() {
    let codec = BlockCodec::new(&keys(1), 3, true);
    assert!(matches!(
        codec.encode(0, 1, &[0; 65536], [0; 12]),
        Encoded::Zero { .. }
    ));
    let (h, _) = record(codec.encode(0, 1, &random(65536, 5), [1; 12]));
    assert_eq!(
        (h.flags & 1, h.stored_len),
        (0, 65536),
        "random data is stored uncompressed"
    );
    let (h, _) = record(codec.encode(0, 1, &text_like(65536), [2; 12]));
    assert!(
        h.flags & 1 == 1 && h.stored_len < 16384,
        "text compresses: {}",
        h.stored_len
    );
}

#[test]
fn every_damaged_byte_is_caught_and_named() {
    let codec = BlockCodec::new(&keys(1), 3, true);
    let (_, bytes) = record(codec.encode(3, 1, &text_like(8192), [9; 12]));
    let positions: Vec<usize> = (0..HEADER_SIZE)
        .chain((HEADER_SIZE..bytes.len()).step_by(13))
        .collect();
    for at in positions {
        let mut damaged = bytes.clone();
        damaged[at] ^= 0x01;
        let err = codec
            .decode(&damaged, 3)
            .expect_err("damage went unnoticed");
        let ok_kind = matches!(
            err,
            RecordError::Header(_)
                | RecordError::PayloadChecksum { .. }
                | RecordError::Authentication
                | RecordError::WrongBlock { .. }
                | RecordError::Truncated { .. }
        );
        assert!(ok_kind, "byte {at}: {err}");
    }
    assert!(matches!(
        codec.decode(&bytes[..bytes.len() - 1], 3),
        Err(RecordError::Truncated { .. })
    ));
    assert!(matches!(
        codec.decode(&bytes, 4),
        Err(RecordError::WrongBlock {
            expected: 4,
            found: 3
        })
    ));
}

#[test]
fn another_key_is_refused_as_authentication_failure() {
    let (_, bytes) =
        record(BlockCodec::new(&keys(1), 3, true).encode(0, 1, &text_like(4096), [5; 12]));
    assert_eq!(
        BlockCodec::new(&keys(2), 3, true).decode(&bytes, 0),
        Err(RecordError::Authentication)
    );
    // Unencrypted records are still bound to the key through the keyed digest.
    let (_, plain) =
        record(BlockCodec::new(&keys(1), 3, false).encode(0, 1, &text_like(4096), [5; 12]));
    assert_eq!(
        BlockCodec::new(&keys(2), 3, false).decode(&plain, 0),
        Err(RecordError::Digest)
    );
}

/// Version-1 records are pinned: an encoding change must be a new format version.
/// Regenerate (only with a version bump) with DRPLANE_BLESS=1.
#[test]
fn version_1_record_bytes_match_the_golden_file() {
    let codec = BlockCodec::new(&keys(0x42), 3, true);
    let (_, bytes) = record(codec.encode(0x0102_0304, 0x0A0B, &text_like(4096), [0x11; 12]));
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/block-record-v1.bin");
    if std::env::var_os("DRPLANE_BLESS").is_some() {
        std::fs::write(&path, &bytes).unwrap();
    }
    let golden = std::fs::read(&path).expect("golden file (DRPLANE_BLESS=1 writes it)");
    assert!(golden == bytes, "version-1 record encoding changed");
    assert_eq!(codec.decode(&golden, 0x0102_0304).unwrap(), text_like(4096));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn any_block_round_trips(block in proptest::collection::vec(any::<u8>(), 1..20_000), level in 1i32..5, encrypt in any::<bool>(), index in any::<u64>()) {
        let codec = BlockCodec::new(&keys(3), level, encrypt);
        match codec.encode(index, 1, &block, [7; 12]) {
            Encoded::Zero { .. } => prop_assert!(block.iter().all(|&b| b == 0)),
            Encoded::Record { bytes, .. } => prop_assert_eq!(codec.decode(&bytes, index).unwrap(), block),
        }
    }

    #[test]
    fn arbitrary_bytes_never_decode_or_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let codec = BlockCodec::new(&keys(3), 3, true);
        prop_assert!(codec.decode(&bytes, 0).is_err());
    }
}
