//! `[authz]` compiled for every request: the key headers in order, and the route rules as one
//! glob set, so that a request is matched against all of them in one pass.

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};

use crate::config::{AuthzSection, BEARER_HEADER, ConfigError};

/// Where a key is looked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyHeader {
    /// `Bearer <key>` in this (lower-case) header.
    Bearer(String),
    /// The bare key as the whole value of this (lower-case) header.
    Plain(String),
}

impl KeyHeader {
    pub fn name(&self) -> &str {
        match self {
            KeyHeader::Bearer(name) | KeyHeader::Plain(name) => name,
        }
    }

    /// The key in `value` of this header, if it holds one.
    pub fn key_in<'a>(&self, value: &'a str) -> Option<&'a str> {
        let value = value.trim();
        let key = match self {
            KeyHeader::Bearer(_) => {
                let (scheme, rest) = value.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then_some(rest.trim())?
            }
            KeyHeader::Plain(_) => value,
        };
        (!key.is_empty()).then_some(key)
    }
}

struct Route {
    /// Upper-case; any method when empty.
    methods: Vec<String>,
    scopes: Vec<String>,
}

/// The gateway rules, checked and compiled.
pub struct Rules {
    key_headers: Vec<KeyHeader>,
    pub strip_key_header: bool,
    pub trusted_proxy_hops: usize,
    globs: GlobSet,
    routes: Vec<Route>,
}

impl Rules {
    pub fn new(section: &AuthzSection) -> Result<Self, ConfigError> {
        section.validate()?;
        let key_headers = section
            .key_headers
            .iter()
            .map(|name| {
                let name = name.to_ascii_lowercase();
                if name == BEARER_HEADER { KeyHeader::Bearer(name) } else { KeyHeader::Plain(name) }
            })
            .collect();
        let mut globs = GlobSetBuilder::new();
        for (i, route) in section.routes.iter().enumerate() {
            globs.add(glob(&route.path).map_err(|e| {
                ConfigError::Invalid(format!("authz.routes[{i}].path: {:?} is not a glob: {e}", route.path))
            })?);
        }
        let globs = globs.build().map_err(|e| ConfigError::Invalid(format!("authz.routes: {e}")))?;
        let routes = section
            .routes
            .iter()
            .map(|r| Route {
                methods: r.methods.iter().map(|m| m.to_ascii_uppercase()).collect(),
                scopes: r.scopes.clone(),
            })
            .collect();
        Ok(Self {
            key_headers,
            strip_key_header: section.strip_key_header,
            trusted_proxy_hops: section.trusted_proxy_hops,
            globs,
            routes,
        })
    }

    pub fn key_headers(&self) -> &[KeyHeader] {
        &self.key_headers
    }

    /// The scopes of the first rule that matches `method` and `path` (the query string, if
    /// any, is cut off); none when no rule matches.
    pub fn scopes_for(&self, method: &str, path: &str) -> &[String] {
        if self.routes.is_empty() {
            return &[];
        }
        let path = path.split(['?', '#']).next().unwrap_or_default();
        self.globs
            .matches(path)
            .into_iter()
            .map(|i| &self.routes[i])
            .find(|r| r.methods.is_empty() || r.methods.iter().any(|m| m.eq_ignore_ascii_case(method)))
            .map_or(&[], |r| &r.scopes)
    }
}

/// `*` stays inside one path segment; `**` crosses them.
fn glob(path: &str) -> Result<Glob, globset::Error> {
    GlobBuilder::new(path).literal_separator(true).build()
}
