//! Parses the command line, dispatches, and maps failures to exit codes:
//! 0 success, 1 a rejected token (`verify`), 2 bad flags or unusable files.
#![forbid(unsafe_code)]

use std::process::ExitCode;
use tessera::cli::{Command, TopLevel};
use tessera::commands::{self, Failure};

/// jemalloc on glibc targets (default feature `jemalloc`): its background
/// thread hands freed memory back to the OS while the event loop idles, where
/// glibc's malloc (`--no-default-features`) keeps a spike's peak. Its
/// settings are compiled in from `.cargo/config.toml`
/// (`JEMALLOC_SYS_WITH_MALLOC_CONF`; this crate forbids the `unsafe` a
/// `malloc_conf` symbol would need): one arena, background purge after 1 s,
/// and a thread cache of at most 32 objects per small size class. With no
/// thread cache every malloc and free took the arena's slow path (+25 %
/// instructions per handshake and fan-out delivery against glibc's malloc);
/// with 32 slots CPU per handshake and per delivery is within 1-2 % of
/// glibc's and a 15,000-socket spike still drops back to 1.7x the start-up
/// VmRSS within 1-3 s (jemalloc's full default cache: 2.3x). Measured in
/// BENCHMARKS.md (issue 15, "Allocator settings, fourth pass"). musl targets
/// keep musl's malloc.
#[cfg(all(feature = "jemalloc", target_os = "linux", target_env = "gnu"))]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let strs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (name, rest) = match strs.split_first() {
        Some((n, r)) => (*n, r),
        None => ("tessera", &[][..]),
    };
    let top = match <TopLevel as argh::FromArgs>::from_args(&[name], rest) {
        Ok(t) => t,
        Err(early) => {
            return if early.status.is_ok() {
                println!("{}", early.output);
                ExitCode::SUCCESS
            } else {
                eprintln!("{}", early.output.trim_end());
                eprintln!("Run '{name} --help' for how to use it.");
                ExitCode::from(2)
            };
        }
    };
    if top.version {
        println!("{}", tessera::version_line());
        return ExitCode::SUCCESS;
    }
    let result = match top.command {
        None => Err(Failure::usage("no subcommand given; run 'tessera --help'")),
        Some(Command::Serve(a)) => tessera::server::serve(&a),
        Some(Command::Useradd(a)) => commands::useradd(&a),
        Some(Command::Agent(a)) => tessera::agent::run(&a),
        Some(Command::Keygen(a)) => commands::keygen(&a),
        Some(Command::Token(a)) => commands::token(&a),
        Some(Command::Verify(a)) => commands::verify(&a, &mut std::io::stdin().lock()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            if f.code == 1 {
                eprintln!("{}", f.message);
            } else {
                eprintln!("tessera: {}", f.message);
            }
            ExitCode::from(f.code)
        }
    }
}
