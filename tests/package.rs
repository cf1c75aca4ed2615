//! The Debian package (`scripts/package.sh`) of this very build: it installs with dpkg into a
//! scratch root with a dpkg database of its own, puts a binary without debug info, the
//! systemd unit and the config file (a conffile) in place, the unit passes `systemd-analyze
//! verify` without a warning, and the installed binary serves with the shipped config.

mod common;

use std::path::Path;
use std::process::Command;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_package_installs_the_binary_and_a_unit_that_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let deb = run(Command::new("bash")
        .args(["scripts/package.sh", "--bin", common::bin(), "--out"])
        .arg(&out)
        .current_dir(env!("CARGO_MANIFEST_DIR")));
    let deb = Path::new(deb.trim());
    let fields = run(Command::new("dpkg-deb")
        .arg("-f")
        .arg(deb)
        .args(["Package", "Version", "Depends"]));
    assert_eq!(
        fields,
        format!(
            "Package: chaserfs\nVersion: {}\nDepends: libc6, libgcc-s1, libstdc++6\n",
            env!("CARGO_PKG_VERSION")
        )
    );

    // dpkg -i into a scratch root (the host's libraries are not in its database).
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("var/lib/dpkg/updates")).unwrap();
    std::fs::create_dir_all(root.join("var/lib/dpkg/info")).unwrap();
    std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    run(Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args(["--force-depends", "-i"])
        .arg(deb));
    let status = run(Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args(["-s", "chaserfs"]));
    assert!(status.contains("Status: install ok installed"), "{status}");
    assert!(
        status.contains("Conffiles:\n /etc/chaserfs/config.toml "),
        "{status}"
    );
    let bin = root.join("usr/bin/chaserfs");
    let version = run(Command::new(&bin).arg("--version"));
    assert_eq!(
        version.trim(),
        format!("chaserfs {}", env!("CARGO_PKG_VERSION"))
    );
    let installed = std::fs::metadata(&bin).unwrap().len();
    let built = std::fs::metadata(common::bin()).unwrap().len();
    assert!(
        installed < built / 4,
        "debug info left in: {installed} bytes of {built}"
    );

    // The unit as installed, its ExecStart pointed at the installed binary (the host has no
    // /usr/bin/chaserfs): no error and no warning.
    let unit = std::fs::read_to_string(root.join("lib/systemd/system/chaserfs.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/bin/chaserfs serve --config /etc/chaserfs/config.toml\n"),
        "{unit}"
    );
    let check = dir.path().join("chaserfs.service");
    std::fs::write(
        &check,
        unit.replace("/usr/bin/chaserfs", bin.to_str().unwrap()),
    )
    .unwrap();
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&check)
        .output()
        .unwrap();
    assert!(
        verify.status.success() && verify.stderr.is_empty() && verify.stdout.is_empty(),
        "{verify:?}"
    );

    // The shipped config parses and serves; the scratch dirs and port are flags over it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut daemon = Command::new(&bin)
        .args(["serve", "--config"])
        .arg(root.join("etc/chaserfs/config.toml"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--mount-root")
        .arg(dir.path().join("mnt"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/readyz");
    common::wait_until(
        std::time::Duration::from_secs(30),
        "the installed daemon",
        || ureq::get(&url).call().is_ok(),
    );
    daemon.kill().unwrap();
    daemon.wait().unwrap();
}
