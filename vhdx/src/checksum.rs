//! CRC-32C (Castagnoli) as MS-VHDX uses it: computed over a structure with its own 4-byte
//! checksum field taken as zero. `crc32fast` would compute CRC-32/IEEE, which is wrong here.

use crate::error::{Error, Result};
use crate::le;

/// CRC-32C of `bytes` with the 4 bytes at `field_at` treated as zero.
pub fn crc32c_with_zeroed_field(bytes: &[u8], field_at: usize) -> u32 {
    let crc = crc32c::crc32c(&bytes[..field_at]);
    let crc = crc32c::crc32c_append(crc, &[0u8; 4]);
    crc32c::crc32c_append(crc, &bytes[field_at + 4..])
}

/// Verify the checksum stored at `field_at` over all of `bytes`.
pub(crate) fn verify(structure: &'static str, bytes: &[u8], field_at: usize) -> Result<()> {
    let stored = le::u32_at(bytes, field_at);
    let actual = crc32c_with_zeroed_field(bytes, field_at);
    if stored != actual {
        return Err(Error::BadChecksum {
            structure,
            offset: field_at as u64,
            stored,
            actual,
        });
    }
    Ok(())
}

/// Store the checksum of `bytes` at `field_at` (for encoders).
pub fn seal(bytes: &mut [u8], field_at: usize) {
    let crc = crc32c_with_zeroed_field(bytes, field_at);
    le::put_u32(bytes, field_at, crc);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_check_value_matches_the_castagnoli_catalogue() {
        // Catalogue check value for CRC-32C; CRC-32/IEEE would give 0xCBF43926.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn sealed_structure_verifies_and_a_flipped_bit_does_not() {
        let mut bytes = vec![7u8; 64];
        seal(&mut bytes, 4);
        verify("test", &bytes, 4).unwrap();
        bytes[40] ^= 1;
        assert!(matches!(
            verify("test", &bytes, 4),
            Err(Error::BadChecksum { .. })
        ));
    }
}
