//! Power loss, not just SIGKILL: a workload runs on a recording storage
//! (`vmdk_file::io::crash`), and every state a power cut could leave at
//! each sync point (a bounded, seeded sample of them) must open, be
//! clean or made clean by `repair` (of each file of the chain a finding
//! names, as a user runs `check --repair` on it), and hold every write
//! acknowledged by a completed flush (or by an operation that returned);
//! a sector written since then may hold its old value or any newer one,
//! nothing else. A disk is acknowledged where the operation that
//! returned last put it; during an operation, a crash may leave it as
//! before or as after (or, for commit and rename, whole under one of
//! its names).
//!
//! One file on purpose: every workload runs through the same checking
//! harness, which is most of it.
//!
//! The crash states checked per workload are about `VMDK_CRASH_STATES`
//! (spread over its crash points, every state of a point with few;
//! `cargo xtask crash --states N`), or a bounded default for CI; each
//! test prints how many it checked.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use vmdk_file::check::check_disk;
use vmdk_file::convert::{convert_in, Source, Target};
use vmdk_file::create::{create_in, delete_in, rename_in, CreateOptions, DiskType};
use vmdk_file::io::crash::{CrashState, NoSync, Recorder, Recording};
use vmdk_file::io::SharedStorage;
use vmdk_file::local::{AllocKind, LocalDisk, OpenOptions};
use vmdk_file::maintain::{commit_in, compact_in, create_child_in, grow_in};
use vmdk_file::repair::repair;

/// Crash states to check per workload (spread over its crash points).
pub const STATES_ENV: &str = "VMDK_CRASH_STATES";
/// What CI checks per workload when the variable is unset.
const DEFAULT_STATES: usize = 300;

const SECTOR: u64 = 512;
const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

/// Crash states to check for a workload: `weight` times the number in
/// the environment, or the default.
pub fn states_wanted(weight: usize) -> usize {
    std::env::var(STATES_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_STATES)
        * weight
}

// ---------------------------------------------------------------------
// Sector contents: every sector a write leaves names the write and the
// sector, so a wrong sector says whose it is.

const MAGIC: u64 = 0x5644_4b5f_5057_524c; // "VDK_PWRL"

/// The bytes write `tag` puts in sector `sector` (tag 0: zeros): a head
/// word naming both, then a body that depends on the tag alone (so that
/// checking a sector is one comparison, quick even in a debug build).
pub fn sector_bytes(tag: u32, sector: u64) -> [u8; 512] {
    let mut b = [0u8; 512];
    if tag == 0 {
        return b;
    }
    b[..8].copy_from_slice(&(u64::from(tag) | (sector << 32)).to_le_bytes());
    b[8..].copy_from_slice(&body_of(tag));
    b
}

fn body_of(tag: u32) -> [u8; 504] {
    let word = (u64::from(tag).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ MAGIC).to_le_bytes();
    let mut b = [0u8; 504];
    for w in b.chunks_exact_mut(8) {
        w.copy_from_slice(&word);
    }
    b
}

/// Which write left `bytes` in sector `sector`: `Some(0)` for zeros,
/// `None` for anything no write left there. `bodies` caches the bodies.
fn tag_in(bytes: &[u8], sector: u64, bodies: &mut BTreeMap<u32, [u8; 504]>) -> Option<u32> {
    static ZEROS: [u8; 512] = [0; 512];
    let head = u64::from_le_bytes(bytes[..8].try_into().ok()?);
    let tag = head as u32;
    if head == 0 {
        return (bytes == &ZEROS[..]).then_some(0);
    }
    if head >> 32 != sector || tag == 0 {
        return None;
    }
    let body = bodies.entry(tag).or_insert_with(|| body_of(tag));
    (bytes[8..] == body[..]).then_some(tag)
}

fn data_of(tag: u32, offset: u64, len: u64) -> Vec<u8> {
    assert!(offset.is_multiple_of(SECTOR) && len.is_multiple_of(SECTOR));
    let mut v = Vec::with_capacity(len as usize);
    for s in offset / SECTOR..(offset + len) / SECTOR {
        v.extend_from_slice(&sector_bytes(tag, s));
    }
    v
}

