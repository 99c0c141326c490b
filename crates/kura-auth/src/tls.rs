//! TLS material and the transport every Kura link uses.
//!
//! tonic applies a TLS config only to `https://` endpoints: an `http://`
//! endpoint given one connects in plaintext without an error. So no caller
//! formats a URL itself: [`Transport::endpoint`] picks the scheme that
//! matches the transport.

use std::path::Path;
use std::sync::Arc;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig};

use crate::AuthError;
use crate::certs::read_text;
use crate::identity::Principal;

/// A handshake that has not finished after this is dropped.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The CA a process trusts and, usually, its own certificate and key.
pub struct TlsMaterial {
    ca_pem: String,
    own: Option<(String, String)>,
    principal: Option<Principal>,
    /// Unix seconds when the first of the CA and the own certificate
    /// expires.
    expires_at: i64,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("principal", &self.principal)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl TlsMaterial {
    /// From PEM text: the CA certificate, and a certificate with its key
    /// (a client that authenticates with a token has none).
    pub fn from_pem(ca_pem: String, own: Option<(String, String)>) -> Result<Self, AuthError> {
        Self::parse(ca_pem, own, "the CA certificate", "the certificate")
    }

    /// Reads what Kura needs from the certificates once; `ca_name` and
    /// `cert_name` name them in errors.
    fn parse(
        ca_pem: String,
        own: Option<(String, String)>,
        ca_name: &str,
        cert_name: &str,
    ) -> Result<Self, AuthError> {
        let ca = crate::peer::parse_pem(ca_pem.as_bytes(), ca_name)?;
        let mut expires_at = ca.not_after;
        let mut principal = None;
        if let Some((cert, _)) = &own {
            let c = crate::peer::parse_pem(cert.as_bytes(), cert_name)?;
            expires_at = expires_at.min(c.not_after);
            principal = c.principal;
        }
        Ok(Self {
            ca_pem,
            own,
            principal,
            expires_at,
        })
    }

    /// From files: the CA certificate, and a certificate with its key.
    pub fn load(ca: &Path, own: Option<(&Path, &Path)>) -> Result<Self, AuthError> {
        let ca_pem = read_text(ca)?;
        let (own, cert_name) = match own {
            Some((c, k)) => (
                Some((read_text(c)?, read_text(k)?)),
                c.display().to_string(),
            ),
            None => (None, String::new()),
        };
        Self::parse(ca_pem, own, &ca.display().to_string(), &cert_name)
    }

    /// From a certificate directory as `kura certs` writes it: `ca.pem`
    /// and `<stem>.pem` with `<stem>.key`.
    pub fn from_dir(dir: &Path, stem: &str) -> Result<Self, AuthError> {
        let cert = dir.join(format!("{stem}.pem"));
        let key = dir.join(format!("{stem}.key"));
        Self::load(&dir.join(crate::certs::CA_CERT), Some((&cert, &key)))
    }

    /// The identity the own certificate proves.
    pub fn principal(&self) -> Option<&Principal> {
        self.principal.as_ref()
    }

    /// Unix seconds when the first certificate (CA or own) expires.
    pub fn expires_at(&self) -> i64 {
        self.expires_at
    }

    /// Days until the first certificate expires (negative once expired).
    pub fn days_left(&self) -> f64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        (self.expires_at - now) as f64 / 86_400.0
    }

    fn client_config(&self) -> ClientTlsConfig {
        let mut c = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca_pem));
        if let Some((cert, key)) = &self.own {
            c = c.identity(Identity::from_pem(cert, key));
        }
        c
    }

    fn server_config(&self, clients: ClientCerts) -> Result<ServerTlsConfig, AuthError> {
        let (cert, key) = self.own.as_ref().ok_or_else(|| {
            AuthError::Config("a TLS server needs its own certificate and key".into())
        })?;
        Ok(ServerTlsConfig::new()
            .identity(Identity::from_pem(cert, key))
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
            .client_auth_optional(clients == ClientCerts::Optional)
            .timeout(HANDSHAKE_TIMEOUT))
    }
}

/// Whether a server requires a client certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientCerts {
    /// Internal services: every caller is a node with a certificate.
    Required,
    /// The public API: a client certificate or a bearer token.
    Optional,
}

/// How a process talks to others and serves: TLS (the default of every
/// deployment) or plaintext (`insecure_plaintext`, `kura dev --insecure`).
#[derive(Clone, Debug)]
pub enum Transport {
    Plaintext,
    Tls(Arc<TlsMaterial>),
}

impl Transport {
    pub fn tls(material: TlsMaterial) -> Self {
        Transport::Tls(Arc::new(material))
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }

    /// `https` or `http`.
    pub fn scheme(&self) -> &'static str {
        match self {
            Transport::Plaintext => "http",
            Transport::Tls(_) => "https",
        }
    }

    /// The TLS material, if any.
    pub fn material(&self) -> Option<&Arc<TlsMaterial>> {
        match self {
            Transport::Plaintext => None,
            Transport::Tls(m) => Some(m),
        }
    }

    /// An endpoint for `addr` (`host:port`), with the scheme and TLS
    /// config that belong together.
    pub fn endpoint(&self, addr: &str) -> Result<Endpoint, AuthError> {
        if addr.contains("://") {
            return Err(AuthError::Config(format!(
                "address {addr:?}: give host:port, the scheme follows the transport"
            )));
        }
        let url = format!("{}://{addr}", self.scheme());
        let endpoint = Endpoint::from_shared(url)
            .map_err(|e| AuthError::Config(format!("bad address {addr}: {e}")))?;
        match self {
            Transport::Plaintext => Ok(endpoint),
            Transport::Tls(m) => endpoint
                .tls_config(m.client_config())
                .map_err(|e| AuthError::Config(format!("TLS for {addr}: {e}"))),
        }
    }

    /// A server builder with this transport's TLS, recording each call's
    /// path for the guards ([`crate::authz::PathLayer`]).
    pub fn server(
        &self,
        clients: ClientCerts,
    ) -> Result<
        Server<tower::layer::util::Stack<crate::authz::PathLayer, tower::layer::util::Identity>>,
        AuthError,
    > {
        let builder = match self {
            Transport::Plaintext => Server::builder(),
            Transport::Tls(m) => Server::builder()
                .tls_config(m.server_config(clients)?)
                .map_err(|e| AuthError::Config(format!("server TLS: {e}")))?,
        };
        Ok(builder.layer(crate::authz::PathLayer))
    }
}
