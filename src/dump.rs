//! Streamed database dumps: a container's dump as a source of its own (kind `dump`).
//!
//! # Design
//!
//! * **Which dump, decided at plan time** ([`resolve`], pure): the container label `voltar.dump=PRESET`
//!   (`postgres`, `mysql`, `mariadb`, `mongodb`, `redis`) or `voltar.dump-command` (+ optionally
//!   `voltar.dump-restore-command`) for anything else — a string runs as `sh -c`, a JSON array as argv, as
//!   hook labels do. `voltar.dump-timeout` (default [`DEFAULT_DUMP_TIMEOUT`]) bounds the dump, and
//!   `voltar.dump-only=true` leaves the container's volumes out (the dump is its backup). A label that cannot
//!   be understood is a `problem` that fails the dump source at run time, never a dump silently dropped.
//! * **The source's name** is `dump@<container>`: `@` cannot be part of a volume name (nor of a bind source's
//!   `bind-…` name), so a dump never collides with another source of the same backup.
//! * **Presets follow the official images' conventions and the container's own environment.** Each runs as
//!   `sh -c` inside the container, so the container's environment applies (libpq's `PGHOST`, `PGPORT`, …) and
//!   passwords are read there from the variables (or `*_FILE` files) the official images use: they reach the
//!   client through its environment (`PGPASSWORD`, `MYSQL_PWD`, `REDISCLI_AUTH`) or a private file, never an
//!   argument `ps` would show, and never leave the container (voltar only sees the command text, which names the
//!   variables, not their values).
//! * **Running** is the caller's: the backup streams the command's stdout through the archive pipeline
//!   (`backup/dump.rs`); restore streams the stored dump into the restore command's stdin (`restore/dump.rs`).
//!   Both go through `docker::Engine::exec`.
//!
//! Rejected: dumping to a file in the container (or on the host) and archiving that — it needs free space the
//! size of the dump and leaves a copy of the database lying around; the stream needs neither.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;

use crate::catalog::DumpRecord;
use crate::config::{parse_duration, HookCommand};
use crate::docker::{ContainerInfo, ContainerState};

pub const LABEL_DUMP: &str = "voltar.dump";
pub const LABEL_DUMP_COMMAND: &str = "voltar.dump-command";
pub const LABEL_DUMP_RESTORE_COMMAND: &str = "voltar.dump-restore-command";
pub const LABEL_DUMP_ONLY: &str = "voltar.dump-only";
pub const LABEL_DUMP_TIMEOUT: &str = "voltar.dump-timeout";

/// How long a dump may run unless `voltar.dump-timeout` says otherwise: long, as a big database takes long; the
/// timeout is there for a dump that hangs.
pub const DEFAULT_DUMP_TIMEOUT: Duration = Duration::from_secs(6 * 3600);

/// Prefix of a dump source's name: `dump@<container>`.
pub const SOURCE_PREFIX: &str = "dump@";

/// The source name of `container`'s dump.
pub fn source_name(container: &str) -> String {
    format!("{SOURCE_PREFIX}{container}")
}

/// A known database, dumped and restored the way its official image is used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    Postgres,
    Mysql,
    Mariadb,
    Mongodb,
    Redis,
}

impl Preset {
    pub const ALL: [Preset; 5] = [
        Preset::Postgres,
        Preset::Mysql,
        Preset::Mariadb,
        Preset::Mongodb,
        Preset::Redis,
    ];

