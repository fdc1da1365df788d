//! Byte-level fixture builders, written from the format notes alone.

use std::collections::BTreeMap;

pub const SECTOR: usize = 512;

fn put_u32(v: &mut [u8], off: usize, x: u32) {
    v[off..off + 4].copy_from_slice(&x.to_le_bytes());
}
fn put_u64(v: &mut [u8], off: usize, x: u64) {
    v[off..off + 8].copy_from_slice(&x.to_le_bytes());
}
fn pad_to_sector(v: &mut Vec<u8>) {
    let n = v.len().div_ceil(SECTOR) * SECTOR;
    v.resize(n, 0);
}
fn sectors(v: &[u8]) -> u64 {
    (v.len() / SECTOR) as u64
}

/// Fields of a hosted sparse header.
#[derive(Clone, Debug)]
pub struct Header {
    pub version: u32,
    pub flags: u32,
    pub capacity: u64,
    pub grain: u64,
    pub desc_offset: u64,
    pub desc_size: u64,
    pub gtes: u32,
    pub rgd: u64,
    pub gd: u64,
    pub overhead: u64,
    pub unclean: u8,
    pub compress: u16,
}

impl Header {
    pub fn bytes(&self) -> Vec<u8> {
        let mut h = vec![0u8; SECTOR];
        h[0..4].copy_from_slice(b"KDMV");
        put_u32(&mut h, 4, self.version);
        put_u32(&mut h, 8, self.flags);
        put_u64(&mut h, 12, self.capacity);
        put_u64(&mut h, 20, self.grain);
        put_u64(&mut h, 28, self.desc_offset);
        put_u64(&mut h, 36, self.desc_size);
        put_u32(&mut h, 44, self.gtes);
        put_u64(&mut h, 48, self.rgd);
        put_u64(&mut h, 56, self.gd);
        put_u64(&mut h, 64, self.overhead);
        h[72] = self.unclean;
        h[73..77].copy_from_slice(b"\n \r\n");
        h[77..79].copy_from_slice(&self.compress.to_le_bytes());
        h
    }
}

/// What one grain of a built image holds.
#[derive(Clone, Debug)]
pub enum Grain {
    Data(Vec<u8>),
    /// GTE = 1 (zeroed grain).
    Zeroed,
}

/// Grains of `data` that are not all zero, by grain index.
pub fn grains_of(data: &[u8], grain_bytes: usize) -> BTreeMap<u64, Grain> {
    data.chunks(grain_bytes)
        .enumerate()
        .filter(|(_, c)| c.iter().any(|&b| b != 0))
        .map(|(i, c)| {
            let mut g = c.to_vec();
            g.resize(grain_bytes, 0);
            (i as u64, Grain::Data(g))
        })
        .collect()
}

pub fn embedded_descriptor(create_type: &str, sectors: u64, file: &str, signature: &str) -> String {
    format!(
        "{signature}\nversion=1\nCID=2468ace0\nparentCID=ffffffff\ncreateType=\"{create_type}\"\n\n# Extent description\nRW {sectors} SPARSE \"{file}\"\n\n# The Disk Data Base\n#DDB\n\nddb.virtualHWVersion = \"4\"\nddb.adapterType = \"lsilogic\"\n"
    )
}

/// A monolithicSparse-style image laid out like qemu's: header,
/// descriptor, RGD, RGTs, GD, GTs, grains.
pub struct Sparse {
    pub capacity: u64,
    pub grain: u64,
    pub version: u32,
    pub zeroed_flag: bool,
    pub redundant: bool,
    pub descriptor: Option<String>,
    pub grains: BTreeMap<u64, Grain>,
    /// GT indexes whose GD (and RGD) entry is left 0.
    pub empty_gts: Vec<u64>,
}

/// Where the pieces of a built sparse image ended up.
#[derive(Debug, Default)]
pub struct SparseMap {
    pub gd: u64,
    pub rgd: u64,
    pub gt: Vec<u64>,
    pub rgt: Vec<u64>,
    pub grain_sector: BTreeMap<u64, u64>,
    pub overhead: u64,
}

