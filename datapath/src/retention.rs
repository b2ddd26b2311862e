//! Which recovery points to keep, as a pure function of the points, the time and the policy:
//! every point of the last hour; one per clock hour (UTC) for the rest of the retention window,
//! the newest app-consistent point of the hour when there is one, else the newest point; nothing
//! older than the window; the newest point always. When a store profile caps snapshots per blob,
//! the oldest points go until the live ones leave room for the next cycle's snapshot.
//!
//! A disk replicated with the other disks of its machine ([`points_to_delete_among`]) keeps,
//! past the last hour, only points of the machine — the instants every disk has a point at —
//! so the disks keep the same instants; a point only some disks have (a cycle that failed on
//! another disk) is kept for the last hour like any point, then goes. The machine's newest point
//! always stays, as a lone disk's newest does.

use std::collections::{BTreeMap, BTreeSet};

use crate::replica::manifest::Consistency;

const HOUR_NANOS: u64 = 3_600_000_000_000;

/// What retention needs to know about a point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PointInfo {
    pub sequence: u64,
    pub time_nanos: u64,
    pub consistency: Consistency,
}

impl PointInfo {
    /// What retention needs of `manifest`.
    pub fn of(manifest: &crate::replica::manifest::Manifest) -> PointInfo {
        PointInfo {
            sequence: manifest.sequence,
            time_nanos: manifest.time_nanos,
            consistency: manifest.consistency,
        }
    }
}

/// Sequences of the points to delete, ascending. `points` may be in any order.
pub fn points_to_delete(
    points: &[PointInfo],
    now_nanos: u64,
    retention_hours: u32,
    snapshot_limit: Option<usize>,
) -> Vec<u64> {
    points_to_delete_among(points, now_nanos, retention_hours, snapshot_limit, None)
}

/// [`points_to_delete`] for one disk of a machine whose disks are replicated together: only
/// points at `machine_times` (the instants every disk has a point at) may represent an hour
/// past the last one (see the module docs). `None`: every point may.
pub fn points_to_delete_among(
    points: &[PointInfo],
    now_nanos: u64,
    retention_hours: u32,
    snapshot_limit: Option<usize>,
    machine_times: Option<&BTreeSet<u64>>,
) -> Vec<u64> {
    let of_machine = |p: &PointInfo| machine_times.is_none_or(|t| t.contains(&p.time_nanos));
    let mut sorted: Vec<PointInfo> = points.to_vec();
    sorted.sort_by_key(|p| p.sequence);
    let Some(newest) = sorted.last().copied() else {
        return Vec::new();
    };
    let window_start = now_nanos.saturating_sub(u64::from(retention_hours) * HOUR_NANOS);
    let last_hour = now_nanos.saturating_sub(HOUR_NANOS);
    // Per clock hour, the point that represents it.
    let mut hourly: BTreeMap<u64, PointInfo> = BTreeMap::new();
    for p in sorted
        .iter()
        .filter(|p| p.time_nanos >= window_start && p.time_nanos < last_hour && of_machine(p))
    {
        let slot = hourly.entry(p.time_nanos / HOUR_NANOS).or_insert(*p);
        let app = |q: &PointInfo| q.consistency == Consistency::Application;
        // Prefer app-consistent, then newer.
        if (app(p), p.sequence) > (app(slot), slot.sequence) {
            *slot = *p;
        }
    }
    // The newest point of the machine stays too, whatever its age: the machine's only point
    // while another disk's cycles keep failing.
    let newest_of_machine = machine_times.and_then(|_| {
        sorted
            .iter()
            .rev()
            .find(|p| of_machine(p))
            .map(|p| p.sequence)
    });
    let mut keep: Vec<u64> = sorted
        .iter()
        .filter(|p| {
            p.sequence == newest.sequence
                || Some(p.sequence) == newest_of_machine
                || p.time_nanos >= last_hour
                || hourly
                    .get(&(p.time_nanos / HOUR_NANOS))
                    .is_some_and(|h| h.sequence == p.sequence && p.time_nanos >= window_start)
        })
        .map(|p| p.sequence)
        .collect();
    if let Some(limit) = snapshot_limit {
        // Leave room for the next cycle's snapshot; the newest point always stays.
        let room = limit.saturating_sub(1).max(1);
        if keep.len() > room {
            keep.drain(..keep.len() - room);
        }
    }
    sorted
        .iter()
        .map(|p| p.sequence)
        .filter(|s| keep.binary_search(s).is_err())
        .collect()
}

