//! `OpenOptions::ordered_allocation`: a new grain's data is synced before
//! its table entry is written, even on a disk without a parent.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

use vmdk_file::create::{create, CreateOptions, DiskType};
use vmdk_file::io::{std_storage, SharedStorage, Storage};
use vmdk_file::local::{LocalDisk, OpenOptions};

/// The standard storage, logging writes and data syncs.
#[derive(Debug)]
struct Logged {
    inner: SharedStorage,
    log: Mutex<Vec<&'static str>>,
}

impl Logged {
    fn note(&self, what: &'static str) {
        self.log.lock().unwrap().push(what);
    }
}

impl Storage for Logged {
    fn create(&self, path: &Path, exclusive: bool) -> io::Result<File> {
        self.inner.create(path, exclusive)
    }
    fn write_at(&self, file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
        self.note(if buf.len() >= 65536 { "grain" } else { "meta" });
        self.inner.write_at(file, buf, offset)
    }
    fn set_len(&self, file: &File, len: u64) -> io::Result<()> {
        self.inner.set_len(file, len)
    }
    fn allocate(&self, file: &File, len: u64) -> io::Result<()> {
        self.inner.allocate(file, len)
    }
    fn sync_data(&self, file: &File) -> io::Result<()> {
        self.note("sync");
        self.inner.sync_data(file)
    }
    fn sync_all(&self, file: &File) -> io::Result<()> {
        self.note("sync");
        self.inner.sync_all(file)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to)
    }
    fn rename_noreplace(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename_noreplace(from, to)
    }
    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.hard_link(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_file(path)
    }
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        self.inner.create_dir(path)
    }
    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_dir(path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.inner.sync_dir(dir)
    }
}

/// What one whole-grain write into an empty disk does, in order.
fn first_write(ordered: bool) -> Vec<&'static str> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.vmdk");
    create(
        &path,
        &CreateOptions::new(DiskType::MonolithicSparse, 1 << 20),
    )
    .unwrap();
    let logged = Arc::new(Logged {
        inner: std_storage(),
        log: Mutex::new(Vec::new()),
    });
    let d = LocalDisk::open(
        &path,
        &OpenOptions {
            writable: true,
            storage: logged.clone(),
            ordered_allocation: ordered,
            ..OpenOptions::default()
        },
    )
    .unwrap();
    logged.log.lock().unwrap().clear();
    d.write_at(0, &[7u8; 65536]).unwrap();
    let log = logged.log.lock().unwrap().clone();
    drop(d);
    log
}

#[test]
fn ordered_allocation_syncs_the_grain_before_its_table_entry() {
    let log = first_write(true);
    let grain = log
        .iter()
        .position(|&w| w == "grain")
        .expect("the grain was written");
    let meta = log[grain..]
        .iter()
        .position(|&w| w == "meta")
        .expect("its entry was written");
    assert!(
        log[grain..grain + meta].contains(&"sync"),
        "no sync between the grain and its table entry: {log:?}"
    );
    // Without the option (no parent), the order is left to the next flush.
    let loose = first_write(false);
    let grain = loose.iter().position(|&w| w == "grain").unwrap();
    let meta = loose[grain..].iter().position(|&w| w == "meta").unwrap();
    assert!(!loose[grain..grain + meta].contains(&"sync"), "{loose:?}");
}
