//! Who a caller is: a Kura node with its roles, or a client of one tenant
//! with one role. Certificates carry the identity in one structured field,
//! a SAN URI:
//!
//! ```text
//! kura://node/<id>/<role>[+<role>…]      roles: meta, store, gateway
//! kura://client/<tenant>/<role>[+<role>…] roles: reader, writer, admin, auditor
//! ```
//!
//! Free text (the subject's common name) is only a display name.

use std::fmt;

use crate::AuthError;

/// Longest tenant name.
pub const TENANT_BYTES_MAX: usize = 64;

/// Checks a tenant name: 1–64 characters of `[A-Za-z0-9._-]`.
pub fn validate_tenant(tenant: &str) -> Result<(), String> {
    if tenant.is_empty() || tenant.len() > TENANT_BYTES_MAX {
        return Err(format!(
            "tenant must be 1 to {TENANT_BYTES_MAX} characters, got {}",
            tenant.len()
        ));
    }
    if let Some(c) = tenant
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "tenant {tenant:?} contains {c:?}; allowed are letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(())
}

/// What a Kura process does; a node certificate names one or more.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NodeRole {
    /// A Raft voter of the metadata cluster.
    Meta,
    /// A storage node.
    Store,
    /// A gateway (the public API, repair).
    Gateway,
}

impl NodeRole {
    pub const ALL: [NodeRole; 3] = [NodeRole::Meta, NodeRole::Store, NodeRole::Gateway];

    pub fn as_str(self) -> &'static str {
        match self {
            NodeRole::Meta => "meta",
            NodeRole::Store => "store",
            NodeRole::Gateway => "gateway",
        }
    }

    pub fn parse(s: &str) -> Result<Self, AuthError> {
        match s {
            "meta" => Ok(NodeRole::Meta),
            "store" => Ok(NodeRole::Store),
            "gateway" => Ok(NodeRole::Gateway),
            other => Err(AuthError::Identity(format!(
                "unknown node role {other:?} (known: meta, store, gateway)"
            ))),
        }
    }
}

/// A set of node roles.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NodeRoles(u8);

impl NodeRoles {
    pub const NONE: NodeRoles = NodeRoles(0);

    pub fn of(roles: &[NodeRole]) -> Self {
        let mut set = Self::NONE;
        for r in roles {
            set.insert(*r);
        }
        set
    }

    fn bit(role: NodeRole) -> u8 {
        match role {
            NodeRole::Meta => 1,
            NodeRole::Store => 2,
            NodeRole::Gateway => 4,
        }
    }

    pub fn insert(&mut self, role: NodeRole) {
        self.0 |= Self::bit(role);
    }

    pub fn contains(self, role: NodeRole) -> bool {
        self.0 & Self::bit(role) != 0
    }

    /// Shares at least one role with `other`.
    pub fn intersects(self, other: NodeRoles) -> bool {
        self.0 & other.0 != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = NodeRole> {
        NodeRole::ALL.into_iter().filter(move |r| self.contains(*r))
    }
}

impl fmt::Display for NodeRoles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.iter().map(NodeRole::as_str).collect();
        f.write_str(&names.join("+"))
    }
}

/// What a client may do in its tenant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ClientRole {
    /// Retrieve, Stat, ListStudy, StudyProtection.
    Reader,
    /// Store.
    Writer,
    /// The Admin API.
    Admin,
    /// The audit trail only.
    Auditor,
}

impl ClientRole {
    pub const ALL: [ClientRole; 4] = [
        ClientRole::Reader,
        ClientRole::Writer,
        ClientRole::Admin,
        ClientRole::Auditor,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ClientRole::Reader => "reader",
            ClientRole::Writer => "writer",
            ClientRole::Admin => "admin",
            ClientRole::Auditor => "auditor",
        }
    }

    pub fn parse(s: &str) -> Result<Self, AuthError> {
        match s {
            "reader" => Ok(ClientRole::Reader),
            "writer" => Ok(ClientRole::Writer),
            "admin" => Ok(ClientRole::Admin),
            "auditor" => Ok(ClientRole::Auditor),
            other => Err(AuthError::Identity(format!(
                "unknown client role {other:?} (known: reader, writer, admin, auditor)"
            ))),
        }
    }
}

impl fmt::Display for ClientRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of client roles (a PACS usually stores and reads: writer+reader).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ClientRoles(u8);

impl ClientRoles {
    pub const NONE: ClientRoles = ClientRoles(0);

    pub fn of(roles: &[ClientRole]) -> Self {
        let mut set = Self::NONE;
        for r in roles {
            set.0 |= Self::bit(*r);
        }
        set
    }

