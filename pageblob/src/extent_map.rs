//! The page map of one blob version: which byte ranges hold data (and where it is stored),
//! which were cleared, and the write sequence number of each — enough to answer Get Page
//! Ranges and its `prevsnapshot` diff in O(ranges) and to take a snapshot by cloning metadata.
//! The map is persistent (`imbl::OrdMap`): a clone shares every node with the original and a
//! change copies only the nodes on its path, so a snapshot costs O(1) however many extents the
//! blob has, and a write after it O(log n).

use imbl::OrdMap;

/// Where an extent's bytes live (opaque to the map; shifted when an extent is split):
/// a [`home`] offset in the blob's own data file, or an address in the store's data log.
/// `None`: the range was cleared.
pub type DataLocation = Option<u64>;

/// Marks a location as an offset in the blob's home file rather than a log address.
pub const HOME_BIT: u64 = 1 << 63;

/// The location of byte `offset` of the blob's home file.
pub fn home(offset: u64) -> u64 {
    assert!(offset < HOME_BIT);
    HOME_BIT | offset
}

/// `Some(offset)` when `location` is in the home file.
pub fn home_offset(location: u64) -> Option<u64> {
    (location & HOME_BIT != 0).then_some(location & !HOME_BIT)
}

/// One run of pages written (or cleared) by a single operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub len: u64,
    /// The store-wide operation number that wrote it; diffs compare against a snapshot's.
    pub seq: u64,
    pub data: DataLocation,
}

/// Page ranges of a blob version: non-overlapping extents keyed by start offset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtentMap {
    extents: OrdMap<u64, Extent>,
}

/// The snapshots that may read some range's bytes from the home file, by the operation that
/// took them ([`ExtentMap::home_readers`]): a filter, each candidate's own map decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HomeReaders {
    /// Snapshots taken after this operation (`u64::MAX`: none).
    pub taken_after: u64,
    /// Snapshots taken before this operation (0: none).
    pub taken_before: u64,
    /// Any snapshot.
    pub any: bool,
}

impl HomeReaders {
    /// True when a snapshot taken by operation `taken_at` may be one of them.
    pub fn may_include(&self, taken_at: u64) -> bool {
        self.any || taken_at > self.taken_after || taken_at < self.taken_before
    }
}

/// A range reported by Get Page Ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRange {
    pub start: u64,
    /// Inclusive end, as Azure reports it.
    pub end: u64,
    /// True for a `ClearRange` (only in diffs).
    pub cleared: bool,
}

impl ExtentMap {
    pub fn len(&self) -> usize {
        self.extents.len()
    }

    pub fn is_empty(&self) -> bool {
        self.extents.is_empty()
    }

    /// Record a write (data) or clear (`None`) of `[start, start+len)` by operation `seq`.
    pub fn insert(&mut self, start: u64, len: u64, seq: u64, data: DataLocation) {
        assert!(len > 0);
        let end = start + len;
        self.cut(start, end);
        self.extents.insert(start, Extent { len, seq, data });
    }

    /// Remove everything at or past `size` (a shrinking resize).
    pub fn truncate(&mut self, size: u64) {
        self.cut(size, u64::MAX);
    }

    /// Drop the parts of extents inside `[start, end)`, keeping what sticks out on each side.
    fn cut(&mut self, start: u64, end: u64) {
        let overlapping: Vec<(u64, Extent)> = self
            .extents
            .range(..end)
            .rev()
            .take_while(|(s, e)| **s + e.len > start)
            .map(|(s, e)| (*s, *e))
            .collect();
        for (s, e) in overlapping {
            self.extents.remove(&s);
            let e_end = s + e.len;
            if s < start {
                self.extents.insert(
                    s,
                    Extent {
                        len: start - s,
                        ..e
                    },
                );
            }
            if e_end > end {
                let shift = end - s;
                self.extents.insert(
                    end,
                    Extent {
                        len: e_end - end,
                        seq: e.seq,
                        data: e.data.map(|d| d + shift),
                    },
                );
            }
        }
    }

    /// Extents intersecting `[start, end)`, clipped to it, in order.
    pub fn clipped(&self, start: u64, end: u64) -> Vec<(u64, Extent)> {
        self.clipped_iter(start, end).collect()
    }

