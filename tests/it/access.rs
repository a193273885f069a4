//! Who may talk to the real `wconfd` (issue 5, item 7): the Unix socket's
//! owner (and `--socket-group`), the bearer token on TCP
//! (`--auth-token-file`, also through `wconfctl --token-file`), and the
//! refusal to serve a non-loopback address without a token.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{json, Value};
use wconf::client::{Client, ClientError};

use crate::daemon::{free_port, refused, start, unix_http};

fn token_file(dir: &Path, token: &str, mode: u32) -> PathBuf {
    let path = dir.join(format!("token-{mode:o}"));
    std::fs::write(&path, format!("{token}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

/// Status, `WWW-Authenticate` and JSON body of one request, with an
/// optional `Authorization` header.
fn call(method: &str, url: &str, auth: Option<&str>, body: Option<Value>) -> (u16, String, Value) {
    let mut req = ureq::request(method, url);
    if let Some(a) = auth {
        req = req.set("Authorization", a);
    }
    let result = match body {
        Some(b) => req.send_json(b),
        None => req.call(),
    };
    let resp = match result {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {url}: {e}"),
    };
    let status = resp.status();
    let challenge = resp.header("WWW-Authenticate").unwrap_or("").to_string();
    let body = resp.into_json().unwrap_or(Value::Null);
    (status, challenge, body)
}

#[test]
fn tcp_requests_need_the_bearer_token_but_health_metrics_and_the_socket_do_not() {
    // Invariant: with --auth-token-file, a TCP request without the right
    // `Authorization: Bearer` token gets 401 with WWW-Authenticate and a
    // JSON error and changes nothing; /healthz and /metrics need no token;
    // the Unix socket (guarded by its mode) needs none; the right token
    // works, from wconf::client and from wconfctl (flag and environment).
    let dir = tempfile::tempdir().unwrap();
    let token = token_file(dir.path(), "tok-3f9a1c", 0o600);
    let sock = dir.path().join("wconfd.sock");
    let d = start(
        &dir.path().join("data"),
        &[
            "--auth-token-file",
            token.to_str().unwrap(),
            "--socket",
            sock.to_str().unwrap(),
        ],
    );
    let txn = json!({"patch": [{"op": "add", "path": "/x", "value": 1}]});
    let url = |path: &str| format!("{}{path}", d.base);
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("Bearer tok-3f9a1"),
        Some("tok-3f9a1c"),
    ] {
        for (method, path, body) in [
            ("GET", "/v1/status", None),
            ("GET", "/v1/config", None),
            ("POST", "/v1/config/txn", Some(txn.clone())),
            ("GET", "/no/such/route", None),
        ] {
            let (status, challenge, body) = call(method, &url(path), auth, body);
            assert_eq!(status, 401, "{method} {path} with {auth:?}: {body}");
            assert_eq!(challenge, "Bearer realm=\"wconfd\"");
            assert_eq!(body["error"]["code"], json!("unauthorized"), "{body}");
        }
    }
    let (status, _, body) = call("GET", &url("/healthz"), None, None);
    assert_eq!(status, 200, "{body}");
    let (status, _, _) = call("GET", &url("/metrics"), None, None);
    assert_ne!(status, 401, "/metrics asked for the token");

    let (status, body) = unix_http(
        &sock,
        "GET /v1/config HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["serial"],
        json!(0),
        "a refused txn was applied: {body}"
    );

    let token_value = wconf::auth::read_token_file(&token).unwrap();
    let authed = Client::new(d.base.clone()).with_token(Some(token_value));
    assert_eq!(authed.config().unwrap().serial, 0);
    assert!(matches!(
        d.client.status(),
        Err(ClientError::Api { status: 401, .. })
    ));

    let ctl = |args: &[&str], env: Option<&Path>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wconfctl"));
        cmd.arg("--addr").arg(&d.base).args(args);
        cmd.env_remove("WCONF_TOKEN_FILE");
        if let Some(path) = env {
            cmd.env("WCONF_TOKEN_FILE", path);
        }
        cmd.output().unwrap()
    };
    let patch = r#"[{"op":"add","path":"/y","value":2}]"#;
    let out = ctl(&["config", "txn", "--patch", patch], None);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("unauthorized"));
    let out = ctl(
        &[
            "--token-file",
            token.to_str().unwrap(),
            "config",
            "txn",
            "--patch",
            patch,
        ],
        None,
    );
    assert!(out.status.success(), "{out:?}");
    let out = ctl(&["config", "get", "/y"], Some(&token));
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains('2'),
        "{out:?}"
    );
}

