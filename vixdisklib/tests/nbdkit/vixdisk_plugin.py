# An nbdkit Python plugin serving one disk through libvixDiskLib.so.8 with
# ctypes, the way a VDDK consumer would: InitEx, AllocateConnectParams,
# ConnectEx, Open, GetInfo, Read / Write, Flush, QueryAllocatedBlocks,
# Close, Disconnect, Exit. Used by vixdisklib/tests/c_abi.rs so that
# nbdinfo, nbdcopy and qemu-img read a disk served by our library.
#
#   nbdkit python vixdisk_plugin.py lib=/path/libvixDiskLib.so.8 \
#       file=/abs/disk.vmdk
import ctypes
from ctypes import (POINTER, Structure, byref, c_char, c_char_p, c_int,
                    c_size_t, c_uint16, c_uint32, c_uint64, c_void_p)

import nbdkit

API_VERSION = 2
SECTOR = 512
CHUNK = 128  # QueryAllocatedBlocks' minimum chunk, in sectors

lib_path = None
disk_path = None
lib = None


class Geometry(Structure):
    _fields_ = [("cylinders", c_uint32), ("heads", c_uint32),
                ("sectors", c_uint32)]


class Info(Structure):
    _fields_ = [("biosGeo", Geometry), ("physGeo", Geometry),
                ("capacity", c_uint64), ("adapterType", c_uint32),
                ("numLinks", c_int), ("parentFileNameHint", c_char_p),
                ("uuid", c_char_p), ("logicalSectorSize", c_uint32),
                ("physicalSectorSize", c_uint32)]


class Block(Structure):
    _fields_ = [("offset", c_uint64), ("length", c_uint64)]


def config(key, value):
    global lib_path, disk_path
    if key == "lib":
        lib_path = value
    elif key == "file":
        disk_path = value
    else:
        raise RuntimeError("unknown parameter " + key)


def check(err, what):
    if err != 0:
        text = lib.VixDiskLib_GetErrorText(err, None)
        msg = ctypes.string_at(text).decode(errors="replace")
        lib.VixDiskLib_FreeErrorText(text)
        raise RuntimeError("%s: %d %s" % (what, err, msg))


def config_complete():
    global lib
    if lib_path is None or disk_path is None:
        raise RuntimeError("lib= and file= are required")
    lib = ctypes.CDLL(lib_path, mode=ctypes.RTLD_GLOBAL)
    u64 = c_uint64
    lib.VixDiskLib_InitEx.restype = u64
    lib.VixDiskLib_InitEx.argtypes = [c_uint32, c_uint32, c_void_p, c_void_p,
                                      c_void_p, c_char_p, c_char_p]
    lib.VixDiskLib_GetErrorText.restype = c_void_p
    lib.VixDiskLib_GetErrorText.argtypes = [u64, c_char_p]
    lib.VixDiskLib_FreeErrorText.argtypes = [c_void_p]
    lib.VixDiskLib_AllocateConnectParams.restype = c_void_p
    lib.VixDiskLib_FreeConnectParams.argtypes = [c_void_p]
    lib.VixDiskLib_ConnectEx.restype = u64
    lib.VixDiskLib_ConnectEx.argtypes = [c_void_p, c_char, c_char_p, c_char_p,
                                         POINTER(c_void_p)]
    lib.VixDiskLib_Open.restype = u64
    lib.VixDiskLib_Open.argtypes = [c_void_p, c_char_p, c_uint32,
                                    POINTER(c_void_p)]
    lib.VixDiskLib_GetInfo.restype = u64
    lib.VixDiskLib_GetInfo.argtypes = [c_void_p, POINTER(POINTER(Info))]
    lib.VixDiskLib_FreeInfo.argtypes = [POINTER(Info)]
    for name in ("VixDiskLib_Read", "VixDiskLib_Write"):
        f = getattr(lib, name)
        f.restype = u64
        f.argtypes = [c_void_p, u64, u64, c_void_p]
    lib.VixDiskLib_Flush.restype = u64
    lib.VixDiskLib_Flush.argtypes = [c_void_p]
    lib.VixDiskLib_QueryAllocatedBlocks.restype = u64
    lib.VixDiskLib_QueryAllocatedBlocks.argtypes = [c_void_p, u64, u64, u64,
                                                    POINTER(c_void_p)]
    lib.VixDiskLib_FreeBlockList.restype = u64
    lib.VixDiskLib_FreeBlockList.argtypes = [c_void_p]
    lib.VixDiskLib_Close.restype = u64
    lib.VixDiskLib_Close.argtypes = [c_void_p]
    lib.VixDiskLib_Disconnect.restype = u64
    lib.VixDiskLib_Disconnect.argtypes = [c_void_p]
    check(lib.VixDiskLib_InitEx(6, 5, None, None, None, None, None), "InitEx")


