//! The `keyward-bench` binary: everything happens in `keyward_bench::cli`.

fn main() -> std::process::ExitCode {
    keyward_bench::cli::run()
}
