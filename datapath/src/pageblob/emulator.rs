//! The embedded page-blob store: Azure semantics from [`Account`], persisted by [`DataLog`]
//! and per-blob home files.
//!
//! Page data is written in place into the blob's sparse home file (`homes/<incarnation>.data`,
//! at the blob offset), so rewriting a block costs one copy into pages the OS already holds.
//! Snapshots share the home bytes until the base overwrites them: before such a write the old
//! bytes are copied to the data log (a `Relocate` record) and the snapshots repointed —
//! copy-on-write, once per range per snapshot generation. Every mutating call is checked,
//! logged, then applied under one lock; reads plan under the lock and copy outside it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use super::account::{Account, Effect};
use super::data_log::{DataLog, Durability, LogReader};
use super::error::{StoreError, StoreResult};
use super::extent_map::home_offset;
use super::fs::{RealFs, StoreFile, StoreFs};
use super::types::*;
use super::PageBlobStore;
use crate::clock::Clock;

/// Format version of `store.json`.
pub const STORE_FORMAT_VERSION: u32 = 1;

/// The store's fixed settings, written once when the directory is created.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct StoreSettings {
    format_version: u32,
    profile: Profile,
}

struct Inner {
    account: Account,
    log: DataLog,
    homes: Homes,
}

/// Home files by incarnation, opened on first use.
struct Homes {
    fs: Arc<dyn StoreFs>,
    dir: PathBuf,
    files: std::collections::BTreeMap<u64, Arc<dyn StoreFile>>,
    durability: Durability,
}

impl Homes {
    fn path(&self, incarnation: u64) -> PathBuf {
        self.dir.join(format!("{incarnation:016}.data"))
    }

    fn file(&mut self, incarnation: u64) -> StoreResult<Arc<dyn StoreFile>> {
        if let Some(f) = self.files.get(&incarnation) {
            return Ok(Arc::clone(f));
        }
        let path = self.path(incarnation);
        let f = self.fs.open(&path, true).map_err(|e| io_error(&path, e))?;
        self.files.insert(incarnation, Arc::clone(&f));
        Ok(f)
    }

    /// Remove home files no version refers to any more (also ones left by a crash).
    fn collect(&mut self, live: &std::collections::BTreeSet<u64>) {
        self.files.retain(|i, _| live.contains(i));
        for name in self.fs.list(&self.dir).unwrap_or_default() {
            let incarnation = name
                .strip_suffix(".data")
                .and_then(|n| n.parse::<u64>().ok());
            if incarnation.is_some_and(|i| !live.contains(&i)) {
                let _ = self.fs.remove(&self.dir.join(name));
            }
        }
    }
}

fn io_error(path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// A persistent page-blob store under a directory.
pub struct Emulator {
    inner: Mutex<Inner>,
    clock: Arc<dyn Clock>,
    dir: PathBuf,
    durability: Durability,
}

impl std::fmt::Debug for Emulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emulator").field("dir", &self.dir).finish()
    }
}

impl Emulator {
    /// Open an existing store with the profile it was created with.
    pub fn open_existing(
        dir: &Path,
        durability: Durability,
        clock: Arc<dyn Clock>,
    ) -> StoreResult<Emulator> {
        let settings_path = dir.join("store.json");
        let bytes = RealFs
            .read(&settings_path)
            .map_err(|e| io_error(&settings_path, e))?;
        let settings: StoreSettings = serde_json::from_slice(&bytes)
            .map_err(|e| StoreError::Corrupt(format!("{}: {e}", settings_path.display())))?;
        Emulator::open(dir, settings.profile, durability, clock)
    }

    /// Open the store in `dir`, creating it with `profile` if it is new. An existing store
    /// keeps the profile it was created with (a different one is an error).
    pub fn open(
        dir: &Path,
        profile: Profile,
        durability: Durability,
        clock: Arc<dyn Clock>,
    ) -> StoreResult<Emulator> {
        Emulator::open_with_fs(Arc::new(RealFs), dir, profile, durability, clock)
    }