    fn bit(role: ClientRole) -> u8 {
        match role {
            ClientRole::Reader => 1,
            ClientRole::Writer => 2,
            ClientRole::Admin => 4,
            ClientRole::Auditor => 8,
        }
    }

    pub fn contains(self, role: ClientRole) -> bool {
        self.0 & Self::bit(role) != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = ClientRole> {
        ClientRole::ALL
            .into_iter()
            .filter(move |r| self.contains(*r))
    }

    /// `reader+writer` (also `reader,writer`).
    pub fn parse(s: &str) -> Result<Self, AuthError> {
        let mut set = Self::NONE;
        for r in s.split(['+', ',']) {
            set.0 |= Self::bit(ClientRole::parse(r.trim())?);
        }
        if set.is_empty() {
            return Err(AuthError::Identity("no client role given".into()));
        }
        Ok(set)
    }
}

impl fmt::Display for ClientRoles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.iter().map(ClientRole::as_str).collect();
        f.write_str(&names.join("+"))
    }
}

/// The identity a credential proves.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Principal {
    /// A Kura process.
    Node { id: u64, roles: NodeRoles },
    /// A caller of the public API.
    Client {
        tenant: String,
        roles: ClientRoles,
        /// Display name (a certificate's common name, a token's label).
        name: String,
    },
}

const SCHEME: &str = "kura://";

impl Principal {
    /// The SAN URI that carries this identity in a certificate.
    pub fn uri(&self) -> String {
        match self {
            Principal::Node { id, roles } => format!("{SCHEME}node/{id}/{roles}"),
            Principal::Client { tenant, roles, .. } => {
                format!("{SCHEME}client/{tenant}/{roles}")
            }
        }
    }

    /// Reads an identity from a SAN URI; `name` is the display name.
    pub fn from_uri(uri: &str, name: &str) -> Result<Self, AuthError> {
        let bad = |why: &str| AuthError::Identity(format!("identity URI {uri:?}: {why}"));
        let rest = uri
            .strip_prefix(SCHEME)
            .ok_or_else(|| bad("not a kura:// URI"))?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            ["node", id, roles] => {
                let id: u64 = id.parse().map_err(|_| bad("the node id is not a number"))?;
                let mut set = NodeRoles::NONE;
                for r in roles.split('+') {
                    set.insert(NodeRole::parse(r)?);
                }
                if set.is_empty() {
                    return Err(bad("a node needs at least one role"));
                }
                Ok(Principal::Node { id, roles: set })
            }
            ["client", tenant, roles] => {
                validate_tenant(tenant).map_err(|e| bad(&e))?;
                Ok(Principal::Client {
                    tenant: (*tenant).to_string(),
                    roles: ClientRoles::parse(roles)?,
                    name: name.to_string(),
                })
            }
            _ => Err(bad(
                "expected kura://node/ID/ROLES or kura://client/TENANT/ROLE",
            )),
        }
    }

    /// The tenant of a client identity.
    pub fn tenant(&self) -> Option<&str> {
        match self {
            Principal::Client { tenant, .. } => Some(tenant),
            Principal::Node { .. } => None,
        }
    }
}

/// How audit entries and logs name a principal: no patient data, only the
/// identity the credential proves.
impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::Node { id, roles } => write!(f, "node/{id} ({roles})"),
            Principal::Client {
                tenant,
                roles,
                name,
            } => write!(f, "{name} ({tenant}/{roles})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_round_trip() {
        let node = Principal::Node {
            id: 7,
            roles: NodeRoles::of(&[NodeRole::Gateway, NodeRole::Meta]),
        };
        assert_eq!(node.uri(), "kura://node/7/meta+gateway");
        assert_eq!(Principal::from_uri(&node.uri(), "x").ok(), Some(node));
        let client = Principal::Client {
            tenant: "hospital-a".into(),
            roles: ClientRoles::of(&[ClientRole::Writer, ClientRole::Reader]),
            name: "pacs".into(),
        };
        assert_eq!(client.uri(), "kura://client/hospital-a/reader+writer");
        assert_eq!(
            Principal::from_uri(&client.uri(), "pacs").ok(),
            Some(client)
        );
    }

    #[test]
    fn bad_uris_are_refused_with_a_reason() {
        for (uri, why) in [
            ("https://node/1/meta", "not a kura:// URI"),
            ("kura://node/x/meta", "not a number"),
            ("kura://node/1/boss", "unknown node role"),
            ("kura://client/a b/reader", "contains ' '"),
            ("kura://client/a/root", "unknown client role"),
            ("kura://client/a/reader/extra", "expected kura://"),
            ("kura://node/1/", "unknown node role"),
        ] {
            let e = Principal::from_uri(uri, "").expect_err(uri).to_string();
            assert!(e.contains(why), "{uri}: {e}");
        }
    }
}
