//! Dispatch of SOAP calls ([`Shared::handle`]), sessions, service content,
//! tasks and NFC tickets, and the argument readers every call uses.

use std::sync::Arc;
use std::time::Instant;

use vim_soap::codec::{self, MoRef, TaskInfo, TaskState};
use vim_soap::xml::{escape, Element};
use vim_soap::FaultKind;

use crate::inventory::Mode;
use crate::san::LunState;

use super::state::{fault, not_found, random_hex, Fault, NfcGrant, Reply, Shared};

pub(super) fn this(el: &Element) -> Result<MoRef, Fault> {
    el.child("_this")
        .and_then(MoRef::from_element)
        .ok_or_else(|| fault(FaultKind::InvalidArgument("_this".into()), "missing _this"))
}

pub(super) fn arg<'a>(el: &'a Element, name: &str) -> Result<&'a str, Fault> {
    el.child_text(name).ok_or_else(|| {
        fault(
            FaultKind::InvalidArgument(name.into()),
            format!("missing {name}"),
        )
    })
}

/// A numeric argument.
pub(super) fn arg_num<T: std::str::FromStr>(el: &Element, name: &str) -> Result<T, Fault> {
    arg(el, name)?.parse().map_err(|_| {
        fault(
            FaultKind::InvalidArgument(name.into()),
            format!("{name} is not a number in range"),
        )
    })
}

pub(super) fn arg_moref(el: &Element, name: &str) -> Result<MoRef, Fault> {
    el.child(name).and_then(MoRef::from_element).ok_or_else(|| {
        fault(
            FaultKind::InvalidArgument(name.into()),
            format!("missing {name}"),
        )
    })
}

/// A property value (`<val xsi:type=…>…</val>`) as a method's result.
fn val_as_returnval(val: &str) -> String {
    let inner = val
        .strip_prefix("<val")
        .and_then(|v| v.strip_suffix("</val>"));
    match inner {
        Some(rest) => format!("<returnval{rest}</returnval>"),
        None => val.to_string(),
    }
}

fn service_content_rv(s: &str) -> String {
    format!("<returnval xsi:type=\"ServiceContent\">{s}</returnval>")
}

fn rv(s: &str) -> String {
    format!("<returnval>{s}</returnval>")
}

fn rv_moref(r: &MoRef) -> String {
    format!(
        "<returnval type=\"{}\">{}</returnval>",
        escape(&r.kind),
        escape(&r.value)
    )
}

/// The result of one call: the returnval XML and maybe a new cookie.
pub struct Outcome {
    /// `<returnval>…</returnval>` (empty for void methods).
    pub body: String,
    /// A session cookie to set.
    pub cookie: Option<String>,
}

