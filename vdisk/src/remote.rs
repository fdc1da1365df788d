//! `vdisk vm …`: vSphere inventory commands, and the connection options
//! every remote command shares.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{json, Value};
use vim_soap::client::{Client, ClientConfig, Thumbprint};
use vim_soap::codec::{self, ConfigSpec, MoRef, PropertyRequest};
use vim_soap::Secret;

use crate::AnyError;

const TASK_TIMEOUT: Duration = Duration::from_secs(3600);

/// How to reach and log in to a vCenter / ESXi host (or the simulator).
#[derive(Args, Debug, Clone)]
pub(crate) struct Connection {
    /// `host:port` of the SOAP endpoint.
    #[arg(long, env = "VDISK_SERVER")]
    pub server: Option<String>,
    /// User name.
    #[arg(long, env = "VDISK_USER")]
    pub user: Option<String>,
    /// Password (prefer --password-file or VDISK_PASSWORD).
    #[arg(long, env = "VDISK_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// Read the password from this file (first line).
    #[arg(long)]
    pub password_file: Option<PathBuf>,
    /// The server certificate's SHA-1 or SHA-256 thumbprint (colon hex).
    #[arg(long, env = "VDISK_THUMBPRINT")]
    pub thumbprint: Option<String>,
    /// A VixDiskLib (InitEx) configuration file: timeouts, SAN allow/deny
    /// lists, where the proxy's devices are (`vixDiskLib.transport.deviceRoot`).
    #[arg(long, env = "VDISK_CONFIG")]
    pub config: Option<PathBuf>,
}

impl Connection {
    /// The library, initialised from `--config` when given.
    pub(crate) fn library(&self) -> Result<disklib::api::Library, AnyError> {
        let config = match &self.config {
            Some(p) => {
                let c = disklib::api::Config::load(p)?;
                for w in &c.warnings {
                    eprintln!("vdisk: warning: {}: {w}", p.display());
                }
                c
            }
            None => disklib::api::Config::default(),
        };
        Ok(disklib::api::Library::init(config))
    }

    /// disklib's connection parameters for a VM.
    pub(crate) fn params(&self, vm: &str) -> Result<disklib::api::ConnectParams, AnyError> {
        let server = self
            .server
            .clone()
            .ok_or("no server: give --server HOST:PORT or set VDISK_SERVER")?;
        let tp = self
            .thumbprint
            .clone()
            .ok_or("no thumbprint: give --thumbprint or set VDISK_THUMBPRINT")?;
        let user = self
            .user
            .clone()
            .ok_or("no user: give --user or set VDISK_USER")?;
        let password = match (&self.password_file, &self.password) {
            (Some(f), _) => std::fs::read_to_string(f)
                .map_err(|e| format!("{}: {e}", f.display()))?
                .lines()
                .next()
                .unwrap_or_default()
                .to_string(),
            (None, Some(p)) => p.clone(),
            (None, None) => {
                return Err("no password: give --password-file or set VDISK_PASSWORD".into())
            }
        };
        Ok(disklib::api::ConnectParams::remote(
            &server,
            &tp,
            disklib::api::Credentials::password(&user, &password),
            parse_vm(vm)?.value.as_str(),
        ))
    }

    pub(crate) fn connect(&self) -> Result<Client, AnyError> {
        let server = self
            .server
            .clone()
            .ok_or("no server: give --server HOST:PORT or set VDISK_SERVER")?;
        let tp = self.thumbprint.as_deref().ok_or("no thumbprint: give --thumbprint or set VDISK_THUMBPRINT (certificates are always verified)")?;
        let client = Client::connect(ClientConfig::new(server, Thumbprint::parse(tp)?))?;
        let user = self
            .user
            .clone()
            .ok_or("no user: give --user or set VDISK_USER")?;
        let password = match (&self.password_file, &self.password) {
            (Some(f), _) => Secret::new(
                std::fs::read_to_string(f)
                    .map_err(|e| format!("{}: {e}", f.display()))?
                    .lines()
                    .next()
                    .unwrap_or_default(),
            ),
            (None, Some(p)) => Secret::new(p.clone()),
            (None, None) => {
                return Err("no password: give --password-file or set VDISK_PASSWORD".into())
            }
        };
        client.login(&user, &password)?;
        Ok(client)
    }
}

