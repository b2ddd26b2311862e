//! `drplane sim run` from the command line: a small scenario file passes and reports its trace
//! hash (the same twice); a hostile scenario is refused with one line naming the field.

mod common;

use common::*;

const SMALL: &str = r#"
name = "cli-small"
seed = 3
duration_hours = 1
[policy]
copy_frequency_secs = 300
[[vm]]
name = "vm"
[[vm.disk]]
name = "os"
size_mib = 4
churn_mib_per_hour = 6
[[step]]
action = "test_failover"
at_minutes = 30
vm = "vm"
[[step]]
action = "cleanup_test_failover"
at_minutes = 40
vm = "vm"
"#;

#[test]
fn a_scenario_runs_reproducibly_and_a_hostile_one_is_refused() {
    let dir = temp_dir();
    let file = file_in(dir.path(), "small.toml");
    std::fs::write(&file, SMALL).unwrap();
    let run = || {
        let out = run_ok(drplane().args(["sim", "run", path_str(&file), "--json"]));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let (a, b) = (run(), run());
    assert_eq!(a["trace_hash"], b["trace_hash"]);
    assert!(
        a["checks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["ok"] == true),
        "{a}"
    );
    // register, test failover, cleanup.
    assert_eq!(a["jobs"].as_array().unwrap().len(), 3);

    std::fs::write(&file, SMALL.replace("size_mib = 4", "size_mib = 99999999")).unwrap();
    let out = drplane()
        .args(["sim", "run", path_str(&file)])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("vm[0].disk[0].size_mib"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}