// ---------------------------------------------------------------------
// The model: what each disk must be.

/// Per sector, the values it may hold: the acknowledged one first, then
/// those written since (the last is the newest). Absent: zeros.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Content {
    sectors: BTreeMap<u64, Vec<u32>>,
}

impl Content {
    /// A write (tag 0: zeros) not yet acknowledged.
    pub fn write(&mut self, offset: u64, len: u64, tag: u32) {
        for s in offset / SECTOR..(offset + len).div_ceil(SECTOR) {
            let v = self.sectors.entry(s).or_insert_with(|| vec![0]);
            if v.last() != Some(&tag) {
                v.push(tag);
            }
        }
    }

    /// A write acknowledged at once.
    pub fn put(&mut self, offset: u64, len: u64, tag: u32) {
        for s in offset / SECTOR..(offset + len).div_ceil(SECTOR) {
            self.sectors.insert(s, vec![tag]);
        }
    }

    /// Everything written so far is acknowledged.
    pub fn settle(&mut self) {
        self.sectors.retain(|_, v| {
            let last = *v.last().unwrap_or(&0);
            v.clear();
            v.push(last);
            last != 0
        });
    }

    fn allowed(&self, sector: u64) -> &[u32] {
        self.sectors.get(&sector).map_or(&[0], |v| v.as_slice())
    }
}

/// What a disk path must be in a crash state.
#[derive(Clone, Debug, PartialEq)]
pub enum Expect {
    /// No such file.
    Absent,
    /// Anything (a file left mid-operation that is no longer the disk).
    Any,
    /// A disk of this capacity and content.
    Disk { capacity: u64, content: Content },
}

/// What every disk of the workload must be: one possible world.
pub type World = BTreeMap<String, Expect>;

/// One operation of the workload and the worlds a crash during it may
/// leave.
#[derive(Debug)]
pub struct Step {
    pub name: String,
    pub start: usize,
    pub end: usize,
    /// Acceptable worlds while the step runs (before and after included).
    pub during: Vec<World>,
}

/// A workload being recorded.
pub struct Run {
    pub dir: PathBuf,
    pub rec: Arc<Recorder>,
    pub storage: SharedStorage,
    pub world: World,
    pub steps: Vec<Step>,
    next_tag: u32,
}