def unload():
    if lib is not None:
        lib.VixDiskLib_Exit()


def thread_model():
    return nbdkit.THREAD_MODEL_SERIALIZE_REQUESTS


def open(readonly):
    params = lib.VixDiskLib_AllocateConnectParams()
    conn = c_void_p()
    check(lib.VixDiskLib_ConnectEx(params, b"\x01" if readonly else b"\x00",
                                   None, None, byref(conn)), "ConnectEx")
    handle = c_void_p()
    flags = 4 if readonly else 0
    check(lib.VixDiskLib_Open(conn, disk_path.encode(), flags, byref(handle)),
          "Open")
    info = POINTER(Info)()
    check(lib.VixDiskLib_GetInfo(handle, byref(info)), "GetInfo")
    capacity = info.contents.capacity
    lib.VixDiskLib_FreeInfo(info)
    return {"params": params, "conn": conn, "handle": handle,
            "sectors": capacity}


def close(h):
    check(lib.VixDiskLib_Close(h["handle"]), "Close")
    check(lib.VixDiskLib_Disconnect(h["conn"]), "Disconnect")
    lib.VixDiskLib_FreeConnectParams(h["params"])


def get_size(h):
    return h["sectors"] * SECTOR


def block_size(h):
    return (SECTOR, 64 * 1024, 0xffffffff)


def can_write(h):
    return True


def can_flush(h):
    return True


def can_extents(h):
    return True


def _read_sectors(h, first, count):
    buf = ctypes.create_string_buffer(count * SECTOR)
    check(lib.VixDiskLib_Read(h["handle"], first, count, buf), "Read")
    return buf.raw


def pread(h, buf, offset, flags):
    first = offset // SECTOR
    last = (offset + len(buf) + SECTOR - 1) // SECTOR
    data = _read_sectors(h, first, last - first)
    skip = offset - first * SECTOR
    buf[:] = data[skip:skip + len(buf)]


def pwrite(h, buf, offset, flags):
    buf = bytes(buf)
    first = offset // SECTOR
    last = (offset + len(buf) + SECTOR - 1) // SECTOR
    skip = offset - first * SECTOR
    if skip or len(buf) % SECTOR:
        data = bytearray(_read_sectors(h, first, last - first))
        data[skip:skip + len(buf)] = buf
        buf = bytes(data)
    src = ctypes.create_string_buffer(buf, len(buf))
    check(lib.VixDiskLib_Write(h["handle"], first, last - first, src),
          "Write")


def flush(h, flags):
    check(lib.VixDiskLib_Flush(h["handle"]), "Flush")


def extents(h, count, offset, flags):
    sectors = h["sectors"]
    start = offset // SECTOR // CHUNK * CHUNK
    end = min((offset + count + SECTOR - 1) // SECTOR, sectors)
    whole_end = end // CHUNK * CHUNK
    result = []
    pos = start * SECTOR
    if whole_end > start:
        out = c_void_p()
        check(lib.VixDiskLib_QueryAllocatedBlocks(
            h["handle"], start, whole_end - start, CHUNK, byref(out)),
            "QueryAllocatedBlocks")
        n = c_uint32.from_address(out.value).value
        blocks = (Block * n).from_address(out.value + 8)
        for b in blocks:
            off, length = b.offset * SECTOR, b.length * SECTOR
            if off > pos:
                result.append((pos, off - pos, nbdkit.EXTENT_HOLE |
                               nbdkit.EXTENT_ZERO))
            result.append((off, length, 0))
            pos = off + length
        check(lib.VixDiskLib_FreeBlockList(out), "FreeBlockList")
        if whole_end * SECTOR > pos:
            result.append((pos, whole_end * SECTOR - pos,
                           nbdkit.EXTENT_HOLE | nbdkit.EXTENT_ZERO))
            pos = whole_end * SECTOR
    if pos < sectors * SECTOR:
        # The tail shorter than a chunk: reported as data, never as zero.
        result.append((pos, sectors * SECTOR - pos, 0))
    return result
