//! Holds on recovery points: a reader that needs a point for a while (a restore, a verify)
//! holds it, and the writer's retention deletes no held point.
//!
//! Readers and the writer of a replica behind an endpoint (`blob serve`, Azure) run at once, and
//! retention deletes points every cycle (every point of the last hour is kept, one per hour
//! before it): without a hold, a restore of a point from 50 minutes ago that takes 15 minutes
//! fails half-way, its point deleted from under it. (A store directory needs none: its
//! readers' shared lock keeps the writer from writing while they read.)
//!
//! A hold is a 512-byte page blob `NAME.hold-SEQUENCE-NONCE` beside the replica's blobs,
//! under a lease of [`HOLD_LEASE_SECS`] that its holder renews every [`RENEW_EVERY`]: a holder
//! that dies leaves a hold whose lease expires, which holds nothing and is deleted by the next
//! retention that finds it older than [`STALE_AFTER_NANOS`] (not sooner: a hold is made, then
//! leased, and must not be taken for a dead one in between). A hold protects the point from
//! the moment its lease is taken; the holder then checks the point is still listed, since
//! retention may have deleted it just before.

use std::collections::BTreeSet;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use pageblob::{BlobPath, Conditions, LeaseAction, LeaseStateName, PageBlobStore};
use rand_core::RngCore;

use super::error::ReplicaError;

/// Seconds a hold's lease lasts unless renewed (Azure's longest fixed lease).
pub const HOLD_LEASE_SECS: u32 = 60;
/// How often a holder renews its lease: three times a lease, so two missed renewals in a row
/// still keep it.
pub const RENEW_EVERY: Duration = Duration::from_secs(20);
/// Age past which a hold without a live lease is deleted by retention (a holder that died).
pub const STALE_AFTER_NANOS: u64 = 10 * 60 * 1_000_000_000;

/// The name prefix of `replica`'s holds.
fn prefix(replica: &str) -> String {
    format!("{replica}.hold-")
}

/// A point held by this process: its hold blob and the lease on it.
#[derive(Debug)]
pub struct PointHold {
    pub path: BlobPath,
    lease_id: String,
}

impl PointHold {
    /// Hold point `sequence` of replica `replica` in `container`: make the hold blob and lease
    /// it. Renew it with [`renew`](Self::renew) (or hold it for the length of a call with
    /// [`while_held`]) and let it go with [`release`](Self::release).
    pub fn take(
        store: &dyn PageBlobStore,
        container: &str,
        replica: &str,
        sequence: u64,
        rng: &mut dyn RngCore,
    ) -> Result<PointHold, ReplicaError> {
        let mut nonce = [0u8; 8];
        rng.fill_bytes(&mut nonce);
        let path = BlobPath::new(
            container,
            &format!("{}{sequence}-{}", prefix(replica), hex::encode(nonce)),
        );
        let mut id = [0u8; 16];
        rng.fill_bytes(&mut id);
        let lease_id = guid(&id);
        store.create_page_blob(&path, 512, 0, &Conditions::default())?;
        let leased = store.lease(
            &path,
            &LeaseAction::Acquire {
                proposed_id: lease_id.clone(),
                duration_secs: Some(HOLD_LEASE_SECS),
            },
            &Conditions::default(),
        );
        if let Err(e) = leased {
            let _ = store.delete_blob(&path, None, None, &Conditions::default());
            return Err(e.into());
        }
        Ok(PointHold { path, lease_id })
    }

    /// Renew the hold's lease.
    pub fn renew(&self, store: &dyn PageBlobStore) -> Result<(), ReplicaError> {
        store.lease(
            &self.path,
            &LeaseAction::Renew {
                id: self.lease_id.clone(),
            },
            &Conditions::default(),
        )?;
        Ok(())
    }

    /// Let the point go: the hold blob is deleted (under its lease).
    pub fn release(self, store: &dyn PageBlobStore) -> Result<(), ReplicaError> {
        let cond = Conditions {
            lease_id: Some(self.lease_id.clone()),
            ..Conditions::default()
        };
        store.delete_blob(&self.path, None, None, &cond)?;
        Ok(())
    }
}

