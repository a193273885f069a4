//! The command lines of `wconfd` and `wconfctl` (clap definitions and what
//! each command does), kept in the library so the binaries stay one call
//! and tests reach the same definitions: the TOML config file layered
//! under flags and environment variables, and the shell completions and
//! man pages generated from those definitions.

pub mod wconfctl;
pub mod wconfd;

use std::ffi::OsString;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgMatches, Command, Subcommand};

/// The largest config file read; a real one is a few hundred bytes.
pub const CONFIG_FILE_BYTES_MAX: u64 = 1 << 20;

/// Generated documentation, a subcommand of both binaries.
#[derive(Subcommand, Debug, Clone)]
pub enum Docs {
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(after_help = "Example:\n  wconfd completions bash > /etc/bash_completion.d/wconfd")]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), or write every page (one per subcommand)
    /// into --out-dir.
    #[command(after_help = "Example:\n  wconfd man | man -l -")]
    Man {
        /// Write NAME.1 and NAME-SUBCOMMAND.1 pages here instead.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
}

impl Docs {
    /// Writes what was asked for `cmd` to `out` (or to `--out-dir`).
    pub fn generate(&self, mut cmd: Command, out: &mut dyn Write) -> std::io::Result<()> {
        match self {
            Docs::Completions { shell } => {
                let name = cmd.get_name().to_string();
                clap_complete::generate(*shell, &mut cmd, name, out);
                Ok(())
            }
            Docs::Man { out_dir: None } => clap_mangen::Man::new(cmd).render(out),
            Docs::Man { out_dir: Some(dir) } => {
                std::fs::create_dir_all(dir)?;
                clap_mangen::generate_to(cmd, dir)
            }
        }
    }
}

/// A config file that could not be used; exit code 2 (usage).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigFileError {
    pub file: PathBuf,
    pub message: String,
}

impl fmt::Display for ConfigFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "config file {}: {}", self.file.display(), self.message)
    }
}

impl std::error::Error for ConfigFileError {}

/// Why parsing the command line failed.
#[derive(Debug)]
pub enum ParseError {
    /// Bad flags, `--help` or `--version`: clap prints and picks the exit.
    Clap(clap::Error),
    Config(ConfigFileError),
}

/// Parses `argv` with `cmd`, layering the TOML file named by the argument
/// `config_id` under the command line and the environment:
/// flags > environment variables > file > built-in defaults.
///
/// The file's keys are the long flag names (`data-dir = "/var/lib/wconf"`,
/// `lock-order = ["cluster", "node"]`), so every flag has a key by
/// construction. Each value becomes the flag's default, which clap then
/// parses and checks like any other value; an unknown key is an error
/// naming the key and the file.
pub fn parse_layered(
    cmd: Command,
    argv: Vec<OsString>,
    config_id: &str,
) -> Result<ArgMatches, ParseError> {
    let first = cmd
        .clone()
        .try_get_matches_from(&argv)
        .map_err(ParseError::Clap)?;
    if first.subcommand().is_some() {
        return Ok(first);
    }
    let Some(file) = first.get_one::<PathBuf>(config_id).cloned() else {
        return Ok(first);
    };
    let layered = layer_file(cmd, &file, config_id).map_err(ParseError::Config)?;
    // The command line and environment parsed once already, so an error
    // now comes from a value in the file.
    layered.try_get_matches_from(&argv).map_err(|e| {
        ParseError::Config(ConfigFileError {
            file,
            message: e.render().to_string().trim_end().to_string(),
        })
    })
}

/// Whether `id` was given on the command line or in the environment
/// rather than taken from the file or the defaults.
pub fn given_explicitly(matches: &ArgMatches, id: &str) -> bool {
    matches!(
        matches.value_source(id),
        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
    )
}

fn layer_file(mut cmd: Command, file: &Path, config_id: &str) -> Result<Command, ConfigFileError> {
    let error = |message: String| ConfigFileError {
        file: file.to_path_buf(),
        message,
    };
    let text = read_bounded(file).map_err(|e| error(e.to_string()))?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        error(format!("not valid TOML: {}", e.to_string().trim_end()))
    })?;
    let keys: Vec<(String, String)> = cmd
        .get_arguments()
        .filter(|a| a.get_id() != config_id && !a.is_positional())
        .filter_map(|a| Some((a.get_long()?.to_string(), a.get_id().to_string())))
        .filter(|(long, _)| long != "help" && long != "version")
        .collect();
    for (key, value) in table {
        let Some((_, id)) = keys.iter().find(|(long, _)| *long == key) else {
            let known: Vec<&str> = keys.iter().map(|(long, _)| long.as_str()).collect();
            return Err(error(format!(
                "unknown key `{key}` (the keys are the long flag names: {})",
                known.join(", ")
            )));
        };
        let values = toml_values(&value).ok_or_else(|| {
            error(format!(
                "key `{key}`: {value} is not a string, integer, boolean or array of them"
            ))
        })?;
        // clap (without its `string` feature) keeps defaults as `'static`
        // strings; the file is read once per process and bounded by
        // CONFIG_FILE_BYTES_MAX, so leaking its values is bounded too.
        let values: Vec<&'static str> = values.into_iter().map(|v| &*v.leak()).collect();
        cmd = cmd.mut_arg(id.as_str(), |a| a.default_values(values));
    }
    Ok(cmd)
}

fn read_bounded(file: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(file)?
        .take(CONFIG_FILE_BYTES_MAX + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > CONFIG_FILE_BYTES_MAX {
        return Err(std::io::Error::other(format!(
            "larger than {CONFIG_FILE_BYTES_MAX} bytes"
        )));
    }
    Ok(text)
}

/// A TOML value as the strings a flag would be given.
fn toml_values(value: &toml::Value) -> Option<Vec<String>> {
    match value {
        toml::Value::Array(items) => items
            .iter()
            .map(|v| match v {
                toml::Value::Array(_) => None,
                v => toml_values(v).and_then(|mut one| one.pop()),
            })
            .collect(),
        toml::Value::String(s) => Some(vec![s.clone()]),
        toml::Value::Integer(i) => Some(vec![i.to_string()]),
        toml::Value::Boolean(b) => Some(vec![b.to_string()]),
        _ => None,
    }
}

/// Every long flag of `cmd` and of its subcommands, for tests that check a
/// generated document mentions them all.
pub fn long_flags(cmd: &Command) -> Vec<String> {
    let mut out: Vec<String> = cmd
        .get_arguments()
        .filter(|a| !a.is_hide_set())
        .filter_map(|a| a.get_long().map(str::to_string))
        .collect();
    for sub in cmd.get_subcommands() {
        out.extend(long_flags(sub));
    }
    out.sort();
    out.dedup();
    out
}
