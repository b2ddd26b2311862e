//! Swarm testing: each seed draws its own scenario — storage profile, policy (copy frequency,
//! retention, app-consistent frequency, block size), one or two Hyper-V hosts, VMs and disks, workload, faults (WAN
//! outages and slow WANs, host crashes, agent restarts, churn bursts, storage storms with torn writes, a wrong
//! certificate, host clock skew) and DR operations — as TOML text,
//! so a failing seed is reproduced with `drplane sim run` on the text it prints. [`run`] runs
//! a range of seeds on worker threads (optionally each twice, comparing the runs), reporting
//! in seed order.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use rand_core::RngCore;

use crate::reproduce::{sim_run_command, swarm_seed_command};

fn pick<'a>(rng: &mut impl RngCore, items: &[&'a str]) -> &'a str {
    items[(rng.next_u64() % items.len() as u64) as usize]
}

fn between(rng: &mut impl RngCore, lo: u64, hi: u64) -> u64 {
    lo + rng.next_u64() % (hi - lo + 1)
}

/// The scenario of swarm seed `seed` (valid by construction).
pub fn scenario_for(seed: u64) -> String {
    let mut rng: rand_chacha::ChaCha8Rng = rand_core::SeedableRng::from_seed(blake3::derive_key(
        "drplane sim swarm v1",
        &seed.to_le_bytes(),
    ));
    let rng = &mut rng;
    let premium = rng.next_u64() % 3 == 0;
    let hours = between(rng, 2, 4);
    let frequency = if premium {
        pick(rng, &["300", "900"])
    } else {
        pick(rng, &["30", "300", "900"])
    };
    let retention = between(rng, 2, 6);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "name = \"swarm-{seed}\"\nseed = {seed}\nduration_hours = {hours}"
    );
    // The day's shape, for a third of the seeds: a start at any hour, busy hours, and the
    // policy's and the host's throttles by work hours. Drawn from a stream of its own, so the
    // rest of every seed's scenario stays what it was. The throttles stay at or above the
    // slowest WAN the swarm draws (5 Mbit/s), so every scenario can keep its RPO.
    let mut day: rand_chacha::ChaCha8Rng = rand_core::SeedableRng::from_seed(blake3::derive_key(
        "drplane sim swarm day shape v1",
        &seed.to_le_bytes(),
    ));
    let shaped = day.next_u64() % 3 == 0;
    let work_hours = |day: &mut rand_chacha::ChaCha8Rng| {
        let start = between(day, 0, 20);
        (start, between(day, start + 1, 24))
    };
    let (policy_throttle, host_throttle, busy) = if shaped {
        let _ = writeln!(
            s,
            "start_unix = {}",
            1_795_651_200 + 3600 * between(&mut day, 0, 23)
        );
        let throttle = |day: &mut rand_chacha::ChaCha8Rng, (a, b): (u64, u64)| {
            format!(
                "work_hours_kbps = {}\nwork_start_hour = {a}\nwork_end_hour = {b}",
                between(day, 5_000, 50_000)
            )
        };
        let policy = (day.next_u64() % 2 == 0).then(|| {
            let hours = work_hours(&mut day);
            throttle(&mut day, hours)
        });
        let host = (day.next_u64() % 2 == 0).then(|| {
            let hours = work_hours(&mut day);
            throttle(&mut day, hours)
        });
        let (a, b) = work_hours(&mut day);
        let busy = format!(
            "[workload]\npeak_hours = \"{a}-{b}\"\npeak_share = 0.{}",
            between(&mut day, 3, 9)
        );
        (policy, host, Some(busy))
    } else {
        (None, None, None)
    };
    let _ = writeln!(
        s,
        "[storage]\nprofile = \"{}\"",
        if premium { "premium" } else { "standard" }
    );
    let _ = writeln!(s, "[network]\nbandwidth_mbps = {}", between(rng, 5, 200));
    // Upload connections slower than the link, for a third of the seeds: drawn from a stream
    // of their own, so the rest of every seed's scenario stays what it was.
    let mut net: rand_chacha::ChaCha8Rng = rand_core::SeedableRng::from_seed(blake3::derive_key(
        "drplane sim swarm upload connections v1",
        &seed.to_le_bytes(),
    ));
    let threads = (net.next_u64() % 3 == 0).then(|| {
        let _ = writeln!(s, "connection_kbps = {}", between(&mut net, 1_000, 20_000));
        between(&mut net, 1, 8)
    });
    if let Some(t) = &host_throttle {
        let _ = writeln!(s, "[network.throttle]\n{t}");
    }
    let _ = writeln!(
        s,
        "[policy]\ncopy_frequency_secs = {frequency}\nretention_hours = {retention}\nblock_size_kib = {}",
        pick(rng, &["16", "64", "256"])
    );
    if let Some(threads) = threads {
        let _ = writeln!(s, "upload_threads = {threads}");
    }
    if rng.next_u64() % 2 == 0 {
        let _ = writeln!(
            s,
            "app_consistent_hours = {}",
            between(rng, 1, retention - 1)
        );
    }
    if let Some(t) = &policy_throttle {
        let _ = writeln!(s, "[policy.throttle]\n{t}");
    }
    if let Some(b) = &busy {
        let _ = writeln!(s, "{b}");
    }
    let vms = between(rng, 1, 2);
    let hosts = between(rng, 1, 2);
    for h in 0..hosts {
        let _ = writeln!(s, "[[host]]\nname = \"hv{h}\"");
    }
    for v in 0..vms {
        let _ = writeln!(s, "[[vm]]\nname = \"vm{v}\"\nhost = \"hv{}\"", v % hosts);
        for d in 0..between(rng, 1, 2) {
            let size = between(rng, 4, 24);
            let _ = writeln!(
                s,
                "[[vm.disk]]\nname = \"d{d}\"\nsize_mib = {size}\nchurn_mib_per_hour = {}\nhot_spot = 0.{}",
                between(rng, 1, size * 3),
                between(rng, 0, 9)
            );
        }
    }
    let minutes = hours * 60;
    for _ in 0..between(rng, 0, 3) {
        let at = between(rng, 10, minutes - 10);
        match rng.next_u64() % 9 {
            0 => {
                let _ = writeln!(
                    s,
                    "[[fault]]\nkind = \"wan_down\"\nat_minutes = {at}\nminutes = {}",
                    between(rng, 5, 60)
                );
            }
            1 => {
                let _ = writeln!(s, "[[fault]]\nkind = \"host_crash\"\nat_minutes = {at}");
                if hosts > 1 && rng.next_u64() % 2 == 0 {
                    let _ = writeln!(s, "host = \"hv{}\"", rng.next_u64() % hosts);
                }
                if rng.next_u64() % 2 == 0 {
                    let _ = writeln!(s, "mid_cycle = true");
                }
            }
            2 => {
                let _ = writeln!(
                    s,
                    "[[fault]]\nkind = \"storage_storm\"\nat_minutes = {at}\nminutes = {}\nbusy = 0.{:02}\ntimeouts = 0.{:02}\ntorn = 0.{:02}",
                    between(rng, 5, 30),
                    between(rng, 1, 15),
                    between(rng, 0, 8),
                    between(rng, 0, 10)
                );
            }
            3 => {
                let _ = writeln!(
                    s,
                    "[[fault]]\nkind = \"wrong_certificate\"\nat_minutes = {at}"
                );
            }
            4 => {
                let seconds = between(rng, 60, 3600) as i64;
                let sign = if rng.next_u64() % 2 == 0 { 1 } else { -1 };
                let _ = writeln!(
                    s,
                    "[[fault]]\nkind = \"clock_skew\"\nat_minutes = {at}\nseconds = {}",
                    sign * seconds
                );
            }
            5 => {
                let _ = writeln!(s, "[[fault]]\nkind = \"agent_restart\"\nat_minutes = {at}");
            }
            6 => {
                let _ = writeln!(
                    s,
                    "[[fault]]\nkind = \"churn_burst\"\nat_minutes = {at}\nminutes = {}\nfactor = {}",
                    between(rng, 5, 60),
                    between(rng, 2, 10)
                );
            }
            _ => {
                let _ = writeln!(
                    s,
                    "[[fault]]\nkind = \"wan_degraded\"\nat_minutes = {at}\nminutes = {}\nbandwidth_mbps = {}",
                    between(rng, 10, 90),
                    between(rng, 1, 4)
                );
            }
        }
    }
    // DR operations on the first VM, in a sensible order.
    let mut t = between(rng, minutes / 4, minutes / 2);
    let step = |s: &mut String, action: &str, at: u64, point: Option<&str>| {
        let _ = writeln!(
            s,
            "[[step]]\naction = \"{action}\"\nat_minutes = {at}\nvm = \"vm0\""
        );
        if let Some(p) = point {
            let _ = writeln!(s, "point = \"{p}\"");
        }
    };
    if rng.next_u64() % 2 == 0 {
        step(&mut s, "test_failover", t, Some("latest"));
        t += 5;
        step(&mut s, "cleanup_test_failover", t, None);
        t += 5;
    }
    if rng.next_u64() % 2 == 0 && t + 30 < minutes {
        let planned = rng.next_u64() % 2 == 0;
        if planned {
            step(&mut s, "planned_failover", t, None);
        } else {
            step(&mut s, "unplanned_failover", t, Some("latest"));
        }
        step(&mut s, "commit", t + 1, None);
        step(&mut s, "failback", t + between(rng, 10, 25), None);
    }
    s
}

