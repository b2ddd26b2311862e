//! `drplane` command line: argument parsing and output only; the logic lives in the crates.

/// `println!` that does not panic on a closed stdout ([`output`]).
macro_rules! println {
    () => {
        $crate::output::stdout(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::output::stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` that does not panic on a closed stdout ([`output`]).
macro_rules! print {
    ($($arg:tt)*) => {
        $crate::output::stdout(format_args!($($arg)*))
    };
}

/// `eprintln!` that does not panic on a closed stderr ([`output`]).
macro_rules! eprintln {
    () => {
        $crate::output::stderr(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::output::stderr(format_args!("{}\n", format_args!($($arg)*)))
    };
}

mod cmd;
mod output;
mod progress;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc keeps freed block buffers in per-thread heaps: the pipeline allocates and frees a
/// block-sized buffer per block on several threads, which glibc's allocator answers with fresh,
/// page-faulting memory.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Block-level disaster-recovery data plane and deterministic DR simulator.
#[derive(Debug, Parser)]
#[command(name = "drplane", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Inspect, check and export VHDX virtual disks.
    #[command(subcommand)]
    Vhdx(cmd::vhdx::VhdxCommand),
    /// The deterministic DR simulator.
    #[command(subcommand)]
    Sim(cmd::sim::SimCommand),
    /// Create vault credentials (valid 5 days) and the data-encryption certificate (.pfx).
    Register(cmd::register::RegisterArgs),
    /// Replicate a disk (a file at rest, or a live disk in QEMU) into a store as the next
    /// recovery point.
    Replicate(Box<cmd::replicate::ReplicateArgs>),
    /// Stop replicating a live disk from QEMU: remove drplane's change tracking (dirty
    /// bitmaps) and leftovers from it; the replica's points stay in the store.
    Disable(cmd::disable::DisableArgs),
    /// List the recovery points of a replica.
    Points(cmd::points::PointsArgs),
    /// Restore a recovery point byte-exact to a raw or VHDX file, or a block device.
    Restore(cmd::restore::RestoreArgs),
    /// Check every recovery point of a replica decrypts and matches its Merkle root.
    Verify(cmd::points::VerifyArgs),
    /// Capacity planner: bandwidth, RPO, storage and limits for a workload (`--verify`
    /// simulates it).
    Plan(cmd::plan::PlanArgs),
    /// Page-blob store: serve it over the Azure Blob REST API.
    #[command(subcommand)]
    Blob(cmd::blob::BlobCommand),
    /// Measure the data path on a disk: each stage, the initial replication, delta cycles
    /// at chosen churn, and a byte-exact restore of the last point.
    Bench(cmd::bench::BenchArgs),
}

/// `drplane replicate`: one disk, or several disks of one QEMU frozen together (their points
/// are one instant).
fn replicate(args: cmd::replicate::ReplicateArgs) -> anyhow::Result<ExitCode> {
    cmd::replicate::size_replication_pool(args.live.is_live())?;
    match args.live.node.len() > 1 {
        true => cmd::machine::replicate_machine(args),
        false => cmd::replicate::replicate(args),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Vhdx(c) => cmd::vhdx::run(c),
        Command::Sim(c) => cmd::sim::run(c),
        Command::Blob(c) => cmd::blob::run(c),
        Command::Register(a) => cmd::register::run(a),
        Command::Replicate(a) => replicate(*a),
        Command::Disable(a) => cmd::disable::disable(a),
        Command::Points(a) => cmd::points::points(a),
        Command::Restore(a) => cmd::restore::restore(a),
        Command::Verify(a) => cmd::points::verify(a),
        Command::Plan(a) => cmd::plan::run(a),
        Command::Bench(a) => cmd::bench::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("drplane: error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, without repeating a cause its parent already says.
fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every subcommand, argument and option says what it is in `--help`.
    #[test]
    fn every_command_and_argument_has_help() {
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if id != "help" && id != "version" && arg.get_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in command.get_subcommands() {
                let sub_path = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() {
                    missing.push(sub_path.clone());
                }
                walk(sub, &sub_path, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&super::Cli::command(), "drplane", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:#?}");
    }
}