    /// Open over any file system (tests pass a crash-simulating one).
    pub fn open_with_fs(
        fs: Arc<dyn StoreFs>,
        dir: &Path,
        profile: Profile,
        durability: Durability,
        clock: Arc<dyn Clock>,
    ) -> StoreResult<Emulator> {
        fs.create_dir_all(dir).map_err(|e| io_error(dir, e))?;
        let settings_path = dir.join("store.json");
        let settings = match fs.read(&settings_path) {
            Ok(bytes) => {
                let s: StoreSettings = serde_json::from_slice(&bytes).map_err(|e| {
                    StoreError::Corrupt(format!("{}: {e}", settings_path.display()))
                })?;
                if s.format_version != STORE_FORMAT_VERSION {
                    return Err(StoreError::Corrupt(format!(
                        "{}: format version {} (this build reads {STORE_FORMAT_VERSION})",
                        settings_path.display(),
                        s.format_version
                    )));
                }
                if s.profile != profile {
                    return Err(StoreError::Corrupt(format!(
                        "{} was created with profile {:?}, not {profile:?}",
                        dir.display(),
                        s.profile
                    )));
                }
                s
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let s = StoreSettings {
                    format_version: STORE_FORMAT_VERSION,
                    profile,
                };
                let bytes = serde_json::to_vec_pretty(&s).expect("serializes");
                fs.write_atomic(&settings_path, &bytes)
                    .map_err(|e| io_error(&settings_path, e))?;
                s
            }
            Err(e) => return Err(io_error(&settings_path, e)),
        };
        let mut account = Account::new(settings.profile);
        let log = DataLog::open(
            Arc::clone(&fs),
            &dir.join("log"),
            durability,
            |mut effect, data| {
                if let Effect::Relocate { data: d, .. } = &mut effect {
                    *d = data;
                }
                account.apply(&effect);
            },
        )?;
        account.fail_interrupted_copies();
        let homes_dir = dir.join("homes");
        fs.create_dir_all(&homes_dir)
            .map_err(|e| io_error(&homes_dir, e))?;
        let mut homes = Homes {
            fs,
            dir: homes_dir,
            files: Default::default(),
            durability,
        };
        // Home files of blobs whose deletion was logged but not yet carried out.
        homes.collect(&account.live_incarnations());
        Ok(Emulator {
            inner: Mutex::new(Inner {
                account,
                log,
                homes,
            }),
            clock,
            dir: dir.to_path_buf(),
            durability,
        })
    }

    /// The profile the store was created with.
    pub fn profile(&self) -> Profile {
        self.lock().account.profile()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Log and apply an effect; `data` are the bytes a relocation copies into the log.
    fn commit(inner: &mut Inner, mut effect: Effect, data: &[u8]) -> StoreResult<()> {
        let address = inner.log.append(&effect, data)?;
        if let Effect::Relocate { data: d, .. } = &mut effect {
            *d = address;
        }
        let deletes = matches!(effect, Effect::Delete { .. } | Effect::CreateBlob { .. });
        inner.account.apply(&effect);
        if deletes {
            let live = inner.account.live_incarnations();
            inner.homes.collect(&live);
        }
        Ok(())
    }

    /// Plan a read under the lock: runs, a log reader and the home file they need.
    #[allow(clippy::type_complexity)]
    fn plan_read(
        inner: &mut Inner,
        path: &BlobPath,
        snapshot: Option<&str>,
        offset: u64,
        len: usize,
    ) -> StoreResult<(Vec<(u64, u64, u64)>, LogReader, Option<Arc<dyn StoreFile>>)> {
        let (incarnation, plan) = inner
            .account
            .read_plan(path, snapshot, offset, len as u64)?;
        let home = if plan.iter().any(|(_, _, l)| home_offset(*l).is_some()) {
            Some(inner.homes.file(incarnation)?)
        } else {
            None
        };
        Ok((plan, inner.log.reader(), home))
    }

    /// Write page data in place, first moving any snapshot's view of those home bytes to the
    /// log (copy-on-write). The write record follows the data, so a crash in between leaves an
    /// unacknowledged write that may or may not show — never a snapshot that changed.
    fn write_home(inner: &mut Inner, path: &BlobPath, offset: u64, data: &[u8]) -> StoreResult<()> {
        let incarnation = inner.account.incarnation(path)?;
        let file = inner.homes.file(incarnation)?;
        let len = data.len() as u64;
        let sharing = inner.account.snapshots_sharing_home(path, offset, len);
        if !sharing.is_empty() {
            let mut old = vec![0u8; data.len()];
            read_home(&*file, offset, &mut old)?;
            let relocate = Effect::Relocate {
                path: path.clone(),
                snapshots: sharing,
                offset,
                len,
                data: None,
            };
            Emulator::commit(inner, relocate, &old)?;
        }
        let io = |e| StoreError::Io {
            path: format!("home file of {path}"),
            source: e,
        };
        file.write_all_at(data, offset).map_err(io)?;
        if inner.homes.durability == Durability::Power {
            file.sync_data().map_err(io)?;
        }
        Ok(())
    }

    fn now(&self) -> u64 {
        self.clock.now_nanos()
    }
}

/// Copy planned runs into `buf` (zeros elsewhere).
fn execute_read(
    plan: &[(u64, u64, u64)],
    reader: &LogReader,
    home: Option<&dyn StoreFile>,
    offset: u64,
    buf: &mut [u8],
) -> StoreResult<()> {
    buf.fill(0);
    for &(start, len, location) in plan {
        let at = (start - offset) as usize;
        let dst = &mut buf[at..at + len as usize];
        match (home_offset(location), home) {
            (Some(h), Some(file)) => read_home(file, h, dst)?,
            _ => reader.read(location, dst)?,
        }
    }
    Ok(())
}

/// Read home bytes; past the file's end (never written) they are zeros.
fn read_home(file: &dyn StoreFile, offset: u64, buf: &mut [u8]) -> StoreResult<()> {
    let mut done = 0;
    while done < buf.len() {
        let n = file
            .read_at(&mut buf[done..], offset + done as u64)
            .map_err(|e| StoreError::Io {
                path: "home file".into(),
                source: e,
            })?;
        if n == 0 {
            buf[done..].fill(0);
            break;
        }
        done += n;
    }
    Ok(())
}

impl PageBlobStore for Emulator {
    fn answers_promptly(&self) -> bool {
        self.durability == Durability::Process
    }