impl Shared {
    /// Handles one SOAP call.
    pub fn handle(
        self: &Arc<Self>,
        cookie: Option<&str>,
        method: &str,
        el: &Element,
    ) -> Result<Outcome, Fault> {
        let plain = |body: String| Ok(Outcome { body, cookie: None });
        match method {
            "RetrieveServiceContent" => return plain(self.service_content()),
            "Login" => {
                let user = arg(el, "userName")?;
                let pass = el.child_text("password").unwrap_or_default();
                if !self
                    .inv
                    .users
                    .iter()
                    .any(|u| u.user == user && u.password == pass)
                {
                    return Err(fault(
                        FaultKind::InvalidLogin,
                        "Cannot complete login due to an incorrect user name or password.",
                    ));
                }
                return Ok(self.new_session(user));
            }
            "CloneSession" => {
                let t = arg(el, "cloneTicket")?;
                let user = self.lock().clone_tickets.remove(t).ok_or_else(|| {
                    fault(FaultKind::InvalidLogin, "Invalid or used clone ticket")
                })?;
                return Ok(self.new_session(&user));
            }
            _ => {}
        }
        let user = cookie
            .and_then(|c| self.lock().sessions.get(c).cloned())
            .ok_or_else(|| {
                fault(
                    FaultKind::NotAuthenticated,
                    "The session is not authenticated.",
                )
            })?;
        match method {
            "Logout" => {
                if let Some(c) = cookie {
                    self.lock().sessions.remove(c);
                }
                plain(String::new())
            }
            "SessionIsActive" => {
                let id = arg(el, "sessionID")?;
                let who = arg(el, "userName")?;
                let active = self.lock().sessions.get(id).is_some_and(|u| u == who);
                plain(rv(&active.to_string()))
            }
            "AcquireCloneTicket" => {
                let t = format!("cst-{}", random_hex(16));
                self.lock().clone_tickets.insert(t.clone(), user);
                plain(rv(&t))
            }
            "AcquireGenericServiceTicket" => {
                let id = format!("cst-VCT-{}", random_hex(16));
                plain(rv(&format!(
                    "<id>{id}</id><hostName>127.0.0.1</hostName><sslThumbprint>{}</sslThumbprint>",
                    self.thumbprint
                )))
            }
            "RetrieveInternalContent" => plain(rv(&format!(
                "<nfcService type=\"NfcService\">{}</nfcService>",
                self.nfc_service()
            ))),
            "NfcGetVmFiles" | "NfcRandomAccessOpenDisk" | "NfcRandomAccessOpenReadonly" => {
                self.nfc_ticket(method, el).map(|b| Outcome {
                    body: b,
                    cookie: None,
                })
            }
            "NfcGetServerNfcLibVersion" => {
                self.check_nfc_this(el)?;
                self.check_host_for_access(el, None)?;
                plain(rv("11"))
            }
            "FindByInventoryPath" => {
                let path = arg(el, "inventoryPath")?;
                let prefix = format!("{}/vm/", self.inv.datacenter);
                let st = self.lock();
                let found = path
                    .strip_prefix(&prefix)
                    .and_then(|name| st.vms.values().find(|v| v.name == name))
                    .map(|v| MoRef::new("VirtualMachine", &v.moref));
                plain(found.map(|r| rv_moref(&r)).unwrap_or_default())
            }
            "FindByUuid" => {
                let uuid = arg(el, "uuid")?;
                let st = self.lock();
                let bare = |u: &str| u.replace('-', "").to_ascii_lowercase();
                let found = st
                    .vms
                    .values()
                    .find(|v| bare(&v.uuid) == bare(uuid))
                    .map(|v| MoRef::new("VirtualMachine", &v.moref));
                plain(found.map(|r| rv_moref(&r)).unwrap_or_default())
            }
            // pyVmomi reads every property through the internal `Fetch`.
            "Fetch" => {
                let obj = this(el)?;
                let prop = arg(el, "prop")?;
                if obj.kind == "ServiceInstance" && prop == "content" {
                    return plain(self.service_content());
                }
                let st = self.lock();
                let props = self.object_props(&st, &obj, &[prop.to_string()])?;
                plain(match props.into_iter().next() {
                    Some((_, val)) => val_as_returnval(val.as_str()),
                    None => String::new(),
                })
            }
            "CreateContainerView" => {
                let container = arg_moref(el, "container")?;
                if container.kind != "Folder" && container.kind != "Datacenter" {
                    return Err(not_found(&container.kind, &container.value));
                }
                let types = el
                    .children_named("type")
                    .map(|t| t.text.trim().to_string())
                    .collect();
                let mut st = self.lock();
                let id = format!("session[{}]{}", random_hex(8), st.id("view"));
                st.views.insert(id.clone(), types);
                plain(rv_moref(&MoRef::new("ContainerView", &id)))
            }
            // How pyVmomi's WaitForTask and govmomi's task.Wait follow a
            // task: a filter on it, then updates until it is done.
            "CreateFilter" => {
                let spec = el.child("spec").ok_or_else(|| {
                    fault(FaultKind::InvalidArgument("spec".into()), "missing spec")
                })?;
                let mut watched = Vec::new();
                for os in spec.children_named("objectSet") {
                    let obj = arg_moref(os, "obj")?;
                    let paths: Vec<String> = spec
                        .children_named("propSet")
                        .filter(|p| p.child_text("type") == Some(obj.kind.as_str()))
                        .flat_map(|p| {
                            p.children_named("pathSet")
                                .map(|x| x.text.trim().to_string())
                        })
                        .collect();
                    watched.push((obj, paths));
                }
                let collector = this(el)?.value;
                let mut st = self.lock();
                let id = format!("session[{}]{}", random_hex(8), st.id("filter"));
                st.filters.insert(id.clone(), (collector, watched));
                plain(rv_moref(&MoRef::new("PropertyFilter", &id)))
            }
            // govmomi's task.Wait makes a collector of its own.
            "CreatePropertyCollector" => {
                let id = format!("session[{}]{}", random_hex(8), self.lock().id("collector"));
                plain(rv_moref(&MoRef::new("PropertyCollector", &id)))
            }
            "DestroyPropertyCollector" => {
                let pc = this(el)?.value;
                self.lock().filters.retain(|_, (owner, _)| *owner != pc);
                plain(String::new())
            }
            "DestroyPropertyFilter" => {
                let f = this(el)?;
                self.lock()
                    .filters
                    .remove(&f.value)
                    .ok_or_else(|| not_found("PropertyFilter", &f.value))?;
                plain(String::new())
            }
            "WaitForUpdates" | "WaitForUpdatesEx" | "CheckForUpdates" => {
                let since = el.child_text("version").unwrap_or_default().to_string();
                if !since.is_empty() {
                    // Answered at once with the current state; a short
                    // pause keeps a polling client from spinning.
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                plain(self.update_set(&this(el)?.value)?)
            }
            "DestroyView" => {
                let view = this(el)?;
                self.lock()
                    .views
                    .remove(&view.value)
                    .ok_or_else(|| not_found("ContainerView", &view.value))?;
                plain(String::new())
            }
            "RetrieveProperties" => self.retrieve_unpaged(el).map(|b| Outcome {
                body: b,
                cookie: None,
            }),
            "RetrievePropertiesEx" => self.retrieve(el).map(|b| Outcome {
                body: b,
                cookie: None,
            }),
            "ContinueRetrievePropertiesEx" => {
                let token = arg(el, "token")?;
                let rest = self.lock().pending.remove(token).ok_or_else(|| {
                    fault(FaultKind::InvalidArgument("token".into()), "unknown token")
                })?;
                plain(self.page(rest, 100))
            }
            "CreateSnapshot_Task" => {
                let vm = this(el)?;
                let name = el.child_text("name").unwrap_or("snapshot").to_string();
                self.lock().vm(&vm.value)?;
                plain(rv_moref(
                    &self.task(move |sh| sh.create_snapshot(&vm.value, &name)),
                ))
            }
            "RemoveSnapshot_Task" => {
                let snap = this(el)?;
                let children = el.child_text("removeChildren") == Some("true");
                self.lock().snapshot_owner(&snap.value)?;
                plain(rv_moref(&self.task(move |sh| {
                    sh.remove_snapshot(&snap.value, children).map(|()| None)
                })))
            }
            "ConsolidateVMDisks_Task" => {
                let vm = this(el)?;
                self.lock().vm(&vm.value)?;
                plain(rv_moref(&self.task(|_| Ok(None))))
            }
            "ReconfigVM_Task" => {
                let vm = this(el)?;
                self.lock().vm(&vm.value)?;
                let spec = el.child("spec").cloned().unwrap_or_default();
                plain(rv_moref(
                    &self.task(move |sh| sh.reconfig(&vm.value, &spec).map(|()| None)),
                ))
            }
            "RelocateVM_Task" => {
                let vm = this(el)?;
                let st = self.lock();
                let v = st.vm(&vm.value)?;
                if let Some(src) = v.disabled.get("RelocateVM_Task") {
                    return Err(fault(
                        FaultKind::MethodDisabled(src.clone()),
                        format!("RelocateVM_Task is disabled by {src}"),
                    ));
                }
                drop(st);
                plain(rv_moref(&self.task(|_| Ok(None))))
            }
            "QueryChangedDiskAreas" => self.qcda(el).map(|b| Outcome {
                body: b,
                cookie: None,
            }),
            "SimSetLunState" => {
                let id = arg(el, "lunId")?;
                let state = match arg(el, "state")? {
                    "online" => LunState::Online,
                    "offline" => LunState::Offline,
                    "failingFrom" => LunState::FailingFrom(arg_num(el, "offset")?),
                    other => {
                        return Err(fault(
                            FaultKind::InvalidArgument("state".into()),
                            format!("unknown LUN state {other} (online, offline, failingFrom)"),
                        ))
                    }
                };
                self.set_lun_state(id, state)
                    .map_err(|m| fault(FaultKind::InvalidArgument("lunId".into()), m))?;
                plain(String::new())
            }
            codec::SIM_QUERY_DISK_BLOCK_MAP => self.block_map(el).map(|b| Outcome {
                body: b,
                cookie: None,
            }),
            "DisableMethods" | "EnableMethods" => {
                if self.inv.mode == Mode::Esxi {
                    return Err(fault(
                        FaultKind::NotSupported,
                        "HostAgent is not a VirtualCenter, cannot disable svMotion",
                    ));
                }
                let source = arg(el, "sourceId")?.to_string();
                let methods: Vec<String> = el
                    .children_named("method")
                    .map(|m| {
                        m.child_text("method")
                            .map(str::to_string)
                            .unwrap_or_else(|| m.text.trim().to_string())
                    })
                    .collect();
                let mut st = self.lock();
                let entities: Vec<MoRef> = el
                    .children_named("entity")
                    .filter_map(MoRef::from_element)
                    .collect();
                for e in &entities {
                    st.vm(&e.value)?;
                }
                for e in entities {
                    let v = st.vm_mut(&e.value)?;
                    for m in &methods {
                        if method == "DisableMethods" {
                            if let Some(prev) = v.disabled.get(m) {
                                return Err(fault(
                                    FaultKind::MethodAlreadyDisabled(prev.clone()),
                                    format!("{m} is already disabled by {prev}"),
                                ));
                            }
                            v.disabled.insert(m.clone(), source.clone());
                        } else {
                            v.disabled.remove(m);
                        }
                    }
                }
                plain(String::new())
            }
            "SimGuestWrite" => {
                let vm = arg_moref(el, "vm")?;
                let key: i32 = arg_num(el, "diskKey")?;
                let offset: u64 = arg_num(el, "offset")?;
                let len: u64 = arg_num(el, "length")?;
                let byte: u8 = arg_num(el, "pattern")?;
                if len > 1 << 30 {
                    return Err(fault(
                        FaultKind::InvalidArgument("length".into()),
                        "at most 1 GiB per call",
                    ));
                }
                self.guest_write(&vm.value, key, offset, &vec![byte; len as usize])?;
                plain(String::new())
            }
            // What vCenter answers for a method it does not have.
            other => Err(fault(
                FaultKind::Other("MethodNotFound".into()),
                format!("method {other} is not implemented by the simulator"),
            )),
        }
    }

    fn new_session(&self, user: &str) -> Outcome {
        let cookie = random_hex(20);
        let key = random_hex(16);
        self.lock()
            .sessions
            .insert(cookie.clone(), user.to_string());
        Outcome {
            body: rv(&format!(
                "<key>{key}</key><userName>{}</userName><fullName>{}</fullName>",
                escape(user),
                escape(user)
            )),
            cookie: Some(cookie),
        }
    }

    fn service_content(&self) -> String {
        let (api_type, full) = match self.inv.mode {
            Mode::Vcenter => ("VirtualCenter", "vddk-rs vSphere simulator (vCenter)"),
            Mode::Esxi => ("HostAgent", "vddk-rs vSphere simulator (ESXi)"),
        };
        service_content_rv(&format!(
            "<rootFolder type=\"Folder\">group-d1</rootFolder><viewManager type=\"ViewManager\">ViewManager</viewManager><propertyCollector type=\"PropertyCollector\">propertyCollector</propertyCollector><sessionManager type=\"SessionManager\">SessionManager</sessionManager><searchIndex type=\"SearchIndex\">SearchIndex</searchIndex><authorizationManager type=\"AuthorizationManager\">AuthorizationManager</authorizationManager><about><name>vsphere-sim</name><fullName>{full}</fullName><apiType>{api_type}</apiType><apiVersion>8.0.1.0</apiVersion></about>"
        ))
    }

    fn task(
        self: &Arc<Self>,
        op: impl FnOnce(&Arc<Shared>) -> Result<Option<MoRef>, Fault> + Send + 'static,
    ) -> MoRef {
        let id = self.lock().id("task");
        let task = MoRef::new("Task", &id);
        self.lock().tasks.insert(
            id.clone(),
            TaskInfo {
                task: task.clone(),
                state: TaskState::Queued,
                result: None,
                error: None,
            },
        );
        let sh = Arc::clone(self);
        std::thread::spawn(move || {
            if let Some(t) = sh.lock().tasks.get_mut(&id) {
                t.state = TaskState::Running;
            }
            let r = op(&sh);
            if let Some(t) = sh.lock().tasks.get_mut(&id) {
                match r {
                    Ok(result) => {
                        t.state = TaskState::Success;
                        t.result = result;
                    }
                    Err((kind, message)) => {
                        t.state = TaskState::Error;
                        t.error = Some(vim_soap::Fault { kind, message });
                    }
                }
            }
        });
        task
    }

    /// The `NfcService` moref: `nfcService` on vCenter, `ha-nfc-service`
    /// on a bare ESXi host (each refuses the other's).
    fn nfc_service(&self) -> &'static str {
        match self.inv.mode {
            Mode::Vcenter => "nfcService",
            Mode::Esxi => "ha-nfc-service",
        }
    }

