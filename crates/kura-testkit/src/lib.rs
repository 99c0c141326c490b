//! Test support shared by Kura's integration tests, the chaos suite and the
//! benchmarks. Never a dependency of a product crate.
//!
//! - [`Proc`]: a child process killed and reaped when dropped;
//! - [`free_port`]: a port free on loopback now;
//! - [`store_messages`]: the messages of one `Archive.Store` call;
//! - [`certs`]: a cluster's certificates, made with `kura certs` as an
//!   operator would.

pub mod certs;

use std::process::Child;

use bytes::Bytes;
use kura_proto::v1::StoreRequest;

/// A child process that is killed and reaped when dropped, so a failing
/// test leaves nothing running.
pub struct Proc(pub Child);

impl Proc {
    pub fn id(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A TCP port that is free on 127.0.0.1 right now and that this process
/// has not handed out before: the kernel may offer a port again as soon as
/// its probe listener closes, and a config that names one port twice is
/// refused (a test that asks for several ports in a row saw exactly that).
pub fn free_port() -> std::io::Result<u16> {
    static ISSUED: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    for _ in 0..1000 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())?
            .port();
        let mut issued = ISSUED.lock().unwrap_or_else(|e| e.into_inner());
        if !issued.contains(&port) {
            issued.push(port);
            return Ok(port);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrNotAvailable,
        "no loopback port left that this process has not handed out",
    ))
}

/// The arguments that start `kura dev` with every port it listens on
/// (gRPC, ops, DICOM) picked free, so several can run at once beside a
/// developer's own `kura dev`; add `--json --data DIR`.
pub const KURA_DEV_ON_FREE_PORTS: [&str; 7] =
    ["dev", "--port", "0", "--ops-port", "0", "--dicom-port", "0"];

/// The messages of a Store call: the header (tenant, size), then `bytes` in
/// `chunk`-byte pieces.
pub fn store_messages(tenant: &str, bytes: &[u8], chunk: usize) -> Vec<StoreRequest> {
    StoreRequest::messages(tenant, Bytes::copy_from_slice(bytes), chunk)
}

/// Installs ring as rustls's provider (test processes that talk TLS
/// themselves).
pub fn install_crypto_provider() {
    kura_auth::install_crypto_provider();
}
