//! The Workspaces API over real HTTP against the real daemon: every endpoint, rule and error
//! of the API spec, and of clones, list filters and pages, names, templates, snapshots,
//! deletes, bulk deletes, GitHub imports and accounts. Filesystem state is checked through
//! real FUSE mounts.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{sh, Daemon, GitDaemon, Options};
use serde_json::{json, Value};

fn create(d: &Daemon, body: Value) -> (u16, Value) {
    d.call("POST", "/v1/workspaces", Some(body))
}

/// Mounts `ws`, runs `f` on the mount, ends the session.
fn with_mount(d: &Daemon, ws: &str, f: impl FnOnce(&Path)) {
    let sub = format!("m-{}", uuid_like());
    let (session, path) = d.mount(ws, &sub);
    f(&path);
    d.unmount(&session);
}

fn uuid_like() -> String {
    format!("{:x}", rand_u64())
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(Instant::now().elapsed().as_nanos() as u64);
    h.finish()
}

fn assert_error(status: u16, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error"]["code"], want_code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

fn names(d: &Daemon) -> Vec<String> {
    let (s, v) = d.call("GET", "/v1/workspaces?limit=1000", None);
    assert_eq!(s, 200, "{v}");
    v["workspaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap_or("<none>").to_string())
        .collect()
}

#[test]
fn fresh_workspaces_fields_and_selectors() {
    let d = Daemon::start();
    let (s, w) = create(
        &d,
        json!({"session_type": "sandbox", "name": "my-project", "image": "ghcr.io/example/dev:latest"}),
    );
    assert_eq!(s, 201, "{w}");
    for field in [
        "id",
        "name",
        "session_type",
        "status",
        "image",
        "template",
        "active_session_id",
        "last_session_id",
        "persistence",
    ] {
        assert!(w.get(field).is_some(), "missing {field}: {w}");
    }
    assert_eq!(w["status"], "ready");
    assert_eq!(w["template"], false);
    assert_eq!(w["image"], "ghcr.io/example/dev:latest");
    let p = &w["persistence"];
    assert_eq!(p["files"], 1, "{p}");
    assert_eq!(p["logical_bytes"], 0);
    assert_eq!(p["snapshot_count"], 0);
    assert_eq!(p["root_hash"].as_str().unwrap().len(), 64);
    for f in ["last_commit_at", "created_at", "updated_at"] {
        assert!(p[f].as_str().unwrap().ends_with('Z'), "{p}");
    }

    // Auto-generated name; browser workspaces take no image; session_type is required.
    let (s, b) = create(&d, json!({"session_type": "browser"}));
    assert_eq!(s, 201, "{b}");
    assert!(b["name"].as_str().unwrap().starts_with("ws-"), "{b}");
    let (s, e) = create(&d, json!({"session_type": "browser", "image": "x:1"}));
    assert_error(s, &e, 400, "image_not_allowed");
    let (s, e) = create(&d, json!({"name": "no-type"}));
    assert_error(s, &e, 400, "session_type_required");
    let (s, e) = create(&d, json!({"session_type": "desktop"}));
    assert_error(s, &e, 400, "invalid_body");

    // Selectors: name (any case) or id; both answer the same record.
    let id = w["id"].as_str().unwrap();
    for sel in ["my-project", "MY-PROJECT", "My-Project", id] {
        let (s, g) = d.call("GET", &format!("/v1/workspaces/{sel}"), None);
        assert_eq!(s, 200, "{sel}: {g}");
        assert_eq!(g["id"], w["id"]);
    }
    let (s, e) = d.call("GET", "/v1/workspaces/nope", None);
    assert_error(s, &e, 404, "workspace_not_found");

    // Names are unique case-insensitively.
    let (s, e) = create(&d, json!({"session_type": "sandbox", "name": "MY-project"}));
    assert_error(s, &e, 409, "workspace_name_taken");

    // A name that is another workspace's id is ambiguous as a selector.
    let (s, other) = create(&d, json!({"session_type": "sandbox", "name": id}));
    assert_eq!(s, 201, "{other}");
    let (s, e) = d.call("GET", &format!("/v1/workspaces/{id}"), None);
    assert_error(s, &e, 409, "workspace_name_ambiguous");
    // Each is still reachable by a selector that is not ambiguous.
    let (s, g) = d.call("GET", "/v1/workspaces/my-project", None);
    assert_eq!((s, &g["id"]), (200, &w["id"]));
    let other_id = other["id"].as_str().unwrap();
    let (s, g) = d.call("GET", &format!("/v1/workspaces/{other_id}"), None);
    assert_eq!((s, &g["name"]), (200, &json!(id)));
}

/// Warming is for cluster hosts; on a single host, where everything is local, it answers
/// at once and fetches nothing, and selects workspaces like every route.
#[test]
fn warm_on_a_single_host_fetches_nothing() {
    let d = Daemon::start();
    let id = d.create_workspace("warm")["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (s, v) = d.call("POST", "/v1/workspaces/warm/warm", None);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["workspace_id"], id.as_str());
    assert_eq!(
        (&v["cluster"], &v["nodes"], &v["chunks"]),
        (&json!(false), &json!(0), &json!(0))
    );
    let (s, e) = d.call("POST", "/v1/workspaces/other/warm", None);
    assert_error(s, &e, 404, "workspace_not_found");
    let (s, e) = d.call_as(
        "chs_wrong",
        "POST",
        &format!("/v1/workspaces/{id}/warm"),
        None,
    );
    assert_eq!(s, 401, "{e}");
}

#[test]
fn names_set_clear_and_rules() {
    let d = Daemon::start();
    create(&d, json!({"session_type": "sandbox", "name": "alpha"}));
    create(&d, json!({"session_type": "sandbox", "name": "beta"}));
    let put_name = |sel: &str, name: Value| {
        d.call(
            "PUT",
            &format!("/v1/workspaces/{sel}/name"),
            Some(json!({ "name": name })),
        )
    };
    let (s, w) = put_name("alpha", json!("gamma"));
    assert_eq!((s, &w["name"]), (200, &json!("gamma")), "{w}");
    let id = w["id"].as_str().unwrap().to_string();
    let (s, e) = d.call("GET", "/v1/workspaces/alpha", None);
    assert_error(s, &e, 404, "workspace_not_found");
    // Renaming to its own name in another case is fine; to another's name is not.
    let (s, w) = put_name("gamma", json!("GAMMA"));
    assert_eq!((s, &w["name"]), (200, &json!("GAMMA")), "{w}");
    let (s, e) = put_name("GAMMA", json!("Beta"));
    assert_error(s, &e, 409, "workspace_name_taken");
    // Clear: the workspace is then reachable only by id, and the name is free again.
    let (s, w) = put_name("GAMMA", Value::Null);
    assert_eq!((s, &w["name"]), (200, &Value::Null), "{w}");
    let (s, _) = d.call("GET", "/v1/workspaces/gamma", None);
    assert_eq!(s, 404);
    let (s, _) = d.call("GET", &format!("/v1/workspaces/{id}"), None);
    assert_eq!(s, 200);
    let (s, w) = create(&d, json!({"session_type": "sandbox", "name": "gamma"}));
    assert_eq!(s, 201, "{w}");

    // The character rule, on create and on rename; state is unchanged after each refusal.
    let before = names(&d);
    let long = "x".repeat(65);
    for bad in [
        "",
        " ",
        "\t",
        " lead",
        "trail ",
        "a/b",
        "tab\tin",
        "nl\n",
        "nul\u{0}",
        "del\u{7f}",
        ".",
        "..",
        &long,
    ] {
        let (s, e) = create(&d, json!({"session_type": "sandbox", "name": bad}));
        assert_error(s, &e, 400, "invalid_name");
        let (s, e) = put_name("beta", json!(bad));
        assert_error(s, &e, 400, "invalid_name");
    }
    for reserved in ["import", "Bulk-Delete"] {
        let (s, e) = create(&d, json!({"session_type": "sandbox", "name": reserved}));
        assert_error(s, &e, 400, "name_reserved");
    }
    assert_eq!(names(&d), before);
    // 64 characters, spaces inside, Unicode: all fine, and usable as selectors (encoded).
    for good in ["y".repeat(64), "my project".into(), "Ünïcødé-名前".into()] {
        let (s, w) = create(&d, json!({"session_type": "sandbox", "name": good}));
        assert_eq!(s, 201, "{good}: {w}");
        let enc: String = good
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b == b'-' {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let (s, g) = d.call("GET", &format!("/v1/workspaces/{enc}"), None);
        assert_eq!((s, &g["id"]), (200, &w["id"]), "{good}");
    }
    // Case-insensitive beyond ASCII.
    let (s, e) = create(
        &d,
        json!({"session_type": "sandbox", "name": "ÜNÏCØDÉ-名前"}),
    );
    assert_error(s, &e, 409, "workspace_name_taken");
}

#[test]
fn clones_templates_and_listing() {
    let d = Daemon::start();
    let (_, src) = create(
        &d,
        json!({"session_type": "sandbox", "name": "base", "image": "img:1"}),
    );
    with_mount(&d, "base", |m| {
        std::fs::write(m.join("hello.txt"), "from base\n").unwrap();
        std::fs::create_dir(m.join("dir")).unwrap();
    });
    // Clone: metadata and state copied; the clone then diverges on its own.
    let (s, c) = create(&d, json!({"clone_from": "base", "name": "feature"}));
    assert_eq!(s, 201, "{c}");
    assert_eq!(c["session_type"], "sandbox");
    assert_eq!(c["image"], "img:1");
    assert_eq!(c["cloned_from"], src["id"]);
    let (_, base_now) = d.call("GET", "/v1/workspaces/base", None);
    assert_eq!(
        c["persistence"]["root_hash"], base_now["persistence"]["root_hash"],
        "a clone starts at its source's root"
    );
    assert_eq!(c["persistence"]["files"], 3);
    with_mount(&d, "feature", |m| {
        assert_eq!(
            std::fs::read_to_string(m.join("hello.txt")).unwrap(),
            "from base\n"
        );
        std::fs::write(m.join("hello.txt"), "changed in feature\n").unwrap();
    });
    with_mount(&d, "base", |m| {
        assert_eq!(
            std::fs::read_to_string(m.join("hello.txt")).unwrap(),
            "from base\n"
        );
    });
    // A clone inherits session_type and image: a different one is refused.
    let (s, e) = create(&d, json!({"clone_from": "base", "session_type": "browser"}));
    assert_error(s, &e, 400, "session_type_mismatch");
    let (s, e) = create(&d, json!({"clone_from": "base", "image": "other:2"}));
    assert_error(s, &e, 400, "image_mismatch");
    let (s, e) = create(&d, json!({"clone_from": "missing"}));
    assert_error(s, &e, 404, "workspace_not_found");
    // Refused while the source has an active session.
    let (session, _) = d.mount("base", "busy");
    let (s, e) = create(&d, json!({"clone_from": "base"}));
    assert_error(s, &e, 409, "session_active");
    d.unmount(&session);

    // Templates: toggled by PUT, filtered in listings, cloned like any workspace.
    let (s, t) = d.call(
        "PUT",
        "/v1/workspaces/base/template",
        Some(json!({"template": true})),
    );
    assert_eq!((s, &t["template"]), (200, &json!(true)), "{t}");
    let (s, from_t) = create(&d, json!({"clone_from": "base", "name": "from-template"}));
    assert_eq!(s, 201, "{from_t}");
    assert_eq!(from_t["template"], false);
    let (_, l) = d.call("GET", "/v1/workspaces?template=true", None);
    let listed: Vec<&Value> = l["workspaces"].as_array().unwrap().iter().collect();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["name"], "base");
    let (_, l) = d.call("GET", "/v1/workspaces?template=false", None);
    assert_eq!(l["workspaces"].as_array().unwrap().len(), 2);
    let (s, e) = d.call(
        "PUT",
        "/v1/workspaces/base/template",
        Some(json!({"template": "yes"})),
    );
    assert_error(s, &e, 400, "invalid_body");

    // Pagination over many workspaces: every one exactly once, oldest first.
    for i in 0..2100 {
        let (s, v) = create(
            &d,
            json!({"session_type": "browser", "name": format!("many-{i}")}),
        );
        assert_eq!(s, 201, "{v}");
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut path = "/v1/workspaces?session_type=browser&limit=1000".to_string();
        if let Some(c) = &cursor {
            path += &format!("&cursor={c}");
        }
        let (s, page) = d.call("GET", &path, None);
        assert_eq!(s, 200, "{page}");
        pages += 1;
        for w in page["workspaces"].as_array().unwrap() {
            seen.push(w["name"].as_str().unwrap().to_string());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let want: Vec<String> = (0..2100).map(|i| format!("many-{i}")).collect();
    assert_eq!(seen, want);
    // The default page is 100.
    let (_, page) = d.call("GET", "/v1/workspaces", None);
    assert_eq!(page["workspaces"].as_array().unwrap().len(), 100);
    assert!(page["next_cursor"].is_string());
    let (s, e) = d.call("GET", "/v1/workspaces?limit=0", None);
    assert_error(s, &e, 400, "invalid_limit");
    let (s, e) = d.call("GET", "/v1/workspaces?limit=1001", None);
    assert_error(s, &e, 400, "invalid_limit");
    let (s, e) = d.call("GET", "/v1/workspaces?cursor=zz", None);
    assert_error(s, &e, 400, "invalid_cursor");
    let (s, e) = d.call("GET", "/v1/workspaces?colour=red", None);
    assert_error(s, &e, 400, "invalid_query");
}

/// Fork N: one call makes COUNT clones, named PREFIX-1.. with the lowest numbers free, each
/// with the source's state and changes of its own; refused whole (nothing made) while the
/// source has a session, and for counts outside 1..=100.
#[test]
fn fork_makes_many_clones_in_one_call() {
    let d = Daemon::start();
    let src = d.create_workspace("base");
    with_mount(&d, "base", |p| {
        std::fs::write(p.join("seed.txt"), "from base").unwrap()
    });
    let fork =
        |ws: &str, body: Value| d.call("POST", &format!("/v1/workspaces/{ws}/clone"), Some(body));
    let (s, v) = fork("base", json!({"count": 5}));
    assert_eq!(s, 201, "{v}");
    let made = v["workspaces"].as_array().unwrap();
    let made_names: Vec<&str> = made.iter().map(|w| w["name"].as_str().unwrap()).collect();
    assert_eq!(
        made_names,
        ["base-1", "base-2", "base-3", "base-4", "base-5"]
    );
    let (_, base) = d.call("GET", "/v1/workspaces/base", None);
    for w in made {
        assert_eq!(w["cloned_from"], src["id"]);
        assert_eq!(
            w["persistence"]["root_hash"],
            base["persistence"]["root_hash"]
        );
        assert_eq!(w["persistence"]["files"], base["persistence"]["files"]);
    }
    // The lowest numbers free: a deleted clone's number is taken again, then the next ones.
    let (s, _) = d.call("DELETE", "/v1/workspaces/base-2", None);
    assert_eq!(s, 204);
    let (s, v) = fork("base", json!({"count": 3}));
    assert_eq!(s, 201, "{v}");
    let again: Vec<&str> = v["workspaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(again, ["base-2", "base-6", "base-7"]);
    // A hundred at once, with a prefix of their own, a template flag and a quota.
    let (s, v) = fork(
        "base",
        json!({"count": 100, "name": "agent", "template": true, "quota": {"inodes": 1000}}),
    );
    assert_eq!(s, 201, "{v}");
    let hundred = v["workspaces"].as_array().unwrap();
    assert_eq!(hundred.len(), 100);
    assert_eq!(hundred[99]["name"], "agent-100");
    assert!(hundred
        .iter()
        .all(|w| w["template"] == true && w["quota"]["inodes"] == 1000));
    // Each clone's changes are its own.
    with_mount(&d, "agent-7", |p| {
        assert_eq!(
            std::fs::read_to_string(p.join("seed.txt")).unwrap(),
            "from base"
        );
        std::fs::write(p.join("seed.txt"), "agent 7 was here").unwrap();
    });
    with_mount(&d, "agent-8", |p| {
        assert_eq!(
            std::fs::read_to_string(p.join("seed.txt")).unwrap(),
            "from base"
        );
    });
    with_mount(&d, "base", |p| {
        assert_eq!(
            std::fs::read_to_string(p.join("seed.txt")).unwrap(),
            "from base"
        );
    });
    // No body: one clone.
    let (s, v) = d.call_raw(
        "POST",
        "/v1/workspaces/base/clone",
        &[("Authorization", &format!("Bearer {}", d.key))],
        b"",
    );
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["workspaces"][0]["name"], "base-8");
    // Refusals make nothing.
    let before = names(&d).len();
    let (s, v) = fork("base", json!({"count": 0}));
    assert_error(s, &v, 400, "invalid_count");
    let (s, v) = fork("base", json!({"count": 101}));
    assert_error(s, &v, 400, "invalid_count");
    let (s, v) = fork("base", json!({"count": 2, "name": "x".repeat(57)}));
    assert_error(s, &v, 400, "invalid_name");
    let (s, v) = fork("base", json!({"count": 2, "colour": "red"}));
    assert_error(s, &v, 400, "invalid_body");
    let (s, v) = fork("nope", json!({"count": 2}));
    assert_error(s, &v, 404, "workspace_not_found");
    let (session, _) = d.mount("base", "busy");
    let (s, v) = fork("base", json!({"count": 10}));
    assert_error(s, &v, 409, "session_active");
    d.unmount(&session);
    assert_eq!(names(&d).len(), before);
}

/// The diff of two snapshots, and of a snapshot and the current state, through real mounts.
#[test]
fn diff_lists_the_paths_that_changed() {
    let d = Daemon::start();
    d.create_workspace("w");
    with_mount(&d, "w", |p| {
        std::fs::create_dir(p.join("src")).unwrap();
        std::fs::write(p.join("src/a.rs"), "a").unwrap();
        std::fs::write(p.join("src/b.rs"), "b").unwrap();
        std::fs::write(p.join("gone.txt"), "x").unwrap();
    });
    let snap = |name: &str| {
        let (s, v) = d.call(
            "POST",
            "/v1/workspaces/w/snapshots",
            Some(json!({"name": name})),
        );
        assert_eq!(s, 201, "{v}");
    };
    snap("one");
    with_mount(&d, "w", |p| {
        std::fs::write(p.join("src/a.rs"), "a, longer").unwrap();
        std::fs::remove_file(p.join("gone.txt")).unwrap();
        std::fs::write(p.join("src/c.rs"), "c").unwrap();
    });
    snap("two");
    with_mount(&d, "w", |p| {
        std::fs::write(p.join("late.txt"), "l").unwrap()
    });
    let changes = |q: &str| {
        let (s, v) = d.call("GET", &format!("/v1/workspaces/w/diff?{q}"), None);
        assert_eq!(s, 200, "{v}");
        v["changes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                format!(
                    "{} {} {} {}",
                    c["change"].as_str().unwrap(),
                    c["path"].as_str().unwrap(),
                    c["kind"].as_str().unwrap(),
                    c["size"]
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        changes("from=one&to=two"),
        [
            "modified / directory 0",
            "removed /gone.txt file 1",
            "modified /src directory 0",
            "modified /src/a.rs file 9",
            "added /src/c.rs file 1",
        ]
    );
    assert_eq!(
        changes("from=two"),
        ["modified / directory 0", "added /late.txt file 1"]
    );
    assert!(changes("from=two&to=two").is_empty());
    // Pages of two, each from the last one's cursor, make up the whole list.
    let mut paged = Vec::new();
    let mut cursor = String::new();
    loop {
        let q = format!("from=one&to=two&limit=2&cursor={cursor}");
        let (s, v) = d.call("GET", &format!("/v1/workspaces/w/diff?{q}"), None);
        assert_eq!(s, 200, "{v}");
        assert!(v["changes"].as_array().unwrap().len() <= 2);
        paged.extend(changes(&q));
        match v["next_cursor"].as_str() {
            Some(c) => {
                assert_eq!(v["truncated"], true);
                cursor = c.to_string();
            }
            None => break assert_eq!(v["truncated"], false),
        }
    }
    assert_eq!(paged, changes("from=one&to=two"));
    // A cursor is bound to its states, and text the API did not make is refused.
    let (_, first) = d.call("GET", "/v1/workspaces/w/diff?from=one&to=two&limit=2", None);
    let c = first["next_cursor"].as_str().unwrap();
    let (s, v) = d.call(
        "GET",
        &format!("/v1/workspaces/w/diff?from=two&to=one&cursor={c}"),
        None,
    );
    assert_error(s, &v, 400, "invalid_cursor");
    for bad in ["zz", "00", &"ab".repeat(400)] {
        let (s, v) = d.call(
            "GET",
            &format!("/v1/workspaces/w/diff?from=one&cursor={bad}"),
            None,
        );
        assert_error(s, &v, 400, "invalid_cursor");
    }
    let (s, v) = d.call("GET", "/v1/workspaces/w/diff?from=nope", None);
    assert_error(s, &v, 404, "snapshot_not_found");
    let (s, v) = d.call("GET", "/v1/workspaces/w/diff", None);
    assert_error(s, &v, 400, "invalid_query");
    let (s, v) = d.call("GET", "/v1/workspaces/w/diff?from=one&limit=0", None);
    assert_error(s, &v, 400, "invalid_limit");
}

#[test]
fn snapshots_create_list_restore_delete_and_force() {
    let d = Daemon::start();
    create(&d, json!({"session_type": "sandbox", "name": "ws"}));
    with_mount(&d, "ws", |m| std::fs::write(m.join("v"), "one\n").unwrap());
    let snap = |body: Value| d.call("POST", "/v1/workspaces/ws/snapshots", Some(body));
    let (s, s1) = snap(json!({"name": "before-upgrade"}));
    assert_eq!(s, 201, "{s1}");
    assert_eq!(s1["name"], "before-upgrade");
    assert_eq!(s1["files"], 2);
    assert_eq!(s1["logical_bytes"], 4);
    let (s, e) = snap(json!({"name": "BEFORE-upgrade"}));
    assert_error(s, &e, 409, "snapshot_name_taken");
    let (s, e) = snap(json!({"name": "a/b"}));
    assert_error(s, &e, 400, "invalid_name");
    // No body at all: an auto-named snapshot.
    let (s, auto) = d.call("POST", "/v1/workspaces/ws/snapshots", None);
    assert_eq!(s, 201, "{auto}");
    assert!(auto["name"].as_str().unwrap().starts_with("snap-"));

    with_mount(&d, "ws", |m| {
        std::fs::write(m.join("v"), "two\n").unwrap();
        std::fs::write(m.join("extra"), "x").unwrap();
    });
    let (_, l) = d.call("GET", "/v1/workspaces/ws/snapshots", None);
    let list = l["snapshots"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["name"], "before-upgrade");
    let (_, w) = d.call("GET", "/v1/workspaces/ws", None);
    assert_eq!(w["persistence"]["snapshot_count"], 2);

    // Create and restore are refused while a session is active...
    let (session, mnt) = d.mount("ws", "live");
    std::fs::write(mnt.join("during"), "written in the session\n").unwrap();
    let (s, e) = snap(json!({"name": "blocked"}));
    assert_error(s, &e, 409, "session_active");
    let (s, e) = d.call(
        "POST",
        "/v1/workspaces/ws/snapshots/before-upgrade/restore",
        Some(json!({})),
    );
    assert_error(s, &e, 409, "session_active");
    // ...unless forced: the session is ended (committed, unmounted) first.
    let (s, forced) = snap(json!({"name": "forced", "force": true}));
    assert_eq!(s, 201, "{forced}");
    assert_eq!(forced["files"], 4, "the session's writes are in: {forced}");
    let (_, sess) = d.call("GET", &format!("/v1/sessions/{session}"), None);
    assert_eq!(sess["status"], "ended");
    assert!(!common::is_mounted(&mnt));

    let (session, mnt) = d.mount("ws", "live2");
    let (s, r) = d.call(
        "POST",
        "/v1/workspaces/ws/snapshots/before-upgrade/restore",
        Some(json!({"force": true})),
    );
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["persistence"]["root_hash"], s1["root_hash"]);
    assert_eq!(r["active_session_id"], Value::Null);
    assert_eq!(r["last_session_id"], json!(session));
    assert!(!common::is_mounted(&mnt));
    with_mount(&d, "ws", |m| {
        assert_eq!(std::fs::read_to_string(m.join("v")).unwrap(), "one\n");
        assert!(!m.join("extra").exists());
        assert!(!m.join("during").exists());
    });
    // Restore by snapshot id works too, and back to the forced state.
    let forced_id = forced["id"].as_str().unwrap();
    let (s, _) = d.call(
        "POST",
        &format!("/v1/workspaces/ws/snapshots/{forced_id}/restore"),
        None,
    );
    assert_eq!(s, 200);
    with_mount(&d, "ws", |m| {
        assert_eq!(
            std::fs::read_to_string(m.join("during")).unwrap(),
            "written in the session\n"
        );
    });
    let (s, e) = d.call(
        "POST",
        "/v1/workspaces/ws/snapshots/nope/restore",
        Some(json!({"force": true})),
    );
    assert_error(s, &e, 404, "snapshot_not_found");

    // Delete: 204, then gone; the workspace keeps its state.
    let (s, _) = d.call("DELETE", "/v1/workspaces/ws/snapshots/before-upgrade", None);
    assert_eq!(s, 204);
    let (s, e) = d.call("DELETE", "/v1/workspaces/ws/snapshots/before-upgrade", None);
    assert_error(s, &e, 404, "snapshot_not_found");
    let (_, l) = d.call("GET", "/v1/workspaces/ws/snapshots", None);
    assert_eq!(l["snapshots"].as_array().unwrap().len(), 2);
    // The name is free again.
    let (s, _) = snap(json!({"name": "before-upgrade"}));
    assert_eq!(s, 201);
    // Snapshots outlive a restart.
    let mut d = d;
    assert_eq!(d.stop(), 0);
    d.restart();
    let (_, l) = d.call("GET", "/v1/workspaces/ws/snapshots", None);
    assert_eq!(l["snapshots"].as_array().unwrap().len(), 3);
}

/// Clone, snapshot, session start and a forced delete of the same workspace at once, many
/// times: whoever wins, no record or root is left half-made or dangling.
#[test]
fn delete_racing_clone_snapshot_and_session_leaves_no_dangling_state() {
    let d = Arc::new(Daemon::start());
    for round in 0..12 {
        let name = format!("r{round}");
        create(&d, json!({"session_type": "sandbox", "name": name}));
        let barrier = Arc::new(std::sync::Barrier::new(4));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let (d, name, barrier) = (d.clone(), name.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    let (s, v) = match t {
                        0 => create(
                            &d,
                            json!({"clone_from": name, "name": format!("{name}-clone")}),
                        ),
                        1 => d.call(
                            "POST",
                            &format!("/v1/workspaces/{name}/snapshots"),
                            Some(json!({"name": "s"})),
                        ),
                        2 => {
                            let mp = d.mount_root().join(&name);
                            d.call(
                                "POST",
                                "/v1/sessions",
                                Some(json!({"workspace": name, "mountpoint": mp})),
                            )
                        }
                        _ => d.call("DELETE", &format!("/v1/workspaces/{name}?force=true"), None),
                    };
                    assert!(s < 500, "{t}: {s} {v}");
                    (t, s)
                })
            })
            .collect();
        for t in threads {
            let (t, s) = t.join().unwrap();
            // The delete is forced, so only "already gone" may stop it.
            if t == 3 {
                assert!(s == 204 || s == 404, "delete answered {s}");
            }
        }
    }
    // Active sessions point at live workspaces that point back; every workspace and snapshot
    // has its root and nothing else does.
    let (_, sessions) = d.call("GET", "/v1/sessions", None);
    for sess in sessions["sessions"].as_array().unwrap() {
        if sess["status"] == "active" {
            let (s, w) = d.call(
                "GET",
                &format!("/v1/workspaces/{}", sess["workspace_id"].as_str().unwrap()),
                None,
            );
            assert_eq!(s, 200, "active session on a deleted workspace: {sess}");
            assert_eq!(w["active_session_id"], sess["id"]);
            let _ = d.call(
                "DELETE",
                &format!("/v1/sessions/{}", sess["id"].as_str().unwrap()),
                None,
            );
        }
    }
    let (_, l) = d.call("GET", "/v1/workspaces?limit=1000", None);
    let list = l["workspaces"].as_array().unwrap();
    let snapshots: u64 = list
        .iter()
        .map(|w| w["persistence"]["snapshot_count"].as_u64().unwrap())
        .sum();
    let mut d = Arc::try_unwrap(d).ok().expect("threads done");
    assert_eq!(d.stop(), 0);
    let out = std::process::Command::new(common::bin())
        .args(["fsck", "--data-dir"])
        .arg(d.data_dir())
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}");
    let roots = format!("fsck: {} roots,", list.len() as u64 + snapshots);
    assert!(report.starts_with(&roots), "want {roots}, got {report}");
}

#[test]
fn delete_force_bulk_and_space_reclaimed() {
    let d = Daemon::start();
    for n in ["a", "b", "c", "big"] {
        create(&d, json!({"session_type": "sandbox", "name": n}));
    }
    let (s, _) = d.call(
        "POST",
        "/v1/workspaces/a/snapshots",
        Some(json!({"name": "s"})),
    );
    assert_eq!(s, 201);
    // Without force a workspace with an attached session is not deleted.
    let (session, mnt) = d.mount("a", "a");
    let (s, e) = d.call("DELETE", "/v1/workspaces/a", None);
    assert_error(s, &e, 409, "session_active");
    let (s, e) = d.call("DELETE", "/v1/workspaces/a?force=false", None);
    assert_error(s, &e, 409, "session_active");
    let (s, e) = d.call("DELETE", "/v1/workspaces/a?force=maybe", None);
    assert_error(s, &e, 400, "invalid_query");

    // Bulk delete: a result per selector, busy ones untouched.
    let (s, r) = d.call(
        "POST",
        "/v1/workspaces/bulk-delete",
        Some(json!({"workspace_ids": ["b", "a", "ws_1", "B"], "force": false})),
    );
    assert_eq!(s, 200, "{r}");
    let statuses: Vec<&str> = r["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        ["deleted", "busy", "not_found", "not_found"],
        "{r}"
    );
    assert_eq!(r["deleted"], 1);
    assert_eq!(r["results"][1]["error"]["code"], "session_active");
    let (s, a) = d.call("GET", "/v1/workspaces/a", None);
    assert_eq!(s, 200);
    assert_eq!(a["persistence"]["snapshot_count"], 1, "not half-deleted");
    assert!(common::is_mounted(&mnt));

    // With force: the session is ended, then the workspace and its snapshots go.
    let (s, r) = d.call(
        "POST",
        "/v1/workspaces/bulk-delete",
        Some(json!({"workspace_ids": ["a", "c"], "force": true})),
    );
    assert_eq!((s, &r["deleted"]), (200, &json!(2)), "{r}");
    assert!(!common::is_mounted(&mnt));
    let (_, sess) = d.call("GET", &format!("/v1/sessions/{session}"), None);
    assert_eq!(sess["status"], "ended");
    let (s, _) = d.call("GET", "/v1/workspaces/a", None);
    assert_eq!(s, 404);
    let (s, e) = d.call(
        "POST",
        "/v1/workspaces/bulk-delete",
        Some(json!({"workspace_ids": vec!["x"; 1001]})),
    );
    assert_error(s, &e, 400, "too_many_workspaces");

    // Deleting frees space: 48 MiB of incompressible data, deleted, then collected.
    let empty = d.data_bytes();
    with_mount(&d, "big", |m| {
        sh("head -c 50331648 /dev/urandom > data.bin && sync", m);
    });
    let (s, _) = d.call(
        "POST",
        "/v1/workspaces/big/snapshots",
        Some(json!({"name": "keep"})),
    );
    assert_eq!(s, 201);
    let full = d.data_bytes();
    assert!(full > empty + 40_000_000, "{empty} -> {full}");
    let (s, _) = d.call("DELETE", "/v1/workspaces/big?force=true", None);
    assert_eq!(s, 204);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = d.data_bytes();
        if now < empty + 8_000_000 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "space not reclaimed: empty {empty}, full {full}, now {now}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn accounts_are_isolated() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let bob_hash = blake3::hash(b"bob-secret-key").to_hex();
    std::fs::write(
        &keys,
        format!("# two accounts\nalice alice-secret-key\nbob blake3:{bob_hash}  # hashed\n"),
    )
    .unwrap();
    let d = Daemon::start_with(Options {
        args: vec!["--api-keys-file".into(), keys.display().to_string()],
        key: Some("alice-secret-key".into()),
        ..Default::default()
    });
    let bob = |method: &str, path: &str, body: Option<Value>| {
        d.call_as("bob-secret-key", method, path, body)
    };
    let (s, a) = create(&d, json!({"session_type": "sandbox", "name": "shared"}));
    assert_eq!(s, 201);
    let a_id = a["id"].as_str().unwrap().to_string();
    let (s, snap) = d.call(
        "POST",
        "/v1/workspaces/shared/snapshots",
        Some(json!({"name": "s"})),
    );
    assert_eq!(s, 201, "{snap}");
    // The same name in another account.
    let (s, b) = bob(
        "POST",
        "/v1/workspaces",
        Some(json!({"session_type": "browser", "name": "SHARED"})),
    );
    assert_eq!(s, 201, "{b}");
    // Every call on alice's workspace by id answers 404 to bob.
    let calls: Vec<(&str, String, Option<Value>)> = vec![
        ("GET", format!("/v1/workspaces/{a_id}"), None),
        ("DELETE", format!("/v1/workspaces/{a_id}?force=true"), None),
        (
            "PUT",
            format!("/v1/workspaces/{a_id}/name"),
            Some(json!({"name": "x"})),
        ),
        (
            "PUT",
            format!("/v1/workspaces/{a_id}/template"),
            Some(json!({"template": true})),
        ),
        ("GET", format!("/v1/workspaces/{a_id}/snapshots"), None),
        ("POST", format!("/v1/workspaces/{a_id}/warm"), None),
        (
            "POST",
            format!("/v1/workspaces/{a_id}/snapshots"),
            Some(json!({"force": true})),
        ),
        (
            "POST",
            format!("/v1/workspaces/{a_id}/snapshots/s/restore"),
            Some(json!({"force": true})),
        ),
        ("DELETE", format!("/v1/workspaces/{a_id}/snapshots/s"), None),
        (
            "POST",
            "/v1/workspaces".into(),
            Some(json!({"clone_from": a_id})),
        ),
        (
            "POST",
            "/v1/sessions".into(),
            Some(
                json!({"workspace": a_id, "mountpoint": d.mount_root().join("bob").display().to_string()}),
            ),
        ),
    ];
    for (m, p, body) in calls {
        let (s, e) = bob(m, &p, body);
        assert_error(s, &e, 404, "workspace_not_found");
    }
    let (_, r) = bob(
        "POST",
        "/v1/workspaces/bulk-delete",
        Some(json!({"workspace_ids": [a_id], "force": true})),
    );
    assert_eq!(r["results"][0]["status"], "not_found", "{r}");
    // By name, bob reaches his own.
    let (_, g) = bob("GET", "/v1/workspaces/shared", None);
    assert_eq!(g["id"], b["id"]);
    let (_, l) = bob("GET", "/v1/workspaces", None);
    assert_eq!(l["workspaces"].as_array().unwrap().len(), 1);
    // Sessions too.
    let (session, _) = d.mount("shared", "alice");
    let (s, e) = bob("GET", &format!("/v1/sessions/{session}"), None);
    assert_error(s, &e, 404, "session_not_found");
    let (s, e) = bob("DELETE", &format!("/v1/sessions/{session}"), None);
    assert_error(s, &e, 404, "session_not_found");
    let (_, l) = bob("GET", "/v1/sessions", None);
    assert_eq!(l["sessions"].as_array().unwrap().len(), 0);
    // Filtered by alice's workspace id, bob's list is empty; by its name, it is his own.
    let (s, l) = bob("GET", &format!("/v1/sessions?workspace={a_id}"), None);
    assert_eq!(
        (s, l["sessions"].as_array().unwrap().len()),
        (200, 0),
        "{l}"
    );
    let (s, l) = bob("GET", "/v1/sessions?workspace=shared&status=active", None);
    assert_eq!(
        (s, l["sessions"].as_array().unwrap().len()),
        (200, 0),
        "{l}"
    );
    d.unmount(&session);
    // Alice's things are intact.
    let (s, g) = d.call("GET", &format!("/v1/workspaces/{a_id}"), None);
    assert_eq!(
        (s, &g["name"], &g["persistence"]["snapshot_count"]),
        (200, &json!("shared"), &json!(1))
    );

    // Missing, wrong, or non-bearer keys: 401 with a JSON error.
    for auth in [
        None,
        Some("Bearer nope"),
        Some("Bearer "),
        Some("Basic YWxpY2U6eA=="),
        Some("alice-secret-key"),
    ] {
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", *a)).collect();
        let (s, e) = d.call_raw("GET", "/v1/workspaces", &headers, b"");
        assert_error(s, &e, 401, "unauthorized");
    }
    // The keys file's plain key is never written into the data dir.
    let out = sh(
        &format!(
            "grep -rl alice-secret-key {} || true",
            d.data_dir().display()
        ),
        Path::new("/"),
    );
    assert_eq!(out.trim(), "", "plain key found at rest");
}

#[test]
fn generated_key_is_kept_only_as_a_hash() {
    let mut d = Daemon::start();
    let key = d.key.clone();
    let data = d.data_dir();
    let hashed = std::fs::read_to_string(data.join("api-key.blake3")).unwrap();
    assert_eq!(
        hashed.trim(),
        blake3::hash(key.as_bytes()).to_hex().as_str()
    );
    // The plain copy is for the operator: the daemon needs only the hash.
    std::fs::remove_file(data.join("api-key")).unwrap();
    assert_eq!(d.stop(), 0);
    d.restart();
    assert_eq!(d.key, key);
    let (s, _) = d.call("GET", "/v1/workspaces", None);
    assert_eq!(s, 200);
    let found = sh(
        &format!("grep -rl {key} {} || true", data.display()),
        Path::new("/"),
    );
    assert_eq!(found.trim(), "", "plain key at rest");
    // A data dir holding only the plain key (made before hashes) keeps working with it.
    assert_eq!(d.stop(), 0);
    std::fs::remove_file(data.join("api-key.blake3")).unwrap();
    std::fs::write(data.join("api-key"), format!("{key}\n")).unwrap();
    d.restart();
    let (s, _) = d.call("GET", "/v1/workspaces", None);
    assert_eq!(s, 200);
    assert!(data.join("api-key.blake3").exists());
}

#[test]
fn bad_input_gets_4xx_and_changes_nothing() {
    let d = Daemon::start();
    create(&d, json!({"session_type": "sandbox", "name": "keep"}));
    let (_, before) = d.call("GET", "/v1/workspaces", None);
    let auth = format!("Bearer {}", d.key);
    let json_h = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
    ];
    let big = format!(
        "{{\"session_type\":\"sandbox\",\"name\":\"{}\"}}",
        "x".repeat(70_000)
    );
    let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        ("POST", "/v1/workspaces", b"{".to_vec(), 400, "invalid_json"),
        (
            "POST",
            "/v1/workspaces",
            b"not json".to_vec(),
            400,
            "invalid_json",
        ),
        (
            "POST",
            "/v1/workspaces",
            b"[]".to_vec(),
            400,
            "invalid_body",
        ),
        (
            "POST",
            "/v1/workspaces/bulk-delete",
            b"[[\"keep\"], true]".to_vec(),
            400,
            "invalid_body",
        ),
        (
            "POST",
            "/v1/workspaces/keep/snapshots",
            b"[]".to_vec(),
            400,
            "invalid_body",
        ),
        (
            "POST",
            "/v1/workspaces",
            b"null".to_vec(),
            400,
            "invalid_body",
        ),
        ("POST", "/v1/workspaces", b"".to_vec(), 400, "invalid_body"),
        (
            "POST",
            "/v1/workspaces",
            br#"{"session_type":1}"#.to_vec(),
            400,
            "invalid_body",
        ),
        (
            "POST",
            "/v1/workspaces",
            br#"{"session_type":"sandbox","name":7}"#.to_vec(),
            400,
            "invalid_body",
        ),
        (
            "POST",
            "/v1/workspaces",
            br#"{"session_type":"sandbox","colour":"red"}"#.to_vec(),
            400,
            "invalid_body",
        ),
        (
            "POST",
            "/v1/workspaces",
            br#"{"session_type":"sandbox","template":"yes"}"#.to_vec(),
            400,
            "invalid_body",
        ),
        (
            "POST",
            "/v1/workspaces",
            big.into_bytes(),
            413,
            "body_too_large",
        ),
        (
            "PUT",
            "/v1/workspaces/keep/name",
            br#"{}"#.to_vec(),
            400,
            "invalid_body",
        ),
        (
            "PUT",
            "/v1/workspaces/keep/name",
            br#"{"name":["a"]}"#.to_vec(),
            400,
            "invalid_body",
        ),
        (
            "PUT",
            "/v1/workspaces/keep/template",
            br#"{"template":null}"#.to_vec(),
            400,
            "invalid_body",
        ),
        (
            "POST",
            "/v1/workspaces/keep/snapshots",
            br#"{"name":"s","extra":1}"#.to_vec(),
            400,
            "invalid_body",
        ),
        (
            "POST",
            "/v1/workspaces/bulk-delete",
            br#"{"workspace_ids":"keep"}"#.to_vec(),
            400,
            "invalid_body",
        ),
        (
            "POST",
            "/v1/workspaces/import",
            br#"{"github_repo":"--upload-pack=x/y"}"#.to_vec(),
            400,
            "invalid_github_repo",
        ),
        (
            "POST",
            "/v1/sessions",
            br#"{"workspace":"keep"}"#.to_vec(),
            400,
            "invalid_body",
        ),
        (
            "POST",
            "/v1/sessions",
            br#"{"workspace":"keep","mountpoint":"relative"}"#.to_vec(),
            400,
            "invalid_mountpoint",
        ),
    ];
    for (m, p, body, status, code) in cases {
        let (s, e) = d.call_raw(m, p, &json_h, &body);
        assert_error(s, &e, status, code);
    }
    // A body that is not JSON by its Content-Type.
    let (s, e) = d.call_raw(
        "POST",
        "/v1/workspaces",
        &[("Authorization", &auth), ("Content-Type", "text/plain")],
        br#"{"session_type":"sandbox"}"#,
    );
    assert_error(s, &e, 415, "unsupported_media_type");
    // Odd selectors: never 5xx.
    let long = "z".repeat(5000);
    for sel in ["%00", "%FF%FE", "..", "%2F", "a%0Ab", &long, "%E2%80%AE"] {
        let (s, e) = d.call("GET", &format!("/v1/workspaces/{sel}"), None);
        assert!(s == 404 || s == 400, "{sel}: {s} {e}");
        assert!(e["error"]["code"].is_string(), "{e}");
        let (s, _) = d.call("DELETE", &format!("/v1/workspaces/{sel}?force=true"), None);
        assert!(s == 404 || s == 400, "{sel}: {s}");
    }
    let (s, e) = d.call("GET", "/v1/nothing-here", None);
    assert_error(s, &e, 404, "route_not_found");
    let (s, e) = d.call_raw("PUT", "/v1/workspaces", &json_h, b"{}");
    assert_error(s, &e, 405, "method_not_allowed");
    let (_, after) = d.call("GET", "/v1/workspaces", None);
    assert_eq!(before, after, "state changed");
}

