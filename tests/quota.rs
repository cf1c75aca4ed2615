//! Workspace quotas over a real mount: bytes and inodes, EDQUOT, `df` inside the session,
//! changed live through the API and the CLI, inherited by clones; names, symlink targets
//! and xattrs count against the bytes quota.

mod common;

use std::path::Path;

use common::{python, sh, write_synced, Daemon};
use serde_json::json;

fn df(mnt: &Path, fields: &str) -> Vec<u64> {
    sh(
        &format!("df -B1 --output={fields} {} | tail -1", mnt.display()),
        Path::new("/"),
    )
    .split_whitespace()
    .map(|n| n.parse().unwrap())
    .collect()
}

#[test]
fn quotas_limit_bytes_and_inodes_show_in_df_and_pass_to_clones() {
    let d = Daemon::start();
    let (s, w) = d.call(
        "POST",
        "/v1/workspaces",
        Some(json!({"session_type": "sandbox", "name": "q",
                    "quota": {"bytes": 10 << 20, "inodes": 50}})),
    );
    assert_eq!(s, 201, "{w}");
    assert_eq!(w["quota"], json!({"bytes": 10 << 20, "inodes": 50}));
    let (sid, mnt) = d.mount("q", "q");

    // df tells the truth: the quota is the filesystem's size.
    let [size, avail] = df(&mnt, "size,avail")[..] else {
        panic!()
    };
    assert_eq!(size, 10 << 20);
    assert!(avail <= 10 << 20 && avail > 9 << 20, "avail {avail}");
    let [itotal, iavail] = df(&mnt, "itotal,iavail")[..] else {
        panic!()
    };
    assert_eq!((itotal, iavail), (50, 49));

    // Bytes: 8 MiB fit, 4 MiB more do not.
    write_synced(&mnt.join("a"), &vec![1u8; 8 << 20]).unwrap();
    let e = write_synced(&mnt.join("b"), &vec![2u8; 4 << 20]).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EDQUOT), "{e}");
    let e = std::fs::OpenOptions::new()
        .write(true)
        .open(mnt.join("a"))
        .unwrap()
        .set_len(20 << 20)
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EDQUOT), "truncate up: {e}");
    let avail = df(&mnt, "avail")[0];
    assert!(avail <= 2 << 20, "df still shows {avail} bytes free");
    // Overwriting and shrinking stay allowed.
    write_synced(&mnt.join("a"), &vec![3u8; 1 << 20]).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(mnt.join("b"))
        .unwrap()
        .set_len(0)
        .unwrap();

    // Inodes: 50 in all, the root directory and `a`/`b` among them.
    let used = df(&mnt, "iused")[0];
    let mut made = 0;
    let err = loop {
        match std::fs::File::create(mnt.join(format!("f{made}"))) {
            Ok(_) => made += 1,
            Err(e) => break e,
        }
        assert!(made < 100, "the inode quota is not enforced");
    };
    assert_eq!(err.raw_os_error(), Some(libc::EDQUOT), "{err}");
    assert_eq!(used + made, 50);
    let e = std::fs::create_dir(mnt.join("dir")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EDQUOT));
    // Deleting frees inodes again: once the kernel forgets the unlinked inode (its FORGET
    // comes asynchronously, after unlink returns; until then the inode counts, as an open
    // unlinked file does).
    std::fs::remove_file(mnt.join("f0")).unwrap();
    common::wait_until(
        std::time::Duration::from_secs(10),
        "the deleted file's inode to be free",
        || std::fs::create_dir(mnt.join("dir")).is_ok(),
    );

    // An operator sees it: the workspace at its inode quota, and the EDQUOT answers by op.
    let near_quota_and_edquot = |text: &str| {
        let value = |prefix: &str| -> f64 {
            text.lines()
                .filter(|l| l.starts_with(prefix))
                .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
                .sum()
        };
        value("chaserfs_workspaces_near_quota ") == 1.0
            && value("chaserfs_fuse_errors_total{op=\"mknod\",errno=\"EDQUOT\"}") >= 1.0
            && value("chaserfs_fuse_errors_total{op=\"mkdir\",errno=\"EDQUOT\"}") >= 1.0
    };
    common::wait_until(
        std::time::Duration::from_secs(30),
        "the quota gauge and EDQUOT counters",
        || near_quota_and_edquot(&d.metrics()),
    );

    // Raised through the API while mounted: enforced at once.
    let (s, w) = d.call(
        "PUT",
        "/v1/workspaces/q/quota",
        Some(json!({"bytes": 64 << 20, "inodes": null})),
    );
    assert_eq!(s, 200, "{w}");
    assert_eq!(w["quota"], json!({"bytes": 64 << 20, "inodes": null}));
    write_synced(&mnt.join("b"), &vec![2u8; 20 << 20]).unwrap();
    std::fs::File::create(mnt.join("one-more")).unwrap();
    assert_eq!(df(&mnt, "size")[0], 64 << 20);

    // Bad bodies are refused and change nothing.
    for bad in [
        json!({"bytes": -1}),
        json!({"bytes": "1G"}),
        json!({"files": 3}),
        json!({"inodes": 9223372036854775808u64}),
        json!([null, null]),
    ] {
        let (s, e) = d.call("PUT", "/v1/workspaces/q/quota", Some(bad.clone()));
        assert_eq!(
            (s, e["error"]["code"].as_str()),
            (400, Some("invalid_body")),
            "{bad}"
        );
    }
    d.unmount(&sid);

    // A clone inherits the quota, unless it names its own.
    let (s, c) = d.call(
        "POST",
        "/v1/workspaces",
        Some(json!({"clone_from": "q", "name": "c"})),
    );
    assert_eq!(s, 201, "{c}");
    assert_eq!(c["quota"], json!({"bytes": 64 << 20, "inodes": null}));
    let (s, c2) = d.call(
        "POST",
        "/v1/workspaces",
        Some(json!({"clone_from": "q", "quota": {"inodes": 10}})),
    );
    assert_eq!(s, 201, "{c2}");
    assert_eq!(c2["quota"], json!({"bytes": null, "inodes": 10}));
    let (sid, mnt) = d.mount("c", "c");
    assert_eq!(df(&mnt, "size")[0], 64 << 20);
    let e = write_synced(&mnt.join("big"), &vec![4u8; 60 << 20]).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EDQUOT), "{e}");
    d.unmount(&sid);

    // The CLI sets and clears it.
    let out = std::process::Command::new(common::bin())
        .args(["workspaces", "quota", "c", "--quota-inodes", "7", "--json"])
        .env("CHASER_API_URL", &d.url)
        .env("CHASER_API_KEY", &d.key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["quota"], json!({"bytes": null, "inodes": 7}));
    let (_, openapi) = d.call("GET", "/v1/openapi.json", None);
    assert!(openapi["paths"]["/v1/workspaces/{workspace}/quota"]["put"].is_object());
}

