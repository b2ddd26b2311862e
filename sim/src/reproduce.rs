//! The one-line commands that reproduce a run or a swarm seed, as the reports print them and a
//! failing swarm seed writes them beside its scenario: a shell can paste them as they are.

use std::path::Path;

/// `drplane sim run SCENARIO --seed N` (no file: the embedded quickstart; no seed: the
/// scenario's own).
pub fn sim_run_command(scenario: Option<&Path>, seed: Option<u64>) -> String {
    let mut command = "drplane sim run".to_string();
    if let Some(path) = scenario {
        command.push(' ');
        command.push_str(&shell_quote(&path.to_string_lossy()));
    }
    if let Some(seed) = seed {
        command.push_str(&format!(" --seed {seed}"));
    }
    command
}

/// The swarm run of this one seed (how a nondeterminism failure is reproduced: it needs the
/// two runs the swarm compares).
pub fn swarm_seed_command(seed: u64, check_determinism: bool) -> String {
    format!(
        "drplane sim swarm --start {seed} --seeds 1{}",
        if check_determinism {
            " --check-determinism"
        } else {
            ""
        }
    )
}

/// `text` as one shell word: as it is when it holds only characters no shell treats specially,
/// else in single quotes.
pub fn shell_quote(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./:=,+@%".contains(c));
    if plain {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_paste_into_a_shell_as_they_are() {
        assert_eq!(
            sim_run_command(Some(Path::new("scenarios/quickstart.toml")), Some(7)),
            "drplane sim run scenarios/quickstart.toml --seed 7"
        );
        assert_eq!(sim_run_command(None, Some(1)), "drplane sim run --seed 1");
        assert_eq!(sim_run_command(None, None), "drplane sim run");
        assert_eq!(
            sim_run_command(Some(Path::new("my drills/it's.toml")), Some(2)),
            r"drplane sim run 'my drills/it'\''s.toml' --seed 2"
        );
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("$(rm -rf /)"), "'$(rm -rf /)'");
        assert_eq!(
            swarm_seed_command(42, true),
            "drplane sim swarm --start 42 --seeds 1 --check-determinism"
        );
    }
}
