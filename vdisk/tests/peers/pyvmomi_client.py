"""pyVmomi (VMware's Python SDK, from PyPI) as a client of the kit's
vSphere simulator: run by vdisk/tests/peers.rs with VDISK_* set by
`vdisk sim serve`. Prints one line per check; exits non-zero on the
first failure."""

import hashlib
import os
import ssl
import sys

from pyVim.connect import Disconnect, SmartConnect
from pyVim.task import WaitForTask
from pyVmomi import vim

host, port = os.environ["VDISK_SERVER"].rsplit(":", 1)
user, password = os.environ["VDISK_USER"], os.environ["VDISK_PASSWORD"]
thumbprint = os.environ["VDISK_THUMBPRINT"].replace(":", "").lower()

# The certificate is self-signed: checked by its thumbprint below, as
# VDDK checks it.
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE


def connect(pwd):
    return SmartConnect(host=host, port=int(port), user=user, pwd=pwd, sslContext=ctx)


try:
    connect("wrong")
    sys.exit("a wrong password was accepted")
except vim.fault.InvalidLogin:
    print("wrong password: InvalidLogin")

si = connect(password)
cert = ssl.get_server_certificate((host, int(port)))
der = ssl.PEM_cert_to_DER_cert(cert)
if hashlib.sha1(der).hexdigest() != thumbprint:
    sys.exit("thumbprint mismatch")
print("connected", si.content.about.apiType, si.content.about.apiVersion)

content = si.RetrieveContent()
view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
vms = {vm.name: vm for vm in view.view}
view.Destroy()
print("vms", " ".join(sorted(vms)))
vm = vms["demo-vm"]
disks = [d for d in vm.config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk)]
print("disks", " ".join("%d:%s" % (d.key, d.backing.fileName) for d in disks))
print("host", vm.runtime.host.name)

task = vm.CreateSnapshot_Task(name="pyvmomi", description="", memory=False, quiesce=False)
WaitForTask(task)
snap = task.info.result
print("snapshot", snap._moId)
disk = disks[0]
snap_disks = [d for d in snap.config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk)]
change_id = [d for d in snap_disks if d.key == disk.key][0].backing.changeId
areas = vm.QueryChangedDiskAreas(snapshot=snap, deviceKey=disk.key, startOffset=0, changeId="*")
print("changes", len(areas.changedArea), areas.length > 0, change_id is not None)
WaitForTask(snap.RemoveSnapshot_Task(removeChildren=False))
print("snapshot removed")
Disconnect(si)
print("ok")
