//! Which Linux capabilities voltar has, and what is missing for a command: in a hardened container
//! (`cap_drop: [ALL]`) a missing capability otherwise shows up only as "permission denied" on each file.
//!
//! A backup needs `CAP_DAC_READ_SEARCH` to read files of other users that are not readable to all (or
//! `CAP_DAC_OVERRIDE`, which includes it). A restore needs `CAP_CHOWN` (owners), `CAP_FOWNER` (modes and times of
//! others' files), `CAP_DAC_OVERRIDE` (writing into others' directories), `CAP_FSETID` (keeping setuid/setgid
//! bits) and `CAP_MKNOD` (device nodes). Read from `/proc/self/status` (`CapEff`): no dependency, no `unsafe`.

/// A capability by its number (`linux/capability.h`) and name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cap(pub u32, pub &'static str);

pub const CHOWN: Cap = Cap(0, "CHOWN");
pub const DAC_OVERRIDE: Cap = Cap(1, "DAC_OVERRIDE");
pub const DAC_READ_SEARCH: Cap = Cap(2, "DAC_READ_SEARCH");
pub const FOWNER: Cap = Cap(3, "FOWNER");
pub const FSETID: Cap = Cap(4, "FSETID");
pub const MKNOD: Cap = Cap(27, "MKNOD");

/// What a restore needs.
pub const RESTORE: [Cap; 6] = [CHOWN, DAC_OVERRIDE, DAC_READ_SEARCH, FOWNER, FSETID, MKNOD];

/// The effective set, from a `/proc/<pid>/status` text; `None` when it has no `CapEff` line.
pub fn effective_from(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

/// This process's effective set (`None` when it cannot be read: then nothing is claimed missing).
pub fn effective() -> Option<u64> {
    effective_from(&std::fs::read_to_string("/proc/self/status").ok()?)
}

/// Of `wanted`, those not in `set`.
pub fn missing(set: u64, wanted: &[Cap]) -> Vec<Cap> {
    wanted
        .iter()
        .copied()
        .filter(|c| set & (1u64 << c.0) == 0)
        .collect()
}

/// The warning a backup prints when it cannot read other users' private files, if so.
pub fn backup_warning_for(set: u64) -> Option<String> {
    let can_read_all = set & (1 << DAC_READ_SEARCH.0) != 0 || set & (1 << DAC_OVERRIDE.0) != 0;
    (!can_read_all).then(|| {
        "voltar runs without CAP_DAC_READ_SEARCH: files and directories of other users that are not readable \
         to all cannot be read (they are reported as not archived); run as root, or in a container add \
         `--cap-add DAC_READ_SEARCH` (compose: `cap_add: [DAC_READ_SEARCH]`)"
            .to_string()
    })
}

/// The warning a restore prints when owners, modes or special files cannot be restored faithfully, if so.
pub fn restore_warning_for(set: u64) -> Option<String> {
    let gone = missing(set, &RESTORE);
    (!gone.is_empty()).then(|| {
        let names: Vec<&str> = gone.iter().map(|c| c.1).collect();
        format!(
            "voltar runs without CAP_{}: owners, modes, setuid bits or device nodes may not be restored as \
             they were; run as root, or in a container add `--cap-add {}`",
            names.join(", CAP_"),
            names.join(" --cap-add ")
        )
    })
}

/// [`backup_warning_for`] this process.
pub fn backup_warning() -> Option<String> {
    effective().and_then(backup_warning_for)
}

/// [`restore_warning_for`] this process.
pub fn restore_warning() -> Option<String> {
    effective().and_then(restore_warning_for)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_effective_set() {
        let status = "Name:\tvoltar\nCapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\n\
                      CapEff:\t0000000000000004\nCapBnd:\t000001ffffffffff\n";
        assert_eq!(effective_from(status), Some(4));
        assert_eq!(effective_from("Name:\tx\n"), None);
    }

    #[test]
    fn names_what_is_missing() {
        let root = 0x0000_01ff_ffff_ffff_u64;
        assert_eq!(backup_warning_for(root), None);
        assert_eq!(restore_warning_for(root), None);
        // cap_drop ALL + cap_add DAC_READ_SEARCH: a backup is fine, a restore is not.
        let read_only = 1 << DAC_READ_SEARCH.0;
        assert_eq!(backup_warning_for(read_only), None);
        let w = restore_warning_for(read_only).unwrap();
        assert!(w.contains("CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_FOWNER"), "{w}");
        assert!(w.contains("--cap-add MKNOD"), "{w}");
        assert!(!w.contains("DAC_READ_SEARCH"), "{w}");
        // Nothing at all.
        let w = backup_warning_for(0).unwrap();
        assert!(w.contains("--cap-add DAC_READ_SEARCH"), "{w}");
        // DAC_OVERRIDE alone reads everything too.
        assert_eq!(backup_warning_for(1 << DAC_OVERRIDE.0), None);
    }
}
