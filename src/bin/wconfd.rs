//! `wconfd`: the wconf daemon. Its flags (each also a `WCONF_*` environment
//! variable and a `--config` file key) live in `wconf::cli::wconfd`.

fn main() -> std::process::ExitCode {
    wconf::cli::wconfd::main()
}
