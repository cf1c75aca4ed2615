//! Tar export and import over the real daemon: a 20,000-file tree with modes, owners,
//! nanosecond times, symlinks, hard links, FIFOs and xattrs goes out as tar and tar.zst and
//! comes back identical (compared through real mounts, and byte for byte on re-export);
//! GNU tar reads what chaserfs writes and chaserfs reads what GNU tar writes; bad archives
//! answer 400 and leave nothing behind.

mod common;

use std::path::Path;

use common::{checksum, python, sh, Daemon, Options};
use serde_json::{json, Value};

/// Builds the tree under `root`: 100 directories of 200 entries (files with varied modes,
/// owners and sizes, every 10th a symlink, 4 hard links, every 50th with xattrs), a FIFO,
/// and times set to the nanosecond (directories last): 20,101 paths, 400 of them links.
const MAKE_TREE: &str = r#"
import os, sys
root = sys.argv[1]
for d in range(100):
    dp = os.path.join(root, "dir%03d" % d)
    os.makedirs(dp, exist_ok=True)
    for i in range(200):
        n = d * 200 + i
        p = os.path.join(dp, "file%05d" % n)
        if i % 10 == 9:
            os.symlink("../dir%03d/file%05d" % ((d + 1) % 100, n), p)
            os.utime(p, ns=(1_600_000_000_123_456_789 + n, 1_600_000_000_987_654_321 + n), follow_symlinks=False)
            continue
        if i % 25 == 24:
            os.link(os.path.join(dp, "file%05d" % (n - 1)), p)
            continue
        with open(p, "wb") as f:
            f.write((b"%d " % n) * (n % 700))
        os.chown(p, 1000 + n % 3, 2000 + n % 5)
        os.chmod(p, [0o644, 0o600, 0o755, 0o4755, 0o2711, 0o1777][n % 6])
        if i % 50 == 0:
            os.setxattr(p, "user.origin", b"file %d" % n)
            os.setxattr(p, "user.empty", b"")
        os.utime(p, ns=(1_500_000_000_000_000_001 + n, 1_500_000_000_111_111_111 + n * 7))
os.mkfifo(os.path.join(root, "fifo"), 0o640)
os.chmod(os.path.join(root, "dir007"), 0o750)
for d in range(100):
    os.utime(os.path.join(root, "dir%03d" % d), ns=(1_400_000_000_000_000_000, 1_400_000_000_000_000_000 + d))
"#;

/// One line per path: kind, mode, owner, size, mtime in ns, content hash or link target,
/// xattrs, and which hard-link group it is in (the first path of its inode).
const MANIFEST: &str = r#"
import hashlib, os, stat, sys
root = sys.argv[1]
first = {}
for dirpath, dirs, files in os.walk(root):
    dirs.sort()
    for name in sorted(dirs + files):
        p = os.path.join(dirpath, name)
        st = os.lstat(p)
        rel = os.path.relpath(p, root)
        group = first.setdefault(st.st_ino, rel)
        if stat.S_ISLNK(st.st_mode):
            what = "-> " + os.readlink(p)
        elif stat.S_ISREG(st.st_mode):
            what = hashlib.sha256(open(p, "rb").read()).hexdigest()[:16]
        else:
            what = ""
        xattrs = "" if stat.S_ISLNK(st.st_mode) else ",".join(
            "%s=%r" % (k, os.getxattr(p, k)) for k in sorted(os.listxattr(p)))
        print(rel, oct(st.st_mode), st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns,
              st.st_nlink, what, xattrs, group)
"#;

/// Asserts two manifests are equal, showing the first line that differs.
fn same_tree(got: &str, want: &str, what: &str) {
    let diff = got.lines().zip(want.lines()).find(|(g, w)| g != w);
    assert!(diff.is_none(), "{what}: {diff:?} (got, want)");
    assert_eq!(
        got.lines().count(),
        want.lines().count(),
        "{what}: path counts"
    );
}

fn download(d: &Daemon, path: &str, to: &Path) {
    sh(
        &format!(
            "curl -sSf -H 'Authorization: Bearer {}' -o '{}' '{}{path}'",
            d.key,
            to.display(),
            d.url
        ),
        d.dir.path(),
    );
}

fn upload(d: &Daemon, query: &str, media: &str, from: &Path) -> (u16, Value) {
    let body = std::fs::read(from).unwrap();
    d.call_raw(
        "POST",
        &format!("/v1/workspaces/import?{query}"),
        &[
            ("Authorization", &format!("Bearer {}", d.key)),
            ("Content-Type", media),
        ],
        &body,
    )
}

