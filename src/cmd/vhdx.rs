//! `drplane vhdx info|check|export|create|import`.

use indicatif::HumanBytes;
use std::fs::OpenOptions;
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;
use serde_json::{json, Value};
use vhdx::export::{export_raw, RawTarget};
use vhdx::{Disk, LogState};

use super::output_file::OutputFile;
use crate::progress::bytes_bar;

#[derive(Debug, Subcommand)]
pub enum VhdxCommand {
    /// Format, geometry, identity, parent, log state and allocation of an image.
    Info {
        /// The VHDX image.
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Full structural validation; exits 0 only when no problem is found.
    Check {
        /// The VHDX image.
        file: PathBuf,
        /// Print the problems as JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Write the virtual disk as a raw image (sparse); never modifies the input.
    Export {
        /// The VHDX image (a differencing disk reads through its parents).
        file: PathBuf,
        /// Output path (written beside it and renamed into place when complete), a block
        /// device (with --force), or `-` for standard output.
        #[arg(short, long)]
        output: PathBuf,
        /// Replace an existing output file, or overwrite a block device.
        #[arg(long)]
        force: bool,
        /// Copy threads (file output only).
        #[arg(long, default_value_t = vhdx::export::DEFAULT_EXPORT_THREADS as u16, value_parser = clap::value_parser!(u16).range(1..=64))]
        threads: u16,
    },
    /// Create a dynamic, fixed or differencing disk.
    Create {
        /// The new image (refused if it exists).
        file: PathBuf,
        /// Virtual size, e.g. 64G, 512M, 1T (binary units); a differencing disk takes its
        /// parent's when omitted.
        #[arg(long, value_parser = parse_size)]
        size: Option<u64>,
        #[command(flatten)]
        format: FormatArgs,
        /// Make a differencing disk of this parent.
        #[arg(long)]
        parent: Option<PathBuf>,
    },
    /// Convert a raw image to VHDX; all-zero blocks stay unallocated.
    Import {
        /// The raw image to convert.
        raw: PathBuf,
        /// The VHDX to write.
        #[arg(short, long)]
        output: PathBuf,
        #[command(flatten)]
        format: FormatArgs,
        /// Flush the output to stable storage before returning (default: like `cp` and
        /// `qemu-img convert`, leave that to the page cache).
        #[arg(long)]
        sync: bool,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
    },
}

/// Layout options of a new disk.
#[derive(Debug, clap::Args)]
pub struct FormatArgs {
    /// Allocate every block up front.
    #[arg(long)]
    fixed: bool,
    /// Block size, 1M to 256M (power of two).
    #[arg(long, value_parser = parse_size, default_value = "32M")]
    block_size: u64,
    /// Logical sector size: 512 or 4096.
    #[arg(long, default_value_t = 512)]
    logical_sector: u32,
}

impl FormatArgs {
    pub fn options(&self, virtual_size: u64) -> Result<vhdx::CreateOptions> {
        let block_size = u32::try_from(self.block_size)
            .ok()
            .context("--block-size: at most 256M")?;
        Ok(vhdx::CreateOptions {
            block_size,
            logical_sector_size: self.logical_sector,
            fixed: self.fixed,
            ..vhdx::CreateOptions::dynamic(virtual_size)
        })
    }
}

/// `64G`, `512M`, `4096`, `1T`: binary units.
pub fn parse_size(text: &str) -> std::result::Result<u64, String> {
    let t = text.trim();
    let (digits, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => t.split_at(i),
        None => (t, ""),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?}: a number with an optional K, M, G or T"))?;
    let shift = match unit.to_ascii_uppercase().trim_end_matches(['B', 'I']) {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        other => return Err(format!("{text:?}: unknown unit {other:?} (K, M, G or T)")),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{text:?}: too large"))
}

pub fn run(command: VhdxCommand) -> Result<ExitCode> {
    match command {
        VhdxCommand::Info { file, json } => info(&file, json),
        VhdxCommand::Check { file, json } => check(&file, json),
        VhdxCommand::Export {
            file,
            output,
            force,
            threads,
        } => export(&file, &output, force, threads.into()),
        VhdxCommand::Create {
            file,
            size,
            format,
            parent,
        } => create(&file, size, &format, parent.as_deref()),
        VhdxCommand::Import {
            raw,
            output,
            format,
            sync,
            force,
        } => import(&raw, &output, &format, sync, force),
    }
}

fn os_rng() -> Box<dyn rand_core::RngCore + Send> {
    use rand_core::SeedableRng;
    Box::new(rand_chacha::ChaCha8Rng::from_os_rng())
}

/// A new output file (an existing one is refused, never overwritten).
pub fn new_vhdx_file(path: &Path) -> Result<vhdx::ReadWriteFile> {
    vhdx::ReadWriteFile::create_new(path).with_context(|| format!("{}", path.display()))
}

fn create(
    file: &Path,
    size: Option<u64>,
    format: &FormatArgs,
    parent: Option<&Path>,
) -> Result<ExitCode> {
    let mut options = match (size, parent) {
        (Some(s), _) => format.options(s)?,
        (None, Some(p)) => format.options(open(p)?.virtual_size())?,
        (None, None) => anyhow::bail!("--size is required (or --parent)"),
    };
    if let Some(p) = parent {
        let parent_disk = open(p)?;
        let top = parent_disk.top();
        if format.fixed {
            anyhow::bail!("a differencing disk cannot be --fixed");
        }
        options.logical_sector_size = top.metadata.logical_sector_size;
        let child_dir = file
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let parent_abs = std::fs::canonicalize(p).with_context(|| p.display().to_string())?;
        let dir_abs =
            std::fs::canonicalize(child_dir).with_context(|| child_dir.display().to_string())?;
        options.parent = Some(vhdx::writer::ParentLink {
            data_write_guid: top.header.data_write_guid,
            relative_path: relative_path(&dir_abs, &parent_abs),
            absolute_path: Some(parent_abs.display().to_string()),
        });
    }
    let writer = vhdx::VhdxWriter::create(new_vhdx_file(file)?, &options, os_rng())
        .with_context(|| file.display().to_string())?;
    writer.close()?;
    eprintln!(
        "created {} ({} bytes{})",
        file.display(),
        options.virtual_size,
        if parent.is_some() {
            ", differencing"
        } else if format.fixed {
            ", fixed"
        } else {
            ""
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// `target` relative to directory `from` (both absolute).
fn relative_path(from: &Path, target: &Path) -> String {
    let from: Vec<_> = from.components().collect();
    let to: Vec<_> = target.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut parts: Vec<String> = vec!["..".into(); from.len() - common];
    parts.extend(
        to[common..]
            .iter()
            .map(|c| c.as_os_str().to_string_lossy().into_owned()),
    );
    parts.join("/")
}

fn import(
    raw: &Path,
    output: &Path,
    format: &FormatArgs,
    sync: bool,
    force: bool,
) -> Result<ExitCode> {
    if same_file(raw, output) {
        anyhow::bail!("{}: output is the input image", output.display());
    }
    let source = vhdx::PositionalFile::open(raw).with_context(|| raw.display().to_string())?;
    let size = vhdx::ReadAt::len(&source);
    let virtual_size = size.next_multiple_of(u64::from(format.logical_sector));
    let options = format.options(virtual_size)?;
    // Written beside the output and put in place when complete: a failed import leaves no
    // VHDX that holds part of the disk.
    let out = OutputFile::prepare(output, force, "import")?;
    let file =
        vhdx::ReadWriteFile::open(out.path()).with_context(|| out.path().display().to_string())?;
    let mut writer = vhdx::VhdxWriter::create(file, &options, os_rng())
        .with_context(|| output.display().to_string())?;
    writer.set_bulk(true);
    let bar = bytes_bar(size, "import");
    vhdx::import::copy_nonzero(&source, size, &mut writer, &|done| bar.set_position(done))
        .with_context(|| format!("importing {} into {}", raw.display(), output.display()))?;
    if sync {
        writer.flush()?;
    }
    writer.close()?;
    out.publish(output, sync)?;
    bar.finish_and_clear();
    Ok(ExitCode::SUCCESS)
}

fn open(file: &Path) -> Result<Disk> {
    Disk::open(file).with_context(|| format!("{}", file.display()))
}

fn log_state_json(state: &LogState) -> Value {
    match state {
        LogState::Clean => json!({"state": "clean"}),
        LogState::Replayed {
            entries,
            first_sequence,
            last_sequence,
        } => json!({
            "state": "dirty", "replayed_in_memory": true, "entries": entries,
            "first_sequence": first_sequence, "last_sequence": last_sequence,
        }),
        LogState::DirtyWithoutEntries => json!({"state": "dirty-without-entries", "entries": 0}),
    }
}

fn info_json(disk: &Disk, file: &Path) -> Value {
    let top = disk.top();
    let md = &top.metadata;
    let stats = top.bat_stats();
    let parents: Vec<Value> = disk.layers()[1..]
        .iter()
        .map(|l| json!({"path": l.name, "disk_id": l.file.metadata.disk_id.to_string(), "kind": l.file.kind()}))
        .collect();
    let locator = md.parent_locator.as_ref().map(|p| {
        p.entries
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect::<serde_json::Map<_, _>>()
    });
    json!({
        "file": file.display().to_string(),
        "format": "vhdx",
        "kind": top.kind(),
        "file_size": top.view().file_len(),
        "virtual_size": md.virtual_size,
        "block_size": md.file_parameters.block_size,
        "logical_sector_size": md.logical_sector_size,
        "physical_sector_size": md.physical_sector_size,
        "disk_id": md.disk_id.to_string(),
        "data_write_guid": top.header.data_write_guid.to_string(),
        "creator": top.identifier.creator,
        "header_sequence_number": top.header.sequence_number,
        "log": log_state_json(&top.log_state),
        "log_offset": top.header.log_offset,
        "log_length": top.header.log_length,
        "bat": {
            "payload_blocks": top.geometry.payload_blocks,
            "chunk_ratio": top.geometry.chunk_ratio,
            "states": stats.payload_states.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "sector_bitmaps_present": stats.sector_bitmaps_present,
        },
        "allocated_bytes": stats.allocated_bytes,
        "parent_locator": locator,
        "parents": parents,
    })
}

fn info(file: &Path, as_json: bool) -> Result<ExitCode> {
    let disk = open(file)?;
    let v = info_json(&disk, file);
    if as_json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let top = disk.top();
    println!("file:                 {}", file.display());
    println!("format:               vhdx ({})", top.kind());
    println!(
        "virtual size:         {} ({})",
        HumanBytes(top.metadata.virtual_size),
        top.metadata.virtual_size
    );
    println!(
        "file size:            {}",
        HumanBytes(top.view().file_len())
    );
    println!(
        "block size:           {}",
        HumanBytes(top.metadata.file_parameters.block_size.into())
    );
    println!(
        "sector size:          {} logical, {} physical",
        top.metadata.logical_sector_size, top.metadata.physical_sector_size
    );
    println!("disk id:              {}", top.metadata.disk_id);
    println!("creator:              {}", top.identifier.creator);
    let log = match &top.log_state {
        LogState::Clean => "clean".to_string(),
        LogState::Replayed {
            entries,
            first_sequence,
            last_sequence,
        } => {
            format!("dirty: {entries} entries (sequence {first_sequence}..={last_sequence}) replayed in memory")
        }
        LogState::DirtyWithoutEntries => {
            "dirty flag set, no valid entries (nothing to replay)".into()
        }
    };
    println!("log:                  {log}");
    let stats = top.bat_stats();
    let states: Vec<String> = stats
        .payload_states
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    println!(
        "blocks:               {} ({})",
        top.geometry.payload_blocks,
        states.join(", ")
    );
    println!(
        "allocated:            {}",
        HumanBytes(stats.allocated_bytes)
    );
    for layer in &disk.layers()[1..] {
        println!(
            "parent:               {} ({})",
            layer.name,
            layer.file.kind()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn check(file: &Path, as_json: bool) -> Result<ExitCode> {
    let report = Disk::check(file);
    let f = &report.findings;
    if as_json {
        let v = json!({
            "file": file.display().to_string(),
            "clean": report.is_clean(),
            "errors": f.errors.iter().chain(&f.recovered).map(|e| json!({"offset": e.offset(), "message": e.to_string()})).collect::<Vec<_>>(),
            "unreadable": !f.errors.is_empty(),
            "errors_not_listed": f.not_kept,
            "warnings": f.warnings,
            "layers": report.layers,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for e in &f.errors {
            println!("error: {e}");
        }
        for e in &f.recovered {
            println!("error: {e} (worked around when reading)");
        }
        if f.not_kept > 0 {
            println!("error: ... and {} more", f.not_kept);
        }
        for w in &f.warnings {
            println!("warning: {w}");
        }
        if report.is_clean() {
            println!(
                "{}: no errors found ({} image(s) in the chain)",
                file.display(),
                report.layers.len()
            );
        } else {
            println!(
                "{}: {} error(s) found",
                file.display(),
                f.errors.len() + f.recovered.len() + f.not_kept
            );
        }
    }
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn export(file: &Path, output: &Path, force: bool, threads: usize) -> Result<ExitCode> {
    use std::os::unix::fs::FileTypeExt;
    let disk = open(file)?;
    let size = disk.virtual_size();
    let bar = bytes_bar(size, "export");
    let tick = |done| bar.inc(done);
    let streamed = |out: std::fs::File| -> Result<vhdx::export::ExportStats> {
        let mut w = BufWriter::with_capacity(1 << 20, out);
        Ok(export_raw(&disk, RawTarget::Stream(&mut w), 1, &tick)?)
    };
    let stats = if output == Path::new("-") {
        let stdout = io::stdout();
        let mut w = BufWriter::with_capacity(1 << 20, stdout.lock());
        export_raw(&disk, RawTarget::Stream(&mut w), 1, &tick)?
    } else if same_file(file, output) {
        anyhow::bail!("{}: output is the input image", output.display());
    } else if let Some(parent) = disk.layers()[1..]
        .iter()
        .find(|l| same_file(Path::new(&l.name), output))
    {
        anyhow::bail!(
            "{}: output is {}, a parent the input reads through",
            output.display(),
            parent.name
        );
    } else {
        match std::fs::metadata(output).map(|m| m.file_type()) {
            // A pipe or a character device (/dev/null) takes the stream as it comes.
            Ok(t) if t.is_fifo() || t.is_char_device() => streamed(
                OpenOptions::new()
                    .write(true)
                    .open(output)
                    .with_context(|| output.display().to_string())?,
            )?,
            Ok(t) if t.is_block_device() => {
                if !force {
                    anyhow::bail!(
                        "{} is a block device: give --force to overwrite it",
                        output.display()
                    );
                }
                streamed(super::output_file::open_device_exclusively(output)?)?
            }
            _ => {
                let out = OutputFile::prepare(output, force, "export")?;
                let stats = export_raw(&disk, RawTarget::File(out.file()), threads, &tick)?;
                out.publish(output, false)?;
                stats
            }
        }
    };
    bar.finish_and_clear();
    eprintln!(
        "exported {} ({} data, {} holes) to {}",
        HumanBytes(stats.virtual_size),
        HumanBytes(stats.data_bytes),
        HumanBytes(stats.hole_bytes),
        output.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}
