//! The file-system operations the WAL uses, behind a small trait, so every
//! WAL test can also run on an in-memory backend that keeps what was written
//! apart from what is durable, and can simulate a crash.
//!
//! `StdStorage` is the real thing. `MemStorage` models a POSIX file system
//! with a volatile page cache: file contents become durable on `sync_data` /
//! `sync_all`, and directory entries (creates, renames, unlinks) only on
//! `sync_dir` of their directory. A simulated crash keeps only durable state,
//! or some mix of it with what was not synced yet ([`CrashMode`]).
//!
//! A test may ask `MemStorage` to record every operation ([`StorageOp`]) and
//! rebuild the file system as it was after any prefix of them
//! ([`MemStorage::apply_op`]), so it can crash the machine at every boundary
//! between two operations.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::io;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// A read-only view of a whole file: a memory map on the real file system.
pub type ReadView = Box<dyn Deref<Target = [u8]> + Send + Sync>;

pub trait Storage: Send + Sync + 'static {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Names (not paths) of the entries of `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    fn exists(&self, path: &Path) -> io::Result<bool>;
    /// Creates a file that must not exist yet, opened for writing.
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn StorageFile>>;
    /// Opens an existing file for writing.
    fn open_write(&self, path: &Path) -> io::Result<Box<dyn StorageFile>>;
    /// The current contents of a file, as a reader would see them.
    fn read(&self, path: &Path) -> io::Result<ReadView>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Makes the entries of `dir` (creates, renames, unlinks) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

pub trait StorageFile: Send {
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// `fdatasync`: the data and the size, not the other metadata.
    fn sync_data(&mut self) -> io::Result<()>;
    /// `fsync`.
    fn sync_all(&mut self) -> io::Result<()>;
    fn set_len(&mut self, len: u64) -> io::Result<()>;
    /// Reserves `len` bytes of zeros (`fallocate`), so later writes inside it
    /// cannot fail for lack of space. Falls back to `set_len` where the file
    /// system cannot preallocate.
    fn allocate(&mut self, len: u64) -> io::Result<()>;
    /// Write-behind for a large file written front to back: starts writing
    /// `offset..offset + len` back to the disk and waits until everything
    /// before `offset` is written back. Promises no durability (the caller
    /// still syncs); it only bounds the dirty data, so the closing sync
    /// stays short and cannot hold up other files' syncs for long.
    fn write_behind(&mut self, offset: u64, len: u64) -> io::Result<()> {
        let _ = (offset, len);
        Ok(())
    }
}

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct StdStorage;

struct StdFile(std::fs::File);

impl Storage for StdStorage {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = vec![];
        for entry in std::fs::read_dir(dir)? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        Ok(names)
    }
    fn exists(&self, path: &Path) -> io::Result<bool> {
        path.try_exists()
    }
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        Ok(Box::new(StdFile(f)))
    }
    fn open_write(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)?;
        Ok(Box::new(StdFile(f)))
    }
    fn read(&self, path: &Path) -> io::Result<ReadView> {
        let f = std::fs::File::open(path)?;
        if f.metadata()?.len() == 0 {
            return Ok(Box::new(Vec::new()));
        }
        // SAFETY: the map is read-only. Segment files are append-only while a
        // writer owns the directory; only start-up repair (under the
        // directory lock, before any reader of this process exists) shortens
        // one. An outside process truncating the file could still raise
        // SIGBUS; that is documented for wal-dump.
        let map = unsafe { memmap2::Mmap::map(&f)? };
        Ok(Box::new(map))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        std::fs::File::open(dir)?.sync_all()
    }
}

impl StorageFile for StdFile {
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(&self.0, buf, offset)
    }
    fn sync_data(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn sync_all(&mut self) -> io::Result<()> {
        self.0.sync_all()
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn allocate(&mut self, len: u64) -> io::Result<()> {
        let len_i64 =
            i64::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        match nix::fcntl::fallocate(&self.0, nix::fcntl::FallocateFlags::empty(), 0, len_i64) {
            Ok(()) => Ok(()),
            // File systems without fallocate (tmpfs on old kernels, some
            // network file systems): a sparse file reads as zeros too, it
            // just does not reserve the space.
            Err(nix::errno::Errno::EOPNOTSUPP) => {
                if self.0.metadata()?.len() < len {
                    self.0.set_len(len)?;
                }
                Ok(())
            }
            Err(e) => Err(io::Error::from(e)),
        }
    }
    fn write_behind(&mut self, offset: u64, len: u64) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let range = |offset: u64, len: u64, flags: nix::libc::c_uint| -> io::Result<()> {
            let offset = i64::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
            let len = i64::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?;
            // SAFETY: a plain system call on a file descriptor this value
            // owns; no memory is passed.
            let rc = unsafe { nix::libc::sync_file_range(self.0.as_raw_fd(), offset, len, flags) };
            if rc == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        };
        range(offset, len, nix::libc::SYNC_FILE_RANGE_WRITE)?;
        if offset > 0 {
            range(
                0,
                offset,
                nix::libc::SYNC_FILE_RANGE_WAIT_BEFORE
                    | nix::libc::SYNC_FILE_RANGE_WRITE
                    | nix::libc::SYNC_FILE_RANGE_WAIT_AFTER,
            )?;
        }
        Ok(())
    }
}

