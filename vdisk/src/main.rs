//! `vdisk`: the kit's command-line tool. Local VMDK files (info, cat,
//! map, check and repair, create, convert, write, snapshot, commit,
//! metadata, grow, compact, rename, delete), vSphere VMs and their disks
//! over every transport (`vm`, `cat`/`write --transport`), backup,
//! restore and verify, and the vSphere simulator (`sim`, `demo`; the
//! default `sim` feature).

#![forbid(unsafe_code)]

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::process::ExitCode;

use clap::Parser;
use serde_json::{json, Value};
use vmdk_file::local::{LocalDisk, OpenOptions};

mod args;
mod check;
#[cfg(feature = "sim")]
mod demo;
mod guest;
mod remote;
mod repo;
mod serve;
#[cfg(feature = "sim")]
mod sim;
mod source;

use args::{disk_type, AnyDisk, Cli, Command, MetaAction};

/// A progress reporter: a bar on a terminal, nothing otherwise.
fn progress_bar(enabled: bool) -> impl FnMut(u64, u64) {
    use std::io::IsTerminal;
    let bar = (enabled || io::stderr().is_terminal()).then(|| {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    move |done, total| {
        if let Some(b) = &bar {
            b.set_length(total);
            b.set_position(done);
            if done >= total {
                b.finish_and_clear();
            }
        }
    }
}

/// An error for the one-line report: the error and its sources.
fn report(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
        src = cause.source();
    }
    s
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 1 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vdisk: error: {}", report(e.as_ref()));
            ExitCode::from(1)
        }
    }
}

type AnyError = Box<dyn std::error::Error + Send + Sync>;

