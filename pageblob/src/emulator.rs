//! The embedded page-blob store: Azure semantics from [`Account`], persisted by [`DataLog`]
//! and per-blob home files.
//!
//! Page data is written in place into the blob's sparse home file (`homes/<incarnation>.data`,
//! at the blob offset), so rewriting a block costs one copy into pages the OS already holds.
//! Snapshots share the home bytes until the base overwrites them: before such a write the old
//! bytes are copied to the data log (a `Relocate` record) and the snapshots repointed —
//! copy-on-write, once per range per snapshot generation. Every mutating call is checked,
//! logged, then applied under one lock, except the copy of an unconditioned Put Page's bytes
//! into the home file: checked and prepared under the lock, copied outside it (writers of other
//! ranges copy side by side), then logged and applied under it. While such a write is in
//! flight no other write of its bytes starts, no read copies them, and every other change waits
//! for it to land (and holds new ones back, so it is not kept waiting). Reads plan under the
//! lock and copy outside it, and copy again if an in-place write overtook them (a snapshot
//! read never sees a later write).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use super::account::{Account, Effect};

use super::data_log::{DataLog, Durability, LogAccess, LogReader};
use super::error::{ErrorCode, StoreError, StoreResult};
use super::extent_map::home_offset;
use super::fs::{OpenMode, RealFs, StoreFile, StoreFs};
use super::home_file::{incarnation_of, HomeLayout, HomeStripes, StripedHome};
use super::store_lock::{ReaderLock, WriterLock, OWNER_FILE, STATE_FILE};
use super::types::*;
use super::PageBlobStore;
use crate::clock::Clock;

/// Format version of the stores this build creates in a directory: home bytes striped over
/// several files (`crate::home_file`).
pub const STORE_FORMAT_VERSION: u32 = 2;
/// Format version of stores with one home file per blob incarnation, still read and written;
/// stores over a test or in-memory file system are made in it (no kernel lock to spread over).
pub const SINGLE_HOME_FILE_FORMAT_VERSION: u32 = 1;

/// The store's fixed settings, written once when the directory is created.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct StoreSettings {
    format_version: u32,
    profile: Profile,
    /// Format 2: how the blobs' homes are striped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    home_stripes: Option<HomeStripes>,
}

struct Inner {
    account: Account,
    log: DataLog,
    homes: Homes,
    /// In-place writes to home files so far: a read that copied home bytes outside the lock
    /// is valid only if no write happened meanwhile.
    home_writes: u64,
    /// Changes made so far (records appended, home bytes written).
    changes: u64,
    /// Home files written since the last sync (`Durability::Power`).
    unsynced_homes: std::collections::BTreeMap<u64, Arc<dyn StoreFile>>,
    /// Unconditioned Put Pages copying their bytes into home files outside the lock (checked
    /// and prepared before, committed after): no other write of their bytes may start, no
    /// read may copy them, and every other change waits until there are none.
    in_flight: Vec<HomeFlight>,
    /// Changes waiting for the writes in flight to land: no new one starts meanwhile, so a
    /// stream of writes cannot keep a change (a lease renewal, a snapshot) waiting for ever.
    changes_waiting: usize,
    /// Callers waiting on `Emulator::flights_landed`: a write that lands with none waiting
    /// wakes nobody (a wake-up is a system call, on every write otherwise).
    flight_waiters: usize,
}

/// An in-place write whose bytes are being copied outside the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HomeFlight {
    incarnation: u64,
    offset: u64,
    end: u64,
}

impl Inner {
    /// Whether a write in flight touches `offset..end` of `incarnation`'s home bytes.
    fn in_flight_over(&self, incarnation: u64, offset: u64, end: u64) -> bool {
        self.in_flight
            .iter()
            .any(|f| f.incarnation == incarnation && f.offset < end && offset < f.end)
    }
}

/// Times a read copies outside the lock and finds a write got in, before it copies under it.
const OPTIMISTIC_READ_TRIES: usize = 4;

/// Home files by incarnation, opened on first use.
struct Homes {
    fs: Arc<dyn StoreFs>,
    dir: PathBuf,
    files: std::collections::BTreeMap<u64, Arc<dyn StoreFile>>,
    durability: Durability,
    /// A writer's homes are created on first write; a reader's missing home reads as zeros.
    writable: bool,
    /// Each incarnation's home striped over several files (format 2), or one file.
    striped: Option<HomeStripes>,
}

impl Homes {
    fn path(&self, incarnation: u64) -> PathBuf {
        self.dir.join(format!("{incarnation:016}.data"))
    }