/// An I/O error the memory backend injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `write_all_at` fails with ENOSPC.
    WriteNoSpace,
    /// `write_all_at` fails with EIO.
    WriteIo,
    /// `sync_data`/`sync_all` fails with EIO.
    SyncIo,
    /// `allocate` fails with ENOSPC.
    AllocateNoSpace,
    /// `sync_dir` fails with EIO.
    SyncDirIo,
    /// `read` (the whole-file view recovery scans) fails with EIO.
    ReadIo,
}

impl Fault {
    fn error(self) -> io::Error {
        match self {
            Fault::WriteNoSpace | Fault::AllocateNoSpace => {
                io::Error::from_raw_os_error(nix::libc::ENOSPC)
            }
            Fault::WriteIo | Fault::SyncIo | Fault::SyncDirIo | Fault::ReadIo => {
                io::Error::from_raw_os_error(nix::libc::EIO)
            }
        }
    }
}

/// One write not yet covered by a sync, kept so a crash can apply any part
/// of it.
#[derive(Debug, Clone)]
enum Unsynced {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

#[derive(Debug, Default, Clone)]
struct Inode {
    /// What a reader sees now (the page cache).
    live: Vec<u8>,
    /// What survives a crash.
    durable: Vec<u8>,
    unsynced: Vec<Unsynced>,
}

/// One directory change not yet covered by a directory sync. A crash keeps
/// a prefix of them in order, as a metadata journal does.
#[derive(Debug, Clone)]
enum DirChange {
    Link(String, u64),
    Unlink(String),
    Rename(String, String),
}

impl DirChange {
    fn apply(&self, entries: &mut BTreeMap<String, u64>) {
        match self {
            DirChange::Link(name, ino) => {
                entries.insert(name.clone(), *ino);
            }
            DirChange::Unlink(name) => {
                entries.remove(name);
            }
            DirChange::Rename(from, to) => {
                if let Some(ino) = entries.remove(from) {
                    entries.insert(to.clone(), ino);
                }
            }
        }
    }
}

#[derive(Debug, Default, Clone)]
struct Dir {
    live: BTreeMap<String, u64>,
    durable: BTreeMap<String, u64>,
    unsynced: Vec<DirChange>,
}

/// One file-system operation that changed something, as `MemStorage`
/// records it (see [`MemStorage::record_ops`]). Files are named by inode, so
/// [`MemStorage::apply_op`] replays a log exactly; `path` is the name the
/// file had then, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageOp {
    CreateDir {
        dir: PathBuf,
    },
    Create {
        path: PathBuf,
        ino: u64,
    },
    Write {
        path: PathBuf,
        ino: u64,
        offset: u64,
        data: Vec<u8>,
    },
    SetLen {
        path: PathBuf,
        ino: u64,
        len: u64,
    },
    Allocate {
        path: PathBuf,
        ino: u64,
        len: u64,
    },
    Sync {
        path: PathBuf,
        ino: u64,
    },
    Rename {
        from: PathBuf,
        to: PathBuf,
    },
    Remove {
        path: PathBuf,
    },
    SyncDir {
        dir: PathBuf,
    },
}

impl fmt::Display for StorageOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageOp::CreateDir { dir } => write!(f, "mkdir {}", dir.display()),
            StorageOp::Create { path, .. } => write!(f, "create {}", path.display()),
            StorageOp::Write {
                path, offset, data, ..
            } => write!(
                f,
                "write {} [{offset}..{})",
                path.display(),
                offset + data.len() as u64
            ),
            StorageOp::SetLen { path, len, .. } => write!(f, "set_len {} {len}", path.display()),
            StorageOp::Allocate { path, len, .. } => {
                write!(f, "allocate {} {len}", path.display())
            }
            StorageOp::Sync { path, .. } => write!(f, "fsync {}", path.display()),
            StorageOp::Rename { from, to } => {
                write!(f, "rename {} -> {}", from.display(), to.display())
            }
            StorageOp::Remove { path } => write!(f, "unlink {}", path.display()),
            StorageOp::SyncDir { dir } => write!(f, "fsync dir {}", dir.display()),
        }
    }
}

#[derive(Debug, Default, Clone)]
struct MemFs {
    inodes: HashMap<u64, Inode>,
    next_ino: u64,
    dirs: BTreeMap<PathBuf, Dir>,
    /// Faults armed for the future: (fault, calls of that kind to let pass first).
    faults: Vec<(Fault, u64)>,
    /// Counts of operations, for tests that arm faults relative to them.
    syncs: u64,
    writes: u64,
    /// Every change, in order, while a test records them.
    log: Option<Vec<StorageOp>>,
}

