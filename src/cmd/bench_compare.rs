//! The figures `drplane bench --json` reports under `figures` (one flat map per report, the
//! medians for several runs), and `drplane bench compare OLD.json NEW.json`, which prints how
//! each figure changed and, with `--max-regression`, fails when one got worse by more than
//! that share.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use datapath::bench::BenchReport;

/// Version of the JSON report's shape; `compare` reads this version only.
pub const SCHEMA: u64 = 2;

/// Largest report `compare` reads (one with 100 runs is well under 1 MiB).
const MAX_REPORT_BYTES: u64 = 16 << 20;

/// Which way a figure is better, from its name: times and stored shares go down, rates and
/// efficiencies go up.
fn higher_is_better(name: &str) -> bool {
    !(name.ends_with("_seconds") || name.ends_with("_ratio"))
}

/// One report's timed figures by name.
pub fn figures(r: &BenchReport) -> BTreeMap<String, f64> {
    let mut f = BTreeMap::new();
    let mut put = |name: &str, value: Option<f64>| {
        if let Some(v) = value.filter(|v| v.is_finite()) {
            f.insert(name.to_string(), v);
        }
    };
    put("initial_seconds", Some(r.initial.seconds));
    put("initial_cpu_seconds", r.initial.cpu_seconds);
    put("initial_pool_cpu_seconds", r.initial.pool_cpu_seconds);
    put("initial_other_cpu_seconds", r.initial.other_cpu_seconds());
    put(
        "initial_unused_core_seconds",
        r.initial.unused_core_seconds(r.cores),
    );
    put("initial_serial_cpu_seconds", r.initial.serial_cpu_seconds);
    put(
        "initial_outside_groups_seconds",
        Some(r.initial.outside_groups_seconds),
    );
    put("serial_ceiling_threads", r.serial_ceiling_threads());
    for threads in BenchReport::PROJECTED_THREADS {
        put(
            &format!("projected_{threads}_thread_efficiency"),
            r.projected_efficiency(threads),
        );
    }
    put("initial_bytes_per_sec", Some(r.initial_rate()));
    put("pipeline_efficiency", r.pipeline_efficiency());
    put("replication_efficiency", r.replication_efficiency());
    put("measured_efficiency", r.measured_efficiency());
    put("measured_bound_bytes_per_sec", r.transforms_on_threads);
    for d in &r.deltas {
        let churn = d.churn_percent.unwrap_or(0.0);
        put(&format!("delta_{churn}pct_seconds"), Some(d.seconds));
    }
    if let Some(restore) = &r.restore {
        put("restore_seconds", Some(restore.seconds));
        put("restore_cpu_seconds", restore.cpu_seconds);
    }
    put("restore_bytes_per_sec", r.restore_rate());
    put("restore_efficiency", r.restore_efficiency());
    put("verify_seconds", r.verify_seconds);
    if let Some(s) = &r.stages {
        put("stage_blake3_bytes_per_sec", Some(s.blake3_keyed));
        put("stage_zstd_bytes_per_sec", Some(s.zstd));
        put(
            "stage_zstd_decompress_bytes_per_sec",
            Some(s.zstd_decompress),
        );
        put("stage_aes_gcm_bytes_per_sec", Some(s.aes_256_gcm));
        put("stage_aes_gcm_open_bytes_per_sec", Some(s.aes_256_gcm_open));
        put("stage_crc32c_bytes_per_sec", Some(s.crc32c));
        put("stored_ratio", Some(s.stored_ratio));
    }
    if let Some(io) = &r.io {
        put("stage_source_read_bytes_per_sec", Some(io.source_read));
        put("stage_store_write_bytes_per_sec", Some(io.store_write));
        put("stage_store_read_bytes_per_sec", Some(io.store_read));
    }
    f
}

/// The median of `values` (the mean of the middle two for an even count; NaN for none).
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// The median of each figure that every run has.
pub fn median_figures(runs: &[BTreeMap<String, f64>]) -> BTreeMap<String, f64> {
    let Some(first) = runs.first() else {
        return BTreeMap::new();
    };
    first
        .keys()
        .filter_map(|name| {
            let values: Vec<f64> = runs.iter().filter_map(|r| r.get(name).copied()).collect();
            (values.len() == runs.len()).then(|| (name.clone(), median(values)))
        })
        .collect()
}

