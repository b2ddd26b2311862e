//! Who may use a store directory at once: one writer (`replicate`, `blob serve`, a bench run)
//! and any number of readers (`points`, `verify`, `restore`, `blob ls`), never both at the same
//! instant. Two `flock(2)` locks, so a killed process releases them with its last descriptor:
//!
//! - `owner.lock`: held exclusively by the writer for as long as it has the store open; a
//!   second writer is refused at once with the holder's PID and command, which the file holds.
//! - `state.lock`: held exclusively by the writer while the files may be mid-change, shared by
//!   each reader for as long as it reads. A writer between cycles (`replicate --watch` asleep)
//!   lets it go ([`WriterLock::pause`]) and takes it back before its next write, so readers
//!   see only whole operations of a writer that is alive, and the writer never sees a reader's
//!   half-read state because readers change nothing.
//!
//! A store without `state.lock` (a read-only copy of one made before locks, say) is read
//! without one: nobody can be writing it through us.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rustix::fs::{flock, FlockOperation};

use super::error::{StoreError, StoreResult};
use super::lock_holder::{this_process, Holder};

/// The writer's lock file; it holds a [`Holder`] as JSON.
pub const OWNER_FILE: &str = "owner.lock";
/// The lock readers share and a writer holds while it changes files.
pub const STATE_FILE: &str = "state.lock";

fn io_err(path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Try a lock without waiting: `Ok(false)` when someone else holds it.
fn try_flock(file: &File, op: FlockOperation, path: &Path) -> StoreResult<bool> {
    match flock(file, op) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(false),
        Err(e) => Err(io_err(path, e.into())),
    }
}

/// The writer as its lock file names it (a default when it cannot be read: it is mid-write).
fn read_holder(dir: &Path) -> Holder {
    std::fs::read(dir.join(OWNER_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Holder {
            pid: 0,
            command: "another drplane process".into(),
            serving: false,
        })
}

/// The one writer's hold on a store directory; released on drop (or when the process dies).
#[derive(Debug)]
pub struct WriterLock {
    dir: PathBuf,
    owner: File,
    state: File,
    /// Whether `state.lock` is held now.
    state_held: Mutex<bool>,
}

impl WriterLock {
    /// Become the store's writer, or fail at once naming the process that is.
    pub fn acquire(dir: &Path) -> StoreResult<WriterLock> {
        let owner_path = dir.join(OWNER_FILE);
        let owner = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&owner_path)
            .map_err(|e| io_err(&owner_path, e))?;
        if !try_flock(
            &owner,
            FlockOperation::NonBlockingLockExclusive,
            &owner_path,
        )? {
            return Err(StoreError::InUse {
                dir: dir.display().to_string(),
                holder: read_holder(dir),
            });
        }
        let state_path = dir.join(STATE_FILE);
        let state = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&state_path)
            .map_err(|e| io_err(&state_path, e))?;
        // Readers hold it only while they read; waiting for them is bounded.
        flock(&state, FlockOperation::LockExclusive).map_err(|e| io_err(&state_path, e.into()))?;
        let lock = WriterLock {
            dir: dir.to_path_buf(),
            owner,
            state,
            state_held: Mutex::new(true),
        };
        lock.describe(false)?;
        Ok(lock)
    }

    /// Record who holds the store; `serving`: until exit, so readers must not wait for it.
    pub fn describe(&self, serving: bool) -> StoreResult<()> {
        let path = self.dir.join(OWNER_FILE);
        let text = serde_json::to_vec(&this_process(serving)).expect("holder serializes");
        let mut file = &self.owner;
        file.set_len(0)
            .and_then(|()| std::io::Seek::rewind(&mut file).map(drop))
            .and_then(|()| file.write_all(&text))
            .map_err(|e| io_err(&path, e))
    }

    /// Nothing is mid-change and nothing will be until [`WriterLock::resume`]: let readers in.
    pub fn pause(&self) {
        let mut held = self.state_held.lock().unwrap_or_else(|p| p.into_inner());
        if *held && flock(&self.state, FlockOperation::Unlock).is_ok() {
            *held = false;
        }
    }

    /// Whether readers are kept out now (no [`WriterLock::resume`] owed since a pause). Never
    /// waits: `false` while another thread is in `pause` or `resume` (which may wait for
    /// readers to let go).
    pub fn is_held(&self) -> bool {
        match self.state_held.try_lock() {
            Ok(held) => *held,
            Err(std::sync::TryLockError::Poisoned(p)) => *p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => false,
        }
    }

    /// About to change files: wait for readers to finish, then keep them out.
    pub fn resume(&self) -> StoreResult<()> {
        let mut held = self.state_held.lock().unwrap_or_else(|p| p.into_inner());
        if !*held {
            flock(&self.state, FlockOperation::LockExclusive)
                .map_err(|e| io_err(&self.dir.join(STATE_FILE), e.into()))?;
            *held = true;
        }
        Ok(())
    }
}