    /// The home file of `incarnation`, created for a writer; `None`: a reader's home file
    /// that was never written (its pages read as zeros). A striped home is always there (its
    /// missing stripes read as zeros).
    fn file(&mut self, incarnation: u64) -> StoreResult<Option<Arc<dyn StoreFile>>> {
        if let Some(f) = self.files.get(&incarnation) {
            return Ok(Some(Arc::clone(f)));
        }
        if let Some(stripes) = self.striped {
            let home: Arc<dyn StoreFile> = Arc::new(StripedHome::new(
                stripes,
                Arc::clone(&self.fs),
                &self.dir,
                incarnation,
                self.writable,
                self.writable && self.durability == Durability::Power,
            ));
            self.files.insert(incarnation, Arc::clone(&home));
            return Ok(Some(home));
        }
        let path = self.path(incarnation);
        let mode = if self.writable {
            OpenMode::Create
        } else {
            OpenMode::Read
        };
        let f = match self.fs.open(&path, mode) {
            Ok(f) => f,
            Err(e) if !self.writable && e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(None)
            }
            Err(e) => return Err(io_error(&path, e)),
        };
        if self.writable && self.durability == Durability::Power {
            self.fs
                .sync_dir(&self.dir)
                .map_err(|e| io_error(&self.dir, e))?;
        }
        self.files.insert(incarnation, Arc::clone(&f));
        Ok(Some(f))
    }

    /// The home file a write goes to.
    fn file_for_write(&mut self, incarnation: u64) -> StoreResult<Arc<dyn StoreFile>> {
        Ok(self
            .file(incarnation)?
            .expect("a writer's home files are created on open"))
    }

    /// Remove home files no version refers to any more (also ones left by a crash).
    fn collect(&mut self, live: &std::collections::BTreeSet<u64>) {
        self.files.retain(|i, _| live.contains(i));
        for name in self.fs.list(&self.dir).unwrap_or_default() {
            if incarnation_of(&name).is_some_and(|i| !live.contains(&i)) {
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

fn not_a_store(dir: &Path) -> StoreError {
    StoreError::NotAStore {
        dir: dir.display().to_string(),
        why: "it has no store.json".into(),
    }
}

/// The store's settings, `None` when the directory holds no store.
fn read_settings(fs: &dyn StoreFs, dir: &Path) -> StoreResult<Option<StoreSettings>> {
    let path = dir.join("store.json");
    let bytes = match fs.read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
            return Err(StoreError::NotAStore {
                dir: dir.display().to_string(),
                why: "it is a file, not a directory".into(),
            })
        }
        Err(e) => return Err(io_error(&path, e)),
    };
    let s: StoreSettings = serde_json::from_slice(&bytes)
        .map_err(|e| StoreError::Corrupt(format!("{}: {e}", path.display())))?;
    let layout = match (s.format_version, s.home_stripes) {
        (SINGLE_HOME_FILE_FORMAT_VERSION, None) => Ok(()),
        (STORE_FORMAT_VERSION, Some(stripes)) => stripes.check(),
        (SINGLE_HOME_FILE_FORMAT_VERSION | STORE_FORMAT_VERSION, _) => Err(format!(
            "format version {} with{} home_stripes",
            s.format_version,
            if s.home_stripes.is_some() { "" } else { "out" }
        )),
        (other, _) => Err(format!(
            "format version {other} (this build reads {SINGLE_HOME_FILE_FORMAT_VERSION} and {STORE_FORMAT_VERSION})"
        )),
    };
    layout.map_err(|why| StoreError::Corrupt(format!("{}: {why}", path.display())))?;
    Ok(Some(s))
}

/// A store is made only where nothing else is: a new or empty directory.
fn refuse_unless_empty(fs: &dyn StoreFs, dir: &Path) -> StoreResult<()> {
    let names = match fs.list(dir) {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_error(dir, e)),
    };
    match names.iter().find(|n| !is_lock_file(n)) {
        None => Ok(()),
        Some(other) => Err(StoreError::NotAStore {
            dir: dir.display().to_string(),
            why: format!(
                "it has no store.json and is not empty (it holds {other}); a store is created only in a new or empty directory"
            ),
        }),
    }
}

/// Write a new store's settings and folders, durably (settings last: they mark a store).
fn create_store(
    fs: &dyn StoreFs,
    dir: &Path,
    profile: Profile,
    layout: HomeLayout,
) -> StoreResult<StoreSettings> {
    let settings = match layout {
        HomeLayout::OneFile => StoreSettings {
            format_version: SINGLE_HOME_FILE_FORMAT_VERSION,
            profile,
            home_stripes: None,
        },
        HomeLayout::Striped(stripes) => {
            stripes.check().map_err(|why| StoreError::Service {
                code: crate::error::ErrorCode::InvalidInput,
                message: format!("{}: a new store's homes: {why}", dir.display()),
            })?;
            StoreSettings {
                format_version: STORE_FORMAT_VERSION,
                profile,
                home_stripes: Some(stripes),
            }
        }
    };
    refuse_unless_empty(fs, dir)?;
    for sub in [dir.to_path_buf(), dir.join("log"), dir.join("homes")] {
        fs.create_dir_all(&sub).map_err(|e| io_error(&sub, e))?;
    }
    fs.sync_dir(dir).map_err(|e| io_error(dir, e))?;
    let path = dir.join("store.json");
    let bytes = serde_json::to_vec_pretty(&settings).expect("serializes");
    fs.write_atomic(&path, &bytes)
        .map_err(|e| io_error(&path, e))?;
    Ok(settings)
}

/// A persistent page-blob store under a directory.
pub struct Emulator {
    inner: Mutex<Inner>,
    /// Signalled whenever an in-place write in flight lands (see [`Inner::in_flight`]).
    flights_landed: std::sync::Condvar,
    clock: Arc<dyn Clock>,
    dir: PathBuf,
    durability: Durability,
    access: Access,
    /// Every change up to this one is on stable storage (`Durability::Power`); held while
    /// one caller syncs for all waiting.
    synced: Mutex<u64>,
    /// A sync failed: what was written may not be on disk, and nothing after it can be
    /// acknowledged (the store must be reopened). Apart from `synced`, so writers never wait
    /// for a sync in progress just to read it.
    sync_failed: std::sync::atomic::AtomicBool,
}

/// How this process holds the store.
enum Access {
    /// The one writer; `None` over a test file system, which has no other processes.
    Writer(Option<WriterLock>),
    /// A reader: files opened read-only, nothing ever changed.
    Reader(#[allow(dead_code)] ReaderLock),
}

impl std::fmt::Debug for Emulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emulator").field("dir", &self.dir).finish()
    }
}

/// Files of ours that may stand in a directory before it holds a store.
fn is_lock_file(name: &str) -> bool {
    name == OWNER_FILE || name == STATE_FILE
}

impl Emulator {
    /// Open an existing store for writing, with the profile it was created with. A directory
    /// that holds no store is an error (a mistyped path must not become a store).
    pub fn open_existing(
        dir: &Path,
        durability: Durability,
        clock: Arc<dyn Clock>,
    ) -> StoreResult<Emulator> {
        let settings = read_settings(&RealFs, dir)?.ok_or_else(|| not_a_store(dir))?;
        Emulator::open(dir, settings.profile, durability, clock)
    }

    /// Open an existing store for reading only: its files are opened read-only and never
    /// changed (a torn tail a crashed writer left is ignored, not cut), so a store on
    /// read-only media works. While a writer is mid-change this waits for it when `wait`
    /// (and it will let go), else fails naming it.
    pub fn open_read_only(dir: &Path, wait: bool, clock: Arc<dyn Clock>) -> StoreResult<Emulator> {
        if read_settings(&RealFs, dir)?.is_none() {
            return Err(not_a_store(dir));
        }
        let lock = ReaderLock::acquire(dir, wait)?;
        Emulator::open_inner(
            Arc::new(RealFs),
            dir,
            None,
            HomeLayout::Striped(HomeStripes::DEFAULT),
            Durability::Process,
            clock,
            Access::Reader(lock),
        )
    }