#[test]
fn unusable_token_files_refuse_to_start_saying_why() {
    // Invariant: a token file that is group- or world-readable, or empty,
    // stops wconfd before it serves (exit 2), and the message says why.
    let dir = tempfile::tempdir().unwrap();
    let readable = token_file(dir.path(), "tok", 0o644);
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    std::fs::set_permissions(&empty, std::fs::Permissions::from_mode(0o600)).unwrap();
    for (file, why) in [
        (&readable, "accessible by group or others (mode 0644)"),
        (&empty, "is empty"),
    ] {
        let data = dir.path().join("data");
        let (status, stderr) = refused(&data, &["--auth-token-file", file.to_str().unwrap()]);
        assert_eq!(status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(why), "{stderr}");
    }
}

/// `wconfd` with exactly `args`: whether it announced readiness (then it
/// is stopped) and its exit status and stderr otherwise.
fn start_or_refuse(args: &[&str]) -> Result<(), (Option<i32>, String)> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wconfd"))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let _ = BufReader::new(child.stdout.take().unwrap()).read_line(&mut line);
    if line.starts_with("wconfd ready") {
        let _ = child.kill();
        let _ = child.wait();
        return Ok(());
    }
    let out = child.wait_with_output().unwrap();
    Err((
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[test]
fn a_non_loopback_address_needs_a_token_or_insecure() {
    // Invariant: --listen on a non-loopback address without
    // --auth-token-file refuses to start (exit 2, saying how to fix it);
    // with a token, or with --insecure, it starts.
    let dir = tempfile::tempdir().unwrap();
    let token = token_file(dir.path(), "tok", 0o600);
    let data = dir.path().join("data");
    let listen = format!("0.0.0.0:{}", free_port());
    let base = ["--data-dir", data.to_str().unwrap(), "--listen", &listen];
    let (code, stderr) = start_or_refuse(&base).expect_err("served 0.0.0.0 without a token");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("is not a loopback address"), "{stderr}");
    assert!(stderr.contains("--auth-token-file") && stderr.contains("--insecure"));
    assert!(!data.join("LOCK").exists(), "refused after opening the log");

    let with_token = [&base[..], &["--auth-token-file", token.to_str().unwrap()]].concat();
    start_or_refuse(&with_token).expect("with a token");
    let insecure = [&base[..], &["--insecure"]].concat();
    start_or_refuse(&insecure).expect("with --insecure");
}

#[test]
fn socket_group_gives_the_group_mode_0660() {
    // Invariant: --socket-group GROUP makes the socket belong to GROUP with
    // mode 0660 (without it, 0600: see daemon::the_unix_socket_is_owner_only);
    // an unknown group refuses to start.
    use nix::unistd::{getgid, Group};
    let group = Group::from_gid(getgid())
        .unwrap()
        .expect("the primary group has a name");
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("wconfd.sock");
    let args = [
        "--socket",
        sock.to_str().unwrap(),
        "--socket-group",
        &group.name,
    ];
    let d = start(&dir.path().join("data"), &args);
    let meta = std::fs::symlink_metadata(&sock).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), group.gid.as_raw());
    let (status, body) = unix_http(
        &sock,
        "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200, "{body}");
    drop(d);

    let args = [
        "--socket",
        sock.to_str().unwrap(),
        "--socket-group",
        "no-such-group-wconf",
    ];
    let data = dir.path().join("data2");
    let (status, stderr) = refused(&data, &args);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no group"), "{stderr}");
    assert!(!data.join("LOCK").exists(), "refused after opening the log");
}
