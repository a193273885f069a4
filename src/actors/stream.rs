//! Streamed JSON response bodies: a value is encoded on a blocking thread
//! into chunks of [`CHUNK_BYTES`], at most [`CHUNKS_BUFFERED`] of them
//! ahead of the socket, so a read of a 100 MB document holds a few hundred
//! KiB of its text instead of all of it, for as long as the client takes.
//!
//! The body ends cleanly only after the encoder said it finished. If the
//! encoder stops early (the client stalled past [`SEND_TIMEOUT`], or a
//! panic), the stream ends with an error, so actix-web drops the connection
//! instead of sending the last chunk: a client never mistakes a cut body
//! for a whole one.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::web::Bytes;
use serde::Serialize;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// Bytes of encoded text per chunk sent.
pub const CHUNK_BYTES: usize = 64 * 1024;
/// Chunks an encoder may run ahead of its client.
pub const CHUNKS_BUFFERED: usize = 4;
/// Encoders running at once, each on a blocking thread; more streamed reads
/// wait for one to finish.
pub const ENCODERS_MAX: usize = 4;
/// How long an encoder waits for its client to take a chunk before it
/// gives up, so a client that stops reading cannot hold an encoder forever.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(30);

enum Chunk {
    Data(Bytes),
    Done,
}

/// Runs encoders, at most [`ENCODERS_MAX`] at a time.
#[derive(Clone)]
pub struct Encoders {
    permits: Arc<Semaphore>,
    send_timeout: Duration,
}

impl Default for Encoders {
    fn default() -> Encoders {
        Encoders::new(SEND_TIMEOUT)
    }
}

impl Encoders {
    /// Encoders that give up on a client that took no chunk for
    /// `send_timeout`.
    pub fn new(send_timeout: Duration) -> Encoders {
        Encoders {
            permits: Arc::new(Semaphore::new(ENCODERS_MAX)),
            send_timeout,
        }
    }

    /// Starts encoding `value` as JSON once an encoder is free, and returns
    /// the body that streams it. Must be called inside a tokio runtime that
    /// keeps running (an actix arbiter), whose timer bounds each send.
    pub async fn stream<T: Serialize + Send + 'static>(&self, value: T) -> Body {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let (tx, rx) = mpsc::channel(CHUNKS_BUFFERED);
        let out = ChunkWriter {
            buf: Vec::with_capacity(CHUNK_BYTES),
            tx,
            runtime: tokio::runtime::Handle::current(),
            timeout: self.send_timeout,
        };
        tokio::task::spawn_blocking(move || encode(value, out, permit));
        Body { rx, done: false }
    }
}

fn encode<T: Serialize>(value: T, mut out: ChunkWriter, _permit: OwnedSemaphorePermit) {
    let encoded = serde_json::to_writer(&mut out, &value).map_err(io::Error::from);
    if let Err(e) = encoded.and_then(|()| out.finish()) {
        // The client went away or stopped reading: nothing to tell it.
        tracing::debug!(error = %e, "a streamed read stopped early");
    }
}

struct ChunkWriter {
    buf: Vec<u8>,
    tx: mpsc::Sender<Chunk>,
    runtime: tokio::runtime::Handle,
    timeout: Duration,
}

impl ChunkWriter {
    fn send(&mut self, chunk: Chunk) -> io::Result<()> {
        let sent = self
            .runtime
            .block_on(tokio::time::timeout(self.timeout, self.tx.send(chunk)));
        match sent {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the client went away",
            )),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client took no chunk for {:?}", self.timeout),
            )),
        }
    }

    fn send_buffered(&mut self) -> io::Result<()> {
        let full = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK_BYTES));
        self.send(Chunk::Data(Bytes::from(full)))
    }

    /// Sends what is left, then the end.
    fn finish(mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            let last = std::mem::take(&mut self.buf);
            self.send(Chunk::Data(Bytes::from(last)))?;
        }
        self.send(Chunk::Done)
    }
}