/// An in-memory file system with a simulated page cache; cheap to clone
/// (clones share state).
#[derive(Debug, Clone, Default)]
pub struct MemStorage {
    fs: Arc<Mutex<MemFs>>,
    gate: Arc<SyncGate>,
}

/// Lets a test hold file syncs, so it can queue appends behind a sync in
/// progress without sleeping.
#[derive(Debug, Default)]
struct SyncGate {
    state: Mutex<(bool, usize)>,
    changed: std::sync::Condvar,
}

/// Holds file syncs of a `MemStorage` until dropped.
#[must_use = "syncs resume when this is dropped"]
pub struct SyncPause {
    gate: Arc<SyncGate>,
}

impl Drop for SyncPause {
    fn drop(&mut self) {
        self.gate.state.lock().unwrap_or_else(|e| e.into_inner()).0 = false;
        self.gate.changed.notify_all();
    }
}

impl SyncGate {
    fn pass(&self) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.0 {
            st.1 += 1;
            self.changed.notify_all();
            while st.0 {
                st = self.changed.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            st.1 -= 1;
        }
    }
}

/// How a crash treats writes and directory changes that were not synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashMode {
    /// Every unsynced write and unsynced directory change is lost.
    DropUnsynced,
    /// Every unsynced write reaches the disk; unsynced directory changes
    /// are still lost.
    KeepUnsyncedWrites,
    /// Everything not synced reaches the disk, directory changes included:
    /// the page cache was written back just before the power went.
    KeepEverything,
    /// Each unsynced write is kept, dropped, or torn at a 512-byte sector
    /// boundary (the torn part is zeros or garbage), chosen by the seed.
    Torn { seed: u64 },
    /// A random mix, chosen by the seed: per file, the unsynced writes reach
    /// the disk in a shuffled order (or in order), each whole, not at all,
    /// or torn at sectors of 512 B or 4 KiB (each sector of it new, old,
    /// zeros or garbage); an unsynced size change is kept or lost; per
    /// directory, a prefix (possibly empty) of the unsynced changes is kept.
    Mix { seed: u64 },
}

fn split(path: &Path) -> io::Result<(PathBuf, String)> {
    let parent = path
        .parent()
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?
        .to_string_lossy()
        .into_owned();
    Ok((parent.to_path_buf(), name))
}

fn not_found() -> io::Error {
    io::Error::from(io::ErrorKind::NotFound)
}

fn apply_write(image: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let start = offset as usize;
    let end = start + data.len();
    if image.len() < end {
        image.resize(end, 0);
    }
    image[start..end].copy_from_slice(data);
}

/// A tiny deterministic generator (SplitMix64), so crash states are
/// reproducible from a seed without pulling a RNG into the library.
struct SplitMix(u64);
impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

impl MemFs {
    fn check_fault(&mut self, kinds: &[Fault]) -> io::Result<()> {
        let mut fired = None;
        for (i, (fault, pass)) in self.faults.iter_mut().enumerate() {
            if kinds.contains(fault) {
                if *pass == 0 {
                    fired.get_or_insert(i);
                } else {
                    *pass -= 1;
                }
            }
        }
        match fired {
            Some(i) => Err(self.faults.remove(i).0.error()),
            None => Ok(()),
        }
    }
    fn dir(&mut self, dir: &Path) -> io::Result<&mut Dir> {
        self.dirs.get_mut(dir).ok_or_else(not_found)
    }
    fn lookup(&self, path: &Path) -> io::Result<u64> {
        let (dir, name) = split(path)?;
        self.dirs
            .get(&dir)
            .and_then(|d| d.live.get(&name))
            .copied()
            .ok_or_else(not_found)
    }
    fn inode(&mut self, ino: u64) -> io::Result<&mut Inode> {
        self.inodes.get_mut(&ino).ok_or_else(not_found)
    }
    fn record(&mut self, op: impl FnOnce() -> StorageOp) {
        if let Some(log) = &mut self.log {
            log.push(op());
        }
    }
    /// A name of inode `ino` now, for the log's messages.
    fn name_of(&self, ino: u64) -> PathBuf {
        self.dirs
            .iter()
            .find_map(|(dir, d)| {
                d.live
                    .iter()
                    .find(|(_, i)| **i == ino)
                    .map(|(n, _)| dir.join(n))
            })
            .unwrap_or_else(|| PathBuf::from(format!("<inode {ino}>")))
    }

    // The changes themselves: the live calls and `apply_op` both go
    // through these, and each records itself.

