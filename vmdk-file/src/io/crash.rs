//! Power-loss testing (testing only: the `__crash-test` feature).
//!
//! One file, past 800 lines on purpose: the recorder, the log and the
//! replayer share one model of what a sync makes durable, read together.
//!
//! A [`Recorder`] is a [`Storage`] that makes every change on the real
//! file system (syncs excepted: nothing needs the real files durable)
//! and logs those beneath one root directory: writes (cut at 4 KiB page
//! boundaries, the unit the page cache writes back), length changes,
//! creations, renames, removals, and the syncs of files and
//! directories. A [`Recording`] then replays that log into the states a
//! power cut could leave, as the crash-consistency literature does
//! (ALICE, CrashMonkey), with the guarantees of Linux ext4:
//!
//! - a file's data and length are durable once a later `fsync` or
//!   `fdatasync` of that file has completed;
//! - a name created, renamed or removed in a directory is durable once a
//!   later `fsync` of that directory has completed (an `fsync` of the
//!   file alone is not enough); a rename is atomic;
//! - what is not yet durable may be lost or not, in any subset: page
//!   writes in any order, name changes in their order (not only as a
//!   prefix: the engine does not count on a journal to keep a file's new
//!   name when a later rename survives).
//!
//! The crash points are the moments just before each sync completes,
//! and the end of the log. At each, [`Recording::replay`] yields every
//! state when there are few, else the state with nothing in flight kept,
//! the state with everything kept, and seeded random samples (the pages
//! of one write kept together, lost together or torn);
//! [`CrashState::write_to`] lays one out in a directory for the real
//! engine to open. [`NoSync`] is the storage to check them through.
//!
//! ```
//! use std::sync::Arc;
//! use vmdk_file::io::crash::Recorder;
//! use vmdk_file::io::SharedStorage;
//!
//! let dir = tempfile::tempdir()?;
//! let rec = Recorder::new(dir.path())?;
//! let s: SharedStorage = rec.clone();
//! let f = s.create(&dir.path().join("a"), true)?;
//! s.write_at(&f, b"data", 0)?;
//! s.sync_all(&f)?; // data durable, the name not yet
//! s.sync_dir(dir.path())?;
//! let states: Vec<_> = rec.recording().replay(8, 1).collect();
//! // Before the file's sync: "a" may be missing, empty or written.
//! // Before the directory's sync: "a" may be missing or written.
//! // At the end: "a" holds "data".
//! let out = tempfile::tempdir()?;
//! let last = states.last().unwrap();
//! last.write_to(out.path())?;
//! assert_eq!(std::fs::read(out.path().join("a"))?, b"data");
//! # Ok::<(), std::io::Error>(())
//! ```

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::{StdStorage, Storage};

/// Unit of a write that reaches the disk whole or not at all.
pub const PAGE: u64 = 4096;

/// Crash points with at most this many possible states get them all.
const EXHAUSTIVE: usize = 16;

type NodeId = u64;

static ZERO_PAGE: [u8; PAGE as usize] = [0; PAGE as usize];
type Page = Arc<[u8; PAGE as usize]>;

/// One recorded change.
#[derive(Clone, Debug)]
enum Op {
    /// Bytes within one page of a file, from the `call`-th `write_at`.
    Write {
        node: NodeId,
        offset: u64,
        data: Vec<u8>,
        call: u64,
    },
    /// `set_len` of a file.
    SetLen { node: NodeId, len: u64 },
    /// `allocate` of a file: its length becomes at least `len`.
    Extend { node: NodeId, len: u64 },
    /// A new file or directory named `name` in `dir`.
    Link {
        dir: NodeId,
        name: OsString,
        node: NodeId,
        is_dir: bool,
    },
    /// A name removed.
    Unlink { dir: NodeId, name: OsString },
    /// A rename (replacing the target name).
    Rename {
        from_dir: NodeId,
        from: OsString,
        to_dir: NodeId,
        to: OsString,
    },
    /// A completed `fsync` / `fdatasync` of a file or directory.
    Sync { node: NodeId },
}

