//! The clean shutdown of the real `wconfd` (issue 5, item 4) and its
//! service-manager handshake (`sd_notify`, item 5): SIGTERM answers every
//! request, writes the final snapshot and frees the directory; a second
//! signal exits at once; READY=1 and STOPPING=1 reach a `NOTIFY_SOCKET`.

use std::io::{BufRead, BufReader, Write as _};
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, ExitStatus};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::json;
use wconf::api::types::*;
use wconf::client::{Client, ClientError};
use wconf::server::exit;

use crate::daemon::{acquire, command, eventually, lock, session, start, start_with};

/// A bound on failure, never a synchronisation: how long a test waits for
/// something that should happen within milliseconds.
const PATIENCE: Duration = Duration::from_secs(20);

fn signal(child: &Child, sig: Signal) {
    kill(Pid::from_raw(child.id() as i32), sig).expect("signal wconfd");
}

/// Waits for the child to exit, failing the test if it does not in time.
fn exited(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        assert!(Instant::now() < deadline, "wconfd did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The LSN of the newest snapshot file in `dir`.
fn newest_snapshot(dir: &Path) -> Option<u64> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| wconf::snapshot::parse_snapshot_name(e.ok()?.file_name().to_str()?))
        .max()
}

fn txn(path: &str, value: u64) -> TxnRequest {
    TxnRequest {
        patch: json!([{"op": "add", "path": path, "value": value}]),
        if_serial: None,
        wait_ms: 0,
        request_id: None,
    }
}

/// A refusal because the daemon stops, or no connection any more: both say
/// "not done" to the client; neither may be a timeout (a hang).
fn assert_stopped_answer(who: &str, e: &ClientError) {
    match e {
        ClientError::Api { status, code, .. } => {
            assert_eq!(
                (*status, code.as_str()),
                (503, "shutting_down"),
                "{who}: {e}"
            )
        }
        ClientError::Transport(m) => assert!(!m.contains("timed out"), "{who} hung: {m}"),
        other => panic!("{who}: {other}"),
    }
}

#[test]
fn sigterm_answers_every_request_then_exits_0_and_frees_the_directory() {
    // Invariant: on SIGTERM every request in flight gets an answer (its own,
    // or 503 shutting_down; a waiting acquire never hangs), the daemon writes
    // a snapshot of its last state and exits 0 with the directory lock free,
    // and every acknowledged change is there on the next start.
    let dir = tempfile::tempdir().unwrap();
    let mut d = start(dir.path(), &[]);
    let holder = session(&d.client);
    let held = acquire(&holder, vec![lock("node/a", Mode::Exclusive)], None);
    assert!(d.client.acquire(&held).unwrap().granted);

    let waiter = session(&d.client);
    let base = d.base.clone();
    let waiting = std::thread::spawn(move || {
        let mut req = acquire(&waiter, vec![lock("node/a", Mode::Exclusive)], None);
        req.wait_ms = 600_000;
        Client::new(base).acquire(&req)
    });
    eventually("the acquire to wait", || {
        d.client.locks().unwrap().waiters.len() == 1
    });

    // Writers run until the daemon stops answering them; each reports its
    // first acknowledgement, so the signal lands with writes in flight.
    const WRITERS: u64 = 4;
    let (first_tx, first_rx) = mpsc::channel();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let c = Client::with_timeout(d.base.clone(), PATIENCE);
            let first_tx = first_tx.clone();
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                for i in 0.. {
                    match c.txn(&txn(&format!("/w{w}_{i}"), i)) {
                        Ok(t) => {
                            assert!(t.applied);
                            acked.push(i);
                            if i == 0 {
                                first_tx.send(()).unwrap();
                            }
                        }
                        Err(e) => return (acked, e),
                    }
                }
                unreachable!()
            })
        })
        .collect();
    for _ in 0..WRITERS {
        first_rx.recv_timeout(PATIENCE).expect("a first write");
    }
    signal(&d.child, Signal::SIGTERM);

    let waited = waiting.join().unwrap();
    match &waited {
        Err(ClientError::Api { status, code, .. }) => {
            assert_eq!((*status, code.as_str()), (503, "shutting_down"))
        }
        other => panic!("the waiting acquire got {other:?}"),
    }
    let mut acked = Vec::new();
    for (w, t) in writers.into_iter().enumerate() {
        let (done, last) = t.join().unwrap();
        assert_stopped_answer(&format!("writer {w}"), &last);
        acked.push(done);
    }
    let status = exited(&mut d.child);
    assert_eq!(status.code(), Some(exit::OK), "{status}");

    // The directory lock is free: a new daemon starts at once, and holds
    // every acknowledged write. Its epoch record follows the last record
    // of the stopped run, which the final snapshot covers.
    let d = start(dir.path(), &[]);
    let last_lsn = d.client.status().unwrap().applied_lsn - 1;
    assert_eq!(newest_snapshot(dir.path()), Some(last_lsn));
    let config = d.client.config().unwrap().config;
    for (w, done) in acked.iter().enumerate() {
        for i in done {
            assert_eq!(config[format!("w{w}_{i}")], json!(i), "acked write lost");
        }
    }
    let holders = d.client.locks().unwrap().holders;
    assert!(holders
        .iter()
        .any(|h| h.name == "node/a" && h.session == holder));
}

