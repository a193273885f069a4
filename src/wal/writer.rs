//! The single WAL writer: a dedicated thread that takes whatever appends have
//! queued while the previous sync ran, writes them as one batch with one
//! write, and makes them durable with one `fdatasync` (group commit). Only
//! this module writes or syncs segment files after recovery.

use std::collections::VecDeque;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::Instant;

use futures_channel::oneshot;

use super::format::{encode_frame, frame_bytes, SegmentHeader, FLAG_BATCH_END};
use super::lockfile::DirLock;
use super::recovery::{recover, Recovered, Tail};
use super::segment::create_segment;
use super::storage::{StdStorage, Storage, StorageFile};
use super::telemetry::{Telemetry, TelemetrySnapshot};
use super::{WalError, WalOptions};
use crate::failpoints::failpoint;

struct Pending {
    lsn: u64,
    kind: u16,
    payload: Vec<u8>,
    done: oneshot::Sender<Result<u64, WalError>>,
}

enum QueueState {
    Open,
    /// `close` was called: the writer drains the queue, then stops.
    Closing,
    /// The writer has stopped, with this error for any further append.
    Stopped(WalError),
}

struct Queue {
    entries: VecDeque<Pending>,
    /// Payload bytes in `entries`.
    bytes: usize,
    /// The LSN the next append gets. LSNs are handed out under this lock, so
    /// queue order is LSN order.
    next_lsn: u64,
    state: QueueState,
}

struct Shared {
    queue: Mutex<Queue>,
    /// The writer waits here for appends.
    work: Condvar,
    /// Appenders wait here for queue space.
    space: Condvar,
    durable_lsn: AtomicU64,
    telemetry: Mutex<Telemetry>,
    /// Callers of `wait_durable` whose LSN is not durable yet. The writer
    /// completes them after each commit; see `Wal::wait_durable` for why no
    /// wake-up can be lost.
    durable_waiters: Mutex<DurableWaiters>,
}

/// What [`Wal::on_durable`] calls: with the durable LSN, or the error that
/// stopped the writer.
pub type OnDurable = Box<dyn FnOnce(Result<u64, WalError>) + Send>;

struct DurableWaiters {
    /// `wait_durable`'s waits, at most `durable_waiters_max`.
    list: Vec<(u64, oneshot::Sender<Result<u64, WalError>>)>,
    /// `on_durable`'s calls: each for an LSN already appended, so there are
    /// never more than the records queued or in the batch being written.
    calls: Vec<(u64, OnDurable)>,
    /// Set once the writer has stopped; later waits fail at once with it.
    stopped: Option<WalError>,
}

impl Shared {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        // The queue is consistent at every unlock; a panic elsewhere must not
        // turn every later append into a second panic.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn durable_waiters(&self) -> MutexGuard<'_, DurableWaiters> {
        self.durable_waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Completes every waiter whose LSN is now durable. Called by the writer
    /// after it has published the new `durable_lsn`.
    fn wake_durable(&self, durable: u64) {
        let mut w = self.durable_waiters();
        let mut i = 0;
        while i < w.list.len() {
            if w.list[i].0 <= durable {
                let (_, tx) = w.list.swap_remove(i);
                let _ = tx.send(Ok(durable));
            } else {
                i += 1;
            }
        }
        let mut due = Vec::new();
        let mut i = 0;
        while i < w.calls.len() {
            if w.calls[i].0 <= durable {
                due.push(w.calls.swap_remove(i).1);
            } else {
                i += 1;
            }
        }
        // Outside the lock: a call may take it again (to wait or register).
        drop(w);
        for call in due {
            call(Ok(durable));
        }
    }

    /// Fails every waiter, now and later, with the error that stopped the
    /// writer.
    fn stop_durable_waiters(&self, err: WalError) {
        let mut w = self.durable_waiters();
        w.stopped = Some(err.clone());
        for (_, tx) in w.list.drain(..) {
            let _ = tx.send(Err(err.clone()));
        }
        let calls: Vec<(u64, OnDurable)> = w.calls.drain(..).collect();
        drop(w);
        for (_, call) in calls {
            call(Err(err.clone()));
        }
    }
}

