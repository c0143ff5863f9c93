//! Use-case tests of key ownership: team-scoped permissions reach only their teams' keys, other
//! teams' keys are not found, and no team admin escalates to other teams or to every key.

use crate::domain::testing::*;

const CTX: RequestContext = RequestContext { client_addr: None };

fn owned(name: &str, scopes: &[&str], owner: &str) -> NewKey {
    NewKey { owner: owner.into(), ..named(name, scopes) }
}

fn owner_patch(owner: &str) -> KeyPatch {
    KeyPatch { mask: strings(&["owner"]), owner: owner.into(), ..Default::default() }
}

impl Fixture {
    /// A key made by root and owned by `owner` (empty: none).
    async fn owned(&self, name: &str, owner: &str) -> KeyRecord {
        self.keys.create(&self.root, owned(name, &[], owner), &CTX).await.unwrap().record
    }

    /// A caller holding `scopes`, owned by no team.
    async fn caller(&self, scopes: &[&str]) -> Caller {
        let key = self.create("admin", scopes).await;
        self.auth.authenticate(Some(key.key.expose()), &CTX).await.unwrap()
    }

    fn events(&self) -> usize {
        self.store.audit_after(0, 1000).unwrap().len()
    }
}

fn is_not_found<T: std::fmt::Debug>(r: Result<T>, id: KeyId) -> bool {
    matches!(r, Err(Error::NotFound(m)) if m == format!("key {id}"))
}

#[tokio::test]
async fn a_team_admin_manages_its_teams_keys_and_finds_no_other() {
    let f = fixture().await;
    let ours = f.owned("ours", "team-a").await;
    let theirs = f.owned("theirs", "team-b").await;
    let unowned = f.owned("unowned", "").await;
    let admin = f.caller(&["keyward:keys:*@team-a"]).await;

    assert_eq!(f.keys.get(&admin, &ours.id.to_string()).unwrap().owner.as_deref(), Some("team-a"));
    let rename = || KeyPatch { mask: strings(&["name"]), name: "renamed".into(), ..Default::default() };
    let updated = f.keys.update(&admin, &ours.id.to_string(), rename(), &CTX).await.unwrap();
    assert_eq!(updated.name, "renamed");
    f.keys.disable(&admin, &ours.id.to_string(), "", &CTX).await.unwrap();
    f.keys.enable(&admin, &ours.id.to_string(), &CTX).await.unwrap();

    let missing = KeyId::new_v7();
    assert!(is_not_found(f.keys.get(&admin, &missing.to_string()), missing));
    let before = f.events();
    for other in [&theirs, &unowned] {
        let id = other.id.to_string();
        assert!(is_not_found(f.keys.get(&admin, &id), other.id), "answers as a missing key does");
        assert!(is_not_found(f.keys.update(&admin, &id, rename(), &CTX).await, other.id));
        assert!(is_not_found(f.keys.disable(&admin, &id, "", &CTX).await, other.id));
        assert!(is_not_found(f.keys.enable(&admin, &id, &CTX).await, other.id));
        assert!(is_not_found(f.keys.revoke(&admin, &id, "", &CTX).await, other.id));
        assert!(is_not_found(f.keys.rotate(&admin, &id, None, &CTX).await, other.id));
        assert_eq!(f.keys.get(&f.root, &id).unwrap().state, KeyState::Active, "nothing changed");
    }
    assert_eq!(f.events(), before, "nothing was written");
    // The probes are in the audit trail as refused calls, one group per permission.
    f.auth.flush_auth_failures().await.unwrap();
    let probes: Vec<AuditEvent> =
        f.store.audit_after(0, 1000).unwrap().into_iter().skip(before).map(|e| e.event).collect();
    assert_eq!(probes.len(), 4, "read, update, revoke, rotate: {probes:?}");
    let mut refused = 0;
    for probe in &probes {
        assert_eq!((probe.action, probe.code.as_deref()), (AuditAction::AuthFailed, Some("NOT_FOUND")));
        assert_eq!(probe.actor, Actor::Key(admin.key_id));
        let reason = probe.reason.as_deref().unwrap();
        refused += reason.split(' ').next().unwrap().parse::<u32>().unwrap();
    }
    assert_eq!(refused, 12, "six calls for each of the two keys");
    // Even a revoked key of another team is not found (not FAILED_PRECONDITION).
    f.keys.revoke(&f.root, &theirs.id.to_string(), "", &CTX).await.unwrap();
    assert!(is_not_found(f.keys.update(&admin, &theirs.id.to_string(), rename(), &CTX).await, theirs.id));

    let revoked = f.keys.revoke(&admin, &ours.id.to_string(), "done", &CTX).await.unwrap();
    assert_eq!(revoked.state, KeyState::Revoked);
}

