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
/// AES-128-GCM comes first among the cipher suites (rustls puts
/// AES-256-GCM first): 10 AES rounds instead of 14 on every byte of every
/// shard that crosses a link, with the same 128-bit security the
/// certificates' P-256 keys give. AES-256-GCM and ChaCha20-Poly1305 stay
/// on offer for peers that ask for them.
///
/// rustls marks ring's provider deprecated because it lacks the
/// post-quantum key exchange (X25519MLKEM768), which only its aws-lc-rs
/// provider has; aws-lc-rs is another large C build, which this project
/// avoids on purpose (see ARCHITECTURE.md).
#[allow(deprecated)]
pub fn install_crypto_provider() {
    let mut provider = rustls::crypto::ring::default_provider();
    // Stable: AES-128-GCM suites move to the front, the order of the rest
    // is kept.
    provider.cipher_suites.sort_by_key(|s| {
        !matches!(
            s.suite(),
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
                | rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                | rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
        )
    });
    let _ = provider.install_default();
}

#[cfg(test)]
mod tests {
    #[test]
    fn aes_128_gcm_is_offered_first() {
        super::install_crypto_provider();
        let p = rustls::crypto::CryptoProvider::get_default().expect("installed");
        assert_eq!(
            p.cipher_suites[0].suite(),
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
        );
        assert!(p.cipher_suites.len() >= 3, "the others stay on offer");
    }
}
