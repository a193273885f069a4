//! `wconfctl`: the command-line client of wconfd's HTTP API v1. Its flags
//! and commands live in `wconf::cli::wconfctl`.

fn main() -> std::process::ExitCode {
    wconf::cli::wconfctl::main()
}
