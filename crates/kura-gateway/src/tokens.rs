//! Bearer tokens: a random 256-bit secret shown once; the cluster keeps
//! only its blake3 (through Raft). Every gateway holds the token list in
//! memory and refreshes it every [`REFRESH`], so a new token works and a
//! revoked one stops working on every gateway within seconds.
//!
//! A plain (unkeyed) hash is enough: the secret has 256 random bits, so
//! the hash gives nothing to guess from, and lookups go by hash (no
//! secret is ever compared byte by byte).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use kura_auth::{ClientRoles, Principal};
use kura_proto::meta::{Consistency, Query, TokenRecord, hex_prefix};
use kura_proto::meta_client::MetaClient;

/// How often a gateway re-reads the token list.
pub const REFRESH: Duration = Duration::from_secs(1);
/// Every secret starts with this, so a log scanner can find leaked ones.
pub const SECRET_PREFIX: &str = "kura_";

/// A new secret and its hash.
pub fn new_secret() -> (String, [u8; 32]) {
    let bytes: [u8; 32] = rand::random();
    let secret = format!("{SECRET_PREFIX}{}", hex::encode(bytes));
    let hash = hash(&secret);
    (secret, hash)
}

/// The hash the cluster keeps of `secret`.
pub fn hash(secret: &str) -> [u8; 32] {
    *blake3::hash(secret.as_bytes()).as_bytes()
}

/// The token list as this gateway last read it.
#[derive(Default)]
pub struct TokenCache {
    by_hash: RwLock<HashMap<[u8; 32], TokenRecord>>,
}

impl TokenCache {
    /// The identity `secret` proves, if it is a valid (not revoked) token.
    pub fn principal(&self, secret: &str) -> Option<Principal> {
        let h = hash(secret);
        let map = self.by_hash.read().ok()?;
        let t = map.get(&h)?;
        if t.revoked_unix_ms.is_some() {
            return None;
        }
        Some(Principal::Client {
            tenant: t.tenant.clone(),
            roles: ClientRoles::parse(&t.roles).ok()?,
            name: format!("token {} ({})", t.id, t.label),
        })
    }

    /// Replaces the list.
    pub fn set(&self, tokens: Vec<TokenRecord>) {
        let map = tokens.into_iter().map(|t| (t.hash, t)).collect();
        if let Ok(mut g) = self.by_hash.write() {
            *g = map;
        }
    }

    /// Reads the list from the cluster now.
    pub async fn refresh(&self, meta: &MetaClient) -> Result<(), String> {
        let tokens = meta
            .query(&Query::ListTokens {
                consistency: Consistency::Linearizable,
            })
            .await
            .map_err(|e| e.to_string())?
            .into_tokens()
            .map_err(|e| e.to_string())?;
        self.set(tokens);
        Ok(())
    }

    /// Keeps the list fresh until the returned task is aborted.
    pub fn spawn_refresher(self: &Arc<Self>, meta: MetaClient) -> tokio::task::JoinHandle<()> {
        let cache = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(REFRESH);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = cache.refresh(&meta).await {
                    tracing::debug!(error = %e, "token list not refreshed");
                }
            }
        })
    }
}

/// A token record for a new secret.
pub fn record(
    hash: [u8; 32],
    tenant: &str,
    roles: ClientRoles,
    label: &str,
    created_by: &str,
) -> TokenRecord {
    TokenRecord {
        hash,
        id: hex_prefix(&hash),
        tenant: tenant.to_string(),
        roles: roles.to_string(),
        label: label.to_string(),
        created_unix_ms: kura_proto::audit::now_ms(),
        created_by: created_by.to_string(),
        revoked_unix_ms: None,
    }
}