    /// [`ExtentMap::clipped`] without collecting.
    fn clipped_iter(&self, start: u64, end: u64) -> impl Iterator<Item = (u64, Extent)> + '_ {
        // An empty range (e.g. a marker or range past the blob's end) yields nothing.
        let first = self
            .extents
            .range(..=start)
            .next_back()
            .map_or(start, |(s, _)| *s);
        self.extents
            .range(first..end.max(first))
            .filter(move |(s, e)| start < end && **s + e.len > start)
            .map(move |(&s, e)| {
                let lo = s.max(start);
                let hi = (s + e.len).min(end);
                (
                    lo,
                    Extent {
                        len: hi - lo,
                        seq: e.seq,
                        data: e.data.map(|d| d + (lo - s)),
                    },
                )
            })
    }

    /// Point the parts of `[start, start+len)` whose data is in the home file at `log_address`
    /// instead (the home bytes `start..` were copied there), keeping their sequence numbers.
    /// An extent wholly inside the range keeps its place and only its location changes (one
    /// path copied in a map that other snapshots share); one that sticks out is split.
    pub fn relocate_home(&mut self, start: u64, len: u64, log_address: u64) {
        for (s, e) in self.clipped(start, start + len) {
            if let Some(h) = e.data.and_then(home_offset) {
                assert!(
                    h >= start && h + e.len <= start + len,
                    "home data sits at its own offset"
                );
                let relocated = Some(log_address + (h - start));
                if self.extents.get(&s).is_some_and(|whole| whole.len == e.len) {
                    if let Some(whole) = self.extents.get_mut(&s) {
                        whole.data = relocated;
                    }
                } else {
                    self.insert(s, e.len, e.seq, relocated);
                }
            }
        }
    }

    /// True when any part of `[start, end)` has its data in the home file.
    pub fn has_home_data(&self, start: u64, end: u64) -> bool {
        self.clipped_iter(start, end)
            .any(|(_, e)| e.data.and_then(home_offset).is_some())
    }

    /// Which snapshots of this (base) map may still read part of `[start, end)` from the home
    /// file, by the operation that took them. Every write of home bytes first relocated the
    /// snapshots that read the bytes it replaced, so: where the range is home data written by
    /// operation `q`, only snapshots taken after `q`; where it was cleared by operation `c`,
    /// only snapshots taken before `c` (the home bytes stay until the next write); where it
    /// was never written, only snapshots taken before the last shrinking resize `shrunk_at`
    /// (0: none) cut it off; data anywhere else, any snapshot.
    pub fn home_readers(&self, start: u64, end: u64, shrunk_at: u64) -> HomeReaders {
        let mut readers = HomeReaders {
            taken_after: u64::MAX,
            taken_before: 0,
            any: false,
        };
        let mut covered = start;
        for (s, e) in self.clipped_iter(start, end) {
            if s > covered {
                readers.taken_before = readers.taken_before.max(shrunk_at);
            }
            match e.data {
                None => readers.taken_before = readers.taken_before.max(e.seq),
                Some(location) if home_offset(location).is_some() => {
                    readers.taken_after = readers.taken_after.min(e.seq)
                }
                Some(_) => readers.any = true,
            }
            covered = s + e.len;
        }
        if covered < end {
            readers.taken_before = readers.taken_before.max(shrunk_at);
        }
        readers
    }

    /// Valid (written, not cleared) ranges within `[start, end)`, adjacent ones merged.
    pub fn valid_ranges(&self, start: u64, end: u64) -> Vec<PageRange> {
        merge(
            self.clipped_iter(start, end)
                .filter(|(_, e)| e.data.is_some())
                .map(|(s, e)| (s, e.len, false)),
        )
    }

    /// Ranges within `[start, end)` changed after operation `since`, which took the previous
    /// snapshot, whose map is `earlier`: written ones as page ranges, cleared ones as clear
    /// ranges, adjacent ones of the same kind merged.
    ///
    /// Every extent of `earlier` was written by `since` at the latest, so one written after it
    /// is never an entry `earlier` holds: only the entries that differ between the two maps are
    /// looked at. A snapshot's map shares with later ones every node no write since has copied,
    /// and the structural diff steps over those, so the answer costs the changes (a few per
    /// cycle), not the blob's extents (thousands, which a walk of the whole map visited).
    pub fn changed_since(
        &self,
        since: u64,
        earlier: &ExtentMap,
        start: u64,
        end: u64,
    ) -> Vec<PageRange> {
        use imbl::ordmap::DiffItem;
        merge(
            earlier
                .extents
                .diff(&self.extents)
                .filter_map(|item| match item {
                    DiffItem::Add(&s, e) | DiffItem::Update { new: (&s, e), .. } => Some((s, e)),
                    DiffItem::Remove(..) => None,
                })
                .filter(|(_, e)| e.seq > since)
                .filter_map(|(s, e)| {
                    let (lo, hi) = (s.max(start), (s + e.len).min(end));
                    (lo < hi).then(|| (lo, hi - lo, e.data.is_none()))
                }),
        )
    }
}

