//! Hostile request bodies and archives, generated and mutated by proptest, through the real
//! router, service and RocksDB store (in process: no network, no mounts). Every answer must be
//! a success or a 4xx JSON error with a code: never a panic, never a 5xx.
//!
//! Cases per property: 256 here; `PROPTEST_CASES=N` for a longer run.

use axum::body::Body;
use axum::http::Request;
use chaserfs_service::accounts::Accounts;
use chaserfs_service::service::{Config, Service, Trust};
use proptest::prelude::*;
use serde_json::Value;
use tower::ServiceExt;

const KEY: &str = "fuzz-key";

struct Api {
    _dir: tempfile::TempDir,
    router: axum::Router,
    rt: tokio::runtime::Runtime,
}

impl Api {
    fn new() -> Api {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        let store = chaserfs_engine::Store::open(&data).unwrap();
        let config = Config {
            data_dir: data.canonicalize().unwrap(),
            mount_root: mnt.canonicalize().unwrap(),
            commit_interval: std::time::Duration::from_secs(5),
            // Nothing listens there: a GitHub import fails at once.
            github_url: "http://127.0.0.1:9".into(),
            accounts: Accounts::default(),
            host: None,
            trust: Trust::default(),
            import_max_bytes: 64 << 20,
            max_archive_streams: 16,
        };
        let svc = Service::new(
            store,
            config,
            vec![("fuzz".into(), blake3::hash(KEY.as_bytes()))],
        )
        .unwrap();
        let router = chaserfs_http::router(svc);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let api = Api {
            _dir: dir,
            router,
            rt,
        };
        // Something for the paths to name (`r` is renamed away).
        for name in ["w", "r"] {
            let body = format!(r#"{{"session_type":"sandbox","name":"{name}"}}"#);
            let (s, v) = api.call(
                "POST",
                "/v1/workspaces",
                "application/json",
                body.into_bytes(),
            );
            assert_eq!(s, 201, "{v}");
        }
        let (s, v) = api.call(
            "POST",
            "/v1/workspaces/w/snapshots",
            "application/json",
            br#"{"name":"s"}"#.to_vec(),
        );
        assert_eq!(s, 201, "{v}");
        api
    }

    fn call(&self, method: &str, path: &str, media: &str, body: Vec<u8>) -> (u16, Value) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("Authorization", format!("Bearer {KEY}"))
            .header("Content-Type", media)
            .body(Body::from(body))
            .unwrap();
        self.rt.block_on(async {
            let resp = self.router.clone().oneshot(req).await.unwrap();
            let status = resp.status().as_u16();
            let bytes = axum::body::to_bytes(resp.into_body(), 16 << 20)
                .await
                .unwrap();
            let v = serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
            (status, v)
        })
    }

    /// (status, the body's bytes, or `None` if the body broke off midway).
    fn call_raw(&self, method: &str, path: &str) -> (u16, Option<Vec<u8>>) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("Authorization", format!("Bearer {KEY}"))
            .body(Body::empty())
            .unwrap();
        self.rt.block_on(async {
            let resp = self.router.clone().oneshot(req).await.unwrap();
            let status = resp.status().as_u16();
            let bytes = axum::body::to_bytes(resp.into_body(), 16 << 20).await;
            (status, bytes.ok().map(|b| b.to_vec()))
        })
    }

    /// A success, or a client error that says what was wrong: never a server error.
    fn check(&self, what: &str, (status, v): (u16, Value)) -> Result<(), TestCaseError> {
        prop_assert!(status < 500, "{what}: {status} {v}");
        if status >= 400 {
            prop_assert!(v["error"]["code"].is_string(), "{what}: {status} {v}");
        } else {
            prop_assert!(v.is_object(), "{what}: {status} {v}");
        }
        Ok(())
    }
}

/// Field names the API knows, and a few it does not, so generated objects reach past parsing.
fn field() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "session_type", "name", "image", "template", "quota", "bytes", "inodes",
            "clone_from", "count", "force", "workspace_ids", "github_repo", "snapshot", "xattrs",
        ]).prop_map(String::from),
        1 => "[a-z_]{0,12}",
        1 => any::<String>(),
    ]
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "sandbox", "browser", "w", "s", "current", "w-1", "", " ", ".", "..", "import",
            "bulk-delete", "a/b", "owner/repo", "ubuntu:22.04", "\u{0}", "W", "\u{130}",
        ]).prop_map(String::from),
        3 => "[a-z][a-z0-9-]{0,20}",
        2 => any::<String>(),
        1 => "[a-zA-Z0-9._/-]{60,80}",
    ]
}

fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (0u64..200).prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        text().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::vec((field(), inner), 0..8)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// Routes that take a JSON body (sessions, which mount, are left to tests/security.rs), each
/// with a body of the shape it accepts.
fn route() -> impl Strategy<Value = (&'static str, &'static str, Value)> {
    use serde_json::json;
    let limit = prop_oneof![4 => (0u64..1 << 40).prop_map(Some), 1 => Just(None), 1 => any::<u64>().prop_map(Some)];
    let quota = (limit.clone(), limit)
        .prop_map(|(bytes, inodes)| json!({"bytes": bytes, "inodes": inodes}));
    let kind = prop::sample::select(vec!["sandbox", "browser", "other"]);
    prop_oneof![
        (kind, text(), quota.clone(), any::<bool>()).prop_map(|(k, name, quota, template)| (
            "POST",
            "/v1/workspaces",
            json!({"session_type": k, "name": name, "quota": quota, "template": template})
        )),
        (text(), text()).prop_map(|(from, name)| (
            "POST",
            "/v1/workspaces",
            json!({"clone_from": from, "name": name})
        )),
        (0u64..120, text(), quota.clone()).prop_map(|(count, name, quota)| (
            "POST",
            "/v1/workspaces/w/clone",
            json!({"count": count, "name": name, "quota": quota})
        )),
        text().prop_map(|n| ("PUT", "/v1/workspaces/r/name", json!({ "name": n }))),
        any::<bool>().prop_map(|t| ("PUT", "/v1/workspaces/w/template", json!({ "template": t }))),
        quota.prop_map(|q| ("PUT", "/v1/workspaces/w/quota", q)),
        (text(), any::<bool>()).prop_map(|(n, force)| (
            "POST",
            "/v1/workspaces/w/snapshots",
            json!({"name": n, "force": force})
        )),
        any::<bool>().prop_map(|force| (
            "POST",
            "/v1/workspaces/w/snapshots/s/restore",
            json!({ "force": force })
        )),
        prop::collection::vec(text(), 0..4).prop_map(|ids| (
            "POST",
            "/v1/workspaces/bulk-delete",
            json!({"workspace_ids": ids, "force": false})
        )),
        (text(), text()).prop_map(|(repo, name)| (
            "POST",
            "/v1/workspaces/import",
            json!({"github_repo": repo, "name": name})
        )),
    ]
}

/// A body as sent: the route's own shape, or with a field's value replaced by anything, or
/// a field added, or generated JSON of any shape, or cut short, or not JSON at all.
fn body(shaped: Value) -> impl Strategy<Value = Vec<u8>> {
    let fields: Vec<String> = shaped
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    let base = shaped.clone();
    let replaced = (prop::sample::select(fields), json()).prop_map(move |(k, v)| {
        let mut b = base.clone();
        b[k.as_str()] = v;
        b
    });
    let base = shaped.clone();
    let added = (field(), json()).prop_map(move |(k, v)| {
        let mut b = base.clone();
        b[k.as_str()] = v;
        b
    });
    prop_oneof![
        4 => Just(shaped),
        2 => replaced,
        1 => added,
        1 => json(),
    ]
    .prop_flat_map(|v| {
        let bytes = serde_json::to_vec(&v).unwrap();
        let n = bytes.len();
        prop_oneof![
            8 => Just(bytes.clone()),
            1 => (0..=n).prop_map(move |cut| bytes[..cut].to_vec()),
            1 => prop::collection::vec(any::<u8>(), 0..256),
        ]
    })
}

