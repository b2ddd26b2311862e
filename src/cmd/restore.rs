//! `drplane restore`: a recovery point written out byte-exact — a sparse raw file, a dynamic
//! VHDX, or a block device — only once every block and the Merkle root are proven. With
//! several `--name`s, a machine's disks at one instant, every disk proven before any output
//! appears.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;
use datapath::replica::block_record::BlockCodec;
use datapath::replica::disk_replica::DiskReplica;
use datapath::replica::manifest::Manifest;
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

use super::blob::Target;
use super::output_file::{
    open_device_exclusively, refuse_inside_a_store, OutputFile, OutputIdentity,
};
use super::points::{choose_machine_point, choose_point, ReadPoints};
use super::replicate::Keys;

#[derive(Debug, Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    keys: Keys,
    /// Replica name (as given to `replicate`). Several (with an -o each, in the same order):
    /// the disks of one machine replicated together, restored at one instant, the newest
    /// point (or the one --point names) that every one of them has.
    #[arg(long, required = true)]
    name: Vec<String>,
    /// Point sequence number (with several --name: the first one's), `latest`, or
    /// `latest-app` (newest app-consistent point).
    #[arg(long, default_value = "latest")]
    point: String,
    /// Output file: sparse raw, or a dynamic VHDX when the name ends in `.vhdx`. Written
    /// beside it and renamed into place only once the point is proven byte-exact (with several
    /// --name: once every disk's is). A block device (with --force) gets the point written
    /// whole once it is proven.
    #[arg(short, long, required = true)]
    output: Vec<PathBuf>,
    /// Replace an existing output file, or overwrite a block device.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    threads: super::Threads,
}

/// Whether `path` is (or links to) a block device.
fn is_block_device(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device())
}

/// A block device a point goes onto (a replacement disk, a LUN): it is overwritten, so
/// `--force` is required; it is opened exclusively, so a device that is mounted or held open
/// exclusively is refused; it must hold the point's disk. The point is proven first (every
/// block and the Merkle root, nothing written: [`DeviceOutput::prove`]), so a damaged point
/// never replaces what the device holds; then it is written whole ([`DeviceOutput::write`]) —
/// zero blocks as zeros, a device is not sparse — and synced. Bytes past the disk's size are
/// left as they are.
struct DeviceOutput {
    file: std::fs::File,
    size: u64,
    device: String,
}

impl DeviceOutput {
    fn open(args: &RestoreArgs, output: &Path, manifest: &Manifest) -> Result<DeviceOutput> {
        use std::io::{Seek, SeekFrom};
        let device = output.display().to_string();
        if !args.force {
            bail!(
                "{device} is a block device: give --force to overwrite it with point {}",
                manifest.sequence
            );
        }
        let mut file = open_device_exclusively(output)?;
        let size = file
            .seek(SeekFrom::End(0))
            .with_context(|| format!("{device}: its size"))?;
        if size < manifest.disk_size {
            bail!(
                "{device} holds {size} bytes, the point's disk {} bytes: not overwritten",
                manifest.disk_size
            );
        }
        Ok(DeviceOutput { file, size, device })
    }

    /// Every block and the Merkle root of the point proven; nothing written.
    fn prove(
        &self,
        args: &RestoreArgs,
        replica: &DiskReplica<'_>,
        codec: &BlockCodec,
        manifest: &Manifest,
        digest_key: &[u8; 32],
    ) -> Result<()> {
        args.threads.run(|| {
            replica
                .restore_blocks(codec, manifest, digest_key, |_, _| Ok(()))
                .with_context(|| {
                    format!(
                        "proving point {} before writing {} (nothing was written)",
                        manifest.sequence, self.device
                    )
                })
        })?
    }

    /// The proven point written whole, and synced.
    fn write(
        &self,
        args: &RestoreArgs,
        replica: &DiskReplica<'_>,
        codec: &BlockCodec,
        manifest: &Manifest,
        digest_key: &[u8; 32],
    ) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let device = &self.device;
        let block_size = u64::from(manifest.block_size);
        args.threads.run(|| -> Result<()> {
            replica
                .restore(codec, manifest, digest_key, |block, data| {
                    self.file.write_all_at(data, block * block_size)
                })
                .with_context(|| {
                    format!(
                        "writing point {} to {device}: it holds part of the point now; restore \
                         again",
                        manifest.sequence
                    )
                })?;
            self.file
                .sync_all()
                .with_context(|| format!("syncing {device}"))
        })??;
        eprintln!(
            "restored point {} ({}) onto block device {device} ({} of its {} bytes)",
            manifest.sequence, manifest.snapshot, manifest.disk_size, self.size
        );
        Ok(())
    }
}