    /// The dump command: its stdout is the dump.
    pub fn dump_command(self) -> HookCommand {
        HookCommand::Shell(
            match self {
                // All databases, roles and tablespaces, as the official image's superuser.
                Preset::Postgres => {
                    "PGPASSWORD=\"${PGPASSWORD:-${POSTGRES_PASSWORD:-}}\"; export PGPASSWORD; \
                     exec pg_dumpall -U \"${POSTGRES_USER:-postgres}\""
                }
                Preset::Mysql => {
                    "MYSQL_PWD=\"${MYSQL_ROOT_PASSWORD:-}\"; \
                     [ -n \"${MYSQL_ROOT_PASSWORD_FILE:-}\" ] && MYSQL_PWD=\"$(cat \"$MYSQL_ROOT_PASSWORD_FILE\")\"; \
                     export MYSQL_PWD; \
                     exec mysqldump -uroot --all-databases --single-transaction --routines --events"
                }
                Preset::Mariadb => {
                    "MYSQL_PWD=\"${MARIADB_ROOT_PASSWORD:-${MYSQL_ROOT_PASSWORD:-}}\"; \
                     f=\"${MARIADB_ROOT_PASSWORD_FILE:-${MYSQL_ROOT_PASSWORD_FILE:-}}\"; \
                     [ -n \"$f\" ] && MYSQL_PWD=\"$(cat \"$f\")\"; export MYSQL_PWD; \
                     if command -v mariadb-dump >/dev/null 2>&1; then d=mariadb-dump; else d=mysqldump; fi; \
                     exec \"$d\" -uroot --all-databases --single-transaction --routines --events"
                }
                // The password goes through a private config file (mongodump has no password variable).
                Preset::Mongodb => {
                    "set -e; u=\"${MONGO_INITDB_ROOT_USERNAME:-}\"; p=\"${MONGO_INITDB_ROOT_PASSWORD:-}\"; \
                     [ -n \"${MONGO_INITDB_ROOT_PASSWORD_FILE:-}\" ] && p=\"$(cat \"$MONGO_INITDB_ROOT_PASSWORD_FILE\")\"; \
                     if [ -z \"$u\" ]; then exec mongodump --archive --quiet; fi; \
                     umask 077; c=$(mktemp); trap 'rm -f \"$c\"' EXIT; printf 'password: \"%s\"\\n' \"$p\" >\"$c\"; \
                     mongodump --archive --quiet --username \"$u\" --authenticationDatabase admin --config \"$c\""
                }
                // `--rdb -` writes the RDB snapshot to stdout (redis-cli 7+).
                Preset::Redis => {
                    "[ -n \"${REDIS_PASSWORD:-}\" ] && { REDISCLI_AUTH=\"$REDIS_PASSWORD\"; export REDISCLI_AUTH; }; \
                     exec redis-cli --rdb -"
                }
            }
            .to_string(),
        )
    }

    /// The restore command (the dump on its stdin), or why there is none.
    pub fn restore_command(self) -> Result<HookCommand, &'static str> {
        Ok(HookCommand::Shell(
            match self {
                // No ON_ERROR_STOP: a dump of a whole cluster recreates roles (its superuser) and databases
                // (`POSTGRES_DB`) that a fresh cluster already has, which psql reports and goes on. Which errors
                // are that noise and which fail the restore is judged from psql's stderr: [`psql_errors`].
                Preset::Postgres => {
                    "PGPASSWORD=\"${PGPASSWORD:-${POSTGRES_PASSWORD:-}}\"; export PGPASSWORD; \
                     exec psql -q -X -U \"${POSTGRES_USER:-postgres}\" -d postgres"
                }
                Preset::Mysql => {
                    "MYSQL_PWD=\"${MYSQL_ROOT_PASSWORD:-}\"; \
                     [ -n \"${MYSQL_ROOT_PASSWORD_FILE:-}\" ] && MYSQL_PWD=\"$(cat \"$MYSQL_ROOT_PASSWORD_FILE\")\"; \
                     export MYSQL_PWD; exec mysql -uroot"
                }
                Preset::Mariadb => {
                    "MYSQL_PWD=\"${MARIADB_ROOT_PASSWORD:-${MYSQL_ROOT_PASSWORD:-}}\"; \
                     f=\"${MARIADB_ROOT_PASSWORD_FILE:-${MYSQL_ROOT_PASSWORD_FILE:-}}\"; \
                     [ -n \"$f\" ] && MYSQL_PWD=\"$(cat \"$f\")\"; export MYSQL_PWD; \
                     if command -v mariadb >/dev/null 2>&1; then m=mariadb; else m=mysql; fi; exec \"$m\" -uroot"
                }
                Preset::Mongodb => {
                    "set -e; u=\"${MONGO_INITDB_ROOT_USERNAME:-}\"; p=\"${MONGO_INITDB_ROOT_PASSWORD:-}\"; \
                     [ -n \"${MONGO_INITDB_ROOT_PASSWORD_FILE:-}\" ] && p=\"$(cat \"$MONGO_INITDB_ROOT_PASSWORD_FILE\")\"; \
                     if [ -z \"$u\" ]; then exec mongorestore --archive --quiet; fi; \
                     umask 077; c=$(mktemp); trap 'rm -f \"$c\"' EXIT; printf 'password: \"%s\"\\n' \"$p\" >\"$c\"; \
                     mongorestore --archive --quiet --username \"$u\" --authenticationDatabase admin --config \"$c\""
                }
                Preset::Redis => return Err(REDIS_RESTORE),
            }
            .to_string(),
        ))
    }

    /// The stored object's extension before `.zst`: what the dump is.
    pub fn extension(self) -> &'static str {
        match self {
            Preset::Postgres | Preset::Mysql | Preset::Mariadb => "sql",
            Preset::Mongodb => "archive",
            Preset::Redis => "rdb",
        }
    }
}