/// A reader's shared hold on a store directory; released on drop.
#[derive(Debug)]
pub struct ReaderLock {
    _state: Option<File>,
}

impl ReaderLock {
    /// Share the store with other readers. A writer mid-change: wait for it when `wait` and it
    /// will let go (a `replicate` between or after cycles), else fail naming it.
    pub fn acquire(dir: &Path, wait: bool) -> StoreResult<ReaderLock> {
        let state_path = dir.join(STATE_FILE);
        let state = match File::open(&state_path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(ReaderLock { _state: None })
            }
            Err(e) => return Err(io_err(&state_path, e)),
        };
        if try_flock(&state, FlockOperation::NonBlockingLockShared, &state_path)? {
            return Ok(ReaderLock {
                _state: Some(state),
            });
        }
        let holder = read_holder(dir);
        if !wait || holder.serving {
            return Err(StoreError::InUse {
                dir: dir.display().to_string(),
                holder,
            });
        }
        flock(&state, FlockOperation::LockShared).map_err(|e| io_err(&state_path, e.into()))?;
        Ok(ReaderLock {
            _state: Some(state),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_writer_is_refused_naming_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let first = WriterLock::acquire(dir.path()).unwrap();
        match WriterLock::acquire(dir.path()) {
            Err(StoreError::InUse { holder, .. }) => {
                assert_eq!(holder.pid, std::process::id());
                assert!(!holder.serving);
            }
            other => panic!("expected InUse, got {other:?}"),
        }
        drop(first);
        WriterLock::acquire(dir.path()).unwrap();
    }

    #[test]
    fn readers_share_and_get_in_only_while_the_writer_pauses() {
        let dir = tempfile::tempdir().unwrap();
        let writer = WriterLock::acquire(dir.path()).unwrap();
        assert!(matches!(
            ReaderLock::acquire(dir.path(), false),
            Err(StoreError::InUse { .. })
        ));
        writer.pause();
        let a = ReaderLock::acquire(dir.path(), false).unwrap();
        let b = ReaderLock::acquire(dir.path(), false).unwrap();
        // The writer waits for both readers before it changes anything.
        let resumed = std::thread::scope(|s| {
            let t = s.spawn(|| {
                writer.resume().unwrap();
                std::time::Instant::now()
            });
            std::thread::sleep(std::time::Duration::from_millis(100));
            let released = std::time::Instant::now();
            drop((a, b));
            t.join().unwrap() >= released
        });
        assert!(resumed, "the writer resumed while readers held the store");
        assert!(ReaderLock::acquire(dir.path(), false).is_err());
    }

    #[test]
    fn readers_never_wait_for_a_server() {
        let dir = tempfile::tempdir().unwrap();
        let writer = WriterLock::acquire(dir.path()).unwrap();
        writer.describe(true).unwrap();
        match ReaderLock::acquire(dir.path(), true) {
            Err(StoreError::InUse { holder, .. }) => assert!(holder.serving),
            other => panic!("expected InUse, got {other:?}"),
        }
    }
}