#[test]
fn concurrent_calls_on_one_workspace_stay_consistent() {
    let d = Daemon::start();
    create(&d, json!({"session_type": "sandbox", "name": "hot"}));
    with_mount(&d, "hot", |m| {
        std::fs::write(m.join("f"), "data\n").unwrap()
    });
    let d = Arc::new(d);
    let statuses = Arc::new(Mutex::new(Vec::new()));
    let mut threads = Vec::new();
    for t in 0..4 {
        let d = d.clone();
        let statuses = statuses.clone();
        threads.push(std::thread::spawn(move || {
            for i in 0..25 {
                let (op, (s, v)) = match (t + i) % 6 {
                    0 => (
                        "clone",
                        create(
                            &d,
                            json!({"clone_from": "hot", "name": format!("c-{t}-{i}")}),
                        ),
                    ),
                    1 => (
                        "snapshot",
                        d.call(
                            "POST",
                            "/v1/workspaces/hot/snapshots",
                            Some(json!({"name": format!("s-{t}-{i}")})),
                        ),
                    ),
                    2 => {
                        let mp = d.mount_root().join(format!("r-{t}-{i}"));
                        let r = d.call(
                            "POST",
                            "/v1/sessions",
                            Some(json!({"workspace": "hot", "mountpoint": mp})),
                        );
                        if r.0 == 201 {
                            let id = r.1["id"].as_str().unwrap().to_string();
                            let _ = d.call("DELETE", &format!("/v1/sessions/{id}"), None);
                        }
                        ("session", r)
                    }
                    3 => (
                        "restore",
                        d.call(
                            "POST",
                            &format!(
                                "/v1/workspaces/hot/snapshots/s-{t}-{}/restore",
                                i.max(1) - 1
                            ),
                            Some(json!({"force": true})),
                        ),
                    ),
                    4 => (
                        "delete-clone",
                        d.call(
                            "DELETE",
                            &format!("/v1/workspaces/c-{t}-{}?force=true", i.max(2) - 2),
                            None,
                        ),
                    ),
                    _ => (
                        "rename",
                        d.call(
                            "PUT",
                            &format!("/v1/workspaces/c-{t}-{}/name", i.max(1) - 1),
                            Some(json!({"name": format!("r-{t}-{i}")})),
                        ),
                    ),
                };
                assert!(s < 500, "{op}: {s} {v}");
                if s >= 400 {
                    assert!(v["error"]["code"].is_string(), "{op}: {v}");
                }
                statuses.lock().unwrap().push((op, s));
            }
        }));
    }
    for t in threads {
        t.join().unwrap();
    }
    let statuses = statuses.lock().unwrap().clone();
    for kind in ["clone", "snapshot", "session"] {
        assert!(
            statuses.iter().any(|(op, s)| *op == kind && *s < 300),
            "no {kind} succeeded: {statuses:?}"
        );
    }
    // Every listed workspace answers, its snapshot list is coherent, and the source's data is
    // intact in it and in every clone.
    let (_, l) = d.call("GET", "/v1/workspaces?limit=1000", None);
    let mut ids = HashSet::new();
    for w in l["workspaces"].as_array().unwrap() {
        let id = w["id"].as_str().unwrap();
        assert!(ids.insert(id.to_string()));
        let (s, g) = d.call("GET", &format!("/v1/workspaces/{id}"), None);
        assert_eq!(s, 200, "{g}");
        assert_eq!(g["active_session_id"], Value::Null, "{g}");
        let (_, snaps) = d.call("GET", &format!("/v1/workspaces/{id}/snapshots"), None);
        assert_eq!(
            snaps["snapshots"].as_array().unwrap().len() as u64,
            g["persistence"]["snapshot_count"].as_u64().unwrap()
        );
        with_mount(&d, id, |m| {
            assert_eq!(std::fs::read_to_string(m.join("f")).unwrap(), "data\n");
        });
    }
    // Two calls ending one session at once: both answer the ended session.
    let (session, _) = d.mount("hot", "twice");
    let enders: Vec<_> = (0..2)
        .map(|_| {
            let (d, session) = (d.clone(), session.clone());
            std::thread::spawn(move || d.call("DELETE", &format!("/v1/sessions/{session}"), None))
        })
        .collect();
    for e in enders {
        let (s, v) = e.join().unwrap();
        assert_eq!((s, &v["status"]), (200, &json!("ended")), "{v}");
    }
    // And the store checks clean.
    let mut d = Arc::try_unwrap(d).ok().expect("threads done");
    assert_eq!(d.stop(), 0);
    let out = std::process::Command::new(common::bin())
        .args(["fsck", "--data-dir"])
        .arg(d.data_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn import_from_github_with_real_git() {
    let repos = tempfile::tempdir().unwrap();
    let head = common::make_repo(repos.path(), "octo", "hello");
    let git = GitDaemon::start(repos.path());
    let d = Daemon::start_with(Options {
        args: vec!["--github-url".into(), git.url.clone()],
        ..Default::default()
    });
    let (s, w) = d.call(
        "POST",
        "/v1/workspaces/import",
        Some(json!({"github_repo": "octo/hello"})),
    );
    assert_eq!(s, 202, "{w}");
    assert_eq!(w["status"], "importing");
    assert_eq!(w["github_repo"], "octo/hello");
    assert_eq!(w["name"], "hello", "named after the repository");
    // Busy while importing.
    let (s, e) = d.call("DELETE", "/v1/workspaces/hello", None);
    if s != 204 {
        // (unless it already finished)
        assert!(s == 409, "{e}");
    }
    let w = d.wait_imported("hello");
    assert_eq!(w["status"], "ready", "{w}");
    assert_eq!(w["import_error"], Value::Null);
    assert!(w["persistence"]["files"].as_u64().unwrap() > 5, "{w}");
    with_mount(&d, "hello", |m| {
        assert_eq!(
            std::fs::read_to_string(m.join("src/file2.txt")).unwrap(),
            "content 2\n"
        );
        assert_eq!(sh("git rev-parse HEAD", m).trim(), head);
        assert_eq!(sh("git status --porcelain", m).trim(), "");
        sh("git fsck --full --strict", m);
    });
    // The selector stays on the workspace across a restart, and clones inherit it.
    let (_, c) = create(&d, json!({"clone_from": "hello"}));
    assert_eq!(c["github_repo"], "octo/hello");
    let mut d = d;
    assert_eq!(d.stop(), 0);
    d.restart();
    let (_, g) = d.call("GET", "/v1/workspaces/hello", None);
    assert_eq!(
        (&g["github_repo"], &g["status"]),
        (&json!("octo/hello"), &json!("ready"))
    );

    // A second import of the same repository gets a fresh name; an explicit name is used.
    let (s, w2) = d.call(
        "POST",
        "/v1/workspaces/import",
        Some(json!({"github_repo": "octo/hello", "name": "second", "session_type": "browser"})),
    );
    assert_eq!(s, 202, "{w2}");
    assert_eq!(d.wait_imported("second")["status"], "ready");

    // A missing repository: failed, with git's reason.
    let (s, w) = d.call(
        "POST",
        "/v1/workspaces/import",
        Some(json!({"github_repo": "octo/missing"})),
    );
    assert_eq!(s, 202, "{w}");
    let w = d.wait_imported(w["id"].as_str().unwrap());
    assert_eq!(w["status"], "failed", "{w}");
    assert!(
        w["import_error"]
            .as_str()
            .unwrap()
            .contains("git clone failed"),
        "{w}"
    );

    // Strict selectors: nothing that could become a git option or another URL.
    let before = names(&d);
    for bad in [
        "octo",
        "octo/hello/extra",
        "-u/x",
        "octo/-x",
        "octo/.x",
        "../etc",
        "octo/hello;id",
        "octo/hello x",
        "https://example.com/a",
        "file:///etc/passwd",
        "octo/hello\n",
        "ext::sh -c touch% /tmp/pwned",
        "",
    ] {
        let (s, e) = d.call(
            "POST",
            "/v1/workspaces/import",
            Some(json!({ "github_repo": bad })),
        );
        assert_error(s, &e, 400, "invalid_github_repo");
    }
    let (s, e) = d.call("POST", "/v1/workspaces/import", Some(json!({})));
    assert_error(s, &e, 400, "invalid_body");
    assert_eq!(names(&d), before);
}

/// The token for private repositories goes to the GitHub base URL as HTTP credentials, from
/// the environment, and never shows in the failure reason.
#[test]
fn import_sends_the_token_from_the_environment() {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line.trim().is_empty() {
                break;
            }
            headers.push(line.trim().to_string());
        }
        let mut stream = stream;
        let _ = stream
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        headers
    });
    let d = Daemon::start_with(Options {
        args: vec!["--github-url".into(), format!("http://127.0.0.1:{port}")],
        env: vec![("CHASER_GITHUB_TOKEN".into(), "tok-s3cret".into())],
        ..Default::default()
    });
    let (s, w) = d.call(
        "POST",
        "/v1/workspaces/import",
        Some(json!({"github_repo": "acme/private"})),
    );
    assert_eq!(s, 202, "{w}");
    let w = d.wait_imported("private");
    assert_eq!(w["status"], "failed");
    assert!(!w.to_string().contains("tok-s3cret"));
    let headers = seen.join().unwrap();
    assert!(
        headers[0].starts_with("GET /acme/private/info/refs"),
        "{headers:?}"
    );
    use base64_like::encode;
    let want = format!(
        "Authorization: Basic {}",
        encode(b"x-access-token:tok-s3cret")
    );
    assert!(headers.contains(&want), "{headers:?}");
}

