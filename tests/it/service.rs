//! Service conventions of the real binaries (issue 5, item 5): the
//! `--config` file layered under environment variables and flags,
//! `--log-format json`, and the completions and man pages generated from
//! the clap definitions in `wconf::cli`.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use crate::daemon::free_port;

/// Starts `wconfd` with exactly `args` and `env`, waits for its ready line,
/// stops it with SIGTERM, and returns the address it announced and what it
/// logged.
fn ready_address(args: &[&str], env: &[(&str, &str)]) -> (String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wconfd"))
        .args(args)
        .env_remove("WCONF_LISTEN")
        .env_remove("WCONF_DATA_DIR")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn wconfd");
    let mut line = String::new();
    let _ = BufReader::new(child.stdout.take().unwrap()).read_line(&mut line);
    if line.is_empty() {
        let _ = child.wait();
    } else {
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    }
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    let status = child.wait().unwrap();
    let addr = line
        .strip_prefix("wconfd ready on http://")
        .and_then(|r| r.split(' ').next())
        .unwrap_or_else(|| panic!("wconfd did not start ({status}): {log}"))
        .to_string();
    assert!(status.success(), "{status}: {log}");
    (addr, log)
}

#[test]
fn flags_beat_environment_beats_config_file_beats_defaults() {
    // Invariant: each layer overrides the one below it: a file key beats
    // the built-in default, WCONF_* beats the file, a flag beats WCONF_*.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("from-file");
    let (file_port, env_port, flag_port) = (free_port(), free_port(), free_port());
    let config = dir.path().join("wconfd.toml");
    std::fs::write(
        &config,
        format!(
            "data-dir = {:?}\nlisten = \"127.0.0.1:{file_port}\"\nlog-format = \"json\"\n",
            data.to_str().unwrap()
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();

    let (addr, _) = ready_address(&["--config", config], &[]);
    assert_eq!(addr, format!("127.0.0.1:{file_port}"));
    assert!(data.join("LOCK").exists(), "data-dir from the file unused");

    let env_listen = format!("127.0.0.1:{env_port}");
    let env = [("WCONF_LISTEN", env_listen.as_str()), ("RUST_LOG", "info")];
    let (addr, log) = ready_address(&["--config", config], &env);
    assert_eq!(addr, env_listen);
    for line in log.lines() {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("log-format json from the file: {e}: {line}"));
        assert!(v.get("level").is_some(), "{line}");
    }
    assert!(log.contains("\"ready\""), "{log}");

    let flag_listen = format!("127.0.0.1:{flag_port}");
    let args = ["--config", config, "--listen", &flag_listen];
    let (addr, _) = ready_address(&args, &env);
    assert_eq!(addr, flag_listen);
}

#[test]
fn an_unknown_config_key_exits_2_naming_key_and_file() {
    // Invariant: a key that is no flag is a usage error (exit 2) naming
    // the key and the file; nothing starts.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("wconfd.toml");
    std::fs::write(&config, "listen = \"127.0.0.1:1\"\ndata_dir = \"x\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_wconfd"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown key `data_dir`"), "{err}");
    assert!(err.contains(config.to_str().unwrap()), "{err}");
}

fn generated(bin: &str, args: &[&str]) -> String {
    let out = Command::new(bin).args(args).output().unwrap();
    assert!(out.status.success(), "{bin} {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn completions_and_man_pages_mention_every_flag_of_both_binaries() {
    // Invariant: for wconfd and wconfctl, the bash, zsh and fish completions
    // and the man pages (every page with --out-dir) name every long flag
    // of every subcommand.
    let binaries = [
        (env!("CARGO_BIN_EXE_wconfd"), wconf::cli::wconfd::command()),
        (
            env!("CARGO_BIN_EXE_wconfctl"),
            wconf::cli::wconfctl::command(),
        ),
    ];
    for (bin, cmd) in binaries {
        let flags = wconf::cli::long_flags(&cmd);
        assert!(flags.len() > 3, "{flags:?}");
        for shell in ["bash", "zsh", "fish"] {
            let script = generated(bin, &["completions", shell]);
            for flag in &flags {
                let written = match shell {
                    "fish" => format!("-l {flag}"),
                    _ => format!("--{flag}"),
                };
                assert!(script.contains(&written), "{bin} {shell}: no {written}");
            }
        }
        let page = generated(bin, &["man"]);
        assert!(page.contains(".TH"), "{page:.200}");
        let dir = tempfile::tempdir().unwrap();
        generated(bin, &["man", "--out-dir", dir.path().to_str().unwrap()]);
        let pages = all_files(dir.path());
        for flag in &flags {
            let roff = format!("\\-\\-{}", flag.replace('-', "\\-"));
            assert!(pages.contains(&roff), "{bin} man pages: no {roff}");
        }
    }
}

fn all_files(dir: &Path) -> String {
    let mut text = String::new();
    for e in std::fs::read_dir(dir).unwrap() {
        text.push_str(&std::fs::read_to_string(e.unwrap().path()).unwrap());
    }
    text
}
