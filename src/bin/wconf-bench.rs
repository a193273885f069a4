//! `wconf-bench`: the load generator for a running `wconfd`. Its flags and
//! subcommands live in `wconf::loadgen::cli`.

fn main() -> std::process::ExitCode {
    wconf::loadgen::cli::main()
}
