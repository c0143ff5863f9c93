//! `keyward init` interrupted at its worst moment (a master key on the token, no database yet)
//! leaves nothing that blocks the next `init`; a development data directory works from wherever
//! it is moved.

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use keyward::proto::VerifyCode;

use crate::common::{BIN, Instance, require_softhsm};

/// Key objects (not the token's own file) in the development token's directory.
fn key_objects(data_dir: &Path) -> usize {
    let Ok(tokens) = fs::read_dir(data_dir.join("softhsm/tokens")) else { return 0 };
    tokens
        .flatten()
        .filter_map(|token| fs::read_dir(token.path()).ok())
        .flat_map(|entries| entries.flatten())
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.ends_with(".object") && name != "token.object"
        })
        .count()
}

/// Runs `keyward init --dev` and SIGKILLs it as soon as its token holds a key; `None` if it
/// finished first.
fn init_killed_once_a_key_exists(data_dir: &Path) -> Option<()> {
    let mut child = Command::new(BIN)
        .args(["init", "--dev", "--data-dir", data_dir.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if key_objects(data_dir) > 0 {
            child.kill().unwrap();
            let status = child.wait().unwrap();
            return (!status.success()).then_some(());
        }
        if child.try_wait().unwrap().is_some() {
            return None;
        }
        assert!(Instant::now() < deadline, "keyward init did not make a key in 30 s");
        std::thread::sleep(Duration::from_micros(200));
    }
}

#[tokio::test]
async fn an_init_killed_after_making_the_master_key_is_made_again_by_the_next_init() {
    require_softhsm();
    let (tmp, data_dir) = (0..20)
        .find_map(|_| {
            let tmp = tempfile::tempdir().unwrap();
            let data_dir = tmp.path().join("data");
            init_killed_once_a_key_exists(&data_dir).map(|()| (tmp, data_dir))
        })
        .expect("init was killed mid-way at least once in 20 tries");
    assert!(key_objects(&data_dir) > 0 && !data_dir.join("root.key").exists(), "a half-made instance");
    assert!(data_dir.join("keyward.toml").exists(), "the state that used to block the next init");

    let out = Command::new(BIN).args(["init", "--dev", "--data-dir", data_dir.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "the next init failed: {}", String::from_utf8_lossy(&out.stderr));
    let printed = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let mut kw = Instance::initialized(tmp, data_dir);
    assert_eq!(printed, kw.root_key);
    kw.start().await;
    let (key, _) = kw.create_key("after-resume", &[]).await;
    assert_eq!(kw.code(&key, &[]).await, VerifyCode::Valid);
    kw.stop().await;
    let again = kw.keyward(&["init", "--dev", "--data-dir", kw.data_dir_str()]);
    assert!(!again.status.success(), "a finished instance is never made again");
}

/// Outside `--dev` the token is not keyward's alone: a master key without a database is adopted
/// only when `init` itself left it (its unfinished `db.partial/` beside it), else refused.
#[tokio::test]
async fn a_master_key_an_interrupted_init_left_on_the_token_is_adopted_by_the_next_init() {
    let mut kw = Instance::init();
    fs::remove_dir_all(kw.data_dir.join("db")).unwrap();
    fs::remove_file(kw.data_dir.join("root.key")).unwrap();
    let config = kw.data_dir.join("keyward.toml");
    let init =
        |kw: &Instance| kw.keyward(&["init", "--data-dir", kw.data_dir_str(), "--config", config.to_str().unwrap()]);

    let out = init(&kw);
    assert!(!out.status.success(), "a master key of unknown origin was adopted");
    assert!(String::from_utf8_lossy(&out.stderr).contains("master key v1 already exists on the token"));
    assert!(!kw.data_dir.join("db.partial").exists(), "a refused init leaves nothing for the next to take");

    // What an init killed after making the master key leaves: its unfinished database.
    fs::create_dir_all(kw.data_dir.join("db.partial/db")).unwrap();
    fs::write(kw.data_dir.join("db.partial/db/conf"), "half-written").unwrap();
    let out = init(&kw);
    assert!(out.status.success(), "the next init failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(!kw.data_dir.join("db.partial").exists());
    kw.root_key = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    kw.start().await;
    let (key, _) = kw.create_key("on-the-adopted-master-key", &[]).await;
    assert_eq!(kw.code(&key, &[]).await, VerifyCode::Valid);
    assert!(kw.logs().contains("adopting the master key an interrupted `keyward init` left on the token"));
}

#[tokio::test]
async fn a_moved_development_data_directory_serves_the_keys_made_before() {
    let mut kw = Instance::started().await;
    let (key, _) = kw.create_key("made-before-the-move", &[]).await;
    kw.stop().await;
    let old = kw.data_dir.clone();
    let text = fs::read_to_string(old.join("keyward.toml")).unwrap();
    assert!(!text.contains(old.to_str().unwrap()), "keyward.toml names its own directory:\n{text}");

    let moved = old.with_file_name("elsewhere").join("data");
    fs::create_dir_all(moved.parent().unwrap()).unwrap();
    fs::rename(&old, &moved).unwrap();
    kw.data_dir = moved.clone();
    kw.start().await;
    assert_eq!(kw.code(&key, &[]).await, VerifyCode::Valid);
    let (after, _) = kw.create_key("made-after-the-move", &[]).await;
    assert_eq!(kw.code(&after, &[]).await, VerifyCode::Valid);
    let conf = fs::read_to_string(moved.join("softhsm/softhsm2.conf")).unwrap();
    assert!(conf.contains(moved.join("softhsm/tokens").to_str().unwrap()), "{conf}");
}