/// A lease id in the GUID form Azure asks for, from 16 random bytes.
fn guid(b: &[u8; 16]) -> String {
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// Run `work` with `hold` renewed every [`RENEW_EVERY`] by a thread of its own, then release
/// it. A renewal that fails is told to `failed_renewal` (the holder's to report: the hold
/// protects nothing once its lease runs out) and retried at the next turn (the lease outlives
/// two missed ones); the release is best effort (an unreleased hold expires).
pub fn while_held<T: Send>(
    store: &dyn PageBlobStore,
    hold: PointHold,
    failed_renewal: &(dyn Fn(&ReplicaError) + Sync),
    work: impl FnOnce() -> T + Send,
) -> T {
    renewed_every(RENEW_EVERY, store, hold, failed_renewal, work)
}

/// [`while_held`], renewing every `every`.
fn renewed_every<T: Send>(
    every: Duration,
    store: &dyn PageBlobStore,
    hold: PointHold,
    failed_renewal: &(dyn Fn(&ReplicaError) + Sync),
    work: impl FnOnce() -> T + Send,
) -> T {
    let done = Mutex::new(false);
    let wake = Condvar::new();
    let out = std::thread::scope(|s| {
        s.spawn(|| {
            let mut finished = done.lock().unwrap_or_else(|p| p.into_inner());
            while !*finished {
                let (guard, timeout) = wake
                    .wait_timeout(finished, every)
                    .unwrap_or_else(|p| p.into_inner());
                finished = guard;
                if !*finished && timeout.timed_out() {
                    if let Err(e) = hold.renew(store) {
                        failed_renewal(&e);
                    }
                }
            }
        });
        let out = work();
        *done.lock().unwrap_or_else(|p| p.into_inner()) = true;
        wake.notify_all();
        out
    });
    let _ = hold.release(store);
    out
}

/// The points of `replica` in `container` held now (a hold under a live lease). Holds whose
/// lease is gone and that are older than [`STALE_AFTER_NANOS`] at `now_nanos` are deleted on
/// the way (best effort).
pub fn held_points(
    store: &dyn PageBlobStore,
    container: &str,
    replica: &str,
    now_nanos: u64,
) -> Result<BTreeSet<u64>, ReplicaError> {
    let mut held = BTreeSet::new();
    for (sequence, blob) in holds(store, container, replica)? {
        if blob.properties.lease_state == LeaseStateName::Leased {
            held.insert(sequence);
        } else if now_nanos.saturating_sub(blob.properties.last_modified) > STALE_AFTER_NANOS {
            let _ = store.delete_blob(
                &BlobPath::new(container, &blob.name),
                None,
                None,
                &Conditions::default(),
            );
        }
    }
    Ok(held)
}

/// Every hold blob of `replica` in `container`, live or not, with the point it names.
pub fn holds(
    store: &dyn PageBlobStore,
    container: &str,
    replica: &str,
) -> Result<Vec<(u64, pageblob::BlobListing)>, ReplicaError> {
    let prefix = prefix(replica);
    Ok(store
        .list_blobs(container, &prefix, false)?
        .into_iter()
        .filter_map(|blob| Some((hold_of(&blob.name, &prefix)?, blob)))
        .collect())
}

/// The points of `replica` held now, as a reader sees them (nothing swept).
pub fn held_now(
    store: &dyn PageBlobStore,
    container: &str,
    replica: &str,
) -> Result<BTreeSet<u64>, ReplicaError> {
    Ok(holds(store, container, replica)?
        .into_iter()
        .filter(|(_, b)| b.properties.lease_state == LeaseStateName::Leased)
        .map(|(sequence, _)| sequence)
        .collect())
}

/// The point a hold blob named `name` holds, when it is exactly `PREFIX SEQUENCE-NONCE`
/// (16 hex digits of nonce, nothing after): never a blob of another replica whose name
/// merely starts the same way (`d.hold-3-0123456789abcdef.replica` is replica
/// `d.hold-3-0123456789abcdef`'s data, not a hold of replica `d`).
fn hold_of(name: &str, prefix: &str) -> Option<u64> {
    let (sequence, nonce) = name.strip_prefix(prefix)?.split_once('-')?;
    let hex = |c: char| c.is_ascii_digit() || ('a'..='f').contains(&c);
    if nonce.len() != 16 || !nonce.chars().all(hex) || !sequence.chars().all(|c| c.is_ascii_digit())
    {
        return None;
    }
    sequence.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use pageblob::clock::ManualClock;
    use rand_chacha::ChaCha8Rng;
    use rand_core::SeedableRng;
    use std::sync::Arc;

    const T0: u64 = 1_700_000_000_000_000_000;
    const SEC: u64 = 1_000_000_000;

    fn store(dir: &std::path::Path, clock: &Arc<ManualClock>) -> pageblob::Emulator {
        let store = pageblob::Emulator::open(
            dir,
            pageblob::Profile::Standard,
            pageblob::data_log::Durability::Process,
            clock.clone(),
        )
        .unwrap();
        store.create_container("replicas").unwrap();
        store
    }

    /// A hold counts while its lease lives; its lease renewed, it outlives the first lease;
    /// released, it is gone; one whose holder died holds nothing once the lease lapses, and is
    /// deleted once stale. Another replica's holds are not this one's.
    #[test]
    fn holds_count_while_leased_and_dead_ones_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(T0));
        let store = store(dir.path(), &clock);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let held = |now| held_points(&store, "replicas", "disk", now).unwrap();
        assert!(held(T0).is_empty());
        let a = PointHold::take(&store, "replicas", "disk", 7, &mut rng).unwrap();
        let b = PointHold::take(&store, "replicas", "disk", 9, &mut rng).unwrap();
        let other = PointHold::take(&store, "replicas", "disk-2", 3, &mut rng).unwrap();
        assert_eq!(held(T0), BTreeSet::from([7, 9]));
        assert_eq!(
            held_now(&store, "replicas", "disk").unwrap(),
            BTreeSet::from([7, 9])
        );
        clock.advance(40 * SEC);
        a.renew(&store).unwrap();
        clock.advance(40 * SEC);
        // 80 s: `a` renewed at 40 s lives, `b` (and the other replica's) lapsed.
        assert_eq!(held(T0 + 80 * SEC), BTreeSet::from([7]));
        let b_path = b.path.clone();
        assert!(store.properties(&b_path, None).is_ok(), "not stale yet");
        a.release(&store).unwrap();
        assert!(held(T0 + 80 * SEC).is_empty());
        clock.advance(STALE_AFTER_NANOS);
        assert!(held(T0 + 80 * SEC + STALE_AFTER_NANOS + SEC).is_empty());
        assert!(
            store.properties(&b_path, None).is_err(),
            "the dead hold is swept"
        );
        assert!(
            store.properties(&other.path, None).is_ok(),
            "another replica's hold is its own retention's"
        );
        assert_eq!(
            held_points(&store, "replicas", "disk-2", T0).unwrap(),
            BTreeSet::new()
        );
    }

    /// Only a blob named exactly as a hold is one: another replica whose name starts like a
    /// hold (and whose blobs have no lease, and are old) is never taken for a dead hold.
    #[test]
    fn only_hold_names_are_holds() {
        let p = "d.hold-";
        assert_eq!(hold_of("d.hold-3-0123456789abcdef", p), Some(3));
        for other in [
            "d.hold-3-0123456789abcdef.replica",
            "d.hold-3-0123456789ABCDEF",
            "d.hold-3-0123456789abcde",
            "d.hold--0123456789abcdef",
            "d.hold-+3-0123456789abcdef",
            "d.hold-3",
            "e.hold-3-0123456789abcdef",
        ] {
            assert_eq!(hold_of(other, p), None, "{other}");
        }
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(T0));
        let store = store(dir.path(), &clock);
        let lookalike = BlobPath::new("replicas", "d.hold-3-0123456789abcdef.replica");
        store
            .create_page_blob(&lookalike, 512, 0, &Conditions::default())
            .unwrap();
        clock.advance(2 * STALE_AFTER_NANOS);
        let held = held_points(&store, "replicas", "d", T0 + 2 * STALE_AFTER_NANOS).unwrap();
        assert!(held.is_empty());
        assert!(store.properties(&lookalike, None).is_ok(), "left alone");
    }

    #[test]
    fn while_held_releases_the_hold_after_the_work() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(T0));
        let store = store(dir.path(), &clock);
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let hold = PointHold::take(&store, "replicas", "disk", 4, &mut rng).unwrap();
        let during = while_held(&store, hold, &|e| panic!("{e}"), || {
            held_points(&store, "replicas", "disk", T0).unwrap()
        });
        assert_eq!(during, BTreeSet::from([4]));
        assert!(store.list_blobs("replicas", "", false).unwrap().is_empty());
    }

    /// Renewals go on while the work runs; one that fails is told to the holder, each time.
    #[test]
    fn a_renewal_that_fails_is_told_to_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(T0));
        let store = store(dir.path(), &clock);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let hold = PointHold::take(&store, "replicas", "disk", 5, &mut rng).unwrap();
        let path = hold.path.clone();
        let failures = Mutex::new(Vec::new());
        let every = Duration::from_millis(5);
        renewed_every(
            every,
            &store,
            hold,
            &|e| failures.lock().unwrap().push(e.to_string()),
            || {
                // Renewed: the lease outlives its first 60 s.
                let renewed = |at: u64| {
                    std::thread::sleep(40 * every);
                    clock.set(at);
                    held_points(&store, "replicas", "disk", at).unwrap() == BTreeSet::from([5])
                };
                assert!(renewed(T0 + 50 * SEC) && renewed(T0 + 100 * SEC));
                assert!(failures.lock().unwrap().is_empty());
                // Its blob deleted behind the holder's back (by someone who broke the lease):
                // every renewal fails from then on, and the holder hears of each.
                store
                    .lease(
                        &path,
                        &LeaseAction::Break {
                            period_secs: Some(0),
                        },
                        &Conditions::default(),
                    )
                    .unwrap();
                store
                    .delete_blob(&path, None, None, &Conditions::default())
                    .unwrap();
                let gone =
                    |f: &Vec<String>| f.iter().filter(|e| e.contains("BlobNotFound")).count();
                for _ in 0..2000 {
                    if gone(&failures.lock().unwrap()) >= 2 {
                        break;
                    }
                    std::thread::sleep(every);
                }
                let failures = failures.lock().unwrap();
                assert!(gone(&failures) >= 2, "{failures:?}");
            },
        );
    }
}
