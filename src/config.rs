//! `chaserfs serve`'s config file: a TOML table of serve flags by their long names
//! (`data-dir = "/srv/chaserfs"`, `cache_size = "20G"`), read from `--config` or, when that is
//! not given, from /etc/chaserfs/config.toml if it exists. A flag on the command line or its
//! environment variable overrides the file, which overrides the built-in default: the file's
//! values are added to the command line for the flags given neither way, and parsed as flags,
//! so every value is checked exactly as the flag's. The file must be writable only by its
//! owner, root or the daemon's own user: it can turn on the `--insecure-*` flags.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, CommandFactory};

/// Where the config file is read from when `--config` is not given (skipped if missing).
pub(crate) const DEFAULT_PATH: &str = "/etc/chaserfs/config.toml";

/// Flags a config file may not set: the file's own path, a takeover, which is requested
/// (SIGHUP, `systemctl reload`), never configured, and the API client's global flags.
const NOT_CONFIGURABLE: [&str; 6] = ["config", "takeover", "api-url", "api-key", "json", "help"];

/// The command line with the config file's values added, if the command is `serve` and a
/// config file applies (then its path too); otherwise the command line as given.
pub(crate) fn command_line() -> anyhow::Result<(Vec<OsString>, Option<PathBuf>)> {
    let args: Vec<OsString> = std::env::args_os().collect();
    // Leniently: a flag the file supplies may be required by one given here (the final parse
    // checks everything); help, version and bad command lines are left to the final parse.
    let Ok(matches) = crate::Cli::command()
        .ignore_errors(true)
        .try_get_matches_from(&args)
    else {
        return Ok((args, None));
    };
    let Some(("serve", serve)) = matches.subcommand() else {
        return Ok((args, None));
    };
    let given = serve.get_one::<PathBuf>("config");
    let path = match given {
        Some(p) => p.clone(),
        None if Path::new(DEFAULT_PATH).exists() => PathBuf::from(DEFAULT_PATH),
        None => return Ok((args, None)),
    };
    check_owner(&path)?;
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading the config file {}", path.display()))?;
    let extra = flags_from(&text, serve).with_context(|| format!("config {}", path.display()))?;
    Ok((args.into_iter().chain(extra).collect(), Some(path)))
}

/// Refuses a config file someone other than its reader's user or root could have written: it
/// can turn on the `--insecure-*` flags.
fn check_owner(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)
        .with_context(|| format!("reading the config file {}", path.display()))?;
    let euid = nix::unistd::geteuid().as_raw();
    if meta.uid() != 0 && meta.uid() != euid {
        bail!(
            "the config file {} belongs to uid {}, neither root nor this user",
            path.display(),
            meta.uid()
        );
    }
    if meta.mode() & 0o022 != 0 {
        bail!(
            "the config file {} is writable by group or others (mode {:o}): `chmod go-w` it",
            path.display(),
            meta.mode() & 0o7777
        );
    }
    Ok(())
}

/// The flags `text` sets that neither the command line nor the environment set.
fn flags_from(text: &str, given: &ArgMatches) -> anyhow::Result<Vec<OsString>> {
    let table: toml::Table = toml::from_str(text)?;
    let mut cmd = crate::Cli::command();
    // Built, so that the global flags (`log-format`) are among serve's.
    cmd.build();
    let serve = cmd.find_subcommand("serve").expect("serve is a subcommand");
    let mut flags = Vec::new();
    for (key, value) in table {
        let long = key.replace('_', "-");
        let arg = serve
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()))
            .filter(|_| !NOT_CONFIGURABLE.contains(&long.as_str()));
        let Some(arg) = arg else {
            bail!("`{key}` is not a flag of `chaserfs serve` that a config file may set");
        };
        let id = arg.get_id().as_str();
        if matches!(
            given.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        let flag = format!("--{long}");
        match (arg.get_action(), value) {
            (ArgAction::SetTrue, toml::Value::Boolean(on)) => {
                if on {
                    flags.push(flag.into());
                }
            }
            (ArgAction::SetTrue, _) => bail!("`{key}` takes true or false"),
            (_, toml::Value::String(s)) => flags.push(format!("{flag}={s}").into()),
            (_, toml::Value::Integer(n)) => flags.push(format!("{flag}={n}").into()),
            (_, toml::Value::Array(items)) if arg.get_value_delimiter().is_some() => {
                let items: Vec<String> = items
                    .into_iter()
                    .map(|v| match v {
                        toml::Value::String(s) => Ok(s),
                        other => bail!("`{key}` takes a list of strings, not {}", other.type_str()),
                    })
                    .collect::<anyhow::Result<_>>()?;
                flags.push(format!("{flag}={}", items.join(",")).into());
            }
            (_, other) => bail!(
                "`{key}` takes a string or a number, not {}",
                other.type_str()
            ),
        }
    }
    Ok(flags)
}
