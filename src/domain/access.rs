//! Who calls and what it may do: the authenticated `Caller`, keyward's own `Permission`s, and
//! `Access`, the permission checks every use case starts with, which count each refused call for
//! the audit trail (see `auth_failures`).

use std::{net::IpAddr, sync::Arc};

use super::{
    auth_failures::AuthFailures,
    brute_force::Source,
    clock::Clock,
    error::{Error, Result},
    key::KeyId,
    ownership::Reach,
    ports::Store,
    scope,
};

/// A permission on keyward itself: a scope in the reserved `keyward:` namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permission {
    Verify,
    KeysCreate,
    KeysRead,
    KeysUpdate,
    KeysRevoke,
    KeysRotate,
    /// Rotate the caller's own key.
    SelfRotate,
    MasterRead,
    MasterRotate,
    AuditRead,
    /// Report a leaked key (`ReportLeak`): revokes the key presented, nothing else.
    LeaksReport,
    /// Read the node's cluster status (`GetClusterStatus`).
    ClusterRead,
}

impl Permission {
    pub fn scope(self) -> &'static str {
        match self {
            Permission::Verify => "keyward:verify",
            Permission::KeysCreate => "keyward:keys:create",
            Permission::KeysRead => "keyward:keys:read",
            Permission::KeysUpdate => "keyward:keys:update",
            Permission::KeysRevoke => "keyward:keys:revoke",
            Permission::KeysRotate => "keyward:keys:rotate",
            Permission::SelfRotate => "keyward:self:rotate",
            Permission::MasterRead => "keyward:master:read",
            Permission::MasterRotate => "keyward:master:rotate",
            Permission::AuditRead => "keyward:audit:read",
            Permission::LeaksReport => "keyward:leaks:report",
            Permission::ClusterRead => "keyward:cluster:read",
        }
    }
}

/// An authenticated caller: a key that proved its secret and is active.
#[derive(Clone, Debug)]
pub struct Caller {
    pub key_id: KeyId,
    pub scopes: Vec<String>,
    /// The peer's address, for the audit of a refused call.
    pub source: Option<IpAddr>,
}

/// Facts about the request that go into the audit trail.
#[derive(Clone, Debug, Default)]
pub struct RequestContext {
    /// The peer's socket address.
    pub client_addr: Option<std::net::SocketAddr>,
}

/// A creator may only grant `keyward:` scopes it holds itself.
pub fn check_escalation(caller: &Caller, scopes: &[String]) -> Result<()> {
    match scopes.iter().find(|s| scope::is_permission(s) && !scope::any_grants(&caller.scopes, s)) {
        Some(escalation) => Err(Error::PermissionDenied(format!(
            "cannot grant `{escalation}`: a key may only grant keyward permissions its caller holds"
        ))),
        None => Ok(()),
    }
}

/// The permission checks, and the refused calls they and the other services count. One per
/// server, shared by every service.
pub struct Access {
    failures: AuthFailures,
    clock: Arc<dyn Clock>,
}

impl Access {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self { failures: AuthFailures::default(), clock }
    }

    /// `PERMISSION_DENIED` (counted) unless the caller holds `permission`.
    pub fn authorize(&self, caller: &Caller, permission: Permission) -> Result<()> {
        if scope::any_grants(&caller.scopes, permission.scope()) {
            Ok(())
        } else {
            self.failures.denied(caller.source, caller.key_id, permission.scope(), self.clock.now());
            Err(Error::PermissionDenied(format!("this call needs the `{}` permission", permission.scope())))
        }
    }

    /// The keys the caller holds `permission` for; `PERMISSION_DENIED` (counted) if none.
    pub fn reach(&self, caller: &Caller, permission: Permission) -> Result<Reach> {
        let reach = Reach::of(&caller.scopes, permission);
        if reach.is_none() {
            // Holding no form of it: the unsuffixed check refuses and counts.
            self.authorize(caller, permission)?;
        }
        Ok(reach)
    }

    /// Counts a call refused as `PERMISSION_DENIED` for lacking `permission`.
    pub fn denied(&self, caller: &Caller, permission: &str) {
        self.failures.denied(caller.source, caller.key_id, permission, self.clock.now());
    }

    /// Counts a call refused as `UNAUTHENTICATED`; `named` is the existing key the credential
    /// named, if any.
    pub fn unauthenticated(&self, source: Option<IpAddr>, named: Option<KeyId>, why: &str) {
        self.failures.unauthenticated(source, named, why, self.clock.now());
    }

    /// Counts a call refused as `RESOURCE_EXHAUSTED` because its source is blocked (see
    /// `brute_force`); `why` says the block, `caller` is the VerifyKey caller, if any.
    pub fn blocked(&self, source: Source, caller: Option<KeyId>, why: &str) {
        self.failures.blocked(source, caller, why, self.clock.now());
    }

    /// Counts a call answered `NOT_FOUND` because the key it named belongs to a team the
    /// caller's team-scoped permission does not reach (see `ownership`).
    pub fn outside_teams(&self, caller: &Caller, permission: &str) {
        self.failures.outside_teams(caller.source, caller.key_id, permission, self.clock.now());
    }

    /// Writes the refused calls counted since the last call as `auth.failed` events (run about
    /// once a second and at shutdown). Returns how many events were written.
    pub async fn flush_refusals<S: Store>(&self, store: &S) -> Result<usize> {
        self.failures.flush(store, self.clock.now()).await
    }
}