impl Op {
    /// The directories whose order this name change is part of.
    fn dirs(&self) -> Option<(NodeId, NodeId)> {
        match self {
            Op::Link { dir, .. } | Op::Unlink { dir, .. } => Some((*dir, *dir)),
            Op::Rename {
                from_dir, to_dir, ..
            } => Some((*from_dir, *to_dir)),
            _ => None,
        }
    }

    /// The file a data change applies to.
    fn data_node(&self) -> Option<NodeId> {
        match self {
            Op::Write { node, .. } | Op::SetLen { node, .. } | Op::Extend { node, .. } => {
                Some(*node)
            }
            _ => None,
        }
    }
}

#[derive(Clone, Debug, Default)]
struct FileData {
    len: u64,
    pages: BTreeMap<u64, Page>,
}

impl FileData {
    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut done = 0usize;
        while done < data.len() {
            let at = offset + done as u64;
            let (page, in_page) = (at / PAGE, (at % PAGE) as usize);
            let n = (PAGE as usize - in_page).min(data.len() - done);
            let p = self
                .pages
                .entry(page)
                .or_insert_with(|| Arc::new([0u8; PAGE as usize]));
            Arc::make_mut(p)[in_page..in_page + n].copy_from_slice(&data[done..done + n]);
            done += n;
        }
        self.len = self.len.max(offset + data.len() as u64);
    }

    fn set_len(&mut self, len: u64) {
        if len < self.len {
            let first_gone = len.div_ceil(PAGE);
            self.pages.retain(|&p, _| p < first_gone);
            if !len.is_multiple_of(PAGE) {
                if let Some(p) = self.pages.get_mut(&(len / PAGE)) {
                    Arc::make_mut(p)[(len % PAGE) as usize..].fill(0);
                }
            }
        }
        self.len = len;
    }
}

#[derive(Clone, Debug)]
enum Node {
    File(FileData),
    Dir(BTreeMap<OsString, NodeId>),
}

/// A file-system tree: nodes (inodes) and the names linking them.
#[derive(Clone, Debug)]
struct Image {
    nodes: HashMap<NodeId, Node>,
}

const ROOT: NodeId = 0;

impl Image {
    fn file(&mut self, node: NodeId) -> Option<&mut FileData> {
        // A file written before its name exists is an inode without a
        // name: it exists all the same.
        match self
            .nodes
            .entry(node)
            .or_insert_with(|| Node::File(FileData::default()))
        {
            Node::File(f) => Some(f),
            Node::Dir(_) => None,
        }
    }

