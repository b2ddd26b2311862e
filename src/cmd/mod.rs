//! One module per command group.

pub mod bench;
pub mod bench_compare;
pub mod blob;
pub mod disable;
pub mod machine;
pub mod output_file;
pub mod plan;
pub mod points;
pub mod proxy;
pub mod register;
pub mod replicate;
pub mod restore;
pub mod sim;
pub mod vhdx;

/// Container that holds replicas.
pub const REPLICA_CONTAINER: &str = "replicas";

/// `--threads N`: the size of the pool a command decodes (or encodes) blocks in.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct Threads {
    /// Threads that fetch, authenticate, decompress and hash blocks; default: one per core.
    #[arg(long = "threads", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub threads: Option<u16>,
}

impl Threads {
    /// Run `work` in a pool of this many threads (the calling thread waits, so the work gets
    /// exactly that many), or in rayon's global pool (one per core) when none was asked for.
    pub fn run<T: Send>(self, work: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
        use anyhow::Context;
        match self.threads {
            None => Ok(work()),
            Some(n) => Ok(rayon::ThreadPoolBuilder::new()
                .num_threads(usize::from(n))
                .build()
                .context("the thread pool")?
                .install(work)),
        }
    }
}

/// The most a policy, scenario, workload, credentials or .pfx file given on the command line
/// may hold (the largest real one is a few KiB).
pub const MAX_INPUT_FILE_BYTES: u64 = 4 << 20;

/// A file given on the command line, read whole up to `max` bytes: a bigger one (a wrong
/// path, `/dev/zero`) is refused naming it instead of read until memory runs out.
pub fn read_input_file(path: &std::path::Path, max: u64) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path)
        .map_err(|e| anyhow::Error::new(e).context(path.display().to_string()))?;
    let mut bytes = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| anyhow::Error::new(e).context(path.display().to_string()))?;
    if bytes.len() as u64 > max {
        anyhow::bail!(
            "{}: more than {} MiB; not the file this asks for",
            path.display(),
            max >> 20
        );
    }
    Ok(bytes)
}

/// [`read_input_file`] of UTF-8 text.
pub fn read_input_text(path: &std::path::Path, max: u64) -> anyhow::Result<String> {
    String::from_utf8(read_input_file(path, max)?)
        .map_err(|_| anyhow::anyhow!("{}: not UTF-8 text", path.display()))
}

/// The longest secret a password file may hold on its first line.
const MAX_SECRET_BYTES: u64 = 4096;

/// The first line of a password file (`--password-file`, `--proxy-password-file`), read
/// without reading the rest: a file, or a pipe such as `<(pass show vault)`. A first line past
/// 4 KiB (a wrong file, `/dev/zero`) is refused naming the file, never read whole.
pub fn secret_from_file(path: &std::path::Path, what: &str) -> anyhow::Result<String> {
    secret_from_file_within(path, what, PIPE_WRITER_WAIT_SECS)
}

/// How long a password file that is a pipe may keep its reader waiting for its first bytes.
const PIPE_WRITER_WAIT_SECS: i64 = 300;

