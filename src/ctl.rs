//! `wconfctl`'s work: one call of API v1 per command, made through
//! [`crate::client`], and the answer rendered for a person (aligned tables
//! for lists, `key: value` lines for single objects) or as JSON.
//! `src/bin/wconfctl.rs` only parses flags and calls [`Ctl`].
//!
//! Errors keep the daemon's code and message, and map to the exit codes in
//! [`exit`], so scripts can tell a refused request from a daemon that is not
//! there.

use std::fmt;
use std::io::Read;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::api::types::*;
use crate::auth::Token;
use crate::client::{Client, ClientError, TIMEOUT_DEFAULT};
use crate::state::SessionId;

/// Exit codes of `wconfctl`.
pub mod exit {
    /// The daemon did what was asked.
    pub const OK: u8 = 0;
    /// The daemon answered with an error (HTTP 4xx or 5xx).
    pub const API: u8 = 1;
    /// Bad flags or arguments, or a patch that cannot be read or parsed;
    /// nothing was sent.
    pub const USAGE: u8 = 2;
    /// No answer: the connection failed (refused, reset, timed out) or the
    /// answer was not what API v1 promises.
    pub const UNREACHABLE: u8 = 3;
    /// The daemon answered 200 but did not do it: an acquire that was not
    /// granted, or a write whose session did not hold `config`. Kept apart
    /// from 0 so `wconfctl lock acquire ... && work` never works unlocked.
    pub const NOT_DONE: u8 = 4;
    /// `wconfctl drill` ran and found a violation of an invariant.
    pub const VIOLATION: u8 = 5;
}

/// Where `wconfd` listens unless told otherwise.
pub const ADDR_DEFAULT: &str = "127.0.0.1:7370";

/// The largest patch read from a file or stdin. The daemon refuses patches
/// over 4 MiB anyway; this only stops a mistaken `@/dev/zero` from eating
/// memory before that.
pub const PATCH_INPUT_BYTES_MAX: u64 = 64 << 20;

/// Why a command failed, with its exit code.
#[derive(Debug)]
#[non_exhaustive]
pub enum CtlError {
    /// A bad argument; nothing was sent.
    Usage(String),
    /// The daemon answered with an error.
    Api {
        status: u16,
        code: String,
        message: String,
    },
    /// No usable answer from the daemon.
    Unreachable { addr: String, message: String },
}

impl CtlError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::Usage(_) => exit::USAGE,
            CtlError::Api { .. } => exit::API,
            CtlError::Unreachable { .. } => exit::UNREACHABLE,
        }
    }

    fn from_client(addr: &str, e: ClientError) -> CtlError {
        match e {
            ClientError::Api {
                status,
                code,
                message,
            } => CtlError::Api {
                status,
                code,
                message,
            },
            ClientError::Transport(message) => CtlError::Unreachable {
                addr: addr.to_string(),
                message,
            },
        }
    }
}

/// The form `wconfctl` prints after `wconfctl: `.
impl fmt::Display for CtlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CtlError::Usage(message) => f.write_str(message),
            CtlError::Api { code, message, .. } => write!(f, "{code}: {message}"),
            CtlError::Unreachable { addr, message } => {
                write!(f, "could not reach wconfd at {addr}: {message}")
            }
        }
    }
}

impl std::error::Error for CtlError {}

/// How answers are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Aligned tables and `key: value` lines.
    Human,
    /// The daemon's JSON answer, pretty-printed.
    Json,
}

/// A 200 answer, rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// For stdout; ends with a newline.
    pub output: String,
    /// Set when the daemon did not do what was asked (see
    /// [`exit::NOT_DONE`]); says why, for stderr.
    pub not_done: Option<String>,
}

impl Answer {
    pub fn exit_code(&self) -> u8 {
        match self.not_done {
            Some(_) => exit::NOT_DONE,
            None => exit::OK,
        }
    }
}

/// One daemon's address and the output format: each method is one endpoint.
pub struct Ctl {
    base: String,
    format: Format,
    token: Option<Token>,
}

