//! A cluster CA and the certificates it signs (`kura certs`), with rcgen:
//! no openssl recipe.
//!
//! Files in a certificate directory:
//!
//! ```text
//! ca.pem, ca.key                      the cluster CA (keep ca.key offline)
//! node-<id>.pem, node-<id>.key        a node: its DNS names and IPs, its roles
//! client-<tenant>-<role>[-<name>].pem/.key   a client of one tenant, one role
//! ```
//!
//! Keys are written with mode 0600 and never overwritten.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use crate::AuthError;
use crate::identity::{ClientRoles, NodeRoles, Principal};

/// File names in a certificate directory.
pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca.key";

/// Default validity of a CA, in days (10 years).
pub const CA_DAYS_DEFAULT: u32 = 3650;
/// Default validity of a node or client certificate, in days.
pub const LEAF_DAYS_DEFAULT: u32 = 365;

/// The file stem of a node's certificate and key.
pub fn node_stem(id: u64) -> String {
    format!("node-{id}")
}

/// The file stem of a client's certificate and key
/// (`client-hospital-a-reader+writer`).
pub fn client_stem(tenant: &str, roles: ClientRoles, name: Option<&str>) -> String {
    match name {
        Some(n) => format!("client-{tenant}-{roles}-{n}"),
        None => format!("client-{tenant}-{roles}"),
    }
}

fn rc(what: &str) -> impl Fn(rcgen::Error) -> AuthError + '_ {
    move |e| AuthError::Certificate(format!("{what}: {e}"))
}

fn validity(params: &mut CertificateParams, days: u32) {
    let now = OffsetDateTime::now_utc();
    // An hour back: clocks of two machines are never quite equal.
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(i64::from(days));
}

/// A cluster CA that can sign node and client certificates.
pub struct Ca {
    cert_pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    /// A new CA, valid `days` days.
    pub fn generate(name: &str, days: u32) -> Result<Ca, AuthError> {
        let key = KeyPair::generate().map_err(rc("CA key"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        dn.push(DnType::OrganizationName, "Kura");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params, days);
        let cert = params.self_signed(&key).map_err(rc("CA certificate"))?;
        let cert_pem = cert.pem();
        let key_pem = key.serialize_pem();
        Ok(Ca {
            cert_pem,
            key_pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA in `dir` (`ca.pem` and `ca.key`).
    pub fn load(dir: &Path) -> Result<Ca, AuthError> {
        let cert_pem = read_text(&dir.join(CA_CERT))?;
        let key_pem = read_text(&dir.join(CA_KEY))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| {
            AuthError::Certificate(format!(
                "{}: not a private key: {e}",
                dir.join(CA_KEY).display()
            ))
        })?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|e| {
            AuthError::Certificate(format!(
                "{}: not a CA certificate: {e}",
                dir.join(CA_CERT).display()
            ))
        })?;
        Ok(Ca {
            cert_pem,
            key_pem,
            issuer,
        })
    }

    /// The CA certificate (PEM), what every node and client trusts.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Writes `ca.pem` and `ca.key` into `dir`; refuses to replace them.
    pub fn write(&self, dir: &Path) -> Result<(PathBuf, PathBuf), AuthError> {
        write_pair(dir, "ca", &self.cert_pem, &self.key_pem)
    }

    /// A node certificate for `id` with `roles`, valid for every name in
    /// `names` (DNS names and IP addresses), both server and client.
    pub fn issue_node(
        &self,
        id: u64,
        roles: NodeRoles,
        names: &[String],
        days: u32,
    ) -> Result<Issued, AuthError> {
        if roles.is_empty() {
            return Err(AuthError::Identity(format!("node {id} has no role")));
        }
        let principal = Principal::Node { id, roles };
        let mut sans = vec![uri_san(&principal)?];
        for n in names {
            sans.push(match n.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(n.as_str().try_into().map_err(|e| {
                    AuthError::Certificate(format!("{n:?} is not a DNS name: {e}"))
                })?),
            });
        }
        self.issue(
            &format!("kura node {id}"),
            sans,
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            days,
        )
    }

    /// A client certificate: one tenant, its roles; `name` is its display
    /// name in the audit trail.
    pub fn issue_client(
        &self,
        tenant: &str,
        roles: ClientRoles,
        name: &str,
        days: u32,
    ) -> Result<Issued, AuthError> {
        crate::identity::validate_tenant(tenant).map_err(AuthError::Identity)?;
        if roles.is_empty() {
            return Err(AuthError::Identity(
                "a client needs at least one role".into(),
            ));
        }
        let principal = Principal::Client {
            tenant: tenant.to_string(),
            roles,
            name: name.to_string(),
        };
        self.issue(
            name,
            vec![uri_san(&principal)?],
            vec![ExtendedKeyUsagePurpose::ClientAuth],
            days,
        )
    }

    fn issue(
        &self,
        common_name: &str,
        sans: Vec<SanType>,
        ekus: Vec<ExtendedKeyUsagePurpose>,
        days: u32,
    ) -> Result<Issued, AuthError> {
        let key = KeyPair::generate().map_err(rc("key"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        dn.push(DnType::OrganizationName, "Kura");
        params.distinguished_name = dn;
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = ekus;
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, days);
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(rc("certificate"))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

fn uri_san(p: &Principal) -> Result<SanType, AuthError> {
    let uri = p.uri();
    Ok(SanType::URI(uri.as_str().try_into().map_err(|e| {
        AuthError::Certificate(format!("identity URI {uri:?}: {e}"))
    })?))
}

/// A certificate and its private key, both PEM.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Issued {
    /// Writes `<stem>.pem` and `<stem>.key` into `dir`; refuses to replace
    /// existing files.
    pub fn write(&self, dir: &Path, stem: &str) -> Result<(PathBuf, PathBuf), AuthError> {
        write_pair(dir, stem, &self.cert_pem, &self.key_pem)
    }
}

fn write_pair(
    dir: &Path,
    stem: &str,
    cert: &str,
    key: &str,
) -> Result<(PathBuf, PathBuf), AuthError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| AuthError::Io(format!("create {}: {e}", dir.display())))?;
    let cert_path = dir.join(format!("{stem}.pem"));
    let key_path = dir.join(format!("{stem}.key"));
    for p in [&cert_path, &key_path] {
        if p.exists() {
            return Err(AuthError::Exists(p.clone()));
        }
    }
    write_new(&key_path, key.as_bytes(), 0o600)?;
    write_new(&cert_path, cert.as_bytes(), 0o644)?;
    Ok((cert_path, key_path))
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), AuthError> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let io = |e: std::io::Error| AuthError::Io(format!("write {}: {e}", path.display()));
    let mut f = opts.open(path).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)
}

pub(crate) fn read_text(path: &Path) -> Result<String, AuthError> {
    std::fs::read_to_string(path)
        .map_err(|e| AuthError::Io(format!("read {}: {e}", path.display())))
}
