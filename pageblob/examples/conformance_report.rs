//! Run each page-blob conformance check against an endpoint and report which hold — used to
//! record how Azurite (or any other service) differs from Azure's documented behaviour.
//! Usage: cargo run -p pageblob --features testing,client --example conformance_report -- URL [KEY]

use std::panic::{catch_unwind, AssertUnwindSafe};

use pageblob::clock::ManualClock;
use pageblob::conformance as c;
use pageblob::http::client::HttpStore;
use pageblob::http::shared_key::{decode_key, DEV_ACCOUNT, DEV_KEY};
use pageblob::PageBlobStore;

fn main() {
    let url = std::env::args()
        .nth(1)
        .expect("usage: conformance_report URL [KEY]");
    let key = std::env::args()
        .nth(2)
        .unwrap_or_else(|| DEV_KEY.to_string());
    let store = HttpStore::new(&url, DEV_ACCOUNT, &decode_key(&key).expect("base64 key"));
    let clock = ManualClock::new(0);
    let tag = std::process::id();
    type Check = fn(&dyn PageBlobStore, &str);
    let checks: [(&str, Check); 10] = [
        ("incremental_copy", c::incremental_copy),
        ("put_clear_read_and_ranges", c::put_clear_read_and_ranges),
        ("batched_put_pages", c::batched_put_pages),
        ("page_range_paging", c::page_range_paging),
        ("snapshots_and_diffs", c::snapshots_and_diffs),
        ("delete_rules", c::delete_rules),
        (
            "conditions_and_sequence_numbers",
            c::conditions_and_sequence_numbers,
        ),
        ("resize", c::resize),
        ("premium_snapshot_limit", c::premium_snapshot_limit),
        ("containers_and_creation", c::containers_and_creation),
    ];
    std::panic::set_hook(Box::new(|_| {}));
    for (i, (name, check)) in checks.iter().enumerate() {
        let container = format!("conf-{tag}-{i}");
        if *name != "containers_and_creation" && *name != "premium_snapshot_limit" {
            let _ = store.create_container(&container);
        }
        let result = catch_unwind(AssertUnwindSafe(|| check(&store, &container)));
        match result {
            Ok(()) => println!("PASS {name}"),
            Err(e) => {
                let why = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                println!(
                    "FAIL {name}: {}",
                    why.lines().take(3).collect::<Vec<_>>().join(" | ")
                );
            }
        }
    }
    let _ = c::leases;
    let _ = clock;
}
