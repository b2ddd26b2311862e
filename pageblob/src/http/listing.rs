//! Paging of List Blobs and List Containers as Azure does it: `prefix` filters, `delimiter`
//! folds names into `BlobPrefix` entries (a virtual directory), `maxresults` bounds a page
//! (default and most 5,000) and `marker` continues where the last page's `NextMarker` said.
//! Markers are opaque to clients: ours are the base64url of the next entry's sort key.

use base64::Engine as _;

use crate::error::{ErrorCode, StoreError};
use crate::types::BlobListing;

/// Most entries per listing page, and the default.
pub const MAX_LIST_RESULTS: usize = 5000;

/// The query parameters that shape a listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListParams {
    pub prefix: String,
    pub delimiter: Option<String>,
    /// Sort key to start from (decoded from the client's `marker`).
    pub start_key: Option<String>,
    /// The marker as the client sent it (echoed in `<Marker>`).
    pub marker: Option<String>,
    pub max_results: usize,
    /// Requested page size as sent (echoed in `<MaxResults>`).
    pub max_results_sent: Option<usize>,
}

fn invalid(name: &str, value: &str) -> StoreError {
    StoreError::service(
        ErrorCode::InvalidQueryParameterValue,
        format!("{name}={value:?} is not valid here"),
    )
}

impl ListParams {
    /// From a request's query parameters (looked up by name).
    pub fn from_query<'a>(q: impl Fn(&str) -> Option<&'a str>) -> Result<ListParams, StoreError> {
        let max_results_sent = q("maxresults")
            .map(|v| {
                v.parse::<usize>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| invalid("maxresults", v))
            })
            .transpose()?;
        let marker = q("marker").filter(|m| !m.is_empty());
        let start_key = marker
            .map(|m| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(m)
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(|| invalid("marker", m))
            })
            .transpose()?;
        Ok(ListParams {
            prefix: q("prefix").unwrap_or_default().to_string(),
            delimiter: q("delimiter").filter(|d| !d.is_empty()).map(str::to_string),
            start_key,
            marker: marker.map(str::to_string),
            max_results: max_results_sent
                .unwrap_or(MAX_LIST_RESULTS)
                .min(MAX_LIST_RESULTS),
            max_results_sent,
        })
    }
}

fn marker_of(key: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key)
}

/// One entry of a List Blobs page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobEntry<'a> {
    Blob(&'a BlobListing),
    /// Names sharing this prefix up to and including the delimiter.
    Prefix(String),
}

/// Sort key of a listed blob or snapshot: the name, then the snapshot time (a blob's
/// snapshots come before it, oldest first, as Azure lists them). Names hold no control
/// characters, so `\n` separates.
fn blob_key(b: &BlobListing) -> String {
    let rank = b.properties.snapshot.as_deref().unwrap_or("~");
    format!("{}\n{rank}", b.name)
}

