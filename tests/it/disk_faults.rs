//! A full disk: the database on a small tmpfs fills up under writers down to the reserve
//! (`store.min_free_bytes`). Mutations answer UNAVAILABLE (never INTERNAL), verification goes on,
//! writes resume in the same process once space returns, and every acknowledged key survives a
//! restart with the audit chain intact. Mounting needs root, as CI has.

use std::{
    collections::BTreeSet,
    fs,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use keyward::proto::{self, VerifyCode};
use tonic::Code;

use crate::common::{
    Instance,
    scrape::{self, Exposition},
};

/// A tmpfs mounted over an instance's database directory; unmounted when dropped (also when
/// the test fails).
struct Tmpfs(PathBuf);

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed (the disk-fault tests mount a tmpfs: they need root, as CI has): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Tmpfs {
    /// Moves the (stopped) instance's database onto a new tmpfs of `size` mounted in its place.
    fn over_db(kw: &Instance, size: &str) -> Self {
        let db = kw.data_dir.join("db");
        let saved = kw.data_dir.join("db.saved");
        fs::rename(&db, &saved).unwrap();
        fs::create_dir(&db).unwrap();
        run("mount", &["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs", db.to_str().unwrap()]);
        let mounted = Tmpfs(db);
        run("cp", &["-a", &format!("{}/.", saved.display()), mounted.0.to_str().unwrap()]);
        mounted
    }

    /// Space returns: the file system grows to `size`.
    fn resize(&self, size: &str) {
        run("mount", &["-o", &format!("remount,size={size}"), self.0.to_str().unwrap()]);
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: the server may still hold files open if the test failed.
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A key with ~40 KiB of metadata, so a few hundred fill the disk.
fn bulky(name: String) -> proto::CreateKeyRequest {
    let metadata = (0..40).map(|i| (format!("m{i:02}"), "x".repeat(1000))).collect();
    proto::CreateKeyRequest { name, metadata, ..Default::default() }
}

/// Four writers create bulky keys until each is refused; returns the acknowledged (key, id)s and
/// the refusals' codes and messages.
async fn fill(kw: &Instance) -> (Vec<(String, String)>, Vec<(Code, String)>) {
    let mut writers = Vec::new();
    for w in 0..4 {
        let mut admin = kw.root_keys().await;
        writers.push(tokio::spawn(async move {
            let (mut acked, deadline) = (Vec::new(), Instant::now() + Duration::from_secs(30));
            for i in 0.. {
                assert!(Instant::now() < deadline, "writer {w}: the disk did not fill within 30 s");
                match admin.create_key(bulky(format!("w{w}-{i}"))).await {
                    Ok(created) => {
                        let created = created.into_inner();
                        acked.push((created.key, created.info.unwrap().key_id));
                    }
                    Err(status) => return (acked, (status.code(), status.message().to_owned())),
                }
            }
            unreachable!()
        }));
    }
    let (mut acked, mut refused) = (Vec::new(), Vec::new());
    for w in writers {
        let (a, r) = w.await.unwrap();
        acked.extend(a);
        refused.push(r);
    }
    (acked, refused)
}

/// Creates a key, retrying while it answers UNAVAILABLE, for up to 5 s.
async fn create_once_space_returns(kw: &Instance) -> (String, String) {
    let mut admin = kw.root_keys().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match admin.create_key(bulky("after".into())).await {
            Ok(created) => {
                let created = created.into_inner();
                return (created.key, created.info.unwrap().key_id);
            }
            Err(s) if s.code() == Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(s) => panic!("writes did not resume within 5 s of space returning: {s:?}\n{}", tail(&kw.logs())),
        }
    }
}

/// A log's warnings and errors, for failure messages.
fn tail(log: &str) -> String {
    let problems: Vec<&str> = log.lines().filter(|l| l.contains("WARN") || l.contains("ERROR")).collect();
    problems[problems.len().saturating_sub(40)..].join("\n")
}

async fn scrape(kw: &Instance) -> Exposition {
    scrape::parse(&scrape::http(kw.metrics_addr().expect("metrics are served"), "GET", "/metrics").await.body)
}

/// Waits (up to 2 s: the free space is measured every 500 ms) for `keyward_store_disk_full`.
async fn disk_full_becomes(kw: &Instance, expected: f64) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while scrape(kw).await.get("keyward_store_disk_full", &[]) != Some(expected) {
        assert!(Instant::now() < deadline, "keyward_store_disk_full did not become {expected}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Restarts the server and checks that every acknowledged key is there and valid, and that the
/// audit chain verifies.
async fn after_restart_nothing_acknowledged_is_lost(kw: &mut Instance, acked: &[(String, String)]) {
    let status = kw.stop().await;
    assert!(status.success(), "exit status {status}; log:\n{}", kw.logs());
    kw.start().await;
    let mut admin = kw.root_keys().await;
    let ids: BTreeSet<&String> = acked.iter().map(|(_, id)| id).collect();
    assert_eq!(ids.len(), acked.len());
    for (key, id) in acked {
        let info = admin.get_key(proto::GetKeyRequest { key_id: id.clone() }).await;
        assert!(info.is_ok(), "acknowledged key {id} lost: {info:?}");
        assert_eq!(kw.code(key, &[]).await, VerifyCode::Valid, "key {id}");
    }
    let chain = kw.audit(Some(&kw.root_key)).await.verify_chain(proto::VerifyChainRequest::default()).await;
    let chain = chain.unwrap().into_inner();
    assert!(chain.ok, "{chain:?}");
    assert!(chain.checked as usize > acked.len(), "{chain:?}");
}

/// Fills the disk (down to the reserve, if any), checks the refusals and that verification goes
/// on, then gives space back; returns the keys acknowledged.
async fn fill_and_refuse(kw: &mut Instance, disk: &Tmpfs, refusal: &str) -> Vec<(String, String)> {
    let (existing, existing_id) = kw.create_key("existing", &["a:b"]).await;
    let pid = kw.pid();
    let (mut acked, refused) = fill(kw).await;
    for (code, message) in &refused {
        assert_eq!(*code, Code::Unavailable, "{message}; log:\n{}", tail(&kw.logs()));
        assert!(message.contains(refusal), "{message}");
    }
    assert!(acked.len() > 10, "only {} keys fit before the disk filled", acked.len());
    disk_full_becomes(kw, 1.0).await;
    assert_eq!(kw.code(&existing, &["a:b"]).await, VerifyCode::Valid, "verification goes on");

    disk.resize("128m");
    assert_eq!(kw.pid(), pid);
    acked.push((existing, existing_id));
    acked
}

#[tokio::test]
async fn below_the_reserve_mutations_answer_unavailable_and_resume_when_space_returns() {
    let mut kw = Instance::init();
    let disk = Tmpfs::over_db(&kw, "24m");
    kw.configure("store", "min_free_bytes", &(12u64 << 20).to_string());
    kw.metrics = true;
    kw.log_filter = "info";
    kw.start().await;
    let pid = kw.pid();
    let mut acked = fill_and_refuse(&mut kw, &disk, "the data directory is nearly full: ").await;
    acked.push(create_once_space_returns(&kw).await);
    acked.push(kw.create_key("and-after", &[]).await);
    disk_full_becomes(&kw, 0.0).await;
    assert_eq!(kw.pid(), pid, "recovered without a restart");
    assert!(kw.is_running());
    assert!(kw.logs().contains("the data directory is nearly full"), "a warning when the reserve is crossed");
    after_restart_nothing_acknowledged_is_lost(&mut kw, &acked).await;
}