/// Why a redis dump is not restored into a container, and what to do instead.
pub const REDIS_RESTORE: &str = "redis loads an RDB snapshot only when it starts, from its data directory, so \
     it cannot be streamed into a running server: restore it with --to-file PATH, stop redis, put the file in \
     its data volume as dump.rdb (with appendonly off, or after removing the AOF files) and start it again";

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Preset::Postgres => "postgres",
            Preset::Mysql => "mysql",
            Preset::Mariadb => "mariadb",
            Preset::Mongodb => "mongodb",
            Preset::Redis => "redis",
        })
    }
}

impl FromStr for Preset {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim().to_ascii_lowercase();
        Preset::ALL
            .into_iter()
            .find(|p| p.to_string() == t)
            .ok_or_else(|| {
                format!(
                    "`{s}` is not a known database (known: postgres, mysql, mariadb, mongodb, redis; for anything \
                     else set {LABEL_DUMP_COMMAND} instead)"
                )
            })
    }
}

/// One container's dump, as planned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct DumpSpec {
    /// The container it runs in.
    pub container: String,
    pub container_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preset: Option<Preset>,
    #[serde(serialize_with = "as_text")]
    pub command: HookCommand,
    /// The command that takes the dump back on its stdin (`None`: none known, see `restore_problem`).
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "opt_as_text"
    )]
    pub restore_command: Option<HookCommand>,
    #[serde(serialize_with = "secs")]
    pub timeout: Duration,
    /// `voltar.dump-only=true`: the container's volumes are not archived.
    pub only: bool,
    /// What decided it: `label voltar.dump=postgres`, `label voltar.dump-command`.
    pub from: String,
    /// A label that could not be understood: the source fails before anything runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

fn as_text<S: serde::Serializer>(c: &HookCommand, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&c.to_string())
}

fn opt_as_text<S: serde::Serializer>(c: &Option<HookCommand>, s: S) -> Result<S::Ok, S::Error> {
    match c {
        Some(c) => s.serialize_str(&c.to_string()),
        None => s.serialize_none(),
    }
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs())
}