fn cases(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

#[test]
fn json_bodies_never_break_the_api() {
    let api = Api::new();
    let seen = Statuses::default();
    let cases_ = (route()).prop_flat_map(|(m, p, shaped)| (Just(m), Just(p), body(shaped)));
    proptest!(cases(256), |((method, path, body) in cases_)| {
        let answer = api.call(method, path, "application/json", body);
        seen.add(answer.0);
        api.check(&format!("{method} {path}"), answer)?;
    });
    eprintln!("answers: {}", seen.show());
    // The service still answers, and its records still list.
    let (s, v) = api.call(
        "GET",
        "/v1/workspaces?limit=1000",
        "application/json",
        Vec::new(),
    );
    assert_eq!(s, 200, "{v}");
    // GitHub imports (to a closed port) mount while git runs: let them finish, so no mount
    // outlives the test process.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let path = "/v1/workspaces?status=importing";
        let (_, v) = api.call("GET", path, "application/json", Vec::new());
        if v["workspaces"].as_array().is_some_and(|w| w.is_empty()) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "imports still running: {v}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// A header with its owner and time set (the tar crate leaves them blank).
fn header(ustar: bool) -> tar::Header {
    let mut h = if ustar {
        tar::Header::new_ustar()
    } else {
        tar::Header::new_gnu()
    };
    h.set_uid(1000);
    h.set_gid(1000);
    h.set_mtime(1_700_000_000);
    h.set_mode(0o644);
    h
}

/// A small archive with every kind of entry an import handles.
fn base_tar() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = header(false);
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o755);
    h.set_size(0);
    b.append_data(&mut h, "dir/", std::io::empty()).unwrap();
    let mut h = header(false);
    h.set_mode(0o644);
    h.set_size(11);
    b.append_data(&mut h, "dir/file.txt", &b"hello world"[..])
        .unwrap();
    let long = format!("dir/{}/leaf", "long".repeat(40));
    let mut h = header(false);
    h.set_mode(0o600);
    h.set_size(3);
    b.append_data(&mut h, &long, &b"abc"[..]).unwrap();
    let mut h = header(false);
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, "dir/link", "file.txt").unwrap();
    let mut h = header(false);
    h.set_entry_type(tar::EntryType::Link);
    h.set_size(0);
    b.append_link(&mut h, "dir/hard", "dir/file.txt").unwrap();
    b.append_pax_extensions([("SCHILY.xattr.user.note", &b"v"[..])])
        .unwrap();
    let mut h = header(true);
    h.set_mode(0o4755);
    h.set_size(2);
    b.append_data(&mut h, "dir/setuid", &b"#!"[..]).unwrap();
    b.into_inner().unwrap()
}

fn zstd(data: &[u8]) -> Vec<u8> {
    ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
}

/// The base archive with bytes flipped, cut, or spliced: mostly in headers, where the parser
/// works.
fn mutated(base: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let len = base.len();
    let edit = prop_oneof![
        4 => (0..len, any::<u8>()).prop_map(|(at, b)| (at, Some(b), 0usize)),
        1 => (0..len).prop_map(|at| (at, None, 0)),
        1 => (0..len, 1usize..600).prop_map(|(at, n)| (at, None, n)),
    ];
    (prop::collection::vec(edit, 1..12), any::<bool>()).prop_map(move |(edits, fix_sums)| {
        let mut b = base.clone();
        for (at, byte, grow) in edits {
            let at = at.min(b.len().saturating_sub(1));
            match (byte, grow) {
                (Some(v), _) if !b.is_empty() => b[at] = v,
                (None, 0) => b.truncate(at),
                (None, n) => b
                    .splice(at..at, std::iter::repeat_n(b'7', n))
                    .for_each(drop),
                _ => {}
            }
        }
        if fix_sums {
            // Headers (blocks with tar's magic) summed again, so the parser reads their fields.
            for h in b.chunks_exact_mut(512) {
                if &h[257..262] == b"ustar" {
                    h[148..156].fill(b' ');
                    let sum: u32 = h.iter().map(|&x| x as u32).sum();
                    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
                }
            }
        }
        b
    })
}

fn tar_name() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "a", "dir/", "dir/a", "../escape", "/abs", "a/../../b", "./x", "dir/../dir/c",
            "a//b", ".", "..", "dir/a/", "", "link/x",
        ]).prop_map(|s| s.as_bytes().to_vec()),
        1 => prop::collection::vec(any::<u8>(), 0..100),
        1 => "[a-z/.]{1,99}".prop_map(String::into_bytes),
    ]
}

/// One archive entry as raw fields: any type byte, name, link name, mode, declared size,
/// data of any length (not always the declared one), and PAX records before it.
type RawEntry = (
    u8,
    Vec<u8>,
    Vec<u8>,
    u32,
    u64,
    Vec<u8>,
    Vec<(String, String)>,
);