    fn create_container(&self, name: &str) -> StoreResult<()> {
        let now = self.now();
        let mut inner = self.lock();
        let effect = inner.account.create_container(name, now)?;
        Emulator::commit(&mut inner, effect, &[])
    }

    fn list_containers(&self) -> StoreResult<Vec<String>> {
        Ok(self.lock().account.list_containers())
    }

    fn create_page_blob(
        &self,
        path: &BlobPath,
        size: u64,
        sequence_number: u64,
        cond: &Conditions,
    ) -> StoreResult<Properties> {
        let now = self.now();
        let mut inner = self.lock();
        let effect = inner
            .account
            .create_blob(path, size, sequence_number, cond, now)?;
        Emulator::commit(&mut inner, effect, &[])?;
        inner.account.properties(path, None, now)
    }

    fn put_pages(
        &self,
        path: &BlobPath,
        offset: u64,
        data: &[u8],
        cond: &Conditions,
    ) -> StoreResult<Properties> {
        let now = self.now();
        let mut inner = self.lock();
        let effect =
            inner
                .account
                .write_pages(path, offset, data.len() as u64, false, cond, now)?;
        Emulator::write_home(&mut inner, path, offset, data)?;
        Emulator::commit(&mut inner, effect, &[])?;
        inner.account.properties(path, None, now)
    }

    fn clear_pages(
        &self,
        path: &BlobPath,
        offset: u64,
        len: u64,
        cond: &Conditions,
    ) -> StoreResult<Properties> {
        let now = self.now();
        let mut inner = self.lock();
        let effect = inner
            .account
            .write_pages(path, offset, len, true, cond, now)?;
        Emulator::commit(&mut inner, effect, &[])?;
        inner.account.properties(path, None, now)
    }

    fn read(
        &self,
        path: &BlobPath,
        snapshot: Option<&str>,
        offset: u64,
        buf: &mut [u8],
    ) -> StoreResult<()> {
        let mut inner = self.lock();
        let (plan, reader, home) =
            Emulator::plan_read(&mut inner, path, snapshot, offset, buf.len())?;
        drop(inner);
        execute_read(&plan, &reader, home.as_deref(), offset, buf)
    }

    fn page_ranges(
        &self,
        path: &BlobPath,
        snapshot: Option<&str>,
        prev_snapshot: Option<&str>,
        range: Option<(u64, u64)>,
        marker: Option<u64>,
        max_results: Option<usize>,
    ) -> StoreResult<PageRangeList> {
        self.lock()
            .account
            .page_ranges(path, snapshot, prev_snapshot, range, marker, max_results)
    }

    fn snapshot(&self, path: &BlobPath, cond: &Conditions) -> StoreResult<String> {
        let now = self.now();
        let mut inner = self.lock();
        let effect = inner.account.snapshot(path, cond, now)?;
        let Effect::Snapshot { id, .. } = &effect else {
            unreachable!("snapshot() returns a snapshot effect")
        };
        let id = super::timestamp::snapshot_id(*id);
        Emulator::commit(&mut inner, effect, &[])?;
        Ok(id)
    }

    fn list_blobs(
        &self,
        container: &str,
        include_snapshots: bool,
    ) -> StoreResult<Vec<BlobListing>> {
        let now = self.now();
        self.lock()
            .account
            .list_blobs(container, include_snapshots, now)
    }

    fn delete_blob(
        &self,
        path: &BlobPath,
        snapshot: Option<&str>,
        delete_snapshots: Option<DeleteSnapshots>,
        cond: &Conditions,
    ) -> StoreResult<()> {
        let now = self.now();
        let mut inner = self.lock();
        let effect = inner
            .account
            .delete(path, snapshot, delete_snapshots, cond, now)?;
        Emulator::commit(&mut inner, effect, &[])
    }