impl DumpSpec {
    /// The stored object's extension before `.zst`: `sql`, `archive`, `rdb`, or `dump` for a custom command.
    pub fn extension(&self) -> &'static str {
        self.preset.map(Preset::extension).unwrap_or("dump")
    }

    /// The record kept in the manifest (commands as text, never the environment).
    pub fn record(&self, exit_code: Option<i64>, duration_ms: u64, bytes: u64) -> DumpRecord {
        DumpRecord {
            container: self.container.clone(),
            preset: self.preset.map(|p| p.to_string()),
            command: self.command.to_string(),
            restore_command: self.restore_command.as_ref().map(ToString::to_string),
            exit_code,
            duration_ms,
            dump_bytes: bytes,
        }
    }
}

/// The errors in the stderr of a `postgres` preset restore (`psql` fed a `pg_dumpall`) that fail it: every
/// `ERROR:` line except the expected noise of loading a whole cluster into a running one, which psql reports and
/// goes past. That noise is a role or a database that already exists: pg_dumpall writes `CREATE ROLE` then
/// `ALTER ROLE` so that an existing role (the superuser, always) still gets its attributes, and a database the
/// image made (`POSTGRES_DB`) is then filled as it is. Anything else (a table that exists or cannot be made, a
/// row that does not load) means the database does not hold the dump.
///
/// Why not `ON_ERROR_STOP`: it stops at the superuser's `CREATE ROLE`, the first statement of every dump.
/// Skipping those statements in the container would need the dump's own quoting of names, and dumps already
/// stored keep the restore command recorded with them: judging the output works for those too.
pub fn psql_errors(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter_map(|l| {
            let at = l.find("ERROR:")?;
            let msg = l[at + "ERROR:".len()..].trim();
            let exists = |kind: &str| {
                msg.strip_prefix(kind)
                    .and_then(|m| m.strip_prefix(" \""))
                    .is_some_and(|m| m.ends_with("\" already exists"))
            };
            (!(exists("role") || exists("database"))).then_some(l.trim())
        })
        .collect()
}

/// The restore command of a stored dump: the one recorded (the label's, or the preset's), else the preset's,
/// else why there is none.
pub fn restore_command(rec: &DumpRecord) -> Result<HookCommand, String> {
    let preset = rec
        .preset
        .as_deref()
        .map(str::parse::<Preset>)
        .transpose()?;
    match (&rec.restore_command, preset) {
        (Some(text), _) => HookCommand::parse(text),
        (None, Some(p)) => p.restore_command().map_err(str::to_string),
        (None, None) => Err(format!(
            "the dump of {} was made with {LABEL_DUMP_COMMAND} and no {LABEL_DUMP_RESTORE_COMMAND}: voltar \
             does not know how to load it; give the container you restore into a {LABEL_DUMP_RESTORE_COMMAND} \
             label, or restore it with --to-file PATH and load it yourself",
            rec.container
        )),
    }
}

