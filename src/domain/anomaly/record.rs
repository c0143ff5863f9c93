//! Recording an anomaly on its key: the pure change `Store::update_key` runs in its transaction
//! (the key's recent anomalies, the disable its `anomaly_action` may ask for, and the
//! `key.anomaly` event), with the durable cool-down read from the record itself.

use std::time::Duration;

use super::{AnomalyAction, AnomalyKind, Finding, KeyAnomaly};
use crate::domain::{
    audit::{Actor, AuditAction, AuditEvent, FieldChange},
    key::{KeyId, KeyRecord, KeyState},
    ports::KeyChange,
};

/// Anomalies a key's record keeps (the most recent).
pub const MAX_RECENT_ANOMALIES: usize = 5;

/// The audit actor of anomaly events.
pub const DETECTOR_ACTOR: &str = "anomaly-detector";

/// An anomaly written to its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recorded {
    pub key: KeyId,
    pub kind: AnomalyKind,
    /// The key's `anomaly_action` disabled it.
    pub disabled: bool,
}

/// The change that records `finding` on `current`: nothing for a revoked key, or when the key
/// already carries an anomaly of that kind within `cooldown` (so a restart or another node does
/// not repeat it); else the anomaly added to the recent ones, the key disabled if its policy
/// says so and it is active, and one `key.anomaly` event (the kind as its code, the evidence as
/// its reason, the state change if any).
pub fn anomaly_change(current: &KeyRecord, finding: &Finding, cooldown: Duration) -> KeyChange {
    if current.state == KeyState::Revoked {
        return Ok(None);
    }
    let cooling = current
        .anomalies
        .iter()
        .any(|a| a.kind == finding.kind && finding.at.duration_since(a.at).map_or(true, |since| since < cooldown));
    if cooling {
        return Ok(None);
    }
    let mut next = current.clone();
    next.anomalies.push(KeyAnomaly { kind: finding.kind, at: finding.at, evidence: finding.evidence.clone() });
    if next.anomalies.len() > MAX_RECENT_ANOMALIES {
        let excess = next.anomalies.len() - MAX_RECENT_ANOMALIES;
        next.anomalies.drain(..excess);
    }
    let mut reason = format!("{}: {}", finding.kind, finding.evidence);
    let mut changes = Vec::new();
    if current.anomaly_action == AnomalyAction::Disable && current.state == KeyState::Active {
        next.state = KeyState::Disabled;
        next.disabled_at = Some(finding.at);
        next.disable_reason = Some(format!("anomaly {}", reason));
        next.updated_at = Some(finding.at);
        changes.push(FieldChange { field: "state".into(), before: "active".into(), after: "disabled".into() });
        reason.push_str("; the key is disabled (anomaly_action DISABLE)");
    }
    let event = AuditEvent {
        at: finding.at,
        actor: Actor::System(DETECTOR_ACTOR.into()),
        action: AuditAction::KeyAnomaly,
        target: Some(current.id),
        client_addr: None,
        reason: Some(reason),
        changes,
        code: Some(finding.kind.as_str().into()),
    };
    Ok(Some((next, Some(event))))
}
