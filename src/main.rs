//! The `keyward` binary: everything happens in `keyward::cli`.

use std::io::Write as _;

fn main() {
    let code = if keyward::cli::run() == std::process::ExitCode::SUCCESS { 0 } else { 1 };
    // Everything is durable and the HSM finalized by now (`serve` closes the store and calls
    // C_Finalize before returning). The process ends without running C/C++ exit handlers: the
    // PKCS#11 module's static destructors (SoftHSM2's, see SoftHSMv2 issues #635 and #729) run
    // there, and a thread still releasing its handle to the module meanwhile crashes the process
    // (SIGSEGV after a clean stop).
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: `_exit` ends the process at once; nothing runs after it.
    unsafe { libc::_exit(code) }
}