impl Run {
    pub fn new(dir: &Path) -> Self {
        let rec = Recorder::new(dir).unwrap();
        Self {
            dir: dir.to_path_buf(),
            storage: rec.clone(),
            rec,
            world: World::new(),
            steps: Vec::new(),
            next_tag: 1,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Runs `op` as a step. `change` turns the world before into the
    /// world after; `mid` adds worlds acceptable only during the step.
    pub fn step<T>(
        &mut self,
        name: &str,
        op: impl FnOnce(&Self) -> vmdk_file::Result<T>,
        change: impl FnOnce(&mut World),
        mid: Vec<World>,
    ) -> T {
        let start = self.rec.position();
        let before = self.world.clone();
        let out = op(self).unwrap_or_else(|e| panic!("{name}: {e}"));
        change(&mut self.world);
        let mut during = vec![self.world.clone()];
        if before != self.world {
            during.push(before);
        }
        during.extend(mid);
        self.steps.push(Step {
            name: name.to_string(),
            start,
            end: self.rec.position(),
            during,
        });
        out
    }

    pub fn content(&self, disk: &str) -> Content {
        match &self.world[disk] {
            Expect::Disk { content, .. } => content.clone(),
            other => panic!("{disk} is {other:?}"),
        }
    }

    pub fn create(&mut self, name: &str, t: DiskType, capacity: u64) {
        let p = self.path(name);
        // Until it is created, there is no such disk.
        self.world.entry(name.into()).or_insert(Expect::Absent);
        self.step(
            &format!("create {name}"),
            |r| create_in(&r.storage, &p, &CreateOptions::new(t, capacity)),
            |w| {
                w.insert(
                    name.into(),
                    Expect::Disk {
                        capacity,
                        content: Content::default(),
                    },
                );
            },
            vec![],
        );
    }

    pub fn open(&mut self, name: &str) -> LocalDisk {
        let p = self.path(name);
        self.step(
            &format!("open {name} for writing"),
            |r| {
                LocalDisk::open(
                    &p,
                    &OpenOptions {
                        writable: true,
                        storage: r.storage.clone(),
                        ..OpenOptions::default()
                    },
                )
            },
            |_| {},
            vec![],
        )
    }

    fn edit(&mut self, disk: &str, f: impl FnOnce(&mut Content)) -> impl FnOnce(&mut World) {
        let mut c = self.content(disk);
        f(&mut c);
        let disk = disk.to_string();
        move |w: &mut World| {
            if let Some(Expect::Disk { content, .. }) = w.get_mut(&disk) {
                *content = c;
            }
        }
    }

    /// A write of fresh data (`zero`: `write_zeroes`).
    pub fn write(&mut self, d: &LocalDisk, disk: &str, offset: u64, len: u64, zero: bool) {
        let tag = if zero {
            0
        } else {
            self.next_tag += 1;
            self.next_tag
        };
        let change = self.edit(disk, |c| c.write(offset, len, tag));
        self.step(
            &format!(
                "{} {disk} {offset}+{len}",
                if zero { "zero" } else { "write" }
            ),
            |_| {
                if zero {
                    d.write_zeroes(offset, len)
                } else {
                    d.write_at(offset, &data_of(tag, offset, len))
                }
            },
            change,
            vec![],
        );
    }

    pub fn flush(&mut self, d: &LocalDisk, disk: &str) {
        let change = self.edit(disk, Content::settle);
        self.step(&format!("flush {disk}"), |_| d.flush(), change, vec![]);
    }

    pub fn close(&mut self, d: LocalDisk, disk: &str) {
        let change = self.edit(disk, Content::settle);
        self.step(&format!("close {disk}"), |_| d.close(), change, vec![]);
    }
}

// ---------------------------------------------------------------------
// Checking a crash state.

/// How the checks open crash states (repairs included).
pub fn opts() -> OpenOptions {
    OpenOptions {
        inflate_threads: 1,
        storage: Arc::new(NoSync),
        ..OpenOptions::default()
    }
}

/// `check`, then `repair` of each link with findings and `check` again.
fn check_and_repair(path: &Path) -> Result<(), String> {
    let report = check_disk(path, &opts()).map_err(|e| format!("check: {e}"))?;
    if report.is_consistent() {
        return Ok(());
    }
    let bad: Vec<PathBuf> = report.findings.iter().map(|f| f.file.clone()).collect();
    // Repair each link of the chain a finding names (the user runs
    // `check --repair` on it), top first.
    let links: Vec<PathBuf> = match LocalDisk::open(path, &opts()) {
        Ok(d) => d
            .links()
            .iter()
            .filter(|l| {
                l.path() == path
                    || bad.iter().any(|b| {
                        b == l.path() || l.extent_files().iter().flatten().any(|f| f.path() == b)
                    })
            })
            .map(|l| l.path().to_path_buf())
            .collect(),
        Err(_) => vec![path.to_path_buf()],
    };
    for l in &links {
        repair(l, &opts())
            .map_err(|e| format!("repair {}: {e} (findings {report:?})", l.display()))?;
    }
    let again = check_disk(path, &opts()).map_err(|e| format!("check after repair: {e}"))?;
    if !again.is_consistent() {
        return Err(format!(
            "not clean after repair: {:?} (before: {:?})",
            again.findings, report.findings
        ));
    }
    Ok(())
}

/// Sector runs `[start, end)` to read: the modelled sectors and every
/// allocated range.
fn runs_to_read(d: &LocalDisk, content: &Content) -> Result<Vec<(u64, u64)>, String> {
    let mut sectors: Vec<(u64, u64)> = content.sectors.keys().map(|&s| (s, s + 1)).collect();
    for e in d.map().map_err(|e| format!("map: {e}"))? {
        if e.kind == AllocKind::Data {
            sectors.push((e.start / SECTOR, (e.start + e.length).div_ceil(SECTOR)));
        }
    }
    sectors.sort_unstable();
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for (s, e) in sectors {
        match runs.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => runs.push((s, e)),
        }
    }
    Ok(runs)
}

fn check_disk_expect(path: &Path, expect: &Expect) -> Result<(), String> {
    let (capacity, content) = match expect {
        Expect::Any => return Ok(()),
        Expect::Absent => {
            return match std::fs::symlink_metadata(path) {
                Err(_) => Ok(()),
                Ok(_) => Err("exists, but should not".into()),
            }
        }
        Expect::Disk { capacity, content } => (*capacity, content),
    };
    check_and_repair(path)?;
    let d = LocalDisk::open(path, &opts()).map_err(|e| format!("open: {e}"))?;
    if d.capacity() != capacity {
        return Err(format!("capacity {} instead of {capacity}", d.capacity()));
    }
    let mut buf = vec![0u8; 2048 * SECTOR as usize];
    let mut bodies = BTreeMap::new();
    for (start, end) in runs_to_read(&d, content)? {
        let mut s = start;
        while s < end {
            let n = (end - s).min(2048);
            let buf = &mut buf[..(n * SECTOR) as usize];
            d.read_at(s * SECTOR, buf)
                .map_err(|e| format!("read at {}: {e}", s * SECTOR))?;
            for (k, bytes) in buf.chunks_exact(SECTOR as usize).enumerate() {
                let sector = s + k as u64;
                let allowed = content.allowed(sector);
                match tag_in(bytes, sector, &mut bodies) {
                    Some(t) if allowed.contains(&t) => {}
                    found => {
                        return Err(format!(
                            "sector {sector} (byte {}) holds {} but may hold only {:?} (0: zeros)",
                            sector * SECTOR,
                            found.map_or("bytes no write left there".into(), |t| format!(
                                "write {t}"
                            )),
                            allowed
                        ))
                    }
                }
            }
            s += n;
        }
    }
    Ok(())
}

fn check_world(dir: &Path, world: &World) -> Result<(), String> {
    for (name, expect) in world {
        check_disk_expect(&dir.join(name), expect).map_err(|e| format!("{name}: {e}"))?;
    }
    Ok(())
}

/// The step a crash at log `position` interrupts, or the world after
/// the last step.
fn worlds_at<'a>(steps: &'a [Step], position: usize, last: &'a World) -> (&'a str, Vec<&'a World>) {
    match steps
        .iter()
        .find(|s| s.start <= position && position < s.end)
    {
        Some(s) => (&s.name, s.during.iter().collect()),
        None => {
            // Between steps: the world after the latest one that ended.
            match steps.iter().rev().find(|s| s.end <= position) {
                Some(s) => (&s.name, vec![&s.during[0]]),
                None => ("(start)", vec![last]),
            }
        }
    }
}

