//! Workspace quotas over a real mount: bytes and inodes, EDQUOT, `df` inside the session,
//! changed live through the API and the CLI, inherited by clones.

mod common;

use std::path::Path;

use common::{sh, write_synced, Daemon};
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
    // Deleting frees inodes again.
    std::fs::remove_file(mnt.join("f0")).unwrap();
    std::fs::create_dir(mnt.join("dir")).unwrap();

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