impl Sparse {
    pub fn new(capacity: u64, grains: BTreeMap<u64, Grain>) -> Self {
        Self {
            capacity,
            grain: 128,
            version: 1,
            zeroed_flag: false,
            redundant: true,
            descriptor: None,
            grains,
            empty_gts: vec![],
        }
    }

    pub fn build(&self) -> (Vec<u8>, SparseMap) {
        let gtes = 512u64;
        let n_gt = self.capacity.div_ceil(gtes * self.grain);
        let gd_sectors = (n_gt * 4).div_ceil(512);
        let gt_sectors = gtes * 4 / 512;
        let desc_sectors = 20u64;
        let mut m = SparseMap::default();
        let mut next = 1 + desc_sectors;
        if self.redundant {
            m.rgd = next;
            next += gd_sectors;
            for _ in 0..n_gt {
                m.rgt.push(next);
                next += gt_sectors;
            }
        }
        m.gd = next;
        next += gd_sectors;
        for _ in 0..n_gt {
            m.gt.push(next);
            next += gt_sectors;
        }
        let overhead = next.div_ceil(self.grain) * self.grain;
        m.overhead = overhead;
        let mut file = vec![0u8; overhead as usize * SECTOR];
        let mut flags = 1u32;
        if self.redundant {
            flags |= 2;
        }
        if self.zeroed_flag {
            flags |= 4;
        }
        let h = Header {
            version: self.version,
            flags,
            capacity: self.capacity,
            grain: self.grain,
            desc_offset: if self.descriptor.is_some() { 1 } else { 0 },
            desc_size: if self.descriptor.is_some() {
                desc_sectors
            } else {
                0
            },
            gtes: gtes as u32,
            rgd: if self.redundant { m.rgd } else { 0 },
            gd: m.gd,
            overhead,
            unclean: 0,
            compress: 0,
        };
        file[..SECTOR].copy_from_slice(&h.bytes());
        if let Some(d) = &self.descriptor {
            file[SECTOR..SECTOR + d.len()].copy_from_slice(d.as_bytes());
        }
        for gt in 0..n_gt {
            if self.empty_gts.contains(&gt) {
                continue;
            }
            put_u32(
                &mut file,
                (m.gd * 512 + gt * 4) as usize,
                m.gt[gt as usize] as u32,
            );
            if self.redundant {
                put_u32(
                    &mut file,
                    (m.rgd * 512 + gt * 4) as usize,
                    m.rgt[gt as usize] as u32,
                );
            }
        }
        let gb = (self.grain * 512) as usize;
        for (&g, content) in &self.grains {
            let gt = g / gtes;
            let entry_off = |table: u64| (table * 512 + (g % gtes) * 4) as usize;
            let value = match content {
                Grain::Zeroed => 1u32,
                Grain::Data(bytes) => {
                    let sector = sectors(&file);
                    let mut b = bytes.clone();
                    b.resize(gb, 0);
                    file.extend_from_slice(&b);
                    m.grain_sector.insert(g, sector);
                    sector as u32
                }
            };
            if self.empty_gts.contains(&gt) {
                continue;
            }
            put_u32(&mut file, entry_off(m.gt[gt as usize]), value);
            if self.redundant {
                put_u32(&mut file, entry_off(m.rgt[gt as usize]), value);
            }
        }
        (file, m)
    }
}

fn zlib(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn marker(val: u64, kind: u32) -> Vec<u8> {
    let mut m = vec![0u8; SECTOR];
    put_u64(&mut m, 0, val);
    put_u32(&mut m, 12, kind);
    m
}

fn grain_record(lba: u64, data: &[u8]) -> Vec<u8> {
    let z = zlib(data);
    let mut v = Vec::with_capacity(z.len() + 12);
    v.extend_from_slice(&lba.to_le_bytes());
    v.extend_from_slice(&(z.len() as u32).to_le_bytes());
    v.extend_from_slice(&z);
    pad_to_sector(&mut v);
    v
}

/// Stream layouts real writers produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamLayout {
    /// VMDKstream: `GD_AT_END`, GT markers, GD marker, footer, EOS.
    GdAtEnd,
    /// open-vmdk (VMware): GD at sector 21, grains from the overhead,
    /// GT markers after their grains, EOS; no RGD, no footer.
    VmwareGdAtFront,
}

