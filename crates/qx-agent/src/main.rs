//! `qx-update`: the Quantix OTA host agent. See `qx-update --help`.

fn main() {
    std::process::exit(qx_agent::cli::main());
}
