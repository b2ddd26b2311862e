//! Initial replication and then a tracked delta cycle at a given churn, through the real agent,
//! replicator plan, change tracker and embedded store, timing both. The disk file is changed in
//! place (random blocks rewritten with fresh bytes, each write reported to the tracker as the
//! VHDX writer's hook does). Usage: `tracked_delta DISK.raw STORE_DIR [CHURN_PERCENT]`.

use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Instant;

use datapath::agent::{AgentTarget, DiskAgent};
use datapath::cycle::{BlockSource, RawSource};
use datapath::keys::Identity;
use datapath::policy::Policy;
use datapath::replicator::{Action, CycleOutcome, Replicator};
use datapath::source::TrackedDisk;
use datapath::tracking::ChangeTracker;
use pageblob::clock::{Clock, SystemClock};
use pageblob::data_log::Durability;
use pageblob::{Emulator, Profile};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

/// The allocator the CLI uses.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: tracked_delta DISK.raw STORE_DIR [CHURN_PERCENT]");
        std::process::exit(2);
    }
    let disk_path = std::path::Path::new(&args[1]);
    let store_dir = std::path::Path::new(&args[2]);
    let churn: f64 = args.get(3).map_or(Ok(1.0), |s| s.parse())?;
    let clock = SystemClock;
    let (_, pfx) = datapath::registration::register("bench", "host", "pw", &clock)?;
    let identity = Identity::from_pfx(&pfx, "pw")?;
    let store = Emulator::open(
        store_dir,
        Profile::Standard,
        Durability::Process,
        Arc::new(SystemClock),
    )?;
    let policy = Policy::from_toml("", Profile::Standard)?;
    let size = RawSource::open(disk_path)?.disk_size();
    let (mut tracker, untrusted) =
        ChangeTracker::open(&store_dir.join("disk.ctb"), "disk", size, policy.block_size)?;
    let (mut agent, resume) = DiskAgent::open(
        AgentTarget {
            snapshot_limit: None,
            store: &store,
            container: "replicas",
            name: "disk",
            log_store: None,
        },
        &identity,
        policy.clone(),
        size,
        untrusted.map(|u| u.to_string()),
        true,
        Box::new(ChaCha8Rng::from_os_rng()),
    )?;
    let mut machine = Replicator::new(policy.clone(), None, clock.now_nanos(), resume);
    let frequency = u64::from(policy.copy_frequency_secs) * 1_000_000_000;
    // Run what the machine plans at `now`.
    let cycle = |agent: &mut DiskAgent<'_>,
                 machine: &mut Replicator,
                 tracker: &mut ChangeTracker,
                 now: u64|
     -> Result<f64, Box<dyn std::error::Error>> {
        let Action::RunCycle(plan) = machine.poll(now) else {
            return Err("the machine did not plan a cycle".into());
        };
        let source = RawSource::open(disk_path)?;
        let started = Instant::now();
        let mut host = TrackedDisk {
            tracker,
            view: Some(&source),
        };
        let report = agent.run(&plan, &mut host, now, &|_| {})?;
        let seconds = started.elapsed().as_secs_f64();
        machine.cycle_finished(
            now,
            &CycleOutcome::Committed {
                point_time_nanos: report.point.time_nanos,
            },
        );
        println!(
            "{:?}: {} of {} blocks examined, {} changed, {} bytes read, {} sent, {seconds:.3} s",
            plan.kind,
            report.blocks_examined,
            report.blocks,
            report.blocks_changed,
            report.bytes_read,
            report.bytes_sent
        );
        Ok(seconds)
    };
    let start = clock.now_nanos();
    let initial = cycle(&mut agent, &mut machine, &mut tracker, start)?;
    // Churn: rewrite that share of the blocks with fresh, partly compressible bytes.
    let file = std::fs::OpenOptions::new().write(true).open(disk_path)?;
    let blocks = size / u64::from(policy.block_size);
    let count = ((blocks as f64) * churn / 100.0).round() as u64;
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    let mut buf = vec![0u8; policy.block_size as usize];
    for _ in 0..count {
        let block = rng.next_u64() % blocks;
        for (i, v) in buf.iter_mut().enumerate() {
            *v = if i % 4 == 0 {
                rng.next_u32() as u8
            } else {
                b'a' + (i % 26) as u8
            };
        }
        let offset = block * u64::from(policy.block_size);
        file.write_all_at(&buf, offset)?;
        tracker.mark(offset, buf.len() as u64);
    }
    drop(file);
    // The next cycle is due one copy interval later: tell the machine that time has come.
    let delta = cycle(&mut agent, &mut machine, &mut tracker, start + frequency)?;
    println!(
        "delta at {churn}% churn took {:.1}% of the initial replication time",
        100.0 * delta / initial
    );
    agent.stop_cleanly(&mut TrackedDisk {
        tracker: &mut tracker,
        view: None,
    })?;
    Ok(())
}
