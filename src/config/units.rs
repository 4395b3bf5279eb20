//! Units and secrets as the config writes them: durations (`30s`, `14d`, `2w`), sizes (`16MiB`), and secrets read
//! from `*_file` paths that only their owner may read.

use std::path::Path;
use std::time::Duration;

use super::ConfigError;

/// Parse a duration such as `30s`, `14d`, `2w`, `1h30m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    // humantime does not know weeks as `w`; expand `Nw` → `N*7d`.
    if let Some(n) = t.strip_suffix('w').and_then(|n| n.parse::<u64>().ok()) {
        return Ok(Duration::from_secs(n * 7 * 86400));
    }
    humantime::parse_duration(t)
        .map_err(|e| format!("`{s}` is not a duration ({e}); e.g. 30s, 10m, 14d"))
}

/// Parse a size such as `16MiB`, `64M`, `1GiB`, `1048576`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("`{s}` is not a size (e.g. 16MiB)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("`{s}`: unknown unit (use KiB, MiB or GiB)")),
    };
    Ok(n * mult)
}

/// Read a secret from a file, refusing files readable by group or others.
pub fn read_secret_file(path: &Path) -> Result<String, ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| ConfigError::Secret {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(ConfigError::Secret {
            path: path.to_path_buf(),
            message: format!(
                "is readable by group or others (mode {:o}); run `chmod 600 {}`",
                meta.permissions().mode() & 0o777,
                path.display()
            ),
        });
    }
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Secret {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    Ok(text.trim_end_matches(['\n', '\r']).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("16MiB").unwrap(), 16 << 20);
        assert_eq!(parse_size("5m").unwrap(), 5 << 20);
        assert!(parse_size("5 parsecs").is_err());
        assert_eq!(
            parse_duration("14d").unwrap(),
            Duration::from_secs(14 * 86400)
        );
        assert_eq!(
            parse_duration("2w").unwrap(),
            Duration::from_secs(14 * 86400)
        );
        assert!(parse_duration("soon").is_err());
    }
}
