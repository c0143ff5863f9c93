//! End-to-end tests of keyward-client against a real keyward (a child process with a real
//! SoftHSM2 token): the typed `Client::verify`, and the example services (their own code,
//! included from `examples/`) behind `VerifyKeyLayer`.

mod axum_service;
mod keyward;
mod signing;
mod tls;
mod tonic_service;
mod verify;

#[allow(dead_code)]
#[path = "../../examples/axum_service.rs"]
mod axum_example;
#[allow(dead_code)]
#[path = "../../examples/tonic_service.rs"]
mod tonic_example;

/// Not a test: the entry point of the keyward server processes the tests start (see
/// `keyward::run_server_from_env`). Ignored, so that a plain run does not take it for one.
#[test]
#[ignore = "the entry point of the keyward server the tests start as a child process"]
fn keyward_server_process() {
    keyward::run_server_from_env();
}

/// A service under test listening on `127.0.0.1:0`: its address, and the task serving it.
pub struct Served {
    pub addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Served {
    /// Runs `serve(listener)` in the background on a fresh loopback port.
    pub async fn start<F, Fut, E>(serve: F) -> Self
    where
        F: FnOnce(tokio::net::TcpListener) -> Fut,
        Fut: std::future::Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Debug,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
        let addr = listener.local_addr().unwrap();
        let serving = serve(listener);
        let task = tokio::spawn(async move { serving.await.expect("the service under test stopped") });
        Served { addr, task }
    }
}
