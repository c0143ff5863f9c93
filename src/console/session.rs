//! Sign-in sessions, in memory: a random 256-bit id (the cookie), the signed-in key (kept in a
//! zeroizing `KeyString`, checked again through the Authenticator on every request, so that a
//! key revoked or disabled meanwhile ends its sessions), a per-session CSRF token, and the
//! time of last use. A session unused for the idle timeout is gone; at most `max` are kept.
//! A session also remembers the create forms it sent (by their one-time form id), so that a
//! form sent again (a reload, a double submit) makes no second key.

use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::domain::{key::KeyId, secret::KeyString};

/// Bytes of randomness in a session id and in a CSRF token.
const TOKEN_BYTES: usize = 32;
/// Create forms a session remembers having sent (the oldest is forgotten first).
const SENT_FORMS: usize = 64;

/// A signed-in session, as a request sees it.
#[derive(Clone)]
pub struct Session {
    pub id: String,
    pub key: std::sync::Arc<KeyString>,
    pub key_id: KeyId,
    pub csrf: String,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("key_id", &self.key_id).finish_non_exhaustive()
    }
}

struct Entry {
    session: Session,
    last_used: Instant,
    /// Create forms sent, by form id, with the key each made (`None`: being made).
    sent: VecDeque<(String, Option<KeyId>)>,
}

/// A create form's one-time id, as its sending finds it.
#[derive(Debug, PartialEq, Eq)]
pub enum Sent {
    /// Not sent before (or no session): go ahead, then `form_done`.
    First,
    /// Sent before: the key it made (`None`: still being made).
    Again(Option<KeyId>),
}

/// Why a sign-in got no session.
#[derive(Debug, PartialEq, Eq)]
pub enum Full {
    /// `max` sessions are open and none is idle.
    TooMany,
}

pub struct Sessions {
    idle: Duration,
    max: usize,
    entries: Mutex<HashMap<String, Entry>>,
}

impl Sessions {
    pub fn new(idle: Duration, max: usize) -> Self {
        Self { idle, max: max.max(1), entries: Mutex::new(HashMap::new()) }
    }

    /// The sessions; a lock poisoned by a panic elsewhere still holds consistent entries (each
    /// change is one map operation).
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens a session for `key`; idle sessions are dropped first to make room.
    pub fn open(&self, key: KeyString, key_id: KeyId) -> Result<Session, Full> {
        let now = Instant::now();
        let mut entries = self.lock();
        if entries.len() >= self.max {
            entries.retain(|_, e| now.duration_since(e.last_used) < self.idle);
        }
        if entries.len() >= self.max {
            return Err(Full::TooMany);
        }
        let session = Session { id: random_token(), key: std::sync::Arc::new(key), key_id, csrf: random_token() };
        entries.insert(session.id.clone(), Entry { session: session.clone(), last_used: now, sent: VecDeque::new() });
        Ok(session)
    }

    /// The session with this id, if it exists and was used within the idle timeout; using it
    /// restarts the timeout.
    pub fn get(&self, id: &str) -> Option<Session> {
        let now = Instant::now();
        let mut entries = self.lock();
        let entry = entries.get_mut(id)?;
        if now.duration_since(entry.last_used) >= self.idle {
            entries.remove(id);
            return None;
        }
        entry.last_used = now;
        Some(entry.session.clone())
    }

    /// Ends a session (sign-out, or its key no longer authenticates).
    pub fn close(&self, id: &str) {
        self.lock().remove(id);
    }

    /// Claims the create form `form_id` for session `id`: `First` once, `Again` after. An id
    /// that is not one `form_id` makes (a forged form's) is not remembered.
    pub fn claim_form(&self, id: &str, form_id: &str) -> Sent {
        if !is_form_id(form_id) {
            return Sent::First;
        }
        let mut entries = self.lock();
        let Some(entry) = entries.get_mut(id) else { return Sent::First };
        if let Some((_, made)) = entry.sent.iter().find(|(f, _)| f == form_id) {
            return Sent::Again(*made);
        }
        if entry.sent.len() == SENT_FORMS {
            entry.sent.pop_front();
        }
        entry.sent.push_back((form_id.to_owned(), None));
        Sent::First
    }

