//! `vdisk`: inspect, read, map and check VMDK disks.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use disklib::local::{LocalDisk, OpenOptions};
use serde_json::{json, Value};

mod check;

/// The virtual disk kit's command-line tool.
#[derive(Parser, Debug)]
#[command(name = "vdisk", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Options shared by every command that opens a local disk.
#[derive(clap::Args, Debug)]
struct DiskArgs {
    /// The disk: a descriptor file or a monolithic VMDK file.
    disk: PathBuf,
    /// Follow extent and parent paths that leave the descriptor's directory.
    #[arg(long)]
    allow_outside_paths: bool,
    /// Open a snapshot chain even if a parentCID does not match its parent's CID.
    #[arg(long)]
    ignore_cid_mismatch: bool,
}

impl DiskArgs {
    fn options(&self) -> OpenOptions {
        OpenOptions {
            allow_outside_paths: self.allow_outside_paths,
            ignore_cid_mismatch: self.ignore_cid_mismatch,
            ..OpenOptions::default()
        }
    }
    fn open(&self) -> Result<LocalDisk, disklib::Error> {
        LocalDisk::open(&self.disk, &self.options())
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Describe a disk: type, capacity, CIDs, chain, extents, DDB.
    Info {
        #[command(flatten)]
        disk: DiskArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write the whole virtual disk as raw bytes.
    Cat {
        #[command(flatten)]
        disk: DiskArgs,
        /// Output file (stdout when absent).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// List what each byte range holds: data, zero or unallocated.
    Map {
        #[command(flatten)]
        disk: DiskArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check a disk's metadata; exit 0 when consistent, 2 on corruption.
    Check {
        #[command(flatten)]
        disk: DiskArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
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
            let d = disk.open()?;
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
        Command::Check { disk, json } => check::run(&disk.disk, &disk.options(), json),
    }
}

fn cat(d: &LocalDisk, mut out: impl Write) -> Result<(), AnyError> {
    let cap = d.capacity();
    let mut buf = vec![0u8; d.preferred_read_size().min(cap as usize).max(1)];
    let mut off = 0u64;
    while off < cap {
        let n = ((cap - off) as usize).min(buf.len());
        d.read_at(off, &mut buf[..n])?;
        match out.write_all(&buf[..n]) {
            Ok(()) => {}
            // A closed pipe (`vdisk cat | head`) is not an error worth a report.
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        off += n as u64;
    }
    match out.flush() {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
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
