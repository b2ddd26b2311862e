//! Synthetic disk content that compresses like a used disk, for benchmarks: 1 MiB extents
//! drawn (seeded) as free space (zeros, 30%), text (Zipf-distributed words in lines, 30%),
//! executable-like code (Zipf-distributed instruction-like byte runs with addresses, 20%) and
//! incompressible media (20%). The same seed always gives the same bytes.

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

/// Bytes per extent of one kind.
pub const EXTENT_BYTES: usize = 1 << 20;

/// What an extent holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ContentKind {
    Zeros,
    Text,
    Code,
    Media,
}

impl ContentKind {
    pub const ALL: [ContentKind; 4] = [
        ContentKind::Zeros,
        ContentKind::Text,
        ContentKind::Code,
        ContentKind::Media,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ContentKind::Zeros => "zeros",
            ContentKind::Text => "text",
            ContentKind::Code => "code",
            ContentKind::Media => "media",
        }
    }
}

/// A seeded source of realistic content.
#[derive(Debug)]
pub struct RealisticContent {
    rng: ChaCha8Rng,
    words: Vec<Vec<u8>>,
    opcodes: Vec<Vec<u8>>,
}

/// Index in `0..n` with a Zipf-like (1/rank) distribution.
fn zipf(rng: &mut ChaCha8Rng, n: usize) -> usize {
    // Inverse of the harmonic CDF, approximated: rank = n^u - 1.
    let u = f64::from(rng.next_u32()) / f64::from(u32::MAX);
    ((n as f64).powf(u) as usize).saturating_sub(1).min(n - 1)
}

impl RealisticContent {
    pub fn new(seed: u64) -> RealisticContent {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let words = (0..4096)
            .map(|_| {
                let len = 2 + (rng.next_u32() % 9) as usize;
                (0..len)
                    .map(|_| b"etaoinshrdlucmfwypvbgkjqxz"[zipf(&mut rng, 26)])
                    .collect()
            })
            .collect();
        let opcodes = (0..512)
            .map(|_| {
                let len = 1 + (rng.next_u32() % 6) as usize;
                (0..len).map(|_| rng.next_u32() as u8).collect()
            })
            .collect();
        RealisticContent {
            rng,
            words,
            opcodes,
        }
    }

    /// The kind of the next extent, in the disk's proportions.
    pub fn next_kind(&mut self) -> ContentKind {
        match self.rng.next_u32() % 10 {
            0..=2 => ContentKind::Zeros,
            3..=5 => ContentKind::Text,
            6..=7 => ContentKind::Code,
            _ => ContentKind::Media,
        }
    }

    /// Replace `out` with `len` bytes of `kind`.
    pub fn fill(&mut self, kind: ContentKind, len: usize, out: &mut Vec<u8>) {
        out.clear();
        match kind {
            ContentKind::Zeros => out.resize(len, 0),
            ContentKind::Text => self.text(len, out),
            ContentKind::Code => self.code(len, out),
            ContentKind::Media => {
                out.resize(len, 0);
                self.rng.fill_bytes(out);
            }
        }
    }

    fn text(&mut self, len: usize, out: &mut Vec<u8>) {
        let mut line = 0;
        while out.len() < len {
            let w = &self.words[zipf(&mut self.rng, self.words.len())];
            out.extend_from_slice(w);
            line += w.len() + 1;
            if line > 60 + (self.rng.next_u32() % 20) as usize {
                out.extend_from_slice(b".\n");
                line = 0;
            } else {
                out.push(b' ');
            }
        }
        out.truncate(len);
    }

    fn code(&mut self, len: usize, out: &mut Vec<u8>) {
        while out.len() < len {
            out.extend_from_slice(&self.opcodes[zipf(&mut self.rng, self.opcodes.len())]);
            if self.rng.next_u32() % 5 == 0 {
                // A relative address or constant: mostly small, sometimes anywhere.
                let v = if self.rng.next_u32() % 4 == 0 {
                    self.rng.next_u32()
                } else {
                    self.rng.next_u32() % 4096
                };
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        out.truncate(len);
    }

    /// A number below `n` from the same stream (for choosing blocks to change).
    pub fn below(&mut self, n: u64) -> u64 {
        self.rng.next_u64() % n.max(1)
    }
}

/// Bytes of each kind in a disk written by [`write_realistic_disk`], in [`ContentKind::ALL`]
/// order.
pub type ContentMix = [u64; 4];

/// Write a raw disk of `size` bytes (whole extents, the last one cut short) to `out`.
pub fn write_realistic_disk(
    out: &mut dyn std::io::Write,
    size: u64,
    seed: u64,
) -> std::io::Result<ContentMix> {
    let mut content = RealisticContent::new(seed);
    let mut extent = Vec::with_capacity(EXTENT_BYTES + 64);
    let mut mix = [0u64; 4];
    let mut written = 0u64;
    while written < size {
        let kind = content.next_kind();
        content.fill(kind, EXTENT_BYTES, &mut extent);
        let n = (size - written).min(EXTENT_BYTES as u64) as usize;
        out.write_all(&extent[..n])?;
        mix[kind as usize] += n as u64;
        written += n as u64;
    }
    out.flush()?;
    Ok(mix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_the_same_disk_and_the_kinds_look_like_their_names() {
        let disk = |seed| {
            let mut bytes = Vec::new();
            let mix = write_realistic_disk(&mut bytes, 24 << 20, seed).unwrap();
            (bytes, mix)
        };
        let (a, mix) = disk(1);
        assert_eq!(a.len(), 24 << 20);
        assert_eq!(mix.iter().sum::<u64>(), 24 << 20);
        assert!(a == disk(1).0, "same seed, same bytes");
        assert!(a != disk(2).0);
        let mut content = RealisticContent::new(3);
        let mut buf = Vec::new();
        let ratio = |buf: &[u8]| zstd::bulk::compress(buf, 1).unwrap().len() as f64 / 65536.0;
        content.fill(ContentKind::Text, 65536, &mut buf);
        assert_eq!(buf.len(), 65536);
        assert!(buf
            .iter()
            .all(|b| b.is_ascii_lowercase() || b" .\n".contains(b)));
        assert!(ratio(&buf) < 0.7, "text compresses: {}", ratio(&buf));
        content.fill(ContentKind::Code, 65536, &mut buf);
        assert!(ratio(&buf) < 0.9, "code compresses: {}", ratio(&buf));
        content.fill(ContentKind::Media, 65536, &mut buf);
        assert!(ratio(&buf) > 1.0, "media does not: {}", ratio(&buf));
        content.fill(ContentKind::Zeros, 100, &mut buf);
        assert_eq!(buf, vec![0; 100]);
    }
}