    /// Records what the claimed form `form_id` made; `None` (it made nothing) releases it, so
    /// that the form, corrected, can be sent again.
    pub fn form_done(&self, id: &str, form_id: &str, made: Option<KeyId>) {
        let mut entries = self.lock();
        let Some(entry) = entries.get_mut(id) else { return };
        match made {
            Some(key) => {
                if let Some(slot) = entry.sent.iter_mut().find(|(f, _)| f == form_id) {
                    slot.1 = Some(key);
                }
            }
            None => entry.sent.retain(|(f, _)| f != form_id),
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.lock().unwrap().len()
    }
}

/// A create form's one-time id.
pub fn form_id() -> String {
    random_token()
}

/// Whether `text` has the shape of a `form_id`: what a session remembers stays bounded.
fn is_form_id(text: &str) -> bool {
    text.len() == TOKEN_BYTES * 2 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// 256 random bits, hex.
fn random_token() -> String {
    let mut bytes = [0u8; TOKEN_BYTES];
    getrandom::fill(&mut bytes).expect("the operating system's random source");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares two tokens in time independent of where they differ.
pub fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> KeyString {
        KeyString::new("kw_test".into())
    }

    #[test]
    fn sessions_have_random_ids_and_tokens_and_end_on_close() {
        let s = Sessions::new(Duration::from_secs(60), 10);
        let a = s.open(key(), KeyId::new_v7()).unwrap();
        let b = s.open(key(), KeyId::new_v7()).unwrap();
        assert_eq!(a.id.len(), 64);
        assert_ne!(a.id, b.id);
        assert_ne!(a.csrf, b.csrf);
        assert_ne!(a.id, a.csrf);
        assert_eq!(s.get(&a.id).unwrap().key_id, a.key_id);
        s.close(&a.id);
        assert!(s.get(&a.id).is_none());
        assert!(s.get("nonsense").is_none());
        assert!(!format!("{a:?}").contains("kw_test"), "the key is not in Debug output");
    }

    #[test]
    fn idle_sessions_expire_and_the_count_is_bounded() {
        let s = Sessions::new(Duration::from_millis(30), 2);
        let a = s.open(key(), KeyId::new_v7()).unwrap();
        s.open(key(), KeyId::new_v7()).unwrap();
        assert_eq!(s.open(key(), KeyId::new_v7()).unwrap_err(), Full::TooMany);
        std::thread::sleep(Duration::from_millis(40));
        s.open(key(), KeyId::new_v7()).expect("idle sessions make room");
        assert_eq!(s.len(), 1, "both idle sessions were dropped");
        assert!(s.get(&a.id).is_none(), "idle past the timeout");
    }

    #[test]
    fn a_create_form_is_sent_once_and_again_only_after_it_made_nothing() {
        let s = Sessions::new(Duration::from_secs(60), 10);
        let a = s.open(key(), KeyId::new_v7()).unwrap();
        let made = KeyId::new_v7();
        let (f1, f2) = (form_id(), form_id());
        assert_eq!(s.claim_form(&a.id, &f1), Sent::First);
        assert_eq!(s.claim_form(&a.id, &f1), Sent::Again(None), "still being made");
        s.form_done(&a.id, &f1, Some(made));
        assert_eq!(s.claim_form(&a.id, &f1), Sent::Again(Some(made)));
        assert_eq!(s.claim_form(&a.id, &f2), Sent::First);
        s.form_done(&a.id, &f2, None);
        assert_eq!(s.claim_form(&a.id, &f2), Sent::First, "a refused form can be corrected and sent");
        for _ in 0..SENT_FORMS {
            s.claim_form(&a.id, &form_id());
        }
        assert_eq!(s.claim_form(&a.id, &f1), Sent::First, "the oldest forms are forgotten");
        let forged = "x".repeat(60_000);
        assert_eq!(s.claim_form(&a.id, &forged), Sent::First);
        assert_eq!(s.claim_form(&a.id, &forged), Sent::First, "an id no form carries is not remembered");
    }

    #[test]
    fn tokens_compare_exactly() {
        assert!(same_token("abc", "abc"));
        assert!(!same_token("abc", "abd"));
        assert!(!same_token("abc", "abcd"));
        assert!(!same_token("", "a"));
    }
}
