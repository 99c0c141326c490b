//! The DICOM front door: a DIMSE service class provider on its own port
//! (default 11112), so a PACS or a modality sends and verifies with
//! C-STORE and C-ECHO as it would to any archive.
//!
//! The upper layer (associations, PDUs, negotiation) is dicom-ul's; the
//! command sets are kura-dicom's [`kura_dicom::dimse`]. This module admits
//! associations and turns each DIMSE operation into a call of the same
//! archive core the gRPC API uses ([`crate::ingest`]), mapping its typed
//! outcome to a DIMSE status:
//!
//! | outcome | status |
//! |---|---|
//! | stored, or already stored with identical bytes | 0000 success |
//! | same SOP Instance UID stored with other bytes | 0111 duplicate SOP instance |
//! | data set is not the instance or class its command names | A900 |
//! | not DICOM Kura can read, malformed, truncated | C000 cannot understand |
//! | a limit or too few storage nodes/voters for now | A700 out of resources |
//! | the calling AE may not store | 0124 not authorized |
//! | anything else (deadline, internal) | 0110 processing failure |
//!
//! Failures carry the refusal's reason code and message in Error Comment
//! (cut to the 64 characters LO allows; UIDs and sizes only, as in every
//! Kura error).
//!
//! **Who may connect.** Only calling AE titles listed in the configuration
//! ([`DicomPeer`]), each mapped to a tenant and its roles, and only when
//! they call this archive's own AE title; any other association is
//! rejected (A-ASSOCIATE-RJ, calling/called AE title not recognized).
//! Every association, accepted or not, and every operation leaves an
//! audit entry like a gRPC call (`who` = `AE <title> (tenant/roles)`).
//!
//! **Limits.** At most `max_associations` at once (more are rejected as
//! transient, local limit exceeded), PDUs up to `max_pdu` bytes, an
//! association idle for `idle_timeout` is aborted; each association is
//! its own task, and a Store streams through the same bounded pipeline as
//! gRPC, so one slow peer holds only its own association. TCP_NODELAY on
//! every connection.

mod assoc;
mod store;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kura_auth::ClientRoles;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use crate::state::Inner;

/// The default DICOM port (PS3.8: 11112, the registered "dicom" port for
/// unprivileged servers).
pub const DEFAULT_PORT: u16 = 11112;
/// The default AE title of the archive.
pub const DEFAULT_AE_TITLE: &str = "KURA";

/// A calling application entity the archive knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DicomPeer {
    /// Its AE title (1–16 characters, no backslash or control characters).
    pub ae_title: String,
    /// The tenant its operations act in.
    pub tenant: String,
    /// What it may do: writer (C-STORE), reader (query and retrieve).
    pub roles: ClientRoles,
}

/// How the DICOM front door runs.
#[derive(Clone, Debug)]
pub struct DicomConfig {
    /// The archive's own AE title: associations must call it.
    pub ae_title: String,
    /// The calling AE titles admitted.
    pub peers: Vec<DicomPeer>,
    /// Associations served at once.
    pub max_associations: usize,
    /// The largest PDU the archive accepts (advertised in negotiation).
    pub max_pdu: u32,
    /// An association that sends nothing for this long is aborted.
    pub idle_timeout: Duration,
}

impl Default for DicomConfig {
    fn default() -> Self {
        DicomConfig {
            ae_title: DEFAULT_AE_TITLE.into(),
            peers: Vec::new(),
            max_associations: 64,
            max_pdu: 65_536,
            idle_timeout: Duration::from_secs(120),
        }
    }
}

/// Why a DICOM configuration was refused.
pub fn validate_ae_title(title: &str) -> Result<(), String> {
    if title.trim().is_empty() {
        return Err("an AE title may not be empty".into());
    }
    if title.len() > 16 {
        return Err(format!("AE title {title:?} is longer than 16 characters"));
    }
    if title
        .chars()
        .any(|c| !c.is_ascii() || c.is_ascii_control() || c == '\\')
    {
        return Err(format!(
            "AE title {title:?} may hold only printable ASCII characters other than backslash"
        ));
    }
    Ok(())
}

