//! A cluster's certificates, made by running `kura certs` as an operator
//! would: a CA, a node certificate per `[[node]]` of kura.toml, client
//! certificates.

use std::path::{Path, PathBuf};
use std::process::Command;

use kura_auth::{ClientRoles, TlsMaterial, Transport};

/// Runs `kura certs ARGS`; answers its stderr on failure.
fn certs(kura: &Path, args: &[&str]) -> Result<(), String> {
    let out = Command::new(kura)
        .arg("certs")
        .args(args)
        .output()
        .map_err(|e| format!("run {}: {e}", kura.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "kura certs {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A certificate directory made with `kura certs`.
#[derive(Clone, Debug)]
pub struct CertDir {
    pub dir: PathBuf,
    kura: PathBuf,
}

impl CertDir {
    /// `kura certs init --out DIR`.
    pub fn init(kura: &Path, dir: &Path) -> Result<CertDir, String> {
        certs(kura, &["init", "--out", &dir.display().to_string()])?;
        Ok(CertDir {
            dir: dir.to_path_buf(),
            kura: kura.to_path_buf(),
        })
    }

    /// A directory made before (or by `kura dev`).
    pub fn open(kura: &Path, dir: &Path) -> CertDir {
        CertDir {
            dir: dir.to_path_buf(),
            kura: kura.to_path_buf(),
        }
    }

    /// `kura certs node --node ID --roles ROLES --san NAME… --dir DIR`:
    /// a node started by hand, without kura.toml.
    pub fn node_with(&self, id: u64, roles: &str, names: &[&str]) -> Result<(), String> {
        let id = id.to_string();
        let dir = self.dir.display().to_string();
        let mut args = vec!["node", "--node", &id, "--roles", roles, "--dir", &dir];
        for n in names {
            args.extend(["--san", n]);
        }
        certs(&self.kura, &args)
    }

    /// The cluster key file `DIR/cluster.keys`, made with `kura keys
    /// generate` the first time (gateways seal instances under it).
    pub fn keys(&self) -> Result<PathBuf, String> {
        let path = self.dir.join("cluster.keys");
        if !path.exists() {
            let out = Command::new(&self.kura)
                .args(["keys", "generate", "--file"])
                .arg(&path)
                .output()
                .map_err(|e| format!("run {}: {e}", self.kura.display()))?;
            if !out.status.success() {
                return Err(format!(
                    "kura keys generate: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
        Ok(path)
    }

    /// `kura certs node --config CONFIG --node ID --dir DIR`.
    pub fn node(&self, config: &Path, id: u64) -> Result<(), String> {
        certs(
            &self.kura,
            &[
                "node",
                "--config",
                &config.display().to_string(),
                "--node",
                &id.to_string(),
                "--dir",
                &self.dir.display().to_string(),
            ],
        )
    }

    /// `kura certs client --tenant T --role ROLES --dir DIR` (unless it
    /// exists already).
    pub fn client(&self, tenant: &str, roles: ClientRoles) -> Result<(), String> {
        let stem = kura_auth::certs::client_stem(tenant, roles, None);
        if self.dir.join(format!("{stem}.pem")).exists() {
            return Ok(());
        }
        certs(
            &self.kura,
            &[
                "client",
                "--tenant",
                tenant,
                "--role",
                &roles.to_string(),
                "--dir",
                &self.dir.display().to_string(),
            ],
        )
    }

    /// The transport of a client with `roles` in `tenant` (made if missing).
    pub fn client_transport(&self, tenant: &str, roles: ClientRoles) -> Result<Transport, String> {
        self.client(tenant, roles)?;
        let stem = kura_auth::certs::client_stem(tenant, roles, None);
        self.transport_of(&stem)
    }

    /// The transport of node `id` (its `node-ID` certificate).
    pub fn node_transport(&self, id: u64) -> Result<Transport, String> {
        self.transport_of(&kura_auth::certs::node_stem(id))
    }

    fn transport_of(&self, stem: &str) -> Result<Transport, String> {
        TlsMaterial::from_dir(&self.dir, stem)
            .map(Transport::tls)
            .map_err(|e| e.to_string())
    }
}
