//! The `keyward-bench` binary: everything happens in `keyward_bench::cli`.

use std::io::Write as _;

fn main() {
    let code = if keyward_bench::cli::run() == std::process::ExitCode::SUCCESS { 0 } else { 1 };
    // As in `keyward`'s main: the embedded server (`keyward-bench keyward serve …`) and the raw-HSM
    // baseline load the PKCS#11 module, whose static destructors may race a thread still releasing
    // it if C exit handlers run; everything is finished and flushed here, so end at once.
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: `_exit` ends the process at once; nothing runs after it.
    unsafe { libc::_exit(code) }
}
