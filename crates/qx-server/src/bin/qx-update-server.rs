//! The update server: configuration comes from the environment (see `qx_server::config`).

fn main() -> std::process::ExitCode {
    qx_server::server::main()
}
