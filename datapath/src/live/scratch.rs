//! The files a `replicate --qemu` run keeps in its scratch directory: the replica's lock (one
//! run per replica and QEMU) and each cycle's fleecing file, where QEMU saves the old data of
//! every block the guest overwrites while the cycle reads the frozen view.
//!
//! The directory may be shared (`/tmp`, beside a QMP socket other tools use), so neither file
//! is opened through a link, and the fleecing file is created anew each cycle.
//!
//! QEMU's copy-before-write filter (what `blockdev-backup sync=none` inserts) fails the
//! *guest's* write when it cannot save the old data first. So the fleecing file is given the
//! disk's whole size on its file system before the disk is frozen (`fallocate`): no write of
//! the cycle can then run out of room, and a file system without the room refuses the cycle
//! before the guest is touched.

use std::path::Path;

use crate::source::SourceError;

/// Become the one run attached for replica `tag`, or fail at once naming the run that is: a
/// second run would clear the first one's fleecing view as a killed run's leftovers and move
/// its bitmaps. A `flock`, so a killed run lets go with its last descriptor. The file may be
/// removed by the run that holds it (a run that failed to attach, `drplane disable`), so a
/// lock taken on a file no longer at `path` is let go and taken again on the one there.
pub(super) fn lock_replica(path: &Path, tag: &str) -> Result<std::fs::File, SourceError> {
    for _ in 0..100 {
        let file = lock_once(path, tag)?;
        if still_at(&file, path) {
            return Ok(file);
        }
    }
    Err(SourceError::live(
        format!("lock file {}", path.display()),
        std::io::Error::other("replaced again and again while it was being taken"),
    ))
}

/// Whether `file` is the file at `path` now (not one removed or replaced since it was opened).
fn still_at(file: &std::fs::File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let held = file.metadata().map(|m| (m.dev(), m.ino())).ok();
    let there = std::fs::symlink_metadata(path)
        .map(|m| (m.dev(), m.ino()))
        .ok();
    held.is_some() && held == there
}

fn lock_once(path: &Path, tag: &str) -> Result<std::fs::File, SourceError> {
    use rustix::fs::{FlockOperation, Mode, OFlags};
    use std::io::{Seek, Write};
    let lock_error =
        |e: std::io::Error| SourceError::live(format!("lock file {}", path.display()), e);
    // Not through a link (the scratch directory may be shared: a link planted there must not
    // make this run truncate another file), and only a regular file.
    let fd = rustix::fs::open(
        path,
        OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map_err(|e| lock_error(e.into()))?;
    let mut file = std::fs::File::from(fd);
    if !file.metadata().map_err(lock_error)?.is_file() {
        return Err(lock_error(std::io::Error::other("not a regular file")));
    }
    match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => {
            return Err(SourceError::live(
                format!(
                    "another drplane run ({}) is replicating {tag} from this QEMU",
                    lock_holder(&file)
                ),
                std::io::Error::other(format!("{} is locked", path.display())),
            ));
        }
        Err(e) => return Err(lock_error(e.into())),
    }
    let written = file
        .set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| write!(file, "{}", std::process::id()));
    written.map_err(lock_error)?;
    Ok(file)
}

/// Who holds a replica's lock, as its file says: `PID n`, read from its first few bytes only
/// (the file is in a shared directory and may hold anything).
fn lock_holder(file: &std::fs::File) -> String {
    use std::io::Read;
    let mut head = Vec::new();
    // A PID has at most 20 digits; a longer file is not one.
    let _ = file.take(24).read_to_end(&mut head);
    match std::str::from_utf8(&head).ok().map(str::trim) {
        Some(pid) if (1..=20).contains(&pid.len()) && pid.bytes().all(|b| b.is_ascii_digit()) => {
            format!("PID {pid}")
        }
        _ => "its PID unknown".to_string(),
    }
}

/// Create the cycle's fleecing file at `path`, `size` bytes long (what a previous, killed run
/// left there is replaced; a link there is removed, never followed). With `reserve`, every byte
/// of it is allocated on its file system first (see the module docs); a file system that has
/// no room for the whole disk, or cannot reserve space, refuses here, naming what to do.
pub(super) fn create_fleecing_file(
    path: &Path,
    size: u64,
    reserve: bool,
) -> Result<(), SourceError> {
    use rustix::fs::{Mode, OFlags};
    let failed =
        |e: std::io::Error| SourceError::live(format!("fleecing file {}", path.display()), e);
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(failed(e)),
        _ => {}
    }
    // Exclusive: whatever appears in its place meanwhile is an error, not a file to write.
    let fd = rustix::fs::open(
        path,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o666),
    )
    .map_err(|e| failed(e.into()))?;
    let file = std::fs::File::from(fd);
    let sized = if reserve && size > 0 {
        rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, size)
            .map_err(|e| not_reserved(path, size, &file, e))
    } else {
        file.set_len(size).map_err(failed)
    };
    if sized.is_err() {
        let _ = std::fs::remove_file(path);
    }
    sized
}

