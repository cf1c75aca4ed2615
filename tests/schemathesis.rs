//! Schemathesis (from PyPI, installed by scripts/test.sh) against the daemon's own
//! /v1/openapi.json: generated and mutated requests for every operation, including stateful
//! sequences (create, then use the id). Fails on any 5xx, any response outside the document
//! (status, content type, headers, body schema), and any schema-violating request accepted.
//!
//! One check is left out: `positive_data_acceptance` assumes every schema-valid request
//! succeeds, but some rules cannot be said in a schema (an image only for sandbox workspaces,
//! a clone inherits its source's session_type, a cursor must come from the API), and those
//! answer 400 by design.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{Daemon, Options};

fn schemathesis() -> PathBuf {
    let path = std::env::var_os("CHASER_SCHEMATHESIS")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/var/cache/chaserfs/venv/bin/schemathesis".into());
    assert!(
        path.exists(),
        "schemathesis not found at {} (scripts/test.sh installs it; or set CHASER_SCHEMATHESIS)",
        path.display()
    );
    path
}

#[test]
fn schemathesis_finds_no_5xx_and_no_schema_violation() {
    let st = schemathesis();
    // Imports go to a closed local port, not to the internet.
    let d = Daemon::start_with(Options {
        args: vec!["--github-url".into(), "http://127.0.0.1:9".into()],
        ..Default::default()
    });
    // A workspace for operations that need an existing one.
    d.create_workspace("st-base");
    let out = Command::new(st)
        .current_dir(d.dir.path())
        .args(["run", &format!("{}/v1/openapi.json", d.url)])
        .args(["-H", &format!("Authorization: Bearer {}", d.key)])
        .args([
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
        ])
        .args(["--max-examples", "60", "--seed", "1", "--no-color"])
        .env("SCHEMATHESIS_HOOKS", "")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis failed\n{stdout}\n{}\n--- daemon\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.log()
    );
    assert!(stdout.contains("passed"), "{stdout}");
    // Nothing the generated calls did hurt the store.
    let mut d = d;
    assert_eq!(d.stop(), 0);
    let fsck = Command::new(common::bin())
        .args(["fsck", "--data-dir"])
        .arg(d.data_dir())
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "{}",
        String::from_utf8_lossy(&fsck.stdout)
    );
}