impl Ctl {
    /// `addr` is `host:port` or `http://host:port`. (ureq 2, under
    /// `wconf::client`, speaks TCP only, so there is no Unix-socket form.)
    pub fn new(addr: &str, format: Format) -> Result<Ctl, CtlError> {
        let addr = addr.trim().trim_end_matches('/');
        let base = match addr.split_once("://") {
            None => format!("http://{addr}"),
            Some(("http", _)) => addr.to_string(),
            Some((scheme, _)) => {
                return Err(CtlError::Usage(format!(
                    "--addr {addr:?}: only http:// is supported, not {scheme}://"
                )))
            }
        };
        let host = &base["http://".len()..];
        if host.is_empty() || host.contains('/') {
            return Err(CtlError::Usage(format!(
                "--addr {addr:?} is not host:port (e.g. {ADDR_DEFAULT})"
            )));
        }
        Ok(Ctl {
            base,
            format,
            token: None,
        })
    }

    /// Sends this bearer token with every request (`--token-file`).
    pub fn with_token(mut self, token: Option<Token>) -> Ctl {
        self.token = token;
        self
    }

    /// A client whose timeout covers the daemon-side wait of the request,
    /// so the HTTP timeout never cuts a wait the daemon still honours.
    fn client(&self, wait_ms: u64) -> Client {
        Client::with_timeout(
            self.base.clone(),
            TIMEOUT_DEFAULT.saturating_add(Duration::from_millis(wait_ms)),
        )
        .with_token(self.token.clone())
    }

    fn call<T>(&self, result: Result<T, ClientError>) -> Result<T, CtlError> {
        result.map_err(|e| CtlError::from_client(&self.base, e))
    }

    /// Renders `value` as JSON or with `human`, which also says whether the
    /// request was carried out.
    fn render<T: Serialize>(
        &self,
        value: &T,
        human: impl FnOnce(&T) -> String,
        not_done: Option<String>,
    ) -> Result<Answer, CtlError> {
        let output = match self.format {
            Format::Json => {
                let mut text =
                    serde_json::to_string_pretty(value).map_err(|e| CtlError::Unreachable {
                        addr: self.base.clone(),
                        message: format!("cannot print the answer as JSON: {e}"),
                    })?;
                text.push('\n');
                text
            }
            Format::Human => human(value),
        };
        Ok(Answer { output, not_done })
    }

    pub fn status(&self) -> Result<Answer, CtlError> {
        let status = self.call(self.client(0).status())?;
        self.render(&status, human_status, None)
    }

    pub fn health(&self) -> Result<Answer, CtlError> {
        let health = self.call(self.client(0).healthz())?;
        self.render(&health, human_value_fields, None)
    }

    pub fn session_open(&self, name: Option<&str>, ttl_ms: u64) -> Result<Answer, CtlError> {
        let created = self.call(self.client(0).create_session(name, ttl_ms))?;
        self.render(
            &created,
            |c| {
                fields(&[
                    ("session", c.session.clone()),
                    ("ttl_ms", c.ttl_ms.to_string()),
                    ("epoch", c.epoch.to_string()),
                ])
            },
            None,
        )
    }

    pub fn session_keepalive(&self, session: &str) -> Result<Answer, CtlError> {
        let view = self.call(self.client(0).keepalive(session))?;
        self.render(&view, |v| fields(&session_fields(v)), None)
    }

    pub fn session_close(&self, session: &str) -> Result<Answer, CtlError> {
        let closed = self.call(self.client(0).close_session(session))?;
        self.render(&closed, human_released, None)
    }

    pub fn session_list(&self) -> Result<Answer, CtlError> {
        let list = self.call(self.client(0).sessions())?;
        self.render(&list, human_sessions, None)
    }

    pub fn lock_acquire(&self, req: &AcquireRequest) -> Result<Answer, CtlError> {
        let resp = self.call(self.client(req.wait_ms).acquire(req))?;
        let not_done = (!resp.granted).then(|| {
            let n = resp.blockers.as_ref().map_or(0, Vec::len);
            format!("not granted: blocked by {n} session(s); nothing was taken")
        });
        self.render(&resp, human_acquire, not_done)
    }

