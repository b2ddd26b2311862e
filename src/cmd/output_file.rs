//! A file a command writes whole (`restore`, `vhdx export`, `vhdx import`): written beside
//! its target as `.NAME.XXXXXX.partial` (locked while the command runs) and renamed into place
//! only when it is complete, so a failed or killed run never leaves a half-written disk under
//! the name asked for, and never replaces an existing file without `--force`. Also what tells
//! two outputs apart ([`OutputIdentity`]) and where no output may go (inside a store
//! directory).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The suffix of an output while it is written.
const PARTIAL: &str = ".partial";

/// Remove what runs of the same target that were killed left (`PREFIX*.partial` beside it,
/// other than `ours`): a file no live run holds locked. One a live run holds (two runs to one
/// target at once) stays; so does anything that cannot be opened.
fn remove_stopped_runs(dir: &Path, prefix: &str, ours: &Path, command: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let path = entry.path();
        if !name.starts_with(prefix) || !name.ends_with(PARTIAL) || path == ours {
            continue;
        }
        if !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let Ok(file) = std::fs::File::open(&path) else {
            continue;
        };
        let unlocked =
            rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_ok();
        if unlocked && std::fs::remove_file(&path).is_ok() {
            eprintln!(
                "removed {}: a {command} that was stopped left it",
                path.display()
            );
        }
    }
}

/// The folder a target path is in (`.` for a bare name).
pub fn folder_of(target: &Path) -> &Path {
    match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// An output while it is written: a temporary file beside the target, published by a rename
/// once it is complete, and removed if anything fails first (see the module docs).
pub struct OutputFile {
    temp: tempfile::NamedTempFile,
    force: bool,
}

impl OutputFile {
    /// Start writing `target` for `command` (named in messages): refused when it exists and
    /// `force` is not given, when it exists and is not a regular file, and inside a store
    /// directory.
    pub fn prepare(target: &Path, force: bool, command: &str) -> Result<OutputFile> {
        use std::os::unix::fs::PermissionsExt;
        refuse_inside_a_store(target)?;
        // A new file gets the permissions any new file gets (0666 less the umask), a replaced
        // one keeps its own: a disk restored for a VM that runs as another user stays readable
        // as the user expects (a temporary file's 0600 was kept until session 26).
        let replaced = match std::fs::symlink_metadata(target) {
            Ok(m) if !m.file_type().is_file() => bail!(
                "{}: exists and is not a regular file; {command} writes a new file",
                target.display()
            ),
            Ok(_) if !force => bail!("{} exists: give --force to replace it", target.display()),
            Ok(m) => Some(m.permissions()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(anyhow::Error::new(e).context(target.display().to_string())),
        };
        let dir = folder_of(target);
        let name = target
            .file_name()
            .with_context(|| format!("{}: not a file name", target.display()))?;
        let prefix = format!(".{}.", name.to_string_lossy());
        let temp = tempfile::Builder::new()
            .prefix(&prefix)
            .suffix(PARTIAL)
            .permissions(std::fs::Permissions::from_mode(0o666))
            .tempfile_in(dir)
            .with_context(|| format!("creating a file in {}", dir.display()))?;
        if let Some(permissions) = replaced {
            temp.as_file()
                .set_permissions(permissions)
                .with_context(|| temp.path().display().to_string())?;
        }
        // Locked while this run lives, so a later one tells its file from a killed one's.
        rustix::fs::flock(
            temp.as_file(),
            rustix::fs::FlockOperation::NonBlockingLockExclusive,
        )
        .map_err(std::io::Error::from)
        .with_context(|| temp.path().display().to_string())?;
        remove_stopped_runs(dir, &prefix, temp.path(), command);
        Ok(OutputFile { temp, force })
    }

    /// The file being written.
    pub fn file(&self) -> &std::fs::File {
        self.temp.as_file()
    }

    /// Its path while it is written.
    pub fn path(&self) -> &Path {
        self.temp.path()
    }

    /// Put the complete output in place; `durable`: synced first, and the folder's new name
    /// after (else, like `cp` and `qemu-img convert`, left to the page cache).
    pub fn publish(self, target: &Path, durable: bool) -> Result<()> {
        if durable {
            self.temp
                .as_file()
                .sync_all()
                .with_context(|| self.temp.path().display().to_string())?;
        }
        let persisted = if self.force {
            self.temp.persist(target)
        } else {
            self.temp.persist_noclobber(target)
        };
        persisted
            .map_err(|e| anyhow::Error::new(e.error).context(format!("{}", target.display())))?;
        if durable {
            let dir = folder_of(target);
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .with_context(|| dir.display().to_string())?;
        }
        Ok(())
    }
}

/// Open block device `path` to overwrite it, exclusively: one that is mounted or held open
/// exclusively (by another program, or by this one for another output) is refused.
pub fn open_device_exclusively(path: &Path) -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(rustix::fs::OFlags::EXCL.bits() as i32)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(code) if code == rustix::io::Errno::BUSY.raw_os_error() => anyhow::anyhow!(
                "{}: in use (mounted, or held open exclusively): not overwritten",
                path.display()
            ),
            _ => anyhow::Error::new(e).context(format!("opening {} to write", path.display())),
        })
}

