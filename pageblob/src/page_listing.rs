//! Every page range of a blob, a snapshot or a diff between two (Get Page Ranges, all of its
//! pages), checked before anyone acts on it: what a replica's readers and writers trust a
//! listing to be. A store answers in pages of up to 10,000 ranges with an opaque
//! `NextMarker`, and an endpoint may be buggy or hostile, so each range must lie on whole
//! 512-byte pages within a page blob's largest size and overlap no other, and the listing
//! must end: a marker given back unchanged, or page after page with nothing in it, is an
//! error naming the blob, not a loop. Ranges come back in order, whatever order a page held
//! them in (a diff's cleared ranges past a shrunk blob's end come last).

use crate::types::{BlobPath, PageRangeList, MAX_BLOB_SIZE, PAGE_SIZE};
use crate::{PageBlobStore, PageRange, StoreError, StoreResult};

/// Pages in a row with no range in them that a listing may answer before it is refused.
pub const MAX_EMPTY_PAGES_IN_A_ROW: usize = 64;

/// All of Get Page Ranges of `path` (or its `snapshot`; with `prev_snapshot`, the diff
/// since that snapshot: written and cleared ranges), in order, checked as the module says.
pub fn all_page_ranges<S: PageBlobStore + ?Sized>(
    store: &S,
    path: &BlobPath,
    snapshot: Option<&str>,
    prev_snapshot: Option<&str>,
) -> StoreResult<Vec<PageRange>> {
    join_pages(path, |marker| {
        store.page_ranges(path, snapshot, prev_snapshot, None, marker, None)
    })
}

/// The pages `page` answers for each marker (none for the first), joined and checked.
pub(crate) fn join_pages(
    path: &BlobPath,
    mut page: impl FnMut(Option<&str>) -> StoreResult<PageRangeList>,
) -> StoreResult<Vec<PageRange>> {
    let mut all: Vec<PageRange> = Vec::new();
    let mut marker: Option<String> = None;
    let mut empty_in_a_row = 0;
    loop {
        let answer = page(marker.as_deref())?;
        let mut ranges = answer.ranges;
        ranges.sort_by_key(|r| r.start);
        let added = ranges.len();
        for r in ranges {
            check_range(path, &r)?;
            if let Some(before) = all.last() {
                if r.start <= before.end {
                    return Err(bad_listing(
                        path,
                        format!(
                            "range {}-{} overlaps range {}-{} (or comes back after it)",
                            r.start, r.end, before.start, before.end
                        ),
                    ));
                }
            }
            all.push(r);
        }
        let Some(next) = answer.next_marker else {
            return Ok(all);
        };
        if marker.as_deref() == Some(next.as_str()) {
            return Err(bad_listing(
                path,
                format!("the store gave back marker {next:?} unchanged: the listing would not end"),
            ));
        }
        empty_in_a_row = if added == 0 { empty_in_a_row + 1 } else { 0 };
        if empty_in_a_row > MAX_EMPTY_PAGES_IN_A_ROW {
            return Err(bad_listing(
                path,
                format!(
                    "the store answered {empty_in_a_row} pages in a row with no range in them, \
                     each with another marker"
                ),
            ));
        }
        marker = Some(next);
    }
}

/// A range must cover whole 512-byte pages of a page blob (`end` is inclusive).
fn check_range(path: &BlobPath, r: &PageRange) -> StoreResult<()> {
    let whole_pages = r.start % PAGE_SIZE == 0 && r.end % PAGE_SIZE == PAGE_SIZE - 1;
    if r.start > r.end || !whole_pages || r.end >= MAX_BLOB_SIZE {
        return Err(bad_listing(
            path,
            format!(
                "range {}-{} is not whole 512-byte pages of a page blob (at most {MAX_BLOB_SIZE} bytes)",
                r.start, r.end
            ),
        ));
    }
    Ok(())
}