    fn dir(&mut self, node: NodeId) -> Option<&mut BTreeMap<OsString, NodeId>> {
        match self
            .nodes
            .entry(node)
            .or_insert_with(|| Node::Dir(BTreeMap::new()))
        {
            Node::Dir(d) => Some(d),
            Node::File(_) => None,
        }
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Write {
                node, offset, data, ..
            } => {
                if let Some(f) = self.file(*node) {
                    f.write(*offset, data);
                }
            }
            Op::SetLen { node, len } => {
                if let Some(f) = self.file(*node) {
                    f.set_len(*len);
                }
            }
            Op::Extend { node, len } => {
                if let Some(f) = self.file(*node) {
                    if *len > f.len {
                        f.set_len(*len);
                    }
                }
            }
            Op::Link {
                dir,
                name,
                node,
                is_dir,
            } => {
                self.nodes.entry(*node).or_insert_with(|| {
                    if *is_dir {
                        Node::Dir(BTreeMap::new())
                    } else {
                        Node::File(FileData::default())
                    }
                });
                if let Some(d) = self.dir(*dir) {
                    d.insert(name.clone(), *node);
                }
            }
            Op::Unlink { dir, name } => {
                if let Some(d) = self.dir(*dir) {
                    d.remove(name);
                }
            }
            Op::Rename {
                from_dir,
                from,
                to_dir,
                to,
            } => {
                let moved = self.dir(*from_dir).and_then(|d| d.remove(from));
                if let (Some(n), Some(d)) = (moved, self.dir(*to_dir)) {
                    d.insert(to.clone(), n);
                }
            }
            Op::Sync { .. } => {}
        }
    }

    /// Lays the tree beneath the root out in `dir` (emptied first).
    fn write_to(&self, dir: &Path) -> io::Result<()> {
        if dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
        std::fs::create_dir_all(dir)?;
        self.write_dir(ROOT, dir, 0)
    }

    fn write_dir(&self, node: NodeId, at: &Path, depth: usize) -> io::Result<()> {
        let Some(Node::Dir(entries)) = self.nodes.get(&node) else {
            return Ok(());
        };
        if depth > 64 {
            return Err(io::Error::other("directory loop in a crash state"));
        }
        for (name, child) in entries {
            let p = at.join(name);
            match self.nodes.get(child) {
                Some(Node::Dir(_)) => {
                    std::fs::create_dir(&p)?;
                    self.write_dir(*child, &p, depth + 1)?;
                }
                Some(Node::File(f)) => {
                    let out = File::create(&p)?;
                    out.set_len(f.len)?;
                    for (&page, bytes) in &f.pages {
                        let start = page * PAGE;
                        if start >= f.len {
                            break;
                        }
                        let n = (f.len - start).min(PAGE) as usize;
                        if bytes[..n] != ZERO_PAGE[..n] {
                            out.write_all_at(&bytes[..n], start)?;
                        }
                    }
                }
                None => {}
            }
        }
        Ok(())
    }

    /// Reads the tree beneath `root`, noting each real `(dev, ino)` and
    /// the node id it got in `map`.
    fn scan(root: &Path, map: &mut HashMap<(u64, u64), NodeId>) -> io::Result<Self> {
        let mut img = Image {
            nodes: HashMap::new(),
        };
        let meta = std::fs::metadata(root)?;
        map.insert((meta.dev(), meta.ino()), ROOT);
        img.nodes.insert(ROOT, Node::Dir(BTreeMap::new()));
        let mut stack = vec![(root.to_path_buf(), ROOT)];
        while let Some((path, id)) = stack.pop() {
            for entry in std::fs::read_dir(&path)? {
                let entry = entry?;
                let p = entry.path();
                let meta = std::fs::symlink_metadata(&p)?;
                let key = (meta.dev(), meta.ino());
                let known = map.get(&key).copied();
                let child = known.unwrap_or(map.len() as NodeId);
                map.insert(key, child);
                if known.is_none() {
                    if meta.is_dir() {
                        img.nodes.insert(child, Node::Dir(BTreeMap::new()));
                        stack.push((p, child));
                    } else if meta.is_file() {
                        let mut f = FileData::default();
                        f.write(0, &std::fs::read(&p)?);
                        f.set_len(meta.len());
                        img.nodes.insert(child, Node::File(f));
                    } else {
                        continue; // symlinks and the like are not modelled
                    }
                }
                if let Some(Node::Dir(d)) = img.nodes.get_mut(&id) {
                    d.insert(entry.file_name(), child);
                }
            }
        }
        Ok(img)
    }
}

struct Log {
    initial: Image,
    ops: Vec<Op>,
    /// Real `(dev, ino)` to node id, for what lies beneath the root.
    ids: HashMap<(u64, u64), NodeId>,
    next_id: NodeId,
    /// `write_at` calls so far.
    writes: u64,
}

impl Log {
    fn id_of_meta(&self, meta: &std::fs::Metadata) -> Option<NodeId> {
        self.ids.get(&(meta.dev(), meta.ino())).copied()
    }

    fn id_of_file(&self, file: &File) -> Option<NodeId> {
        file.metadata().ok().and_then(|m| self.id_of_meta(&m))
    }

    fn id_of_path(&self, path: &Path) -> Option<NodeId> {
        std::fs::symlink_metadata(path)
            .ok()
            .and_then(|m| self.id_of_meta(&m))
    }

    /// The directory node and the last component of `path`, when the
    /// directory is beneath the root.
    fn place(&self, path: &Path) -> Option<(NodeId, OsString)> {
        let name = path.file_name()?.to_os_string();
        let dir = self.id_of_path(super::parent_dir(path))?;
        Some((dir, name))
    }