/// A `NOTIFY_SOCKET` for the child, and what arrives on it.
struct Notify {
    socket: UnixDatagram,
    path: std::path::PathBuf,
}

impl Notify {
    fn bind(dir: &Path) -> Notify {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        socket.set_read_timeout(Some(PATIENCE)).unwrap();
        Notify { socket, path }
    }

    /// The next datagram, as text.
    fn next(&self) -> String {
        let mut buf = [0u8; 4096];
        let n = self.socket.recv(&mut buf).expect("a notification in time");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }
}

#[test]
fn ready_reaches_notify_socket_only_once_http_answers_then_stopping() {
    // Invariant: with NOTIFY_SOCKET set, READY=1 is sent only when the HTTP
    // port already answers, and STOPPING=1 when a clean shutdown begins.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let notify = Notify::bind(dir.path());
    let mut child = command(&data, 0, &[])
        .env("NOTIFY_SOCKET", &notify.path)
        .spawn()
        .expect("spawn wconfd");
    assert_eq!(notify.next(), "READY=1\n");
    // The ready line came before READY=1; it names the port (0 was asked).
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .strip_prefix("wconfd ready on ")
        .and_then(|r| r.split(' ').next())
        .expect("ready line");
    let health = Client::new(addr).healthz().expect("answers once READY=1");
    assert_eq!(health["ok"], json!(true));

    signal(&child, Signal::SIGTERM);
    assert_eq!(notify.next(), "STOPPING=1\n");
    assert_eq!(exited(&mut child).code(), Some(exit::OK));
}

#[test]
fn a_second_signal_exits_at_once_and_the_log_stays_safe() {
    // Invariant: a second SIGTERM during the clean shutdown exits at once
    // with exit::FORCED, and every acknowledged change is there on the next
    // start.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let notify = Notify::bind(dir.path());
    let mut d = start_with(&data, &[], |cmd| {
        cmd.env("NOTIFY_SOCKET", &notify.path);
    });
    assert_eq!(notify.next(), "READY=1\n");
    let acked: Vec<u64> = (0..5)
        .map(|i| d.client.txn(&txn(&format!("/k{i}"), i)).unwrap().serial)
        .collect();
    // A request whose body never finishes keeps the HTTP drain busy for
    // SHUTDOWN_DRAIN_S, so the shutdown is still running at the second
    // signal. `100 Continue` comes once the server took the request in.
    let addr = d.base.trim_start_matches("http://");
    let mut slow = TcpStream::connect(addr).unwrap();
    slow.write_all(
        b"POST /v1/config/txn HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
          Expect: 100-continue\r\nContent-Length: 1000\r\n\r\n",
    )
    .unwrap();
    slow.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut line = String::new();
    BufReader::new(&slow).read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 100"), "{line:?}");
    slow.write_all(b"{\"patch\":").unwrap();
    signal(&d.child, Signal::SIGTERM);
    assert_eq!(notify.next(), "STOPPING=1\n");
    signal(&d.child, Signal::SIGTERM);
    let status = exited(&mut d.child);
    assert_eq!(status.code(), Some(exit::FORCED), "{status}");
    drop(slow);

    let d = start(&data, &[]);
    let last_lsn = d.client.status().unwrap().applied_lsn - 1;
    assert!(
        newest_snapshot(&data) < Some(last_lsn),
        "a forced stop wrote a snapshot"
    );
    let config = d.client.config().unwrap();
    assert_eq!(config.serial, *acked.last().unwrap());
    for i in 0..5u64 {
        assert_eq!(config.config[format!("k{i}")], json!(i));
    }
}