/// Which seeds to run and how.
#[derive(Debug, Clone)]
pub struct SwarmOptions {
    pub start: u64,
    pub seeds: u64,
    /// Seeds run at once.
    pub jobs: u64,
    /// Run each seed twice; a trace-hash (or report) difference fails it.
    pub check_determinism: bool,
    /// Only shard K of N (1-based): seeds whose index mod N is K-1.
    pub shard: Option<(u64, u64)>,
}

/// What one seed gave.
#[derive(Debug, Clone)]
pub struct SeedOutcome {
    pub seed: u64,
    /// The seed's scenario, to write out and reproduce a failure.
    pub scenario: String,
    /// The run's report (the first run's), unless it could not run.
    pub report: Result<crate::Report, String>,
    /// Every reason the seed failed (broken checks, an error, nondeterminism); empty: passed.
    pub failures: Vec<String>,
    /// Whether the seed was run twice and the runs compared.
    pub checked_determinism: bool,
    /// Wall time of the seed's run(s), seconds (for CI reports; not part of any comparison).
    pub wall_secs: f64,
}

impl SeedOutcome {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    /// Failed only because the two runs differed: every check of the first run passed.
    fn only_nondeterministic(&self) -> bool {
        !self.passed() && self.report.as_ref().is_ok_and(|r| r.passed())
    }

