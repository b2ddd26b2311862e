//! Parent locator item of differencing disks (MS-VHDX 2.6.2.6): UTF-16 key/value pairs.

use crate::error::{require_len, Error, Result};
use crate::guid::Guid;
use crate::le;

/// MS-VHDX 2.6.2.6: locator type for VHDX parents.
pub const VHDX_LOCATOR_TYPE: Guid = Guid::from_fields(
    0xB04A_EFB7,
    0xD19E,
    0x4A81,
    [0xB7, 0x89, 0x25, 0xB8, 0xE9, 0x44, 0x59, 0x13],
);
const HEADER_SIZE: usize = 20;
const KEY_VALUE_COUNT_AT: usize = 18;
const ENTRY_SIZE: usize = 12;

/// Keys tried in order to find the parent file (MS-VHDX 2.6.2.6.1).
pub const PATH_KEYS: [&str; 3] = ["relative_path", "volume_path", "absolute_win32_path"];

/// A decoded parent locator: type and its entries in stored order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentLocator {
    pub locator_type: Guid,
    pub entries: Vec<(String, String)>,
}

fn utf16(bytes: &[u8]) -> std::result::Result<String, ()> {
    if bytes.len() % 2 != 0 {
        return Err(());
    }
    let units: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    String::from_utf16(&units).map_err(|_| ())
}

impl ParentLocator {
    pub fn decode(bytes: &[u8]) -> Result<ParentLocator> {
        const S: &str = "parent locator";
        require_len(S, bytes, HEADER_SIZE)?;
        let locator_type = Guid::read(bytes, 0);
        let count = le::u16_at(bytes, KEY_VALUE_COUNT_AT) as usize;
        // Each entry needs 12 bytes in the item, so the item length bounds the count.
        let table_end = HEADER_SIZE + count * ENTRY_SIZE;
        if table_end > bytes.len() {
            return Err(Error::field(
                S,
                KEY_VALUE_COUNT_AT as u64,
                "KeyValueCount",
                count as u64,
                "MS-VHDX 2.6.2.6: entries must fit in the item",
            ));
        }
        let mut entries: Vec<(String, String)> = Vec::with_capacity(count);
        for i in 0..count {
            let at = HEADER_SIZE + i * ENTRY_SIZE;
            let field = |off: usize, len: usize, name: &'static str| -> Result<String> {
                let end = off.checked_add(len).filter(|&e| e <= bytes.len());
                let Some(end) = end else {
                    return Err(Error::invalid(
                        S,
                        at as u64,
                        format!("{name} lies outside the item"),
                    ));
                };
                if len == 0 {
                    return Err(Error::invalid(S, at as u64, format!("{name} is empty")));
                }
                utf16(&bytes[off..end]).map_err(|()| {
                    Error::invalid(S, off as u64, format!("{name} is not valid UTF-16LE"))
                })
            };
            let key_offset = le::u32_at(bytes, at) as usize;
            let value_offset = le::u32_at(bytes, at + 4) as usize;
            let key_len = le::u16_at(bytes, at + 8) as usize;
            let value_len = le::u16_at(bytes, at + 10) as usize;
            let key = field(key_offset, key_len, "key")?;
            let value = field(value_offset, value_len, "value")?;
            if entries.iter().any(|(k, _)| *k == key) {
                return Err(Error::invalid(
                    S,
                    at as u64,
                    format!("key {key:?} appears twice"),
                ));
            }
            entries.push((key, value));
        }
        Ok(ParentLocator {
            locator_type,
            entries,
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![0u8; HEADER_SIZE + self.entries.len() * ENTRY_SIZE];
        out[..16].copy_from_slice(&self.locator_type.0);
        le::put_u16(&mut out, KEY_VALUE_COUNT_AT, self.entries.len() as u16);
        for (i, (k, v)) in self.entries.iter().enumerate() {
            let at = HEADER_SIZE + i * ENTRY_SIZE;
            let mut push = |s: &str| {
                let off = out.len();
                out.extend(s.encode_utf16().flat_map(u16::to_le_bytes));
                (off as u32, (out.len() - off) as u16)
            };
            let (ko, kl) = push(k);
            let (vo, vl) = push(v);
            le::put_u32(&mut out, at, ko);
            le::put_u32(&mut out, at + 4, vo);
            le::put_u16(&mut out, at + 8, kl);
            le::put_u16(&mut out, at + 10, vl);
        }
        out
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The `parent_linkage` GUID every VHDX locator must carry.
    pub fn parent_linkage(&self) -> Result<Guid> {
        const S: &str = "parent locator";
        if self.locator_type != VHDX_LOCATOR_TYPE {
            return Err(Error::unsupported(
                S,
                0,
                format!("locator type {} is not the VHDX type", self.locator_type),
            ));
        }
        let value = self
            .get("parent_linkage")
            .ok_or_else(|| Error::invalid(S, 0, "no parent_linkage key (MS-VHDX 2.6.2.6.1)"))?;
        value
            .parse()
            .map_err(|e| Error::invalid(S, 0, format!("parent_linkage: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn locator() -> ParentLocator {
        ParentLocator {
            locator_type: VHDX_LOCATOR_TYPE,
            entries: vec![
                (
                    "parent_linkage".into(),
                    "{2DC27766-F623-4200-9D64-115E9BFD4A08}".into(),
                ),
                ("relative_path".into(), ".\\base.vhdx".into()),
            ],
        }
    }

    #[test]
    fn locator_round_trips_and_yields_linkage() {
        let l = locator();
        let d = ParentLocator::decode(&l.encode()).unwrap();
        assert_eq!(d, l);
        assert_eq!(
            d.parent_linkage().unwrap().to_string(),
            "2DC27766-F623-4200-9D64-115E9BFD4A08"
        );
        assert_eq!(d.get("relative_path"), Some(".\\base.vhdx"));
    }

    #[test]
    fn entries_pointing_outside_or_counting_too_many_are_refused() {
        let mut b = locator().encode();
        le::put_u16(&mut b, KEY_VALUE_COUNT_AT, 60000);
        assert!(ParentLocator::decode(&b).is_err());
        let mut b = locator().encode();
        le::put_u32(&mut b, HEADER_SIZE, u32::MAX - 1);
        assert!(ParentLocator::decode(&b).is_err());
    }

    #[test]
    fn duplicate_keys_and_missing_linkage_are_errors() {
        let mut l = locator();
        l.entries.push(("relative_path".into(), "x".into()));
        assert!(ParentLocator::decode(&l.encode()).is_err());
        let l = ParentLocator {
            locator_type: VHDX_LOCATOR_TYPE,
            entries: vec![],
        };
        assert!(l.parent_linkage().is_err());
    }
}
