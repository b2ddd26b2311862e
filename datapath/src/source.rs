//! Where a cycle's data comes from. A [`ChangeSource`] freezes the disk for one cycle — a view
//! no write changes while the cycle reads it — and says what changed since the last committed
//! point; when the cycle ends it hears whether the point committed, and only then forgets the
//! changes the point holds (a failed cycle leaves them for the next one).
//!
//! Implementations: [`AtRestDisk`] (a disk file nobody writes: no tracking, every cycle
//! compares every block's digest with the replica), [`ReopenedDisk`] (the same for a disk file
//! written between cycles: opened afresh for each), [`TrackedDisk`] (a persistent change
//! bitmap fed by the writer's hook: the simulator's Hyper-V host), and
//! [`crate::live::QemuSource`] (a running QEMU's dirty bitmaps and a fleecing view over NBD).
//! The agent runs every cycle through this trait, so the CLI and the simulator drive one cycle
//! code whatever the disk is.

use crate::cycle::BlockSource;
use crate::tracking::ChangeTracker;

/// A committed point as a source keeps its changes relative to it: its sequence, and the time
/// of its freeze, which tells it from a point of the same sequence in another replica of the
/// same disk (another store, the same name: QEMU's bitmaps once took one for the other).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PointRef {
    pub sequence: u64,
    pub time_nanos: u64,
}

impl PointRef {
    /// The point `manifest` records.
    pub fn of(manifest: &crate::replica::manifest::Manifest) -> PointRef {
        PointRef {
            sequence: manifest.sequence,
            time_nanos: manifest.time_nanos,
        }
    }
}

/// What changed since the last committed point, as the source knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changes {
    /// These byte ranges `(offset, len)`, and nothing else, changed (a superset is allowed).
    Ranges(Vec<(u64, u64)>),
    /// The source does not track writes: every block is compared (a digest scan).
    Unknown,
    /// The source's tracking history is gone (why): every block is compared, and the cycle is
    /// a resync.
    Lost(String),
}

/// Failures of a source.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("change-tracking bitmap: {0}")]
    Tracker(std::io::Error),
    /// A live source's failure (QMP, NBD), with what was being done.
    #[error("{what}: {source}")]
    Live {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("no cycle is open on this source")]
    NotFrozen,
    /// A disk file at rest could not be opened again for the next cycle.
    #[error("opening the disk again: {0}")]
    Reopen(std::io::Error),
}

/// The disks of one machine, frozen together: every cycle of the group freezes all of them at
/// one instant (a crash-consistent point of the whole machine, as ASR's recovery points are
/// per VM), then each disk's agent runs its cycle through [`FreezeGroup::member`], whose
/// [`ChangeSource::freeze`] hands over the changes the group's freeze found.
pub trait FreezeGroup {
    /// How many disks.
    fn disks(&self) -> usize;
    /// Freeze every disk at once; `last_points[i]` is disk *i*'s replica's last point (its
    /// agent's [`ChangeSource::freeze`] must then ask for the same). All or nothing: on error
    /// no disk is frozen and every change stays for the next cycle.
    fn freeze_all(&mut self, last_points: &[Option<PointRef>]) -> Result<(), SourceError>;
    /// Disk *i*, for its agent's cycle.
    fn member(&mut self, i: usize) -> &mut dyn ChangeSource;
    /// Every disk at once, when their cycles may run side by side (each on its own thread,
    /// reading its own view): the later disks are not kept frozen while the earlier ones are
    /// read. `None` (the default): one after another through [`FreezeGroup::member`].
    fn members(&mut self) -> Option<Vec<&mut (dyn ChangeSource + Send)>> {
        None
    }
    /// Every disk's cycle of this freeze ended (each disk is thawed).
    fn cycle_ended(&mut self) {}
}

impl SourceError {
    /// A live source's failure `e` while doing `what`.
    pub fn live(
        what: impl Into<String>,
        e: impl std::error::Error + Send + Sync + 'static,
    ) -> SourceError {
        SourceError::Live {
            what: what.into(),
            source: Box::new(e),
        }
    }
}