fn merge(parts: impl Iterator<Item = (u64, u64, bool)>) -> Vec<PageRange> {
    let mut out: Vec<PageRange> = Vec::new();
    for (s, len, cleared) in parts {
        match out.last_mut() {
            Some(last) if last.end + 1 == s && last.cleared == cleared => last.end = s + len - 1,
            _ => out.push(PageRange {
                start: s,
                end: s + len - 1,
                cleared,
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overwrite_splits_and_shifts_data_locations() {
        let mut m = ExtentMap::default();
        m.insert(0, 4096, 1, Some(1000));
        m.insert(1024, 512, 2, Some(9000));
        let parts = m.clipped(0, 4096);
        assert_eq!(parts.len(), 3);
        assert_eq!(
            parts[0],
            (
                0,
                Extent {
                    len: 1024,
                    seq: 1,
                    data: Some(1000)
                }
            )
        );
        assert_eq!(
            parts[1],
            (
                1024,
                Extent {
                    len: 512,
                    seq: 2,
                    data: Some(9000)
                }
            )
        );
        assert_eq!(
            parts[2],
            (
                1536,
                Extent {
                    len: 2560,
                    seq: 1,
                    data: Some(2536)
                }
            )
        );
        assert_eq!(
            m.valid_ranges(0, 1 << 20),
            vec![PageRange {
                start: 0,
                end: 4095,
                cleared: false
            }]
        );
    }

    #[test]
    fn diff_reports_writes_and_clears_after_the_snapshot_only() {
        let mut m = ExtentMap::default();
        m.insert(0, 8192, 1, Some(0));
        let (snapshot, snapshot_seq) = (m.clone(), 1);
        m.insert(512, 512, 2, None);
        m.insert(4096, 1024, 3, Some(50_000));
        assert_eq!(
            m.changed_since(snapshot_seq, &snapshot, 0, 8192),
            vec![
                PageRange {
                    start: 512,
                    end: 1023,
                    cleared: true
                },
                PageRange {
                    start: 4096,
                    end: 5119,
                    cleared: false
                }
            ]
        );
        assert_eq!(m.valid_ranges(0, 8192).len(), 2);
    }

    #[test]
    fn relocation_moves_only_home_data_and_keeps_sequence_numbers() {
        let mut m = ExtentMap::default();
        m.insert(0, 4096, 1, Some(home(0)));
        m.insert(1024, 1024, 2, Some(777));
        m.insert(3072, 512, 3, None);
        assert!(m.has_home_data(0, 1024));
        m.relocate_home(0, 4096, 10_000);
        assert!(!m.has_home_data(0, 4096));
        let parts = m.clipped(0, 4096);
        assert_eq!(
            parts[0],
            (
                0,
                Extent {
                    len: 1024,
                    seq: 1,
                    data: Some(10_000)
                }
            )
        );
        assert_eq!(
            parts[1],
            (
                1024,
                Extent {
                    len: 1024,
                    seq: 2,
                    data: Some(777)
                }
            )
        );
        assert_eq!(
            parts[2],
            (
                2048,
                Extent {
                    len: 1024,
                    seq: 1,
                    data: Some(12_048)
                }
            )
        );
        assert_eq!(
            parts[3],
            (
                3072,
                Extent {
                    len: 512,
                    seq: 3,
                    data: None
                }
            )
        );
        assert_eq!(
            parts[4],
            (
                3584,
                Extent {
                    len: 512,
                    seq: 1,
                    data: Some(13_584)
                }
            )
        );
    }

    #[test]
    fn empty_or_inverted_ranges_clip_to_nothing() {
        let mut m = ExtentMap::default();
        m.insert(0, 4096, 1, Some(0));
        assert!(m.clipped(8192, 4096).is_empty());
        assert!(m.valid_ranges(4096, 4096).is_empty());
    }

    #[test]
    fn truncate_drops_the_tail() {
        let mut m = ExtentMap::default();
        m.insert(0, 8192, 1, Some(0));
        m.truncate(1024);
        assert_eq!(
            m.valid_ranges(0, u64::MAX),
            vec![PageRange {
                start: 0,
                end: 1023,
                cleared: false
            }]
        );
    }

    /// Per 512-byte page: (write sequence, data location) or untouched (`None`).
    type PageModel = Vec<Option<(u64, DataLocation)>>;

    /// What `map` says of each page of the first `pages`.
    fn pages_of(map: &ExtentMap, pages: u64) -> PageModel {
        let mut out = vec![None; pages as usize];
        for (start, e) in map.clipped(0, pages * 512) {
            for i in 0..e.len / 512 {
                out[(start / 512 + i) as usize] = Some((e.seq, e.data.map(|d| d + i * 512)));
            }
        }
        out
    }

    proptest::proptest! {
        /// Writes (into the log, or home data at its own offset), clears, relocations of home
        /// data and truncations against a per-page model; clones taken along the way
        /// (snapshots share the persistent map's nodes) keep what they held whatever is
        /// changed after them.
        #[test]
        fn the_map_follows_a_page_model_and_clones_keep_their_state(
            ops in proptest::collection::vec(
                (0u64..64, 1u64..16, proptest::option::of(0u64..1_000_000), 0u8..10),
                1..80,
            )
        ) {
            const PAGES: u64 = 64;
            let mut map = ExtentMap::default();
            let mut model: PageModel = vec![None; PAGES as usize];
            let mut kept: Vec<(ExtentMap, PageModel, u64)> = Vec::new();
            for (seq, (start, len, data, what)) in (1u64..).zip(ops) {
                let len = len.min(PAGES - start);
                match what {
                    0 => {
                        map.truncate(start * 512);
                        model[start as usize..].fill(None);
                    }
                    1 | 2 => {
                        let at = home(start * 512);
                        map.insert(start * 512, len * 512, seq, Some(at));
                        for i in 0..len {
                            model[(start + i) as usize] = Some((seq, Some(at + i * 512)));
                        }
                    }
                    3 => {
                        let log_address = data.unwrap_or(0) * 512;
                        map.relocate_home(start * 512, len * 512, log_address);
                        for page in &mut model[start as usize..(start + len) as usize] {
                            if let Some((_, Some(location))) = page {
                                if let Some(h) = home_offset(*location) {
                                    *location = log_address + (h - start * 512);
                                }
                            }
                        }
                    }
                    _ => {
                        let data = data.map(|d| d * 512);
                        map.insert(start * 512, len * 512, seq, data);
                        for i in 0..len {
                            model[(start + i) as usize] = Some((seq, data.map(|d| d + i * 512)));
                        }
                    }
                }
                if what == 9 {
                    kept.push((map.clone(), model.clone(), seq));
                }
                proptest::prop_assert_eq!(&pages_of(&map, PAGES), &model);
            }
            for (snapshot, then, since) in &kept {
                proptest::prop_assert_eq!(&pages_of(snapshot, PAGES), then);
                // The diff against each snapshot: the pages written or cleared after it.
                for (start, end) in [(0, PAGES * 512), (700, 20 * 512), (33 * 512, 34 * 512)] {
                    let expected = merge(
                        model
                            .iter()
                            .enumerate()
                            .filter_map(|(page, p)| {
                                let (seq, data) = (*p)?;
                                let (lo, hi) = (
                                    (page as u64 * 512).max(start),
                                    ((page as u64 + 1) * 512).min(end),
                                );
                                (seq > *since && lo < hi).then(|| (lo, hi - lo, data.is_none()))
                            }),
                    );
                    proptest::prop_assert_eq!(
                        map.changed_since(*since, snapshot, start, end),
                        expected
                    );
                }
            }
        }
    }
}
