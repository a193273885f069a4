//! One keep-alive HTTP/1.1 connection to wconfd, on hyper's low-level client:
//! each load-generator client owns exactly one, so no pool sits between the
//! requests and the socket and no request pays for a connect. The
//! connection is driven inside the client's own task rather than a task of
//! its own, so a request costs no wake-ups across tasks (and threads): the
//! generator shares 2 cores with the daemon it measures.

use std::pin::Pin;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::{Connection, SendRequest};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST, RETRY_AFTER};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::{TcpStream, UnixStream};
use tokio_util::either::Either;

use crate::api::error::ErrorBody;

/// What went wrong with one request, sorted the way the report counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorKind {
    /// The daemon refused the request (a bug in the load generator, or a
    /// limit reached).
    Http4xx,
    /// 503: a queue or table is full (`busy`), or the daemon is stopping.
    Busy503,
    /// Any other 5xx.
    Http5xx,
    /// Connect, send or receive failed; the connection is dropped and the
    /// next request opens a new one.
    Connection,
    /// A 2xx answer that is not what the workload needs: an acquire not
    /// granted after waiting, a write not applied, a body that does not parse.
    Unexpected,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 5] = [
        ErrorKind::Http4xx,
        ErrorKind::Busy503,
        ErrorKind::Http5xx,
        ErrorKind::Connection,
        ErrorKind::Unexpected,
    ];

    /// The name in reports.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Http4xx => "http_4xx",
            ErrorKind::Busy503 => "busy_503",
            ErrorKind::Http5xx => "http_5xx",
            ErrorKind::Connection => "connection",
            ErrorKind::Unexpected => "unexpected",
        }
    }

    fn of_status(status: u16) -> ErrorKind {
        match status {
            503 => ErrorKind::Busy503,
            500..=599 => ErrorKind::Http5xx,
            400..=499 => ErrorKind::Http4xx,
            _ => ErrorKind::Unexpected,
        }
    }
}

/// A failed request: its kind and a message for the report.
#[derive(Debug, Clone)]
pub struct OpError {
    pub kind: ErrorKind,
    pub message: String,
    /// The daemon's `Retry-After`, in seconds, on a 503.
    pub retry_after_s: Option<u64>,
}

impl OpError {
    pub fn unexpected(message: impl Into<String>) -> OpError {
        OpError {
            kind: ErrorKind::Unexpected,
            message: message.into(),
            retry_after_s: None,
        }
    }

    fn connection(what: &str, e: impl std::fmt::Display) -> OpError {
        OpError {
            kind: ErrorKind::Connection,
            message: format!("{what}: {e}"),
            retry_after_s: None,
        }
    }
}

/// An answer: status and the whole body.
pub struct Reply {
    pub status: u16,
    pub body: Bytes,
}

/// The half of a hyper connection that does the socket I/O; polled only
/// while a request is in flight, which is all an HTTP/1.1 client needs.
type Driver = Pin<Box<Connection<TokioIo<Either<TcpStream, UnixStream>>, Full<Bytes>>>>;

/// How long an exchange may still take once its connection has ended: what
/// the daemon sent before closing is already buffered.
const DRIVER_ENDED_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Where the daemon listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `host:port`.
    Tcp(String),
    /// The path of the Unix socket wconfd serves with `--socket`.
    Unix(std::path::PathBuf),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Tcp(addr) => f.write_str(addr),
            Target::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// Where the daemon is and how to talk to it; cloned into every connection.
#[derive(Debug, Clone)]
pub struct Endpoint {
    target: Target,
    host: HeaderValue,
    /// `Bearer <token>`, for a daemon started with `--auth-token-file`.
    authorization: Option<HeaderValue>,
}

impl Endpoint {
    /// `token` is the daemon's bearer token, if it wants one (TCP only:
    /// wconfd guards its Unix socket by the socket file's mode).
    pub fn new(target: &Target, token: Option<&str>) -> Result<Endpoint, String> {
        let host = match target {
            Target::Tcp(addr) => {
                HeaderValue::from_str(addr).map_err(|_| format!("bad address {addr:?}"))?
            }
            Target::Unix(_) => HeaderValue::from_static("localhost"),
        };
        let authorization = token
            .map(|t| {
                let mut v = HeaderValue::from_str(&format!("Bearer {t}"))
                    .map_err(|_| "the token is not a valid header value".to_string())?;
                v.set_sensitive(true);
                Ok::<_, String>(v)
            })
            .transpose()?;
        Ok(Endpoint {
            target: target.clone(),
            host,
            authorization,
        })
    }
}

pub struct Conn {
    endpoint: Endpoint,
    open: Option<(SendRequest<Full<Bytes>>, Driver)>,
    /// Connects made so far: one per connection unless errors forced
    /// reconnects, which the report shows.
    pub connects: u64,
}