/// A disk a cycle can replicate: freeze, read the view, thaw.
pub trait ChangeSource {
    /// Why the source's tracking cannot be trusted as replication starts (the first cycle is
    /// then a resync); `None` when it can, or when the source finds out at [`freeze`].
    ///
    /// [`freeze`]: ChangeSource::freeze
    fn untrusted(&self) -> Option<String> {
        None
    }

    /// Freeze the disk for one cycle. `last_point` is the replica's newest committed point as
    /// the agent knows it (`None`: none yet).
    fn freeze(&mut self, last_point: Option<PointRef>) -> Result<Changes, SourceError>;

    /// The frozen view; valid between [`freeze`](ChangeSource::freeze) and
    /// [`thaw`](ChangeSource::thaw).
    fn view(&self) -> Result<&dyn BlockSource, SourceError>;

    /// The cycle ended: `Some(point)` — its point committed, the changes it read are
    /// replicated; `None` — it failed, they stay changed for the next cycle.
    fn thaw(&mut self, committed: Option<PointRef>) -> Result<(), SourceError>;

    /// Replication stops. `clean`: the tracking may be trusted by the next start.
    fn stop(&mut self, _clean: bool) -> Result<(), SourceError> {
        Ok(())
    }
}

/// A disk file at rest (a stopped VM's VHDX, an image): the file is its own frozen view, and
/// nothing tracks its writes.
pub struct AtRestDisk<S: BlockSource>(pub S);

impl<S: BlockSource> std::fmt::Debug for AtRestDisk<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AtRestDisk({} bytes)", self.0.disk_size())
    }
}

impl<S: BlockSource> ChangeSource for AtRestDisk<S> {
    fn freeze(&mut self, _last_point: Option<PointRef>) -> Result<Changes, SourceError> {
        Ok(Changes::Unknown)
    }

    fn view(&self) -> Result<&dyn BlockSource, SourceError> {
        Ok(&self.0)
    }

    fn thaw(&mut self, _committed: Option<PointRef>) -> Result<(), SourceError> {
        Ok(())
    }
}

/// A disk file at rest that may be written between cycles (`replicate --disk … --watch`),
/// opened afresh by `open` at every freeze: what was written since — a VHDX block newly
/// allocated, data in a sparse file's former hole, a new size — is in the cycle's view. One
/// handle kept for every cycle read through the allocation it had when opened: a block written
/// into a hole read as unallocated, and the next point committed without it.
pub struct ReopenedDisk<F> {
    open: F,
    current: Box<dyn BlockSource>,
}

impl<F: FnMut() -> std::io::Result<Box<dyn BlockSource>>> ReopenedDisk<F> {
    /// `first`: the disk as `open` gave it last (it is opened again at the first freeze).
    pub fn new(open: F, first: Box<dyn BlockSource>) -> ReopenedDisk<F> {
        ReopenedDisk {
            open,
            current: first,
        }
    }
}

impl<F> std::fmt::Debug for ReopenedDisk<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReopenedDisk({} bytes)", self.current.disk_size())
    }
}

impl<F: FnMut() -> std::io::Result<Box<dyn BlockSource>>> ChangeSource for ReopenedDisk<F> {
    fn freeze(&mut self, _last_point: Option<PointRef>) -> Result<Changes, SourceError> {
        self.current = (self.open)().map_err(SourceError::Reopen)?;
        Ok(Changes::Unknown)
    }

    fn view(&self) -> Result<&dyn BlockSource, SourceError> {
        Ok(&*self.current)
    }

    fn thaw(&mut self, _committed: Option<PointRef>) -> Result<(), SourceError> {
        Ok(())
    }
}

/// A disk whose writer reports every write to a persistent [`ChangeTracker`] (Hyper-V's
/// resilient change tracking, as the simulated host keeps it). The host flushes the writer and
/// hands over `view` before each cycle (its VSS freeze); opening the tracker says whether it
/// can be trusted. A stop needs no view.
pub struct TrackedDisk<'t, 'v> {
    pub tracker: &'t mut ChangeTracker,
    pub view: Option<&'v dyn BlockSource>,
}

impl std::fmt::Debug for TrackedDisk<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrackedDisk")
            .field("tracker", &self.tracker)
            .field("frozen", &self.view.is_some())
            .finish()
    }
}

