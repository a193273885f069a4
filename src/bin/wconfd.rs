//! `wconfd`: the wconf daemon. Its flags (each also a `WCONF_*` environment
//! variable and a `--config` file key) live in `wconf::cli::wconfd`.

/// mimalloc instead of glibc's malloc. On the 2-core machine, `txn` at 64
/// connections over the socket, 4 alternating pairs: 20.6-22.3 µs of daemon
/// CPU per change against 22.6-24.9 µs, median 49.2k against 47.0k changes/s
/// (README, "Levers pulled").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc 3's `mi_option_t`
/// (`include/mimalloc.h`). libmimalloc-sys gives the index no name, so
/// Cargo.toml pins both crates exactly, and a test checks the index.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
/// mimalloc's own variable for the same option, which wins if it is set.
const PURGE_DELAY_ENV: &str = "MIMALLOC_PURGE_DELAY";

fn main() -> std::process::ExitCode {
    // mimalloc holds freed pages for 1 s (10 s in its arenas) before it
    // returns them. A snapshot of a 99.1 MB document frees that much in
    // bursts, and with the delay the peak RSS came within 17-20 MiB of issue
    // 7's bound (3x the document + 64 MiB = 348 MiB); purging at once gave
    // 311-322 MiB, near glibc's 312 (benches/run-big-config.sh, 3 runs each).
    if std::env::var_os(PURGE_DELAY_ENV).is_none() {
        // SAFETY: mi_option_set is not thread safe, and no other thread
        // exists yet: main has not started the runtime or any actor.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    }
    wconf::cli::wconfd::main()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purge_delay_index_names_mimallocs_purge_delay() {
        // 1000 ms is purge_delay's default in mimalloc 3's options table,
        // and no option next to it has that default. If a new libmimalloc-sys
        // moves the enum, this fails before the daemon sets the wrong option.
        if std::env::var_os(PURGE_DELAY_ENV).is_some() {
            return; // the variable sets the value this test reads
        }
        // SAFETY: reading an option is a plain load of mimalloc's table.
        let value = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert_eq!(value, 1000);
    }
}