    fn new_node(&mut self, meta: &std::fs::Metadata) -> NodeId {
        let id = self.next_id;
        self.next_id += 1;
        self.ids.insert((meta.dev(), meta.ino()), id);
        id
    }
}

/// A [`Storage`] that makes every change on the real file system and logs
/// those beneath its root for [`Recording::replay`]. Syncs are logged but
/// not made: nothing needs the real files to be durable.
pub struct Recorder {
    log: Mutex<Log>,
}

impl fmt::Debug for Recorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recorder")
            .field("ops", &self.position())
            .finish_non_exhaustive()
    }
}

impl Recorder {
    /// Starts recording changes beneath `root` (a directory); what is
    /// there now is the durable starting state.
    pub fn new(root: &Path) -> io::Result<Arc<Self>> {
        let mut ids = HashMap::new();
        let initial = Image::scan(root, &mut ids)?;
        let next_id = ids.len() as NodeId + 1;
        Ok(Arc::new(Self {
            log: Mutex::new(Log {
                initial,
                ops: Vec::new(),
                ids,
                next_id,
                writes: 0,
            }),
        }))
    }

    fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many changes have been logged: a position in the log, to
    /// compare with [`CrashState::position`].
    pub fn position(&self) -> usize {
        self.log().ops.len()
    }

    /// The log so far.
    pub fn recording(&self) -> Recording {
        let log = self.log();
        Recording {
            initial: log.initial.clone(),
            ops: log.ops.clone(),
        }
    }
}

impl Storage for Recorder {
    fn create(&self, path: &Path, exclusive: bool) -> io::Result<File> {
        let mut log = self.log();
        let existing = if exclusive {
            None
        } else {
            log.id_of_path(path)
        };
        let f = StdStorage.create(path, exclusive)?;
        match existing {
            Some(node) => log.ops.push(Op::SetLen { node, len: 0 }),
            None => {
                if let Some((dir, name)) = log.place(path) {
                    let node = log.new_node(&f.metadata()?);
                    log.ops.push(Op::Link {
                        dir,
                        name,
                        node,
                        is_dir: false,
                    });
                }
            }
        }
        Ok(f)
    }

    fn write_at(&self, file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut log = self.log();
        StdStorage.write_at(file, buf, offset)?;
        if let Some(node) = log.id_of_file(file) {
            log.writes += 1;
            let call = log.writes;
            let mut done = 0usize;
            while done < buf.len() {
                let at = offset + done as u64;
                let n = ((PAGE - at % PAGE) as usize).min(buf.len() - done);
                log.ops.push(Op::Write {
                    node,
                    offset: at,
                    data: buf[done..done + n].to_vec(),
                    call,
                });
                done += n;
            }
        }
        Ok(())
    }

    fn set_len(&self, file: &File, len: u64) -> io::Result<()> {
        let mut log = self.log();
        StdStorage.set_len(file, len)?;
        if let Some(node) = log.id_of_file(file) {
            log.ops.push(Op::SetLen { node, len });
        }
        Ok(())
    }

    fn allocate(&self, file: &File, len: u64) -> io::Result<()> {
        let mut log = self.log();
        StdStorage.allocate(file, len)?;
        if let Some(node) = log.id_of_file(file) {
            log.ops.push(Op::Extend { node, len });
        }
        Ok(())
    }

    fn sync_data(&self, file: &File) -> io::Result<()> {
        let mut log = self.log();
        // Recorded, not made: nothing needs the real files durable, and
        // the tests run faster without waiting for the disk.
        file.metadata()?;
        if let Some(node) = log.id_of_file(file) {
            log.ops.push(Op::Sync { node });
        }
        Ok(())
    }

    fn sync_all(&self, file: &File) -> io::Result<()> {
        self.sync_data(file)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut log = self.log();
        let places = log.place(from).zip(log.place(to));
        StdStorage.rename(from, to)?;
        if let Some(((from_dir, from), (to_dir, to))) = places {
            log.ops.push(Op::Rename {
                from_dir,
                from,
                to_dir,
                to,
            });
        }
        Ok(())
    }