/// Mounts `workspace` with xattrs served, runs `f` on the mountpoint, ends the session.
fn with_mount<T>(d: &Daemon, workspace: &str, f: impl FnOnce(&Path) -> T) -> T {
    let path = d.mount_root().join(format!("m-{workspace}"));
    let body = json!({"workspace": workspace, "mountpoint": path, "xattrs": true});
    let (s, v) = d.call("POST", "/v1/sessions", Some(body));
    assert_eq!(s, 201, "{v}");
    let out = f(&path);
    d.unmount(v["id"].as_str().unwrap());
    out
}

#[test]
fn twenty_thousand_files_round_trip_through_tar_and_tar_zst() {
    // The operator trusts these archives: setuid and setgid bits are kept (by default an
    // import clears them, see tests/security.rs).
    let d = Daemon::start_with(Options {
        args: vec!["--insecure-suid".into()],
        ..Default::default()
    });
    d.create_workspace("src");
    let original = with_mount(&d, "src", |p| {
        python(MAKE_TREE, p);
        python(MANIFEST, p)
    });
    const PATHS: usize = 20_101;
    const LINKS: usize = 400;
    assert_eq!(original.lines().count(), PATHS, "the tree as made");
    let work = d.dir.path();

    let tar = work.join("src.tar");
    download(&d, "/v1/workspaces/src/archive", &tar);
    // GNU tar reads it: every path, the hard links as links, the xattrs.
    let listing = sh(
        &format!("tar --xattrs -tvf '{}' | wc -l", tar.display()),
        work,
    );
    assert_eq!(
        listing.trim(),
        (PATHS + 1).to_string(),
        "every path and the root"
    );
    let links = sh(
        &format!("tar -tvf '{}' | grep -c ' link to '", tar.display()),
        work,
    );
    assert_eq!(links.trim(), LINKS.to_string());

    for (name, media, file) in [
        ("copy", "application/x-tar", tar.clone()),
        ("copy-zst", "application/zstd", work.join("src.tar.zst")),
    ] {
        if media == "application/zstd" {
            download(&d, "/v1/workspaces/src/archive?format=tar.zst", &file);
            let plain = sh(&format!("zstd -dc '{}' | md5sum", file.display()), work);
            assert_eq!(plain, sh(&format!("md5sum < '{}'", tar.display()), work));
        }
        let (s, v) = upload(&d, &format!("name={name}"), media, &file);
        assert_eq!(s, 201, "{v}");
        assert_eq!(v["status"], "ready");
        // Inodes: every path but the links, and the root.
        assert_eq!(v["persistence"]["files"], PATHS - LINKS + 1, "{v}");
        let copied = with_mount(&d, name, |p| python(MANIFEST, p));
        same_tree(&copied, &original, name);
        // And out again: the same bytes.
        let again = work.join(format!("{name}.tar"));
        download(&d, &format!("/v1/workspaces/{name}/archive"), &again);
        assert!(
            std::fs::read(&again).unwrap() == std::fs::read(&tar).unwrap(),
            "re-export of {name} differs"
        );
    }

    // GNU tar's own archive of the tree (PAX xattrs) imports to the same tree.
    let gnu = work.join("gnu.tar");
    with_mount(&d, "src", |p| {
        sh(
            &format!(
                "tar --xattrs --xattrs-include='*' --format=pax -cf '{}' .",
                gnu.display()
            ),
            p,
        )
    });
    let (s, v) = upload(&d, "name=from-gnu", "application/x-tar", &gnu);
    assert_eq!(s, 201, "{v}");
    let from_gnu = with_mount(&d, "from-gnu", |p| python(MANIFEST, p));
    same_tree(&from_gnu, &original, "GNU tar's archive");
}