    pub fn lock_release(&self, req: &ReleaseRequest) -> Result<Answer, CtlError> {
        let resp = self.call(self.client(0).release(req))?;
        self.render(&resp, human_released, None)
    }

    pub fn lock_list(&self) -> Result<Answer, CtlError> {
        let view = self.call(self.client(0).locks())?;
        self.render(&view, human_locks, None)
    }

    /// The whole document, or the value at a JSON pointer (`/a/b`; `~1` and
    /// `~0` escape `/` and `~` inside a key).
    pub fn config_get(&self, pointer: Option<&str>) -> Result<Answer, CtlError> {
        match pointer.filter(|p| !p.is_empty()) {
            None => {
                let view = self.call(self.client(0).config())?;
                self.render(
                    &view,
                    |v| {
                        fields(&[
                            ("serial", v.serial.to_string()),
                            ("lsn", v.lsn.to_string()),
                            ("config", pretty(&v.config)),
                        ])
                    },
                    None,
                )
            }
            Some(pointer) => {
                if !pointer.starts_with('/') {
                    return Err(CtlError::Usage(format!(
                        "{pointer:?} is not a JSON pointer: it must start with '/' (e.g. /cluster/name)"
                    )));
                }
                let value = self.call(self.client(0).config_value(pointer))?;
                self.render(
                    &value,
                    |v| {
                        fields(&[
                            ("serial", v.serial.to_string()),
                            ("value", pretty(&v.value)),
                        ])
                    },
                    None,
                )
            }
        }
    }

    pub fn config_write(&self, req: &WriteRequest) -> Result<Answer, CtlError> {
        let resp = self.call(self.client(0).write(req))?;
        let not_done = (!resp.applied).then(|| {
            format!(
                "not applied: session {} does not hold \"config\" exclusively; nothing changed",
                req.session
            )
        });
        self.render(&resp, human_write, not_done)
    }

    pub fn config_txn(&self, req: &TxnRequest) -> Result<Answer, CtlError> {
        let resp = self.call(self.client(req.wait_ms).txn(req))?;
        self.render(
            &resp,
            |r| {
                fields(&[
                    ("applied", r.applied.to_string()),
                    ("serial", r.serial.to_string()),
                    ("lsn", r.lsn.to_string()),
                ])
            },
            None,
        )
    }
}

/// `wconfctl drill`: runs a recovery drill and renders its report. The exit
/// code is [`exit::OK`] when every invariant held, [`exit::VIOLATION`] if
/// not; a drill that could not run at all is an error.
pub fn drill(opts: &crate::drill::DrillOptions, format: Format) -> Result<(String, u8), CtlError> {
    use crate::drill::DrillError;
    let report = crate::drill::run(opts).map_err(|e| match e {
        DrillError::Usage(m) => CtlError::Usage(m),
        DrillError::Setup(message) => CtlError::Unreachable {
            addr: opts.wconfd.display().to_string(),
            message,
        },
    })?;
    let output = match format {
        Format::Json => {
            let mut text = serde_json::to_string_pretty(&report)
                .map_err(|e| CtlError::Usage(e.to_string()))?;
            text.push('\n');
            text
        }
        Format::Human => report.human(),
    };
    Ok((
        output,
        if report.passed {
            exit::OK
        } else {
            exit::VIOLATION
        },
    ))
}

// ---- Arguments --------------------------------------------------------------

/// Checks a session id (32 lowercase hex digits, as the daemon prints it)
/// before it goes into a URL path.
pub fn parse_session(text: &str) -> Result<String, String> {
    SessionId::from_str(text)
        .map(|id| id.to_string())
        .map_err(|_| format!("{text:?} is not a session id (32 lowercase hex digits)"))
}

/// `NAME`, `NAME:shared` or `NAME:exclusive`; a bare name is exclusive.
/// Only those two suffixes are modes, so `node:1` is a name.
pub fn parse_lock_spec(text: &str) -> Result<LockSpec, String> {
    let (name, mode) = match text.rsplit_once(':') {
        Some((name, "shared")) => (name, Mode::Shared),
        Some((name, "exclusive")) => (name, Mode::Exclusive),
        _ => (text, Mode::Exclusive),
    };
    if name.is_empty() {
        return Err(format!("{text:?} has an empty lock name"));
    }
    Ok(LockSpec {
        name: name.to_string(),
        mode,
    })
}