    fn resize(&self, path: &BlobPath, size: u64, cond: &Conditions) -> StoreResult<Properties> {
        let now = self.now();
        let mut inner = self.lock();
        let effect = inner.account.resize(path, size, cond, now)?;
        Emulator::commit(&mut inner, effect, &[])?;
        inner.account.properties(path, None, now)
    }

    fn set_sequence_number(
        &self,
        path: &BlobPath,
        action: SequenceNumberAction,
        cond: &Conditions,
    ) -> StoreResult<Properties> {
        let now = self.now();
        let mut inner = self.lock();
        let effect = inner.account.set_sequence_number(path, action, cond, now)?;
        Emulator::commit(&mut inner, effect, &[])?;
        inner.account.properties(path, None, now)
    }

    fn properties(&self, path: &BlobPath, snapshot: Option<&str>) -> StoreResult<Properties> {
        let now = self.now();
        self.lock().account.properties(path, snapshot, now)
    }

    fn lease(
        &self,
        path: &BlobPath,
        action: &LeaseAction,
        cond: &Conditions,
    ) -> StoreResult<LeaseAnswer> {
        let now = self.now();
        let mut inner = self.lock();
        let (effect, answer) = inner.account.lease(path, action, cond, now)?;
        Emulator::commit(&mut inner, effect, &[])?;
        Ok(answer)
    }

    fn incremental_copy(
        &self,
        dest: &BlobPath,
        source: &BlobPath,
        snapshot: Option<&str>,
    ) -> StoreResult<CopyInfo> {
        let now = self.now();
        let mut inner = self.lock();
        let (new, prev) = inner
            .account
            .check_incremental_copy(dest, source, snapshot)?;
        let snapshot = super::timestamp::snapshot_id(new);
        let size = inner.account.properties(source, Some(&snapshot), now)?.size;
        let info = CopyInfo {
            id: format!("{:016x}-{new:x}", inner.account.applied()),
            source: source.to_string(),
            source_snapshot: snapshot.clone(),
            status: "pending".into(),
        };
        let none = Conditions::default();
        let first = prev.is_none();
        if first {
            // First copy, or the previous source snapshot is gone: start from an empty blob.
            let effect = Effect::CreateBlob {
                path: dest.clone(),
                size,
                sequence_number: 0,
                time: now,
            };
            Emulator::commit(&mut inner, effect, &[])?;
        }
        Emulator::commit(
            &mut inner,
            Effect::Copy {
                path: dest.clone(),
                info: info.clone(),
                done: false,
            },
            &[],
        )?;
        if !first && inner.account.properties(dest, None, now)?.size != size {
            Emulator::commit(
                &mut inner,
                Effect::Resize {
                    path: dest.clone(),
                    size,
                    time: now,
                },
                &[],
            )?;
        }
        // Changed pages (all valid pages on a first copy), in Put Page sized pieces.
        let mut marker = None;
        let mut buf = Vec::new();
        loop {
            let list = inner.account.page_ranges(
                source,
                Some(&snapshot),
                prev.as_deref(),
                None,
                marker,
                None,
            )?;
            for r in &list.ranges {
                let mut pos = r.start;
                while pos <= r.end {
                    let n = (r.end + 1 - pos).min(MAX_PUT_PAGES_BYTES);
                    let effect = Effect::WritePages {
                        path: dest.clone(),
                        offset: pos,
                        len: n,
                        data: (!r.cleared).then(|| super::extent_map::home(pos)),
                        time: now,
                    };
                    if !r.cleared {
                        buf.resize(n as usize, 0);
                        let (plan, reader, home) = Emulator::plan_read(
                            &mut inner,
                            source,
                            Some(&snapshot),
                            pos,
                            n as usize,
                        )?;
                        execute_read(&plan, &reader, home.as_deref(), pos, &mut buf)?;
                        Emulator::write_home(&mut inner, dest, pos, &buf)?;
                    }
                    Emulator::commit(&mut inner, effect, &[])?;
                    pos += n;
                }
            }
            match list.next_marker {
                Some(m) => marker = Some(m),
                None => break,
            }
        }
        let snap = inner.account.snapshot(dest, &none, now)?;
        Emulator::commit(&mut inner, snap, &[])?;
        Emulator::commit(
            &mut inner,
            Effect::Copy {
                path: dest.clone(),
                info: info.clone(),
                done: true,
            },
            &[],
        )?;
        Ok(CopyInfo {
            status: "success".into(),
            ..info
        })
    }
}