    /// Open the store in `dir` for writing, creating it with `profile` if the directory is
    /// new or empty. An existing store keeps the profile it was created with (a different one
    /// is an error); a directory holding anything else is refused. One writer at a time: a
    /// second is refused with [`StoreError::InUse`].
    pub fn open(
        dir: &Path,
        profile: Profile,
        durability: Durability,
        clock: Arc<dyn Clock>,
    ) -> StoreResult<Emulator> {
        let fs = RealFs;
        if read_settings(&fs, dir)?.is_none() {
            refuse_unless_empty(&fs, dir)?;
            fs.create_dir_all(dir).map_err(|e| io_error(dir, e))?;
        }
        let lock = WriterLock::acquire(dir)?;
        Emulator::open_inner(
            Arc::new(fs),
            dir,
            Some(profile),
            HomeLayout::Striped(HomeStripes::DEFAULT),
            durability,
            clock,
            Access::Writer(Some(lock)),
        )
    }

    /// Open for writing over any file system (tests pass a crash-simulating one); no lock. A
    /// store created here has one home file per blob (format 1): no kernel lock to spread over.
    pub fn open_with_fs(
        fs: Arc<dyn StoreFs>,
        dir: &Path,
        profile: Profile,
        durability: Durability,
        clock: Arc<dyn Clock>,
    ) -> StoreResult<Emulator> {
        Emulator::open_with_fs_and_layout(fs, dir, profile, HomeLayout::OneFile, durability, clock)
    }

    /// [`Self::open_with_fs`], a store created here laying out its homes as `layout` (an
    /// existing store keeps its own).
    pub fn open_with_fs_and_layout(
        fs: Arc<dyn StoreFs>,
        dir: &Path,
        profile: Profile,
        layout: HomeLayout,
        durability: Durability,
        clock: Arc<dyn Clock>,
    ) -> StoreResult<Emulator> {
        Emulator::open_inner(
            fs,
            dir,
            Some(profile),
            layout,
            durability,
            clock,
            Access::Writer(None),
        )
    }

    /// Mark the store as held until this process exits (a server): readers are told so at
    /// once instead of waiting.
    pub fn hold_until_exit(&self) -> StoreResult<()> {
        match &self.access {
            Access::Writer(Some(lock)) => lock.describe(true),
            _ => Ok(()),
        }
    }

    /// `profile`: `Some` for a writer (the store is created with it if new), `None` for a
    /// reader (the store's own); a store created here lays out its homes as `new_layout`.
    fn open_inner(
        fs: Arc<dyn StoreFs>,
        dir: &Path,
        profile: Option<Profile>,
        new_layout: HomeLayout,
        durability: Durability,
        clock: Arc<dyn Clock>,
        access: Access,
    ) -> StoreResult<Emulator> {
        let writer = matches!(access, Access::Writer(_));
        let settings = match (read_settings(&*fs, dir)?, profile) {
            (Some(s), Some(wanted)) if s.profile != wanted => {
                return Err(StoreError::ProfileMismatch {
                    created: s.profile,
                    wanted,
                });
            }
            (Some(s), _) => s,
            (None, Some(profile)) => create_store(&*fs, dir, profile, new_layout)?,
            (None, None) => return Err(not_a_store(dir)),
        };
        let mut account = Account::new(settings.profile);
        let log_access = if writer {
            LogAccess::Write
        } else {
            LogAccess::Read
        };
        let log = DataLog::open(
            Arc::clone(&fs),
            &dir.join("log"),
            durability,
            log_access,
            |mut effect, data| {
                if let Effect::Relocate { data: d, .. } = &mut effect {
                    *d = data;
                }
                account.apply(&effect);
            },
        )?;
        account.fail_interrupted_copies();
        let homes_dir = dir.join("homes");
        if writer {
            fs.create_dir_all(&homes_dir)
                .map_err(|e| io_error(&homes_dir, e))?;
        }
        let mut homes = Homes {
            fs,
            dir: homes_dir,
            files: Default::default(),
            durability,
            writable: writer,
            striped: settings.home_stripes,
        };
        if writer {
            // Home files of blobs whose deletion was logged but not yet carried out.
            homes.collect(&account.live_incarnations());
        }
        Ok(Emulator {
            inner: Mutex::new(Inner {
                account,
                log,
                homes,
                home_writes: 0,
                changes: 0,
                unsynced_homes: Default::default(),
                in_flight: Vec::new(),
                changes_waiting: 0,
                flight_waiters: 0,
            }),
            flights_landed: std::sync::Condvar::new(),
            synced: Mutex::new(0),
            sync_failed: Default::default(),
            clock,
            dir: dir.to_path_buf(),
            durability,
            access,
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

    /// The state, to change it: readers may not; a writer that paused waits for its readers.
    /// Waits until no in-place write is in flight, so the change sees (and logs after) every
    /// write that started before it.
    fn lock_for_write(&self) -> StoreResult<MutexGuard<'_, Inner>> {
        let inner = self.lock_for_change()?;
        Ok(self.landed(inner))
    }

    /// The state once every write in flight has landed; none starts while this waits.
    fn landed<'a>(&'a self, mut inner: MutexGuard<'a, Inner>) -> MutexGuard<'a, Inner> {
        if inner.in_flight.is_empty() {
            return inner;
        }
        inner.changes_waiting += 1;
        let mut inner = self.wait_for_flights(inner, |inner| !inner.in_flight.is_empty());
        inner.changes_waiting -= 1;
        if inner.changes_waiting == 0 {
            // Writes held back by this wait go on once the lock is released.
            self.wake_flight_waiters(&inner);
        }
        inner
    }

    /// [`Self::lock_for_change`] unless it would wait for readers of the store directory to
    /// let go (the writer paused by `quiesce`): `None` then.
    fn lock_for_change_without_waiting(&self) -> StoreResult<Option<MutexGuard<'_, Inner>>> {
        self.check_synced()?;
        match &self.access {
            Access::Reader(_) => Err(StoreError::ReadOnly(self.dir.display().to_string())),
            Access::Writer(lock) => {
                // Checked under the state's lock: `quiesce` pauses under it too.
                let inner = self.lock();
                Ok(lock
                    .as_ref()
                    .is_none_or(WriterLock::is_held)
                    .then_some(inner))
            }
        }
    }

    /// [`Self::lock_for_write`] without waiting for the writes in flight.
    fn lock_for_change(&self) -> StoreResult<MutexGuard<'_, Inner>> {
        self.check_synced()?;
        match &self.access {
            Access::Reader(_) => Err(StoreError::ReadOnly(self.dir.display().to_string())),
            Access::Writer(lock) => {
                if let Some(lock) = lock {
                    lock.resume()?;
                }
                Ok(self.lock())
            }
        }
    }

