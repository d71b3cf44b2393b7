//! Project automation: `cargo xtask test | dist | demo | bench <name>` (`dist`: static
//! binaries, man pages, completions and Debian packages; `bench fleet`: the fleet's
//! load generator; `bench deltas`: patch sizes on real executables; `bench image`: a
//! full-image install against the physical limits; `bench image-deltas`: bytes to update a
//! root-file-system image from the booted one; `bench store`: the object-store backend
//! against the local directory, presigned downloads and the reference web server).

mod bench_apply;
mod bench_deltas;
mod bench_image;
mod bench_image_deltas;
mod bench_server;
mod bench_store;
mod benchmarks;
mod demo;
mod deps;
mod dist;
mod loadgen;
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
    /// Build the three programs statically (release), their man pages, shell completions and
    /// Debian packages into target/x86_64-unknown-linux-gnu/release/dist.
    Dist,
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
    /// The update server on an object store (a Garage node) vs on a local directory, vs
    /// presigned downloads from the store and a reference web server; publish times; one
    /// server process vs two.
    Store,
    /// Agent apply vs a download-and-unpack shell pipeline.
    Apply,
    /// A full-image install into the inactive A/B slot vs the physical limits and RAUC
    /// (root: loop devices).
    Image,
    /// qx-delta's patches vs general-purpose delta tools on real releases of executables.
    Deltas,
    /// Image chunks vs casync and zstd's patch-from on two root-file-system images built from
    /// pinned Debian packages.
    ImageDeltas,
    /// The fleet's load generator: simulated hosts enroll, then check in and send events.
    Fleet {
        /// Fleet sizes, a fresh server and store for each.
        #[arg(long, value_delimiter = ',', default_value = "5000,50000")]
        hosts: Vec<usize>,
        /// Stores to run on.
        #[arg(long, value_delimiter = ',', default_value = "sqlite,postgres")]
        engines: Vec<loadgen::Engine>,
        /// Seconds of load per run.
        #[arg(long, default_value_t = 20)]
        secs: u64,
        /// Connections (threads) playing the hosts.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Check-ins per second across all connections; 0: as fast as possible.
        #[arg(long, default_value_t = 0)]
        rate: u32,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Test { fast } => test::run(fast),
        Cmd::Dist => dist::run().map(|_| ()),
        Cmd::Demo { keep } => demo::run_demo(keep),
        Cmd::Bench { which } => match which {
            Bench::Server => {
                deps::ensure(deps::BENCH_PACKAGES)?;
                bench_server::run()
            }
            Bench::Store => {
                deps::ensure(deps::BENCH_PACKAGES)?;
                bench_store::run()
            }
            Bench::Apply => {
                deps::ensure(deps::BENCH_PACKAGES)?;
                bench_apply::run()
            }
            Bench::Image => {
                deps::ensure(bench_image::PACKAGES)?;
                bench_image::run()
            }
            Bench::Deltas => {
                deps::ensure(bench_deltas::PACKAGES)?;
                bench_deltas::run()
            }
            Bench::ImageDeltas => {
                deps::ensure(bench_image_deltas::PACKAGES)?;
                bench_image_deltas::run()
            }
            Bench::Fleet {
                hosts,
                engines,
                secs,
                concurrency,
                rate,
            } => {
                deps::ensure(&["postgresql"])?;
                loadgen::run(&loadgen::Options {
                    hosts,
                    engines,
                    secs,
                    concurrency,
                    rate,
                })
            }
        },
    }
}