/// What an output names, to tell two outputs apart: a block device by its device number (any
/// node or link to it), a file by its path with every link resolved (`o.raw` and
/// `link-to-here/o.raw` are one file; one not there yet by its folder's resolved path).
#[derive(Debug, PartialEq, Eq)]
pub enum OutputIdentity {
    Device(u64),
    File(PathBuf),
}

impl OutputIdentity {
    pub fn of(path: &Path) -> OutputIdentity {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.file_type().is_block_device() {
                return OutputIdentity::Device(meta.rdev());
            }
        }
        if let Ok(resolved) = std::fs::canonicalize(path) {
            return OutputIdentity::File(resolved);
        }
        match (std::fs::canonicalize(folder_of(path)), path.file_name()) {
            (Ok(folder), Some(name)) => OutputIdentity::File(folder.join(name)),
            _ => OutputIdentity::File(path.to_path_buf()),
        }
    }
}

/// A file output inside a store directory is refused: put in place there, it could replace
/// one of the store's own files (and the committed points they hold).
pub fn refuse_inside_a_store(target: &Path) -> Result<()> {
    if let OutputIdentity::File(resolved) = OutputIdentity::of(target) {
        if let Some(store) = pageblob::location::store_directory_above(&resolved) {
            bail!(
                "{}: that is inside the store directory {}; a file put there could replace \
                 the store's own files (write it outside)",
                target.display(),
                store.display()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{OutputFile, OutputIdentity};

    #[test]
    fn one_file_by_different_paths_is_one_output() {
        let dir = tempfile::tempdir().unwrap();
        let here = dir.path().canonicalize().unwrap();
        std::os::unix::fs::symlink(&here, here.join("link")).unwrap();
        std::fs::write(here.join("there.raw"), b"x").unwrap();
        // Not there yet, and there already, through a link to the folder; `./`.
        for (a, b) in [
            (here.join("new.raw"), here.join("link/new.raw")),
            (here.join("there.raw"), here.join("link/there.raw")),
            (here.join("there.raw"), here.join("link/./there.raw")),
        ] {
            assert_eq!(
                OutputIdentity::of(&a),
                OutputIdentity::of(&b),
                "{a:?} {b:?}"
            );
        }
        assert_ne!(
            OutputIdentity::of(&here.join("a.raw")),
            OutputIdentity::of(&here.join("link/b.raw"))
        );
    }

    #[test]
    fn an_output_is_in_place_only_once_published_and_never_inside_a_store() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.raw");
        let out = OutputFile::prepare(&target, false, "export").unwrap();
        std::io::Write::write_all(&mut out.file(), b"disk").unwrap();
        assert!(!target.exists(), "in place before it is complete");
        let partial = out.path().to_path_buf();
        drop(out);
        assert!(!partial.exists(), "a failed run's file stays");
        let out = OutputFile::prepare(&target, false, "export").unwrap();
        std::io::Write::write_all(&mut out.file(), b"disk").unwrap();
        out.publish(&target, true).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"disk");
        let again = OutputFile::prepare(&target, false, "export")
            .err()
            .unwrap()
            .to_string();
        assert!(again.contains("give --force"), "{again}");
        let store = dir.path().join("store");
        std::fs::create_dir_all(store.join("homes")).unwrap();
        std::fs::write(store.join("store.json"), b"{}").unwrap();
        for inside in ["homes/x.raw", "store.json", "new.raw"] {
            let e = OutputFile::prepare(&store.join(inside), true, "restore")
                .err()
                .unwrap()
                .to_string();
            assert!(e.contains("inside the store directory"), "{e}");
        }
    }
}