pub struct Stream {
    pub layout: StreamLayout,
    pub capacity: u64,
    pub grain: u64,
    pub signature: &'static str,
    pub extent_name: &'static str,
    /// Insert an undocumented type-4 marker (with one sector of payload)
    /// after the first grain.
    pub type4_marker: bool,
}

impl Stream {
    pub fn build(&self, data: &[u8]) -> Vec<u8> {
        let gtes = 512u64;
        let gb = (self.grain * 512) as usize;
        let n_gt = self.capacity.div_ceil(gtes * self.grain);
        let gd_sectors = (n_gt * 4).div_ceil(512).max(1);
        let desc = embedded_descriptor(
            "streamOptimized",
            self.capacity,
            self.extent_name,
            self.signature,
        );
        let desc_sectors = 20u64;
        let gd_front = 1 + desc_sectors;
        let overhead = match self.layout {
            StreamLayout::GdAtEnd => 1 + desc_sectors,
            StreamLayout::VmwareGdAtFront => gd_front + gd_sectors,
        };
        let mut header = Header {
            version: 3,
            flags: 1 | (1 << 16) | (1 << 17),
            capacity: self.capacity,
            grain: self.grain,
            desc_offset: 1,
            desc_size: desc_sectors,
            gtes: gtes as u32,
            rgd: 0,
            gd: if self.layout == StreamLayout::GdAtEnd {
                u64::MAX
            } else {
                gd_front
            },
            overhead,
            unclean: 0,
            compress: 1,
        };
        let mut file = vec![0u8; overhead as usize * SECTOR];
        file[..SECTOR].copy_from_slice(&header.bytes());
        file[SECTOR..SECTOR + desc.len()].copy_from_slice(desc.as_bytes());
        let mut gd = vec![0u32; n_gt as usize];
        let grains = grains_of(data, gb);
        let mut inserted_type4 = false;
        for gt in 0..n_gt {
            let mut table = vec![0u32; gtes as usize];
            let mut any = false;
            for (&g, content) in grains.range(gt * gtes..(gt + 1) * gtes) {
                let Grain::Data(bytes) = content else {
                    continue;
                };
                let lba = g * self.grain;
                // The last grain may be short: compress only what the disk holds.
                let len = ((self.capacity * 512) as usize - g as usize * gb).min(gb);
                table[(g % gtes) as usize] = sectors(&file) as u32;
                file.extend(grain_record(lba, &bytes[..len]));
                any = true;
                if self.type4_marker && !inserted_type4 {
                    file.extend(marker(1, 4));
                    file.extend(vec![0xA5u8; SECTOR]);
                    inserted_type4 = true;
                }
            }
            if any {
                file.extend(marker(gtes * 4 / 512, 1));
                gd[gt as usize] = sectors(&file) as u32;
                for e in &table {
                    file.extend_from_slice(&e.to_le_bytes());
                }
                pad_to_sector(&mut file);
            }
        }
        let gd_bytes: Vec<u8> = gd.iter().flat_map(|e| e.to_le_bytes()).collect();
        match self.layout {
            StreamLayout::GdAtEnd => {
                file.extend(marker(gd_sectors, 2));
                let gd_at = sectors(&file);
                file.extend_from_slice(&gd_bytes);
                pad_to_sector(&mut file);
                file.extend(marker(1, 3));
                header.gd = gd_at;
                file.extend(header.bytes());
                file.extend(marker(0, 0));
            }
            StreamLayout::VmwareGdAtFront => {
                let at = gd_front as usize * SECTOR;
                file[at..at + gd_bytes.len()].copy_from_slice(&gd_bytes);
                file.extend(marker(0, 0));
            }
        }
        file
    }
}