    fn rename_noreplace(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut log = self.log();
        let places = log.place(from).zip(log.place(to));
        StdStorage.rename_noreplace(from, to)?;
        if let Some(((from_dir, from), (to_dir, to))) = places {
            log.ops.push(Op::Rename {
                from_dir,
                from,
                to_dir,
                to,
            });
        }
        Ok(())
    }

    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut log = self.log();
        let node = log.id_of_path(from);
        StdStorage.hard_link(from, to)?;
        if let (Some(node), Some((dir, name))) = (node, log.place(to)) {
            log.ops.push(Op::Link {
                dir,
                name,
                node,
                is_dir: false,
            });
        }
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut log = self.log();
        let place = log.place(path);
        StdStorage.remove_file(path)?;
        if let Some((dir, name)) = place {
            log.ops.push(Op::Unlink { dir, name });
        }
        Ok(())
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        let mut log = self.log();
        StdStorage.create_dir(path)?;
        if let Some((dir, name)) = log.place(path) {
            let node = log.new_node(&std::fs::metadata(path)?);
            log.ops.push(Op::Link {
                dir,
                name,
                node,
                is_dir: true,
            });
        }
        Ok(())
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        let mut log = self.log();
        let place = log.place(path);
        StdStorage.remove_dir(path)?;
        if let Some((dir, name)) = place {
            log.ops.push(Op::Unlink { dir, name });
        }
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut log = self.log();
        std::fs::metadata(dir)?;
        if let Some(node) = log.id_of_path(dir) {
            log.ops.push(Op::Sync { node });
        }
        Ok(())
    }
}

/// The OS's file system without its syncs, for checking crash states:
/// they are scratch, and a repair of one need not wait for the disk.
#[derive(Debug)]
pub struct NoSync;

impl Storage for NoSync {
    fn create(&self, path: &Path, exclusive: bool) -> io::Result<File> {
        StdStorage.create(path, exclusive)
    }
    fn write_at(&self, file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
        StdStorage.write_at(file, buf, offset)
    }
    fn set_len(&self, file: &File, len: u64) -> io::Result<()> {
        StdStorage.set_len(file, len)
    }
    fn allocate(&self, file: &File, len: u64) -> io::Result<()> {
        StdStorage.allocate(file, len)
    }
    fn sync_data(&self, _: &File) -> io::Result<()> {
        Ok(())
    }
    fn sync_all(&self, _: &File) -> io::Result<()> {
        Ok(())
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        StdStorage.rename(from, to)
    }
    fn rename_noreplace(&self, from: &Path, to: &Path) -> io::Result<()> {
        StdStorage.rename_noreplace(from, to)
    }
    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        StdStorage.hard_link(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        StdStorage.remove_file(path)
    }
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        StdStorage.create_dir(path)
    }
    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        StdStorage.remove_dir(path)
    }
    fn sync_dir(&self, _: &Path) -> io::Result<()> {
        Ok(())
    }
}

/// A log of changes and the state it started from.
#[derive(Clone, Debug)]
pub struct Recording {
    initial: Image,
    ops: Vec<Op>,
}

impl Recording {
    /// Number of changes logged.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// True when nothing was logged.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Number of crash points: one before each sync, one at the end.
    pub fn crash_points(&self) -> usize {
        self.ops
            .iter()
            .filter(|o| matches!(o, Op::Sync { .. }))
            .count()
            + 1
    }

