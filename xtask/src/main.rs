//! Project automation: `cargo xtask test | demo | bench <name>`.

mod bench_apply;
mod bench_server;
mod benchmarks;
mod demo;
mod deps;
mod process;
mod test;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Quantix OTA project automation")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the Debian packages the tests need (when missing), then run every test, the
    /// slow tier (root, loop devices, qemu, browser) included; prints the wall time at the end.
    Test {
        /// Only the quick tier: no Debian packages, the slow tests reported as ignored.
        #[arg(long)]
        fast: bool,
    },
    /// Run the whole update loop on this machine on embedded defaults.
    Demo {
        /// Keep the server and the host's daemon (with its web page) running afterwards.
        #[arg(long)]
        keep: bool,
    },
    /// Run a benchmark and print the figures for BENCHMARKS.md.
    Bench {
        #[command(subcommand)]
        which: Bench,
    },
}

#[derive(Subcommand)]
enum Bench {
    /// Update server vs a reference web server serving the same files.
    Server,
    /// Agent apply vs a download-and-unpack shell pipeline.
    Apply,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Test { fast } => test::run(fast),
        Cmd::Demo { keep } => demo::run_demo(keep),
        Cmd::Bench { which } => {
            deps::ensure(deps::BENCH_PACKAGES)?;
            match which {
                Bench::Server => bench_server::run(),
                Bench::Apply => bench_apply::run(),
            }
        }
    }
}