/// Why the fleecing file could not be given the disk's size, and what to do.
fn not_reserved(path: &Path, size: u64, file: &std::fs::File, e: rustix::io::Errno) -> SourceError {
    use rustix::io::Errno;
    let dir = path.parent().unwrap_or(Path::new("."));
    let size_text = |bytes: u64| match bytes {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / f64::from(1u32 << 30)),
        b => format!("{:.1} MiB", b as f64 / f64::from(1u32 << 20)),
    };
    let what = match e {
        Errno::NOSPC | Errno::DQUOT => {
            let free = rustix::fs::fstatvfs(file)
                .map(|s| format!("{} free", size_text(s.f_bavail.saturating_mul(s.f_frsize))))
                .unwrap_or_else(|_| "not enough free".into());
            format!(
                "the scratch directory {} has {free}, and a cycle first reserves the disk's size \
                 ({}, {size} bytes) there: QEMU fails the guest's writes when it cannot save \
                 the old data they overwrite. Give --scratch-dir on a file system with room \
                 (or --no-scratch-reservation to take that risk)",
                dir.display(),
                size_text(size)
            )
        }
        Errno::OPNOTSUPP | Errno::NOSYS => format!(
            "the file system of the scratch directory {} cannot reserve space (fallocate), \
             which keeps a full scratch directory from failing the guest's writes. Give \
             --scratch-dir on one that can (ext4, XFS, btrfs, tmpfs), or \
             --no-scratch-reservation to take that risk",
            dir.display()
        ),
        _ => format!(
            "reserving {size} bytes for the fleecing file {}",
            path.display()
        ),
    };
    SourceError::live(what, std::io::Error::from(e))
}

#[cfg(test)]
mod lock_file_tests {
    use super::{lock_replica, still_at};

    #[test]
    fn a_second_run_is_refused_naming_the_first_and_a_hostile_lock_file_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("drplane-vm0.lock");
        let held = lock_replica(&path, "vm0").unwrap();
        let message = lock_replica(&path, "vm0").unwrap_err().to_string();
        let pid = std::process::id();
        assert!(
            message.contains(&format!(
                "another drplane run (PID {pid}) is replicating vm0"
            )),
            "{message}"
        );
        drop(held);
        // Let go with the descriptor: the next run attaches.
        let held = lock_replica(&path, "vm0").unwrap();
        // Whatever the held file holds, the refusal reads a few bytes of it and names no PID.
        std::fs::write(&path, vec![b'7'; 4 << 20]).unwrap();
        let message = lock_replica(&path, "vm0").unwrap_err().to_string();
        assert!(message.contains("(its PID unknown)"), "{message}");
        assert!(message.len() < 300, "{} bytes", message.len());
        std::fs::write(&path, "12\n\u{1b}[2J").unwrap();
        let message = lock_replica(&path, "vm0").unwrap_err().to_string();
        assert!(message.contains("(its PID unknown)"), "{message}");
        drop(held);
        // A link in its place (a shared scratch directory) is not followed: the file it points
        // to keeps its bytes.
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        let message = lock_replica(&path, "vm0").unwrap_err().to_string();
        assert!(message.contains("lock file"), "{message}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        // A directory there is refused too.
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        assert!(lock_replica(&path, "vm0").is_err());
    }

    #[test]
    fn a_lock_is_held_only_on_the_file_at_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("drplane-vm0.lock");
        let first = lock_replica(&path, "vm0").unwrap();
        assert!(still_at(&first, &path));
        // A run that opened the file before its holder removed it (a run that failed to
        // attach, `drplane disable`) and let go would lock a file no longer there, beside a
        // run that locks the new one: such a lock is not taken as held.
        let stale = std::fs::File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        drop(first);
        assert!(!still_at(&stale, &path), "removed");
        let second = lock_replica(&path, "vm0").unwrap();
        assert!(still_at(&second, &path));
        assert!(!still_at(&stale, &path), "replaced");
        assert!(
            lock_replica(&path, "vm0").is_err(),
            "a third run is refused"
        );
    }
}

#[cfg(test)]
mod fleecing_file_tests {
    use super::create_fleecing_file;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn the_fleecing_file_is_reserved_replaces_leftovers_and_never_follows_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("drplane-vm0.fleece");
        let size = 8 << 20;
        create_fleecing_file(&path, size, true).unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!(meta.len(), size);
        assert!(meta.blocks() * 512 >= size, "{} blocks", meta.blocks());
        // Unreserved: the size, but (on a file system with holes) no blocks.
        create_fleecing_file(&path, size, false).unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!(meta.len(), size);
        assert!(meta.blocks() * 512 < size, "{} blocks", meta.blocks());
        // A link planted in its place is replaced, and the file it named keeps its bytes.
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        create_fleecing_file(&path, size, true).unwrap();
        assert!(std::fs::symlink_metadata(&path).unwrap().is_file());
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        // A directory in its place is an error naming the file.
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        let message = create_fleecing_file(&path, size, true)
            .unwrap_err()
            .to_string();
        assert!(message.contains("fleecing file"), "{message}");
    }
}
