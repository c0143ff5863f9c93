//! The sockets keyward listens on: TCP, or a Unix-domain socket file for sidecar deployments.
//! A socket file is made mode 0660 (owner and group may connect), a stale one left by a crashed
//! run is replaced (only when it is a socket and nothing answers on it), and it is removed again
//! when the listener closes.

use std::{
    io,
    os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::net::{TcpListener, UnixListener, UnixStream};

use crate::config::ListenAddr;

/// The mode of a socket file: read and write (connect) for the owner and the group.
pub const SOCKET_MODE: u32 = 0o660;

/// How long a connection attempt to an existing socket file may take before it is taken as live.
const STALE_CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// A bound listener.
pub enum Listener {
    Tcp(TcpListener),
    /// The socket file goes when its guard is dropped.
    Unix(UnixListener, SocketFile),
}

impl Listener {
    /// Binds `addr`. For a Unix socket: its directory must exist; an existing file there is
    /// replaced only when it is a socket nobody listens on.
    pub async fn bind(addr: &ListenAddr) -> io::Result<Self> {
        match addr {
            ListenAddr::Tcp(addr) => TcpListener::bind(addr).await.map(Listener::Tcp),
            ListenAddr::Unix(path) => {
                remove_stale_socket(path).await?;
                let listener = UnixListener::bind(path)?;
                // Set right after bind: until then the umask decides (a socket needs write
                // permission to be connected to, which a usual umask gives to no one else).
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))?;
                let file = SocketFile::of(path)?;
                Ok(Listener::Unix(listener, file))
            }
        }
    }

    /// The bound address (the actual port for a TCP port 0).
    pub fn local_addr(&self) -> io::Result<ListenAddr> {
        match self {
            Listener::Tcp(listener) => listener.local_addr().map(ListenAddr::Tcp),
            Listener::Unix(_, file) => Ok(ListenAddr::Unix(file.path.clone())),
        }
    }
}

/// A socket file this process made: removed on drop, unless another file has taken its place.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    /// Device and inode, to tell this file from a later one at the same path.
    id: (u64, u64),
}

impl SocketFile {
    fn of(path: &Path) -> io::Result<Self> {
        let meta = std::fs::symlink_metadata(path)?;
        Ok(Self { path: path.to_owned(), id: (meta.dev(), meta.ino()) })
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.id);
        if ours && let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot remove the socket file");
        }
    }
}

/// Removes a socket file at `path` left by a process that no longer listens; refuses a file that
/// is not a socket, and a socket something still answers on.
async fn remove_stale_socket(path: &Path) -> io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a socket; refusing to replace it", path.display()),
        ));
    }
    match tokio::time::timeout(STALE_CHECK_TIMEOUT, UnixStream::connect(path)).await {
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::info!(path = %path.display(), "removing a stale socket file nothing listens on");
            std::fs::remove_file(path)
        }
        Ok(Err(e)) => Err(e),
        Ok(Ok(_)) | Err(_) => {
            Err(io::Error::new(io::ErrorKind::AddrInUse, format!("another process listens on {}", path.display())))
        }
    }
}

/// A connection accepted by a [`Listener`].
pub enum Accepted {
    Tcp(tokio::net::TcpStream),
    Unix(UnixStream),
}

impl Listener {
    /// The next connection, with the peer's address for TCP (`TCP_NODELAY` set: the HTTP
    /// listeners answer small requests one at a time).
    pub async fn accept(&self) -> io::Result<(Accepted, Option<std::net::SocketAddr>)> {
        match self {
            Listener::Tcp(l) => {
                let (tcp, peer) = l.accept().await?;
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!(%peer, error = %e, "setting TCP_NODELAY failed");
                }
                Ok((Accepted::Tcp(tcp), Some(peer)))
            }
            Listener::Unix(l, _) => Ok((Accepted::Unix(l.accept().await?.0), None)),
        }
    }
}

/// The connections of a Unix listener, as the stream tonic serves.
pub struct UnixIncoming(pub UnixListener);

impl tokio_stream::Stream for UnixIncoming {
    type Item = io::Result<UnixStream>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_accept(cx).map(|accepted| Some(accepted.map(|(stream, _)| stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_socket_file_is_0660_replaces_a_stale_one_refuses_a_live_one_and_goes_at_close() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.sock");
        let addr = ListenAddr::Unix(path.clone());
        let listener = Listener::bind(&addr).await.unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, SOCKET_MODE);
        let refused = Listener::bind(&addr).await.err().expect("a live socket is not replaced");
        assert_eq!(refused.kind(), io::ErrorKind::AddrInUse);
        drop(listener);
        assert!(!path.exists(), "removed at close");

        // A crashed run leaves its socket file behind.
        std::mem::forget(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let listener = Listener::bind(&addr).await;
        assert!(listener.is_err(), "the forgotten listener still answers");
        drop(listener);
        let stale = dir.path().join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
        assert!(stale.exists(), "std leaves the file behind");
        let replaced = Listener::bind(&ListenAddr::Unix(stale.clone())).await.unwrap();
        assert_eq!(replaced.local_addr().unwrap(), ListenAddr::Unix(stale));

        let plain = dir.path().join("not-a-socket");
        std::fs::write(&plain, "data").unwrap();
        let refused = Listener::bind(&ListenAddr::Unix(plain.clone())).await.err().unwrap();
        assert_eq!(refused.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read_to_string(plain).unwrap(), "data");
    }
}