/// Where a JSON Patch comes from: inline JSON, `@FILE`, or `-` for stdin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PatchSource {
    Inline(String),
    File(PathBuf),
    Stdin,
}

impl FromStr for PatchSource {
    type Err = String;

    fn from_str(text: &str) -> Result<PatchSource, String> {
        Ok(match text {
            "-" => PatchSource::Stdin,
            "@" => return Err("@ needs a file name: --patch @patch.json".into()),
            _ => match text.strip_prefix('@') {
                Some(path) => PatchSource::File(PathBuf::from(path)),
                None => PatchSource::Inline(text.to_string()),
            },
        })
    }
}

impl PatchSource {
    /// Reads and parses the patch. Only JSON syntax is checked here; that it
    /// is an array of RFC 6902 operations is the daemon's to say.
    pub fn load(&self) -> Result<Value, CtlError> {
        let (text, from) = match self {
            PatchSource::Inline(text) => (text.clone(), "--patch".to_string()),
            PatchSource::File(path) => {
                let file = std::fs::File::open(path).map_err(|e| {
                    CtlError::Usage(format!("cannot open patch file {}: {e}", path.display()))
                })?;
                (
                    read_bounded(file, &path.display().to_string())?,
                    path.display().to_string(),
                )
            }
            PatchSource::Stdin => (read_bounded(std::io::stdin(), "stdin")?, "stdin".into()),
        };
        serde_json::from_str(&text)
            .map_err(|e| CtlError::Usage(format!("the patch from {from} is not JSON: {e}")))
    }
}

fn read_bounded(input: impl Read, from: &str) -> Result<String, CtlError> {
    let mut text = String::new();
    input
        .take(PATCH_INPUT_BYTES_MAX + 1)
        .read_to_string(&mut text)
        .map_err(|e| CtlError::Usage(format!("cannot read the patch from {from}: {e}")))?;
    if text.len() as u64 > PATCH_INPUT_BYTES_MAX {
        return Err(CtlError::Usage(format!(
            "the patch from {from} is over {PATCH_INPUT_BYTES_MAX} bytes"
        )));
    }
    Ok(text)
}

// ---- Human output -----------------------------------------------------------

/// `key: value` lines, values aligned. A value of several lines (a JSON
/// document) starts on the line after its key.
fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (key, value) in pairs {
        let key = format!("{key}:");
        if value.contains('\n') {
            out.push_str(&key);
            out.push('\n');
            out.push_str(value);
            out.push('\n');
        } else {
            out.push_str(format!("{key:<w$} {value}", w = width + 1).trim_end());
            out.push('\n');
        }
    }
    out
}

/// A table: a header row and aligned columns, two spaces apart; the last
/// column is not padded.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        debug_assert_eq!(row.len(), headers.len());
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.zip(&widths).enumerate() {
            if i > 0 {
                out.push_str("  ");
            }
            out.push_str(cell);
            let pad = w.saturating_sub(cell.chars().count());
            out.extend(std::iter::repeat_n(' ', pad));
        }
        let mut out = out.trim_end().to_string();
        out.push('\n');
        out
    };
    let mut out = line(&mut headers.iter().copied());
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}

/// Indented JSON, without a final newline.
fn pretty(value: &Value) -> String {
    // Serialising a Value cannot fail (its keys are strings).
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Shared => "shared",
        Mode::Exclusive => "exclusive",
    }
}

fn lock_specs(locks: &[LockSpec]) -> String {
    locks
        .iter()
        .map(|l| format!("{}:{}", l.name, mode_name(l.mode)))
        .collect::<Vec<_>>()
        .join(" ")
}

fn or_dash<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_string(), |v| v.to_string())
}