fn raw_entry() -> impl Strategy<Value = RawEntry> {
    let kind = prop_oneof![
        4 => prop::sample::select(b"0125673LKSgxV\0".to_vec()),
        1 => any::<u8>(),
    ];
    let size = prop_oneof![4 => 0u64..2048, 1 => any::<u64>().prop_map(|n| n % (1 << 33))];
    let pax_key = prop_oneof![
        prop::sample::select(vec![
            "path",
            "linkpath",
            "size",
            "uid",
            "gid",
            "mtime",
            "uname",
            "GNU.sparse.major",
            "GNU.sparse.minor",
            "GNU.sparse.name",
            "GNU.sparse.realsize",
            "GNU.sparse.map",
            "GNU.sparse.size",
            "GNU.sparse.numblocks",
            "GNU.sparse.offset",
            "SCHILY.xattr.user.a",
            "SCHILY.xattr.security.capability",
            "SCHILY.xattr.trusted.x",
        ])
        .prop_map(String::from),
        "[A-Za-z.]{0,20}",
    ];
    let pax_value = prop_oneof![
        "[0-9]{0,20}",
        "[0-9,]{0,40}",
        text(),
        Just("../../etc/passwd".to_string()),
    ];
    (
        kind,
        tar_name(),
        tar_name(),
        any::<u32>().prop_map(|m| m & 0o7777),
        size,
        prop::collection::vec(any::<u8>(), 0..1500),
        prop::collection::vec((pax_key, pax_value), 0..4),
    )
}