    fn check_nfc_this(&self, el: &Element) -> Result<(), Fault> {
        let t = this(el)?;
        if t.kind != "NfcService" || t.value != self.nfc_service() {
            return Err(fault(
                FaultKind::ManagedObjectNotFound(Some(t.clone())),
                format!(
                    "The object '{}' has already been deleted or has not been completely created",
                    t.value
                ),
            ));
        }
        Ok(())
    }

    /// `hostForAccess` must be there and name `vm_host` (any host when
    /// `None`).
    fn check_host_for_access(&self, el: &Element, vm_host: Option<&str>) -> Result<(), Fault> {
        let bad = |m: &str| {
            fault(
                FaultKind::InvalidArgument("hostForAccess".into()),
                format!("A specified parameter was not correct: hostForAccess ({m})"),
            )
        };
        let h = arg_moref(el, "hostForAccess").map_err(|_| bad("missing"))?;
        if h.kind != "HostSystem" || vm_host.is_some_and(|v| v != h.value) {
            return Err(bad("not the VM's host"));
        }
        Ok(())
    }

    /// `NfcGetVmFiles(vm)`: a read-only ticket for every disk file of the
    /// VM, snapshot parents included; `NfcRandomAccessOpenDisk(vm,
    /// diskDeviceKey, hostForAccess)`: a read-write ticket for one disk's
    /// running file; `NfcRandomAccessOpenReadonly` (same arguments): the
    /// same, read-only. The ticket as a vCenter gives it (`host`,
    /// `vpxa-nfc`) or a bare ESXi host (no `host`, `nfc`).
    fn nfc_ticket(&self, method: &str, el: &Element) -> Reply {
        self.check_nfc_this(el)?;
        let vm = arg_moref(el, "vm")?;
        let mut st = self.lock();
        let v = st.vm(&vm.value)?;
        let (paths, read_only, disk_key) = if method == "NfcGetVmFiles" {
            let mut paths: Vec<_> = v
                .disks
                .iter()
                .flat_map(|d| d.chain.iter().cloned())
                .collect();
            for s in &v.snapshots {
                paths.extend(s.disks.iter().map(|(_, f, _)| f.clone()));
            }
            (paths, true, None)
        } else {
            let key: i32 = arg_num(el, "diskDeviceKey")?;
            // Every VM of the simulator runs on `host-1` (`runtime.host`).
            self.check_host_for_access(el, Some("host-1"))?;
            let d = v.disk(key, "diskDeviceKey")?;
            (
                vec![d.running().to_path_buf()],
                method == "NfcRandomAccessOpenReadonly",
                Some(key),
            )
        };
        let service = match self.inv.mode {
            Mode::Vcenter => nfc_proto::authd::SERVICE_VCENTER,
            Mode::Esxi => nfc_proto::authd::SERVICE_ESXI,
        };
        let grant = NfcGrant {
            paths,
            read_only,
            vm: vm.value.clone(),
            disk_key,
            service: service.into(),
            expires: Instant::now() + self.opts.ticket_ttl,
        };
        let h = random_hex(16);
        let ticket = format!(
            "{}-{}-{}-{}-{}",
            &h[..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        );
        st.nfc_tickets.insert(ticket.clone(), grant);
        drop(st);
        let (host, port) = self
            .nfc_endpoint
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(|| ("127.0.0.1".into(), 902));
        let host = match self.inv.mode {
            Mode::Vcenter => format!("<host>{}</host>", escape(&host)),
            Mode::Esxi => String::new(),
        };
        Ok(rv(&format!(
            "{host}<port>{port}</port><sslThumbprint>{}</sslThumbprint><service>{service}</service><serviceVersion>1.1</serviceVersion><sessionId>{ticket}</sessionId>",
            self.thumbprint
        )))
    }
}
