//! Member names: the sanitizing rules of unpack (see its module docs) and the helpers that turn paths into
//! components and back.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Component, Path, PathBuf};

/// Why a member name cannot be used.
pub(super) enum NameError {
    DotDot,
    Nul,
}

/// Sanitize a member name: returns (whether a leading `/` was removed, components after stripping), or `None`
/// components when the name has fewer than `strip` components (GNU tar skips those). A directory whose name has
/// exactly `strip` components maps to the destination root (empty component list).
pub(super) fn sanitize(
    raw: &[u8],
    strip: usize,
) -> Result<(bool, Option<Vec<OsString>>), NameError> {
    if raw.contains(&0) {
        return Err(NameError::Nul);
    }
    let had_slash = raw.first() == Some(&b'/');
    let comps: Vec<&[u8]> = raw
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty())
        .collect();
    if comps.iter().any(|c| *c == b"..") {
        return Err(NameError::DotDot);
    }
    if comps.len() < strip {
        return Ok((had_slash, None));
    }
    let kept = comps[strip..]
        .iter()
        .filter(|c| **c != b".")
        .map(|c| OsString::from_vec(c.to_vec()))
        .collect();
    Ok((had_slash, Some(kept)))
}

pub(super) fn filter_components(p: &Path) -> Vec<OsString> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            _ => None,
        })
        .collect()
}

pub(super) fn join(comps: &[OsString]) -> String {
    if comps.is_empty() {
        return ".".into();
    }
    let mut p = PathBuf::new();
    for c in comps {
        p.push(c);
    }
    p.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn comps(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn sanitize_rules() {
        let ok = |raw: &str, strip| match sanitize(raw.as_bytes(), strip) {
            Ok(v) => v,
            Err(_) => panic!("{raw} rejected"),
        };
        assert_eq!(ok("a/b", 0), (false, Some(comps(&["a", "b"]))));
        assert_eq!(ok("./a//b/", 0), (false, Some(comps(&["a", "b"]))));
        assert_eq!(ok("/etc/x", 0), (true, Some(comps(&["etc", "x"]))));
        assert_eq!(ok("///etc/x", 0), (true, Some(comps(&["etc", "x"]))));
        // GNU tar counts `.` as a component when stripping.
        assert_eq!(ok("./a/b", 1), (false, Some(comps(&["a", "b"]))));
        assert_eq!(
            ok("/backup/vol/data/x", 2),
            (true, Some(comps(&["data", "x"])))
        );
        assert_eq!(ok("/backup/vol/", 2), (true, Some(comps(&[]))));
        assert_eq!(ok("/backup/", 2), (true, None));
        assert!(matches!(sanitize(b"../x", 0), Err(NameError::DotDot)));
        assert!(matches!(sanitize(b"a/../../x", 0), Err(NameError::DotDot)));
        assert!(matches!(sanitize(b"x/../y", 1), Err(NameError::DotDot)));
        assert!(matches!(sanitize(b"a\0b", 0), Err(NameError::Nul)));
    }
}
