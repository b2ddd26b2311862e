//! The point auditor's own thread: each disk's [`PointAudit`] proves its points there while the
//! event loop goes on, on a core the loop leaves idle (the loop is one thread; the pipeline's
//! pool is busy only while a cycle encodes).
//!
//! The outcome is the one an inline audit gives. The loop sends each disk's audit work in the
//! order it arises ([`AuditLink`]): the checker's model of the disk at each point as it is
//! recorded or forgotten, each list of points to prove, failures the loop found itself. The
//! audit reads only snapshots, which never change, straight from the storage account (no fault
//! draws, so the loop's fault stream is untouched); and before anything that may delete a
//! disk's snapshots (its next cycle: a premium blob's snapshot limit; retention after a cycle;
//! the final checks) the loop waits until that disk's audit has caught up
//! ([`AuditLink::fence`]). Events that may run cycles and delete snapshots in one go (DR steps,
//! agents starting, crashes) wait for every proof as it is sent
//! ([`AuditLink::set_synchronous`]). Per disk, proofs and deletions happen in the same order
//! as inline; other disks' cycles overlap them.

use std::collections::BTreeMap;
use std::sync::{mpsc, Arc, Condvar, Mutex};

use datapath::replica::block_record::BlockCodec;
use datapath::replica::disk_replica::DiskReplica;
use datapath::replica::manifest::Manifest;

use crate::audit::PointAudit;
use crate::content::ContentModel;

/// One piece of a disk's audit work, in the order the loop made it.
enum Work {
    /// The disk's content at point `sequence` (replacing any model of that sequence).
    Image { sequence: u64, model: ContentModel },
    /// Retention deleted point `sequence`: its model is not needed any more.
    Forget { sequence: u64 },
    /// Prove every point in the list newer than the last one proven.
    CatchUp { points: Vec<Manifest> },
    /// A failure the loop found itself.
    Failure { why: String },
}

/// Jobs done per disk, and whether the thread still runs.
#[derive(Default)]
struct Progress {
    state: Mutex<(Vec<u64>, bool)>,
    changed: Condvar,
}

impl Progress {
    fn lock(&self) -> std::sync::MutexGuard<'_, (Vec<u64>, bool)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Marks the thread stopped when it ends, panicking or not, so no fence waits forever.
struct StopOnDrop(Arc<Progress>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.lock().1 = false;
        self.0.changed.notify_all();
    }
}

/// A disk's line to the audit thread.
pub(crate) struct AuditLink {
    disk: usize,
    jobs: mpsc::Sender<(usize, Work)>,
    sent: u64,
    progress: Arc<Progress>,
    /// Each piece of work is waited for as it is sent.
    synchronous: bool,
}

impl AuditLink {
    fn send(&mut self, work: Work) {
        self.sent += 1;
        // A thread that is gone has panicked: the fence says so.
        let _ = self.jobs.send((self.disk, work));
        if self.synchronous {
            self.fence();
        }
    }

    /// Wait for all work sent so far, and from now on (`on`) for each piece as it is sent;
    /// or (not `on`) let the work run behind again.
    pub(crate) fn set_synchronous(&mut self, on: bool) {
        if on {
            self.fence();
        }
        self.synchronous = on;
    }

    /// Record the disk's content at point `sequence`.
    pub(crate) fn image(&mut self, sequence: u64, model: ContentModel) {
        self.send(Work::Image { sequence, model });
    }

    /// Point `sequence` is gone (its model no longer needed).
    pub(crate) fn forget(&mut self, sequence: u64) {
        self.send(Work::Forget { sequence });
    }

    /// Prove the points in `points` not proven yet.
    pub(crate) fn catch_up(&mut self, points: Vec<Manifest>) {
        self.send(Work::CatchUp { points });
    }

    /// A failure of the disk's points the loop found itself.
    pub(crate) fn failure(&mut self, why: String) {
        self.send(Work::Failure { why });
    }

