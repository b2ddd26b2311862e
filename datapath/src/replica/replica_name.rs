//! What a replica may be called. A replica's name prefixes its blobs (`NAME.replica`,
//! `NAME.digests`, `NAME.journal`, `NAME.epochs`, the premium `NAME.log`) and its QEMU bitmaps
//! (`drplane.NAME.SEQ`), so it follows Azure's blob-name rules ([`pageblob::names`]) and a
//! little more: 1–255 characters (every derived name stays inside every limit, a file name's
//! included), and `/` only between non-empty segments that are not `.` or `..` (a name is not
//! a path: `/abs`, `a//b` and `..` would alias or escape).

use pageblob::names::blob_name_error;

/// Longest replica name, in characters.
pub const MAX_REPLICA_NAME_CHARS: usize = 255;

/// Why `name` cannot name a replica, if it cannot.
pub fn replica_name_error(name: &str) -> Option<String> {
    let chars = name.chars().count();
    if chars == 0 {
        return Some("empty".into());
    }
    if chars > MAX_REPLICA_NAME_CHARS {
        return Some(format!(
            "{chars} characters: at most {MAX_REPLICA_NAME_CHARS}"
        ));
    }
    if name
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Some("a name, not a path: no empty, '.' or '..' segment around '/'".into());
    }
    blob_name_error(&format!("{name}.replica"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_names_are_blob_name_prefixes_not_paths() {
        for ok in [
            "disk1",
            "vm-01/disk 0",
            "6a4f0c9e-1b2d",
            "ü",
            &"n".repeat(255),
        ] {
            assert_eq!(replica_name_error(ok), None, "{ok:?}");
        }
        for bad in [
            "",
            ".",
            "..",
            "/abs",
            "a/",
            "a//b",
            "a/../b",
            "line\nbreak",
            "tab\t",
            &"n".repeat(256),
        ] {
            assert!(replica_name_error(bad).is_some(), "{bad:?} accepted");
        }
    }
}
