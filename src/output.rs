//! What the commands print, without panicking when the reader has gone away: std's `println!`
//! panics on a broken pipe (`drplane points | head -3` ended in a panic and a backtrace). The
//! crate's `println!`, `print!` and `eprintln!` (defined in `main.rs`, in scope everywhere
//! below it) write through here instead.

use std::io::Write;

/// Exit status when stdout's reader went away, as a shell's tools end when a pipe closes:
/// 128 + SIGPIPE. The command stops there (its output cannot be seen, so neither can its
/// outcome); whatever it committed stays committed, as after any kill.
pub const BROKEN_PIPE_STATUS: i32 = 141;

/// Write to stdout; a closed stdout ends the process quietly with [`BROKEN_PIPE_STATUS`].
pub fn stdout(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    match out.write_fmt(args).and_then(|()| out.flush()) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            std::process::exit(BROKEN_PIPE_STATUS)
        }
        // Any other failure to print (a full disk under a redirection) is not a reason to
        // stop a command that may be mid-way through a cycle: the output is lost, as on a
        // terminal that went away.
        Err(_) => {}
    }
}

/// Write to stderr; a failure to is ignored (messages there are for a person who may be gone).
pub fn stderr(args: std::fmt::Arguments<'_>) {
    let _ = std::io::stderr().lock().write_fmt(args);
}