    /// The file a failing seed's scenario is written to in `failures`.
    pub fn scenario_file(&self, failures: &Path) -> PathBuf {
        failures.join(format!("swarm-{}.toml", self.seed))
    }

    /// The one line that reproduces this outcome: `drplane sim run` on the scenario file a
    /// failure is written to in `failures` (a passing seed's scenario is not written: the swarm
    /// command of that one seed), or, for runs that only differed from each other, the swarm
    /// command that runs the seed twice again.
    pub fn reproduce(&self, failures: &Path) -> String {
        if self.passed() || self.only_nondeterministic() {
            swarm_seed_command(self.seed, self.checked_determinism)
        } else {
            sim_run_command(Some(&self.scenario_file(failures)), Some(self.seed))
        }
    }

    /// Write a failing seed's scenario and its one-line reproduction (`swarm-N.repro`) into
    /// `failures` (created if missing); returns the two paths.
    pub fn write_failure(&self, failures: &Path) -> std::io::Result<(PathBuf, PathBuf)> {
        std::fs::create_dir_all(failures)?;
        let scenario = self.scenario_file(failures);
        std::fs::write(&scenario, &self.scenario)?;
        let repro = failures.join(format!("swarm-{}.repro", self.seed));
        std::fs::write(&repro, format!("{}\n", self.reproduce(failures)))?;
        Ok((scenario, repro))
    }
}

/// Run one seed (twice when checking determinism).
pub fn run_seed(seed: u64, check_determinism: bool) -> SeedOutcome {
    let started = std::time::Instant::now();
    let scenario = scenario_for(seed);
    let run_once = || -> Result<crate::Report, String> {
        let parsed = crate::Scenario::parse(&scenario).map_err(|e| e.to_string())?;
        crate::run(&parsed, seed).map_err(|e| e.to_string())
    };
    let report = run_once();
    let mut failures: Vec<String> = match &report {
        Ok(r) => r
            .checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| format!("{} ({})", c.name, c.detail))
            .collect(),
        Err(e) => vec![e.clone()],
    };
    if check_determinism {
        failures.extend(determinism_failure(&report, &run_once()));
    }
    SeedOutcome {
        seed,
        scenario,
        report,
        failures,
        checked_determinism: check_determinism,
        wall_secs: started.elapsed().as_secs_f64(),
    }
}

