//! Markdown summaries of runs and swarms for CI job pages (GitHub's `$GITHUB_STEP_SUMMARY`,
//! GitLab and Buildkite annotations): the verdict first, then tables of disks, jobs and checks
//! (a run) or of failing seeds with their reproductions and every seed in a folded list (a
//! swarm). Cell text is escaped so a name cannot break a table.

use std::fmt::Write as _;

use crate::report::Report;
use crate::swarm::SeedOutcome;

/// `text` safe inside a table cell: pipes and backslashes escaped, line breaks and markup that
/// would start HTML or a code span neutralised.
fn cell(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '|' => out.push_str("\\|"),
            '\\' => out.push_str("\\\\"),
            '\n' | '\r' => out.push(' '),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '`' => out.push('\''),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// `text` as inline code (a reproduction command), with a fence longer than any run of
/// backticks inside.
fn code(text: &str) -> String {
    let longest = text.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat(longest + 1);
    let text = text.replace(['\n', '\r'], " ");
    if text.starts_with('`') || text.ends_with('`') {
        format!("{fence} {text} {fence}")
    } else {
        format!("{fence}{text}{fence}")
    }
}

fn verdict(passed: bool) -> &'static str {
    if passed {
        "✅ passed"
    } else {
        "❌ FAILED"
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1u32 << 20))
}

/// A run: verdict, the run's facts, then disks, jobs and checks.
pub fn run_summary(report: &Report, reproduce: &str, wall_secs: f64) -> String {
    let mut out = String::new();
    let simulated = report.simulated_secs();
    let churn = report.workload_bytes();
    let failed = report.checks.iter().filter(|c| !c.ok).count();
    let _ = writeln!(
        out,
        "### drplane sim: {} — {}\n",
        cell(&report.scenario),
        verdict(report.passed())
    );
    let _ = writeln!(
        out,
        "seed {} · scenario sha256 `{}` · trace `{}` · {} simulated hours, {} events in {wall_secs:.1} s \
         ({:.0}× real time, churn {}/s)\n",
        report.seed,
        &report.scenario_hash[..16.min(report.scenario_hash.len())],
        &report.trace_hash[..16.min(report.trace_hash.len())],
        report.simulated_hours,
        report.events,
        simulated / wall_secs.max(1e-9),
        mib((churn as f64 / wall_secs.max(1e-9)) as u64),
    );
    let _ = writeln!(
        out,
        "| disk | cycles | failed | resyncs | points | verified | sent | max RPO | steady RPO | RPO target |\n\
         |---|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
    );
    for d in &report.disks {
        let _ = writeln!(
            out,
            "| {}/{} | {} | {} | {} | {} | {} | {} | {:.0} s | {:.0} s | {:.0} s |",
            cell(&d.vm),
            cell(&d.disk),
            d.cycles,
            d.failed_cycles,
            d.resyncs,
            d.points_live,
            d.points_verified,
            mib(d.bytes_sent),
            d.max_rpo_secs,
            d.max_steady_rpo_secs,
            d.rpo_target_secs
        );
    }
    if !report.jobs.is_empty() {
        let _ = writeln!(
            out,
            "\n| minute | job | VM | seconds | result | detail |\n|--:|---|---|--:|---|---|"
        );
        for j in &report.jobs {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} |",
                j.started_minute,
                cell(&j.name),
                cell(&j.vm),
                j.seconds,
                if j.succeeded { "✅" } else { "❌" },
                cell(&j.detail)
            );
        }
    }
    let _ = writeln!(
        out,
        "\n**Checks**: {} passed, {failed} failed\n\n| | check | detail |\n|---|---|---|",
        report.checks.len() - failed
    );
    // Failed checks first: the part a reader came for.
    let mut checks: Vec<_> = report.checks.iter().collect();
    checks.sort_by_key(|c| c.ok);
    for c in checks {
        let _ = writeln!(
            out,
            "| {} | {} | {} |",
            if c.ok { "✅" } else { "❌" },
            cell(&c.name),
            cell(&c.detail)
        );
    }
    let _ = writeln!(out, "\nReproduce: {}", code(reproduce));
    out
}

