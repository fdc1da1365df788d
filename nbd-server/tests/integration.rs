//! Integration tests of nbd-server against real NBD peers (libnbd's
//! `nbdinfo`, `nbdcopy`, `nbdsh`; qemu's `qemu-img`, `qemu-io`).

mod integration {
    pub mod support;

    mod garbage;
    mod peers;
    mod tls;
}
