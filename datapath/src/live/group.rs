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
//!
//! QEMU runs one NBD server, so the disks' views share it: the one QEMU runs already
//! (`--nbd-socket`), or one the group starts for each cycle (beside the first disk's scratch
//! files, `drplane-NAME.nbd`) and stops when every disk's cycle ended.

use std::path::PathBuf;

use super::qemu::{PreparedFreeze, QemuSource};
use crate::source::{ChangeSource, FreezeGroup, PointRef, SourceError};

/// Disks of one QEMU replicated together (see the module docs).
#[derive(Debug)]
pub struct QemuGroup {
    members: Vec<QemuSource>,
    /// The NBD server the group starts for each cycle (no `--nbd-socket`): its socket.
    own_server: Option<PathBuf>,
    /// It runs now.
    serving: bool,
}

impl QemuGroup {
    /// The group of `members` (attached sources of one QEMU; see the module docs for the NBD
    /// server their views share).
    pub fn new(mut members: Vec<QemuSource>) -> QemuGroup {
        let own_server = match members.first() {
            Some(first) if first.nbd_socket().is_none() => Some(first.own_nbd_socket()),
            _ => None,
        };
        if let Some(socket) = &own_server {
            for member in &mut members {
                member.share_nbd_server(socket.clone());
            }
        }
        QemuGroup {
            members,
            own_server,
            serving: false,
        }
    }

    /// Start the group's own NBD server for a cycle (one a killed run left is stopped first).
    fn start_server(&mut self) -> Result<(), SourceError> {
        let Some(socket) = self.own_server.clone() else {
            return Ok(());
        };
        let first = &mut self.members[0];
        if socket.exists() {
            let _ = first.nbd_server(None, &socket);
        }
        let started = first.nbd_server(Some(&socket), &socket);
        first.release_monitor();
        self.serving = started.is_ok();
        started
    }

    fn stop_server(&mut self) {
        if let (true, Some(socket)) = (self.serving, self.own_server.clone()) {
            let first = &mut self.members[0];
            let _ = first.nbd_server(None, &socket);
            first.release_monitor();
            self.serving = false;
        }
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

    fn freeze_all(&mut self, last_points: &[Option<PointRef>]) -> Result<(), SourceError> {
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
        if let Err(e) = frozen.and_then(|()| self.start_server()) {
            self.undo(&prepared, 0);
            self.stop_server();
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
                    self.stop_server();
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    fn member(&mut self, i: usize) -> &mut dyn ChangeSource {
        &mut self.members[i]
    }

    fn members(&mut self) -> Option<Vec<&mut (dyn ChangeSource + Send)>> {
        Some(
            self.members
                .iter_mut()
                .map(|m| m as &mut (dyn ChangeSource + Send))
                .collect(),
        )
    }

    fn cycle_ended(&mut self) {
        self.stop_server();
    }
}

impl Drop for QemuGroup {
    fn drop(&mut self) {
        // A disk still frozen (a cycle cut short) is thawed before the server goes.
        for member in &mut self.members {
            let _ = member.stop(false);
        }
        self.stop_server();
    }
}
