//! The input bytes are a whole disk: partition table scan, a probe of
//! every volume, then, for each volume and for the whole disk, open the
//! filesystem, list the root and one level below, and read the start of
//! a few files. Everything is bounded by the input's size.
//!
//! Seeds in `corpus/guest_volumes/` were made with `mkfs.fat -F 12 -C … 64`
//! + `mcopy`, `mkfs.ext2 -b 1024 -N 16 -d`, `sgdisk -a 1` and `sfdisk`.
#![no_main]
use std::sync::Arc;

use guest_volumes::{open_fs, probe, scan, FileKind, GuestFs, ReadAt, Window};

fn exercise(fs: &mut dyn GuestFs) {
    let Ok(root) = fs.read_dir("/") else { return };
    for e in root.iter().take(6) {
        let path = format!("/{}", e.name);
        let _ = fs.metadata(&path);
        match e.metadata.kind {
            FileKind::Dir => {
                if let Ok(sub) = fs.read_dir(&path) {
                    for s in sub.iter().take(4) {
                        let mut b = [0u8; 512];
                        let _ = fs.read_file_at(&format!("{path}/{}", s.name), 0, &mut b);
                    }
                }
            }
            FileKind::Symlink => {
                let _ = fs.read_link(&path);
            }
            _ => {
                let mut b = [0u8; 4096];
                let _ = fs.read_file_at(&path, 0, &mut b);
                let _ = fs.read_file_at(&path, 5000, &mut b);
            }
        }
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let disk: Arc<dyn ReadAt> = Arc::new(data.to_vec());
    if let Ok(layout) = scan(&*disk) {
        for v in layout.volumes.iter().take(8) {
            let Ok(w) = Window::new(disk.clone(), v.start, v.size) else {
                continue;
            };
            let _ = probe(&w);
            if let Ok(mut fs) = open_fs(Arc::new(w)) {
                exercise(&mut *fs);
            }
        }
    }
    if let Ok(mut fs) = open_fs(disk) {
        exercise(&mut *fs);
    }
});
