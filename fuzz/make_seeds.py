#!/usr/bin/env python3
"""Writes the small seed images of the fuzz corpus (fuzz/corpus/*/seed-*).

Tiny but valid images so the fuzzer starts past the magic checks: 4 KiB
grains, 128-entry tables, a few sectors of capacity.
"""
import os
import struct
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))


def out(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def header(version, flags, capacity, grain, desc_off, desc_size, gtes, rgd, gd, overhead, compress=0):
    h = bytearray(512)
    struct.pack_into("<4sIIQQQQIQQQB4sH", h, 0, b"KDMV", version, flags, capacity, grain,
                     desc_off, desc_size, gtes, rgd, gd, overhead, 0, b"\n \r\n", compress)
    return h


DESC = (b"# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n"
        b"createType=\"monolithicSparse\"\n\nRW 2048 SPARSE \"s.vmdk\"\n\nddb.adapterType = \"ide\"\n")


def sparse(zeroed=False):
    # capacity 2048 sectors, grain 8, 128 GTEs -> 2 tables. Sectors: 1-2
    # descriptor, 3 RGD, 4 GD, 5-6 RGTs, 7-8 GTs, grains from 16.
    f = bytearray(header(2 if zeroed else 1, 3 | (4 if zeroed else 0), 2048, 8, 1, 2, 128, 3, 4, 16))
    f += DESC.ljust(1024, b"\0")
    f += bytearray(512 * 13)
    struct.pack_into("<II", f, 3 * 512, 5, 6)
    struct.pack_into("<II", f, 4 * 512, 7, 8)
    for i, fill in [(0, 0x11), (3, 0x22), (130, 0x33)] + ([(5, None)] if zeroed else []):
        if fill is None:
            sector = 1
        else:
            sector = len(f) // 512
            f += bytes([fill]) * 4096
        for table in (5, 7):
            struct.pack_into("<I", f, (table + i // 128) * 512 + (i % 128) * 4, sector)
    return bytes(f)


def marker(val, typ):
    m = bytearray(512)
    struct.pack_into("<QII", m, 0, val, 0, typ)
    return m


def stream():
    f = bytearray(header(3, 0x30001, 2048, 8, 1, 2, 128, 0, 0xFFFFFFFFFFFFFFFF, 3, 1))
    f += DESC.replace(b"monolithicSparse", b"streamOptimized").ljust(1024, b"\0")
    gt = [0] * 128
    for i, fill in [(0, 0x11), (2, 0x44)]:
        gt[i] = len(f) // 512
        z = zlib.compress(bytes([fill]) * 4096)
        rec = struct.pack("<QI", i * 8, len(z)) + z
        f += rec.ljust((len(rec) + 511) // 512 * 512, b"\0")
    f += marker(1, 1)
    gt_at = len(f) // 512
    f += struct.pack("<128I", *gt)
    f += marker(1, 2)
    gd_at = len(f) // 512
    f += struct.pack("<II", gt_at, 0).ljust(512, b"\0")
    f += marker(1, 3)
    f += header(3, 0x30001, 2048, 8, 1, 2, 128, 0, gd_at, 3, 1)
    f += marker(0, 0)
    return bytes(f)


def cowd():
    f = bytearray(2048)
    struct.pack_into("<4sIIIIIII", f, 0, b"COWD", 1, 3, 64, 1, 4, 1, 0)
    f += bytearray(512)
    struct.pack_into("<I", f, 2048, 5)
    f += bytearray(4096 * 4)
    for i in [0, 7]:
        sector = len(f) // 512
        f += bytes([0x55 + i]) * 512
        struct.pack_into("<I", f, 5 * 512 + i * 4, sector)
    return bytes(f)


def sesparse():
    f = bytearray(512 * 2 + 512 + 64 * 512 + 2 * 4096)
    struct.pack_into("<QQQQQQ", f, 0, 0xCAFEBABE, 0x200000001, 256, 8, 64, 0)
    struct.pack_into("<QQ", f, 80, 1, 1)
    struct.pack_into("<QQQQ", f, 128, 2, 1, 3, 64)
    struct.pack_into("<QQ", f, 192, 67, 16)
    struct.pack_into("<Q", f, 512, 0xCAFECAFE)
    struct.pack_into("<Q", f, 1024, 0x1000000000000000)
    entries = [0x3000000000000000, 0x2000000000000000, 0x1000000000000000, 0x3001000000000000]
    for i, e in enumerate(entries):
        struct.pack_into("<Q", f, 3 * 512 + i * 8, e)
    f[67 * 512:67 * 512 + 4096] = b"\x66" * 4096
    f[75 * 512:75 * 512 + 4096] = b"\x77" * 4096
    return bytes(f)


out("vmdk_sparse", "monolithic", sparse())
out("vmdk_sparse", "zeroed", sparse(True))
out("vmdk_sparse", "stream", stream())
out("vmdk_stream_markers", "stream-body", stream()[3 * 512:])
out("vmdk_cowd", "cowd", cowd()[4:])
out("vmdk_sesparse", "sesparse", sesparse()[8:])
out("vmdk_descriptor", "plain", DESC)
out("vmdk_descriptor", "crlf", DESC.replace(b"\n", b"\r\n"))
out("vmdk_descriptor", "split",
    b"\xef\xbb\xbf#Disk Descriptor File\nversion = 1\nencoding=\"windows-1252\"\nCID=fffffffe\n"
    b"parentCID=12345678\nparentFileNameHint=\"base \xe9.vmdk\"\ncreateType=\"twoGbMaxExtentFlat\"\n"
    b"RW 100 FLAT \"a b-f001.vmdk\" 0\nRDONLY 100 VMFSRAW \"/dev/x\" 0 part \"dev id\"\nNOACCESS 0 ZERO\n"
    b"#DDB\nddb.geometry.cylinders = \"16\"\n\0\0\0")


# NFC: the documented VDDK 8 sequence (see nfc-proto/tests/golden.rs).
def classic(kind, *fields, at=4, raw=b""):
    f = bytearray(264)
    struct.pack_into("<I", f, 0, kind)
    if raw:
        f[at:at + len(raw)] = raw
    for i, v in enumerate(fields):
        struct.pack_into("<I", f, at + 4 * i, v)
    return bytes(f)


def aio(kind, op, fixed, extra=b""):
    return struct.pack("<IIII", 0xA100DA7A, kind, len(fixed), op) + fixed + extra


H = 0x0000000100000007
HANDSHAKE = (classic(43, raw=b"PlainText") + classic(33) + classic(51, 11) + classic(54, 4, 7)
             + b"vddknbdmode" + classic(55, 3) + classic(52))
PATH = b"[datastore0] vm1/vm1.vmdk"
REQUESTS = (aio(2, 0, struct.pack("<IIII", 0, 65536, 4, 0)) + aio(9, 1, bytes(12))
            + aio(22, 2, struct.pack("<I", 1))
            + aio(4, 3, struct.pack("<I12xII36x", len(PATH), 2, 0x1E), PATH)
            + aio(11, 4, struct.pack("<QII", H, 11, 0), b"adapterType")
            + aio(7, 5, struct.pack("<QQQIIIII", H, 1, 512, 512, 0, 512, 512, 0))
            + aio(7, 6, struct.pack("<QQQIIIII", H, 0, 0, 512, 0, 512, 512, 0), b"\x5a" * 512)
            + aio(13, 7, struct.pack("<QQQQQQ", H, 0, 1 << 20, 0, 16, 0))
            + aio(5, 8, struct.pack("<Q", H)) + aio(3, 9, bytes(4)) + classic(4))
# The replies to nfc_client's requests (ops 0-10), read data kept small.
REPLIES = (aio(2, 0, bytes(16)) + aio(9, 1, struct.pack("<III", 1675000, 1675000, 1))
           + aio(22, 2, struct.pack("<I", 1))
           + aio(4, 3, struct.pack("<8xQII4xQIIII8x", 1, 2, 0x1E, 10 << 30, 512, 1305, 255, 63))
           + aio(7, 5, struct.pack("<QQQIIIII", 0, 1, 4096, 1000, 0, 1000, 1000, 0), b"\xab" * 1000)
           + aio(7, 4, struct.pack("<QQQIIIII", 0, 1, 0, 200000, 0, 512, 512, 0), b"\xcd" * 512)
           + aio(7, 6, struct.pack("<QQQIIIII", 0, 0, 0, 70000, 0, 70000, 0, 0))
           + aio(11, 7, struct.pack("<12xI", 8), b"lsilogic")
           + aio(13, 8, struct.pack("<QQQQQQ", 1, 0, 1 << 20, 0, 64, 0), bytes(8))
           + aio(5, 9, struct.pack("<Q", 1)) + aio(3, 10, bytes(4)))
out("nfc_classic", "handshake", HANDSHAKE)
out("nfc_classic", "server-replies", classic(36, 1, at=16) + classic(51, 11) + classic(52))
out("nfc_server", "session", HANDSHAKE + REQUESTS)
out("nfc_server", "aio", REQUESTS)
out("nfc_client", "replies", REPLIES)


# NBD (nbd_server): the first byte selects the export and TLS policy
# (bit 0 writable, bits 4-5 TLS: 0 off, 1 optional, 2 required, bits 6-7
# the feeding split); the rest are client bytes (doc/proto.md layouts).
def nbd_opt(option, data=b""):
    return b"IHAVEOPT" + struct.pack(">II", option, len(data)) + data


def nbd_req(flags, cmd, cookie, offset, length):
    return struct.pack(">IHHQQI", 0x25609513, flags, cmd, cookie, offset, length)


NBD_GO = struct.pack(">I", 4) + b"disk" + struct.pack(">HH", 1, 1)
NBD_META = struct.pack(">I", 4) + b"disk" + struct.pack(">II", 1, 15) + b"base:allocation"
out("nbd_server", "go-write-read-status",
    bytes([0x01]) + struct.pack(">I", 3) + nbd_opt(8) + nbd_opt(3) + nbd_opt(10, NBD_META)
    + nbd_opt(7, NBD_GO) + nbd_req(1, 1, 1, 4096, 4) + b"abcd" + nbd_req(0, 0, 2, 4096, 4)
    + nbd_req(0, 7, 3, 0, 65536) + nbd_req(0, 6, 4, 0, 512) + nbd_req(0, 3, 5, 0, 0)
    + nbd_req(0, 2, 6, 0, 0))
out("nbd_server", "export-name-simple",
    bytes([0xC1]) + struct.pack(">I", 1) + nbd_opt(1, b"disk") + nbd_req(0, 0, 1, 0, 512)
    + nbd_req(0, 4, 2, 0, 512) + nbd_req(0, 1, 3, 0, 1 << 20))
out("nbd_server", "tls-required-starttls",
    bytes([0x21]) + struct.pack(">I", 3) + nbd_opt(6, NBD_GO) + nbd_opt(5) + nbd_opt(6, NBD_GO)
    + nbd_opt(2))