/// `doomed` (what [`points_to_delete_among`] chose among `points`) less the points `held` by
/// readers ([`crate::replica::point_hold`]): a held point stays whatever its age. Where a
/// snapshot limit asks for room, a held point that stays takes the room of the oldest points
/// not held (never the newest), so the next cycle's snapshot still fits while one is left.
pub fn sparing_held(
    points: &[PointInfo],
    doomed: &[u64],
    held: &BTreeSet<u64>,
    snapshot_limit: Option<usize>,
) -> Vec<u64> {
    let mut out: Vec<u64> = doomed
        .iter()
        .copied()
        .filter(|s| !held.contains(s))
        .collect();
    if let Some(limit) = snapshot_limit {
        let room = limit.saturating_sub(1).max(1);
        let newest = points.iter().map(|p| p.sequence).max();
        let mut live: Vec<u64> = points
            .iter()
            .map(|p| p.sequence)
            .filter(|s| !out.contains(s))
            .collect();
        live.sort_unstable();
        let over = live.len().saturating_sub(room);
        out.extend(
            live.into_iter()
                .filter(|s| !held.contains(s) && Some(*s) != newest)
                .take(over),
        );
    }
    out.sort_unstable();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIN: u64 = 60_000_000_000;

    fn every(seconds: u64, count: u64, app_every: u64) -> Vec<PointInfo> {
        (0..count)
            .map(|i| PointInfo {
                sequence: i,
                time_nanos: 1_000 * HOUR_NANOS + i * seconds * MIN / 60,
                consistency: if app_every > 0 && i % app_every == 0 {
                    Consistency::Application
                } else {
                    Consistency::Crash
                },
            })
            .collect()
    }

    #[test]
    fn a_disk_of_a_machine_keeps_past_the_last_hour_only_the_machines_points() {
        // Every 5 minutes for 3 hours; the other disk failed the cycles of points 10 and 11
        // (the newest of their hour) and 34 (in the last hour).
        let points = every(300, 36, 0);
        let machine: BTreeSet<u64> = points
            .iter()
            .filter(|p| ![10, 11, 34].contains(&p.sequence))
            .map(|p| p.time_nanos)
            .collect();
        let now = points[35].time_nanos;
        let deleted = points_to_delete_among(&points, now, 24, None, Some(&machine));
        let left: Vec<u64> = kept(&points, &deleted).iter().map(|p| p.sequence).collect();
        // Hour 0: 9 (not 11, nor 10); hour 1: 22; the last hour (23 on) whole, 34 included.
        assert_eq!(
            left,
            [9, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35]
        );
        // Alone, the disk would keep 11 for hour 0.
        let alone = points_to_delete(&points, now, 24, None);
        assert!(!alone.contains(&11) && alone.contains(&9));
        // The other disk has failed for 70 minutes and the window is one hour: the machine's
        // newest point (21) stays with the disk's own newest.
        let machine: BTreeSet<u64> = points[..22].iter().map(|p| p.time_nanos).collect();
        let deleted = points_to_delete_among(&points, now, 1, None, Some(&machine));
        let left: Vec<u64> = kept(&points, &deleted).iter().map(|p| p.sequence).collect();
        assert_eq!(
            left,
            [21, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35]
        );
    }

    fn kept(points: &[PointInfo], deleted: &[u64]) -> Vec<PointInfo> {
        points
            .iter()
            .filter(|p| !deleted.contains(&p.sequence))
            .copied()
            .collect()
    }

    #[test]
    fn last_hour_kept_whole_older_thinned_to_hourly_window_enforced() {
        // Five-minute points over 30 hours; retention 24 h.
        let points = every(300, 360, 0);
        let now = points.last().unwrap().time_nanos;
        let deleted = points_to_delete(&points, now, 24, None);
        let live = kept(&points, &deleted);
        let recent = live
            .iter()
            .filter(|p| p.time_nanos >= now - HOUR_NANOS)
            .count();
        assert_eq!(recent, 13, "every point of the last hour (inclusive ends)");
        assert!(live.iter().all(|p| p.time_nanos >= now - 24 * HOUR_NANOS));
        // At most one point per older clock hour.
        let mut hours = std::collections::BTreeSet::new();
        for p in live.iter().filter(|p| p.time_nanos < now - HOUR_NANOS) {
            assert!(
                hours.insert(p.time_nanos / HOUR_NANOS),
                "two points in one hour"
            );
        }
        assert!(hours.len() >= 22, "{} hourly points", hours.len());
    }

    #[test]
    fn app_consistent_points_are_preferred_in_an_hour() {
        let points = every(300, 60, 7);
        let now = points.last().unwrap().time_nanos + 2 * HOUR_NANOS;
        let deleted = points_to_delete(&points, now, 24, None);
        for p in kept(&points, &deleted) {
            if p.sequence != 59 {
                assert_eq!(
                    p.consistency,
                    Consistency::Application,
                    "point {}",
                    p.sequence
                );
            }
        }
    }

    #[test]
    fn premium_limit_leaves_room_for_the_next_snapshot() {
        // 20-second points: 181 of them in the last hour, more than premium allows.
        let points = every(20, 200, 0);
        let now = points.last().unwrap().time_nanos;
        let deleted = points_to_delete(&points, now, 24, Some(100));
        let live = kept(&points, &deleted);
        assert_eq!(live.len(), 99);
        assert_eq!(live.last().unwrap().sequence, 199);
    }

    /// A held point is kept whatever its age; under a snapshot limit the points not held make
    /// the room (the oldest first, never the newest).
    #[test]
    fn held_points_stay_and_others_make_the_room() {
        let points = every(30, 200, 0);
        let now = points.last().unwrap().time_nanos;
        let deleted = points_to_delete(&points, now, 24, None);
        assert!(deleted.contains(&3) && deleted.contains(&50));
        let held = BTreeSet::from([3, 50, 198]);
        let spared = sparing_held(&points, &deleted, &held, None);
        assert_eq!(
            spared,
            deleted
                .iter()
                .copied()
                .filter(|s| *s != 3 && *s != 50)
                .collect::<Vec<_>>()
        );
        // Premium: 100 snapshots, room for 99 live points.
        let deleted = points_to_delete(&points, now, 24, Some(100));
        let spared = sparing_held(&points, &deleted, &held, Some(100));
        let live = kept(&points, &spared);
        assert_eq!(live.len(), 99);
        for s in [3, 50, 198, 199] {
            assert!(live.iter().any(|p| p.sequence == s), "{s} kept");
        }
        // The two held old points took the room of the two oldest points the limit kept.
        let before = kept(&points, &deleted);
        let dropped: Vec<u64> = before
            .iter()
            .map(|p| p.sequence)
            .filter(|s| !live.iter().any(|p| p.sequence == *s))
            .collect();
        assert_eq!(dropped, vec![before[0].sequence, before[1].sequence]);
        // More held than there is room: every held point stays, the newest too.
        let all_held: BTreeSet<u64> = (0..150).collect();
        let spared = sparing_held(&points, &deleted, &all_held, Some(100));
        assert!(spared.iter().all(|s| *s >= 150 && *s != 199), "{spared:?}");
    }

    proptest! {
        #[test]
        fn newest_point_always_survives_and_nothing_is_invented(
            gaps in proptest::collection::vec(1u64..300, 1..80),
            retention in 1u32..25,
            limit in proptest::option::of(2usize..120),
            later in 0u64..100,
        ) {
            let mut t = 5_000 * HOUR_NANOS;
            let points: Vec<PointInfo> = gaps.iter().enumerate().map(|(i, g)| {
                t += g * MIN;
                PointInfo { sequence: i as u64, time_nanos: t, consistency: Consistency::Crash }
            }).collect();
            let now = t + later * MIN;
            let deleted = points_to_delete(&points, now, retention, limit);
            prop_assert!(!deleted.contains(&(points.len() as u64 - 1)));
            prop_assert!(deleted.iter().all(|s| (*s as usize) < points.len()));
            prop_assert!(deleted.windows(2).all(|w| w[0] < w[1]));
            if let Some(limit) = limit {
                prop_assert!(points.len() - deleted.len() < limit.max(2));
            }
        }
    }
}
