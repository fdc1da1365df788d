//! vSphere change ids: `"52 1a … 70/7"` (a UUID as hex pairs, `/`, a
//! sequence number), or `*` (everything allocated).
//!
//! ```
//! use cbt::ChangeId;
//! let a: ChangeId = "52 b4 c6 4a 1c 52 0c 6a-2d 32 fa 1b 17 b4 a7 c4/12".parse()?;
//! let b: ChangeId = "52 b4 c6 4a 1c 52 0c 6a-2d 32 fa 1b 17 b4 a7 c4/30".parse()?;
//! assert!(a.same_epoch(&b) && a < b);
//! assert_eq!(a.to_string(), "52 b4 c6 4a 1c 52 0c 6a-2d 32 fa 1b 17 b4 a7 c4/12");
//! assert!("52 b4/x".parse::<ChangeId>().is_err());
//! # Ok::<(), cbt::Error>(())
//! ```

use alloc::string::{String, ToString};
use core::cmp::Ordering;
use core::fmt;
use core::str::FromStr;

use crate::Error;

/// A change id. Equality and order look at the parsed UUID and sequence;
/// the text is kept verbatim so it can be sent back to the host exactly
/// as received.
#[derive(Clone, Debug)]
pub enum ChangeId {
    /// `*`: not a point in time; asks for allocated areas.
    All,
    /// A point in time of one CBT epoch.
    At {
        /// The epoch: a new UUID whenever CBT is reset.
        uuid: [u8; 16],
        /// Increases at every snapshot.
        sequence: u64,
        /// The text as received.
        text: String,
    },
}

impl ChangeId {
    /// Builds the canonical vSphere spelling.
    pub fn new(uuid: [u8; 16], sequence: u64) -> Self {
        let mut text = String::with_capacity(60);
        for (i, b) in uuid.iter().enumerate() {
            if i > 0 {
                text.push(if i == 8 { '-' } else { ' ' });
            }
            let _ = fmt::write(&mut text, format_args!("{b:02x}"));
        }
        let _ = fmt::write(&mut text, format_args!("/{sequence}"));
        ChangeId::At {
            uuid,
            sequence,
            text,
        }
    }

    /// The epoch UUID, `None` for `*`.
    pub fn uuid(&self) -> Option<[u8; 16]> {
        match self {
            ChangeId::All => None,
            ChangeId::At { uuid, .. } => Some(*uuid),
        }
    }

    /// The sequence number, `None` for `*`.
    pub fn sequence(&self) -> Option<u64> {
        match self {
            ChangeId::All => None,
            ChangeId::At { sequence, .. } => Some(*sequence),
        }
    }

    /// True when both are points in time of the same epoch (same UUID).
    pub fn same_epoch(&self, other: &Self) -> bool {
        matches!((self.uuid(), other.uuid()), (Some(a), Some(b)) if a == b)
    }

    /// The text to send to a host.
    pub fn as_str(&self) -> &str {
        match self {
            ChangeId::All => "*",
            ChangeId::At { text, .. } => text,
        }
    }
}

impl PartialEq for ChangeId {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (ChangeId::All, ChangeId::All) => true,
            (
                ChangeId::At {
                    uuid: a,
                    sequence: x,
                    ..
                },
                ChangeId::At {
                    uuid: b,
                    sequence: y,
                    ..
                },
            ) => a == b && x == y,
            _ => false,
        }
    }
}

impl Eq for ChangeId {}

impl PartialOrd for ChangeId {
    /// Ordered only within one epoch; ids of different epochs (and `*`)
    /// are incomparable.
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        match (self, other) {
            (ChangeId::All, ChangeId::All) => Some(Ordering::Equal),
            (
                ChangeId::At {
                    uuid: a,
                    sequence: x,
                    ..
                },
                ChangeId::At {
                    uuid: b,
                    sequence: y,
                    ..
                },
            ) if a == b => Some(x.cmp(y)),
            _ => None,
        }
    }
}

impl fmt::Display for ChangeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ChangeId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let t = s.trim();
        if t == "*" {
            return Ok(ChangeId::All);
        }
        if t.len() > 128 {
            return Err(Error::ChangeIdTooLong);
        }
        let (uuid_part, seq) = t.rsplit_once('/').ok_or(Error::ChangeIdNoSequence)?;
        if seq.is_empty() || seq.len() > 20 || !seq.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Error::ChangeIdBadSequence);
        }
        let sequence = seq.parse().map_err(|_| Error::ChangeIdBadSequence)?;
        let mut uuid = [0u8; 16];
        let mut n = 0;
        let mut dashes = 0;
        let bytes = uuid_part.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b' ' => i += 1,
                b'-' => {
                    dashes += 1;
                    i += 1;
                }
                _ => {
                    let pair = bytes.get(i..i + 2).ok_or(Error::ChangeIdBadUuid)?;
                    let hex = core::str::from_utf8(pair).map_err(|_| Error::ChangeIdBadUuid)?;
                    if n == 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                        return Err(Error::ChangeIdBadUuid);
                    }
                    uuid[n] = u8::from_str_radix(hex, 16).map_err(|_| Error::ChangeIdBadUuid)?;
                    n += 1;
                    i += 2;
                    if let Some(&next) = bytes.get(i) {
                        if next != b' ' && next != b'-' {
                            return Err(Error::ChangeIdBadUuid);
                        }
                    }
                }
            }
        }
        if n != 16 || dashes > 1 {
            return Err(Error::ChangeIdBadUuid);
        }
        Ok(ChangeId::At {
            uuid,
            sequence,
            text: t.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_print_compare() {
        let a: ChangeId = "52 1a 2b 3c 4d 5e 6f 70 81 92 a3 b4 c5 d6 e7 f8/7"
            .parse()
            .unwrap();
        assert_eq!(a.sequence(), Some(7));
        assert_eq!(a.uuid().unwrap()[0], 0x52);
        let canon = ChangeId::new(a.uuid().unwrap(), 7);
        assert_eq!(canon, a);
        assert_eq!(
            canon.to_string(),
            "52 1a 2b 3c 4d 5e 6f 70-81 92 a3 b4 c5 d6 e7 f8/7"
        );
        assert_eq!(canon.to_string().parse::<ChangeId>().unwrap(), a);
        let b = ChangeId::new([1; 16], 9);
        assert!(!a.same_epoch(&b));
        assert_eq!(a.partial_cmp(&b), None);
        assert_eq!("*".parse::<ChangeId>().unwrap(), ChangeId::All);
        assert!(!ChangeId::All.same_epoch(&ChangeId::All));
        for bad in [
            "",
            "/",
            "52/1",
            "52 1a/x",
            "52 1a 2b 3c 4d 5e 6f 70 81 92 a3 b4 c5 d6 e7/1",
            "52 1a 2b 3c 4d 5e 6f 70 81 92 a3 b4 c5 d6 e7 f8 00/1",
            "521a 2b 3c 4d 5e 6f 70 81 92 a3 b4 c5 d6 e7 f8/1",
            "5g 1a 2b 3c 4d 5e 6f 70 81 92 a3 b4 c5 d6 e7 f8/1",
            "52-1a-2b 3c 4d 5e 6f 70 81 92 a3 b4 c5 d6 e7 f8/1",
            "52 1a 2b 3c 4d 5e 6f 70 81 92 a3 b4 c5 d6 e7 f8/99999999999999999999999",
            "52 1a 2b 3c 4d 5e 6f 70 81 92 a3 b4 c5 d6 e7 f8",
        ] {
            assert!(bad.parse::<ChangeId>().is_err(), "{bad:?}");
        }
    }
}
