//! A typed, blocking client for API v1, used by the tests, benches and
//! `wconfctl`. One method per endpoint; errors keep the server's code and
//! message.

use std::fmt;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::api::error::ErrorBody;
use crate::api::types::*;
use crate::auth::Token;

/// How long a request may take by default. Waiting acquires add their
/// `wait_ms` on the server side, so callers that wait long set their own.
pub const TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);

#[derive(Debug)]
#[non_exhaustive]
pub enum ClientError {
    /// The server answered with an error.
    Api {
        status: u16,
        code: String,
        message: String,
    },
    /// No answer: connection refused or reset, timeout, or a body that is
    /// not what the API promises.
    Transport(String),
}

impl ClientError {
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            ClientError::Transport(_) => None,
        }
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Api {
                status,
                code,
                message,
            } => write!(f, "{status} {code}: {message}"),
            ClientError::Transport(e) => write!(f, "transport: {e}"),
        }
    }
}

impl std::error::Error for ClientError {}

pub struct Client {
    base: String,
    agent: ureq::Agent,
    /// Sent as `Authorization: Bearer` with every request when set.
    token: Option<Token>,
}

impl Client {
    /// `base` like `http://127.0.0.1:7370`.
    pub fn new(base: impl Into<String>) -> Client {
        Client::with_timeout(base, TIMEOUT_DEFAULT)
    }

    pub fn with_timeout(base: impl Into<String>, timeout: Duration) -> Client {
        Client {
            base: base.into().trim_end_matches('/').to_string(),
            agent: ureq::AgentBuilder::new().timeout(timeout).build(),
            token: None,
        }
    }

    /// Sends `token` with every request, for a daemon started with
    /// `--auth-token-file` (read it with [`crate::auth::read_token_file`]).
    pub fn with_token(mut self, token: Option<Token>) -> Client {
        self.token = token;
        self
    }

    fn request(&self, method: &str, path: &str) -> ureq::Request {
        let req = self.agent.request(method, &format!("{}{path}", self.base));
        match &self.token {
            Some(t) => req.set("Authorization", &format!("Bearer {}", t.as_str())),
            None => req,
        }
    }

    fn finish<T: DeserializeOwned>(
        result: Result<ureq::Response, ureq::Error>,
    ) -> Result<T, ClientError> {
        match result {
            Ok(resp) => resp
                .into_json()
                .map_err(|e| ClientError::Transport(format!("bad response body: {e}"))),
            Err(ureq::Error::Status(status, resp)) => {
                let text = resp.into_string().unwrap_or_default();
                match serde_json::from_str::<ErrorBody>(&text) {
                    Ok(b) => Err(ClientError::Api {
                        status,
                        code: b.error.code,
                        message: b.error.message,
                    }),
                    Err(_) => Err(ClientError::Api {
                        status,
                        code: "unknown".into(),
                        message: text,
                    }),
                }
            }
            Err(e) => Err(ClientError::Transport(e.to_string())),
        }
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        Self::finish(self.request("GET", path).call())
    }

    pub fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        Self::finish(self.request("POST", path).send_json(body))
    }

    /// Posts raw bytes as JSON, for callers (and tests) that need to send
    /// exactly what they wrote.
    pub fn post_raw<T: DeserializeOwned>(&self, path: &str, body: &[u8]) -> Result<T, ClientError> {
        let req = self
            .request("POST", path)
            .set("Content-Type", "application/json");
        Self::finish(req.send_bytes(body))
    }

    pub fn healthz(&self) -> Result<Value, ClientError> {
        self.get("/healthz")
    }

    pub fn status(&self) -> Result<Status, ClientError> {
        self.get("/v1/status")
    }

    pub fn create_session(
        &self,
        name: Option<&str>,
        ttl_ms: u64,
    ) -> Result<SessionCreated, ClientError> {
        let body = CreateSession {
            name: name.map(str::to_string),
            ttl_ms,
        };
        self.post("/v1/sessions", &body)
    }

    pub fn keepalive(&self, session: &str) -> Result<SessionView, ClientError> {
        // The API takes no body or `{}`; `null` is refused with a 400.
        self.post(
            &format!("/v1/sessions/{session}/keepalive"),
            &serde_json::Map::new(),
        )
    }

    pub fn close_session(&self, session: &str) -> Result<ReleaseResponse, ClientError> {
        Self::finish(
            self.request("DELETE", &format!("/v1/sessions/{session}"))
                .call(),
        )
    }

    pub fn sessions(&self) -> Result<SessionList, ClientError> {
        self.get("/v1/sessions")
    }

    pub fn acquire(&self, req: &AcquireRequest) -> Result<AcquireResponse, ClientError> {
        self.post("/v1/locks/acquire", req)
    }

    pub fn release(&self, req: &ReleaseRequest) -> Result<ReleaseResponse, ClientError> {
        self.post("/v1/locks/release", req)
    }

    pub fn locks(&self) -> Result<LocksView, ClientError> {
        self.get("/v1/locks")
    }

    pub fn config(&self) -> Result<ConfigView, ClientError> {
        self.get("/v1/config")
    }

    /// The value at a JSON pointer such as `/a/b`. Bytes other than
    /// unreserved ones and `/` are percent-encoded, so keys with spaces, `?`
    /// or `#` reach the daemon as written.
    pub fn config_value(&self, pointer: &str) -> Result<ConfigValue, ClientError> {
        self.get(&format!("/v1/config{}", encode_path(pointer)))
    }

    pub fn write(&self, req: &WriteRequest) -> Result<WriteResponse, ClientError> {
        self.post("/v1/config/write", req)
    }

    /// `POST /v1/admin/snapshot`: answers once the snapshot is durable.
    pub fn snapshot(&self) -> Result<SnapshotTaken, ClientError> {
        self.post("/v1/admin/snapshot", &serde_json::json!({}))
    }

    pub fn txn(&self, req: &TxnRequest) -> Result<TxnResponse, ClientError> {
        self.post("/v1/config/txn", req)
    }
}

/// Percent-encodes every byte of `path` but RFC 3986 unreserved ones and `/`.
fn encode_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                out.push(char::from(b))
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}
