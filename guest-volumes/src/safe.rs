//! Pure checks for turning guest names into host paths safely.

use crate::Error;

/// A guest file name that is safe to use as one host path component.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PathComponent(Vec<u8>);

impl PathComponent {
    /// The name's bytes (never empty, no `/`, no NUL, not `.` or `..`).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The name as an `OsStr` (Unix hosts keep the bytes as they are).
    #[cfg(unix)]
    pub fn as_os_str(&self) -> &std::ffi::OsStr {
        use std::os::unix::ffi::OsStrExt;
        std::ffi::OsStr::from_bytes(&self.0)
    }
}

/// Checks that `guest_name` can be joined to a host directory as one
/// component: rejects the empty name, `.`, `..`, and names containing
/// `/` or NUL.
///
/// ```
/// use guest_volumes::safe_relative_path;
/// assert_eq!(safe_relative_path(b"notes.txt").unwrap().as_bytes(), b"notes.txt");
/// assert!(safe_relative_path(b"..").is_err());
/// assert!(safe_relative_path(b"a/b").is_err());
/// ```
pub fn safe_relative_path(guest_name: &[u8]) -> Result<PathComponent, Error> {
    let lossy = || String::from_utf8_lossy(guest_name).into_owned();
    if guest_name.is_empty() || guest_name == b"." || guest_name == b".." {
        return Err(Error::UnsafeName(lossy()));
    }
    if guest_name.iter().any(|&b| b == b'/' || b == 0) {
        return Err(Error::UnsafeName(lossy()));
    }
    Ok(PathComponent(guest_name.to_vec()))
}

/// Whether a symlink found `base_depth` directories below the extraction
/// root, pointing at `target`, resolves inside that root. Absolute and
/// empty targets are never contained; `..` may not climb above the root,
/// and may only lead the target: after a name, `..` would climb from
/// wherever that name resolves, and a name may itself be a link (`a ->
/// .` beside `b -> a/..` leaves the root). With only leading `..`s, each
/// link climbs real directories, then descends through names that are
/// themselves contained, so every link, alone or chained, stays inside.
///
/// ```
/// use guest_volumes::symlink_target_is_contained;
/// assert!(symlink_target_is_contained(1, b"../etc/passwd"));
/// assert!(!symlink_target_is_contained(0, b"../etc/passwd"));
/// assert!(!symlink_target_is_contained(5, b"/etc/passwd"));
/// ```
pub fn symlink_target_is_contained(base_depth: usize, target: &[u8]) -> bool {
    if target.is_empty() || target.first() == Some(&b'/') || target.contains(&0) {
        return false;
    }
    let mut depth = base_depth;
    let mut named = false;
    for part in target.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." if named => return false,
            b".." => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return false,
            },
            _ => named = true,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for bad in [&b""[..], b".", b"..", b"a/b", b"/", b"a\0b", b"../x"] {
            assert!(safe_relative_path(bad).is_err(), "{bad:?}");
        }
        for good in [
            &b"..."[..],
            b".hidden",
            b"a..b",
            b"\xff\xfe",
            b"name with space",
            b"\\",
        ] {
            assert_eq!(safe_relative_path(good).unwrap().as_bytes(), good);
        }
    }

    #[test]
    fn symlinks() {
        assert!(!symlink_target_is_contained(0, b"a/b/../c"));
        // `a -> .` beside `b -> a/..`: `a/..` leaves the root.
        assert!(symlink_target_is_contained(0, b"."));
        assert!(!symlink_target_is_contained(0, b"a/.."));
        assert!(!symlink_target_is_contained(3, b"a/../x"));
        assert!(symlink_target_is_contained(2, b"../../a/b"));
        assert!(symlink_target_is_contained(0, b"./a"));
        assert!(!symlink_target_is_contained(0, b".."));
        assert!(!symlink_target_is_contained(0, b"a/../../b"));
        assert!(symlink_target_is_contained(2, b"../../x"));
        assert!(!symlink_target_is_contained(2, b"../../../x"));
        // Going down then up past the start is judged step by step.
        assert!(!symlink_target_is_contained(0, b"../a/.."));
        assert!(!symlink_target_is_contained(3, b"/abs"));
        assert!(!symlink_target_is_contained(3, b""));
    }
}
