//! The Debian package (`scripts/package.sh`) of this very build: it installs with dpkg into a
//! scratch root with a dpkg database of its own, puts a binary without debug info and the
//! systemd unit in place, and the unit passes `systemd-analyze verify` without a warning.

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
        unit.contains("ExecStart=/usr/bin/chaserfs serve "),
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
}