/// A handle to an open WAL. Appends may come from any number of threads.
pub struct Wal {
    shared: Arc<Shared>,
    /// The backend the writer writes to; snapshots and segment collection
    /// use the same one, so `MemStorage` crashes them together.
    storage: Arc<dyn Storage>,
    options: WalOptions,
    thread: Mutex<Option<JoinHandle<()>>>,
    dir: PathBuf,
    _lock: Option<DirLock>,
}

/// A wait for an LSN to become durable (see [`Wal::wait_durable`]).
#[must_use = "a wait does nothing unless awaited"]
pub struct DurableWait {
    state: DurableWaitState,
}

enum DurableWaitState {
    Ready(Option<Result<u64, WalError>>),
    Waiting(oneshot::Receiver<Result<u64, WalError>>),
}

impl Future for DurableWait {
    /// The durable LSN seen (at least the one waited for), or the error that
    /// stopped the writer.
    type Output = Result<u64, WalError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.state {
            DurableWaitState::Ready(result) => Poll::Ready(result.take().unwrap_or(Err(
                WalError::InvalidOptions("DurableWait polled after completion".into()),
            ))),
            DurableWaitState::Waiting(rx) => match Pin::new(rx).poll(cx) {
                Poll::Ready(Ok(result)) => Poll::Ready(result),
                Poll::Ready(Err(oneshot::Canceled)) => Poll::Ready(Err(WalError::Poisoned {
                    cause: "WAL writer thread exited".into(),
                })),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

/// An append that has its LSN and is on its way to disk. Await it (or
/// `wait()`) to learn when it is durable: it resolves only after the sync
/// that covers the record has returned.
#[must_use = "an append is only durable when its Appended resolves"]
pub struct Appended {
    lsn: u64,
    done: oneshot::Receiver<Result<u64, WalError>>,
}

impl Appended {
    pub fn lsn(&self) -> u64 {
        self.lsn
    }
    /// The outcome if it is already known, without blocking.
    pub fn try_wait(&mut self) -> Option<Result<u64, WalError>> {
        match self.done.try_recv() {
            Ok(Some(result)) => Some(result),
            Ok(None) => None,
            Err(oneshot::Canceled) => Some(Err(WalError::Poisoned {
                cause: "WAL writer thread exited".into(),
            })),
        }
    }

    /// Blocks the calling thread until the record is durable.
    pub fn wait(self) -> Result<u64, WalError> {
        futures_executor::block_on(self)
    }
}

impl Future for Appended {
    type Output = Result<u64, WalError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match Pin::new(&mut self.done).poll(cx) {
            Poll::Ready(Ok(result)) => Poll::Ready(result),
            Poll::Ready(Err(oneshot::Canceled)) => Poll::Ready(Err(WalError::Poisoned {
                cause: "WAL writer thread exited".into(),
            })),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Wal {
    /// Opens (creating if needed) the log in `dir` on the real file system:
    /// takes the directory lock, recovers, and starts the writer. The caller
    /// replays `Recovered::records()` before appending.
    pub fn open(dir: &Path, options: WalOptions) -> Result<(Wal, Recovered), WalError> {
        options.validate()?;
        let lock = Wal::lock_dir(dir)?;
        Wal::open_locked(lock, dir, options)
    }

    /// Creates `dir` if needed (its name made durable) and takes its
    /// directory lock, without reading the log: a daemon owns the directory
    /// first and recovers later, while it already answers `/healthz`.
    pub fn lock_dir(dir: &Path) -> Result<DirLock, WalError> {
        if !dir.is_dir() {
            std::fs::create_dir_all(dir).map_err(|e| WalError::io("create directory", dir, e))?;
            // The new directory's own name must be durable before anything
            // acknowledged lives in it.
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                StdStorage
                    .sync_dir(parent)
                    .map_err(|e| WalError::io("fsync directory", parent, e))?;
            }
        }
        DirLock::acquire(dir)
    }

    /// [`Wal::open`] with the directory lock already taken by
    /// [`Wal::lock_dir`]; the log keeps the lock until it is dropped.
    pub fn open_locked(
        lock: DirLock,
        dir: &Path,
        options: WalOptions,
    ) -> Result<(Wal, Recovered), WalError> {
        let (mut wal, recovered) = Wal::open_with(Arc::new(StdStorage), dir, options)?;
        wal._lock = Some(lock);
        Ok((wal, recovered))
    }

    /// Opens the log in `dir` on any storage backend. No directory lock is
    /// taken: the caller guarantees a single writer.
    pub fn open_with(
        storage: Arc<dyn Storage>,
        dir: &Path,
        options: WalOptions,
    ) -> Result<(Wal, Recovered), WalError> {
        options.validate()?;
        let mut recovered = recover(storage.as_ref(), dir, &options)?;
        let tail = recovered.take_tail();
        let wal = Wal::start(storage, dir, options, tail)?;
        Ok((wal, recovered))
    }

    fn start(
        storage: Arc<dyn Storage>,
        dir: &Path,
        options: WalOptions,
        tail: Tail,
    ) -> Result<Wal, WalError> {
        let segment = match tail.segment {
            Some(t) => {
                let mut file = storage
                    .open_write(&t.path)
                    .map_err(|e| WalError::io("open", &t.path, e))?;
                let capacity = t.len.max(options.segment_bytes);
                if capacity > t.len {
                    file.allocate(capacity)
                        .map_err(|e| WalError::io("preallocate", &t.path, e))?;
                    file.sync_all()
                        .map_err(|e| WalError::io("fsync", &t.path, e))?;
                }
                Some(OpenSegment {
                    path: t.path,
                    file,
                    write_offset: t.write_offset,
                    capacity,
                    // Recovery leaves zeros after the last record; whether
                    // they were written or only allocated is not known.
                    zeroed_to: t.write_offset,
                })
            }
            None => None,
        };
        let durable = tail.next_lsn - 1;
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                entries: VecDeque::new(),
                bytes: 0,
                next_lsn: tail.next_lsn,
                state: QueueState::Open,
            }),
            work: Condvar::new(),
            space: Condvar::new(),
            durable_lsn: AtomicU64::new(durable),
            telemetry: Mutex::new(Telemetry::new()),
            durable_waiters: Mutex::new(DurableWaiters {
                list: Vec::new(),
                calls: Vec::new(),
                stopped: None,
            }),
        });
        let writer = Writer {
            storage: storage.clone(),
            dir: dir.to_path_buf(),
            options: options.clone(),
            shared: shared.clone(),
            segment,
            next_seq: tail.next_seq,
            last_crc: tail.last_crc,
            written_lsn: durable,
            buf: Vec::new(),
        };
        let thread = std::thread::Builder::new()
            .name("wal-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| WalError::io("spawn writer thread", dir, e))?;
        Ok(Wal {
            shared,
            storage,
            options,
            thread: Mutex::new(Some(thread)),
            dir: dir.to_path_buf(),
            _lock: None,
        })
    }

    /// Queues a record, waiting while the queue is full.
    pub fn append(&self, kind: u16, payload: Vec<u8>) -> Result<Appended, WalError> {
        self.enqueue(vec![(kind, payload)], true)
            .map(|mut one| one.pop().expect("one record queued"))
    }

    /// Queues a record, or answers `WalError::Full` at once when the queue is
    /// at its bound: for callers that must not block (actors, HTTP handlers).
    pub fn try_append(&self, kind: u16, payload: Vec<u8>) -> Result<Appended, WalError> {
        self.enqueue(vec![(kind, payload)], false)
            .map(|mut one| one.pop().expect("one record queued"))
    }

    /// Queues `records` in order, waiting while the queue is full. The queue
    /// lock is held from the first record to the last (let go only to wait
    /// for room), so the writer never takes some of them without the rest:
    /// when they fit in one batch they share one sync. A lock hand-off's
    /// release and the grant it allows therefore cost one sync, not two.
    /// Every record is checked against `record_bytes_max` before any is
    /// queued.
    pub fn append_all(&self, records: Vec<(u16, Vec<u8>)>) -> Result<Vec<Appended>, WalError> {
        self.enqueue(records, true)
    }

    fn enqueue(&self, records: Vec<(u16, Vec<u8>)>, wait: bool) -> Result<Vec<Appended>, WalError> {
        for (kind, payload) in &records {
            assert!(
                kind & !super::format::KIND_SKIPPABLE != 0,
                "record kind 0 is reserved"
            );
            if payload.len() > self.options.record_bytes_max {
                return Err(WalError::RecordTooLarge {
                    bytes: payload.len(),
                    max: self.options.record_bytes_max,
                });
            }
        }
        let mut appended = Vec::with_capacity(records.len());
        let mut q = self.shared.queue();
        for (kind, payload) in records {
            let len = payload.len();
            loop {
                match &q.state {
                    QueueState::Open => {}
                    QueueState::Closing => return Err(WalError::Closed),
                    QueueState::Stopped(e) => return Err(e.clone()),
                }
                if q.entries.len() < self.options.queue_len_max
                    && q.bytes + len <= self.options.queue_bytes_max
                {
                    break;
                }
                if !wait {
                    return Err(WalError::Full {
                        queue_len: q.entries.len(),
                        queue_bytes: q.bytes,
                    });
                }
                q = self.shared.space.wait(q).unwrap_or_else(|e| e.into_inner());
            }
            let lsn = q.next_lsn;
            q.next_lsn += 1;
            let (tx, rx) = oneshot::channel();
            let was_empty = q.entries.is_empty();
            q.entries.push_back(Pending {
                lsn,
                kind,
                payload,
                done: tx,
            });
            q.bytes += len;
            // The writer only sleeps on an empty queue; woken here, it takes
            // the queue lock only once this lets go of it.
            if was_empty {
                self.shared.work.notify_one();
            }
            appended.push(Appended { lsn, done: rx });
        }
        Ok(appended)
    }

    /// The highest LSN known durable.
    pub fn durable_lsn(&self) -> u64 {
        self.shared.durable_lsn.load(Ordering::Acquire)
    }

    /// Resolves once every record up to `lsn` is durable, without polling:
    /// the writer completes the wait after the commit that covers it. Fails
    /// if the writer stops first (poisoned or closed), and with `Full` when
    /// `durable_waiters_max` waits are already pending, so the list is bounded.
    ///
    /// No wake-up is lost: the writer publishes `durable_lsn` before it takes
    /// the waiter lock, and this checks `durable_lsn` again under that lock,
    /// so either this sees the new LSN or the writer sees this waiter.
    pub fn wait_durable(&self, lsn: u64) -> DurableWait {
        let ready = |result| DurableWait {
            state: DurableWaitState::Ready(Some(result)),
        };
        let durable = self.durable_lsn();
        if durable >= lsn {
            return ready(Ok(durable));
        }
        let mut w = self.shared.durable_waiters();
        let durable = self.durable_lsn();
        if durable >= lsn {
            return ready(Ok(durable));
        }
        if let Some(e) = &w.stopped {
            return ready(Err(e.clone()));
        }
        if w.list.len() >= self.options.durable_waiters_max {
            return ready(Err(WalError::Full {
                queue_len: w.list.len(),
                queue_bytes: 0,
            }));
        }
        let (tx, rx) = oneshot::channel();
        w.list.push((lsn, tx));
        DurableWait {
            state: DurableWaitState::Waiting(rx),
        }
    }

    /// Calls `then` once every record up to `lsn` is durable: on the writer
    /// thread right after the commit that covers it, or at once on this
    /// thread if it already is. A waiter answered this way is woken by the
    /// writer itself, with no thread between the sync and the answer. `then`
    /// must be quick (it delays the writer's next batch) and must not block.
    /// If the writer stops first, `then` gets its error. `lsn` must already
    /// be appended (`InvalidOptions` otherwise, and `then` is dropped), which
    /// bounds the pending calls by the queue's bounds.
    pub fn on_durable(&self, lsn: u64, then: OnDurable) -> Result<(), WalError> {
        if lsn >= self.next_lsn() {
            return Err(WalError::InvalidOptions(format!(
                "on_durable({lsn}) for an LSN not appended yet"
            )));
        }
        let mut w = self.shared.durable_waiters();
        // Checked under the waiter lock, as in `wait_durable`: either this
        // sees the writer's new LSN or the writer sees this call.
        let durable = self.durable_lsn();
        if durable >= lsn {
            drop(w);
            then(Ok(durable));
            return Ok(());
        }
        if let Some(e) = &w.stopped {
            let e = e.clone();
            drop(w);
            then(Err(e));
            return Ok(());
        }
        w.calls.push((lsn, then));
        Ok(())
    }

    /// The LSN the next append will get.
    pub fn next_lsn(&self) -> u64 {
        self.shared.queue().next_lsn
    }

    /// Appends waiting for the writer, and their payload bytes.
    pub fn queue_depth(&self) -> (usize, usize) {
        let q = self.shared.queue();
        (q.entries.len(), q.bytes)
    }

    pub fn telemetry(&self) -> TelemetrySnapshot {
        self.shared
            .telemetry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .snapshot()
    }

    pub fn options(&self) -> &WalOptions {
        &self.options
    }

    /// The storage backend of this log (shared with its writer thread).
    pub fn storage(&self) -> Arc<dyn Storage> {
        self.storage.clone()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The error that stopped the writer, if one did.
    pub fn poisoned(&self) -> Option<WalError> {
        match &self.shared.queue().state {
            QueueState::Stopped(e @ WalError::Poisoned { .. }) => Some(e.clone()),
            _ => None,
        }
    }

    /// Writes everything queued, stops the writer and waits for it. Appends
    /// after this fail with `Closed`. Returns the poisoning error if the
    /// writer had failed.
    pub fn close(&self) -> Result<(), WalError> {
        {
            let mut q = self.shared.queue();
            if let QueueState::Open = q.state {
                q.state = QueueState::Closing;
            }
        }
        self.shared.work.notify_all();
        self.shared.space.notify_all();
        let handle = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(handle) = handle {
            if handle.join().is_err() {
                return Err(WalError::Poisoned {
                    cause: "WAL writer thread panicked".into(),
                });
            }
        }
        match self.poisoned() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

struct OpenSegment {
    path: PathBuf,
    file: Box<dyn StorageFile>,
    write_offset: u64,
    capacity: u64,
    /// Every byte below this offset has been written since the segment was
    /// preallocated: the header, records or zeros (see [`ZERO_AHEAD_BYTES`]).
    zeroed_to: u64,
}

/// How far past the last record the writer keeps the segment written with
/// zeros. `fallocate` leaves unwritten extents on ext4, and the first write
/// into one changes the extent tree, so the `fdatasync` that covers it also
/// writes the inode and waits for that write: a second device round trip.
/// On this machine's disk, syncing 4 KiB appends took p50 195-220 us into a
/// fallocated file against 100-115 us into a zero-filled one (3,000 syncs
/// each, alternating). Writing zeros ahead, `ZERO_AHEAD_BYTES` at a time in
/// the same window as a batch (before its sync) once fewer than half are
/// left, leaves one sync per 128-256 KiB of log to pay for the extent change. The bytes stay
/// zeros whatever a crash keeps of that write, so recovery sees what it saw
/// before: preallocated zeros after the last record.
pub(crate) const ZERO_AHEAD_BYTES: u64 = 256 << 10;

static ZEROS: [u8; ZERO_AHEAD_BYTES as usize] = [0; ZERO_AHEAD_BYTES as usize];

impl OpenSegment {
    /// Records were written up to `end`: writes zeros after them, up to
    /// `ZERO_AHEAD_BYTES` past `end` (at most to the segment's end), once
    /// fewer than half of that are left.
    fn zero_ahead(&mut self, end: u64) -> Result<(), WalError> {
        self.zeroed_to = self.zeroed_to.max(end);
        if self.zeroed_to >= self.capacity || self.zeroed_to - end >= ZERO_AHEAD_BYTES / 2 {
            return Ok(());
        }
        let from = self.zeroed_to;
        let to = self.capacity.min(end + ZERO_AHEAD_BYTES);
        self.file
            .write_all_at(&ZEROS[..(to - from) as usize], from)
            .map_err(|e| WalError::io("write zeros", &self.path, e))?;
        self.zeroed_to = to;
        Ok(())
    }
}

struct Writer {
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    options: WalOptions,
    shared: Arc<Shared>,
    segment: Option<OpenSegment>,
    next_seq: u64,
    /// CRC of the last frame written, for the next segment header's chain.
    last_crc: u32,
    /// The last LSN written to a segment.
    written_lsn: u64,
    /// The batch being encoded, reused between batches.
    buf: Vec<u8>,
}

impl Writer {
    fn run(mut self) {
        let mut batch: Vec<Pending> = Vec::new();
        loop {
            match self.next_batch(&mut batch) {
                Ok(true) => {}
                Ok(false) => return self.shared.stop_durable_waiters(WalError::Closed),
                Err(e) => return self.poison(e, &mut batch),
            }
            if let Err(e) = self.commit(&mut batch) {
                return self.poison(e, &mut batch);
            }
        }
    }

    /// Moves the next batch out of the queue into `batch`, rolling the
    /// segment first when the batch's first record does not fit. Returns
    /// false when the log is closed and drained.
    fn next_batch(&mut self, batch: &mut Vec<Pending>) -> Result<bool, WalError> {
        loop {
            let mut q = self.shared.queue();
            while q.entries.is_empty() {
                match q.state {
                    QueueState::Open => {
                        q = self.shared.work.wait(q).unwrap_or_else(|e| e.into_inner())
                    }
                    QueueState::Closing => {
                        q.state = QueueState::Stopped(WalError::Closed);
                        return Ok(false);
                    }
                    QueueState::Stopped(_) => return Ok(false),
                }
            }
            let first = frame_bytes(q.entries[0].payload.len()) as u64;
            let room = match &self.segment {
                Some(s) if s.write_offset + first <= s.capacity => s.capacity - s.write_offset,
                _ => {
                    let first_lsn = q.entries[0].lsn;
                    drop(q);
                    self.roll(first_lsn)?;
                    continue;
                }
            };
            let mut bytes = 0usize;
            let mut payload_bytes = 0usize;
            while let Some(next) = q.entries.front() {
                let frame = frame_bytes(next.payload.len());
                let fits =
                    bytes + frame <= self.options.batch_bytes_max && (bytes + frame) as u64 <= room;
                if !batch.is_empty() && !fits {
                    break;
                }
                bytes += frame;
                payload_bytes += next.payload.len();
                batch.push(q.entries.pop_front().expect("front exists"));
            }
            q.bytes -= payload_bytes;
            drop(q);
            self.shared.space.notify_all();
            return Ok(true);
        }
    }

    /// Writes `batch` with one write and makes it durable with one sync,
    /// then completes every append in it.
    fn commit(&mut self, batch: &mut Vec<Pending>) -> Result<(), WalError> {
        self.buf.clear();
        let n = batch.len();
        let mut crc = self.last_crc;
        for (i, p) in batch.iter().enumerate() {
            // Guards the disk: LSNs go up by exactly one, with no gaps.
            assert_eq!(
                p.lsn,
                self.written_lsn + 1 + i as u64,
                "WAL LSN sequence broken"
            );
            let flags = if i + 1 == n { FLAG_BATCH_END } else { 0 };
            crc = encode_frame(&mut self.buf, p.kind, flags, p.lsn, i as u32, &p.payload);
        }
        failpoint!("wal::batch::encoded");
        let seg = self.segment.as_mut().expect("next_batch opened a segment");
        assert!(
            seg.write_offset + self.buf.len() as u64 <= seg.capacity,
            "batch of {} bytes overruns the segment",
            self.buf.len()
        );
        failpoint!(
            "wal::write::before",
            crate::failpoints::wal_fault("write", &seg.path)
        );
        seg.file
            .write_all_at(&self.buf, seg.write_offset)
            .map_err(|e| WalError::io("write", &seg.path, e))?;
        failpoint!("wal::write::after");
        seg.zero_ahead(seg.write_offset + self.buf.len() as u64)?;
        failpoint!(
            "wal::fdatasync::before",
            crate::failpoints::wal_fault("fdatasync", &seg.path)
        );
        let started = Instant::now();
        seg.file
            .sync_data()
            .map_err(|e| WalError::io("fdatasync", &seg.path, e))?;
        failpoint!("wal::fdatasync::after");
        let sync_us = started.elapsed().as_micros() as u64;
        seg.write_offset += self.buf.len() as u64;
        self.last_crc = crc;
        self.written_lsn += n as u64;
        if sync_us > self.options.slow_sync_warn_ms * 1_000 {
            tracing::warn!(
                sync_us,
                records = n,
                bytes = self.buf.len(),
                "slow WAL sync"
            );
        }
        self.shared
            .telemetry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record_sync(sync_us, n as u64, self.buf.len() as u64);
        failpoint!("wal::ack::before");
        self.shared
            .durable_lsn
            .store(self.written_lsn, Ordering::Release);
        for p in batch.drain(..) {
            let _ = p.done.send(Ok(p.lsn));
        }
        self.shared.wake_durable(self.written_lsn);
        Ok(())
    }

    /// Starts a new segment whose first record is `first_lsn`.
    fn roll(&mut self, first_lsn: u64) -> Result<(), WalError> {
        assert_eq!(
            first_lsn,
            self.written_lsn + 1,
            "roll at a non-contiguous LSN"
        );
        failpoint!("wal::roll::before");
        let header = SegmentHeader {
            segment_seq: self.next_seq,
            first_lsn,
            prev_crc: self.last_crc,
        };
        let (path, file) = create_segment(
            self.storage.as_ref(),
            &self.dir,
            &header,
            self.options.segment_bytes,
        )?;
        failpoint!("wal::roll::switch");
        tracing::debug!(path = %path.display(), first_lsn, seq = header.segment_seq, "WAL segment rolled");
        self.segment = Some(OpenSegment {
            path,
            file,
            write_offset: super::format::SEGMENT_HEADER_LEN as u64,
            capacity: self.options.segment_bytes,
            zeroed_to: super::format::SEGMENT_HEADER_LEN as u64,
        });
        self.next_seq += 1;
        Ok(())
    }

    /// Fail-stop: the batch in hand and every queued append get the error,
    /// later appends get it at once, and the writer thread ends. The failed
    /// sync is never retried: after a failed fsync the kernel may have
    /// dropped the dirty pages, so a retry could "succeed" on lost data.
    fn poison(&mut self, err: WalError, batch: &mut Vec<Pending>) {
        tracing::error!(error = %err, "WAL write path failed; the log is stopped");
        let poisoned = WalError::Poisoned {
            cause: err.to_string().into(),
        };
        // Stop the queue before telling anyone: an appender that has seen its
        // error must find the log stopped when it tries again.
        let mut q = self.shared.queue();
        q.state = QueueState::Stopped(poisoned.clone());
        let queued: Vec<Pending> = q.entries.drain(..).collect();
        q.bytes = 0;
        drop(q);
        for p in batch.drain(..).chain(queued) {
            let _ = p.done.send(Err(poisoned.clone()));
        }
        self.shared.stop_durable_waiters(poisoned);
        self.shared.space.notify_all();
    }
}
