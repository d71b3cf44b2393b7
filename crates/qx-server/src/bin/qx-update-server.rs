//! The update server: configuration comes from the environment (see `qx_server::config`).
//! Without a subcommand it serves; `token …` and `enrollment-token …` manage the fleet's
//! tokens in the store the same settings name (`qx_server::cli`).

fn main() -> std::process::ExitCode {
    qx_server::cli::main()
}