/// One page of `blobs` (the whole listing, in name order, snapshots before their blob) and the
/// marker of the next page.
pub fn page_blobs<'a>(
    blobs: &'a [BlobListing],
    params: &ListParams,
) -> (Vec<BlobEntry<'a>>, Option<String>) {
    let mut out: Vec<(String, BlobEntry<'a>)> = Vec::new();
    for b in blobs {
        let Some(rest) = b.name.strip_prefix(params.prefix.as_str()) else {
            continue;
        };
        let folded = params
            .delimiter
            .as_deref()
            .and_then(|d| rest.find(d).map(|i| i + d.len()));
        let (key, entry) = match folded {
            Some(end) => {
                let prefix = format!("{}{}", params.prefix, &rest[..end]);
                if matches!(out.last(), Some((_, BlobEntry::Prefix(p))) if *p == prefix) {
                    continue;
                }
                // A prefix sorts before every name it folds (it is their prefix).
                (format!("{prefix}\n"), BlobEntry::Prefix(prefix))
            }
            None => (blob_key(b), BlobEntry::Blob(b)),
        };
        if params
            .start_key
            .as_deref()
            .is_some_and(|s| key.as_str() < s)
        {
            continue;
        }
        out.push((key, entry));
        if out.len() > params.max_results {
            break;
        }
    }
    let next = (out.len() > params.max_results).then(|| {
        let (key, _) = out.pop().expect("one past the page");
        marker_of(&key)
    });
    (out.into_iter().map(|(_, e)| e).collect(), next)
}

/// One page of container names (sorted) and the marker of the next page.
pub fn page_names<'a>(names: &'a [String], params: &ListParams) -> (Vec<&'a str>, Option<String>) {
    let mut page: Vec<&str> = names
        .iter()
        .map(String::as_str)
        .filter(|n| n.starts_with(params.prefix.as_str()))
        .filter(|n| params.start_key.as_deref().is_none_or(|s| *n >= s))
        .take(params.max_results + 1)
        .collect();
    let next = (page.len() > params.max_results).then(|| marker_of(page.pop().expect("one past")));
    (page, next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Properties;

    fn listing(name: &str, snapshot: Option<&str>) -> BlobListing {
        BlobListing {
            name: name.into(),
            properties: Properties {
                snapshot: snapshot.map(str::to_string),
                ..Properties::default()
            },
        }
    }

    fn names(entries: &[BlobEntry<'_>]) -> Vec<String> {
        entries
            .iter()
            .map(|e| match e {
                BlobEntry::Blob(b) => match &b.properties.snapshot {
                    Some(s) => format!("{}@{s}", b.name),
                    None => b.name.clone(),
                },
                BlobEntry::Prefix(p) => format!("{p}*"),
            })
            .collect()
    }

    fn params(query: &[(&str, &str)]) -> ListParams {
        ListParams::from_query(|n| query.iter().find(|(k, _)| *k == n).map(|(_, v)| *v)).unwrap()
    }

    #[test]
    fn prefix_delimiter_and_paging_walk_the_listing_once() {
        let all = vec![
            listing("a/1", None),
            listing("a/2", None),
            listing("a/b/3", None),
            listing("b", Some("2024-01-01T00:00:00.0000000Z")),
            listing("b", None),
            listing("c/4", None),
        ];
        let (page, next) = page_blobs(&all, &params(&[("delimiter", "/")]));
        assert_eq!(
            names(&page),
            ["a/*", "b@2024-01-01T00:00:00.0000000Z", "b", "c/*"]
        );
        assert_eq!(next, None);
        let (page, _) = page_blobs(&all, &params(&[("prefix", "a/"), ("delimiter", "/")]));
        assert_eq!(names(&page), ["a/1", "a/2", "a/b/*"]);
        // Pages of two, following NextMarker, give the flat listing exactly once.
        let mut seen = Vec::new();
        let mut marker = String::new();
        loop {
            let p = params(&[("maxresults", "2"), ("marker", &marker)]);
            let (page, next) = page_blobs(&all, &p);
            assert!(page.len() <= 2);
            seen.extend(names(&page));
            match next {
                Some(m) => marker = m,
                None => break,
            }
        }
        assert_eq!(seen.len(), all.len());
        assert_eq!(seen[3], "b@2024-01-01T00:00:00.0000000Z");
        assert_eq!(seen[4], "b");
    }

    #[test]
    fn container_names_page_by_prefix_and_marker() {
        let all: Vec<String> = ["alpha", "beta", "bravo", "charlie"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (page, next) = page_names(&all, &params(&[("prefix", "b"), ("maxresults", "1")]));
        assert_eq!(page, ["beta"]);
        let m = next.unwrap();
        let (page, next) = page_names(&all, &params(&[("prefix", "b"), ("marker", &m)]));
        assert_eq!((page, next), (vec!["bravo"], None));
    }

    #[test]
    fn bad_paging_parameters_are_refused() {
        for (n, v) in [("maxresults", "0"), ("maxresults", "x"), ("marker", "%%")] {
            let e = ListParams::from_query(|k| (k == n).then_some(v)).unwrap_err();
            assert_eq!(
                e.code(),
                Some(ErrorCode::InvalidQueryParameterValue),
                "{n}={v}"
            );
        }
    }
}