    /// One line per logged change from `range`, for failure reports.
    pub fn describe(&self, range: std::ops::Range<usize>) -> String {
        let mut s = String::new();
        for i in range.start..range.end.min(self.ops.len()) {
            let line = match &self.ops[i] {
                Op::Write {
                    node,
                    offset,
                    data,
                    call,
                } => format!(
                    "write  node {node} at {offset} ({} bytes, write {call})",
                    data.len()
                ),
                Op::SetLen { node, len } => format!("setlen node {node} to {len}"),
                Op::Extend { node, len } => format!("extend node {node} to {len}"),
                Op::Link {
                    dir,
                    name,
                    node,
                    is_dir,
                } => format!(
                    "{}  {:?} in dir {dir} -> node {node}",
                    if *is_dir { "mkdir " } else { "create" },
                    name
                ),
                Op::Unlink { dir, name } => format!("unlink {name:?} in dir {dir}"),
                Op::Rename {
                    from_dir,
                    from,
                    to_dir,
                    to,
                } => format!("rename {from:?} in dir {from_dir} -> {to:?} in dir {to_dir}"),
                Op::Sync { node } => format!("sync   node {node}"),
            };
            s.push_str(&format!("{i:6} {line}\n"));
        }
        s
    }

    /// The crash states: at each crash point in order, every possible
    /// one when there are at most `per_point` (or 16), else `per_point`
    /// of them: the one keeping nothing in flight, the one keeping
    /// everything, and random ones chosen with `seed`.
    pub fn replay(&self, per_point: usize, seed: u64) -> Replay<'_> {
        Replay {
            rec: self,
            base: self.initial.clone(),
            applied: vec![false; self.ops.len()],
            pending: HashMap::new(),
            synced_since: HashMap::new(),
            at: 0,
            per_point: per_point.max(1),
            seed,
            queue: Vec::new(),
        }
    }
}

/// The crash states of a [`Recording`], point by point.
#[derive(Debug)]
pub struct Replay<'a> {
    rec: &'a Recording,
    /// The durable state at the current point.
    base: Image,
    applied: Vec<bool>,
    /// Changes not yet durable, per file or directory node.
    pending: HashMap<NodeId, Vec<usize>>,
    /// For each directory, the index of its last completed sync.
    synced_since: HashMap<NodeId, usize>,
    /// The next log index to look at.
    at: usize,
    per_point: usize,
    seed: u64,
    queue: Vec<CrashState>,
}

/// One state a power cut could leave.
#[derive(Clone, Debug)]
pub struct CrashState {
    image: Image,
    position: usize,
    kept: Vec<usize>,
    in_flight: usize,
    sample: usize,
}

impl CrashState {
    /// The log position of the crash: the changes before it were made;
    /// the sync at it (if any) had not completed.
    pub fn position(&self) -> usize {
        self.position
    }

    /// Which sample of its crash point this is (0: nothing in flight
    /// kept, 1: everything kept, then random ones).
    pub fn sample(&self) -> usize {
        self.sample
    }

    /// Lays the state out in `dir` (emptied first), as the root was.
    pub fn write_to(&self, dir: &Path) -> io::Result<()> {
        self.image.write_to(dir)
    }

    /// What was kept, for failure reports.
    pub fn describe(&self) -> String {
        format!(
            "crash at log position {} (sample {}): kept {} of {} changes in flight {:?}",
            self.position,
            self.sample,
            self.kept.len(),
            self.in_flight,
            &self.kept[..self.kept.len().min(64)]
        )
    }
}

/// xorshift64*: small, seeded, good enough to pick subsets.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

