//! GUIDs in the Windows mixed-endian layout MS-VHDX stores: the first three fields
//! little-endian, the last eight bytes as written.

use std::fmt;
use std::str::FromStr;

/// A GUID as stored on disk (16 bytes, mixed-endian).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// The all-zero GUID ("no log", "no parent").
    pub const ZERO: Guid = Guid([0; 16]);

    /// Build a GUID from its textual fields `d1-d2-d3-d4[0..2]-d4[2..8]`.
    pub const fn from_fields(d1: u32, d2: u16, d3: u16, d4: [u8; 8]) -> Guid {
        let a = d1.to_le_bytes();
        let b = d2.to_le_bytes();
        let c = d3.to_le_bytes();
        Guid([
            a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d4[0], d4[1], d4[2], d4[3], d4[4],
            d4[5], d4[6], d4[7],
        ])
    }

    /// Read a GUID from the first 16 bytes of `bytes`; the caller has checked the length.
    pub(crate) fn read(bytes: &[u8], at: usize) -> Guid {
        let mut g = [0u8; 16];
        g.copy_from_slice(&bytes[at..at + 16]);
        Guid(g)
    }

    pub fn is_zero(&self) -> bool {
        self.0 == [0; 16]
    }

    fn fields(&self) -> (u32, u16, u16, [u8; 8]) {
        let b = &self.0;
        let mut d4 = [0u8; 8];
        d4.copy_from_slice(&b[8..16]);
        (
            u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            u16::from_le_bytes([b[4], b[5]]),
            u16::from_le_bytes([b[6], b[7]]),
            d4,
        )
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (d1, d2, d3, d4) = self.fields();
        write!(
            f,
            "{d1:08X}-{d2:04X}-{d3:04X}-{:02X}{:02X}-{:02X}{:02X}{:02X}{:02X}{:02X}{:02X}",
            d4[0], d4[1], d4[2], d4[3], d4[4], d4[5], d4[6], d4[7]
        )
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{{self}}}")
    }
}

/// Why a GUID string did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a GUID: {0:?}")]
pub struct ParseGuidError(pub String);

impl FromStr for Guid {
    type Err = ParseGuidError;

    /// Accepts `XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX`, optionally in braces, any case.
    fn from_str(s: &str) -> Result<Guid, ParseGuidError> {
        let err = || ParseGuidError(s.chars().take(64).collect());
        let t = s.trim();
        let t = t
            .strip_prefix('{')
            .and_then(|t| t.strip_suffix('}'))
            .unwrap_or(t);
        let groups: Vec<&str> = t.split('-').collect();
        let lens = [8, 4, 4, 4, 12];
        if groups.len() != 5 || groups.iter().zip(lens).any(|(g, n)| g.len() != n) {
            return Err(err());
        }
        let hex = |g: &str| u64::from_str_radix(g, 16).map_err(|_| err());
        if groups
            .iter()
            .any(|g| !g.bytes().all(|c| c.is_ascii_hexdigit()))
        {
            return Err(err());
        }
        let d1 = hex(groups[0])? as u32;
        let d2 = hex(groups[1])? as u16;
        let d3 = hex(groups[2])? as u16;
        let d4a = hex(groups[3])?.to_be_bytes();
        let d4b = hex(groups[4])?.to_be_bytes();
        let d4 = [
            d4a[6], d4a[7], d4b[2], d4b[3], d4b[4], d4b[5], d4b[6], d4b[7],
        ];
        Ok(Guid::from_fields(d1, d2, d3, d4))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bat_region_guid_is_stored_mixed_endian() {
        let g: Guid = "2DC27766-F623-4200-9D64-115E9BFD4A08".parse().unwrap();
        assert_eq!(
            g.0,
            [
                0x66, 0x77, 0xC2, 0x2D, 0x23, 0xF6, 0x00, 0x42, 0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD,
                0x4A, 0x08
            ]
        );
        assert_eq!(g.to_string(), "2DC27766-F623-4200-9D64-115E9BFD4A08");
    }

    #[test]
    fn braces_and_lower_case_parse_and_garbage_does_not() {
        let a: Guid = "{2dc27766-f623-4200-9d64-115e9bfd4a08}".parse().unwrap();
        let b: Guid = "2DC27766-F623-4200-9D64-115E9BFD4A08".parse().unwrap();
        assert_eq!(a, b);
        for bad in [
            "",
            "{}",
            "2DC27766-F623-4200-9D64",
            "2DC27766-F623-4200-9D64-115E9BFD4A0G",
            "+DC27766-F623-4200-9D64-115E9BFD4A08",
        ] {
            assert!(bad.parse::<Guid>().is_err(), "{bad}");
        }
    }
}