fn run(cli: Cli) -> Result<ExitCode, AnyError> {
    match cli.command {
        Command::Info { disk, json } => {
            let d = disk.open()?;
            let v = info_json(&d);
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_info(&v);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Cat { disk, output } => {
            let d = disk.open_any(false)?;
            match output {
                Some(p) => {
                    let f = File::create(&p).map_err(|e| format!("{}: {e}", p.display()))?;
                    cat(&d, f)?
                }
                None => cat(&d, io::stdout().lock())?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Map { disk, json } => {
            let d = disk.open()?;
            let map = d.map()?;
            let mut out = BufWriter::new(io::stdout().lock());
            if json {
                let v: Vec<Value> = map
                    .iter()
                    .map(|e| json!({"start": e.start, "length": e.length, "kind": e.kind.as_str()}))
                    .collect();
                serde_json::to_writer_pretty(&mut out, &v)?;
                writeln!(out)?;
            } else {
                writeln!(out, "{:>16} {:>16}  kind", "start", "length")?;
                for e in &map {
                    writeln!(out, "{:>16} {:>16}  {}", e.start, e.length, e.kind.as_str())?;
                }
            }
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { disk, json, repair } => {
            check::run(&disk.disk, &disk.options(), json, repair)
        }
        Command::Create {
            disk_type: t,
            disk,
            size,
            create,
        } => {
            let o = create.options(disk_type(&t)?, size)?;
            vmdk_file::create::create(&disk, &o)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Convert {
            disk_type: t,
            progress,
            src,
            dst,
            create,
            allow_outside_paths,
        } => {
            let target = if t.eq_ignore_ascii_case("raw") {
                vmdk_file::convert::Target::Raw
            } else {
                vmdk_file::convert::Target::Disk(create.options(disk_type(&t)?, 0)?)
            };
            let opts = OpenOptions {
                allow_outside_paths,
                ..OpenOptions::default()
            };
            let disk = match LocalDisk::open(&src, &opts) {
                Ok(d) => Some(d),
                Err(vmdk_file::Error::NotVmdk(_)) => None,
                Err(e) => return Err(e.into()),
            };
            let source = match &disk {
                Some(d) => vmdk_file::convert::Source::Disk(d),
                None => vmdk_file::convert::Source::Raw(&src),
            };
            let mut bar = progress_bar(progress);
            vmdk_file::convert::convert(&source, &dst, &target, &mut bar)?;
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(feature = "sim")]
        Command::Sim { command } => sim::sim(command),
        #[cfg(feature = "sim")]
        Command::Demo => demo::run(),
        Command::Backup {
            conn,
            vm,
            file,
            disk_key,
            to,
            transport,
            full: _,
            incremental,
            differential,
            proxy,
            lease_renew,
            secrets,
        } => {
            let kind = if incremental {
                cbt::BackupKind::Incremental
            } else if differential {
                cbt::BackupKind::Differential
            } else {
                cbt::BackupKind::Full
            };
            if repo::is_format1(&to) {
                return Err(format!(
                    "{to} is a format-1 repository: convert it with `vdisk repo migrate {to} NEW` and back up into NEW"
                )
                .into());
            }
            let r = repo::open(&to, &secrets)?;
            let mut opts = disklib::backup::v2::BackupOptions::default();
            if let Some(p) = proxy {
                opts.writer.proxy = p;
            }
            if let Some(r) = lease_renew {
                if !(0.01..=3600.0).contains(&r) {
                    return Err("--lease-renew must be within 0.01..=3600 seconds".into());
                }
                opts.writer.renew_every = std::time::Duration::from_secs_f64(r);
            }
            let mut bar = progress_bar(false);
            let s = match (vm, file) {
                (Some(vm), None) => {
                    let params = conn.params(&vm)?;
                    let lib = conn.library()?;
                    disklib::backup::v2::backup(
                        &lib,
                        &params,
                        &r,
                        kind,
                        transport.as_deref(),
                        &opts,
                        &mut bar,
                    )?
                }
                (None, Some(file)) => {
                    if kind != cbt::BackupKind::Full {
                        return Err("a local disk has no changed block tracking: back it up in full (only new chunks are stored)".into());
                    }
                    let abs = std::fs::canonicalize(&file)
                        .map_err(|e| format!("{}: {e}", file.display()))?;
                    let identity = repo_format::VmIdentity {
                        server: format!("file:{}", repo_store::writer::hostname()),
                        instance_uuid: abs.display().to_string(),
                        moref: String::new(),
                        name: file
                            .file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_default(),
                    };
                    disklib::backup::v2::backup_local(
                        &r, &abs, &identity, disk_key, &opts, &mut bar,
                    )?
                }
                _ => return Err("give --vm moref=vm-N or --file DISK".into()),
            };
            for w in &s.warnings {
                eprintln!("vdisk: warning: {w}");
            }
            println!(
                "backup {}: read {} bytes, stored {}, skipped {}, {:.0} MB/s in {:.2} s ({})",
                s.point.as_deref().unwrap_or_default(),
                s.bytes_read,
                s.bytes_stored,
                s.bytes_skipped,
                s.bytes_read as f64 / 1e6 / s.elapsed.as_secs_f64().max(1e-6),
                s.elapsed.as_secs_f64(),
                s.transports.join(", ")
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Restore {
            from,
            backup,
            to,
            force,
            vm,
            disk,
            transport,
            conn,
            secrets,
        } => {
            let lib = conn.library()?;
            let target = match (to, vm) {
                (Some(p), None) if force => disklib::backup::RestoreTarget::LocalReplace(p),
                (Some(p), None) => disklib::backup::RestoreTarget::Local(p),
                (None, Some(vm)) => disklib::backup::RestoreTarget::Remote {
                    params: conn.params(&vm)?,
                    key: disk.ok_or("--vm needs --disk KEY")?,
                    transports: transport,
                },
                _ => return Err("give --to LOCAL_PATH or --vm moref=vm-N --disk KEY".into()),
            };
            let mut bar = progress_bar(false);
            if repo::is_format1(&from) {
                let id: u64 = backup.parse().map_err(|_| {
                    format!("{from} is a format-1 repository: backups are numbered")
                })?;
                let n = disklib::backup::restore(
                    &lib,
                    std::path::Path::new(&from),
                    id,
                    &target,
                    disk,
                    &mut bar,
                )?;
                println!("restored backup {id}: {n} bytes written");
            } else {
                let r = repo::open(&from, &secrets)?;
                let (id, n) =
                    disklib::backup::v2::restore(&lib, &r, &backup, &target, disk, &mut bar)?;
                println!("restored backup {id}: {n} bytes written");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify {
            from,
            backup,
            sample,
            secrets,
        } => {
            if repo::is_format1(&from) {
                let id = backup.map(|b| b.parse::<u64>()).transpose().map_err(|_| {
                    format!("{from} is a format-1 repository: backups are numbered")
                })?;
                let (checked, bad) = disklib::backup::verify(std::path::Path::new(&from), id)?;
                for b in &bad {
                    println!(
                        "backup {} disk {}: block {}+{} does not match its CRC",
                        b.backup, b.key, b.offset, b.len
                    );
                }
                println!("{checked} blocks checked, {} bad", bad.len());
                return Ok(if bad.is_empty() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(2)
                });
            }
            let r = repo::open(&from, &secrets)?;
            let v = disklib::backup::v2::verify(&r, backup.as_deref(), sample)?;
            for (name, e) in &v.bad_indexes {
                println!("index {name}: {e}");
            }
            for b in &v.bad_chunks {
                let points: Vec<String> = b
                    .affected
                    .iter()
                    .map(|(p, k)| format!("{p} disk {k}"))
                    .collect();
                println!("chunk {}: {}; affects {}", b.id, b.error, points.join(", "));
            }
            println!(
                "{} points checked, {} of {} chunks checked ({} bytes), {} bad chunks, {} bad indexes",
                v.indexes,
                v.chunks_checked,
                v.chunks_referenced,
                v.bytes_checked,
                v.bad_chunks.len(),
                v.bad_indexes.len()
            );
            Ok(if v.is_clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            })
        }
        Command::Repo { command } => repo::repo(command),
        Command::Vm { command } => remote::vm(command),
        Command::Serve(a) => serve::serve(a),
        Command::Volumes(a) => guest::volumes(a),
        Command::Ls { files, long, json } => guest::ls(files, long, json),
        Command::Get {
            files,
            output,
            sync,
        } => guest::get(files, output, sync),
        Command::Snapshot { disk, child } => {
            vmdk_file::maintain::create_child(&disk, &child)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Commit { child, progress } => {
            let mut bar = progress_bar(progress);
            let parent = vmdk_file::maintain::commit(&child, &mut bar)?;
            eprintln!("committed into {}", parent.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Meta { action } => meta(action),
        Command::Grow { disk, size } => {
            vmdk_file::maintain::grow(&disk, size)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Compact { disk } => {
            let saved = vmdk_file::maintain::compact(&disk)?;
            eprintln!("{}: {saved} bytes freed", disk.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Rename { disk, new } => {
            vmdk_file::create::rename(&disk, &new)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Delete { disk } => {
            vmdk_file::create::delete(&disk)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Write {
            disk,
            offset,
            pattern,
            length,
            from,
            zero,
        } => {
            let d = disk.open_any(true)?;
            let fits = |len: u64| {
                if offset.checked_add(len).is_none_or(|e| e > d.capacity()) {
                    return Err(format!(
                        "range {offset}+{len} is outside the disk's {} bytes",
                        d.capacity()
                    ));
                }
                Ok(())
            };
            if zero {
                let len = length.ok_or("--zero needs --length")?;
                fits(len)?;
                d.write_zeroes(offset, len)?;
            } else if let Some(byte) = pattern {
                let len = length.ok_or("--pattern needs --length")?;
                fits(len)?;
                let chunk = vec![byte; len.min(8 << 20) as usize];
                let mut done = 0u64;
                while done < len {
                    let n = (len - done).min(chunk.len() as u64) as usize;
                    d.write_at(offset + done, &chunk[..n])?;
                    done += n as u64;
                }
            } else if let Some(f) = from {
                let data = std::fs::read(&f).map_err(|e| format!("{}: {e}", f.display()))?;
                d.write_at(offset, &data)?;
            } else {
                return Err(
                    "write needs --pattern BYTE --length L, --zero --length L, or --from FILE"
                        .into(),
                );
            }
            d.close()?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Streams the whole disk to `out`. Two reader threads take alternate
/// chunks, each into buffers of its own (which stay in its core's cache),
/// so reading overlaps the copy out and uses both cores.
fn cat(d: &AnyDisk, mut out: impl Write) -> Result<(), AnyError> {
    use std::sync::mpsc;
    const READERS: u64 = 2;
    let cap = d.capacity();
    let chunk = d.preferred_read_size().min(cap as usize).max(1) as u64;
    let chunks = cap.div_ceil(chunk);
    std::thread::scope(|scope| -> Result<(), AnyError> {
        let mut filled = Vec::new();
        let mut recycle = Vec::new();
        for r in 0..READERS {
            let (tx, rx) = mpsc::sync_channel::<Result<Vec<u8>, String>>(2);
            let (back_tx, back_rx) = mpsc::channel::<Vec<u8>>();
            for _ in 0..2 {
                let _ = back_tx.send(vec![0u8; chunk as usize]);
            }
            scope.spawn(move || {
                let mut i = r;
                while i < chunks {
                    let Ok(mut buf) = back_rx.recv() else { return };
                    let off = i * chunk;
                    let n = (cap - off).min(chunk) as usize;
                    buf.truncate(n);
                    let res = d
                        .read_at(off, &mut buf)
                        .map(|()| buf)
                        .map_err(|e| report(e.as_ref()));
                    let failed = res.is_err();
                    if tx.send(res).is_err() || failed {
                        return;
                    }
                    i += READERS;
                }
            });
            filled.push(rx);
            recycle.push(back_tx);
        }
        for i in 0..chunks {
            let k = (i % READERS) as usize;
            let buf = filled[k]
                .recv()
                .map_err(|_| "reader thread stopped")?
                .map_err(AnyError::from)?;
            match out.write_all(&buf) {
                Ok(()) => {}
                // A closed pipe (`vdisk cat | head`) is not an error worth a report.
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
                Err(e) => return Err(e.into()),
            }
            let mut buf = buf;
            buf.resize(chunk as usize, 0);
            let _ = recycle[k].send(buf);
        }
        drop(recycle);
        match out.flush() {
            Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(e.into()),
            _ => Ok(()),
        }
    })
}

fn meta(action: MetaAction) -> Result<ExitCode, AnyError> {
    match action {
        MetaAction::List { disk, json } => {
            let d = disk.open()?;
            let desc = d.descriptor();
            if json {
                let m: serde_json::Map<String, Value> = desc
                    .ddb
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&m)?);
            } else {
                for (k, v) in &desc.ddb {
                    println!("{k} = {v}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        MetaAction::Get { disk, key } => {
            let d = disk.open()?;
            match d.descriptor().ddb_get(&key) {
                Some(v) => {
                    println!("{v}");
                    Ok(ExitCode::SUCCESS)
                }
                None => Err(format!("{}: no key `{key}`", disk.disk.display()).into()),
            }
        }
        MetaAction::Set { disk, key, value } => {
            let d = LocalDisk::open(
                &disk.disk,
                &OpenOptions {
                    writable: true,
                    ..disk.options()
                },
            )?;
            d.set_metadata(&key, &value)?;
            d.close()?;
            Ok(ExitCode::SUCCESS)
        }
        MetaAction::Rm { disk, key } => {
            let d = LocalDisk::open(
                &disk.disk,
                &OpenOptions {
                    writable: true,
                    ..disk.options()
                },
            )?;
            let existed = d.remove_metadata(&key)?;
            d.close()?;
            if existed {
                Ok(ExitCode::SUCCESS)
            } else {
                Err(format!("{}: no key `{key}`", disk.disk.display()).into())
            }
        }
    }
}

fn info_json(d: &LocalDisk) -> Value {
    let top = &d.links()[0];
    let desc = top.descriptor();
    let parent = d.links().get(1).map(|l| l.path().display().to_string());
    let chain: Vec<String> = d
        .links()
        .iter()
        .map(|l| l.path().display().to_string())
        .collect();
    let extents: Vec<Value> = desc
        .extents
        .iter()
        .zip(top.extent_files())
        .map(|(e, f)| {
            json!({
                "access": e.access.as_str(),
                "sectors": e.sectors,
                "type": e.kind.as_str(),
                "file": f.as_ref().map(|f| f.path().display().to_string()).or_else(|| e.file.clone()),
                "offset": e.offset.unwrap_or(0),
            })
        })
        .collect();
    let ddb: serde_json::Map<String, Value> = desc
        .ddb
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    json!({
        "create_type": desc.create_type.as_str(),
        "capacity": d.capacity(),
        "cid": format!("{:08x}", desc.cid),
        "parent_cid": format!("{:08x}", desc.parent_cid),
        "parent": parent,
        "parent_file_name_hint": desc.parent_file_name_hint,
        "chain": chain,
        "extents": extents,
        "adapter_type": desc.adapter_type(),
        "hw_version": desc.hw_version(),
        "geometry": desc.geometry().map(|g| json!({"cylinders": g.cylinders, "heads": g.heads, "sectors": g.sectors})),
        "ddb": ddb,
    })
}

fn print_info(v: &Value) {
    let s = |k: &str| match &v[k] {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    };
    println!("create type:   {}", s("create_type"));
    println!("capacity:      {} bytes", s("capacity"));
    println!("CID:           {}", s("cid"));
    println!("parent CID:    {}", s("parent_cid"));
    println!("parent:        {}", s("parent"));
    println!("adapter type:  {}", s("adapter_type"));
    println!("hw version:    {}", s("hw_version"));
    if let Value::Object(g) = &v["geometry"] {
        println!(
            "geometry:      {}/{}/{} (C/H/S)",
            g["cylinders"], g["heads"], g["sectors"]
        );
    }
    println!("chain:");
    for f in v["chain"].as_array().into_iter().flatten() {
        println!("  {}", f.as_str().unwrap_or_default());
    }
    println!("extents:");
    for e in v["extents"].as_array().into_iter().flatten() {
        println!(
            "  {} {} {} {} {}",
            e["access"].as_str().unwrap_or_default(),
            e["sectors"],
            e["type"].as_str().unwrap_or_default(),
            e["file"].as_str().unwrap_or("-"),
            e["offset"]
        );
    }
    println!("ddb:");
    if let Value::Object(m) = &v["ddb"] {
        for (k, val) in m {
            println!("  {k} = {}", val.as_str().unwrap_or_default());
        }
    }
}
