//! The disks of one machine together: `replicate --qemu` with several `--node`s freezes them
//! in one QMP transaction every cycle (`datapath::live::QemuGroup`), so their points are one
//! instant and carry one time; `points` and `restore` with several `--name`s find the points
//! every disk has (the machine's points) and restore all disks at one of them.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Result};
use datapath::agent::AgentTarget;
use datapath::driver::{run_group_now, watch_group, ReplicationDriver, WatchEnd, WatchEvents};
use datapath::live::QemuGroup;
use datapath::replica::manifest::Consistency;
use datapath::source::{ChangeSource, FreezeGroup};
use pageblob::clock::SystemClock;
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

use super::replicate::{
    open_targets, prepare, CycleConsole, ReplicateArgs, SleepUntilStopped, REPLICA_CONTAINER,
};

/// `replicate --qemu` of several disks (`--node`/`--name` pairs) of one QEMU, frozen together.
pub fn replicate_machine(mut args: ReplicateArgs) -> Result<ExitCode> {
    let (identity, now, stop) = prepare(&mut args)?;
    let (args, identity) = (&args, &identity);
    let names = &args.name;
    let nodes = &args.live.node;
    for (i, (node, name)) in nodes.iter().zip(names).enumerate() {
        if nodes[..i].contains(node) || names[..i].contains(name) {
            bail!("--node {node} --name {name}: each disk (and each name) once");
        }
    }
    let mut sources = Vec::new();
    for (node, name) in nodes.iter().zip(names) {
        sources.push(args.live.attach(node, name)?);
    }
    let sizes: Vec<u64> = sources.iter().map(|(_, size)| *size).collect();
    let targets = open_targets(args, &sizes)?;
    let mut drivers = Vec::new();
    for ((source, size), name) in sources.iter().zip(names) {
        drivers.push(ReplicationDriver::open(
            AgentTarget {
                snapshot_limit: targets.profile.max_snapshots_per_blob(),
                store: &*targets.store,
                container: REPLICA_CONTAINER,
                name,
                log_store: targets.log_store.as_deref(),
            },
            identity,
            targets.policy.clone(),
            *size,
            source.untrusted(),
            args.policy.block_size_kib.is_some(),
            Box::new(ChaCha8Rng::from_os_rng()),
            now,
        )?);
    }
    let mut consoles: Vec<CycleConsole> = names
        .iter()
        .zip(&sources)
        .map(|(name, (_, size))| CycleConsole::without_bar(name, args.json, *size))
        .collect();
    let mut group = QemuGroup::new(sources.into_iter().map(|(s, _)| s).collect());
    let consistency = if args.app_consistent {
        Consistency::Application
    } else {
        Consistency::Crash
    };
    for driver in &mut drivers {
        driver.agent_mut().set_stop_flag(Arc::clone(&stop));
    }
    if !args.watch {
        return one_cycle(&mut drivers, &mut group, consistency, &consoles, names);
    }
    let mut stores = vec![&*targets.store];
    stores.extend(targets.log_store.as_deref());
    let mut pause = SleepUntilStopped { stop };
    let mut events: Vec<&mut dyn WatchEvents> = consoles
        .iter_mut()
        .map(|c| c as &mut dyn WatchEvents)
        .collect();
    let end = watch_group(
        &mut drivers,
        &mut group,
        consistency,
        &SystemClock,
        &stores,
        &mut pause,
        &mut events,
        args.cycles,
    );
    stop_all(&mut group)?;
    match end {
        WatchEnd::Stopped => eprintln!("{}: stopped", names.join(", ")),
        WatchEnd::CyclesDone => {}
        WatchEnd::TakenOver(why) => bail!("{why}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// One cycle of every disk now (`replicate` without `--watch`): an error unless every disk
/// committed.
fn one_cycle(
    drivers: &mut [ReplicationDriver<'_>],
    group: &mut QemuGroup,
    consistency: Consistency,
    consoles: &[CycleConsole],
    names: &[String],
) -> Result<ExitCode> {
    let kinds: Vec<_> = drivers.iter().map(|d| d.machine().phase()).collect();
    let results = run_group_now(drivers, group, consistency, &SystemClock, &|_, _| {});
    let mut failed = Vec::new();
    for (i, result) in results.into_iter().enumerate() {
        match result.and_then(|(report, retention)| Ok((report, retention?))) {
            Ok((report, deleted)) => consoles[i].print(kinds[i], &report, &deleted)?,
            Err(e) => {
                eprintln!("{}: {e:#}", names[i]);
                failed.push(names[i].as_str());
            }
        }
    }
    stop_all(group)?;
    if failed.len() == names.len() {
        bail!(
            "no disk committed: this cycle made no point (every change stays for the next \
             cycle, which freezes all the disks again)"
        );
    }
    if !failed.is_empty() {
        bail!(
            "{} of {} disks did not commit ({}): this cycle made no point of the whole \
             machine (the disks that committed keep theirs for the last hour of retention; \
             the next cycle freezes all the disks again)",
            failed.len(),
            names.len(),
            failed.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Every disk's source stops cleanly (a frozen one is thawed, its changes kept).
fn stop_all(group: &mut QemuGroup) -> Result<()> {
    for i in 0..group.disks() {
        group.member(i).stop(true)?;
    }
    Ok(())
}