/// Stores data in everything but file contents until EDQUOT: 64 KiB xattrs, 4,000-byte
/// symlink targets, hard links with 250-byte names. Prints how many of each fit (-1: none
/// was refused).
const FILL_METADATA: &str = r#"
import errno, os, sys
d = sys.argv[1]
def until_edquot(make, cap):
    for n in range(cap):
        try:
            make(n)
        except OSError as e:
            if e.errno == errno.EDQUOT:
                return n
            raise
    return -1
f = os.path.join(d, "f")
open(f, "w").close()
x = until_edquot(lambda n: os.setxattr(f, "user.x%d" % n, b"v" * 65536), 100)
for n in range(max(x, 0)):
    os.removexattr(f, "user.x%d" % n)
s = until_edquot(lambda n: os.symlink("t" * 4000, os.path.join(d, "s%d" % n)), 1000)
for n in range(max(s, 0)):
    os.unlink(os.path.join(d, "s%d" % n))
l = until_edquot(lambda n: os.link(f, os.path.join(d, "%0250d" % n)), 10000)
for n in range(max(l, 0)):
    os.unlink(os.path.join(d, "%0250d" % n))
print(x, s, l)
"#;

#[test]
fn names_symlink_targets_and_xattrs_count_against_the_bytes_quota() {
    let d = Daemon::start();
    let (s, w) = d.call(
        "POST",
        "/v1/workspaces",
        Some(json!({"session_type": "sandbox", "name": "m", "quota": {"bytes": 1 << 20}})),
    );
    assert_eq!(s, 201, "{w}");
    let path = d.mount_root().join("m");
    let body = json!({"workspace": "m", "mountpoint": path, "xattrs": true});
    let (s, v) = d.call("POST", "/v1/sessions", Some(body));
    assert_eq!(s, 201, "{v}");
    let out = python(FILL_METADATA, &path);
    let fit: Vec<i64> = out.split_whitespace().map(|n| n.parse().unwrap()).collect();
    // 1 MiB holds 15 xattrs of 64 KiB, 262 symlinks of 4,000 bytes (their names too), and
    // 4,194 names of 250 bytes.
    assert!((14..=15).contains(&fit[0]), "xattrs that fit: {out}");
    assert!((250..=262).contains(&fit[1]), "symlinks that fit: {out}");
    assert!(
        (4000..=4194).contains(&fit[2]),
        "hard links that fit: {out}"
    );
    d.unmount(v["id"].as_str().unwrap());
    // Everything but `f` was removed again, and the count says so: its one-byte name.
    let (_, w) = d.call("GET", "/v1/workspaces/m", None);
    assert_eq!(w["persistence"]["metadata_bytes"], 1, "{w}");
    assert_eq!(w["persistence"]["logical_bytes"], 0, "{w}");
}
