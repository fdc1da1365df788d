//! `vdisk volumes`, `vdisk ls`, `vdisk get`: a guest's partitions,
//! filesystems and files, read through the kit's own disk reads (no
//! mount, no root), from any disk `serve` accepts.

use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use disklib::guest::guest_volumes::{self, FileKind, Metadata, PartitionKind, TableKind};
use disklib::guest::{extract_with, open_volume, ExtractOptions};
use serde_json::json;

use crate::source::SourceArgs;
use crate::AnyError;

/// `vdisk volumes` options.
#[derive(clap::Args, Debug)]
pub(crate) struct VolumesArgs {
    /// The disk (omitted with --from).
    pub(crate) disk: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) source: SourceArgs,
    /// Print JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `vdisk ls` / `vdisk get` operands and options.
#[derive(clap::Args, Debug)]
pub(crate) struct FilesArgs {
    /// `[DISK] PATH`: the disk (omitted with --from) and an absolute path
    /// inside the guest filesystem.
    #[arg(num_args = 1..=2, required = true, value_name = "[DISK] PATH")]
    pub(crate) operands: Vec<PathBuf>,
    #[command(flatten)]
    pub(crate) source: SourceArgs,
    /// The partition (as `vdisk volumes` numbers them); needed when the
    /// disk has several.
    #[arg(long)]
    pub(crate) partition: Option<u32>,
}

impl FilesArgs {
    fn split(&self) -> Result<(Option<&std::path::Path>, String), AnyError> {
        let (disk, path) = match self.operands.as_slice() {
            [path] => (None, path),
            [disk, path] => (Some(disk.as_path()), path),
            _ => return Err("give [DISK] PATH".into()),
        };
        let path = path
            .to_str()
            .ok_or("the guest path must be UTF-8")?
            .to_string();
        if !path.starts_with('/') {
            return Err(format!("the guest path must be absolute: {path}").into());
        }
        Ok((disk, path))
    }

    fn open_fs(
        &self,
    ) -> Result<
        (
            crate::source::Opened,
            Box<dyn guest_volumes::GuestFs>,
            String,
        ),
        AnyError,
    > {
        let (disk, path) = self.split()?;
        let opened = self.source.open(disk, false, None)?;
        let (_, vol) = open_volume(opened.reader(), self.partition)?;
        let fs = guest_volumes::open_fs(vol)?;
        Ok((opened, fs, path))
    }
}

fn table_name(t: &TableKind) -> String {
    match t {
        TableKind::Mbr => "mbr".into(),
        TableKind::Gpt {
            protective_mbr,
            hybrid_mbr,
            ..
        } => match (protective_mbr, hybrid_mbr) {
            (_, true) => "gpt (hybrid MBR)".into(),
            (true, false) => "gpt".into(),
            (false, false) => "gpt (no protective MBR)".into(),
        },
        TableKind::None => "none (whole-disk filesystem)".into(),
        _ => "unknown".into(),
    }
}

fn kind_name(k: &PartitionKind) -> String {
    match k {
        PartitionKind::Mbr { type_byte, name } => match name {
            Some(n) => format!("0x{type_byte:02x} {n}"),
            None => format!("0x{type_byte:02x}"),
        },
        PartitionKind::Gpt { type_guid, name } => name
            .map(str::to_string)
            .unwrap_or_else(|| type_guid.clone()),
        _ => "-".into(),
    }
}

/// `vdisk volumes`.
pub(crate) fn volumes(a: VolumesArgs) -> Result<ExitCode, AnyError> {
    let opened = a.source.open(a.disk.as_deref(), false, None)?;
    let layout = guest_volumes::scan(&*opened.reader())?;
    let mut out = BufWriter::new(io::stdout().lock());
    if a.json {
        serde_json::to_writer_pretty(&mut out, &layout)?;
        writeln!(out)?;
    } else {
        writeln!(out, "table: {}", table_name(&layout.table))?;
        writeln!(
            out,
            "{:>3} {:>14} {:>14}  {:<24} {:<8} {:<16} {:<16} uuid",
            "#", "start", "size", "type", "fs", "label", "name"
        )?;
        for v in &layout.volumes {
            let fs = v.filesystem.as_ref();
            writeln!(
                out,
                "{:>3} {:>14} {:>14}  {:<24} {:<8} {:<16} {:<16} {}",
                v.number,
                v.start,
                v.size,
                kind_name(&v.kind),
                fs.map_or("-".to_string(), |f| format!("{:?}", f.kind).to_lowercase()),
                fs.and_then(|f| f.label.clone())
                    .unwrap_or_else(|| "-".into()),
                v.name.clone().unwrap_or_else(|| "-".into()),
                fs.and_then(|f| f.uuid.clone())
                    .unwrap_or_else(|| "-".into()),
            )?;
        }
    }
    out.flush()?;
    drop(out);
    opened.close()?;
    Ok(ExitCode::SUCCESS)
}

