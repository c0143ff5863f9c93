//! Where cluster mode keeps things in etcd: every key name under the configured prefix, and the
//! parsing of the names a watch reports back.

use crate::domain::key::KeyId;

/// The cluster marker: written once by `init`, the target of its compare-create.
const CLUSTER: &str = "cluster";
const MASTER: &str = "master";
const KEYS: &str = "keys/";
const AUDIT_HEAD: &str = "audit/head";
const AUDIT_CHECKPOINT: &str = "audit/checkpoint";
const AUDIT_EVENTS: &str = "audit/e/";
const NODES: &str = "nodes/";
const LEADER: &str = "leader";

/// Digits of an audit sequence number in its etcd key: zero-padded so names sort in order.
const SEQ_DIGITS: usize = 20;

/// The etcd key names of one cluster, under its prefix.
#[derive(Clone, Debug)]
pub struct Layout {
    prefix: String,
}

/// What an etcd key under the prefix holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Entry {
    Cluster,
    Master,
    Key(KeyId),
    AuditHead,
    /// The last event trimmed from etcd (sequence number ‖ MAC).
    AuditCheckpoint,
    AuditEvent(u64),
    Node(String),
    Leader,
    /// A name keyward does not write (another tool's, or a later version's).
    Other,
}

impl Layout {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self { prefix: prefix.into() }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn name(&self, tail: impl AsRef<str>) -> Vec<u8> {
        format!("{}{}", self.prefix, tail.as_ref()).into_bytes()
    }

    pub fn cluster(&self) -> Vec<u8> {
        self.name(CLUSTER)
    }

    pub fn master(&self) -> Vec<u8> {
        self.name(MASTER)
    }

    pub fn key(&self, id: KeyId) -> Vec<u8> {
        self.name(format!("{KEYS}{id}"))
    }

    /// The first name of the key records (a range's start; the range ends at `keys_end`).
    pub fn keys_start(&self) -> Vec<u8> {
        self.name(KEYS)
    }

    pub fn keys_end(&self) -> Vec<u8> {
        range_end(&self.keys_start())
    }

    pub fn audit_head(&self) -> Vec<u8> {
        self.name(AUDIT_HEAD)
    }

    pub fn audit_checkpoint(&self) -> Vec<u8> {
        self.name(AUDIT_CHECKPOINT)
    }

    pub fn audit_event(&self, seq: u64) -> Vec<u8> {
        self.name(format!("{AUDIT_EVENTS}{seq:0SEQ_DIGITS$}"))
    }

    pub fn audit_events_end(&self) -> Vec<u8> {
        range_end(&self.name(AUDIT_EVENTS))
    }

    pub fn node(&self, id: &str) -> Vec<u8> {
        self.name(format!("{NODES}{id}"))
    }

    /// The node that runs the cluster's periodic work, on its presence lease.
    pub fn leader(&self) -> Vec<u8> {
        self.name(LEADER)
    }

    pub fn nodes_start(&self) -> Vec<u8> {
        self.name(NODES)
    }

    /// What the etcd key `name` holds (`None` outside the prefix).
    pub fn entry(&self, name: &[u8]) -> Option<Entry> {
        let tail = std::str::from_utf8(name).ok()?.strip_prefix(self.prefix.as_str())?;
        Some(match tail {
            CLUSTER => Entry::Cluster,
            MASTER => Entry::Master,
            AUDIT_HEAD => Entry::AuditHead,
            AUDIT_CHECKPOINT => Entry::AuditCheckpoint,
            LEADER => Entry::Leader,
            _ => {
                if let Some(id) = tail.strip_prefix(KEYS) {
                    id.parse().map_or(Entry::Other, Entry::Key)
                } else if let Some(seq) = tail.strip_prefix(AUDIT_EVENTS) {
                    seq.parse().map_or(Entry::Other, Entry::AuditEvent)
                } else if let Some(node) = tail.strip_prefix(NODES) {
                    Entry::Node(node.to_string())
                } else {
                    Entry::Other
                }
            }
        })
    }
}

/// The end of the range of every name that starts with `start` (etcd's prefix convention).
pub fn range_end(start: &[u8]) -> Vec<u8> {
    let mut end = start.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_reads_back_as_what_it_holds() {
        let layout = Layout::new("/keyward/");
        let id = KeyId::new_v7();
        assert_eq!(layout.entry(&layout.key(id)), Some(Entry::Key(id)));
        assert_eq!(layout.entry(&layout.master()), Some(Entry::Master));
        assert_eq!(layout.entry(&layout.cluster()), Some(Entry::Cluster));
        assert_eq!(layout.entry(&layout.leader()), Some(Entry::Leader));
        assert_eq!(layout.entry(&layout.audit_head()), Some(Entry::AuditHead));
        assert_eq!(layout.entry(&layout.audit_checkpoint()), Some(Entry::AuditCheckpoint));
        assert_eq!(layout.entry(&layout.audit_event(42)), Some(Entry::AuditEvent(42)));
        assert_eq!(layout.entry(&layout.node("n-1")), Some(Entry::Node("n-1".into())));
        assert_eq!(layout.entry(b"/other/keys/x"), None);
        assert_eq!(layout.entry(b"/keyward/keys/not-a-uuid"), Some(Entry::Other));
    }

    #[test]
    fn audit_event_names_sort_in_sequence_order() {
        let layout = Layout::new("/k/");
        assert!(layout.audit_event(9) < layout.audit_event(10));
        assert!(layout.audit_event(u64::MAX - 1) < layout.audit_event(u64::MAX));
        assert!(layout.audit_event(u64::MAX) < layout.audit_events_end());
        let head = layout.audit_head();
        assert!(
            head >= layout.audit_events_end() || head < layout.audit_event(0),
            "the head is outside the events' range"
        );
    }

    #[test]
    fn key_names_stay_inside_their_range() {
        let layout = Layout::new("/k/");
        let id = KeyId::new_v7();
        assert!(layout.keys_start() < layout.key(id) && layout.key(id) < layout.keys_end());
        assert_eq!(range_end(b"a\xff"), b"b");
    }
}