/// A COWD (vmfsSparse) file with grains of `grain` sectors.
pub fn cowd(capacity: u64, grain: u64, grains: &BTreeMap<u64, Vec<u8>>) -> Vec<u8> {
    let gtes = 4096u64;
    let n_gt = capacity.div_ceil(gtes * grain);
    let gd_sectors = (n_gt * 4).div_ceil(512);
    let mut file = vec![0u8; 2048];
    file[0..4].copy_from_slice(b"COWD");
    put_u32(&mut file, 4, 1);
    put_u32(&mut file, 8, 3);
    put_u32(&mut file, 12, capacity as u32);
    put_u32(&mut file, 16, grain as u32);
    put_u32(&mut file, 20, 4);
    put_u32(&mut file, 24, n_gt as u32);
    file.resize((4 + gd_sectors) as usize * SECTOR, 0);
    let mut gt_at = Vec::new();
    for gt in 0..n_gt {
        let at = sectors(&file);
        gt_at.push(at);
        put_u32(&mut file, (4 * 512 + gt * 4) as usize, at as u32);
        file.resize(file.len() + (gtes * 4) as usize, 0);
    }
    for (&g, bytes) in grains {
        let at = sectors(&file);
        let mut b = bytes.clone();
        b.resize((grain * 512) as usize, 0);
        file.extend_from_slice(&b);
        put_u32(
            &mut file,
            (gt_at[(g / gtes) as usize] * 512 + (g % gtes) * 4) as usize,
            at as u32,
        );
    }
    let free = sectors(&file) as u32;
    put_u32(&mut file, 28, free);
    file
}

/// What one seSparse grain (4 KiB) holds.
#[derive(Clone, Debug)]
pub enum SeGrain {
    Data(Vec<u8>),
    Zero,
    Unmapped,
}

/// A seSparse file. `dirty` sets `replay_journal`.
pub fn sesparse(capacity: u64, grains: &BTreeMap<u64, SeGrain>, dirty: bool) -> Vec<u8> {
    let gtes = 4096u64;
    let n_gt = capacity.div_ceil(gtes * 8);
    let gd_sectors = (n_gt * 8).div_ceil(512);
    let gt_area = n_gt * 64;
    let grains_off = 2 + gd_sectors + gt_area;
    let data_grains = grains
        .values()
        .filter(|g| matches!(g, SeGrain::Data(_)))
        .count() as u64;
    let mut file = vec![0u8; (grains_off + data_grains * 8) as usize * SECTOR];
    let h = &mut file[..SECTOR];
    put_u64(h, 0, 0xCAFE_BABE);
    put_u64(h, 8, 0x0000_0002_0000_0001);
    put_u64(h, 16, capacity);
    put_u64(h, 24, 8);
    put_u64(h, 32, 64);
    put_u64(h, 80, 1); // volatile header
    put_u64(h, 88, 1);
    put_u64(h, 128, 2); // grain dir
    put_u64(h, 136, gd_sectors);
    put_u64(h, 144, 2 + gd_sectors); // grain tables
    put_u64(h, 152, gt_area);
    put_u64(h, 192, grains_off);
    put_u64(h, 200, data_grains * 8);
    put_u64(&mut file, 512, 0xCAFE_CAFE);
    put_u64(&mut file, 512 + 24, u64::from(dirty));
    for gt in 0..n_gt {
        put_u64(
            &mut file,
            (2 * 512 + gt * 8) as usize,
            0x1000_0000_0000_0000 | gt,
        );
    }
    // Clusters are handed out in reverse so that the 12-bit split of the
    // cluster number is exercised by more than cluster 0.
    let mut cluster = data_grains;
    for (&g, content) in grains {
        let entry = match content {
            SeGrain::Zero => 0x2000_0000_0000_0000u64,
            SeGrain::Unmapped => 0x1000_0000_0000_0000u64,
            SeGrain::Data(bytes) => {
                cluster -= 1;
                let at = ((grains_off + cluster * 8) * 512) as usize;
                file[at..at + 4096].copy_from_slice(&bytes[..4096]);
                0x3000_0000_0000_0000 | ((cluster & 0xfff) << 48) | (cluster >> 12)
            }
        };
        let gt = g / gtes;
        put_u64(
            &mut file,
            (((2 + gd_sectors + gt * 64) * 512) + (g % gtes) * 8) as usize,
            entry,
        );
    }
    file
}