/// [`secret_from_file`], waiting at most `wait_secs` for a pipe's writer.
fn secret_from_file_within(
    path: &std::path::Path,
    what: &str,
    wait_secs: i64,
) -> anyhow::Result<String> {
    use anyhow::Context;
    use std::io::{BufRead, Read};
    let file =
        open_secret_file(path, wait_secs).with_context(|| format!("{what} {}", path.display()))?;
    let mut line = Vec::new();
    std::io::BufReader::new(file.take(MAX_SECRET_BYTES + 1))
        .read_until(b'\n', &mut line)
        .with_context(|| format!("{what} {}", path.display()))?;
    let line = line.strip_suffix(b"\n").unwrap_or(&line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.len() as u64 > MAX_SECRET_BYTES {
        anyhow::bail!(
            "{what} {}: its first line is longer than {MAX_SECRET_BYTES} bytes; it should hold \
             the password alone",
            path.display()
        );
    }
    String::from_utf8(line.to_vec())
        .map_err(|_| anyhow::anyhow!("{what} {}: the password is not UTF-8", path.display()))
}

/// Open a password file. A pipe (a named one, or `<(pass show vault)`) is opened without
/// waiting for a writer, then its first bytes are waited for at most `wait_secs`: a named pipe
/// nobody writes to is an error after that, not a run that never ends.
fn open_secret_file(path: &std::path::Path, wait_secs: i64) -> anyhow::Result<std::fs::File> {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    use rustix::fs::OFlags;
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let is_pipe = std::fs::metadata(path).is_ok_and(|m| m.file_type().is_fifo());
    if !is_pipe {
        return Ok(std::fs::File::open(path)?);
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(OFlags::NONBLOCK.bits() as i32)
        .open(path)?;
    let mut ready = [PollFd::new(&file, PollFlags::IN)];
    let timeout = Timespec {
        tv_sec: wait_secs,
        tv_nsec: 0,
    };
    // Until a writer comes, Linux reports nothing on a pipe opened this way (not a hang-up).
    let waited = loop {
        match poll(&mut ready, Some(&timeout)) {
            Err(rustix::io::Errno::INTR) => continue,
            other => break other,
        }
    };
    if waited.map_err(std::io::Error::from)? == 0 {
        anyhow::bail!("a pipe nobody wrote to within {wait_secs} s");
    }
    rustix::fs::fcntl_setfl(&file, OFlags::empty()).map_err(std::io::Error::from)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::{read_input_text, secret_from_file, secret_from_file_within};

    #[test]
    fn an_input_file_is_read_up_to_its_limit_and_no_further() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        std::fs::write(&path, "copy_frequency_secs = 300\n").unwrap();
        assert_eq!(
            read_input_text(&path, 1 << 20).unwrap(),
            "copy_frequency_secs = 300\n"
        );
        std::fs::write(&path, vec![b'#'; (1 << 20) + 1]).unwrap();
        let big = read_input_text(&path, 1 << 20).unwrap_err().to_string();
        assert!(big.contains("more than 1 MiB"), "{big}");
        let zero = read_input_text(std::path::Path::new("/dev/zero"), 1 << 20)
            .unwrap_err()
            .to_string();
        assert!(zero.contains("/dev/zero: more than 1 MiB"), "{zero}");
        std::fs::write(&path, [0xff, 0xfe]).unwrap();
        assert!(read_input_text(&path, 1 << 20)
            .unwrap_err()
            .to_string()
            .contains("not UTF-8"));
    }

    #[test]
    fn a_password_file_gives_its_first_line_and_never_more_than_4_kib() {
        let dir = tempfile::tempdir().unwrap();
        let at = |name: &str, bytes: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            path
        };
        let read = |path: &std::path::Path| secret_from_file(path, "password file");
        assert_eq!(read(&at("a", b"s3cret\nignored\n")).unwrap(), "s3cret");
        assert_eq!(read(&at("b", b"s3cret\r\n")).unwrap(), "s3cret");
        assert_eq!(read(&at("c", b"no newline")).unwrap(), "no newline");
        assert_eq!(read(&at("d", b"")).unwrap(), "");
        assert_eq!(read(&at("e", &[b'x'; 4096])).unwrap().len(), 4096);
        let long = read(&at("f", &[b'x'; 5000])).unwrap_err().to_string();
        assert!(long.contains("longer than 4096 bytes"), "{long}");
        // A device that never ends: refused after 4 KiB, not read to exhaustion.
        let zero = read(std::path::Path::new("/dev/zero"))
            .unwrap_err()
            .to_string();
        assert!(
            zero.contains("/dev/zero: its first line is longer"),
            "{zero}"
        );
        let bad = read(&at("g", &[0xff, 0xfe, b'\n']))
            .unwrap_err()
            .to_string();
        assert!(bad.contains("not UTF-8"), "{bad}");
        // A named pipe: its writer's line, or an error when none comes (it waited forever).
        let pipe = dir.path().join("pipe");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &pipe,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let idle = format!(
            "{:#}",
            secret_from_file_within(&pipe, "password file", 1).unwrap_err()
        );
        assert!(idle.contains("a pipe nobody wrote to within 1 s"), "{idle}");
        let writer = {
            let pipe = pipe.clone();
            std::thread::spawn(move || std::fs::write(pipe, b"piped\n").unwrap())
        };
        assert_eq!(
            secret_from_file_within(&pipe, "password file", 10).unwrap(),
            "piped"
        );
        writer.join().unwrap();
        let missing = read(&dir.path().join("missing")).unwrap_err();
        assert!(
            format!("{missing:#}").contains("password file"),
            "{missing:#}"
        );
    }
}