/// The dump of container `c` from its labels; `None` when it has none.
pub fn resolve(c: &ContainerInfo) -> Option<DumpSpec> {
    let label = |k: &str| c.labels.get(k).map(String::as_str);
    let preset_label = label(LABEL_DUMP);
    let command_label = label(LABEL_DUMP_COMMAND);
    if preset_label.is_none() && command_label.is_none() {
        return None;
    }
    let mut problems = Vec::new();
    let restore_label = label(LABEL_DUMP_RESTORE_COMMAND).map(|t| {
        HookCommand::parse(t).map_err(|e| format!("label {LABEL_DUMP_RESTORE_COMMAND}: {e}"))
    });
    let (preset, command, from) = match (command_label, preset_label) {
        // An explicit command wins over a preset: it is the more specific of the two.
        (Some(text), _) => match HookCommand::parse(text) {
            Ok(cmd) => (None, cmd, format!("label {LABEL_DUMP_COMMAND}")),
            Err(e) => {
                problems.push(format!("label {LABEL_DUMP_COMMAND}: {e}"));
                (
                    None,
                    HookCommand::Shell(text.to_string()),
                    format!("label {LABEL_DUMP_COMMAND}"),
                )
            }
        },
        (None, Some(p)) => match p.parse::<Preset>() {
            Ok(preset) => (
                Some(preset),
                preset.dump_command(),
                format!("label {LABEL_DUMP}={preset}"),
            ),
            Err(e) => {
                problems.push(format!("label {LABEL_DUMP}: {e}"));
                (
                    None,
                    HookCommand::Shell(String::new()),
                    format!("label {LABEL_DUMP}"),
                )
            }
        },
        (None, None) => unreachable!("checked above"),
    };
    let restore_command = match restore_label {
        Some(Ok(cmd)) => Some(cmd),
        Some(Err(e)) => {
            problems.push(e);
            None
        }
        None => preset.and_then(|p| p.restore_command().ok()),
    };
    let timeout = match label(LABEL_DUMP_TIMEOUT) {
        None => DEFAULT_DUMP_TIMEOUT,
        Some(t) => match parse_duration(t) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                problems.push(format!("label {LABEL_DUMP_TIMEOUT}: must be more than 0s"));
                DEFAULT_DUMP_TIMEOUT
            }
            Err(e) => {
                problems.push(format!("label {LABEL_DUMP_TIMEOUT}: {e}"));
                DEFAULT_DUMP_TIMEOUT
            }
        },
    };
    Some(DumpSpec {
        container: c.name.clone(),
        container_id: c.id.clone(),
        preset,
        command,
        restore_command,
        timeout,
        only: label_true(&c.labels, LABEL_DUMP_ONLY),
        from,
        problem: (!problems.is_empty()).then(|| {
            format!(
                "container {}: {} (fix the label; the dump was not run)",
                c.name,
                problems.join("; ")
            )
        }),
    })
}

/// Whether the dump of `c` can run now: exec needs a running (not paused) container.
pub fn runnable(c: &ContainerInfo) -> Result<(), String> {
    match c.state {
        ContainerState::Running => Ok(()),
        ContainerState::Paused => Err(format!(
            "container {} is paused: its dump cannot run (a paused container cannot exec); its volumes are \
             archived instead",
            c.name
        )),
        ref s => Err(format!(
            "container {} is {s}: its dump runs inside the running database; its volumes are archived instead",
            c.name
        )),
    }
}