impl io::Write for ChunkWriter {
    /// Takes all of `data`, cut into chunks of exactly `CHUNK_BYTES`, so a
    /// long string in the document does not make one long chunk.
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut rest = data;
        while !rest.is_empty() {
            let take = rest.len().min(CHUNK_BYTES - self.buf.len());
            self.buf.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.buf.len() == CHUNK_BYTES {
                self.send_buffered()?;
            }
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A streamed response body (`HttpResponse::streaming`).
pub struct Body {
    rx: mpsc::Receiver<Chunk>,
    done: bool,
}

impl futures_core::Stream for Body {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Chunk::Data(bytes))) => Poll::Ready(Some(Ok(bytes))),
            Poll::Ready(Some(Chunk::Done)) => {
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(Some(Err(io::Error::other(
                    "the encoder stopped before the end of the body",
                ))))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_core::Stream;

    /// Every item of `body` until it ends.
    async fn drain(mut body: Body) -> Vec<io::Result<Bytes>> {
        let mut items = Vec::new();
        while let Some(item) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_next(cx)).await {
            items.push(item);
        }
        items
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_body_streams_in_chunks_and_equals_the_encoding() {
        // Invariant: the chunks, in order, are exactly serde_json's encoding,
        // every one but the last exactly CHUNK_BYTES (a string longer than
        // a chunk included), and the body ends cleanly.
        let mut value: Vec<String> = (0..20_000).map(|i| format!("value {i}")).collect();
        value.push("x".repeat(3 * CHUNK_BYTES + 5));
        let body = Encoders::default().stream(value.clone()).await;
        let chunks: Vec<Bytes> = drain(body)
            .await
            .into_iter()
            .map(|item| item.expect("no error"))
            .collect();
        assert!(chunks.len() > 5, "{} chunks", chunks.len());
        let (last, full) = chunks.split_last().unwrap();
        assert!(full.iter().all(|c| c.len() == CHUNK_BYTES));
        assert!(!last.is_empty() && last.len() <= CHUNK_BYTES);
        assert_eq!(chunks.concat(), serde_json::to_vec(&value).unwrap());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_body_whose_encoder_stopped_early_ends_in_an_error() {
        // Invariant: a channel closed without `Done` is an error item, so a
        // cut body is never sent as a complete one.
        let (tx, rx) = mpsc::channel(CHUNKS_BUFFERED);
        tx.send(Chunk::Data(Bytes::from_static(b"[1,")))
            .await
            .unwrap();
        drop(tx);
        let items = drain(Body { rx, done: false }).await;
        assert_eq!(items.len(), 2, "{items:?}");
        assert_eq!(items[0].as_ref().unwrap().as_ref(), b"[1,");
        assert!(items[1].is_err());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_encoder_whose_client_stopped_reading_gives_up() {
        // Invariant: a client that holds its body but reads nothing holds an
        // encoder only for the send timeout; then its body ends in an error
        // and the next read gets the encoder.
        let timeout = Duration::from_millis(300);
        let encoders = Encoders::new(timeout);
        // Far more than CHUNKS_BUFFERED chunks, so every encoder blocks.
        let big: Vec<u64> = (0..1_000_000).collect();
        let start = std::time::Instant::now();
        let mut stalled = Vec::new();
        for _ in 0..ENCODERS_MAX {
            stalled.push(encoders.stream(big.clone()).await);
        }
        let next = drain(encoders.stream(vec![7]).await).await;
        assert!(start.elapsed() >= timeout, "{:?}", start.elapsed());
        // The first encoder to give up let `next` run; the others' sends
        // started a little later (much later on a loaded machine), so give
        // them time to time out too.
        tokio::time::sleep(3 * timeout).await;
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].as_ref().unwrap().as_ref(), b"[7]");
        for body in stalled {
            let items = drain(body).await;
            let oks = items.iter().filter(|i| i.is_ok()).count();
            assert_eq!(
                (oks, items.last().unwrap().is_err()),
                (CHUNKS_BUFFERED, true)
            );
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_encoder_whose_client_went_away_frees_its_place() {
        // Invariant: dropping a body stops its encoder, so ENCODERS_MAX
        // abandoned reads do not block the next one.
        let encoders = Encoders::default();
        let big: Vec<u64> = (0..1_000_000).collect();
        for _ in 0..ENCODERS_MAX + 2 {
            drop(encoders.stream(big.clone()).await);
        }
        let items = drain(encoders.stream(vec![1, 2, 3]).await).await;
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].as_ref().unwrap().as_ref(), b"[1,2,3]");
    }
}
