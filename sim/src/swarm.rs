//! Swarm testing: each seed draws its own scenario — storage profile, policy (copy frequency,
//! retention, app-consistent frequency, block size), VMs and disks, workload, faults (WAN
//! outages, host crashes, storage storms, a wrong certificate, host clock skew) and DR
//! operations — as TOML text,
//! so a failing seed is reproduced with `drplane sim run` on the text it prints.

use std::fmt::Write as _;

use rand_core::RngCore;

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
    let _ = writeln!(
        s,
        "[storage]\nprofile = \"{}\"",
        if premium { "premium" } else { "standard" }
    );
    let _ = writeln!(s, "[network]\nbandwidth_mbps = {}", between(rng, 5, 200));
    let _ = writeln!(
        s,
        "[policy]\ncopy_frequency_secs = {frequency}\nretention_hours = {retention}\nblock_size_kib = {}",
        pick(rng, &["16", "64", "256"])
    );
    if rng.next_u64() % 2 == 0 {
        let _ = writeln!(
            s,
            "app_consistent_hours = {}",
            between(rng, 1, retention - 1)
        );
    }
    let vms = between(rng, 1, 2);
    for v in 0..vms {
        let _ = writeln!(s, "[[vm]]\nname = \"vm{v}\"");
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
        match rng.next_u64() % 5 {
            0 => {
                let _ = writeln!(
                    s,
                    "[[fault]]\nkind = \"wan_down\"\nat_minutes = {at}\nminutes = {}",
                    between(rng, 5, 60)
                );
            }
            1 => {
                let _ = writeln!(s, "[[fault]]\nkind = \"host_crash\"\nat_minutes = {at}");
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
            _ => {
                let _ = writeln!(
                    s,
                    "[[fault]]\nkind = \"wrong_certificate\"\nat_minutes = {at}"
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
}