#[tokio::test]
async fn without_any_form_of_the_permission_the_call_is_denied() {
    let f = fixture().await;
    let ours = f.owned("ours", "team-a").await;
    let reader = f.caller(&["keyward:keys:read@team-a"]).await;
    let err = f.keys.revoke(&reader, &ours.id.to_string(), "", &CTX).await.unwrap_err();
    assert!(matches!(err, Error::PermissionDenied(_)), "{err:?}");
    let err = f.keys.rotate(&reader, &ours.id.to_string(), None, &CTX).await.unwrap_err();
    assert!(matches!(err, Error::PermissionDenied(_)), "{err:?}");
    assert!(f.keys.get(&reader, &ours.id.to_string()).is_ok());
}

#[tokio::test]
async fn a_team_reader_lists_only_its_teams_keys_across_pages() {
    let f = fixture().await;
    let mut expected = Vec::new();
    for i in 0..9 {
        let owner = ["team-a", "team-b", ""][i % 3];
        let record = f.owned(&format!("k{i}"), owner).await;
        if owner == "team-a" {
            expected.push(record.id);
        }
    }
    let extra = f.owned("c", "team-c").await;
    let reader = f.caller(&["keyward:keys:read@team-a", "keyward:keys:read@team-c"]).await;
    expected.push(extra.id);
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let (page, next) = f.keys.list(&reader, &ListFilter::default(), 2, &token).unwrap();
        seen.extend(page.iter().map(|r| r.id));
        match next {
            Some(t) => token = t,
            None => break,
        }
    }
    assert_eq!(seen, expected);
    let only_c = ListFilter::default().with_owner("team-c").unwrap();
    assert_eq!(f.keys.list(&reader, &only_c, 100, "").unwrap().0.len(), 1);
    let only_b = ListFilter::default().with_owner("team-b").unwrap();
    assert!(f.keys.list(&reader, &only_b, 100, "").unwrap().0.is_empty(), "other teams' keys stay hidden");
    assert_eq!(f.keys.list(&f.root, &only_b, 100, "").unwrap().0.len(), 3, "an unrestricted reader sees them");
    let all = f.keys.list(&f.root, &ListFilter::default(), 100, "").unwrap().0;
    assert_eq!(all.len(), 12, "root, the reader and ten keys");
}

#[tokio::test]
async fn a_team_admin_creates_keys_for_its_teams_only() {
    let f = fixture().await;
    let admin = f.caller(&["keyward:keys:*@team-a"]).await;
    for owner in ["", "team-b"] {
        let err = f.keys.create(&admin, owned("svc", &[], owner), &CTX).await.unwrap_err();
        assert!(matches!(&err, Error::PermissionDenied(m) if m.starts_with("owner:")), "{owner}: {err:?}");
    }
    let err = f.keys.create(&admin, owned("svc", &[], "Team A"), &CTX).await.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { field: "owner", .. }), "{err:?}");
    let created = f.keys.create(&admin, owned("svc", &["orders:*"], "team-a"), &CTX).await.unwrap();
    assert_eq!(created.record.owner.as_deref(), Some("team-a"));
    let unowned = f.keys.create(&f.root, owned("svc", &[], ""), &CTX).await.unwrap();
    assert_eq!(unowned.record.owner, None, "an unrestricted admin may leave the owner unset");
}

