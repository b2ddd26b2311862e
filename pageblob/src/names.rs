//! Azure's naming rules for containers and blobs, checked wherever a name enters: the store
//! (Create Container, Create Blob), the REST server (every request's path) and the CLI.
//!
//! Blob names (MS docs, "Naming and Referencing Containers, Blobs, and Metadata"): 1 to 1,024
//! characters; control characters (U+0000–U+001F, U+007F–U+009F) and the private-use code
//! points (U+E000–U+F8FF) are refused; at most 254 `/`-separated segments. We also refuse the
//! segments `.` and `..`, which HTTP clients fold away (two URLs, one blob). Names holding
//! characters XML cannot carry (U+FFFE, U+FFFF) are listed percent-encoded with
//! `Encoded="true"`, as Azure does.

/// Longest blob name, in characters.
pub const MAX_BLOB_NAME_CHARS: usize = 1024;
/// Most `/`-separated segments in a blob name.
pub const MAX_BLOB_NAME_SEGMENTS: usize = 254;

/// Why `name` is not a container name, if it is not: 3–63 lower-case letters, digits and
/// single hyphens, starting and ending with a letter or digit.
pub fn container_name_error(name: &str) -> Option<String> {
    let valid = (3..=63).contains(&name.len())
        && name
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--");
    (!valid).then(|| {
        format!("container name {name:?}: 3-63 lower-case letters, digits and single hyphens")
    })
}

/// Why `name` is not a blob name, if it is not.
pub fn blob_name_error(name: &str) -> Option<String> {
    let chars = name.chars().count();
    if chars == 0 {
        return Some("blob name is empty".into());
    }
    if chars > MAX_BLOB_NAME_CHARS {
        return Some(format!(
            "blob name of {chars} characters: at most {MAX_BLOB_NAME_CHARS}"
        ));
    }
    if let Some(c) = name.chars().find(|&c| refused_char(c)) {
        return Some(format!(
            "blob name {name:?} holds U+{:04X}: control and private-use characters are not allowed",
            c as u32
        ));
    }
    let segments = name.split('/').count();
    if segments > MAX_BLOB_NAME_SEGMENTS {
        return Some(format!(
            "blob name of {segments} segments: at most {MAX_BLOB_NAME_SEGMENTS}"
        ));
    }
    if name.split('/').any(|s| s == "." || s == "..") {
        return Some(format!(
            "blob name {name:?} has a '.' or '..' segment (clients fold it away)"
        ));
    }
    None
}

fn refused_char(c: char) -> bool {
    c.is_control() || ('\u{E000}'..='\u{F8FF}').contains(&c)
}

/// Whether a listing must carry `name` percent-encoded (`Encoded="true"`): it holds a
/// character that XML 1.0 cannot.
pub fn needs_encoding_in_xml(name: &str) -> bool {
    name.chars().any(|c| c == '\u{FFFE}' || c == '\u{FFFF}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_names_follow_azures_rules() {
        for ok in [
            "a",
            "disk.vhdx",
            "vm/disk-0",
            "a b",
            "ü/日本",
            "a./b",
            "x\u{FFFF}",
        ] {
            assert_eq!(blob_name_error(ok), None, "{ok:?}");
        }
        let long = "a".repeat(MAX_BLOB_NAME_CHARS);
        assert_eq!(blob_name_error(&long), None);
        for bad in [
            "", "a\nb", "\0", "a\u{7f}", "a\u{85}", "\u{E000}", ".", "..", "a/../b", "a/./b",
        ] {
            assert!(blob_name_error(bad).is_some(), "{bad:?}");
        }
        assert!(blob_name_error(&format!("{long}a")).is_some());
        assert!(blob_name_error(&"a/".repeat(MAX_BLOB_NAME_SEGMENTS)).is_some());
        assert_eq!(
            blob_name_error(&"a/".repeat(MAX_BLOB_NAME_SEGMENTS - 1)),
            None
        );
    }

    #[test]
    fn container_names_follow_azures_rules() {
        for ok in ["abc", "a-b-c", "0vm", &"a".repeat(63)] {
            assert_eq!(container_name_error(ok), None, "{ok:?}");
        }
        for bad in ["ab", "-ab", "ab-", "a--b", "ABC", "a_b", &"a".repeat(64)] {
            assert!(container_name_error(bad).is_some(), "{bad:?}");
        }
    }
}