/// `moref=vm-42` or `vm-42`.
pub(crate) fn parse_vm(s: &str) -> Result<MoRef, AnyError> {
    let v = s.strip_prefix("moref=").unwrap_or(s).trim();
    if v.is_empty() {
        return Err(format!("invalid VM `{s}`: expected moref=vm-N").into());
    }
    Ok(MoRef::new("VirtualMachine", v))
}

#[derive(Subcommand, Debug)]
pub(crate) enum VmCommand {
    /// List virtual machines.
    List {
        #[command(flatten)]
        conn: Connection,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// A VM's disks: key, file, capacity, CBT change id.
    Disks {
        #[command(flatten)]
        conn: Connection,
        /// `moref=vm-N`.
        #[arg(long)]
        vm: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Snapshots.
    Snapshot {
        #[command(subcommand)]
        action: SnapshotAction,
    },
    /// Turn changed-block tracking on or off.
    Cbt {
        #[command(flatten)]
        conn: Connection,
        /// `enable` or `disable`.
        action: String,
        /// `moref=vm-N`.
        #[arg(long)]
        vm: String,
    },
    /// Areas of a disk changed since a change id (`*`: allocated areas).
    Changes {
        #[command(flatten)]
        conn: Connection,
        /// `moref=vm-N`.
        #[arg(long)]
        vm: String,
        /// Disk device key.
        #[arg(long)]
        disk: i32,
        /// The earlier change id, or `*`.
        #[arg(long)]
        change_id: String,
        /// As of this snapshot (default: now).
        #[arg(long)]
        snapshot: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum SnapshotAction {
    /// Take a snapshot; prints its moref.
    Create {
        #[command(flatten)]
        conn: Connection,
        /// `moref=vm-N`.
        #[arg(long)]
        vm: String,
        /// Name.
        #[arg(long, default_value = "vdisk")]
        name: String,
    },
    /// List snapshots (oldest first, indented by depth).
    List {
        #[command(flatten)]
        conn: Connection,
        /// `moref=vm-N`.
        #[arg(long)]
        vm: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove (consolidate) a snapshot.
    Remove {
        #[command(flatten)]
        conn: Connection,
        /// `snapshot-N`.
        snapshot: String,
    },
}

fn wait(c: &Client, resp: &vim_soap::xml::Element) -> Result<codec::TaskInfo, AnyError> {
    let task = codec::parse_moref(resp)?.ok_or("the server returned no task")?;
    Ok(c.wait_task(&task, TASK_TIMEOUT)?)
}

fn print_json(v: &Value) -> Result<(), AnyError> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub(crate) fn vm(cmd: VmCommand) -> Result<ExitCode, AnyError> {
    match cmd {
        VmCommand::List { conn, json } => {
            let c = conn.connect()?;
            let root = c.content().root_folder.clone();
            let mut vms = Vec::new();
            let dcs = c
                .property(&root, "childEntity")?
                .map(|e| {
                    e.children
                        .iter()
                        .filter_map(MoRef::from_element)
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default();
            for dc in dcs {
                let Some(folder) = c
                    .property(&dc, "vmFolder")?
                    .as_ref()
                    .and_then(MoRef::from_element)
                else {
                    continue;
                };
                let list = c
                    .property(&folder, "childEntity")?
                    .map(|e| {
                        e.children
                            .iter()
                            .filter_map(MoRef::from_element)
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default();
                let reqs: Vec<PropertyRequest> = list
                    .iter()
                    .filter(|m| m.kind == "VirtualMachine")
                    .map(|m| PropertyRequest {
                        obj: m.clone(),
                        paths: vec![
                            "name".into(),
                            "runtime.powerState".into(),
                            "config.uuid".into(),
                        ],
                    })
                    .collect();
                if reqs.is_empty() {
                    continue;
                }
                for o in c.properties(&reqs)? {
                    let text = |p: &str| {
                        o.prop(p)
                            .map(|e| e.text.trim().to_string())
                            .unwrap_or_default()
                    };
                    vms.push(json!({"moref": o.obj.value, "name": text("name"), "power": text("runtime.powerState"), "uuid": text("config.uuid")}));
                }
            }
            if json {
                print_json(&Value::Array(vms))?;
            } else {
                for v in vms {
                    println!(
                        "{:<12} {:<12} {}",
                        v["moref"].as_str().unwrap_or_default(),
                        v["power"].as_str().unwrap_or_default(),
                        v["name"].as_str().unwrap_or_default()
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        VmCommand::Disks { conn, vm, json } => {
            let c = conn.connect()?;
            let vm = parse_vm(&vm)?;
            let val = c
                .property(&vm, "config.hardware.device")?
                .ok_or("the VM has no devices")?;
            let disks = codec::virtual_disks(&val)?;
            let v: Vec<Value> = disks.iter().map(|d| json!({"key": d.key, "file": d.file_name, "capacity": d.capacity, "change_id": d.change_id, "mode": d.disk_mode, "thin": d.thin})).collect();
            if json {
                print_json(&Value::Array(v))?;
            } else {
                for d in &disks {
                    println!(
                        "{}  {}  {} bytes  {}  change id {}",
                        d.key,
                        d.file_name,
                        d.capacity,
                        d.disk_mode,
                        d.change_id.as_deref().unwrap_or("-")
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        VmCommand::Snapshot { action } => match action {
            SnapshotAction::Create { conn, vm, name } => {
                let c = conn.connect()?;
                let resp = c.call(&codec::create_snapshot_task(
                    &parse_vm(&vm)?,
                    &name,
                    "taken by vdisk",
                    false,
                    true,
                ))?;
                let info = wait(&c, &resp)?;
                println!("{}", info.result.map(|r| r.value).unwrap_or_default());
                Ok(ExitCode::SUCCESS)
            }
            SnapshotAction::List { conn, vm, json } => {
                let c = conn.connect()?;
                let tree = match c.property(&parse_vm(&vm)?, "snapshot.rootSnapshotList")? {
                    Some(v) => codec::snapshot_tree(&v)?,
                    None => Vec::new(),
                };
                let mut flat = Vec::new();
                fn walk(
                    n: &[codec::SnapshotNode],
                    depth: usize,
                    out: &mut Vec<(usize, String, String)>,
                ) {
                    for s in n {
                        out.push((depth, s.snapshot.value.clone(), s.name.clone()));
                        walk(&s.children, depth + 1, out);
                    }
                }
                walk(&tree, 0, &mut flat);
                if json {
                    print_json(&Value::Array(
                        flat.iter()
                            .map(|(d, m, n)| json!({"moref": m, "name": n, "depth": d}))
                            .collect(),
                    ))?;
                } else {
                    for (d, m, n) in flat {
                        println!("{}{m}  {n}", "  ".repeat(d));
                    }
                }
                Ok(ExitCode::SUCCESS)
            }
            SnapshotAction::Remove { conn, snapshot } => {
                let c = conn.connect()?;
                let s = MoRef::new(
                    "VirtualMachineSnapshot",
                    snapshot.strip_prefix("moref=").unwrap_or(&snapshot),
                );
                let resp = c.call(&codec::remove_snapshot_task(&s, false, true))?;
                wait(&c, &resp)?;
                Ok(ExitCode::SUCCESS)
            }
        },
        VmCommand::Cbt { conn, action, vm } => {
            let on = match action.as_str() {
                "enable" => true,
                "disable" => false,
                other => return Err(format!("`{other}`: expected enable or disable").into()),
            };
            let c = conn.connect()?;
            let resp = c.call(&codec::reconfig_vm_task(
                &parse_vm(&vm)?,
                &ConfigSpec {
                    change_tracking: Some(on),
                    device_changes: vec![],
                },
            ))?;
            wait(&c, &resp)?;
            Ok(ExitCode::SUCCESS)
        }
        VmCommand::Changes {
            conn,
            vm,
            disk,
            change_id,
            snapshot,
            json,
        } => {
            let c = conn.connect()?;
            let vm = parse_vm(&vm)?;
            let snap = snapshot.map(|s| {
                MoRef::new(
                    "VirtualMachineSnapshot",
                    s.strip_prefix("moref=").unwrap_or(&s),
                )
            });
            let disks = codec::virtual_disks(
                &c.property(&vm, "config.hardware.device")?
                    .ok_or("the VM has no devices")?,
            )?;
            let capacity = disks
                .iter()
                .find(|d| d.key == disk)
                .map(|d| d.capacity)
                .ok_or_else(|| format!("the VM has no disk with key {disk}"))?;
            let set = disklib::api::changed_areas_by_key(
                &c,
                &vm,
                snap.as_ref(),
                disk,
                capacity,
                &change_id,
            )?;
            if json {
                print_json(&Value::Array(
                    set.iter()
                        .map(|e| json!({"start": e.start, "length": e.len}))
                        .collect(),
                ))?;
            } else {
                for e in set.iter() {
                    println!("{:>16} {:>16}", e.start, e.len);
                }
                println!("{} bytes changed in {} areas", set.total_len(), set.len());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
