//! Every curl command of the API spec, run as written (curl + jq) by tests/seed_commands.sh
//! against the real daemon, with imports served by a real `git daemon`.

mod common;

use std::process::Command;

use common::{Daemon, GitDaemon, Options};

#[test]
fn api_spec_curl_commands_work_as_written() {
    let repos = tempfile::tempdir().unwrap();
    common::make_repo(repos.path(), "owner", "repo");
    let git = GitDaemon::start(repos.path());
    let d = Daemon::start_with(Options {
        args: vec!["--github-url".into(), git.url.clone()],
        ..Default::default()
    });
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/seed_commands.sh");
    let out = Command::new("bash")
        .arg(script)
        .env("CHASER_API_URL", &d.url)
        .env("CHASER_API_KEY", &d.key)
        .env("CHASER_MOUNT_ROOT", d.mount_root())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the API spec's curl commands failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- daemon\n{}",
        d.log()
    );
    assert!(stdout.contains("seed commands: all passed"), "{stdout}");
}
