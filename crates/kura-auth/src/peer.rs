//! Reading what a certificate says: the identity in its SAN URI, its
//! display name and when it expires.

use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::AuthError;
use crate::identity::Principal;

/// What Kura reads from one certificate.
#[derive(Clone, Debug)]
pub struct CertInfo {
    /// `None` for a certificate without a `kura://` SAN URI (a CA).
    pub principal: Option<Principal>,
    /// Unix seconds.
    pub not_after: i64,
}

/// Parses the first certificate of a PEM text; `what` names it in errors.
pub fn parse_pem(pem: &[u8], what: &str) -> Result<CertInfo, AuthError> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem)
        .map_err(|e| AuthError::Certificate(format!("{what}: not a PEM certificate: {e}")))?;
    parse_der(&block.contents).map_err(|e| AuthError::Certificate(format!("{what}: {e}")))
}

/// Parses one DER certificate.
pub fn parse_der(der: &[u8]) -> Result<CertInfo, AuthError> {
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| AuthError::Certificate(format!("not an X.509 certificate: {e}")))?;
    let name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or("")
        .to_string();
    let mut principal = None;
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for general in &san.value.general_names {
            if let GeneralName::URI(uri) = general
                && uri.starts_with("kura://")
            {
                principal = Some(Principal::from_uri(uri, &name)?);
                break;
            }
        }
    }
    Ok(CertInfo {
        principal,
        not_after: cert.validity().not_after.timestamp(),
    })
}
