// govmomi-client for the kit's peer tests: govmomi (Debian's
// golang-github-vmware-govmomi-dev, built in GOPATH mode by
// `cargo xtask deps`) as a client of the kit's vSphere simulator. Reads
// VDISK_SERVER / _USER / _PASSWORD / _THUMBPRINT; prints one line per
// check; exits non-zero at the first failure.
package main

import (
	"context"
	"fmt"
	"net/url"
	"os"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/session"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

func fail(what string, err error) {
	fmt.Fprintf(os.Stderr, "govmomi-client: %s: %v\n", what, err)
	os.Exit(1)
}

func main() {
	ctx := context.Background()
	server := os.Getenv("VDISK_SERVER")
	u := &url.URL{Scheme: "https", Host: server, Path: "/sdk"}
	sc := soap.NewClient(u, false)
	sc.SetThumbprint(u.Host, os.Getenv("VDISK_THUMBPRINT"))
	vim, err := vim25.NewClient(ctx, sc)
	if err != nil {
		fail("connect", err)
	}
	vc := &govmomi.Client{Client: vim, SessionManager: session.NewManager(vim)}
	err = vc.Login(ctx, url.UserPassword(os.Getenv("VDISK_USER"), "wrong"))
	if err == nil {
		fail("login", fmt.Errorf("a wrong password was accepted"))
	}
	fmt.Println("wrong password refused")
	if err := vc.Login(ctx, url.UserPassword(os.Getenv("VDISK_USER"), os.Getenv("VDISK_PASSWORD"))); err != nil {
		fail("login", err)
	}
	fmt.Println("connected", vc.ServiceContent.About.ApiType)

	finder := find.NewFinder(vc.Client, true)
	dc, err := finder.DefaultDatacenter(ctx)
	if err != nil {
		fail("datacenter", err)
	}
	finder.SetDatacenter(dc)
	vm, err := finder.VirtualMachine(ctx, "demo-vm")
	if err != nil {
		fail("find demo-vm", err)
	}
	fmt.Println("vm", vm.Reference().Value)
	devices, err := vm.Device(ctx)
	if err != nil {
		fail("devices", err)
	}
	disks := devices.SelectByType((*types.VirtualDisk)(nil))
	for _, d := range disks {
		backing := d.GetVirtualDevice().Backing.(types.BaseVirtualDeviceFileBackingInfo)
		fmt.Println("disk", d.GetVirtualDevice().Key, backing.GetVirtualDeviceFileBackingInfo().FileName)
	}

	task, err := vm.CreateSnapshot(ctx, "govmomi", "", false, false)
	if err != nil {
		fail("snapshot", err)
	}
	info, err := task.WaitForResult(ctx, nil)
	if err != nil {
		fail("snapshot task", err)
	}
	snap := info.Result.(types.ManagedObjectReference)
	fmt.Println("snapshot", snap.Value)

	key := disks[0].GetVirtualDevice().Key
	req := types.QueryChangedDiskAreas{
		This:        vm.Reference(),
		Snapshot:    &snap,
		DeviceKey:   key,
		StartOffset: 0,
		ChangeId:    "*",
	}
	res, err := methods.QueryChangedDiskAreas(ctx, vc.Client, &req)
	if err != nil {
		fail("changed areas", err)
	}
	fmt.Println("changes", res.Returnval.Length > 0)

	rtask, err := vm.RemoveSnapshot(ctx, snap.Value, false, nil)
	if err != nil {
		fail("remove snapshot", err)
	}
	if err := rtask.Wait(ctx); err != nil {
		fail("remove snapshot task", err)
	}
	fmt.Println("snapshot removed")
	if err := vc.Logout(ctx); err != nil {
		fail("logout", err)
	}
	fmt.Println("ok")
}
