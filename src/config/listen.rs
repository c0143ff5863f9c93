//! Listen addresses: a TCP `HOST:PORT` or a Unix-domain socket `unix:/abs/path`, parsed from
//! the strings the command line and keyward.toml use.

use std::{fmt, net::SocketAddr, path::PathBuf, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The prefix that names a Unix-domain socket.
pub const UNIX_PREFIX: &str = "unix:";

/// Where a listener listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    /// A Unix-domain socket file (an absolute path).
    Unix(PathBuf),
}

impl ListenAddr {
    /// Whether only this machine can reach it: loopback TCP or a Unix socket. Plaintext is
    /// always allowed there.
    pub fn is_local(&self) -> bool {
        match self {
            ListenAddr::Tcp(addr) => addr.ip().to_canonical().is_loopback(),
            ListenAddr::Unix(_) => true,
        }
    }
}

impl FromStr for ListenAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix(UNIX_PREFIX) {
            let path = PathBuf::from(path);
            if !path.is_absolute() {
                return Err(format!("{s:?}: a Unix socket needs an absolute path (unix:/run/keyward/keyward.sock)"));
            }
            return Ok(ListenAddr::Unix(path));
        }
        s.parse::<SocketAddr>().map(ListenAddr::Tcp).map_err(|_| {
            format!("{s:?} is not a listen address: HOST:PORT with an IP address (127.0.0.1:50051, [::1]:50051) or unix:/abs/path")
        })
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(addr) => write!(f, "{addr}"),
            ListenAddr::Unix(path) => write!(f, "{UNIX_PREFIX}{}", path.display()),
        }
    }
}

impl From<SocketAddr> for ListenAddr {
    fn from(addr: SocketAddr) -> Self {
        ListenAddr::Tcp(addr)
    }
}

impl Serialize for ListenAddr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_and_unix_addresses_parse_and_print_back() {
        for text in ["127.0.0.1:50051", "[::1]:8081", "unix:/run/keyward/keyward.sock"] {
            assert_eq!(text.parse::<ListenAddr>().unwrap().to_string(), text);
        }
        assert_eq!("unix:/a.sock".parse::<ListenAddr>().unwrap(), ListenAddr::Unix("/a.sock".into()));
        assert!("unix:/a.sock".parse::<ListenAddr>().unwrap().is_local());
        assert!("127.0.0.1:1".parse::<ListenAddr>().unwrap().is_local());
        assert!(!"0.0.0.0:1".parse::<ListenAddr>().unwrap().is_local());
    }

    #[test]
    fn relative_unix_paths_and_host_names_are_refused_with_the_expected_form() {
        assert!("unix:keyward.sock".parse::<ListenAddr>().unwrap_err().contains("absolute path"));
        assert!("localhost:80".parse::<ListenAddr>().unwrap_err().contains("HOST:PORT"));
        assert!("".parse::<ListenAddr>().is_err());
    }
}