    /// Wait until the thread has done all work sent for this disk.
    ///
    /// # Panics
    /// If the audit thread has stopped (it panicked: the join re-raises that).
    pub(crate) fn fence(&self) {
        let mut state = self.progress.lock();
        while state.0[self.disk] < self.sent {
            assert!(state.1, "the point auditor's thread stopped");
            state = self
                .progress
                .changed
                .wait(state)
                .unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// What the thread needs of each disk: a reading view of its replica and its codec.
pub(crate) type AuditView<'e> = (DiskReplica<'e>, BlockCodec);

/// Start the audit thread in `scope` for disks `views` (by index). Returns each disk's link and
/// the thread, which ends once every link is dropped and returns the disks' audits.
pub(crate) fn start<'scope, 'e: 'scope>(
    scope: &'scope std::thread::Scope<'scope, 'e>,
    views: Vec<AuditView<'e>>,
) -> (
    Vec<AuditLink>,
    std::thread::ScopedJoinHandle<'scope, Vec<PointAudit>>,
) {
    let (jobs, inbox) = mpsc::channel::<(usize, Work)>();
    let progress = Arc::new(Progress::default());
    *progress.lock() = (vec![0; views.len()], true);
    let links = (0..views.len())
        .map(|disk| AuditLink {
            disk,
            jobs: jobs.clone(),
            sent: 0,
            progress: Arc::clone(&progress),
            synchronous: false,
        })
        .collect();
    drop(jobs);
    let thread = scope.spawn(move || {
        let stop = StopOnDrop(Arc::clone(&progress));
        let mut audits: Vec<PointAudit> = views.iter().map(|_| PointAudit::default()).collect();
        let mut images: Vec<BTreeMap<u64, ContentModel>> = vec![BTreeMap::new(); views.len()];
        for (disk, work) in inbox {
            let (replica, codec) = &views[disk];
            match work {
                Work::Image { sequence, model } => {
                    images[disk].insert(sequence, model);
                }
                Work::Forget { sequence } => {
                    images[disk].remove(&sequence);
                }
                Work::CatchUp { points } => {
                    audits[disk].catch_up(replica, codec, &points, &images[disk])
                }
                Work::Failure { why } => audits[disk].failures.push(why),
            }
            progress.lock().0[disk] += 1;
            progress.changed.notify_all();
        }
        drop(stop);
        audits
    });
    (links, thread)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::fixture::{Fixture, BLOCK};

    /// The thread's audit ends as the inline one does: the same points proven, the same
    /// failures in the same order, the same records audited.
    #[test]
    fn the_thread_proves_what_the_inline_audit_proves() {
        let mut f = Fixture::new();
        let mut images = BTreeMap::new();
        f.writer.write_at(0, &[1; 100_000]).unwrap();
        images.insert(0, f.cycle(10));
        f.writer.write_at(3 << 20, &[2; 70_000]).unwrap();
        images.insert(1, f.cycle(20));
        // Point 2 misses a write the checker's model holds; point 3 is right again.
        let replicated = f.cycle(30);
        f.writer.write_at(2 << 20, &[3; 4096]).unwrap();
        f.writer.flush().unwrap();
        let mut claimed = replicated;
        claimed
            .refresh(&f.disk(), [(2 << 20) / u64::from(BLOCK)])
            .unwrap();
        images.insert(2, claimed);
        images.insert(3, f.cycle(40));
        let points = f.points();
        assert_eq!(points.len(), 4);

        let replica = f.replica();
        let mut inline = PointAudit::default();
        inline.failures.push("found by the loop".into());
        inline.catch_up(&replica, &f.codec, &points[..2], &images);
        inline.catch_up(&replica, &f.codec, &points, &images);

        let codec = BlockCodec::new(&f.identity().disk_keys("d"), 1, true);
        let threaded = std::thread::scope(|scope| {
            let (mut links, thread) = start(scope, vec![(replica.reader(), codec)]);
            let link = &mut links[0];
            link.failure("found by the loop".into());
            for (&sequence, model) in &images {
                link.image(sequence, model.clone());
            }
            link.image(9, images[&0].clone());
            link.forget(9);
            link.catch_up(points[..2].to_vec());
            link.set_synchronous(true);
            assert_eq!(
                link.progress.lock().0[0],
                link.sent,
                "going synchronous waits for what was sent before"
            );
            link.catch_up(points.clone());
            assert_eq!(
                link.progress.lock().0[0],
                link.sent,
                "a synchronous link waits for each job as it is sent"
            );
            link.set_synchronous(false);
            link.catch_up(points.clone()); // nothing new to prove: no change
            link.fence();
            assert_eq!(
                link.progress.lock().0[0],
                link.sent,
                "the fence waited for every job"
            );
            drop(links);
            thread.join().unwrap().remove(0)
        });
        assert_eq!(threaded.failures, inline.failures);
        assert_eq!(
            inline.failures[1],
            "point 2: block 32 differs from the disk at that point"
        );
        assert_eq!(threaded.verified, inline.verified);
        assert_eq!(threaded.verified.len(), 3);
        assert_eq!(threaded.records, inline.records);
    }
}