/// Each disk restored once, each to its own output: two `-o`s naming one file or device (by
/// any path) would leave only the last disk there, the others' restores reported done.
fn each_once(names: &[String], outputs: &[PathBuf]) -> Result<()> {
    let identities: Vec<OutputIdentity> = outputs.iter().map(|o| OutputIdentity::of(o)).collect();
    for (i, output) in outputs.iter().enumerate() {
        if let Some(j) = identities[..i].iter().position(|o| *o == identities[i]) {
            bail!(
                "--name {} -o {}: the same output as --name {} -o {}; each disk needs its own",
                names[i],
                output.display(),
                names[j],
                outputs[j].display()
            );
        }
        if names[..i].contains(&names[i]) {
            bail!("--name {} is given twice: each disk once", names[i]);
        }
    }
    Ok(())
}

pub fn restore(args: RestoreArgs) -> Result<ExitCode> {
    let identity = args.keys.load()?;
    let store = args.target.open_reader()?;
    if args.name.len() != args.output.len() {
        bail!(
            "give one -o per --name, in the same order ({} names, {} outputs)",
            args.name.len(),
            args.output.len()
        );
    }
    each_once(&args.name, &args.output)?;
    for output in &args.output {
        refuse_inside_a_store(output)?;
    }
    let reads = args
        .name
        .iter()
        .map(|name| ReadPoints::open(&*store, &identity, name))
        .collect::<Result<Vec<_>>>()?;
    let manifests = match reads.as_slice() {
        [read] => vec![choose_point(&read.points, &args.point)?],
        _ => choose_machine_point(&reads, &args.point)?,
    };
    // Each disk's point held against retention until it is written out (an endpoint that a
    // replication writes meanwhile would delete an old one under a long restore).
    let held: Vec<(&ReadPoints<'_>, &Manifest)> = reads.iter().zip(&manifests).collect();
    with_holds(
        &held,
        Box::new(|| {
            // Every disk is proven before any output appears or any device is written.
            let mut proven = Vec::new();
            for ((read, manifest), output) in reads.iter().zip(&manifests).zip(&args.output) {
                let written = restore_proven(&args, read, manifest, output).map_err(|e| {
                    explain_deleted(
                        read,
                        manifest,
                        e,
                        &format!("nothing was written to {}", output.display()),
                    )
                })?;
                proven.push(written);
            }
            for (((written, read), manifest), output) in proven
                .into_iter()
                .zip(&reads)
                .zip(&manifests)
                .zip(&args.output)
            {
                match written {
                    Proven::File(file) => {
                        file.publish(output, true)?;
                        eprintln!(
                            "restored point {} ({}) to {}",
                            manifest.sequence,
                            manifest.snapshot,
                            output.display()
                        );
                    }
                    Proven::Device(pending) => {
                        let PendingDevice {
                            device,
                            replica,
                            codec,
                        } = *pending;
                        device
                            .write(&args, &replica, &codec, manifest, read.keys.digest.expose())
                            .map_err(|e| {
                                explain_deleted(
                                    read,
                                    manifest,
                                    e,
                                    &format!("{} holds part of it now", output.display()),
                                )
                            })?;
                    }
                }
            }
            Ok(())
        }),
    )?;
    Ok(ExitCode::SUCCESS)
}

/// `e`, the failure to restore `manifest` of `read`, said plainly when it is the point's
/// deletion since it was chosen (by the retention of a replication running meanwhile): a
/// restore again would fail the same way. `left`: what the output holds now.
pub(super) fn explain_deleted(
    read: &ReadPoints<'_>,
    manifest: &Manifest,
    e: anyhow::Error,
    left: &str,
) -> anyhow::Error {
    if !read.deleted_since_listed(manifest) {
        return e;
    }
    e.context(format!(
        "point {} of {} was deleted while it was being restored (the retention of a replication \
         running meanwhile); {left}: restore a newer point (`drplane points` lists them)",
        manifest.sequence, read.name
    ))
}

/// Run `work` with each of `points` held against retention (`ReadPoints::while_held`).
fn with_holds<'w>(
    points: &[(&ReadPoints<'_>, &Manifest)],
    work: Box<dyn FnOnce() -> Result<()> + Send + 'w>,
) -> Result<()> {
    match points.split_first() {
        None => work(),
        Some(((read, manifest), rest)) => read.while_held(manifest, move || with_holds(rest, work)),
    }
}

/// A disk's point proven, ready to appear.
enum Proven<'a> {
    /// Written to a partial file beside the output, to be published.
    File(OutputFile),
    /// A block device, opened and checked, to be written.
    Device(Box<PendingDevice<'a>>),
}

/// A block device whose point is proven, and what writes it.
struct PendingDevice<'a> {
    device: DeviceOutput,
    replica: DiskReplica<'a>,
    codec: BlockCodec,
}

/// Restore `manifest` of `read` into a partial file beside `output`, every block and the
/// Merkle root proven; it is published by the caller. A block device is proven only (nothing
/// written yet).
fn restore_proven<'a>(
    args: &RestoreArgs,
    read: &ReadPoints<'a>,
    manifest: &Manifest,
    target: &Path,
) -> Result<Proven<'a>> {
    let keys = &read.keys;
    let replica = read.replica(manifest)?;
    let codec = BlockCodec::new(keys, 1, true);
    if is_block_device(target) {
        let device = DeviceOutput::open(args, target, manifest)?;
        device.prove(args, &replica, &codec, manifest, keys.digest.expose())?;
        return Ok(Proven::Device(Box::new(PendingDevice {
            device,
            replica,
            codec,
        })));
    }
    let output = OutputFile::prepare(target, args.force, "restore")?;
    let as_vhdx = target
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("vhdx"));
    let write_error = |e| -> anyhow::Error {
        anyhow::Error::new(e).context(format!(
            "restoring to {} (nothing was written there)",
            target.display()
        ))
    };
    // Only non-zero blocks are written: zeros stay holes (raw) or unallocated blocks (VHDX).
    let block_size = u64::from(manifest.block_size);
    let restore_into = |write: &mut dyn FnMut(u64, &[u8]) -> std::io::Result<()>| {
        replica
            .restore_blocks(
                &codec,
                manifest,
                keys.digest.expose(),
                |block, data| match data {
                    Some(data) if !pageblob::is_zero(data) => write(block * block_size, data),
                    _ => Ok(()),
                },
            )
            .map_err(write_error)
    };
    // Blocks are decoded by the pool; the output is written in block order.
    args.threads.run(|| -> Result<()> {
        if as_vhdx {
            let options = vhdx::CreateOptions::dynamic(manifest.disk_size.next_multiple_of(512));
            let file = vhdx::ReadWriteFile::open(output.path())
                .with_context(|| output.path().display().to_string())?;
            let mut writer =
                vhdx::VhdxWriter::create(file, &options, Box::new(ChaCha8Rng::from_os_rng()))
                    .with_context(|| target.display().to_string())?;
            writer.set_bulk(true);
            restore_into(&mut |at, data| writer.write_at(at, data).map_err(std::io::Error::other))?;
            writer
                .flush()
                .and_then(|()| writer.close())
                .with_context(|| target.display().to_string())?;
        } else {
            let file = output.file();
            restore_into(&mut |at, data| std::os::unix::fs::FileExt::write_all_at(file, data, at))?;
            file.set_len(manifest.disk_size)
                .with_context(|| output.path().display().to_string())?;
        }
        Ok(())
    })??;
    Ok(Proven::File(output))
}

#[cfg(test)]
mod tests {
    use super::each_once;

    #[test]
    fn each_disk_once_and_each_to_its_own_output() {
        let dir = tempfile::tempdir().unwrap();
        let here = dir.path().canonicalize().unwrap();
        std::os::unix::fs::symlink(&here, here.join("link")).unwrap();
        let names = ["os".to_string(), "data".to_string()];
        let e = each_once(&names, &[here.join("a.raw"), here.join("link/a.raw")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--name data -o") && e.contains("the same output as --name os"),
            "{e}"
        );
        each_once(&names, &[here.join("a.raw"), here.join("link/b.raw")]).unwrap();
        let twice = ["os".to_string(), "os".to_string()];
        let e = each_once(&twice, &[here.join("a.raw"), here.join("b.raw")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--name os is given twice"), "{e}");
    }
}
