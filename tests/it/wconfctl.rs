//! `wconfctl` against the real `wconfd`: the write-and-release flow, JSON
//! output, and the exit codes a script relies on (0 done, 1 the daemon said
//! no, 2 usage, 3 no daemon, 4 not granted or not applied).

use std::net::TcpListener;
use std::process::{Command, Output};

use serde_json::{json, Value};

use crate::daemon::start;

/// Runs `wconfctl --addr ADDR ARGS...` (`ADDR` as `host:port` or
/// `http://host:port`).
fn ctl(addr: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wconfctl"))
        .arg("--addr")
        .arg(addr)
        .args(args)
        .env_remove("WCONF_ADDR")
        .output()
        .expect("run wconfctl")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs a command that must exit 0 and returns its stdout.
fn ok(addr: &str, args: &[&str]) -> String {
    let out = ctl(addr, args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "wconfctl {args:?}: stdout {:?}, stderr {:?}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

/// Runs a command with `--json` that must exit 0 and parses its stdout.
fn ok_json(addr: &str, args: &[&str]) -> Value {
    let args: Vec<&str> = std::iter::once("--json")
        .chain(args.iter().copied())
        .collect();
    let text = ok(addr, &args);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?} printed {text:?}: {e}"))
}

fn open_session(addr: &str) -> String {
    let created = ok_json(
        addr,
        &["session", "open", "--name", "ctl", "--ttl-ms", "60000"],
    );
    created["session"]
        .as_str()
        .expect("session id is a string")
        .to_string()
}

#[test]
fn session_lock_write_with_release_then_get_shows_the_change() {
    // Invariant: the CLI's write-and-release is the API's: the change is
    // readable afterwards and `config` is free again, in one request.
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path(), &[]);
    let s = open_session(&d.base);

    let acquired = ok(&d.base, &["lock", "acquire", "--session", &s, "config"]);
    assert!(acquired.contains("granted: true"), "{acquired}");
    assert!(acquired.contains("config:exclusive"), "{acquired}");
    let held = ok(&d.base, &["lock", "list"]);
    assert!(held.contains("config  exclusive"), "{held}");

    let patch = r#"[{"op":"add","path":"/cluster","value":{"name":"c1"}}]"#;
    let written = ok(
        &d.base,
        &[
            "config",
            "write",
            "--session",
            &s,
            "--release",
            "--patch",
            patch,
        ],
    );
    assert!(written.contains("applied:       true"), "{written}");

    let value = ok(&d.base, &["config", "get", "/cluster/name"]);
    assert_eq!(value, "serial: 1\nvalue:  \"c1\"\n");
    let whole = ok_json(&d.base, &["config", "get"]);
    assert_eq!(whole["config"], json!({"cluster": {"name": "c1"}}));
    assert_eq!(whole["serial"], json!(1));

    let locks = ok_json(&d.base, &["lock", "list"]);
    assert_eq!(locks, json!({"holders": [], "waiters": []}));
}

#[test]
fn json_output_parses_and_matches_the_daemon() {
    // Invariant: --json prints the daemon's answer as parseable JSON, with
    // the same fields the typed client sees.
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path(), &[]);
    let created = ok_json(&d.base, &["session", "open", "--ttl-ms", "60000"]);
    assert_eq!(created["epoch"], json!(d.epoch));
    let s = created["session"].as_str().expect("session id").to_string();

    let health = ok_json(&d.base, &["health"]);
    assert_eq!(health, json!({"ok": true}));
    let status = ok_json(&d.base, &["status"]);
    let typed = d.client.status().expect("status");
    assert_eq!(status["epoch"], json!(typed.epoch));
    assert_eq!(status["sessions"], json!(1));

    let sessions = ok_json(&d.base, &["session", "list"]);
    assert_eq!(sessions["sessions"][0]["session"], json!(s));
    let kept = ok_json(&d.base, &["session", "keepalive", &s]);
    assert_eq!(kept["ttl_ms"], json!(60000));

    let granted = ok_json(
        &d.base,
        &["lock", "acquire", "--session", &s, "a:shared", "b"],
    );
    assert_eq!(granted["granted"], json!(true));
    assert_eq!(
        granted["locks"],
        json!([{"name": "a", "mode": "shared"}, {"name": "b", "mode": "exclusive"}])
    );
    let released = ok_json(&d.base, &["lock", "release", "--session", &s, "a"]);
    assert_eq!(released["released"], json!(true));

    let txn = ok_json(
        &d.base,
        &[
            "config",
            "txn",
            "--if-serial",
            "0",
            "--patch",
            r#"[{"op":"add","path":"/n","value":1}]"#,
        ],
    );
    assert_eq!(txn["applied"], json!(true));
    assert_eq!(txn["serial"], json!(1));

    let closed = ok_json(&d.base, &["session", "close", &s]);
    assert_eq!(closed["released"], json!(true));
    assert_eq!(d.client.locks().expect("locks").holders.len(), 0);
}