    fn do_create_dir(&mut self, dir: &Path) {
        if !self.dirs.contains_key(dir) {
            self.dirs.insert(dir.to_path_buf(), Dir::default());
            self.record(|| StorageOp::CreateDir {
                dir: dir.to_path_buf(),
            });
        }
    }
    fn do_create(&mut self, path: &Path, ino: u64) -> io::Result<()> {
        let (dir, name) = split(path)?;
        let d = self.dir(&dir)?;
        if d.live.contains_key(&name) {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        d.live.insert(name.clone(), ino);
        d.unsynced.push(DirChange::Link(name, ino));
        self.next_ino = self.next_ino.max(ino + 1);
        self.inodes.insert(ino, Inode::default());
        self.record(|| StorageOp::Create {
            path: path.to_path_buf(),
            ino,
        });
        Ok(())
    }
    fn do_write(&mut self, ino: u64, offset: u64, data: &[u8]) -> io::Result<()> {
        self.writes += 1;
        let inode = self.inode(ino)?;
        apply_write(&mut inode.live, offset, data);
        inode.unsynced.push(Unsynced::Write {
            offset,
            data: data.to_vec(),
        });
        if self.log.is_some() {
            let path = self.name_of(ino);
            self.record(|| StorageOp::Write {
                path,
                ino,
                offset,
                data: data.to_vec(),
            });
        }
        Ok(())
    }
    fn do_sync(&mut self, ino: u64) -> io::Result<()> {
        self.syncs += 1;
        let inode = self.inode(ino)?;
        inode.durable = inode.live.clone();
        inode.unsynced.clear();
        if self.log.is_some() {
            let path = self.name_of(ino);
            self.record(|| StorageOp::Sync { path, ino });
        }
        Ok(())
    }
    fn do_set_len(&mut self, ino: u64, len: u64) -> io::Result<()> {
        let inode = self.inode(ino)?;
        inode.live.resize(len as usize, 0);
        inode.unsynced.push(Unsynced::SetLen(len));
        if self.log.is_some() {
            let path = self.name_of(ino);
            self.record(|| StorageOp::SetLen { path, ino, len });
        }
        Ok(())
    }
    fn do_allocate(&mut self, ino: u64, len: u64) -> io::Result<()> {
        let inode = self.inode(ino)?;
        if (inode.live.len() as u64) < len {
            inode.live.resize(len as usize, 0);
            inode.unsynced.push(Unsynced::SetLen(len));
        }
        if self.log.is_some() {
            let path = self.name_of(ino);
            self.record(|| StorageOp::Allocate { path, ino, len });
        }
        Ok(())
    }
    fn do_rename(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        let (from_dir, from_name) = split(from)?;
        let (to_dir, to_name) = split(to)?;
        if from_dir != to_dir {
            return Err(io::Error::from(io::ErrorKind::Unsupported));
        }
        let d = self.dir(&from_dir)?;
        let ino = d.live.remove(&from_name).ok_or_else(not_found)?;
        d.live.insert(to_name.clone(), ino);
        d.unsynced.push(DirChange::Rename(from_name, to_name));
        self.record(|| StorageOp::Rename {
            from: from.to_path_buf(),
            to: to.to_path_buf(),
        });
        Ok(())
    }
    fn do_remove(&mut self, path: &Path) -> io::Result<()> {
        let (dir, name) = split(path)?;
        let d = self.dir(&dir)?;
        d.live.remove(&name).ok_or_else(not_found)?;
        d.unsynced.push(DirChange::Unlink(name));
        self.record(|| StorageOp::Remove {
            path: path.to_path_buf(),
        });
        Ok(())
    }
    fn do_sync_dir(&mut self, dir: &Path) -> io::Result<()> {
        let d = self.dir(dir)?;
        d.durable = d.live.clone();
        d.unsynced.clear();
        self.record(|| StorageOp::SyncDir {
            dir: dir.to_path_buf(),
        });
        Ok(())
    }
}

impl MemStorage {
    pub fn new() -> MemStorage {
        MemStorage::default()
    }

    fn fs(&self) -> std::sync::MutexGuard<'_, MemFs> {
        // A panic while holding this lock is a test failure already; keep
        // going so the panic that matters is the one reported.
        self.fs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Arms `fault` to fire on the call of its kind after `pass` more calls.
    pub fn inject(&self, fault: Fault, pass: u64) {
        self.fs().faults.push((fault, pass));
    }

    /// How many injected faults are still armed (have not fired).
    pub fn faults_armed(&self) -> usize {
        self.fs().faults.len()
    }

    /// From now on, file syncs block until the returned guard is dropped
    /// (also when a test panics, so a held writer never hangs the test).
    pub fn pause_syncs(&self) -> SyncPause {
        self.gate.state.lock().unwrap_or_else(|e| e.into_inner()).0 = true;
        SyncPause {
            gate: self.gate.clone(),
        }
    }