    /// The state once `blocked` no longer holds (re-checked whenever a write in flight lands).
    fn wait_for_flights<'a>(
        &'a self,
        mut inner: MutexGuard<'a, Inner>,
        mut blocked: impl FnMut(&mut Inner) -> bool,
    ) -> MutexGuard<'a, Inner> {
        while blocked(&mut inner) {
            inner = self.wait_for_a_landing(inner);
        }
        inner
    }

    /// The state after the next wake-up (a write in flight landed, or a change let writes go).
    fn wait_for_a_landing<'a>(&'a self, mut inner: MutexGuard<'a, Inner>) -> MutexGuard<'a, Inner> {
        inner.flight_waiters += 1;
        let mut inner = self
            .flights_landed
            .wait(inner)
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        inner.flight_waiters -= 1;
        inner
    }

    /// Wake whoever waits on the writes in flight (under the lock, so none is missed).
    fn wake_flight_waiters(&self, inner: &Inner) {
        if inner.flight_waiters > 0 {
            self.flights_landed.notify_all();
        }
    }

    /// Log and apply an effect; `data` are the bytes a relocation copies into the log.
    fn commit(inner: &mut Inner, mut effect: Effect, data: &[u8]) -> StoreResult<()> {
        let address = inner.log.append(&effect, data)?;
        inner.changes += 1;
        if let Effect::Relocate { data: d, .. } = &mut effect {
            *d = address;
        }
        let ends_an_incarnation = inner.account.may_end_an_incarnation(&effect);
        inner.account.apply(&effect);
        if ends_an_incarnation {
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
        let (incarnation, runs) = inner
            .account
            .read_plan(path, snapshot, offset, len as u64)?;
        Emulator::plan_with_files(inner, incarnation, runs)
    }

    /// A read's runs with the log reader and the home file they need.
    #[allow(clippy::type_complexity)]
    fn plan_with_files(
        inner: &mut Inner,
        incarnation: u64,
        runs: Vec<(u64, u64, u64)>,
    ) -> StoreResult<(Vec<(u64, u64, u64)>, LogReader, Option<Arc<dyn StoreFile>>)> {
        let home = if runs.iter().any(|(_, _, l)| home_offset(*l).is_some()) {
            inner.homes.file(incarnation)?
        } else {
            None
        };
        Ok((runs, inner.log.reader(), home))
    }

    /// [`Self::plan_read`] once no write in flight touches the home bytes the plan copies;
    /// the plan with the lock still held. With `wait` false, `None` where one does.
    #[allow(clippy::type_complexity)]
    fn plan_read_landed(
        &self,
        path: &BlobPath,
        snapshot: Option<&str>,
        offset: u64,
        len: usize,
        wait: bool,
    ) -> StoreResult<
        Option<(
            MutexGuard<'_, Inner>,
            (Vec<(u64, u64, u64)>, LogReader, Option<Arc<dyn StoreFile>>),
        )>,
    > {
        let mut inner = self.lock();
        loop {
            let (incarnation, runs) = inner
                .account
                .read_plan(path, snapshot, offset, len as u64)?;
            let copies_in_flight = runs.iter().any(|&(_, run, location)| {
                home_offset(location)
                    .is_some_and(|at| inner.in_flight_over(incarnation, at, at + run))
            });
            if !copies_in_flight {
                let planned = Emulator::plan_with_files(&mut inner, incarnation, runs)?;
                return Ok(Some((inner, planned)));
            }
            if !wait {
                return Ok(None);
            }
            inner = self.wait_for_a_landing(inner);
        }
    }

    /// Plan under the lock (waiting for writes in flight only when `wait`), copy outside it,
    /// then check that no in-place write overtook the copy: a snapshot's bytes may still live
    /// in the home file the base is being written to. `false`: do it again (or, not `wait`,
    /// it would have waited — for a write in flight or, the file not in memory, the device).
    fn read_optimistically(
        &self,
        path: &BlobPath,
        snapshot: Option<&str>,
        offset: u64,
        buf: &mut [u8],
        wait: bool,
    ) -> StoreResult<bool> {
        let Some((inner, (plan, reader, home))) =
            self.plan_read_landed(path, snapshot, offset, buf.len(), wait)?
        else {
            return Ok(false);
        };
        let writes = inner.home_writes;
        drop(inner);
        if !execute_read_with(&plan, &reader, home.as_deref(), offset, buf, !wait)? {
            return Ok(false);
        }
        Ok(home.is_none() || self.lock().home_writes == writes)
    }

    /// Write page data in place, first moving any snapshot's view of those home bytes to the
    /// log (copy-on-write). The write record follows the data, so a crash in between leaves an
    /// unacknowledged write that may or may not show — never a snapshot that changed.
    fn write_home(inner: &mut Inner, path: &BlobPath, offset: u64, data: &[u8]) -> StoreResult<()> {
        let (incarnation, file, relocated) =
            Emulator::prepare_home_write(inner, path, offset, data.len())?;
        if relocated && inner.homes.durability == Durability::Power {
            // The preserved bytes must be on disk before the overwrite can be.
            inner.log.sync()?;
        }
        file.write_all_at(data, offset)
            .map_err(|e| home_write_error(path, e))?;
        Emulator::home_written(inner, incarnation, file);
        Ok(())
    }

    /// Before bytes are written in place: the snapshots that still read the bytes they replace
    /// get a copy in the log, and reads that copied home bytes meanwhile will copy again. The
    /// incarnation, its home file, and whether bytes were copied to the log — at power
    /// durability the caller syncs the log before the overwrite.
    fn prepare_home_write(
        inner: &mut Inner,
        path: &BlobPath,
        offset: u64,
        len: usize,
    ) -> StoreResult<(u64, Arc<dyn StoreFile>, bool)> {
        let incarnation = inner.account.incarnation(path)?;
        let file = inner.homes.file_for_write(incarnation)?;
        let relocated = Emulator::relocate_shared(inner, path, offset, len, &*file)?;
        inner.home_writes += 1;
        Ok((incarnation, file, relocated))
    }

    /// Before home bytes are overwritten: the ones snapshots still read from home copied to
    /// the log and the snapshots repointed there (not synced). Whether there were any.
    fn relocate_shared(
        inner: &mut Inner,
        path: &BlobPath,
        offset: u64,
        len: usize,
        file: &dyn StoreFile,
    ) -> StoreResult<bool> {
        let sharing = inner
            .account
            .snapshots_sharing_home(path, offset, len as u64);
        if sharing.is_empty() {
            return Ok(false);
        }
        let mut old = vec![0u8; len];
        read_home(file, offset, &mut old)?;
        let relocate = Effect::Relocate {
            path: path.clone(),
            snapshots: sharing,
            offset,
            len: len as u64,
            data: None,
        };
        Emulator::commit(inner, relocate, &old)?;
        Ok(true)
    }

    /// At power durability, the home bytes a batch's writes will overwrite that snapshots
    /// still read, relocated for all of them with one log sync before any is overwritten:
    /// each write relocating its own syncs the log under the lock (a delta cycle of 1,550
    /// records into a store directory made ~1,700 syncs). Bytes relocated for a write that is
    /// then refused (its conditions) read the same from the log as from home.
    fn relocate_ahead(&self, writes: &[PageWrite<'_>]) -> StoreResult<()> {
        let shares = |inner: &Inner, w: &PageWrite<'_>| {
            !inner
                .account
                .snapshots_sharing_home(w.path, w.offset, w.data.len() as u64)
                .is_empty()
        };
        let any_shared = {
            let inner = self.lock();
            writes.iter().any(|w| shares(&inner, w))
        };
        if !any_shared {
            return Ok(());
        }
        // Every write in flight landed, none starting: the old bytes are read whole.
        let mut inner = self.lock_for_write()?;
        let mut relocated = false;
        for w in writes {
            if !shares(&inner, w) {
                continue;
            }
            let incarnation = inner.account.incarnation(w.path)?;
            let file = inner.homes.file_for_write(incarnation)?;
            relocated |=
                Emulator::relocate_shared(&mut inner, w.path, w.offset, w.data.len(), &*file)?;
        }
        if relocated {
            inner.log.sync()?;
        }
        Ok(())
    }

    /// After bytes were written in place: a change to make durable (`Durability::Power`).
    fn home_written(inner: &mut Inner, incarnation: u64, file: Arc<dyn StoreFile>) {
        inner.changes += 1;
        if inner.homes.durability == Durability::Power {
            inner.unsynced_homes.insert(incarnation, file);
        }
    }

    /// A Put Page with no condition a write changes (see [`checked_when_planned`]): checked
    /// and prepared under the lock, its bytes copied into
    /// the home file outside it (so writers of other ranges copy side by side instead of one
    /// after another), then logged and applied under the lock. Until it lands, no other
    /// write of those bytes starts, no read copies them, and every other change waits.
    /// Returns the blob's properties after the write and the change count a sync must reach
    /// to make it durable (none is made here).
    ///
    /// With `wait` false, nothing is done and `None` returned where the write would wait: for
    /// the store directory's readers, for a write of the same bytes or a change in flight, or
    /// (`Durability::Power`) for the sync of bytes a snapshot shares, copied aside first.
    fn put_pages_in_place_unsynced(
        &self,
        path: &BlobPath,
        offset: u64,
        data: &[u8],
        cond: &Conditions,
        wait: bool,
    ) -> StoreResult<Option<(Properties, u64)>> {
        let now = self.now();
        let end = offset.saturating_add(data.len() as u64);
        let (flight, effect, file, relocation_synced_by) = {
            let inner = match wait {
                true => self.lock_for_change()?,
                false => match self.lock_for_change_without_waiting()? {
                    Some(inner) => inner,
                    None => return Ok(None),
                },
            };
            let mut checked = None;
            let mut blocked = |inner: &mut Inner| {
                checked = Some(
                    inner
                        .account
                        .write_pages(path, offset, data.len() as u64, false, cond, now)
                        .and_then(|effect| Ok((effect, inner.account.incarnation(path)?))),
                );
                inner.changes_waiting > 0
                    || matches!(&checked, Some(Ok((_, incarnation))) if inner.in_flight_over(*incarnation, offset, end))
            };
            let mut inner = inner;
            if wait {
                inner = self.wait_for_flights(inner, blocked);
            } else if blocked(&mut inner) {
                return Ok(None);
            }
            let (effect, _) = checked.expect("checked at least once")?;
            if !wait
                && self.durability == Durability::Power
                && !inner
                    .account
                    .snapshots_sharing_home(path, offset, data.len() as u64)
                    .is_empty()
            {
                return Ok(None);
            }
            let (incarnation, file, relocated) =
                Emulator::prepare_home_write(&mut inner, path, offset, data.len())?;
            let flight = HomeFlight {
                incarnation,
                offset,
                end,
            };
            inner.in_flight.push(flight);
            let relocation_synced_by =
                (relocated && self.durability == Durability::Power).then_some(inner.changes);
            (flight, effect, file, relocation_synced_by)
        };
        let landing = Landing {
            emulator: self,
            flight,
        };
        if let Some(changes) = relocation_synced_by {
            // The preserved bytes must be on disk before the overwrite can be: synced by the
            // group commit, outside the lock (the flight keeps writes of this range and
            // changes that wait for writes in flight out meanwhile). Under the lock each such
            // write held every other back for its sync: a delta through `blob serve`.
            self.sync_through(changes)?;
        }
        let copied = file.write_all_at(data, offset);
        let mut inner = landing.land();
        copied.map_err(|e| home_write_error(path, e))?;
        Emulator::home_written(&mut inner, flight.incarnation, file);
        Emulator::commit(&mut inner, effect, &[])?;
        Ok(Some((
            inner.account.properties(path, None, now)?,
            inner.changes,
        )))
    }

    /// A Put Page (`update`) short of the sync: the blob's properties after it and the change
    /// count a sync must reach to make it durable.
    fn put_pages_unsynced(
        &self,
        path: &BlobPath,
        offset: u64,
        data: &[u8],
        cond: &Conditions,
    ) -> StoreResult<(Properties, u64)> {
        if checked_when_planned(cond) {
            let made = self.put_pages_in_place_unsynced(path, offset, data, cond, true)?;
            return Ok(made.expect("a write that may wait is made"));
        }
        let now = self.now();
        let mut inner = self.lock_for_write()?;
        let effect =
            inner
                .account
                .write_pages(path, offset, data.len() as u64, false, cond, now)?;
        Emulator::write_home(&mut inner, path, offset, data)?;
        Emulator::commit(&mut inner, effect, &[])?;
        Ok((inner.account.properties(path, None, now)?, inner.changes))
    }

    fn now(&self) -> u64 {
        self.clock.now_nanos()
    }

    /// Change the store under the lock, then (`Durability::Power`) make the change durable
    /// before it is acknowledged.
    fn change<T>(&self, f: impl FnOnce(&mut Inner) -> StoreResult<T>) -> StoreResult<T> {
        let (result, changes) = {
            let mut inner = self.lock_for_write()?;
            let result = f(&mut inner);
            (result, inner.changes)
        };
        let value = result?;
        if self.durability == Durability::Power {
            self.sync_through(changes)?;
        }
        Ok(value)
    }

    /// An error once a sync has failed.
    fn check_synced(&self) -> StoreResult<()> {
        if self.sync_failed.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::Corrupt(format!(
                "{}: an earlier sync failed; reopen the store",
                self.dir.display()
            )));
        }
        Ok(())
    }

    /// Group commit: every change up to `changes` synced, home files first, then the log (a
    /// synced record never points at home bytes that are not). Callers that arrive while one
    /// syncs find their changes covered by the next sync, made once for all of them.
    fn sync_through(&self, changes: u64) -> StoreResult<()> {
        let mut synced = self.synced.lock().unwrap_or_else(|p| p.into_inner());
        self.check_synced()?;
        if *synced >= changes {
            return Ok(());
        }
        let (homes, segments, upto) = {
            let mut inner = self.lock();
            let homes = std::mem::take(&mut inner.unsynced_homes);
            (homes, inner.log.take_unsynced(), inner.changes)
        };
        let outcome = homes
            .values()
            .try_for_each(|f| f.sync_data())
            .map_err(|e| io_error(&self.dir.join("homes"), e))
            .and_then(|()| segments.sync());
        match outcome {
            Ok(()) => {
                *synced = upto;
                // Evidence that everything so far is synced, for a later open to tell damage
                // from a power cut's unsynced tail. Not a change to wait for writes in flight
                // (their records are appended after it, and it says how far the sync reached,
                // not that everything before it was synced): waiting here held every writer
                // back at every group commit.
                self.lock_for_change()?.log.append_sync_mark()
            }
            Err(e) => {
                self.sync_failed
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                Err(e)
            }
        }
    }
}