fn human_status(s: &Status) -> String {
    fields(&[
        ("epoch", s.epoch.to_string()),
        ("applied_lsn", s.applied_lsn.to_string()),
        ("durable_lsn", s.durable_lsn.to_string()),
        ("segments", s.segments.to_string()),
        ("segment_bytes", s.segment_bytes.to_string()),
        ("sessions", s.sessions.to_string()),
        ("locks_held", s.locks_held.to_string()),
        ("waiters", s.waiters.to_string()),
        ("config_serial", s.config_serial.to_string()),
        ("uptime_ms", s.uptime_ms.to_string()),
        ("fsync_last_us", s.fsync_last_us.to_string()),
        ("fsync_p99_us", s.fsync_p99_us.to_string()),
    ])
}

/// An object of scalars (e.g. `/healthz`) as `key: value` lines.
fn human_value_fields(v: &Value) -> String {
    match v.as_object() {
        Some(map) => {
            let pairs: Vec<(&str, String)> = map
                .iter()
                .map(|(k, v)| (k.as_str(), v.to_string()))
                .collect();
            fields(&pairs)
        }
        None => pretty(v) + "\n",
    }
}

fn session_fields(v: &SessionView) -> Vec<(&'static str, String)> {
    vec![
        ("session", v.session.clone()),
        ("name", or_dash(v.name.as_deref())),
        ("ttl_ms", v.ttl_ms.to_string()),
        ("lease_remaining_ms", or_dash(v.lease_remaining_ms)),
    ]
}

fn human_sessions(list: &SessionList) -> String {
    if list.sessions.is_empty() {
        return "no sessions\n".into();
    }
    let rows: Vec<Vec<String>> = list
        .sessions
        .iter()
        .map(|v| {
            session_fields(v)
                .into_iter()
                .map(|(_, cell)| cell)
                .collect()
        })
        .collect();
    table(&["SESSION", "NAME", "TTL_MS", "LEASE_REMAINING_MS"], &rows)
}

fn human_released(r: &ReleaseResponse) -> String {
    fields(&[
        ("released", r.released.to_string()),
        ("lsn", r.lsn.to_string()),
    ])
}

fn human_acquire(r: &AcquireResponse) -> String {
    let mut pairs = vec![("granted", r.granted.to_string())];
    if let Some(token) = r.token {
        pairs.push(("token", token.to_string()));
    }
    if let Some(lsn) = r.lsn {
        pairs.push(("lsn", lsn.to_string()));
    }
    if let Some(locks) = &r.locks {
        pairs.push(("locks", lock_specs(locks)));
    }
    if let Some(blockers) = &r.blockers {
        pairs.push(("blockers", blockers.join(" ")));
    }
    fields(&pairs)
}

fn human_locks(v: &LocksView) -> String {
    let mut out = String::from("HOLDERS\n");
    if v.holders.is_empty() {
        out.push_str("(none)\n");
    } else {
        let rows: Vec<Vec<String>> = v
            .holders
            .iter()
            .map(|h| {
                vec![
                    h.name.clone(),
                    mode_name(h.mode).to_string(),
                    h.session.clone(),
                    h.token.to_string(),
                ]
            })
            .collect();
        out.push_str(&table(&["NAME", "MODE", "SESSION", "TOKEN"], &rows));
    }
    out.push_str("\nWAITERS\n");
    if v.waiters.is_empty() {
        out.push_str("(none)\n");
    } else {
        let rows: Vec<Vec<String>> = v
            .waiters
            .iter()
            .map(|w| {
                vec![
                    w.session.clone(),
                    w.priority.to_string(),
                    w.age_ms.to_string(),
                    lock_specs(&w.locks),
                ]
            })
            .collect();
        out.push_str(&table(&["SESSION", "PRIORITY", "AGE_MS", "LOCKS"], &rows));
    }
    out
}

