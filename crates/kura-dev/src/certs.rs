//! The certificates of a dev cluster, made on first start in `DATA/tls`:
//! a CA, one node certificate per voter, storage node and the gateway
//! (each with only its own role), and a client certificate per role of
//! tenant `default`, which the client commands find by themselves.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use kura_auth::certs::{CA_CERT, CA_DAYS_DEFAULT, Ca, LEAF_DAYS_DEFAULT, client_stem};
use kura_auth::{AuthError, ClientRole, ClientRoles, NodeRole, NodeRoles, TlsMaterial, Transport};

/// The tenant of the dev cluster's client certificates.
pub const DEV_TENANT: &str = "default";
/// The tenant `kura drill` stores its verification instances under.
pub const DRILL_TENANT: &str = "kura-drill";

/// Where a dev cluster keeps its certificates.
pub fn tls_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("tls")
}

/// The file stem of a dev process's certificate.
pub fn stem(role: NodeRole, id: u64) -> String {
    match role {
        NodeRole::Gateway => "gateway".into(),
        NodeRole::Meta => format!("meta-{id}"),
        NodeRole::Store => format!("store-{id}"),
    }
}

/// The CA in `dir`, made if there is none yet.
fn ca(dir: &Path) -> Result<Ca, AuthError> {
    if dir.join(CA_CERT).exists() {
        return Ca::load(dir);
    }
    let ca = Ca::generate("Kura dev cluster CA", CA_DAYS_DEFAULT)?;
    ca.write(dir)?;
    Ok(ca)
}

/// Makes whatever certificate of the dev cluster is missing: the CA, the
/// node certificates of `nodes` (role, id) and the client certificates.
pub fn ensure(dir: &Path, host: IpAddr, nodes: &[(NodeRole, u64)]) -> Result<(), AuthError> {
    let ca = ca(dir)?;
    let names = vec![host.to_string(), "localhost".to_string()];
    for &(role, id) in nodes {
        let stem = stem(role, id);
        if !dir.join(format!("{stem}.pem")).exists() {
            ca.issue_node(id, NodeRoles::of(&[role]), &names, LEAF_DAYS_DEFAULT)?
                .write(dir, &stem)?;
        }
    }
    let clients = ClientRole::ALL.into_iter().map(|r| (DEV_TENANT, r)).chain([
        (DRILL_TENANT, ClientRole::Writer),
        (DRILL_TENANT, ClientRole::Reader),
    ]);
    for (tenant, role) in clients {
        issue_client(dir, tenant, ClientRoles::of(&[role]))?;
    }
    Ok(())
}

/// Issues `client-TENANT-ROLES.pem` with the dev CA unless it exists.
pub fn issue_client(dir: &Path, tenant: &str, roles: ClientRoles) -> Result<(), AuthError> {
    let stem = client_stem(tenant, roles, None);
    if !dir.join(format!("{stem}.pem")).exists() {
        Ca::load(dir)?
            .issue_client(
                tenant,
                roles,
                &format!("dev {tenant} {roles}"),
                LEAF_DAYS_DEFAULT,
            )?
            .write(dir, &stem)?;
    }
    Ok(())
}

/// The transport with the CA and the certificate `<stem>.pem` of `dir`.
fn load(dir: &Path, stem: &str) -> Result<Transport, AuthError> {
    Ok(Transport::tls(TlsMaterial::from_dir(dir, stem)?))
}

/// The transport of one dev process: the CA and its own certificate.
pub fn transport(dir: &Path, role: NodeRole, id: u64) -> Result<Transport, AuthError> {
    load(dir, &stem(role, id))
}

/// A client's transport with the dev cluster's certificate for `roles` in
/// `tenant` (issued now if missing).
pub fn client_transport(
    dir: &Path,
    tenant: &str,
    roles: ClientRoles,
) -> Result<Transport, AuthError> {
    issue_client(dir, tenant, roles)?;
    load(dir, &client_stem(tenant, roles, None))
}