/// The figures of a saved report, checked.
fn load(path: &Path) -> Result<BTreeMap<String, f64>> {
    let size = std::fs::metadata(path)
        .with_context(|| path.display().to_string())?
        .len();
    if size > MAX_REPORT_BYTES {
        bail!(
            "{}: {size} bytes; a bench report is far smaller (limit {MAX_REPORT_BYTES})",
            path.display()
        );
    }
    let text = super::read_input_text(path, 64 << 20)?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not JSON (save `drplane bench --json`)", path.display()))?;
    match value.get("schema").and_then(serde_json::Value::as_u64) {
        Some(SCHEMA) => {}
        Some(other) => bail!(
            "{}: bench report schema {other}; this drplane reads schema {SCHEMA}",
            path.display()
        ),
        None => bail!(
            "{}: no `schema` field: not a `drplane bench --json` report, or one from before \
             schema {SCHEMA} (run the bench again)",
            path.display()
        ),
    }
    let figures = value
        .get("figures")
        .and_then(serde_json::Value::as_object)
        .with_context(|| format!("{}: no `figures` object", path.display()))?;
    figures
        .iter()
        .map(|(name, v)| {
            v.as_f64()
                .map(|v| (name.clone(), v))
                .with_context(|| format!("{}: figure {name} is not a number", path.display()))
        })
        .collect()
}

/// A figure's value for people: seconds, a rate, a share or a count of threads.
fn show(name: &str, v: f64) -> String {
    if name.ends_with("_seconds") {
        format!("{v:.3} s")
    } else if name.ends_with("_per_sec") {
        format!("{}/s", indicatif::HumanBytes(v as u64))
    } else if name.ends_with("_efficiency") || name.ends_with("_ratio") {
        format!("{:.1}%", 100.0 * v)
    } else if name.ends_with("_threads") {
        format!("{v:.1} threads")
    } else {
        format!("{v}")
    }
}

/// `drplane bench compare`: every figure of `old` and `new`, the change in percent, and
/// which way it went. Fails (exit 1) when `max_regression` (percent) is given and a figure got
/// worse by more than that.
pub fn compare(old: &Path, new: &Path, max_regression: Option<f64>) -> Result<ExitCode> {
    if let Some(m) = max_regression {
        if !(m.is_finite() && m >= 0.0) {
            bail!("--max-regression {m}: a percentage, 0 or more");
        }
    }
    let (a, b) = (load(old)?, load(new)?);
    let names: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let width = names.iter().map(|n| n.len()).max().unwrap_or(0);
    let mut worst: Option<(String, f64)> = None;
    println!("{:width$}  {:>14}  {:>14}  change", "figure", "old", "new");
    for name in names {
        match (a.get(name), b.get(name)) {
            (Some(&x), Some(&y)) => {
                let change = if x == 0.0 {
                    0.0
                } else {
                    100.0 * (y - x) / x.abs()
                };
                // Positive: worse by that many percent.
                let worse = if higher_is_better(name) {
                    -change
                } else {
                    change
                };
                let verdict = match worse {
                    w if w > 0.5 => "worse",
                    w if w < -0.5 => "better",
                    _ => "same",
                };
                println!(
                    "{name:width$}  {:>14}  {:>14}  {change:+.1}% ({verdict})",
                    show(name, x),
                    show(name, y)
                );
                if worst.as_ref().is_none_or(|(_, w)| worse > *w) {
                    worst = Some((name.clone(), worse));
                }
            }
            (Some(&x), None) => println!(
                "{name:width$}  {:>14}  {:>14}  only in old",
                show(name, x),
                "-"
            ),
            (None, Some(&y)) => println!(
                "{name:width$}  {:>14}  {:>14}  only in new",
                "-",
                show(name, y)
            ),
            (None, None) => {}
        }
    }
    match (max_regression, worst) {
        (Some(limit), Some((name, worse))) if worse > limit => {
            eprintln!("{name} got {worse:.1}% worse (limit {limit}%)");
            Ok(ExitCode::FAILURE)
        }
        _ => Ok(ExitCode::SUCCESS),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_ratios_are_better_lower_rates_and_efficiencies_higher() {
        assert!(!higher_is_better("initial_seconds"));
        assert!(!higher_is_better("stored_ratio"));
        assert!(higher_is_better("serial_ceiling_threads"));
        assert_eq!(show("serial_ceiling_threads", 30.94049), "30.9 threads");
        assert_eq!(show("projected_16_thread_efficiency", 0.96), "96.0%");
        assert!(higher_is_better("restore_bytes_per_sec"));
        assert!(higher_is_better("replication_efficiency"));
    }

    #[test]
    fn medians_keep_only_figures_every_run_has() {
        let run = |pairs: &[(&str, f64)]| -> BTreeMap<String, f64> {
            pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
        };
        let m = median_figures(&[
            run(&[("a_seconds", 1.0), ("b", 5.0)]),
            run(&[("a_seconds", 3.0)]),
            run(&[("a_seconds", 2.0), ("b", 7.0)]),
        ]);
        assert_eq!(m, run(&[("a_seconds", 2.0)]));
        let even = median_figures(&[run(&[("x", 1.0)]), run(&[("x", 4.0)])]);
        assert_eq!(even["x"], 2.5);
    }
}
