//! Member names: the sanitizing rules of unpack (see its module docs), which entries a restore writes
//! ([`Selection`]: `--strip` and `--path`, shared by unpack and the dry-run listing, so the listing is what a restore
//! writes), and the helpers that turn paths into components and back.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Component, Path, PathBuf};

/// Why a member name cannot be used.
pub(super) enum NameError {
    DotDot,
    Nul,
    /// A non-directory whose name is empty (only a directory can stand for the destination itself).
    Empty,
}

impl NameError {
    /// The reason, as an [`super::ArchiveError::Unsafe`] states it.
    pub(super) fn reason(&self) -> &'static str {
        match self {
            NameError::DotDot => "the path contains `..`",
            NameError::Nul => "the path contains a NUL byte",
            NameError::Empty => "the path is empty",
        }
    }
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

/// Which members a restore writes, and where: `strip` leading components removed, only those at or below one of
/// the `paths` (none: all).
pub(super) struct Selection {
    strip: usize,
    filter: Vec<Vec<OsString>>,
}

impl Selection {
    pub(super) fn new(strip: usize, paths: &[PathBuf]) -> Self {
        Selection {
            strip,
            filter: paths.iter().map(|p| filter_components(p)).collect(),
        }
    }

    /// `comps` is at or below a selected path.
    pub(super) fn selected(&self, comps: &[OsString]) -> bool {
        self.filter.is_empty() || self.filter.iter().any(|f| comps.starts_with(f))
    }

    /// Where a member named `raw` is written: (whether a leading `/` was removed, its components), `None` when it
    /// is not written (removed entirely by `strip`, a non-directory stripped to the root, outside the selection).
    /// An empty component list is the destination root itself (a directory).
    pub(super) fn member(
        &self,
        raw: &[u8],
        is_dir: bool,
    ) -> Result<(bool, Option<Vec<OsString>>), NameError> {
        let (slash, comps) = sanitize(raw, self.strip)?;
        let comps = match comps {
            Some(c) if c.is_empty() && !is_dir && self.strip > 0 => None,
            Some(c) if c.is_empty() && !is_dir => return Err(NameError::Empty),
            Some(c) if self.selected(&c) => Some(c),
            _ => None,
        };
        Ok((slash, comps))
    }

    /// The sanitized target `raw` of a hardlink: (whether a leading `/` was removed, components). `Err`
    /// is the reason it is unsafe. Whether the target is selected is the caller's question ([`Self::selected`]).
    pub(super) fn link_target(&self, raw: &[u8]) -> Result<(bool, Vec<OsString>), String> {
        let shown = || String::from_utf8_lossy(raw).into_owned();
        match sanitize(raw, self.strip) {
            Ok((slash, Some(t))) if !t.is_empty() => Ok((slash, t)),
            Ok(_) => Err(format!(
                "hardlink target `{}` lies outside the extracted tree",
                shown()
            )),
            Err(NameError::DotDot) => Err(format!("hardlink target `{}` contains `..`", shown())),
            Err(_) => Err("hardlink target contains a NUL byte".into()),
        }
    }
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
