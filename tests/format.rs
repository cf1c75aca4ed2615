//! The on-disk format: a data dir written before formats were recorded (by the release before
//! it, `tests/fixtures/datadir-unversioned.tar.gz`) opens and is served as it was; one whose
//! recorded format differs from this build's is refused, naming both, and left as it was.

mod common;

use common::{Daemon, Options};
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;

/// What the fixture's workspace `before-format` held when it was written: this file's bytes.
fn blob() -> Vec<u8> {
    (0..200_000u32).map(|i| ((i * 7 + 3) % 251) as u8).collect()
}

fn extract_fixture(into: &Path) {
    std::fs::create_dir_all(into).unwrap();
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/datadir-unversioned.tar.gz");
    let ok = Command::new("tar")
        .arg("-xzf")
        .arg(&fixture)
        .arg("-C")
        .arg(into)
        .status()
        .unwrap();
    assert!(ok.success());
}

/// The data dir's format record (daemon stopped), replaced by `record` as another build would
/// have written it.
fn swap_format(data_dir: &Path, record: Value) -> Value {
    let mut opts = rocksdb::Options::default();
    opts.create_if_missing(false);
    let db = rocksdb::DB::open_cf(&opts, data_dir, ["default", "chunks", "nodes", "meta"]).unwrap();
    let meta = db.cf_handle("meta").unwrap();
    let found = db
        .get_cf(meta, b"Fformat")
        .unwrap()
        .expect("a format record");
    db.put_cf(meta, b"Fformat", serde_json::to_vec(&record).unwrap())
        .unwrap();
    serde_json::from_slice(&found).unwrap()
}

#[test]
fn a_data_dir_from_before_the_format_record_opens_and_another_format_is_refused() {
    let place = tempfile::tempdir_in("/var/tmp").unwrap();
    let data_dir = place.path().join("data");
    extract_fixture(&data_dir);
    let mut d = Daemon::start_with(Options {
        data_dir: Some(data_dir.clone()),
        ..Options::default()
    });

    // Everything the old release wrote reads back: files, a chunked file, a symlink, a hard
    // link, an xattr, and a snapshot of the state before the last change.
    let (s, snaps) = d.call("GET", "/v1/workspaces/before-format/snapshots", None);
    assert_eq!(s, 200, "{snaps}");
    let snaps = snaps["snapshots"].as_array().unwrap();
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    let body = json!({"workspace": "before-format", "mountpoint": d.mount_root().join("w"), "xattrs": true});
    let (s, session) = d.call("POST", "/v1/sessions", Some(body));
    assert_eq!(s, 201, "{session}");
    let w = d.mount_root().join("w");
    assert_eq!(
        std::fs::read_to_string(w.join("README")).unwrap(),
        "hello from the previous format\n"
    );
    assert_eq!(
        std::fs::read(w.join("src/deep/er/blob.bin")).unwrap(),
        blob()
    );
    assert_eq!(
        std::fs::read_link(w.join("link")).unwrap(),
        Path::new("README")
    );
    assert_eq!(
        std::fs::read_to_string(w.join("hard")).unwrap(),
        std::fs::read_to_string(w.join("README")).unwrap()
    );
    let note = common::python(
        "import os,sys; print(os.getxattr(sys.argv[1], 'user.note').decode())",
        &w.join("README"),
    );
    assert_eq!(note.trim(), "kept");
    // And it takes new writes.
    std::fs::write(w.join("new"), "after").unwrap();
    d.unmount(session["id"].as_str().unwrap());
    let (s, diff) = d.call(
        "GET",
        &format!(
            "/v1/workspaces/before-format/diff?from={}",
            snaps[0]["id"].as_str().unwrap()
        ),
        None,
    );
    assert_eq!(s, 200, "{diff}");
    let changes: Vec<(&str, &str)> = diff["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["path"].as_str().unwrap(), c["change"].as_str().unwrap()))
        .collect();
    assert_eq!(changes, [("/", "modified"), ("/new", "added")], "{diff}");
    assert_eq!(d.stop(), 0);
    common::fsck(&data_dir).unwrap();

    // The first open recorded this build's format. Data dirs of format 1 (the release
    // before the fsync journal), 2 (its journal among the records) and 3 (its journal in a
    // database of its own, entries without bases), 4 (chunks stored whole in RocksDB) and 5
    // (chunk locators with one CRC) open and are stamped 6.
    let v1 = json!({"version": 1, "chunk_size": 65536, "node_encoding": 1, "chunk_codec": 1});
    let v2 = json!({"version": 2, "chunk_size": 65536, "node_encoding": 1, "chunk_codec": 1});
    let v3 = json!({"version": 3, "chunk_size": 65536, "node_encoding": 1, "chunk_codec": 1});
    let v4 = json!({"version": 4, "chunk_size": 65536, "node_encoding": 1, "chunk_codec": 1});
    let v5 = json!({"version": 5, "chunk_size": 65536, "node_encoding": 1, "chunk_codec": 1});
    let v6 = json!({"version": 6, "chunk_size": 65536, "node_encoding": 1, "chunk_codec": 1});
    assert_eq!(swap_format(&data_dir, v1), v6);
    common::fsck(&data_dir).unwrap();
    assert_eq!(swap_format(&data_dir, v2), v6);
    common::fsck(&data_dir).unwrap();
    assert_eq!(swap_format(&data_dir, v3), v6);
    common::fsck(&data_dir).unwrap();
    assert_eq!(swap_format(&data_dir, v4), v6);
    common::fsck(&data_dir).unwrap();
    assert_eq!(swap_format(&data_dir, v5), v6);
    common::fsck(&data_dir).unwrap();

    // A record of another format: the daemon and fsck refuse the data dir, naming both
    // formats, and leave the record as it was.
    let other = json!({"version": 7, "chunk_size": 131072, "node_encoding": 1, "chunk_codec": 1});
    let found = swap_format(&data_dir, other.clone());
    assert_eq!(found, v6, "stamped by the open of format 5");
    let out = Command::new(common::bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data_dir)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{log}");
    assert!(log.contains("on-disk format 7 (chunk size 131072"), "{log}");
    assert!(log.contains("reads format 6 (chunk size 65536"), "{log}");
    let report = common::fsck(&data_dir).unwrap_err();
    assert!(report.contains("on-disk format 7"), "{report}");

    // An unreadable record is refused too.
    assert_eq!(swap_format(&data_dir, json!("chaserfs-next")), other);
    let report = common::fsck(&data_dir).unwrap_err();
    assert!(report.contains("cannot read"), "{report}");
}