#[tokio::test]
async fn a_team_admin_grants_only_team_permissions_it_holds() {
    let f = fixture().await;
    let admin = f.caller(&["keyward:keys:*@team-a"]).await;
    for scope in ["keyward:keys:*", "keyward:keys:read", "keyward:keys:read@team-b", "keyward:*@team-a"] {
        let err = f.keys.create(&admin, owned("sub", &[scope], "team-a"), &CTX).await.unwrap_err();
        assert!(matches!(err, Error::PermissionDenied(_)), "{scope}: {err:?}");
    }
    let sub = f.keys.create(&admin, owned("sub", &["keyward:keys:read@team-a"], "team-a"), &CTX).await.unwrap();
    let patch = KeyPatch { mask: strings(&["scopes"]), scopes: strings(&["keyward:keys:*"]), ..Default::default() };
    let err = f.keys.update(&admin, &sub.record.id.to_string(), patch, &CTX).await.unwrap_err();
    assert!(matches!(err, Error::PermissionDenied(_)), "{err:?}");
    // Root, holding `keyward:*`, grants team scopes for any team.
    f.create("other admin", &["keyward:keys:*@team-b"]).await;
}

#[tokio::test]
async fn moving_a_key_needs_the_permission_for_both_owners() {
    let f = fixture().await;
    let key = f.owned("svc", "team-a").await;
    let id = key.id.to_string();
    let one_team = f.caller(&["keyward:keys:update@team-a"]).await;
    for to in ["team-b", ""] {
        let err = f.keys.update(&one_team, &id, owner_patch(to), &CTX).await.unwrap_err();
        assert!(matches!(&err, Error::PermissionDenied(m) if m.starts_with("owner:")), "{to}: {err:?}");
    }
    let two_teams = f.caller(&["keyward:keys:update@team-a", "keyward:keys:update@team-b"]).await;
    let moved = f.keys.update(&two_teams, &id, owner_patch("team-b"), &CTX).await.unwrap();
    assert_eq!(moved.owner.as_deref(), Some("team-b"));
    let last = f.store.audit_after(0, 1000).unwrap().pop().unwrap().event;
    assert_eq!(last.action, AuditAction::KeyUpdated);
    let change = &last.changes[0];
    assert_eq!((change.field.as_str(), change.before.as_str(), change.after.as_str()), ("owner", "team-a", "team-b"));
    assert!(is_not_found(f.keys.disable(&one_team, &id, "", &CTX).await, key.id), "gone from team-a's reach");
    let cleared = f.keys.update(&f.root, &id, owner_patch(""), &CTX).await.unwrap();
    assert_eq!(cleared.owner, None);
}

#[tokio::test]
async fn rotation_keeps_the_owner_and_self_rotation_ignores_it() {
    let f = fixture().await;
    let key = f.owned("svc", "team-a").await;
    let admin = f.caller(&["keyward:keys:rotate@team-a", "keyward:self:rotate"]).await;
    let rotated = f.keys.rotate(&admin, &key.id.to_string(), None, &CTX).await.unwrap();
    assert_eq!(rotated.record.owner.as_deref(), Some("team-a"));
    assert_eq!(f.keys.get(&f.root, &rotated.record.id.to_string()).unwrap().owner.as_deref(), Some("team-a"));
    // The admin's own key has no owner, yet it may rotate itself.
    let own = f.keys.rotate(&admin, "", None, &CTX).await.unwrap();
    assert_eq!(own.previous.id, admin.key_id);
}

#[tokio::test]
async fn team_suffixes_grant_nothing_outside_key_management() {
    let f = fixture().await;
    let err = f.keys.create(&f.root, named("svc", &["keyward:verify@team-a"]), &CTX).await.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { field: "scopes", .. }), "{err:?}");
    let team_root = f.caller(&["keyward:*@team-a"]).await;
    let target = f.create("svc", &[]).await;
    let err = f.verify.verify(&team_root, req(target.key.expose(), "", &[])).await.unwrap_err();
    assert!(matches!(err, Error::PermissionDenied(_)), "{err:?}");
    let err = f.keys.sweep_as(&team_root, true, &CTX).await.unwrap_err();
    assert!(matches!(err, Error::PermissionDenied(_)), "{err:?}");
    let err = f.master.master_status(&team_root, false).unwrap_err();
    assert!(matches!(err, Error::PermissionDenied(_)), "{err:?}");
}