    /// Blocks until `n` syncs are held at the paused gate.
    pub fn wait_for_paused_syncs(&self, n: usize) {
        let mut st = self.gate.state.lock().unwrap_or_else(|e| e.into_inner());
        while st.1 < n {
            st = self
                .gate
                .changed
                .wait(st)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Number of file syncs so far.
    pub fn sync_count(&self) -> u64 {
        self.fs().syncs
    }

    /// Number of file writes so far.
    pub fn write_count(&self) -> u64 {
        self.fs().writes
    }

    /// From now on, records every change (see [`StorageOp`]). Off by
    /// default: only crash-state tests pay for the copies of written data.
    pub fn record_ops(&self) {
        self.fs().log.get_or_insert_with(Vec::new);
    }

    /// How many changes were recorded so far.
    pub fn op_count(&self) -> usize {
        self.fs().log.as_ref().map_or(0, Vec::len)
    }

    /// The changes recorded so far, in order.
    pub fn ops(&self) -> Vec<StorageOp> {
        self.fs().log.clone().unwrap_or_default()
    }

    /// Applies one recorded change exactly as the call that recorded it
    /// did, so a fresh `MemStorage` fed a log's first `k` changes is the
    /// file system (page cache and disk) as it was after them.
    pub fn apply_op(&self, op: &StorageOp) -> io::Result<()> {
        let mut fs = self.fs();
        match op {
            StorageOp::CreateDir { dir } => {
                fs.do_create_dir(dir);
                Ok(())
            }
            StorageOp::Create { path, ino } => fs.do_create(path, *ino),
            StorageOp::Write {
                ino, offset, data, ..
            } => fs.do_write(*ino, *offset, data),
            StorageOp::SetLen { ino, len, .. } => fs.do_set_len(*ino, *len),
            StorageOp::Allocate { ino, len, .. } => fs.do_allocate(*ino, *len),
            StorageOp::Sync { ino, .. } => fs.do_sync(*ino),
            StorageOp::Rename { from, to } => fs.do_rename(from, to),
            StorageOp::Remove { path } => fs.do_remove(path),
            StorageOp::SyncDir { dir } => fs.do_sync_dir(dir),
        }
    }

    /// A hash of what a reader sees: every directory's names and the bytes
    /// of each file (not inode numbers). Equal file systems hash equal, so a
    /// test can recover each distinct crash image once.
    pub fn fingerprint(&self) -> u64 {
        let fs = self.fs();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for (path, dir) in &fs.dirs {
            path.hash(&mut h);
            for (name, ino) in &dir.live {
                name.hash(&mut h);
                fs.inodes[ino].live.hash(&mut h);
            }
        }
        h.finish()
    }

    /// The file system as a machine would find it after power loss now. The
    /// original is left as it is.
    pub fn crash(&self, mode: CrashMode) -> MemStorage {
        let fs = self.fs();
        let mut rng = SplitMix(match mode {
            CrashMode::Torn { seed } | CrashMode::Mix { seed } => seed,
            _ => 0,
        });
        let sector: usize = match mode {
            CrashMode::Mix { .. } if rng.below(2) == 0 => 4096,
            _ => 512,
        };
        let mut out = MemFs {
            next_ino: fs.next_ino,
            ..MemFs::default()
        };
        for (path, dir) in &fs.dirs {
            let entries = match mode {
                CrashMode::KeepEverything => dir.live.clone(),
                CrashMode::Mix { .. } => {
                    let keep = rng.below(dir.unsynced.len() as u64 + 1) as usize;
                    let mut entries = dir.durable.clone();
                    for change in &dir.unsynced[..keep] {
                        change.apply(&mut entries);
                    }
                    entries
                }
                _ => dir.durable.clone(),
            };
            for ino in entries.values() {
                if out.inodes.contains_key(ino) {
                    continue;
                }
                let inode = &fs.inodes[ino];
                let image = match mode {
                    CrashMode::DropUnsynced => inode.durable.clone(),
                    CrashMode::KeepUnsyncedWrites | CrashMode::KeepEverything => inode.live.clone(),
                    CrashMode::Torn { .. } => {
                        let mut image = inode.durable.clone();
                        for w in &inode.unsynced {
                            match w {
                                Unsynced::Write { offset, data } => {
                                    torn_write(&mut rng, &mut image, *offset, data)
                                }
                                Unsynced::SetLen(len) => {
                                    if rng.below(2) == 0 {
                                        image.resize(*len as usize, 0);
                                    }
                                }
                            }
                        }
                        image
                    }
                    CrashMode::Mix { .. } => mixed_image(&mut rng, inode, sector),
                };
                out.inodes.insert(
                    *ino,
                    Inode {
                        live: image.clone(),
                        durable: image,
                        unsynced: vec![],
                    },
                );
            }
            out.dirs.insert(
                path.clone(),
                Dir {
                    live: entries.clone(),
                    durable: entries,
                    unsynced: vec![],
                },
            );
        }
        MemStorage {
            fs: Arc::new(Mutex::new(out)),
            gate: Arc::default(),
        }
    }

    /// Overwrites bytes of a file in place, durably, bypassing every check:
    /// for tests that damage a log.
    pub fn corrupt(&self, path: &Path, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut fs = self.fs();
        let ino = fs.lookup(path)?;
        let inode = fs.inodes.get_mut(&ino).ok_or_else(not_found)?;
        apply_write(&mut inode.live, offset, data);
        apply_write(&mut inode.durable, offset, data);
        Ok(())
    }

    /// Sets a file's length, durably, bypassing every check.
    pub fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let mut fs = self.fs();
        let ino = fs.lookup(path)?;
        let inode = fs.inodes.get_mut(&ino).ok_or_else(not_found)?;
        inode.live.resize(len as usize, 0);
        inode.durable.resize(len as usize, 0);
        Ok(())
    }
}

/// Applies one unsynced write to a crash image: whole, not at all, or torn
/// at a sector boundary with the rest zeros or garbage.
fn torn_write(rng: &mut SplitMix, image: &mut Vec<u8>, offset: u64, data: &[u8]) {
    const SECTOR: usize = 512;
    match rng.below(4) {
        0 => {}
        1 => apply_write(image, offset, data),
        _ => {
            let sectors = data.len().div_ceil(SECTOR) as u64;
            let keep = (rng.below(sectors + 1) as usize * SECTOR).min(data.len());
            let mut torn = data[..keep].to_vec();
            let garbage = rng.below(2) == 0;
            for _ in keep..data.len() {
                torn.push(if garbage { rng.next() as u8 } else { 0 });
            }
            apply_write(image, offset, &torn);
        }
    }
}

/// A file's image under [`CrashMode::Mix`]: its durable bytes plus its
/// unsynced changes, shuffled or not, each kept, dropped or torn.
fn mixed_image(rng: &mut SplitMix, inode: &Inode, sector: usize) -> Vec<u8> {
    let mut order: Vec<&Unsynced> = inode.unsynced.iter().collect();
    if rng.below(2) == 0 {
        // Fisher-Yates: the disk may write back dirty pages in any order.
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i as u64 + 1) as usize);
        }
    }
    let mut image = inode.durable.clone();
    for change in order {
        match change {
            Unsynced::SetLen(len) => {
                if rng.below(2) == 0 {
                    image.resize(*len as usize, 0);
                }
            }
            Unsynced::Write { offset, data } => match rng.below(4) {
                0 => {}
                1 => apply_write(&mut image, *offset, data),
                _ => torn_sectors(rng, &mut image, *offset, data, sector),
            },
        }
    }
    image
}