/// What to do to a crash state before checking it, and how that
/// changes the world expected.
pub type AfterCrash = dyn Fn(&Path, &mut World) -> Result<(), String>;

/// Checks one crash state (after `then`, if given); `Err` describes the
/// failure.
pub fn check_state(
    scratch: &Path,
    state: &CrashState,
    steps: &[Step],
    start_world: &World,
    rec: &Recording,
    then: Option<&AfterCrash>,
) -> Result<(), String> {
    let (step, worlds) = worlds_at(steps, state.position(), start_world);
    let mut errors = Vec::new();
    for (i, w) in worlds.iter().enumerate() {
        if i > 0 {
            // Repairs may have changed the files: start from the state.
            state.write_to(scratch).map_err(|e| e.to_string())?;
        }
        let mut w = (*w).clone();
        let r = match then {
            Some(f) => f(scratch, &mut w),
            None => Ok(()),
        };
        match r.and_then(|()| check_world(scratch, &w)) {
            Ok(()) => return Ok(()),
            Err(e) => errors.push(e),
        }
    }
    let mut msg = format!(
        "{}\nduring step `{step}`; no acceptable world matches:\n",
        state.describe()
    );
    for (w, e) in worlds.iter().zip(&errors) {
        let _ = writeln!(
            msg,
            "  world {{{}}}: {e}",
            w.iter()
                .map(|(k, v)| format!(
                    "{k}: {}",
                    match v {
                        Expect::Absent => "absent".to_string(),
                        Expect::Any => "any".to_string(),
                        Expect::Disk { capacity, .. } => format!("disk of {capacity}"),
                    }
                ))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let p = state.position();
    let _ = write!(
        msg,
        "log around the crash:\n{}",
        rec.describe(p.saturating_sub(12)..p + 2)
    );
    Err(msg)
}

/// Replays `run` with `total` crash states spread over its crash points;
/// returns how many were checked. Panics with the first failures.
pub fn check_all(
    run: &Run,
    total: usize,
    seed: u64,
    start_world: &World,
    then: Option<&AfterCrash>,
) -> usize {
    let rec = run.rec.recording();
    let points = rec.crash_points();
    let per_point = total.div_ceil(points).max(2);
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("state");
    let mut checked = 0;
    let mut failures = Vec::new();
    for state in rec.replay(per_point, seed) {
        state.write_to(&dir).unwrap();
        checked += 1;
        if let Err(e) = check_state(&dir, &state, &run.steps, start_world, &rec, then) {
            failures.push(e);
            if failures.len() >= 3 {
                break;
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} crash state(s) failed (of {checked} checked):\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    checked
}

// ---------------------------------------------------------------------
// The workloads.

/// Sparse writes across new grains and grain tables of a monolithicSparse
/// disk (80 MiB: three tables), a snapshot written through copy-on-write
/// and committed, grow, compact, rename, and a streamOptimized copy.
fn sparse_workload(r: &mut Run) {
    r.create("base.vmdk", DiskType::MonolithicSparse, 80 * MIB);
    let d = r.open("base.vmdk");
    r.write(&d, "base.vmdk", 0, 100 * KIB, false);
    r.write(&d, "base.vmdk", 32 * MIB - 24 * KIB, 64 * KIB, false);
    r.write(&d, "base.vmdk", 70 * MIB + 5 * SECTOR, 3 * KIB, false);
    r.flush(&d, "base.vmdk");
    r.write(&d, "base.vmdk", 50 * KIB, 100 * KIB, false);
    r.write(&d, "base.vmdk", 0, 64 * KIB, true);
    r.write(&d, "base.vmdk", 10 * MIB, 256 * KIB, false);
    r.close(d, "base.vmdk");

    // A snapshot, written partly over the parent's data.
    let (base, snap) = (r.path("base.vmdk"), r.path("snap.vmdk"));
    let content = r.content("base.vmdk");
    r.step(
        "snapshot base.vmdk -> snap.vmdk",
        |r| create_child_in(&r.storage, &base, &snap),
        |w| {
            w.insert(
                "snap.vmdk".into(),
                Expect::Disk {
                    capacity: 80 * MIB,
                    content,
                },
            );
        },
        vec![],
    );
    let d = r.open("snap.vmdk");
    r.write(&d, "snap.vmdk", 70 * KIB, 8 * KIB, false);
    r.write(&d, "snap.vmdk", 3 * MIB, 128 * KIB, false);
    r.write(&d, "snap.vmdk", 10 * MIB + 64 * KIB, 64 * KIB, false);
    r.flush(&d, "snap.vmdk");
    r.write(&d, "snap.vmdk", 32 * MIB - 4 * KIB, 8 * KIB, false);
    r.write(&d, "snap.vmdk", 10 * MIB, 64 * KIB, true);
    r.write(&d, "snap.vmdk", 20 * MIB + 3 * SECTOR, 2 * KIB, false);
    r.close(d, "snap.vmdk");

    // Commit: the child reads the same throughout; once the parent holds
    // it all, the child goes.
    commit(r, "snap.vmdk", "base.vmdk");
    r.world.remove("snap.vmdk");

    // Grow (a fourth grain table), write the new part.
    let content = r.content("base.vmdk");
    r.step(
        "grow base.vmdk to 112 MiB",
        |r| grow_in(&r.storage, &base, 112 * MIB),
        |w| {
            w.insert(
                "base.vmdk".into(),
                Expect::Disk {
                    capacity: 112 * MIB,
                    content,
                },
            );
        },
        vec![],
    );
    let d = r.open("base.vmdk");
    r.write(&d, "base.vmdk", 100 * MIB, 96 * KIB, false);
    r.write(&d, "base.vmdk", 33 * MIB, 64 * KIB, true);
    r.close(d, "base.vmdk");

    r.step(
        "compact base.vmdk",
        |r| compact_in(&r.storage, &base),
        |_| {},
        vec![],
    );
    write_close(r, "base.vmdk", 40 * MIB, 64 * KIB);

    rename(r, "base.vmdk", "main.vmdk");
    r.world.remove("base.vmdk");

    let (main, stream) = (r.path("main.vmdk"), r.path("stream.vmdk"));
    let copy = r.world["main.vmdk"].clone();
    r.step(
        "convert main.vmdk -> stream.vmdk (streamOptimized)",
        |r| {
            let src = LocalDisk::open(&main, &opts())?;
            convert_in(
                &r.storage,
                &Source::Disk(&src),
                &stream,
                &Target::Disk(CreateOptions::new(DiskType::StreamOptimized, 0)),
                &mut |_, _| {},
            )
        },
        |w| {
            w.insert("stream.vmdk".into(), copy);
        },
        vec![],
    );
}

/// A split disk (descriptor file + sparse extents): written (the
/// descriptor is replaced for the new CID), grown by an extent, renamed
/// file by file.
fn split_workload(r: &mut Run) {
    r.create("split.vmdk", DiskType::TwoGbMaxExtentSparse, 8 * MIB);
    let d = r.open("split.vmdk");
    r.write(&d, "split.vmdk", MIB, 80 * KIB, false);
    r.close(d, "split.vmdk");
    let split = r.path("split.vmdk");
    let content = r.content("split.vmdk");
    r.step(
        "grow split.vmdk to 12 MiB (a second extent)",
        |r| grow_in(&r.storage, &split, 12 * MIB),
        |w| {
            w.insert(
                "split.vmdk".into(),
                Expect::Disk {
                    capacity: 12 * MIB,
                    content,
                },
            );
        },
        vec![],
    );
    let d = r.open("split.vmdk");
    r.write(&d, "split.vmdk", 9 * MIB, 64 * KIB, false);
    r.close(d, "split.vmdk");
    rename(r, "split.vmdk", "moved.vmdk");
}

/// Runs `workload` recorded, then checks `total` crash states of it.
fn record_and_check(name: &str, total: usize, seed: u64, workload: fn(&mut Run)) -> usize {
    record_and_check_then(name, total, seed, workload, None)
}

/// [`record_and_check`], doing `then` to each crash state first.
fn record_and_check_then(
    name: &str,
    total: usize,
    seed: u64,
    workload: fn(&mut Run),
    then: Option<&AfterCrash>,
) -> usize {
    let t = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut run = Run::new(dir.path());
    workload(&mut run);
    let rec = run.rec.recording();
    let checked = check_all(&run, total, seed, &World::new(), then);
    // Straight to stderr: shown even when the harness captures output.
    let _ = writeln!(
        std::io::stderr(),
        "power loss, {name}: {checked} crash states checked ({} changes, {} crash points, {} steps) in {:.1?}",
        rec.len(),
        rec.crash_points(),
        run.steps.len(),
        t.elapsed()
    );
    checked
}

/// A new disk of each kind exists whole once `create` returns, and a
/// crash before then leaves no disk at all; a deleted one stays deleted.
fn create_workload(r: &mut Run) {
    r.create("a.vmdk", DiskType::MonolithicSparse, 4 * MIB);
    r.create("s.vmdk", DiskType::StreamOptimized, 4 * MIB);
    r.create("t.vmdk", DiskType::TwoGbMaxExtentSparse, 4 * MIB);
    r.create("f.vmdk", DiskType::MonolithicFlat, MIB);
    for disk in ["a.vmdk", "t.vmdk", "f.vmdk"] {
        let d = r.open(disk);
        r.write(&d, disk, 64 * KIB, 8 * KIB, false);
        r.close(d, disk);
    }
    // Deleted: gone for good once delete returns.
    let f = r.path("f.vmdk");
    r.step(
        "delete f.vmdk",
        |r| delete_in(&r.storage, &f),
        |w| {
            w.insert("f.vmdk".into(), Expect::Absent);
        },
        vec![World::from([("f.vmdk".into(), Expect::Any)])],
    );
}

/// Partial and whole grains written into a snapshot: until a flush, a
/// crash may lose them, but never shows zeros where the parent has data.
fn copy_on_write_workload(r: &mut Run) {
    r.create("p.vmdk", DiskType::MonolithicSparse, 4 * MIB);
    let d = r.open("p.vmdk");
    r.write(&d, "p.vmdk", 0, 640 * KIB, false);
    r.close(d, "p.vmdk");
    let (p, c) = (r.path("p.vmdk"), r.path("c.vmdk"));
    let content = r.content("p.vmdk");
    r.step(
        "snapshot p.vmdk -> c.vmdk",
        |r| create_child_in(&r.storage, &p, &c),
        |w| {
            w.insert(
                "c.vmdk".into(),
                Expect::Disk {
                    capacity: 4 * MIB,
                    content,
                },
            );
        },
        vec![],
    );
    let d = r.open("c.vmdk");
    r.write(&d, "c.vmdk", 70 * KIB, 8 * KIB, false);
    r.write(&d, "c.vmdk", 256 * KIB, 128 * KIB, false);
    r.write(&d, "c.vmdk", 600 * KIB, 4 * KIB, true);
    r.flush(&d, "c.vmdk");
    r.close(d, "c.vmdk");
}

/// A snapshot committed into its parent: the data reads the same through
/// the child until the parent holds it all, then through the parent.
fn commit_workload(r: &mut Run) {
    copy_on_write_workload(r);
    commit(r, "c.vmdk", "p.vmdk");
}

/// Commits `child` into `parent`, with the worlds a crash may leave.
fn commit(r: &mut Run, child: &str, parent: &str) {
    let merged = r.world[child].clone();
    let mid_child = World::from([(parent.into(), Expect::Any), (child.into(), merged.clone())]);
    let mid_parent = World::from([(parent.into(), merged.clone()), (child.into(), Expect::Any)]);
    let c = r.path(child);
    r.step(
        &format!("commit {child}"),
        |r| commit_in(&r.storage, &c, &mut |_, _| {}),
        |w| {
            w.insert(parent.into(), merged);
            w.insert(child.into(), Expect::Absent);
        },
        vec![mid_child, mid_parent],
    );
}

/// Renames `from` to `to`, with the worlds a crash may leave: the disk
/// whole under one of its names.
fn rename(r: &mut Run, from: &str, to: &str) {
    let disk = r.world[from].clone();
    let mids = vec![
        World::from([(from.into(), disk.clone()), (to.into(), Expect::Any)]),
        World::from([(from.into(), Expect::Any), (to.into(), disk.clone())]),
    ];
    let (f, t) = (r.path(from), r.path(to));
    r.world.entry(to.into()).or_insert(Expect::Absent);
    r.step(
        &format!("rename {from} -> {to}"),
        |r| rename_in(&r.storage, &f, &t),
        |w| {
            w.insert(from.into(), Expect::Absent);
            w.insert(to.into(), disk);
        },
        mids,
    );
}

/// Writes one run of fresh data to `disk` and closes it.
fn write_close(r: &mut Run, disk: &str, offset: u64, len: u64) {
    let d = r.open(disk);
    r.write(&d, disk, offset, len, false);
    r.close(d, disk);
}

/// A monolithic disk and a split one renamed, then written under their
/// new names.
fn rename_workload(r: &mut Run) {
    r.create("a.vmdk", DiskType::MonolithicSparse, 4 * MIB);
    write_close(r, "a.vmdk", 0, 64 * KIB);
    rename(r, "a.vmdk", "b.vmdk");
    write_close(r, "b.vmdk", MIB, 64 * KIB);
    r.create("t.vmdk", DiskType::TwoGbMaxExtentSparse, 4 * MIB);
    write_close(r, "t.vmdk", 0, 64 * KIB);
    rename(r, "t.vmdk", "u.vmdk");
    write_close(r, "u.vmdk", MIB, 64 * KIB);
}

#[test]
fn power_loss_rename() {
    record_and_check("rename", states_wanted(1), 0x4e4a, rename_workload);
}

/// A compacted disk written afterwards: the compacted file must be the
/// disk for good once compact returns.
fn compact_workload(r: &mut Run) {
    r.create("a.vmdk", DiskType::MonolithicSparse, 4 * MIB);
    let d = r.open("a.vmdk");
    r.write(&d, "a.vmdk", 0, 192 * KIB, false);
    r.write(&d, "a.vmdk", 64 * KIB, 64 * KIB, true);
    r.close(d, "a.vmdk");
    let a = r.path("a.vmdk");
    r.step(
        "compact a.vmdk",
        |r| compact_in(&r.storage, &a),
        |_| {},
        vec![],
    );
    write_close(r, "a.vmdk", MIB, 64 * KIB);
}

#[test]
fn power_loss_compact() {
    record_and_check("compact", states_wanted(1), 0xc0a7, compact_workload);
}

/// Grains allocated but not flushed when the power goes.
fn unflushed_workload(r: &mut Run) {
    r.create("a.vmdk", DiskType::MonolithicSparse, 4 * MIB);
    let d = r.open("a.vmdk");
    r.write(&d, "a.vmdk", 0, 64 * KIB, false);
    r.flush(&d, "a.vmdk");
    r.write(&d, "a.vmdk", MIB, 128 * KIB, false);
    r.write(&d, "a.vmdk", 2 * MIB, 64 * KIB, false);
    r.flush(&d, "a.vmdk");
    r.close(d, "a.vmdk");
}

/// After a crash, the disk opened for writing without a repair first: a
/// new grain must not land where a table entry of a grain lost with the
/// power already points.
#[test]
fn power_loss_then_write_without_repair() {
    const TAG: u32 = 0xfff0;
    let write_new: &AfterCrash = &|dir, world| {
        let path = dir.join("a.vmdk");
        if !path.exists() {
            return Ok(());
        }
        let d = LocalDisk::open(
            &path,
            &OpenOptions {
                writable: true,
                ..opts()
            },
        )
        .map_err(|e| format!("open for writing without repair: {e}"))?;
        d.write_at(3 * MIB, &data_of(TAG, 3 * MIB, 64 * KIB))
            .and_then(|()| d.close())
            .map_err(|e| format!("write without repair: {e}"))?;
        if let Some(Expect::Disk { content, .. }) = world.get_mut("a.vmdk") {
            content.put(3 * MIB, 64 * KIB, TAG);
        }
        Ok(())
    };
    record_and_check_then(
        "write without repair",
        states_wanted(1),
        0x4e0,
        unflushed_workload,
        Some(write_new),
    );
}

#[test]
fn power_loss_commit() {
    record_and_check("commit", states_wanted(1), 0xc033, commit_workload);
}

#[test]
fn power_loss_copy_on_write() {
    record_and_check(
        "copy-on-write",
        states_wanted(1),
        0xc0de,
        copy_on_write_workload,
    );
}

#[test]
fn power_loss_create() {
    record_and_check("create", states_wanted(1), 0xc4ea7e, create_workload);
}

#[test]
fn power_loss_sparse_snapshot_grow_compact_rename_stream() {
    let n = record_and_check("sparse workload", states_wanted(2), 0x5eed, sparse_workload);
    assert!(n > 0);
}

#[test]
fn power_loss_split_disk() {
    let n = record_and_check("split disk", states_wanted(1), 0x5911, split_workload);
    assert!(n > 0);
}
