//! The disk database (DDB) of a disk on a host, from its descriptor.
//!
//! NFC's `DDB_GET` (published in traces of real hosts) reads one key over
//! nbd/nbdssl; nothing published lists the keys or sets one (VDDK's
//! bytes for those are unknown), and san/hotadd move only the disk's
//! blocks. So the kit reads and writes the descriptor itself through
//! vSphere's documented datastore file access (`GET` / `PUT
//! /folder/PATH?dcPath=…&dsName=…`, on the session's cookie): listing
//! keys over every remote transport, reading them (and `GetInfo`'s
//! geometry and adapter) over san/hotadd, and setting them. A descriptor
//! embedded in a monolithic sparse file is read through a byte range but
//! cannot be replaced on its own: setting a key there is refused.

use vim_soap::client::Client;
use vim_soap::codec::{self, MoRef};
use vmdk_format::descriptor::Descriptor;
use vmdk_format::hosted::{SparseExtentHeader, SPARSE_MAGIC};

use crate::error::{Error, Result};

/// A disk's descriptor as the host holds it.
pub(super) struct HostDescriptor {
    pub descriptor: Descriptor,
    /// Inside a monolithic sparse file (read-only from here).
    pub embedded: bool,
    url: String,
}

/// Walks `parent` from `vm` up to its datacenter and returns its name
/// (what `dcPath` wants).
fn datacenter_of(client: &Client, vm: &MoRef) -> Result<String> {
    let mut obj = vm.clone();
    for _ in 0..32 {
        let parent = client
            .property(&obj, "parent")?
            .and_then(|e| MoRef::from_element(&e));
        match parent {
            Some(p) if p.kind == "Datacenter" => {
                let name = client
                    .property(&p, "name")?
                    .map(|e| e.text.trim().to_string())
                    .filter(|n| !n.is_empty());
                return name.ok_or_else(|| {
                    Error::InvalidArgument(format!("datacenter {} has no name", p.value))
                });
            }
            Some(p) => obj = p,
            None => break,
        }
    }
    Err(Error::InvalidArgument(format!(
        "no datacenter above {} (its parent chain ends)",
        vm.value
    )))
}

impl HostDescriptor {
    /// Reads the descriptor of `path` (`[ds] dir/disk.vmdk`) of `vm`.
    pub(super) fn read(client: &Client, vm: &MoRef, path: &str) -> Result<Self> {
        let (ds, file) = codec::split_datastore_path(path)
            .ok_or_else(|| Error::InvalidArgument(format!("`{path}` is not `[datastore] path`")))?;
        let url = codec::datastore_file_url(&datacenter_of(client, vm)?, ds, file);
        let bad = |e: vmdk_format::Error| {
            Error::File(vmdk_file::Error::Format {
                path: path.into(),
                source: e,
            })
        };
        let head = client.get_file(&url, Some(0..512))?;
        let magic = head
            .get(..4)
            .map(|m| u32::from_le_bytes([m[0], m[1], m[2], m[3]]));
        let magic64 = head
            .get(..8)
            .map(|m| u64::from_le_bytes([m[0], m[1], m[2], m[3], m[4], m[5], m[6], m[7]]));
        let (text, embedded) = if magic == Some(SPARSE_MAGIC) {
            let header = SparseExtentHeader::parse(&head).map_err(bad)?;
            let (off, len) = header
                .descriptor_range()
                .ok_or_else(|| Error::Unsupported {
                    path: path.into(),
                    what: "a sparse file without an embedded descriptor".into(),
                })?;
            (
                client.get_file(&url, Some(off..off.saturating_add(len)))?,
                true,
            )
        } else if magic == Some(vmdk_format::cowd::COWD_MAGIC)
            || magic64 == Some(vmdk_format::sesparse::CONST_MAGIC)
        {
            return Err(Error::Unsupported {
                path: path.into(),
                what: "a data file has no descriptor".into(),
            });
        } else {
            (client.get_file(&url, None)?, false)
        };
        Ok(Self {
            descriptor: Descriptor::parse(&text).map_err(bad)?,
            embedded,
            url,
        })
    }

    /// Sets `pairs` in the DDB of `path` and writes the descriptor back.
    pub(super) fn set(
        client: &Client,
        vm: &MoRef,
        path: &str,
        pairs: &[(String, String)],
    ) -> Result<()> {
        let mut d = Self::read(client, vm, path)?;
        if d.embedded {
            return Err(Error::Unsupported {
                path: path.into(),
                what: "setting a DDB key of a monolithic sparse disk over the network (its descriptor is inside the data file)".into(),
            });
        }
        for (k, v) in pairs {
            d.descriptor.ddb_set(k, v);
        }
        let text = d.descriptor.to_text().map_err(|e| {
            Error::File(vmdk_file::Error::Format {
                path: path.into(),
                source: e,
            })
        })?;
        client.put_file(&d.url, text.as_bytes())?;
        Ok(())
    }
}