#[test]
fn snapshots_export_and_bad_archives_leave_nothing() {
    let d = Daemon::start();
    d.create_workspace("w");
    with_mount(&d, "w", |p| std::fs::write(p.join("a"), "one").unwrap());
    let (s, v) = d.call(
        "POST",
        "/v1/workspaces/w/snapshots",
        Some(json!({"name": "v1"})),
    );
    assert_eq!(s, 201, "{v}");
    with_mount(&d, "w", |p| std::fs::write(p.join("a"), "two!").unwrap());
    let work = d.dir.path();
    for (query, content) in [("", "two!"), ("?snapshot=v1", "one")] {
        let file = work.join("w.tar");
        download(&d, &format!("/v1/workspaces/w/archive{query}"), &file);
        let a = sh(&format!("tar -xOf '{}' a", file.display()), work);
        assert_eq!(a, content, "{query}");
    }
    // The download is named after the workspace (and snapshot).
    let head = sh(
        &format!(
            "curl -sSf -D - -o /dev/null -H 'Authorization: Bearer {}' '{}/v1/workspaces/w/archive?snapshot=v1&format=tar.zst'",
            d.key, d.url
        ),
        work,
    );
    assert!(head.contains("content-type: application/zstd"), "{head}");
    assert!(head.contains("filename=\"w-v1.tar.zst\""), "{head}");

    let auth = format!("Bearer {}", d.key);
    let get = |path: &str| d.call_raw("GET", path, &[("Authorization", &auth)], b"");
    assert_eq!(get("/v1/workspaces/w/archive?format=zip").0, 400);
    assert_eq!(get("/v1/workspaces/w/archive?snapshot=nope").0, 404);
    assert_eq!(get("/v1/workspaces/nope/archive").0, 404);

    let before = d.call("GET", "/v1/workspaces", None).1["workspaces"].clone();
    let bad = |query: &str, media: &str, body: &[u8]| {
        let (s, v) = d.call_raw(
            "POST",
            &format!("/v1/workspaces/import?{query}"),
            &[("Authorization", &auth), ("Content-Type", media)],
            body,
        );
        (
            s,
            v["error"]["code"].as_str().unwrap_or_default().to_string(),
        )
    };
    // Garbage, a path escaping with `..`, a hard link to nothing, zstd that is not zstd.
    assert_eq!(
        bad("", "application/x-tar", &[7u8; 1500]),
        (400, "invalid_archive".into())
    );
    // Archives no tar tool would write, made with Python's tarfile.
    let made = |name: &str, entry: &str| {
        let path = work.join(name);
        let script = format!(
            "import io, tarfile, sys\nt = tarfile.open(sys.argv[1], 'w')\n{entry}\nt.close()"
        );
        python(&script, &path);
        std::fs::read(path).unwrap()
    };
    let evil = made(
        "evil.tar",
        "i = tarfile.TarInfo('../../etc/f'); i.size = 1; t.addfile(i, io.BytesIO(b'x'))",
    );
    assert_eq!(
        bad("", "application/x-tar", &evil),
        (400, "invalid_archive".into())
    );
    let dangling = made(
        "dangling.tar",
        "i = tarfile.TarInfo('g'); i.type = tarfile.LNKTYPE; i.linkname = 'missing'; t.addfile(i)",
    );
    assert_eq!(
        bad("", "application/x-tar", &dangling),
        (400, "invalid_archive".into())
    );
    assert_eq!(
        bad("", "application/zstd", b"not zstd at all"),
        (400, "invalid_archive".into())
    );
    assert_eq!(
        bad("name=w", "application/x-tar", b""),
        (409, "workspace_name_taken".into())
    );
    assert_eq!(
        bad("colour=red", "application/x-tar", b""),
        (400, "invalid_query".into())
    );
    assert_eq!(
        d.call("GET", "/v1/workspaces", None).1["workspaces"],
        before,
        "a refused import left a workspace"
    );
    // An empty archive is an empty workspace.
    let (s, v) = d.call_raw(
        "POST",
        "/v1/workspaces/import",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/x-tar"),
        ],
        &[0u8; 1024],
    );
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["persistence"]["files"], 1);
}

/// Sparse files from GNU tar, in its own format and in PAX format 1.0, come in whole and stay
/// sparse; a sparse format that is not taken is refused, never skipped.
#[test]
fn sparse_files_import_as_sparse_files() {
    let d = Daemon::start();
    let work = d.dir.path();
    sh(
        "truncate -s 1G sparse && printf middle | dd of=sparse bs=1 seek=314572800 conv=notrunc status=none \
         && printf end | dd of=sparse bs=1 seek=1073741821 conv=notrunc status=none \
         && tar --sparse -cf gnu.tar sparse \
         && tar --sparse --format=posix --sparse-version=1.0 -cf pax.tar sparse \
         && tar --sparse --format=posix --sparse-version=0.1 -cf old.tar sparse",
        work,
    );
    let want = checksum(&work.join("sparse"));
    let empty = d.data_bytes();
    for (name, file) in [("gnu", "gnu.tar"), ("pax", "pax.tar")] {
        let (s, v) = upload(
            &d,
            &format!("name={name}"),
            "application/x-tar",
            &work.join(file),
        );
        assert_eq!(s, 201, "{name}: {v}");
        with_mount(&d, name, |m| {
            assert_eq!(std::fs::metadata(m.join("sparse")).unwrap().len(), 1 << 30);
            assert_eq!(checksum(&m.join("sparse")), want, "{name}");
        });
    }
    let grew = d.data_bytes().saturating_sub(empty);
    assert!(grew < 64 << 20, "two 1 GiB sparse files took {grew} bytes");
    let (s, v) = upload(&d, "name=old", "application/x-tar", &work.join("old.tar"));
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("invalid_archive")),
        "{v}"
    );
    assert!(
        v["error"]["message"].as_str().unwrap().contains("sparse"),
        "{v}"
    );
}
