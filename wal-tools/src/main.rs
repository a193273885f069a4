//! `wal-dump`: inspection of wconf WAL directories. Only usage for now; the
//! subcommands arrive with the dump-tool issue.

use std::process::ExitCode;

const USAGE: &str = "\
wal-dump: inspect a wconf write-ahead log (read-only)

USAGE:
    wal-dump verify DIR

Not implemented yet beyond `verify`; see wal-tools/README.md.
";

fn main() -> ExitCode {
    print!("{USAGE}");
    ExitCode::from(64)
}