/// Standard base64, to check the header without trusting the daemon's encoder.
mod base64_like {
    pub fn encode(data: &[u8]) -> String {
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for c in data.chunks(3) {
            let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
            let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
            for i in 0..4 {
                if i <= c.len() {
                    out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}

#[test]
fn openapi_document_matches_the_routes() {
    let d = Daemon::start();
    let (s, doc) = d.call_raw("GET", "/v1/openapi.json", &[], b"");
    assert_eq!(s, 200);
    assert_eq!(
        doc["openapi"].as_str().unwrap().split('.').next(),
        Some("3")
    );
    let paths = doc["paths"].as_object().unwrap();
    let mut ops: Vec<String> = Vec::new();
    for (p, item) in paths {
        for m in item.as_object().unwrap().keys() {
            ops.push(format!("{} {p}", m.to_uppercase()));
        }
    }
    ops.sort();
    // Every endpoint of the API spec's reference, and the session endpoints.
    for want in [
        "GET /v1/workspaces",
        "POST /v1/workspaces",
        "POST /v1/workspaces/import",
        "PUT /v1/workspaces/{workspace}/name",
        "PUT /v1/workspaces/{workspace}/template",
        "GET /v1/workspaces/{workspace}/snapshots",
        "POST /v1/workspaces/{workspace}/snapshots",
        "POST /v1/workspaces/{workspace}/snapshots/{snapshot}/restore",
        "DELETE /v1/workspaces/{workspace}/snapshots/{snapshot}",
        "DELETE /v1/workspaces/{workspace}",
        "POST /v1/workspaces/bulk-delete",
        "GET /v1/workspaces/{workspace}",
        "POST /v1/workspaces/{workspace}/clone",
        "GET /v1/workspaces/{workspace}/diff",
        "GET /metrics",
        "POST /v1/sessions",
        "GET /v1/sessions",
        "GET /v1/sessions/{id}",
        "DELETE /v1/sessions/{id}",
    ] {
        assert!(
            ops.contains(&want.to_string()),
            "{want} missing from {ops:?}"
        );
    }
    // Every documented operation is served (no 404 route_not_found, no 405).
    for op in &ops {
        let (m, p) = op.split_once(' ').unwrap();
        let p = p
            .replace("{workspace}", "nope")
            .replace("{snapshot}", "nope")
            .replace("{id}", "nope");
        let body: &[u8] = if m == "GET" || m == "DELETE" {
            b""
        } else {
            b"{}"
        };
        let auth = format!("Bearer {}", d.key);
        let (s, v) = d.call_raw(
            m,
            &p,
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            body,
        );
        assert!(
            s != 405 && v["error"]["code"] != "route_not_found",
            "{op}: {s} {v}"
        );
        assert!(s < 500, "{op}: {s} {v}");
    }
}