fn label_true(labels: &BTreeMap<String, String>, key: &str) -> bool {
    labels.get(key).is_some_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "true" | "1" | "yes" | "on"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctr(labels: &[(&str, &str)]) -> ContainerInfo {
        ContainerInfo {
            id: "id-db".into(),
            name: "db".into(),
            image: "postgres:15".into(),
            state: ContainerState::Running,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            mounts: vec![],
        }
    }

    #[test]
    fn no_label_no_dump() {
        assert_eq!(resolve(&ctr(&[("voltar.quiesce", "stop")])), None);
    }

    #[test]
    fn presets_resolve_with_their_restore_commands() {
        let d = resolve(&ctr(&[("voltar.dump", "Postgres")])).unwrap();
        assert_eq!(d.preset, Some(Preset::Postgres));
        assert_eq!(d.from, "label voltar.dump=postgres");
        assert_eq!(d.extension(), "sql");
        assert!(d.command.to_string().contains("pg_dumpall"));
        assert!(d.restore_command.unwrap().to_string().contains("psql"));
        assert!(!d.only && d.problem.is_none());
        assert_eq!(d.timeout, DEFAULT_DUMP_TIMEOUT);
        let r = resolve(&ctr(&[("voltar.dump", "redis")])).unwrap();
        assert_eq!((r.extension(), r.restore_command), ("rdb", None));
        assert_eq!(
            resolve(&ctr(&[("voltar.dump", "mongodb")]))
                .unwrap()
                .extension(),
            "archive"
        );
    }

    /// Passwords stay in the container: the commands name the variables, never a value, and never put a
    /// password on a client's argv.
    #[test]
    fn preset_commands_take_passwords_from_the_environment_not_argv() {
        for p in Preset::ALL {
            let cmd = p.dump_command().to_string();
            assert!(
                !cmd.contains("-p\"") && !cmd.contains("--password"),
                "{p}: {cmd}"
            );
            if let Ok(r) = p.restore_command() {
                let r = r.to_string();
                assert!(!r.contains("-p\"") && !r.contains("--password"), "{p}: {r}");
            }
        }
        assert!(Preset::Mysql
            .dump_command()
            .to_string()
            .contains("MYSQL_PWD"));
        assert!(Preset::Mariadb
            .dump_command()
            .to_string()
            .contains("MARIADB_ROOT_PASSWORD_FILE"));
    }

    #[test]
    fn command_labels_as_hooks_have_them() {
        let d = resolve(&ctr(&[
            ("voltar.dump-command", "[\"cat\", \"/data/x\"]"),
            ("voltar.dump-restore-command", "cat > /data/x"),
            ("voltar.dump-only", "true"),
            ("voltar.dump-timeout", "90s"),
        ]))
        .unwrap();
        assert_eq!(
            d.command,
            HookCommand::Argv(vec!["cat".into(), "/data/x".into()])
        );
        assert_eq!(
            d.restore_command,
            Some(HookCommand::Shell("cat > /data/x".into()))
        );
        assert_eq!(d.extension(), "dump");
        assert!(d.only);
        assert_eq!(d.timeout, Duration::from_secs(90));
        assert_eq!(d.problem, None);
    }

    #[test]
    fn bad_labels_are_problems_not_silence() {
        let d = resolve(&ctr(&[("voltar.dump", "oracle")])).unwrap();
        assert!(d.problem.unwrap().contains("not a known database"));
        let d = resolve(&ctr(&[
            ("voltar.dump-command", "[not json"),
            ("voltar.dump-timeout", "soon"),
        ]))
        .unwrap();
        let p = d.problem.unwrap();
        assert!(
            p.contains("voltar.dump-command") && p.contains("voltar.dump-timeout"),
            "{p}"
        );
    }

    #[test]
    fn psql_errors_are_all_but_existing_roles_and_databases() {
        let stderr = "psql:<stdin>:14: ERROR:  role \"postgres\" already exists\n\
                      psql:<stdin>:40: ERROR:  database \"app\" already exists\n\
                      psql:<stdin>:41: NOTICE:  something\n\
                      psql:<stdin>:77: ERROR:  relation \"accounts\" already exists\n\
                      psql:<stdin>:90: ERROR:  duplicate key value violates unique constraint \"a_pkey\"\n\
                      DETAIL:  Key (id)=(1) already exists.\n\
                      psql:<stdin>:95: ERROR:  role \"x\" does not exist\n";
        assert_eq!(
            psql_errors(stderr),
            [
                "psql:<stdin>:77: ERROR:  relation \"accounts\" already exists",
                "psql:<stdin>:90: ERROR:  duplicate key value violates unique constraint \"a_pkey\"",
                "psql:<stdin>:95: ERROR:  role \"x\" does not exist",
            ]
        );
        assert!(psql_errors("").is_empty());
        assert!(
            psql_errors("psql:<stdin>:3: ERROR:  role \"postgres\" already exists\n").is_empty()
        );
    }

    #[test]
    fn restore_command_of_a_record() {
        let d = resolve(&ctr(&[("voltar.dump", "postgres")])).unwrap();
        let rec = d.record(Some(0), 5, 10);
        assert!(restore_command(&rec).unwrap().to_string().contains("psql"));
        let custom = resolve(&ctr(&[("voltar.dump-command", "cat /x")]))
            .unwrap()
            .record(Some(0), 1, 1);
        assert!(restore_command(&custom)
            .unwrap_err()
            .contains("voltar.dump-restore-command"));
        let redis = resolve(&ctr(&[("voltar.dump", "redis")]))
            .unwrap()
            .record(Some(0), 1, 1);
        assert!(restore_command(&redis).unwrap_err().contains("--to-file"));
    }
}