impl Replay<'_> {
    /// Makes durable what a completed sync of `node` covers.
    fn sync(&mut self, node: NodeId, index: usize) {
        self.synced_since.insert(node, index);
        let Some(list) = self.pending.remove(&node) else {
            return;
        };
        let mut keep = Vec::new();
        for i in list {
            if self.applied[i] {
                continue;
            }
            let op = &self.rec.ops[i];
            // A rename between two directories needs both synced.
            if let Some((a, b)) = op.dirs() {
                let other = if a == node { b } else { a };
                let both = self.synced_since.get(&other).is_some_and(|&s| s > i)
                    && self.synced_since.get(&node).is_some_and(|&s| s > i);
                if !both || !keep.is_empty() {
                    keep.push(i);
                    continue;
                }
            }
            self.base.apply(op);
            self.applied[i] = true;
        }
        if !keep.is_empty() {
            self.pending.insert(node, keep);
        }
    }

    /// The crash states at the point just before log index `end`.
    fn states_at(&mut self, end: usize) {
        let in_flight: Vec<usize> = (0..end)
            .filter(|&i| !self.applied[i] && !matches!(self.rec.ops[i], Op::Sync { .. }))
            .collect();
        let m = in_flight.len();
        let mut rng = Rng::new(self.seed ^ (end as u64).wrapping_mul(0x1000_0000_01B3));
        // Few enough to try every subset (up to 16 whatever the budget:
        // an ordering bug among a handful of changes must not depend on
        // luck): do so, in log order.
        let exhaustive = m < 63 && (1u64 << m) <= self.per_point.max(EXHAUSTIVE) as u64;
        let count = if exhaustive {
            1usize << m
        } else {
            self.per_point.max(2)
        };
        for sample in 0..count {
            let kept: Vec<usize> = if exhaustive {
                in_flight
                    .iter()
                    .enumerate()
                    .filter(|(bit, _)| sample >> bit & 1 == 1)
                    .map(|(_, &i)| i)
                    .collect()
            } else {
                match sample {
                    0 => Vec::new(),
                    1 => in_flight.clone(),
                    _ => self.pick(&in_flight, &mut rng),
                }
            };
            let mut image = self.base.clone();
            // Name changes in log order, data changes in the order picked.
            for &i in kept.iter().filter(|&&i| self.rec.ops[i].dirs().is_some()) {
                image.apply(&self.rec.ops[i]);
            }
            for &i in kept.iter().filter(|&&i| self.rec.ops[i].dirs().is_none()) {
                image.apply(&self.rec.ops[i]);
            }
            self.queue.push(CrashState {
                image,
                position: end,
                kept,
                in_flight: m,
                sample,
            });
        }
        self.queue.reverse();
    }

    /// A random subset of the changes in flight, the data changes in a
    /// random order. The pages of one write are all kept, all lost, or
    /// torn (each kept or not), a third of the time each, so that states
    /// where a large write is lost whole while a small one after it
    /// survives are as likely as torn ones.
    fn pick(&self, in_flight: &[usize], rng: &mut Rng) -> Vec<usize> {
        let ops = &self.rec.ops;
        // How much to keep of what is torn: all fractions equally likely.
        let keep_per_mille = rng.below(1001) as u64;
        let mut choice: HashMap<u64, usize> = HashMap::new();
        let kept: Vec<usize> = in_flight
            .iter()
            .copied()
            .filter(|&i| {
                let whole = match &ops[i] {
                    Op::Write { call, .. } => *choice.entry(*call).or_insert_with(|| rng.below(3)),
                    _ => rng.below(3),
                };
                match whole {
                    0 => true,
                    1 => false,
                    _ => rng.next() % 1000 < keep_per_mille,
                }
            })
            .collect();
        let (mut out, mut data): (Vec<usize>, Vec<usize>) =
            kept.into_iter().partition(|&i| ops[i].dirs().is_some());
        for k in (1..data.len()).rev() {
            let j = rng.below(k + 1);
            data.swap(k, j);
        }
        out.extend(data);
        out
    }
}

impl Iterator for Replay<'_> {
    type Item = CrashState;

    fn next(&mut self) -> Option<CrashState> {
        loop {
            if let Some(s) = self.queue.pop() {
                return Some(s);
            }
            let ops = &self.rec.ops;
            if self.at > ops.len() {
                return None;
            }
            // Walk to the next sync (or the end), noting what is pending.
            let mut i = self.at;
            while i < ops.len() && !matches!(ops[i], Op::Sync { .. }) {
                if let Some(n) = ops[i].data_node() {
                    self.pending.entry(n).or_default().push(i);
                }
                if let Some((a, b)) = ops[i].dirs() {
                    self.pending.entry(a).or_default().push(i);
                    if b != a {
                        self.pending.entry(b).or_default().push(i);
                    }
                }
                i += 1;
            }
            self.states_at(i);
            if let Some(Op::Sync { node }) = ops.get(i) {
                self.sync(*node, i);
            }
            self.at = i + 1;
        }
    }
}