impl ChangeSource for TrackedDisk<'_, '_> {
    fn freeze(&mut self, _last_point: Option<PointRef>) -> Result<Changes, SourceError> {
        let block_size = u64::from(self.tracker.block_size());
        let disk_size = self.tracker.disk_size();
        Ok(Changes::Ranges(
            self.tracker
                .begin_cycle()
                .into_iter()
                .map(|b| {
                    let offset = b * block_size;
                    (offset, block_size.min(disk_size - offset))
                })
                .collect(),
        ))
    }

    fn view(&self) -> Result<&dyn BlockSource, SourceError> {
        self.view.ok_or(SourceError::NotFrozen)
    }

    fn thaw(&mut self, committed: Option<PointRef>) -> Result<(), SourceError> {
        match committed {
            Some(_) => self.tracker.commit_cycle().map_err(SourceError::Tracker),
            None => {
                self.tracker.abort_cycle();
                Ok(())
            }
        }
    }

    fn stop(&mut self, clean: bool) -> Result<(), SourceError> {
        self.tracker.abort_cycle();
        self.tracker.persist(clean).map_err(SourceError::Tracker)
    }
}

/// The replication blocks of `block_size` bytes that `ranges` touch, ascending, each once;
/// ranges past `disk_size` are clipped (a source may round its granules out).
pub fn blocks_touched(ranges: &[(u64, u64)], block_size: u32, disk_size: u64) -> Vec<u64> {
    let block_size = u64::from(block_size);
    let mut blocks: Vec<u64> = Vec::new();
    let mut ranges: Vec<(u64, u64)> = ranges
        .iter()
        .filter(|&&(offset, len)| len > 0 && offset < disk_size)
        .map(|&(offset, len)| (offset, offset.saturating_add(len).min(disk_size)))
        .collect();
    ranges.sort_unstable();
    for (start, end) in ranges {
        let first = start / block_size;
        let last = (end - 1) / block_size;
        let from = blocks.last().map_or(first, |&b| first.max(b + 1));
        blocks.extend(from..=last);
    }
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_map_to_each_touched_block_once_in_order() {
        let ranges = [(70_000, 1), (0, 4096), (65_536, 65_537), (10 << 20, 4096)];
        // 64 KiB blocks on a 1 MiB disk: the last range is past the end and clipped away.
        assert_eq!(blocks_touched(&ranges, 65_536, 1 << 20), vec![0, 1, 2]);
        // A granule rounded out past a short last block stops at the disk's end.
        assert_eq!(
            blocks_touched(&[(96_000, 65_536)], 65_536, 100_000),
            vec![1]
        );
        assert!(blocks_touched(&[(5, 0)], 4096, 1 << 20).is_empty());
    }

    /// A sparse file written into a hole after it was opened: a handle kept from before says
    /// the new block is unallocated (a scan would commit the point without it); the disk
    /// opened again at the freeze sees it. One that cannot be opened again fails the freeze.
    #[test]
    fn a_reopened_disk_sees_what_was_written_into_a_hole_since() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.raw");
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(64 << 20).unwrap();
        file.write_all_at(&[7; 4096], 0).unwrap();
        let open = || -> std::io::Result<Box<dyn BlockSource>> {
            Ok(Box::new(crate::cycle::RawSource::open(&path)?))
        };
        let kept = open().unwrap();
        let mut disk = ReopenedDisk::new(open, open().unwrap());
        assert_eq!(disk.freeze(None).unwrap(), Changes::Unknown);
        let hole = 40u64 << 20;
        // (A file system that reports no holes reads every block either way.)
        let holes = disk.view().unwrap().is_unallocated(hole, 65536);
        file.write_all_at(&[9; 65536], hole).unwrap();
        if holes {
            assert!(
                kept.is_unallocated(hole, 65536),
                "the kept handle's allocation is stale"
            );
        }
        disk.freeze(None).unwrap();
        let view = disk.view().unwrap();
        assert!(!view.is_unallocated(hole, 65536));
        let mut buf = vec![0; 65536];
        view.read_at(hole, &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 9));
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(disk.freeze(None), Err(SourceError::Reopen(_))));
    }
}
