//! mTLS identities: which key a verified client certificate stands for. `[tls.identities]`
//! maps a subject alternative name (a URI such as a SPIFFE ID, or a DNS name) to a key id; a
//! call without a bearer key on a connection with such a certificate is authenticated as that
//! key (`Keys::authenticate_identity`), its state and scopes applying as to a bearer.

use std::collections::{BTreeMap, HashMap};

use crate::{config::ConfigError, domain::key::KeyId};

/// SAN → key id, read from the configuration at startup.
#[derive(Clone, Debug, Default)]
pub struct Identities {
    /// Names containing `:` (URIs), matched exactly.
    uris: HashMap<String, KeyId>,
    /// DNS names, matched without regard to case.
    dns: HashMap<String, KeyId>,
}

/// What a client certificate's names map to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolution {
    Key(KeyId),
    /// None of its names is mapped (or it could not be read).
    Unmapped,
    /// Its names map to different keys: refused rather than guessed.
    Ambiguous,
}

impl Identities {
    pub fn from_config(table: &BTreeMap<String, String>) -> Result<Self, ConfigError> {
        let mut identities = Self::default();
        for (name, key_id) in table {
            let invalid = |reason: &str| Err(ConfigError::Invalid(format!("tls.identities {name:?}: {reason}")));
            let name = name.trim();
            if name.is_empty() {
                return invalid("the name is empty");
            }
            let Ok(id) = key_id.trim().parse::<KeyId>() else {
                return invalid("the value must be a key id (a UUID, as GetKey shows it)");
            };
            let previous = if name.contains(':') {
                identities.uris.insert(name.to_owned(), id)
            } else {
                identities.dns.insert(name.to_ascii_lowercase(), id)
            };
            if previous.is_some() {
                return invalid("this DNS name is listed twice (names are compared without regard to case)");
            }
        }
        Ok(identities)
    }

    pub fn len(&self) -> usize {
        self.uris.len() + self.dns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The key a client certificate (DER) stands for, by its URI and DNS subject alternative
    /// names.
    pub fn resolve(&self, cert: &[u8]) -> Resolution {
        let mut found = None;
        for name in san_names(cert) {
            let id = match &name {
                San::Uri(uri) => self.uris.get(uri),
                San::Dns(dns) => self.dns.get(&dns.to_ascii_lowercase()),
            };
            match (found, id) {
                (_, None) => {}
                (None, Some(&id)) => found = Some(id),
                (Some(first), Some(&id)) if first != id => return Resolution::Ambiguous,
                (Some(_), Some(_)) => {}
            }
        }
        found.map_or(Resolution::Unmapped, Resolution::Key)
    }
}

#[derive(Debug, PartialEq, Eq)]
enum San {
    Uri(String),
    Dns(String),
}

/// The URI and DNS subject alternative names of a DER certificate; none if it cannot be read.
fn san_names(cert: &[u8]) -> Vec<San> {
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert) else { return Vec::new() };
    let Ok(Some(san)) = parsed.subject_alternative_name() else { return Vec::new() };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) => Some(San::Uri((*uri).to_owned())),
            x509_parser::extensions::GeneralName::DNSName(dns) => Some(San::Dns((*dns).to_owned())),
            _ => None,
        })
        .collect()
}
