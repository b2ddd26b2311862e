//! Write a deterministic "realistic" raw disk image for benchmarks: 1 MiB extents drawn (seeded)
//! as free space (zeros, 30%), text (Zipf-distributed words in lines, 30%), executable-like
//! binary (Zipf-distributed instruction-like byte runs with addresses, 20%) and incompressible
//! media (20%). Usage: `realistic_disk OUT SIZE_MIB [SEED]`.

use std::io::Write;

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

const EXTENT: usize = 1 << 20;

/// Index in `0..n` with a Zipf-like (1/rank) distribution.
fn zipf(rng: &mut ChaCha8Rng, n: usize) -> usize {
    // Inverse of the harmonic CDF, approximated: rank = n^u - 1.
    let u = (rng.next_u32() as f64) / (u32::MAX as f64);
    (((n as f64).powf(u)) as usize).saturating_sub(1).min(n - 1)
}

fn vocabulary(rng: &mut ChaCha8Rng) -> Vec<Vec<u8>> {
    (0..4096)
        .map(|_| {
            let len = 2 + (rng.next_u32() % 9) as usize;
            (0..len)
                .map(|_| b"etaoinshrdlucmfwypvbgkjqxz"[zipf(rng, 26)])
                .collect()
        })
        .collect()
}

fn text(rng: &mut ChaCha8Rng, words: &[Vec<u8>], out: &mut Vec<u8>) {
    let mut line = 0;
    while out.len() < EXTENT {
        let w = &words[zipf(rng, words.len())];
        out.extend_from_slice(w);
        line += w.len() + 1;
        if line > 60 + (rng.next_u32() % 20) as usize {
            out.extend_from_slice(b".\n");
            line = 0;
        } else {
            out.push(b' ');
        }
    }
    out.truncate(EXTENT);
}

fn binary(rng: &mut ChaCha8Rng, opcodes: &[Vec<u8>], out: &mut Vec<u8>) {
    while out.len() < EXTENT {
        out.extend_from_slice(&opcodes[zipf(rng, opcodes.len())]);
        if rng.next_u32() % 5 == 0 {
            // A relative address or constant: mostly small, sometimes anywhere.
            let v = if rng.next_u32() % 4 == 0 {
                rng.next_u32()
            } else {
                rng.next_u32() % 4096
            };
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out.truncate(EXTENT);
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: realistic_disk OUT SIZE_MIB [SEED]");
        std::process::exit(2);
    }
    let size_mib: usize = args[2].parse().expect("SIZE_MIB");
    let seed: u64 = args.get(3).map_or(1, |s| s.parse().expect("SEED"));
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let words = vocabulary(&mut rng);
    let opcodes: Vec<Vec<u8>> = (0..512)
        .map(|_| {
            let len = 1 + (rng.next_u32() % 6) as usize;
            (0..len).map(|_| rng.next_u32() as u8).collect()
        })
        .collect();
    let file = std::fs::File::create(&args[1])?;
    file.set_len((size_mib * EXTENT) as u64)?;
    let mut out = std::io::BufWriter::new(file);
    let mut extent = Vec::with_capacity(EXTENT + 64);
    let mut mix = [0usize; 4];
    for _ in 0..size_mib {
        extent.clear();
        let kind = (rng.next_u32() % 10) as usize;
        match kind {
            0..=2 => extent.resize(EXTENT, 0),
            3..=5 => text(&mut rng, &words, &mut extent),
            6..=7 => binary(&mut rng, &opcodes, &mut extent),
            _ => {
                extent.resize(EXTENT, 0);
                rng.fill_bytes(&mut extent);
            }
        }
        mix[match kind {
            0..=2 => 0,
            3..=5 => 1,
            6..=7 => 2,
            _ => 3,
        }] += 1;
        out.write_all(&extent)?;
    }
    out.flush()?;
    eprintln!(
        "{}: {size_mib} MiB: {} MiB zero, {} MiB text, {} MiB binary, {} MiB random",
        args[1], mix[0], mix[1], mix[2], mix[3]
    );
    Ok(())
}