/// Raw 512-byte blocks with correct checksums, so the parser reads past them.
fn raw_tar(entries: &[RawEntry], trailer: bool) -> Vec<u8> {
    fn block(kind: u8, name: &[u8], link: &[u8], mode: u32, size: u64) -> [u8; 512] {
        let mut h = header(false);
        h.set_mode(mode);
        h.set_size(size);
        let b = h.as_mut_bytes();
        let n = name.len().min(100);
        b[..n].copy_from_slice(&name[..n]);
        b[156] = kind;
        let l = link.len().min(100);
        b[157..157 + l].copy_from_slice(&link[..l]);
        h.set_cksum();
        *h.as_bytes()
    }
    fn pad(out: &mut Vec<u8>) {
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    let mut out = Vec::new();
    for (kind, name, link, mode, size, data, pax) in entries {
        if !pax.is_empty() {
            let mut records = Vec::new();
            for (k, v) in pax {
                let body = format!(" {k}={v}\n");
                let mut len = body.len() + 1;
                while format!("{len}{body}").len() != len {
                    len += 1;
                }
                records.extend_from_slice(format!("{len}{body}").as_bytes());
            }
            out.extend_from_slice(&block(b'x', b"pax", b"", 0o644, records.len() as u64));
            out.extend_from_slice(&records);
            pad(&mut out);
        }
        out.extend_from_slice(&block(*kind, name, link, *mode, *size));
        out.extend_from_slice(data);
        pad(&mut out);
    }
    if trailer {
        out.extend_from_slice(&[0u8; 1024]);
    }
    out
}

#[test]
fn archives_never_break_the_import() {
    let api = Api::new();
    let base = base_tar();
    let (s, v) = api.call(
        "POST",
        "/v1/workspaces/import",
        "application/x-tar",
        base.clone(),
    );
    assert_eq!(s, 201, "the base archive imports: {v}");
    let seen = Statuses::default();
    let archives = prop_oneof![
        mutated(base.clone()),
        (prop::collection::vec(raw_entry(), 1..6), any::<bool>())
            .prop_map(|(entries, trailer)| raw_tar(&entries, trailer)),
    ];
    proptest!(cases(256), |(tar in archives, zst in any::<bool>(), recompress in any::<bool>())| {
        let (media, body) = match (zst, recompress) {
            (false, _) => ("application/x-tar", tar),
            // A valid zstd stream of a broken tar, or broken zstd of a valid one.
            (true, true) => ("application/zstd", zstd(&tar)),
            (true, false) => {
                let mut z = zstd(&base);
                // Past the magic number, which would end it at once.
                let n = z.len() - 4;
                for (i, b) in tar.iter().take(8).enumerate() {
                    z[4 + (i * 7919) % n] ^= b;
                }
                ("application/zstd", z)
            }
        };
        let (status, v) = api.call("POST", "/v1/workspaces/import", media, body);
        seen.add(status);
        api.check("import", (status, v.clone()))?;
        if status == 201 {
            // What was imported exports again, whole.
            let id = v["id"].as_str().unwrap().to_string();
            let (s, e) = api.call_raw("GET", &format!("/v1/workspaces/{id}/archive"));
            prop_assert_eq!(s, 200);
            prop_assert!(e.is_some(), "the export of {} broke off", id);
            let (s, e) = api.call("DELETE", &format!("/v1/workspaces/{id}"), "", Vec::new());
            prop_assert!(s < 300, "{}", e);
        }
    });
    eprintln!("answers: {}", seen.show());
}

/// How many answers had each status, to show what the cases reached.
#[derive(Default)]
struct Statuses(std::sync::Mutex<std::collections::BTreeMap<u16, u64>>);

impl Statuses {
    fn add(&self, status: u16) {
        *self.0.lock().unwrap().entry(status).or_default() += 1;
    }
    fn show(&self) -> String {
        let m = self.0.lock().unwrap();
        m.iter()
            .map(|(s, n)| format!("{s}×{n}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Found by the fuzzing above: a GNU long-name entry of zeros made the next file's name empty,
/// so the file landed on the root directory, and the import answered 500 `internal_error`;
/// the archive is at fault, so 400.
#[test]
fn an_empty_long_name_is_the_archives_fault() {
    let api = Api::new();
    for trailer in [false, true] {
        let long: RawEntry = (
            b'L',
            b"a".to_vec(),
            b"a".to_vec(),
            0,
            517,
            vec![0; 517],
            vec![],
        );
        let file: RawEntry = (b'0', b"a".to_vec(), b"a".to_vec(), 0, 0, vec![], vec![]);
        let tar = raw_tar(&[long, file], trailer);
        let (s, v) = api.call("POST", "/v1/workspaces/import", "application/x-tar", tar);
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (400, Some("invalid_archive")),
            "{v}"
        );
    }
}

/// Found by the fuzzing above: a name longer than the tar header's field whose first byte is
/// not UTF-8 (Linux names are bytes) imported fine, but its export failed midway, so the
/// workspace could not be exported at all. Long names now travel as PAX records.
#[test]
fn long_names_that_are_not_utf8_export_and_import_again() {
    let api = Api::new();
    let mut long = b"\x80ir/".to_vec();
    long.extend_from_slice(&b"long".repeat(40));
    let mut target = b"\xff".to_vec();
    target.extend_from_slice(&b"t".repeat(150));
    let entries: Vec<RawEntry> = vec![
        (
            b'L',
            b"././@LongLink".to_vec(),
            vec![],
            0o644,
            long.len() as u64,
            long.clone(),
            vec![],
        ),
        (
            b'0',
            b"placeholder".to_vec(),
            vec![],
            0o644,
            3,
            b"abc".to_vec(),
            vec![],
        ),
        (
            b'K',
            b"././@LongLink".to_vec(),
            vec![],
            0o644,
            target.len() as u64,
            target,
            vec![],
        ),
        (
            b'2',
            b"dir2/link".to_vec(),
            b"placeholder".to_vec(),
            0o777,
            0,
            vec![],
            vec![],
        ),
    ];
    let (s, v) = api.call(
        "POST",
        "/v1/workspaces/import",
        "application/x-tar",
        raw_tar(&entries, true),
    );
    assert_eq!(s, 201, "{v}");
    let id = v["id"].as_str().unwrap();
    let (s, exported) = api.call_raw("GET", &format!("/v1/workspaces/{id}/archive"));
    assert_eq!(s, 200);
    let exported = exported.expect("the export completes");
    let (s, again) = api.call(
        "POST",
        "/v1/workspaces/import",
        "application/x-tar",
        exported.clone(),
    );
    assert_eq!(s, 201, "{again}");
    let id = again["id"].as_str().unwrap();
    let (_, twice) = api.call_raw("GET", &format!("/v1/workspaces/{id}/archive"));
    assert_eq!(
        twice.expect("the export completes"),
        exported,
        "export, import, export: same bytes"
    );
}

/// Found by the fuzzing above: a symlink whose PAX `linkpath` held a NUL byte imported, and
/// then its workspace's export broke off. symlink(2) takes a C string: refused at import (400).
#[test]
fn a_symlink_target_with_a_nul_byte_is_refused() {
    let api = Api::new();
    let entries: Vec<RawEntry> = vec![(
        b'2',
        b"a".to_vec(),
        b"a".to_vec(),
        0,
        0,
        vec![],
        vec![("linkpath".into(), "\0".into())],
    )];
    let (s, v) = api.call(
        "POST",
        "/v1/workspaces/import",
        "application/x-tar",
        raw_tar(&entries, true),
    );
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("invalid_archive")),
        "{v}"
    );
}