impl DicomConfig {
    /// Refuses a configuration the front door cannot serve, naming what
    /// is wrong.
    pub fn validate(&self) -> Result<(), String> {
        validate_ae_title(&self.ae_title)?;
        let mut seen = std::collections::HashSet::new();
        for p in &self.peers {
            validate_ae_title(&p.ae_title)?;
            kura_auth::validate_tenant(&p.tenant)
                .map_err(|e| format!("peer {}: {e}", p.ae_title))?;
            if !seen.insert(p.ae_title.trim()) {
                return Err(format!("peer AE title {} is listed twice", p.ae_title));
            }
        }
        if self.max_associations == 0 {
            return Err("max_associations must be at least 1".into());
        }
        // PS3.8: a maximum length of at least 4096 (dicom-ul's minimum).
        if !(4096..=16 * 1024 * 1024).contains(&self.max_pdu) {
            return Err(format!(
                "max_pdu {} is outside 4096..=16777216 bytes",
                self.max_pdu
            ));
        }
        if self.idle_timeout.is_zero() {
            return Err("idle_timeout must be longer than 0".into());
        }
        Ok(())
    }
}

/// The DICOM front door, running.
pub(crate) struct DicomServer {
    pub addr: SocketAddr,
    /// `Some(grace)`: stop accepting, give running associations `grace`.
    stop: watch::Sender<Option<Duration>>,
    task: JoinHandle<()>,
}

impl DicomServer {
    pub(crate) fn start(
        inner: Arc<Inner>,
        config: DicomConfig,
        listener: TcpListener,
    ) -> std::io::Result<DicomServer> {
        config.validate().map_err(std::io::Error::other)?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = watch::channel(None);
        let shared = Arc::new(assoc::Shared::new(inner, config));
        let task = tokio::spawn(accept_loop(shared, listener, stopped));
        tracing::info!(%addr, "DICOM front door started");
        Ok(DicomServer { addr, stop, task })
    }

    /// Stops accepting; associations in progress get `grace` to finish,
    /// then are cut off.
    pub(crate) async fn shutdown(self, grace: Duration) {
        let _ = self.stop.send(Some(grace));
        let _ = self.task.await;
    }
}

async fn accept_loop(
    shared: Arc<assoc::Shared>,
    listener: TcpListener,
    mut stopped: watch::Receiver<Option<Duration>>,
) {
    let slots = Arc::new(Semaphore::new(shared.config.max_associations));
    let mut running = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stopped.changed() => break,
            Some(_) = running.join_next(), if !running.is_empty() => continue,
        };
        let (socket, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: wait, go on.
                tracing::warn!(error = %e, "DICOM accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if let Err(e) = socket.set_nodelay(true) {
            tracing::debug!(error = %e, %peer, "cannot set TCP_NODELAY");
        }
        let shared = Arc::clone(&shared);
        match Arc::clone(&slots).try_acquire_owned() {
            Ok(slot) => {
                running.spawn(async move {
                    assoc::serve(&shared, socket, peer).await;
                    drop(slot);
                });
            }
            Err(_) => {
                running.spawn(async move { assoc::refuse_busy(&shared, socket, peer).await });
            }
        }
    }
    let grace = (*stopped.borrow()).unwrap_or_default();
    let drained = tokio::time::timeout(grace, async {
        while running.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            associations = running.len(),
            "DICOM associations still running after the grace period: cut off"
        );
    }
    running.shutdown().await;
}

/// Known peers by AE title (trailing spaces are padding).
pub(crate) fn peers_by_title(peers: &[DicomPeer]) -> HashMap<String, DicomPeer> {
    peers
        .iter()
        .map(|p| (p.ae_title.trim().to_string(), p.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ae_titles_are_checked() {
        assert!(validate_ae_title("STORESCU").is_ok());
        assert!(validate_ae_title("").is_err());
        assert!(validate_ae_title("   ").is_err());
        assert!(validate_ae_title("SEVENTEEN_CHARS_X").is_err());
        assert!(validate_ae_title("A\\B").is_err());
        assert!(validate_ae_title("放射線").is_err());
    }

    #[test]
    fn a_config_naming_a_peer_twice_is_refused() {
        let peer = DicomPeer {
            ae_title: "PACS".into(),
            tenant: "default".into(),
            roles: ClientRoles::of(&[kura_auth::ClientRole::Writer]),
        };
        let c = DicomConfig {
            peers: vec![peer.clone(), peer],
            ..DicomConfig::default()
        };
        assert!(c.validate().unwrap_err().contains("listed twice"));
        assert!(
            DicomConfig {
                max_pdu: 100,
                ..DicomConfig::default()
            }
            .validate()
            .is_err()
        );
    }
}