#[test]
fn a_daemon_error_exits_1_with_its_code_and_message() {
    // Invariant: an error answer exits 1 and prints `wconfctl: <code>:
    // <message>` on stderr, nothing on stdout.
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path(), &[]);
    let unknown = "0123456789abcdef0123456789abcdef";
    let out = ctl(&d.base, &["session", "keepalive", unknown]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        format!("wconfctl: unknown_session: no session {unknown}\n")
    );
    assert_eq!(stdout(&out), "");

    let out = ctl(
        &d.base,
        &[
            "config",
            "txn",
            "--patch",
            r#"[{"op":"remove","path":"/x"}]"#,
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).starts_with("wconfctl: patch_failed: patch op 0 failed"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn not_granted_and_not_applied_exit_4_and_change_nothing() {
    // Invariant: a 200 that did not do what was asked is not exit 0, so
    // `wconfctl lock acquire ... && work` never works unlocked.
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path(), &[]);
    let holder = open_session(&d.base);
    let other = open_session(&d.base);
    ok(
        &d.base,
        &["lock", "acquire", "--session", &holder, "config"],
    );

    let out = ctl(&d.base, &["lock", "acquire", "--session", &other, "config"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stdout(&out).contains(&format!("blockers: {holder}")));
    assert!(stderr(&out).starts_with("wconfctl: not granted"));

    let patch = r#"[{"op":"add","path":"/x","value":1}]"#;
    let out = ctl(
        &d.base,
        &["config", "write", "--session", &other, "--patch", patch],
    );
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stdout(&out).contains("applied:       false"));
    assert_eq!(d.client.config().expect("config").serial, 0);
}

#[test]
fn usage_errors_exit_2_and_send_nothing() {
    // Invariant: bad arguments are refused before any request: exit 2, and
    // the daemon's state is unchanged.
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path(), &[]);
    let bad: &[&[&str]] = &[
        &["config", "txn", "--patch", "[{"],
        &["config", "txn", "--patch", "@/nonexistent/wconfctl.json"],
        &["session", "close", "../../v1/config"],
        &["config", "get", "no-leading-slash"],
        &[
            "lock",
            "acquire",
            "--session",
            "0123456789abcdef0123456789abcdef",
        ],
        &["session", "open"],
    ];
    for args in bad {
        let out = ctl(&d.base, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }
    let status = d.client.status().expect("status");
    assert_eq!((status.sessions, status.config_serial), (0, 0));
}

#[test]
fn no_daemon_exits_3() {
    // Invariant: a refused connection is exit 3, told apart from an error
    // answer (1).
    // A port that was just free; nothing listens on it once the listener
    // is dropped.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let out = ctl(&addr, &["status"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).starts_with(&format!(
            "wconfctl: could not reach wconfd at http://{addr}"
        )),
        "{}",
        stderr(&out)
    );
}