/// Tears one write at the disk's sector boundaries (absolute offsets): each
/// sector it touches ends up new, old, zeros or garbage.
fn torn_sectors(rng: &mut SplitMix, image: &mut Vec<u8>, offset: u64, data: &[u8], sector: usize) {
    let start = offset as usize;
    let end = start + data.len();
    let mut at = start;
    while at < end {
        let next = ((at / sector + 1) * sector).min(end);
        let part = &data[at - start..next - start];
        match rng.below(4) {
            0 => apply_write(image, at as u64, part),
            1 => {
                // Not written: the old bytes stay, but the file still
                // reaches past them if the write extended it.
                if image.len() < next {
                    image.resize(next, 0);
                }
            }
            2 => apply_write(image, at as u64, &vec![0; part.len()]),
            _ => {
                let garbage: Vec<u8> = part.iter().map(|_| rng.next() as u8).collect();
                apply_write(image, at as u64, &garbage);
            }
        }
        at = next;
    }
}

struct MemFile {
    fs: Arc<Mutex<MemFs>>,
    gate: Arc<SyncGate>,
    ino: u64,
}

impl MemFile {
    fn with<T>(&self, f: impl FnOnce(&mut MemFs, u64) -> io::Result<T>) -> io::Result<T> {
        let mut fs = self.fs.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut fs, self.ino)
    }
}

impl StorageFile for MemFile {
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.with(|fs, ino| {
            fs.check_fault(&[Fault::WriteNoSpace, Fault::WriteIo])?;
            fs.do_write(ino, offset, buf)
        })
    }
    fn sync_data(&mut self) -> io::Result<()> {
        self.gate.pass();
        self.with(|fs, ino| {
            fs.check_fault(&[Fault::SyncIo])?;
            fs.do_sync(ino)
        })
    }
    fn sync_all(&mut self) -> io::Result<()> {
        self.sync_data()
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.with(|fs, ino| fs.do_set_len(ino, len))
    }
    fn allocate(&mut self, len: u64) -> io::Result<()> {
        self.with(|fs, ino| {
            fs.check_fault(&[Fault::AllocateNoSpace])?;
            fs.do_allocate(ino, len)
        })
    }
}