/// A write in flight until it lands: [`Landing::land`] takes it off the list under the lock and
/// wakes whoever waits; dropped without landing (a panic while copying), it does the same.
struct Landing<'a> {
    emulator: &'a Emulator,
    flight: HomeFlight,
}

impl<'a> Landing<'a> {
    /// The state, with this write no longer in flight.
    fn land(self) -> MutexGuard<'a, Inner> {
        let emulator = self.emulator;
        let mut inner = emulator.lock();
        Landing::take_off(emulator, &mut inner, self.flight);
        std::mem::forget(self);
        inner
    }

    /// Off the list, and whoever waits woken (under the lock).
    fn take_off(emulator: &Emulator, inner: &mut Inner, flight: HomeFlight) {
        if let Some(at) = inner.in_flight.iter().position(|f| *f == flight) {
            inner.in_flight.swap_remove(at);
        }
        emulator.wake_flight_waiters(inner);
    }
}

impl Drop for Landing<'_> {
    fn drop(&mut self) {
        Landing::take_off(self.emulator, &mut self.emulator.lock(), self.flight);
    }
}

fn home_write_error(path: &BlobPath, source: std::io::Error) -> StoreError {
    StoreError::Io {
        path: format!("home file of {path}"),
        source,
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
    let read = execute_read_with(plan, reader, home, offset, buf, false)?;
    debug_assert!(read);
    Ok(())
}

/// [`execute_read`], only from memory (the page cache) when `cached_only`: `false` where a
/// file would have to be read from the device, and then nothing is promised of `buf`.
fn execute_read_with(
    plan: &[(u64, u64, u64)],
    reader: &LogReader,
    home: Option<&dyn StoreFile>,
    offset: u64,
    buf: &mut [u8],
    cached_only: bool,
) -> StoreResult<bool> {
    // The plan's runs are in order and do not overlap; only the pages between them (never
    // written) are zeroed here, not the whole buffer before it is copied over.
    let mut set = 0;
    for &(start, len, location) in plan {
        let at = (start - offset) as usize;
        buf[set.min(at)..at].fill(0);
        let dst = &mut buf[at..at + len as usize];
        let read = match (home_offset(location), home) {
            (Some(h), Some(file)) => read_home_with(file, h, dst, cached_only)?,
            // A home file never written (a reader does not create it): zeros.
            (Some(_), None) => {
                dst.fill(0);
                true
            }
            (None, _) if cached_only => reader.read_if_cached(location, dst)?,
            (None, _) => {
                reader.read(location, dst)?;
                true
            }
        };
        if !read {
            return Ok(false);
        }
        set = set.max(at + len as usize);
    }
    buf[set..].fill(0);
    Ok(true)
}

/// Read home bytes; past the file's end (never written) they are zeros.
fn read_home(file: &dyn StoreFile, offset: u64, buf: &mut [u8]) -> StoreResult<()> {
    let read = read_home_with(file, offset, buf, false)?;
    debug_assert!(read);
    Ok(())
}

/// [`read_home`], only from memory when `cached_only` (`false` where it would wait).
fn read_home_with(
    file: &dyn StoreFile,
    offset: u64,
    buf: &mut [u8],
    cached_only: bool,
) -> StoreResult<bool> {
    let mut done = 0;
    while done < buf.len() {
        let at = offset + done as u64;
        let n = match cached_only {
            true => file.read_at_if_cached(&mut buf[done..], at),
            false => file.read_at(&mut buf[done..], at).map(Some),
        }
        .map_err(|e| StoreError::Io {
            path: "home file".into(),
            source: e,
        })?;
        match n {
            None => return Ok(false),
            Some(0) => {
                buf[done..].fill(0);
                break;
            }
            Some(n) => done += n,
        }
    }
    Ok(true)
}

/// Whether a Put Page under `cond` may be checked when it is planned and land later (in
/// place, outside the lock): true when no condition is one that a write changes. A sequence
/// number or a lease is changed only by other calls, under the lock, so a write checked
/// before such a change is one made before it (reads and snapshots wait for it to land). An
/// ETag or a modification time is changed by the writes themselves: two writes in flight
/// under one `If-Match` would both pass, so those are checked and applied under the lock.
fn checked_when_planned(cond: &Conditions) -> bool {
    cond.if_match.is_none()
        && cond.if_none_match.is_none()
        && cond.if_modified_since.is_none()
        && cond.if_unmodified_since.is_none()
}

impl PageBlobStore for Emulator {
    fn answers_promptly(&self) -> bool {
        self.durability == Durability::Process
    }

    /// At power durability, a write with no condition a write changes is applied in place
    /// and its sync left owed (the group commit `sync_owed` joins); anything else is made
    /// durable at once, as `put_pages` makes it.
    fn put_pages_owing_sync(
        &self,
        path: &BlobPath,
        offset: u64,
        data: &[u8],
        cond: &Conditions,
    ) -> StoreResult<(Properties, Option<SyncTicket>)> {
        if self.durability == Durability::Power && checked_when_planned(cond) {
            let (properties, changes) = self.put_pages_unsynced(path, offset, data, cond)?;
            return Ok((properties, Some(SyncTicket(changes))));
        }
        Ok((self.put_pages(path, offset, data, cond)?, None))
    }

    /// At process durability every write is prompt; at power durability, a write with no
    /// condition a write changes, made in place unless it would wait (its sync is owed).
    fn try_put_pages_owing_sync(
        &self,
        path: &BlobPath,
        offset: u64,
        data: &[u8],
        cond: &Conditions,
    ) -> StoreResult<Option<(Properties, Option<SyncTicket>)>> {
        match self.durability {
            Durability::Process => self
                .put_pages_owing_sync(path, offset, data, cond)
                .map(Some),
            Durability::Power if checked_when_planned(cond) => Ok(self
                .put_pages_in_place_unsynced(path, offset, data, cond, false)?
                .map(|(properties, changes)| (properties, Some(SyncTicket(changes))))),
            Durability::Power => Ok(None),
        }
    }

    fn sync_owed(&self, ticket: SyncTicket) -> StoreResult<()> {
        match self.durability {
            Durability::Power => self.sync_through(ticket.0),
            Durability::Process => Ok(()),
        }
    }

    fn quiesce(&self) {
        if let Access::Writer(Some(lock)) = &self.access {
            // Under the state's lock with no write in flight, so no call of ours is
            // mid-change.
            let _inner = self.landed(self.lock());
            lock.pause();
        }
    }

    fn create_container(&self, name: &str) -> StoreResult<()> {
        self.create_container_with(name, &Metadata::new())
    }

    fn create_container_with(&self, name: &str, metadata: &Metadata) -> StoreResult<()> {
        let now = self.now();
        self.change(|inner| {
            let effect = inner.account.create_container(name, metadata, now)?;
            Emulator::commit(inner, effect, &[])
        })
    }

    fn container_properties(&self, name: &str) -> StoreResult<ContainerProperties> {
        self.lock().account.container_properties(name)
    }

    fn set_container_metadata(
        &self,
        name: &str,
        metadata: &Metadata,
    ) -> StoreResult<ContainerProperties> {
        let now = self.now();
        self.change(|inner| {
            let effect = inner.account.set_container_metadata(name, metadata, now)?;
            Emulator::commit(inner, effect, &[])?;
            inner.account.container_properties(name)
        })
    }

    fn set_metadata(
        &self,
        path: &BlobPath,
        metadata: &Metadata,
        cond: &Conditions,
    ) -> StoreResult<Properties> {
        let now = self.now();
        self.change(|inner| {
            let effect = inner.account.set_metadata(path, metadata, cond, now)?;
            Emulator::commit(inner, effect, &[])?;
            inner.account.properties(path, None, now)
        })
    }

    fn set_content_headers(
        &self,
        path: &BlobPath,
        content: &ContentHeaders,
        cond: &Conditions,
    ) -> StoreResult<Properties> {
        let now = self.now();
        self.change(|inner| {
            let effect = inner
                .account
                .set_content_headers(path, content, cond, now)?;
            Emulator::commit(inner, effect, &[])?;
            inner.account.properties(path, None, now)
        })
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
        self.create_page_blob_with(path, size, sequence_number, cond, &BlobHeaders::default())
    }

    fn create_page_blob_with(
        &self,
        path: &BlobPath,
        size: u64,
        sequence_number: u64,
        cond: &Conditions,
        headers: &BlobHeaders,
    ) -> StoreResult<Properties> {
        let now = self.now();
        self.change(|inner| {
            let effect =
                inner
                    .account
                    .create_blob(path, size, sequence_number, cond, headers, now)?;
            Emulator::commit(inner, effect, &[])?;
            inner.account.properties(path, None, now)
        })
    }

    fn put_pages(
        &self,
        path: &BlobPath,
        offset: u64,
        data: &[u8],
        cond: &Conditions,
    ) -> StoreResult<Properties> {
        let (properties, changes) = self.put_pages_unsynced(path, offset, data, cond)?;
        if self.durability == Durability::Power {
            self.sync_through(changes)?;
        }
        Ok(properties)
    }

    /// The writes one after another, then (`Durability::Power`) one group commit for all of
    /// them: each is durable when this returns `Ok`, as the contract asks, and a cycle's
    /// writers pay a sync per batch of records instead of one per record (an initial
    /// replication of 11,700 records into a store directory made 46,000 `fdatasync`s). On an
    /// error the writes made before it are not acknowledged, and need not be durable.
    fn put_pages_batch(&self, writes: &[PageWrite<'_>], cond: &Conditions) -> StoreResult<()> {
        if self.durability == Durability::Power && writes.len() > 1 {
            self.relocate_ahead(writes)?;
        }
        let mut changes = 0;
        for w in writes {
            changes = changes.max(self.put_pages_unsynced(w.path, w.offset, w.data, cond)?.1);
        }
        if self.durability == Durability::Power && !writes.is_empty() {
            self.sync_through(changes)?;
        }
        Ok(())
    }

    fn clear_pages(
        &self,
        path: &BlobPath,
        offset: u64,
        len: u64,
        cond: &Conditions,
    ) -> StoreResult<Properties> {
        let now = self.now();
        self.change(|inner| {
            let effect = inner
                .account
                .write_pages(path, offset, len, true, cond, now)?;
            Emulator::commit(inner, effect, &[])?;
            inner.account.properties(path, None, now)
        })
    }

    fn read(
        &self,
        path: &BlobPath,
        snapshot: Option<&str>,
        offset: u64,
        buf: &mut [u8],
    ) -> StoreResult<()> {
        // Plan under the lock, copy outside it (reads do not wait for each other or for
        // writes), then check that no in-place write overtook the copy: a snapshot's bytes
        // may still live in the home file the base is being written to.
        for _ in 0..OPTIMISTIC_READ_TRIES {
            if self.read_optimistically(path, snapshot, offset, buf, true)? {
                return Ok(());
            }
        }
        // Writes keep overtaking: copy under the lock (no write of these bytes is in flight,
        // and none can start while it is held).
        let (_inner, (plan, reader, home)) = self
            .plan_read_landed(path, snapshot, offset, buf.len(), true)?
            .expect("a plan that may wait is made");
        execute_read(&plan, &reader, home.as_deref(), offset, buf)
    }

    /// A read that waits for nothing: no write of the bytes it copies in flight, every byte in
    /// memory (the page cache), and no in-place write overtaking its copy; else `false` (the
    /// caller reads as [`read`](PageBlobStore::read) does, on a thread that may wait).
    fn try_read(
        &self,
        path: &BlobPath,
        snapshot: Option<&str>,
        offset: u64,
        buf: &mut [u8],
    ) -> StoreResult<bool> {
        self.read_optimistically(path, snapshot, offset, buf, false)
    }

    fn page_ranges(
        &self,
        path: &BlobPath,
        snapshot: Option<&str>,
        prev_snapshot: Option<&str>,
        range: Option<(u64, u64)>,
        marker: Option<&str>,
        max_results: Option<usize>,
    ) -> StoreResult<PageRangeList> {
        // This store's markers are byte offsets (`PageRangeQuery::answer`).
        let marker = marker
            .map(|m| {
                m.parse::<u64>().map_err(|_| {
                    StoreError::service(
                        ErrorCode::InvalidQueryParameterValue,
                        format!("{path}: marker {m:?} is not one this store gave"),
                    )
                })
            })
            .transpose()?;
        // Checked under the lock; the walk over the extents outside it (the map is shared).
        let query = self.lock().account.page_range_query(
            path,
            snapshot,
            prev_snapshot,
            range,
            marker,
            max_results,
        )?;
        Ok(query.answer())
    }

    fn snapshot(&self, path: &BlobPath, cond: &Conditions) -> StoreResult<String> {
        let now = self.now();
        self.change(|inner| {
            let effect = inner.account.snapshot(path, cond, now)?;
            let Effect::Snapshot { id, .. } = &effect else {
                unreachable!("snapshot() returns a snapshot effect")
            };
            let id = super::timestamp::snapshot_id(*id);
            Emulator::commit(inner, effect, &[])?;
            Ok(id)
        })
    }

    fn list_blobs(
        &self,
        container: &str,
        prefix: &str,
        include_snapshots: bool,
    ) -> StoreResult<Vec<BlobListing>> {
        let now = self.now();
        self.lock()
            .account
            .list_blobs(container, prefix, include_snapshots, now)
    }

    fn delete_blob(
        &self,
        path: &BlobPath,
        snapshot: Option<&str>,
        delete_snapshots: Option<DeleteSnapshots>,
        cond: &Conditions,
    ) -> StoreResult<()> {
        let now = self.now();
        self.change(|inner| {
            let effect = inner
                .account
                .delete(path, snapshot, delete_snapshots, cond, now)?;
            Emulator::commit(inner, effect, &[])
        })
    }

    fn resize(&self, path: &BlobPath, size: u64, cond: &Conditions) -> StoreResult<Properties> {
        let now = self.now();
        self.change(|inner| {
            let effect = inner.account.resize(path, size, cond, now)?;
            Emulator::commit(inner, effect, &[])?;
            inner.account.properties(path, None, now)
        })
    }

    fn set_properties(
        &self,
        path: &BlobPath,
        changes: &crate::blob_headers::PropertyChanges,
        cond: &Conditions,
    ) -> StoreResult<Properties> {
        if *changes == crate::blob_headers::PropertyChanges::default() {
            return self.properties(path, None);
        }
        // Every part checked and applied under the lock, logged as one record.
        let now = self.now();
        self.change(|inner| {
            let effect = inner.account.set_properties(path, changes, cond, now)?;
            Emulator::commit(inner, effect, &[])?;
            inner.account.properties(path, None, now)
        })
    }

    fn set_sequence_number(
        &self,
        path: &BlobPath,
        action: SequenceNumberAction,
        cond: &Conditions,
    ) -> StoreResult<Properties> {
        let now = self.now();
        self.change(|inner| {
            let effect = inner.account.set_sequence_number(path, action, cond, now)?;
            Emulator::commit(inner, effect, &[])?;
            inner.account.properties(path, None, now)
        })
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
        self.change(|inner| {
            let (effect, answer) = inner.account.lease(path, action, cond, now)?;
            Emulator::commit(inner, effect, &[])?;
            Ok(answer)
        })
    }

    fn incremental_copy(
        &self,
        dest: &BlobPath,
        source: &BlobPath,
        snapshot: Option<&str>,
    ) -> StoreResult<CopyInfo> {
        let now = self.now();
        self.change(|inner| {
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
                destination_snapshot: None,
                completed_at: None,
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
                    metadata: Metadata::new(),
                    content: ContentHeaders::default(),
                };
                Emulator::commit(inner, effect, &[])?;
            }
            Emulator::commit(
                inner,
                Effect::Copy {
                    path: dest.clone(),
                    info: info.clone(),
                    done: false,
                },
                &[],
            )?;
            if !first && inner.account.properties(dest, None, now)?.size != size {
                Emulator::commit(
                    inner,
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
                let (ranges, next_marker) = inner
                    .account
                    .page_range_query(source, Some(&snapshot), prev.as_deref(), None, marker, None)?
                    .answer_page();
                for r in &ranges {
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
                                inner,
                                source,
                                Some(&snapshot),
                                pos,
                                n as usize,
                            )?;
                            execute_read(&plan, &reader, home.as_deref(), pos, &mut buf)?;
                            Emulator::write_home(inner, dest, pos, &buf)?;
                        }
                        Emulator::commit(inner, effect, &[])?;
                        pos += n;
                    }
                }
                match next_marker {
                    Some(m) => marker = Some(m),
                    None => break,
                }
            }
            let snap = inner.account.snapshot(dest, &none, now)?;
            let Effect::Snapshot { id: snap_id, .. } = &snap else {
                unreachable!("snapshot() plans a snapshot");
            };
            let info = CopyInfo {
                destination_snapshot: Some(super::timestamp::snapshot_id(*snap_id)),
                completed_at: Some(now),
                ..info
            };
            Emulator::commit(inner, snap, &[])?;
            Emulator::commit(
                inner,
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
        })
    }
}
