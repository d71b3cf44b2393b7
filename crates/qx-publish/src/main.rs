//! `qx-publish`: see `qx-publish --help`.

fn main() -> std::process::ExitCode {
    qx_publish::cli::run()
}
