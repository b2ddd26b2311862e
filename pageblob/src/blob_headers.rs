//! What a client attaches to a blob or container besides its pages: user metadata
//! (`x-ms-meta-NAME: VALUE`) and the standard content headers (`x-ms-blob-content-type` …),
//! Azure's rules for them, and how they are logged (in the store's effect log, as JSON).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// User metadata, by name. HTTP/1.1 header names are case-insensitive and arrive lowercased,
/// so names are kept lowercase (Azure keeps the case of the first write; see
/// docs/pageblob-store.md). A `BTreeMap`: listings and logs come out in one order.
pub type Metadata = BTreeMap<String, String>;

/// Most bytes of metadata (names and values) per blob or container, as Azure allows.
pub const MAX_METADATA_BYTES: usize = 8 << 10;

/// Why metadata is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetadataError {
    /// A name is not an identifier, or a value not printable ASCII (Azure: InvalidMetadata).
    Invalid(String),
    /// More than [`MAX_METADATA_BYTES`] in all (Azure: MetadataTooLarge).
    TooLarge(String),
}

/// Check metadata as Azure does: names are C# identifiers (a letter or `_`, then letters,
/// digits or `_`), values are printable ASCII (what an HTTP header carries), 8 KiB in all.
pub fn check_metadata(metadata: &Metadata) -> Result<(), MetadataError> {
    let mut total = 0usize;
    for (name, value) in metadata {
        let mut chars = name.chars();
        let identifier = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !identifier {
            return Err(MetadataError::Invalid(format!(
                "metadata name {name:?} is not an identifier (letter or _, then letters, digits, _)"
            )));
        }
        if !value
            .bytes()
            .all(|b| b == b'\t' || (0x20..0x7f).contains(&b))
        {
            return Err(MetadataError::Invalid(format!(
                "metadata value of {name:?} is not printable ASCII"
            )));
        }
        total += name.len() + value.len();
    }
    if total > MAX_METADATA_BYTES {
        return Err(MetadataError::TooLarge(format!(
            "{total} bytes of metadata; at most {MAX_METADATA_BYTES}"
        )));
    }
    Ok(())
}

/// The standard HTTP properties of a blob: set by Put Blob (`x-ms-blob-content-*`,
/// `x-ms-blob-cache-control`) or Set Blob Properties, answered as `Content-Type` … on reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContentHeaders {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_encoding: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_language: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_disposition: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_control: Option<String>,
    /// Base64 of the MD5 the client says the content has (stored, never computed: a page
    /// blob's pages change under it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_md5: Option<String>,
}

impl ContentHeaders {
    pub fn is_empty(&self) -> bool {
        *self == ContentHeaders::default()
    }

    /// Each header as `(request header name, response header name, value)`.
    pub fn fields(&self) -> [(&'static str, &'static str, Option<&str>); 6] {
        [
            (
                "x-ms-blob-content-type",
                "content-type",
                self.content_type.as_deref(),
            ),
            (
                "x-ms-blob-content-encoding",
                "content-encoding",
                self.content_encoding.as_deref(),
            ),
            (
                "x-ms-blob-content-language",
                "content-language",
                self.content_language.as_deref(),
            ),
            (
                "x-ms-blob-content-disposition",
                "content-disposition",
                self.content_disposition.as_deref(),
            ),
            (
                "x-ms-blob-cache-control",
                "cache-control",
                self.cache_control.as_deref(),
            ),
            (
                "x-ms-blob-content-md5",
                "content-md5",
                self.content_md5.as_deref(),
            ),
        ]
    }

    /// `Err` names the first header whose value could not be sent back in an HTTP answer
    /// (only printable ASCII and tabs can: anything else would fail every later read).
    pub fn check(&self) -> Result<(), String> {
        for (name, _, value) in self.fields() {
            if value.is_some_and(|v| !v.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b))) {
                return Err(format!("{name} is not printable ASCII"));
            }
        }
        Ok(())
    }

    /// Build from request headers, looked up by their `x-ms-blob-*` names; `None` when the
    /// request sets none of them (Set Blob Properties then leaves them as they are).
    pub fn from_request(header: impl Fn(&str) -> Option<String>) -> Option<ContentHeaders> {
        let get = |name: &str| header(name);
        let c = ContentHeaders {
            content_type: get("x-ms-blob-content-type"),
            content_encoding: get("x-ms-blob-content-encoding"),
            content_language: get("x-ms-blob-content-language"),
            content_disposition: get("x-ms-blob-content-disposition"),
            cache_control: get("x-ms-blob-cache-control"),
            content_md5: get("x-ms-blob-content-md5"),
        };
        (!c.is_empty()).then_some(c)
    }
}

/// What Put Blob sets besides the size and sequence number.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlobHeaders {
    pub metadata: Metadata,
    pub content: ContentHeaders,
}

impl BlobHeaders {
    pub fn is_empty(&self) -> bool {
        self.metadata.is_empty() && self.content.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(pairs: &[(&str, &str)]) -> Metadata {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn metadata_names_are_identifiers_and_the_total_is_bounded() {
        assert!(check_metadata(&meta(&[("owner", "ops"), ("_x9", "")])).is_ok());
        for bad in ["9lives", "has-dash", "", "sp ace", "ü"] {
            let e = check_metadata(&meta(&[(bad, "v")])).unwrap_err();
            assert!(matches!(e, MetadataError::Invalid(_)), "{bad:?}: {e:?}");
        }
        let e = check_metadata(&meta(&[("v", "line\nbreak")])).unwrap_err();
        assert!(matches!(e, MetadataError::Invalid(_)), "{e:?}");
        let big = "x".repeat(MAX_METADATA_BYTES);
        let e = check_metadata(&meta(&[("a", &big)])).unwrap_err();
        assert!(matches!(e, MetadataError::TooLarge(_)), "{e:?}");
        assert!(check_metadata(&meta(&[("a", &big[1..])])).is_ok());
    }

    #[test]
    fn content_headers_are_set_together_or_not_at_all() {
        assert_eq!(ContentHeaders::from_request(|_| None), None);
        let c = ContentHeaders::from_request(|n| {
            (n == "x-ms-blob-content-type").then(|| "text/plain".to_string())
        })
        .unwrap();
        assert_eq!(c.content_type.as_deref(), Some("text/plain"));
        assert_eq!(c.fields().iter().filter(|f| f.2.is_some()).count(), 1);
        assert_eq!(c.check(), Ok(()));
        let bad = ContentHeaders {
            cache_control: Some("a\nb".into()),
            ..c.clone()
        };
        assert!(bad.check().unwrap_err().contains("x-ms-blob-cache-control"));
        // Logged compactly: unset headers are not written.
        assert_eq!(
            serde_json::to_string(&c).unwrap(),
            r#"{"content_type":"text/plain"}"#
        );
    }
}

/// What one Set Blob Properties request changes: any of a new size, a sequence-number action
/// and the content headers ([`crate::PageBlobStore::set_properties`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PropertyChanges {
    /// `x-ms-blob-content-length`.
    pub size: Option<u64>,
    /// `x-ms-sequence-number-action` (with `x-ms-blob-sequence-number`).
    pub sequence_number: Option<crate::SequenceNumberAction>,
    /// The six content headers, set together.
    pub content: Option<ContentHeaders>,
}