fn bad_listing(path: &BlobPath, why: String) -> StoreError {
    StoreError::Io {
        path: format!("Get Page Ranges of {path}"),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::data_log::Durability;
    use crate::{Conditions, Emulator, Profile};

    fn range(start: u64, end: u64) -> PageRange {
        PageRange {
            start,
            end,
            cleared: false,
        }
    }

    fn page(ranges: Vec<PageRange>, next: Option<&str>) -> PageRangeList {
        PageRangeList {
            ranges,
            next_marker: next.map(str::to_string),
        }
    }

    /// The pages a store answers in turn, the last one again and again; and the markers it
    /// was asked with.
    fn scripted(answers: Vec<PageRangeList>) -> (StoreResult<Vec<PageRange>>, Vec<Option<String>>) {
        let mut asked = Vec::new();
        let got = join_pages(&BlobPath::new("c", "b"), |marker| {
            asked.push(marker.map(str::to_string));
            Ok(answers[(asked.len() - 1).min(answers.len() - 1)].clone())
        });
        (got, asked)
    }

    fn refusal(answers: Vec<PageRangeList>) -> String {
        let e = scripted(answers).0.unwrap_err().to_string();
        assert!(e.contains("Get Page Ranges of c/b"), "{e}");
        e
    }

    #[test]
    fn pages_are_joined_in_order_passing_back_opaque_markers() {
        let (got, asked) = scripted(vec![
            page(
                vec![range(4096, 8191), range(0, 511)],
                Some("2!48!MDAwMDA4IXRva2Vu"),
            ),
            page(vec![], Some("2!48!bmV4dA")),
            page(vec![range(1 << 20, (2 << 20) - 1)], None),
        ]);
        assert_eq!(
            got.unwrap(),
            vec![
                range(0, 511),
                range(4096, 8191),
                range(1 << 20, (2 << 20) - 1)
            ]
        );
        assert_eq!(
            asked,
            vec![
                None,
                Some("2!48!MDAwMDA4IXRva2Vu".into()),
                Some("2!48!bmV4dA".into())
            ]
        );
    }

    #[test]
    fn ranges_that_are_not_whole_pages_of_a_page_blob_are_refused() {
        for bad in [
            range(512, 511),
            range(100, 611),
            range(0, 1000),
            range(MAX_BLOB_SIZE - 512, u64::MAX),
            range(0, u64::MAX),
            range(MAX_BLOB_SIZE, MAX_BLOB_SIZE + 511),
        ] {
            let e = refusal(vec![page(vec![bad], None)]);
            assert!(
                e.contains(&format!(
                    "range {}-{} is not whole 512-byte pages",
                    bad.start, bad.end
                )),
                "{e}"
            );
        }
        // The largest range there is passes.
        let (got, _) = scripted(vec![page(vec![range(0, MAX_BLOB_SIZE - 1)], None)]);
        assert_eq!(got.unwrap().len(), 1);
    }

    #[test]
    fn overlapping_ranges_and_pages_that_go_back_are_refused() {
        let e = refusal(vec![page(vec![range(0, 4095), range(3584, 8191)], None)]);
        assert!(e.contains("range 3584-8191 overlaps range 0-4095"), "{e}");
        let e = refusal(vec![
            page(vec![range(8192, 16383)], Some("a")),
            page(vec![range(0, 511)], None),
        ]);
        assert!(e.contains("range 0-511 overlaps range 8192-16383"), "{e}");
    }

    #[test]
    fn a_listing_that_would_not_end_is_an_error_not_a_hang() {
        // The same marker again and again.
        let e = refusal(vec![
            page(vec![range(0, 511)], Some("m")),
            page(vec![], Some("m")),
        ]);
        assert!(e.contains("marker \"m\" unchanged"), "{e}");
        // Or the same page again with it: its ranges come back.
        let e = refusal(vec![page(vec![range(0, 511)], Some("m"))]);
        assert!(e.contains("range 0-511 overlaps range 0-511"), "{e}");
        // A new marker every time, nothing in the pages.
        let mut calls = 0u64;
        let e = join_pages(&BlobPath::new("c", "b"), |_| {
            calls += 1;
            Ok(page(vec![], Some(&calls.to_string())))
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("65 pages in a row with no range"), "{e}");
        assert_eq!(calls, 65);
    }

    #[test]
    fn a_stores_listing_of_more_than_one_answer_passes_whole() {
        let dir = tempfile::tempdir().unwrap();
        let clock = std::sync::Arc::new(ManualClock::new(0));
        let store =
            Emulator::open(dir.path(), Profile::Standard, Durability::Process, clock).unwrap();
        let p = BlobPath::new("pages", "b");
        store.create_container("pages").unwrap();
        store
            .create_page_blob(&p, 16 << 20, 0, &Conditions::default())
            .unwrap();
        // More ranges than one answer holds (10,000): every other page written.
        for i in 0..10_050u64 {
            store
                .put_pages(&p, i * 1024, &[1; 512], &Conditions::default())
                .unwrap();
        }
        let all = all_page_ranges(&store, &p, None, None).unwrap();
        assert_eq!(all.len(), 10_050);
        assert!(all
            .iter()
            .enumerate()
            .all(|(i, r)| *r == range(i as u64 * 1024, i as u64 * 1024 + 511)));
    }
}