/// A run that could not finish (or start).
pub fn error_summary(scenario: &str, seed: Option<u64>, error: &str, reproduce: &str) -> String {
    format!(
        "### drplane sim: {} — ❌ ERROR\n\nseed {}: {}\n\nReproduce: {}\n",
        cell(scenario),
        seed.map_or("(the scenario's)".into(), |s| s.to_string()),
        cell(error),
        code(reproduce)
    )
}

/// What the swarm summary keeps of each seed (not its whole report).
#[derive(Debug, Clone)]
pub struct SeedRow {
    pub seed: u64,
    pub passed: bool,
    /// Disks, jobs, checks; none when the run could not finish.
    pub counts: Option<(usize, usize, usize)>,
    pub trace_hash: String,
    pub failures: Vec<String>,
    pub reproduce: String,
    pub wall_secs: f64,
}

impl SeedRow {
    pub fn of(outcome: &SeedOutcome, reproduce: String) -> SeedRow {
        let report = outcome.report.as_ref().ok();
        SeedRow {
            seed: outcome.seed,
            passed: outcome.passed(),
            counts: report.map(|r| (r.disks.len(), r.jobs.len(), r.checks.len())),
            trace_hash: report.map_or(String::new(), |r| r.trace_hash.clone()),
            failures: outcome.failures.clone(),
            reproduce,
            wall_secs: outcome.wall_secs,
        }
    }
}

/// A swarm (or one shard of it): verdict, failing seeds with their reproductions, then every
/// seed folded away.
pub fn swarm_summary(rows: &[SeedRow], shard: Option<(u64, u64)>, twice: bool) -> String {
    let mut out = String::new();
    let failed: Vec<&SeedRow> = rows.iter().filter(|r| !r.passed).collect();
    let wall: f64 = rows.iter().map(|r| r.wall_secs).sum();
    let _ = writeln!(
        out,
        "### drplane sim swarm{} — {}\n",
        shard.map_or(String::new(), |(k, n)| format!(", shard {k}/{n}")),
        verdict(failed.is_empty())
    );
    let _ = writeln!(
        out,
        "{} seeds{}, {} failed{}; {wall:.1} s of runs\n",
        rows.len(),
        match (rows.first(), rows.last()) {
            (Some(a), Some(b)) => format!(" ({}–{})", a.seed, b.seed),
            _ => String::new(),
        },
        failed.len(),
        if twice {
            " (each run twice: reports and trace hashes compared)"
        } else {
            ""
        }
    );
    if !failed.is_empty() {
        let _ = writeln!(out, "| seed | why | reproduce |\n|--:|---|---|");
        for r in &failed {
            let _ = writeln!(
                out,
                "| {} | {} | {} |",
                r.seed,
                cell(&r.failures.join("; ")),
                code(&r.reproduce)
            );
        }
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "<details><summary>all {} seeds</summary>\n\n| seed | result | disks | jobs | checks | trace | s |\n|--:|---|--:|--:|--:|---|--:|",
        rows.len()
    );
    for r in rows {
        let (disks, jobs, checks) = r
            .counts
            .map_or(("–".into(), "–".into(), "–".into()), |(d, j, c)| {
                (d.to_string(), j.to_string(), c.to_string())
            });
        let _ = writeln!(
            out,
            "| {} | {} | {disks} | {jobs} | {checks} | `{}` | {:.1} |",
            r.seed,
            if r.passed { "✅" } else { "❌" },
            &r.trace_hash[..16.min(r.trace_hash.len())],
            r.wall_secs
        );
    }
    out.push_str("\n</details>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_and_code_cannot_break_the_table() {
        assert_eq!(cell("a|b\nc\\<x>`"), "a\\|b c\\\\&lt;x&gt;'");
        assert_eq!(
            code("drplane sim run x --seed 1"),
            "`drplane sim run x --seed 1`"
        );
        assert_eq!(code("a `b` c"), "``a `b` c``");
        assert_eq!(code("`x"), "`` `x ``");
    }
}
