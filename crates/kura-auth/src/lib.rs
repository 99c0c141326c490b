//! Kura's security layer, shared by every role:
//!
//! - [`identity`]: who a caller is (a node and its roles, or a client of
//!   one tenant with one role) and how a certificate says it;
//! - [`certs`]: the cluster CA and the certificates it signs (`kura certs`);
//! - [`tls`]: TLS material and the [`Transport`] every link is built with;
//! - [`authz`]: which node roles may call which internal service.

pub mod authz;
pub mod certs;
pub mod identity;
pub mod peer;
pub mod tls;

use std::path::PathBuf;

pub use authz::{NodeGuard, peer_addr, peer_principal};
pub use identity::{ClientRole, ClientRoles, NodeRole, NodeRoles, Principal, validate_tenant};
pub use tls::{ClientCerts, TlsMaterial, Transport};

/// What went wrong with certificates, keys or identities.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{0}")]
    Identity(String),
    #[error("{0}")]
    Certificate(String),
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Io(String),
    #[error("{} exists already; refusing to replace it", .0.display())]
    Exists(PathBuf),
}

/// Installs ring as the process-wide rustls crypto provider. Call it at
/// the start of `main` and of test fixtures; a second call changes nothing.
///
/// rustls marks ring's provider deprecated because it lacks the
/// post-quantum key exchange (X25519MLKEM768), which only its aws-lc-rs
/// provider has; aws-lc-rs is another large C build, which this project
/// avoids on purpose (see ARCHITECTURE.md). TLS 1.3 with X25519 and
/// AES-GCM/ChaCha20 is what this gives.
#[allow(deprecated)]
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
