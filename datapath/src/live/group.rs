//! [`QemuGroup`]: several disks of one QEMU (one VM) frozen in one QMP `transaction`, so each
//! cycle's points of all of them are the same instant: a crash-consistent point of the whole
//! machine. Each disk is its own replica; the disks' points of one freeze carry the same time,
//! which is how readers find a point every disk has (`drplane points/restore` with several
//! `--name`s).
//!
//! The freeze is prepared disk by disk (bitmaps settled, fleecing file and node added), then
//! one transaction rotates every disk's bitmaps and starts every fleecing job, and only then is
//! each disk's view exported. If any step fails, every disk's freeze is undone and the changes
//! stay in their base bitmaps. QEMU serves one monitor client at a time, so the disks take the
//! monitor in turn and let go of it after each step.

use super::qemu::{PreparedFreeze, QemuSource};
use crate::source::{ChangeSource, FreezeGroup, SourceError};

/// Disks of one QEMU replicated together (see the module docs).
#[derive(Debug)]
pub struct QemuGroup {
    members: Vec<QemuSource>,
}

impl QemuGroup {
    /// The group of `members` (attached sources of one QEMU, each with the NBD server's socket
    /// given: QEMU runs one NBD server, which all the disks' views share).
    pub fn new(members: Vec<QemuSource>) -> QemuGroup {
        QemuGroup { members }
    }

    /// Undo the freezes of `prepared` and of the disks whose views are already exported.
    fn undo(&mut self, prepared: &[PreparedFreeze], exported: usize) {
        for (i, p) in prepared.iter().enumerate() {
            let member = &mut self.members[i];
            if i < exported {
                let _ = member.thaw(None);
            } else {
                member.undo_freeze(p);
            }
            member.release_monitor();
        }
    }
}

impl FreezeGroup for QemuGroup {
    fn disks(&self) -> usize {
        self.members.len()
    }

    fn freeze_all(&mut self, last_points: &[Option<u64>]) -> Result<(), SourceError> {
        assert_eq!(
            last_points.len(),
            self.members.len(),
            "one last point per disk"
        );
        let mut prepared = Vec::with_capacity(self.members.len());
        for (member, last) in self.members.iter_mut().zip(last_points) {
            let p = member.prepare_freeze(*last);
            member.release_monitor();
            match p {
                Ok(p) => prepared.push(p),
                Err(e) => {
                    self.undo(&prepared, 0);
                    return Err(e);
                }
            }
        }
        let actions: Vec<_> = prepared.iter().flat_map(|p| p.actions.clone()).collect();
        let frozen = self.members[0].freeze_transaction(&actions);
        self.members[0].release_monitor();
        if let Err(e) = frozen {
            self.undo(&prepared, 0);
            return Err(e);
        }
        for i in 0..self.members.len() {
            let member = &mut self.members[i];
            let changes = member.complete_freeze(&prepared[i]);
            member.release_monitor();
            match changes {
                Ok(changes) => member.set_joint(prepared[i].last_point(), changes),
                Err(e) => {
                    // This disk's freeze is undone already; the others' too, so no disk's
                    // cycle runs without the rest.
                    let (done, rest) = prepared.split_at(i);
                    self.undo(done, i);
                    for (j, p) in rest.iter().enumerate().skip(1) {
                        self.members[i + j].undo_freeze(p);
                        self.members[i + j].release_monitor();
                    }
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    fn member(&mut self, i: usize) -> &mut dyn ChangeSource {
        &mut self.members[i]
    }
}