fn kind_char(k: FileKind) -> char {
    match k {
        FileKind::File => '-',
        FileKind::Dir => 'd',
        FileKind::Symlink => 'l',
        FileKind::Other => '?',
    }
}

fn mode_string(m: &Metadata) -> String {
    let mut s = String::new();
    s.push(kind_char(m.kind));
    match m.mode {
        Some(mode) => {
            for shift in [6, 3, 0] {
                let bits = (mode >> shift) & 7;
                s.push(if bits & 4 != 0 { 'r' } else { '-' });
                s.push(if bits & 2 != 0 { 'w' } else { '-' });
                s.push(if bits & 1 != 0 { 'x' } else { '-' });
            }
        }
        None => s.push_str("?????????"),
    }
    s
}

fn meta_json(m: &Metadata) -> serde_json::Value {
    json!({
        "kind": m.kind,
        "size": m.size,
        "mode": m.mode,
        "uid": m.uid,
        "gid": m.gid,
        "mtime": m.mtime,
        "mtime_nsec": m.mtime_nsec,
    })
}

/// `vdisk ls`.
pub(crate) fn ls(a: FilesArgs, long: bool, json_out: bool) -> Result<ExitCode, AnyError> {
    let (opened, mut fs, path) = a.open_fs()?;
    let meta = fs.metadata(&path)?;
    let single = meta.kind != FileKind::Dir;
    let entries: Vec<(String, Metadata)> = if meta.kind == FileKind::Dir {
        fs.read_dir(&path)?
            .into_iter()
            .map(|e| (e.name, e.metadata))
            .collect()
    } else {
        let name = path.rsplit('/').next().unwrap_or(&path).to_string();
        vec![(name, meta)]
    };
    let base = if path.ends_with('/') {
        path.clone()
    } else {
        format!("{path}/")
    };
    let mut out = BufWriter::new(io::stdout().lock());
    if json_out {
        let mut v = Vec::new();
        for (name, m) in &entries {
            let mut j = meta_json(m);
            j["name"] = json!(name);
            if m.kind == FileKind::Symlink {
                let full = if single {
                    path.clone()
                } else {
                    format!("{base}{name}")
                };
                j["target"] = json!(String::from_utf8_lossy(&fs.read_link(&full)?));
            }
            v.push(j);
        }
        serde_json::to_writer_pretty(&mut out, &v)?;
        writeln!(out)?;
    } else {
        for (name, m) in &entries {
            if long {
                let mut line = format!(
                    "{} {:>5} {:>5} {:>12} {:>12} {}",
                    mode_string(m),
                    m.uid.map_or("-".into(), |u| u.to_string()),
                    m.gid.map_or("-".into(), |g| g.to_string()),
                    m.size,
                    m.mtime.map_or("-".into(), |t| t.to_string()),
                    name
                );
                if m.kind == FileKind::Symlink {
                    let full = if single {
                        path.clone()
                    } else {
                        format!("{base}{name}")
                    };
                    line.push_str(" -> ");
                    line.push_str(&String::from_utf8_lossy(&fs.read_link(&full)?));
                }
                writeln!(out, "{line}")?;
            } else {
                writeln!(out, "{name}")?;
            }
        }
    }
    out.flush()?;
    drop(out);
    drop(fs);
    opened.close()?;
    Ok(ExitCode::SUCCESS)
}

/// `vdisk get`.
pub(crate) fn get(a: FilesArgs, output: PathBuf, sync: bool) -> Result<ExitCode, AnyError> {
    let (opened, mut fs, path) = a.open_fs()?;
    let summary = extract_with(&mut *fs, &path, &output, &ExtractOptions::sync(sync))?;
    for (p, why) in &summary.skipped {
        eprintln!("vdisk: skipped {p}: {why}");
    }
    eprintln!(
        "vdisk: {} files ({} bytes), {} directories, {} symlinks written to {}",
        summary.files,
        summary.bytes,
        summary.dirs,
        summary.symlinks,
        output.display()
    );
    drop(fs);
    opened.close()?;
    Ok(ExitCode::SUCCESS)
}