fn human_write(r: &WriteResponse) -> String {
    fields(&[
        ("applied", r.applied.to_string()),
        ("lock_was_held", r.lock_was_held.to_string()),
        ("serial", or_dash(r.serial)),
        ("lsn", or_dash(r.lsn)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_specs_parse_modes_and_keep_colons_in_names() {
        // Invariant: only ":shared" and ":exclusive" are modes; a bare name
        // is exclusive, and other colons belong to the name.
        let spec = |t| parse_lock_spec(t).map(|l| (l.name, l.mode));
        assert_eq!(spec("config"), Ok(("config".into(), Mode::Exclusive)));
        assert_eq!(spec("a:shared"), Ok(("a".into(), Mode::Shared)));
        assert_eq!(spec("a:exclusive"), Ok(("a".into(), Mode::Exclusive)));
        assert_eq!(spec("node:1"), Ok(("node:1".into(), Mode::Exclusive)));
        assert_eq!(spec("n:1:shared"), Ok(("n:1".into(), Mode::Shared)));
        assert!(parse_lock_spec("").is_err());
        assert!(parse_lock_spec(":shared").is_err());
    }

    #[test]
    fn session_ids_must_be_canonical_before_they_reach_a_url() {
        // Invariant: nothing but 32 lowercase hex digits goes into a path.
        let id = "0123456789abcdef0123456789abcdef";
        assert_eq!(parse_session(id), Ok(id.to_string()));
        assert!(parse_session("../../v1/config").is_err());
        assert!(parse_session(&id.to_uppercase()).is_err());
        assert!(parse_session("").is_err());
    }

    #[test]
    fn patch_sources_and_bad_json_are_usage_errors() {
        // Invariant: a patch that cannot be read or parsed is exit 2, and
        // nothing is sent.
        assert_eq!("-".parse(), Ok(PatchSource::Stdin));
        assert_eq!("@p.json".parse(), Ok(PatchSource::File("p.json".into())));
        assert!("@".parse::<PatchSource>().is_err());
        let inline = PatchSource::Inline(r#"[{"op":"add","path":"/a","value":1}]"#.into());
        assert!(inline.load().is_ok());
        let bad = PatchSource::Inline("[{".into());
        assert_eq!(bad.load().map_err(|e| e.exit_code()), Err(exit::USAGE));
        let missing = PatchSource::File("/nonexistent/wconfctl/patch.json".into());
        assert_eq!(missing.load().map_err(|e| e.exit_code()), Err(exit::USAGE));
    }

    #[test]
    fn addresses_take_host_port_or_http_only() {
        // Invariant: a scheme other than http:// is refused up front rather
        // than failing later as "could not connect".
        assert!(Ctl::new("127.0.0.1:7370", Format::Human).is_ok());
        assert!(Ctl::new("http://127.0.0.1:7370/", Format::Human).is_ok());
        assert!(Ctl::new("https://h:1", Format::Human).is_err());
        assert!(Ctl::new("unix:///run/wconf.sock", Format::Human).is_err());
        assert!(Ctl::new("", Format::Human).is_err());
        assert!(Ctl::new("h:1/v1", Format::Human).is_err());
    }

    #[test]
    fn tables_align_columns_and_fields_align_values() {
        // Invariant: every cell of a column starts at the same offset.
        let t = table(
            &["NAME", "MODE"],
            &[
                vec!["config".into(), "exclusive".into()],
                vec!["a".into(), "shared".into()],
            ],
        );
        assert_eq!(t, "NAME    MODE\nconfig  exclusive\na       shared\n");
        let f = fields(&[("lsn", "7".into()), ("serial", "3".into())]);
        assert_eq!(f, "lsn:    7\nserial: 3\n");
        let doc = fields(&[
            ("serial", "3".into()),
            ("config", "{\n  \"a\": 1\n}".into()),
        ]);
        assert_eq!(doc, "serial: 3\nconfig:\n{\n  \"a\": 1\n}\n");
    }

    #[test]
    fn errors_render_code_and_message_with_their_exit_codes() {
        // Invariant: daemon errors print "<code>: <message>" and exit 1; no
        // answer exits 3; usage exits 2.
        let api = CtlError::from_client(
            "http://h:1",
            ClientError::Api {
                status: 404,
                code: "unknown_session".into(),
                message: "no session x".into(),
            },
        );
        assert_eq!(api.to_string(), "unknown_session: no session x");
        assert_eq!(api.exit_code(), exit::API);
        let gone = CtlError::from_client("http://h:1", ClientError::Transport("refused".into()));
        assert_eq!(gone.exit_code(), exit::UNREACHABLE);
        assert_eq!(CtlError::Usage("x".into()).exit_code(), exit::USAGE);
    }
}