/// What differs between two runs of one seed, if anything: the same seed must pass or fail
/// the same way both times (a second run that errors is a failure, not a skipped check).
pub fn determinism_failure(
    first: &Result<crate::Report, String>,
    second: &Result<crate::Report, String>,
) -> Option<String> {
    match (first, second) {
        (Ok(a), Ok(b)) if a != b => Some(format!(
            "not deterministic: trace {} then {}",
            &a.trace_hash[..16.min(a.trace_hash.len())],
            &b.trace_hash[..16.min(b.trace_hash.len())]
        )),
        (Ok(_), Err(e)) => Some(format!(
            "not deterministic: the first run passed, the second failed: {e}"
        )),
        (Err(_), Ok(_)) => {
            Some("not deterministic: the first run failed, the second passed".into())
        }
        (Err(a), Err(b)) if a != b => {
            Some(format!("not deterministic: failed with {a}, then with {b}"))
        }
        _ => None,
    }
}

/// The seeds `options` selects, in order.
pub fn seeds(options: &SwarmOptions) -> Vec<u64> {
    (options.start..options.start.saturating_add(options.seeds))
        .enumerate()
        .filter(|(i, _)| {
            options
                .shard
                .is_none_or(|(k, n)| n > 0 && (*i as u64) % n == k.saturating_sub(1))
        })
        .map(|(_, s)| s)
        .collect()
}

/// Run the selected seeds on `options.jobs` threads; `report` hears of each outcome in seed
/// order, as soon as it and every earlier seed are done.
pub fn run(options: &SwarmOptions, mut report: impl FnMut(SeedOutcome)) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let seeds = seeds(options);
    let next = AtomicUsize::new(0);
    let done: std::sync::Mutex<std::collections::BTreeMap<usize, SeedOutcome>> = Default::default();
    let ready = std::sync::Condvar::new();
    std::thread::scope(|scope| {
        for _ in 0..options.jobs.clamp(1, 64).min(seeds.len() as u64) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(&seed) = seeds.get(i) else { return };
                let outcome = run_seed(seed, options.check_determinism);
                done.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(i, outcome);
                ready.notify_all();
            });
        }
        for i in 0..seeds.len() {
            let mut results = done.lock().unwrap_or_else(|p| p.into_inner());
            while !results.contains_key(&i) {
                results = ready.wait(results).unwrap_or_else(|p| p.into_inner());
            }
            let outcome = results.remove(&i).expect("present");
            drop(results);
            report(outcome);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_swarm_scenario_parses_and_is_a_pure_function_of_its_seed() {
        for seed in 0..300 {
            let text = scenario_for(seed);
            assert_eq!(text, scenario_for(seed));
            if let Err(e) = crate::Scenario::parse(&text) {
                panic!("seed {seed}: {e}\n{text}");
            }
        }
    }

    #[test]
    fn a_share_of_the_seeds_draws_busy_hours_and_throttles() {
        let parsed: Vec<_> = (0..300)
            .map(|seed| crate::Scenario::parse(&scenario_for(seed)).unwrap())
            .collect();
        let count = |f: &dyn Fn(&crate::Scenario) -> bool| parsed.iter().filter(|s| f(s)).count();
        let busy = count(&|s| {
            s.vms
                .iter()
                .any(|v| v.disks.iter().any(|d| d.peak.is_some()))
        });
        let policy = count(&|s| s.policy.throttle.is_some());
        let host = count(&|s| s.host_throttle.is_some());
        let off_midnight = count(&|s| s.start_nanos % (86_400 * 1_000_000_000) != 0);
        // A third of the seeds are shaped; half of those draw each throttle.
        assert!((80..=120).contains(&busy), "{busy}");
        assert!((30..=70).contains(&policy), "{policy}");
        assert!((30..=70).contains(&host), "{host}");
        assert!(off_midnight >= busy * 9 / 10, "{off_midnight}");
    }
}