impl Conn {
    /// Nothing is connected until the first request.
    pub fn new(endpoint: &Endpoint) -> Conn {
        Conn {
            endpoint: endpoint.clone(),
            open: None,
            connects: 0,
        }
    }

    async fn connect(&mut self) -> Result<(), OpError> {
        let target = &self.endpoint.target;
        let failed = |e| OpError::connection(&format!("connect {target}"), e);
        let stream = match target {
            Target::Tcp(addr) => {
                let stream = TcpStream::connect(addr).await.map_err(failed)?;
                // Requests are small and each waits for its answer: Nagle
                // would only add delay.
                stream
                    .set_nodelay(true)
                    .map_err(|e| OpError::connection("TCP_NODELAY", e))?;
                Either::Left(stream)
            }
            Target::Unix(path) => Either::Right(UnixStream::connect(path).await.map_err(failed)?),
        };
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| OpError::connection("HTTP handshake", e))?;
        self.connects += 1;
        self.open = Some((sender, Box::pin(conn)));
        Ok(())
    }

    /// Sends one request and reads the whole answer, whatever its status.
    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Reply, OpError> {
        let result = self.exchange(method, path, body).await;
        if let Err(e) = &result {
            if e.kind == ErrorKind::Connection {
                self.open = None;
            }
        }
        result
    }

    async fn exchange(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Reply, OpError> {
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, self.endpoint.host.clone());
        if let Some(auth) = &self.endpoint.authorization {
            builder = builder.header(AUTHORIZATION, auth.clone());
        }
        if body.is_some() {
            builder = builder.header(CONTENT_TYPE, "application/json");
        }
        let request = builder
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| OpError::unexpected(format!("request {path}: {e}")))?;
        // The driver is polled only while a request is in flight, so a
        // connection the daemon closed while it sat idle (its keep-alive
        // timeout, 5 s: the observer's and the set-up connection's case)
        // looks open until polled. Poll it once: a closed one ends at once.
        if let Some((_, driver)) = self.open.as_mut() {
            let ended = tokio::select! {
                biased;
                _ = driver => true,
                _ = std::future::ready(()) => false,
            };
            if ended {
                self.open = None;
            }
        }
        if self.open.as_ref().is_none_or(|(s, _)| s.is_closed()) {
            self.connect().await?;
        }
        let (answer, ended) = {
            let (sender, driver) = self.open.as_mut().expect("connected above");
            let exchange = async {
                sender
                    .ready()
                    .await
                    .map_err(|e| OpError::connection("connection not ready", e))?;
                let response = sender
                    .send_request(request)
                    .await
                    .map_err(|e| OpError::connection("send", e))?;
                let status = response.status().as_u16();
                let retry_after_s = response
                    .headers()
                    .get(RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok());
                let body = response
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| OpError::connection("read body", e))?
                    .to_bytes();
                Ok::<_, OpError>((status, retry_after_s, body))
            };
            let mut exchange = std::pin::pin!(exchange);
            tokio::select! {
                biased;
                r = &mut exchange => (r, false),
                // The connection ended (the daemon may close it after an error
                // answer): what it delivered before is buffered, so the exchange
                // still completes, with the answer or with the reason it has none.
                // Bounded: had the connection ended before the request
                // went out, the exchange would wait for a driver nobody
                // polls any more.
                _ = driver => {
                    let answer = tokio::time::timeout(DRIVER_ENDED_GRACE, exchange)
                        .await
                        .unwrap_or_else(|_| {
                            Err(OpError::connection("connection", "closed before the answer"))
                        });
                    (answer, true)
                }
            }
        };
        if ended {
            self.open = None;
        }
        let (status, retry_after_s, body) = answer?;
        if (200..300).contains(&status) {
            Ok(Reply { status, body })
        } else {
            Err(status_error(status, &body, retry_after_s))
        }
    }

    /// A JSON request whose success answer is parsed as `T`.
    pub async fn call<T: DeserializeOwned>(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, OpError> {
        let body = match body {
            Some(b) => Some(
                serde_json::to_vec(b)
                    .map_err(|e| OpError::unexpected(format!("encode {path}: {e}")))?,
            ),
            None => None,
        };
        let reply = self.request(method, path, body).await?;
        serde_json::from_slice(&reply.body).map_err(|e| {
            OpError::unexpected(format!(
                "{path} answered {} with a body that does not parse: {e}",
                reply.status
            ))
        })
    }
}

/// An error answer, with the daemon's code and message when it sent them.
fn status_error(status: u16, body: &[u8], retry_after_s: Option<u64>) -> OpError {
    let detail = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(b) => format!("{} {}: {}", status, b.error.code, b.error.message),
        Err(_) => format!("{status}: {}", String::from_utf8_lossy(body)),
    };
    OpError {
        kind: ErrorKind::of_status(status),
        message: detail,
        retry_after_s,
    }
}