impl Storage for MemStorage {
    /// Directories are created durably at once: the WAL never relies on a
    /// directory's own creation being synced after the fact.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.fs().do_create_dir(dir);
        Ok(())
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        Ok(self.fs().dir(dir)?.live.keys().cloned().collect())
    }
    fn exists(&self, path: &Path) -> io::Result<bool> {
        let fs = self.fs();
        Ok(fs.dirs.contains_key(path) || fs.lookup(path).is_ok())
    }
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        let mut fs = self.fs();
        let ino = fs.next_ino;
        fs.do_create(path, ino)?;
        Ok(Box::new(MemFile {
            fs: self.fs.clone(),
            gate: self.gate.clone(),
            ino,
        }))
    }
    fn open_write(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        let ino = self.fs().lookup(path)?;
        Ok(Box::new(MemFile {
            fs: self.fs.clone(),
            gate: self.gate.clone(),
            ino,
        }))
    }
    fn read(&self, path: &Path) -> io::Result<ReadView> {
        let mut fs = self.fs();
        fs.check_fault(&[Fault::ReadIo])?;
        let ino = fs.lookup(path)?;
        Ok(Box::new(fs.inodes[&ino].live.clone()))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.fs().do_rename(from, to)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        self.fs().do_remove(path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut fs = self.fs();
        fs.check_fault(&[Fault::SyncDirIo])?;
        fs.do_sync_dir(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_keeps_only_synced_data_and_synced_names() {
        // Invariant: after a crash, a file exists only if its name was
        // dir-synced, and holds only what was synced.
        let mem = MemStorage::new();
        let dir = Path::new("/d");
        mem.create_dir_all(dir).unwrap();
        let mut a = mem.create_new(&dir.join("a")).unwrap();
        a.write_all_at(b"hello", 0).unwrap();
        a.sync_data().unwrap();
        let crashed = mem.crash(CrashMode::DropUnsynced);
        assert!(
            crashed.list(dir).unwrap().is_empty(),
            "unsynced create survived"
        );

        mem.sync_dir(dir).unwrap();
        a.write_all_at(b" world", 5).unwrap();
        let crashed = mem.crash(CrashMode::DropUnsynced);
        assert_eq!(&**crashed.read(&dir.join("a")).unwrap(), b"hello");
        let kept = mem.crash(CrashMode::KeepUnsyncedWrites);
        assert_eq!(&**kept.read(&dir.join("a")).unwrap(), b"hello world");

        mem.rename(&dir.join("a"), &dir.join("b")).unwrap();
        let crashed = mem.crash(CrashMode::DropUnsynced);
        assert_eq!(
            crashed.list(dir).unwrap(),
            vec!["a".to_string()],
            "unsynced rename survived"
        );
        mem.sync_dir(dir).unwrap();
        assert_eq!(
            mem.crash(CrashMode::DropUnsynced).list(dir).unwrap(),
            vec!["b".to_string()]
        );
    }

    #[test]
    fn a_replayed_op_log_rebuilds_the_file_system_at_every_prefix() {
        // Invariant: a fresh MemStorage fed the first k recorded operations
        // crashes (in every mode) exactly as the original did after them.
        let mem = MemStorage::new();
        mem.record_ops();
        let dir = Path::new("/d");
        let mut snapshots = vec![];
        let modes = [
            CrashMode::DropUnsynced,
            CrashMode::KeepUnsyncedWrites,
            CrashMode::KeepEverything,
            CrashMode::Torn { seed: 3 },
            CrashMode::Mix { seed: 4 },
        ];
        let fingerprints = |m: &MemStorage| -> Vec<u64> {
            modes.iter().map(|c| m.crash(*c).fingerprint()).collect()
        };
        snapshots.push(fingerprints(&mem));
        mem.create_dir_all(dir).unwrap();
        snapshots.push(fingerprints(&mem));
        let mut a = mem.create_new(&dir.join("a.tmp")).unwrap();
        snapshots.push(fingerprints(&mem));
        a.allocate(8192).unwrap();
        snapshots.push(fingerprints(&mem));
        a.write_all_at(&[7; 5000], 100).unwrap();
        snapshots.push(fingerprints(&mem));
        a.sync_all().unwrap();
        snapshots.push(fingerprints(&mem));
        mem.rename(&dir.join("a.tmp"), &dir.join("a")).unwrap();
        snapshots.push(fingerprints(&mem));
        a.write_all_at(b"tail", 5100).unwrap();
        snapshots.push(fingerprints(&mem));
        a.set_len(6000).unwrap();
        snapshots.push(fingerprints(&mem));
        mem.sync_dir(dir).unwrap();
        snapshots.push(fingerprints(&mem));
        mem.remove(&dir.join("a")).unwrap();
        snapshots.push(fingerprints(&mem));
        let ops = mem.ops();
        assert_eq!(ops.len() + 1, snapshots.len());
        let replay = MemStorage::new();
        for (k, expected) in snapshots.iter().enumerate() {
            assert_eq!(&fingerprints(&replay), expected, "after {k} operations");
            if let Some(op) = ops.get(k) {
                replay.apply_op(op).unwrap();
            }
        }
    }

    #[test]
    fn keep_everything_keeps_unsynced_names_and_mixes_keep_a_prefix_of_them() {
        // Invariant: KeepEverything is the page cache as it was; a Mix keeps
        // the unsynced directory changes only as a prefix in their order,
        // so a rename never survives without the create before it.
        let mem = MemStorage::new();
        let dir = Path::new("/d");
        mem.create_dir_all(dir).unwrap();
        let mut f = mem.create_new(&dir.join("x.tmp")).unwrap();
        f.write_all_at(b"data", 0).unwrap();
        f.sync_all().unwrap();
        mem.rename(&dir.join("x.tmp"), &dir.join("x")).unwrap();
        let kept = mem.crash(CrashMode::KeepEverything);
        assert_eq!(kept.list(dir).unwrap(), vec!["x".to_string()]);
        assert_eq!(&**kept.read(&dir.join("x")).unwrap(), b"data");
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..64 {
            let names = mem.crash(CrashMode::Mix { seed }).list(dir).unwrap();
            assert!(
                names.is_empty() || names == ["x.tmp"] || names == ["x"],
                "seed {seed}: {names:?} is not a prefix of create, rename"
            );
            seen.insert(names);
        }
        assert_eq!(seen.len(), 3, "some prefix never chosen: {seen:?}");
    }

    #[test]
    fn mixes_tear_unsynced_writes_at_sector_boundaries() {
        // Invariant: under Mix, durable bytes never change, and each
        // sector-aligned piece of an unsynced write is either the new data,
        // the old bytes, zeros or garbage; over many seeds all of whole,
        // dropped and torn writes occur.
        let mem = MemStorage::new();
        let dir = Path::new("/d");
        mem.create_dir_all(dir).unwrap();
        let mut f = mem.create_new(&dir.join("f")).unwrap();
        mem.sync_dir(dir).unwrap();
        f.write_all_at(&[1; 1000], 0).unwrap();
        f.sync_data().unwrap();
        f.write_all_at(&[2; 9000], 1000).unwrap();
        let (mut whole, mut dropped, mut torn) = (0, 0, 0);
        for seed in 0..200 {
            let image = mem.crash(CrashMode::Mix { seed });
            let bytes = image.read(&dir.join("f")).unwrap().to_vec();
            assert!(
                bytes[..1000].iter().all(|b| *b == 1),
                "seed {seed}: durable bytes changed"
            );
            if bytes.len() == 1000 {
                dropped += 1;
            } else if bytes[1000..].iter().all(|b| *b == 2) {
                whole += 1;
            } else {
                torn += 1;
            }
        }
        assert!(
            whole > 0 && dropped > 0 && torn > 0,
            "{whole} {dropped} {torn}"
        );
    }

    #[test]
    fn injected_faults_fire_once_after_the_given_passes() {
        // Invariant: a fault armed with pass=n lets n calls through, fails the next, then disarms.
        let mem = MemStorage::new();
        let dir = Path::new("/d");
        mem.create_dir_all(dir).unwrap();
        let mut f = mem.create_new(&dir.join("f")).unwrap();
        mem.inject(Fault::SyncIo, 1);
        f.sync_data().unwrap();
        assert_eq!(
            f.sync_data().unwrap_err().raw_os_error(),
            Some(nix::libc::EIO)
        );
        f.sync_data().unwrap();
        mem.inject(Fault::ReadIo, 0);
        assert_eq!(
            mem.read(&dir.join("f"))
                .err()
                .and_then(|e| e.raw_os_error()),
            Some(nix::libc::EIO)
        );
        assert!(mem.read(&dir.join("f")).is_ok());
    }

    #[test]
    fn std_allocate_reads_as_zeros() {
        // Invariant: preallocated space reads back as zeros through the read view.
        let tmp = tempfile::tempdir().unwrap();
        let s = StdStorage;
        let p = tmp.path().join("f");
        let mut f = s.create_new(&p).unwrap();
        f.write_all_at(b"abc", 0).unwrap();
        f.allocate(4096).unwrap();
        f.sync_all().unwrap();
        let view = s.read(&p).unwrap();
        assert_eq!(view.len(), 4096);
        assert_eq!(&view[..3], b"abc");
        assert!(view[3..].iter().all(|&b| b == 0));
    }

    #[test]
    fn std_write_behind_keeps_every_chunk() {
        // Write-behind only schedules and waits for write-back: what was
        // written, chunk by chunk, reads back whole and unchanged.
        let tmp = tempfile::tempdir().unwrap();
        let s = StdStorage;
        let p = tmp.path().join("f");
        let mut f = s.create_new(&p).unwrap();
        let chunk = 64 * 1024;
        let body: Vec<u8> = (0..4 * chunk).map(|i| (i % 251) as u8).collect();
        for (i, c) in body.chunks(chunk).enumerate() {
            let offset = (i * chunk) as u64;
            f.write_all_at(c, offset).unwrap();
            f.write_behind(offset, c.len() as u64).unwrap();
        }
        f.sync_all().unwrap();
        assert_eq!(&s.read(&p).unwrap()[..], &body[..]);
    }
}
