//! `vdisk sim`: run the vSphere simulator, and the simulator-only calls
//! (guest writes, LUN states). Built with the default `sim` feature;
//! `--no-default-features` leaves the simulator out of the binary.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use vim_soap::codec;

use crate::args::{parse_byte, parse_size};
use crate::remote::{parse_vm, Connection};
use crate::AnyError;

#[derive(Subcommand, Debug)]
pub(crate) enum SimCommand {
    /// Run a simulator until stopped; first print VDISK_* variables to export.
    Serve {
        /// Inventory file (JSON).
        #[arg(long, conflicts_with = "demo")]
        inventory: Option<PathBuf>,
        /// The built-in demo inventory (a VM with two disks, CBT on, a proxy VM).
        #[arg(long)]
        demo: bool,
        /// Port (0: any free port).
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// Where the demo keeps its datastore (default: a new temporary directory).
        #[arg(long)]
        root: Option<PathBuf>,
        /// Behave as a lone ESXi host instead of vCenter.
        #[arg(long)]
        esxi: bool,
        /// Changed-block tracking granularity: `vm changes` reports areas
        /// rounded out to whole blocks of this size, as ESXi does.
        #[arg(long, default_value_t = vsphere_sim::DEFAULT_CBT_BLOCK, value_parser = crate::args::parse_size)]
        cbt_block: u64,
    },
    /// Write into a VM's disk as its guest would (recorded by CBT).
    GuestWrite {
        #[command(flatten)]
        conn: Connection,
        /// `moref=vm-N`.
        #[arg(long)]
        vm: String,
        /// Disk device key.
        #[arg(long)]
        disk: i32,
        /// Byte offset: bytes, or with a K/M/G/T suffix.
        #[arg(long, value_parser = parse_size)]
        offset: u64,
        /// Byte value (0-255, or 0xNN).
        #[arg(long, value_parser = parse_byte)]
        pattern: u8,
        /// Bytes (K/M/G/T suffixes).
        #[arg(long, value_parser = parse_size)]
        length: u64,
    },
    /// Take a simulated SAN LUN offline, make it fail from a byte on, or
    /// bring it back online.
    Lun {
        #[command(flatten)]
        conn: Connection,
        /// The LUN's NAA id (`naa.…`).
        #[arg(long)]
        lun: String,
        /// Every request fails and the device entry goes away.
        #[arg(long, group = "state")]
        offline: bool,
        /// Requests reaching this LUN byte or beyond fail (K/M/G/T suffixes).
        #[arg(long, group = "state", value_parser = parse_size)]
        failing_from: Option<u64>,
        /// Back to normal, nothing lost.
        #[arg(long, group = "state")]
        online: bool,
    },
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

pub(crate) fn sim(cmd: SimCommand) -> Result<ExitCode, AnyError> {
    match cmd {
        SimCommand::Serve {
            inventory,
            demo,
            port,
            root,
            esxi,
            cbt_block,
        } => {
            let mode = if esxi {
                vsphere_sim::Mode::Esxi
            } else {
                vsphere_sim::Mode::Vcenter
            };
            let inv = match (inventory, demo) {
                (Some(f), _) => {
                    let mut i = vsphere_sim::Inventory::load(&f)?;
                    if esxi {
                        i.mode = mode;
                    }
                    i
                }
                (None, true) => {
                    let root = root.unwrap_or_else(|| {
                        std::env::temp_dir().join(format!("vdisk-sim-{}", std::process::id()))
                    });
                    std::fs::create_dir_all(&root)
                        .map_err(|e| format!("{}: {e}", root.display()))?;
                    vsphere_sim::Inventory::demo(&root, mode)
                }
                (None, false) => return Err("give --inventory FILE or --demo".into()),
            };
            let user = inv
                .users
                .first()
                .cloned()
                .ok_or("the inventory has no user")?;
            let roots: Vec<String> = inv
                .datastores
                .iter()
                .map(|d| format!("# datastore {}: {}", d.name, d.path.display()))
                .collect();
            // The proxy host's view (SAN LUN, HotAdd devices): a
            // configuration file that points the library at it.
            let config = match &inv.proxy_host {
                Some(host) => {
                    let file = host.with_extension("conf");
                    std::fs::create_dir_all(host)
                        .and_then(|()| {
                            std::fs::write(
                                &file,
                                vsphere_sim::proxy_config(
                                    host,
                                    &host.with_extension("hotadd-state"),
                                ),
                            )
                        })
                        .map_err(|e| format!("{}: {e}", file.display()))?;
                    Some(file)
                }
                None => None,
            };
            if cbt_block < 512 || !cbt_block.is_power_of_two() {
                return Err(
                    format!("--cbt-block {cbt_block}: a power of two, at least 512").into(),
                );
            }
            let opts = vsphere_sim::SimOptions {
                cbt_block,
                ..vsphere_sim::SimOptions::default()
            };
            let sim = vsphere_sim::Simulator::start(inv, opts, port)?;
            let _nfc = sim.start_nfc(vsphere_sim::NfcOptions::default())?;
            // Whoever reads these may stop listening after them: a closed
            // stdout must not stop the server.
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "VDISK_SERVER={}", sim.addr());
            let _ = writeln!(out, "VDISK_USER={}", shell_quote(&user.user));
            let _ = writeln!(out, "VDISK_PASSWORD={}", shell_quote(&user.password));
            let _ = writeln!(out, "VDISK_THUMBPRINT={}", sim.thumbprint());
            if let Some(c) = &config {
                let _ = writeln!(
                    out,
                    "VDISK_CONFIG={}",
                    shell_quote(&c.display().to_string())
                );
            }
            for r in roots {
                let _ = writeln!(out, "{r}");
            }
            let _ = out.flush();
            drop(out);
            loop {
                std::thread::park();
            }
        }
        SimCommand::GuestWrite {
            conn,
            vm,
            disk,
            offset,
            pattern,
            length,
        } => {
            let c = conn.connect()?;
            let body = format!(
                "{}<diskKey>{disk}</diskKey><offset>{offset}</offset><length>{length}</length><pattern>{pattern}</pattern>",
                parse_vm(&vm)?.xml("vm")
            );
            c.call(&sim_request("SimGuestWrite", &body))?;
            Ok(ExitCode::SUCCESS)
        }
        SimCommand::Lun {
            conn,
            lun,
            offline,
            failing_from,
            online,
        } => {
            let state = match (offline, failing_from, online) {
                (true, None, false) => "<state>offline</state>".to_string(),
                (false, Some(n), false) => {
                    format!("<state>failingFrom</state><offset>{n}</offset>")
                }
                (false, None, true) => "<state>online</state>".to_string(),
                _ => return Err("give one of --offline, --failing-from N, --online".into()),
            };
            let c = conn.connect()?;
            let body = format!("<lunId>{}</lunId>{state}", vim_soap::xml::escape(&lun));
            c.call(&sim_request("SimSetLunState", &body))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A simulator-only call (see `vsphere_sim`).
fn sim_request(method: &'static str, params: &str) -> codec::Request {
    let envelope = format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><{method} xmlns="urn:internalvim25"><_this type="ServiceInstance">ServiceInstance</_this>{params}</{method}></soapenv:Body></soapenv:Envelope>"#
    );
    codec::Request {
        method,
        soap_action: format!("urn:internalvim25/{}", codec::API_VERSION),
        body: envelope,
    }
}
