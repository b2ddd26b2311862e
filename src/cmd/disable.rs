//! `drplane disable`: stop replicating a live disk (ASR's "disable replication"). The change
//! tracking `replicate --qemu` leaves in QEMU between cycles — its dirty bitmaps, which cost the
//! guest's writes and, with `--persistent-bitmap`, stay in the image — is removed, with
//! whatever a killed run left (fleecing view, job, export, the NBD server it started) and its
//! scratch files. The replica and its points stay in the store, restorable as before;
//! replicating again starts with a resync.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;
use datapath::live::QemuSource;

use super::replicate::qemu_options;

#[derive(Debug, Args)]
pub struct DisableArgs {
    /// QMP socket of the QEMU or qemu-storage-daemon the disk is replicated from.
    #[arg(long)]
    qemu: PathBuf,
    /// The disk's block node, as `replicate` was given it; again for each other disk.
    #[arg(long, required = true)]
    node: Vec<String>,
    /// The disk's replica name, as `replicate` was given it (one per --node, in order).
    #[arg(long, required = true)]
    name: Vec<String>,
    /// The scratch directory `replicate` was given (default: beside the QMP socket).
    #[arg(long)]
    scratch_dir: Option<PathBuf>,
}

pub fn disable(args: DisableArgs) -> Result<ExitCode> {
    if args.node.len() != args.name.len() {
        bail!(
            "give one --name per --node, in the same order ({} nodes, {} names)",
            args.node.len(),
            args.name.len()
        );
    }
    // Every disk is attached first — which takes its lock (a run replicating it is refused,
    // named) and clears what a killed run left — so a disk that cannot be reached (a mistyped
    // node) leaves every disk's tracking as it was.
    let mut attached = Vec::new();
    for (node, name) in args.node.iter().zip(&args.name) {
        let options = qemu_options(&args.qemu, node, name, None, args.scratch_dir.as_deref());
        let (source, _) = QemuSource::attach(options)
            .with_context(|| format!("QEMU at {} (node {node})", args.qemu.display()))?;
        attached.push(source);
    }
    for ((node, name), source) in args.node.iter().zip(&args.name).zip(attached) {
        let removed = source
            .disable()
            .with_context(|| format!("QEMU at {} (node {node})", args.qemu.display()))?;
        let tracking = match removed.len() {
            0 => "no change tracking was left".to_string(),
            _ => format!("change tracking removed ({})", removed.join(", ")),
        };
        println!(
            "{name}: replication from node {node} disabled: {tracking}; the replica's points stay \
             in the store (replicating again starts with a resync)"
        );
    }
    Ok(ExitCode::SUCCESS)
}
