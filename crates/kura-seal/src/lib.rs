//! Encryption at rest, format `kura-seal/1` (ARCHITECTURE.md, "Encryption
//! at rest", is the specification; this crate is the only implementation).
//!
//! The gateway seals every instance before erasure coding, so storage nodes
//! only ever hold ciphertext: shard hashes, scrub, rebuild and reclaim work
//! without a key.
//!
//! - **Cluster keys** ([`Keyring`]): versioned 256-bit secrets from a key
//!   file, never from the config itself. The highest version seals new
//!   instances; older versions only open what they sealed until
//!   `kura admin keys rotate` has re-wrapped it.
//! - **Data key**: random per instance ([`DataKey::generate`]). It is
//!   stored only wrapped ([`Keyring::wrap`]): AES-256-GCM under a key drawn
//!   by HKDF-SHA256 from the cluster key, a random 256-bit salt and the
//!   object key, with the tenant, UID, object key and key version as
//!   associated data. The wrapped secrets are the data key, the plaintext's
//!   blake3 and the Patient ID ([`Secrets`]).
//! - **Object**: the STREAM construction over AES-256-GCM ([`Sealer`],
//!   [`Opener`]): plaintext chunks of [`CHUNK_PLAIN`] bytes, each followed by
//!   its 16-byte tag; nonce = 7 zero bytes, the chunk counter (u32, big
//!   endian), a last-chunk flag byte; associated data = the format name and
//!   the object key. Reordered, truncated, extended or spliced objects do
//!   not open.
//! - **Fingerprint** ([`Keyring::fingerprint`]): a keyed blake3 of the
//!   plaintext's blake3, the already-stored / conflict check's key, so that
//!   a voter's disk does not confirm that a known file is stored.
//! - **Sealed fields** ([`Keyring::seal_field`]): short strings kept outside
//!   a manifest (the Patient ID of an audit entry) as
//!   `s1:<version>:<hex of nonce, ciphertext, tag>`, AES-256-GCM under a key
//!   drawn by HKDF from the cluster key and the field's context.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

/// The one scheme this build writes and reads (`kura-seal/1`).
pub const SCHEME: u16 = 1;
/// Plaintext bytes per sealed chunk (the last chunk may hold fewer).
pub const CHUNK_PLAIN: usize = 64 * 1024;
/// AES-GCM tag bytes after each chunk.
pub const TAG_LEN: usize = 16;
/// A whole sealed chunk.
pub const CHUNK_SEALED: usize = CHUNK_PLAIN + TAG_LEN;
/// Bytes of a cluster key, a data key, a salt.
pub const KEY_LEN: usize = 32;
/// Wrapped secrets hold at least the data key, the blake3 and the tag.
const WRAPPED_MIN: usize = 2 * KEY_LEN + TAG_LEN;
/// Patient IDs longer than this are refused (DICOM's LO holds 64
/// characters; 256 bytes leaves room for multi-byte character sets).
pub const PATIENT_ID_MAX: usize = 256;

const CHUNK_AAD: &[u8] = b"kura-seal/1 chunk";
const WRAP_INFO: &[u8] = b"kura-seal/1 wrap";
const FINGERPRINT_CONTEXT: &str = "kura-seal/1 2026-12 content fingerprint";
const CHECK_CONTEXT: &str = "kura-seal/1 2026-12 key check value";
const FIELD_INFO: &[u8] = b"kura-seal/1 field";
/// The prefix of a sealed field.
pub const FIELD_PREFIX: &str = "s1:";
/// The longest plaintext a sealed field holds.
pub const FIELD_MAX: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("cannot read the cluster key file {path}: {source}")]
    KeyFileUnreadable {
        path: String,
        source: std::io::Error,
    },
    #[error("cluster key file {path}, line {line}: {reason}")]
    KeyFileInvalid {
        path: String,
        line: usize,
        reason: String,
    },
    #[error(
        "cluster key file {path} holds no key (one line per version: \"<version> <64 hex digits>\"; `kura keys generate --file {path}` makes one)"
    )]
    KeyFileEmpty { path: String },
    #[error(
        "cluster key file {path} may be read by any user (mode {mode:o}): `chmod 600 {path}` (or 640 for a group)"
    )]
    KeyFileExposed { path: String, mode: u32 },
    #[error("cannot write the cluster key file {path}: {source}")]
    KeyFileWrite {
        path: String,
        source: std::io::Error,
    },
    #[error("the cluster key file {path} already holds the last version there is")]
    KeyVersionsExhausted { path: String },
    #[error("cluster key version {version} is not in this gateway's key file (it has {have})")]
    UnknownKeyVersion { version: u32, have: String },
    #[error(
        "the wrapped data key does not open under cluster key version {version}: the key file holds another key of that version, or the record was altered"
    )]
    UnwrapFailed { version: u32 },
    #[error("wrapped secrets of {len} bytes are malformed: {reason}")]
    WrappedMalformed { len: usize, reason: &'static str },
    #[error(
        "sealed chunk {chunk} does not authenticate: the stored bytes were altered, truncated, reordered or belong to another instance"
    )]
    ChunkRejected { chunk: u64 },
    #[error("the sealed object ends after {bytes} bytes, inside its first chunk's tag")]
    Truncated { bytes: u64 },
    #[error("the object is too large to seal (more than 2^32 chunks of {CHUNK_PLAIN} bytes)")]
    TooLarge,
    #[error("a Patient ID of {0} bytes is longer than the {PATIENT_ID_MAX} bytes sealed with it")]
    PatientIdTooLong(usize),
    #[error("the operating system's random number generator failed")]
    Random,
    #[error("a sealed field is malformed: {0}")]
    FieldMalformed(&'static str),
    #[error("a field of {0} bytes is longer than the {FIELD_MAX} bytes a sealed field holds")]
    FieldTooLong(usize),
}

/// Sealed bytes for `plain` plaintext bytes.
pub fn sealed_len(plain: u64) -> u64 {
    let chunks = plain.div_ceil(CHUNK_PLAIN as u64).max(1);
    plain + chunks * TAG_LEN as u64
}

/// Plaintext bytes of a sealed object of `sealed` bytes, if that is a
/// length [`sealed_len`] can produce.
pub fn plain_len(sealed: u64) -> Option<u64> {
    let chunks = sealed.div_ceil(CHUNK_SEALED as u64).max(1);
    let plain = sealed.checked_sub(chunks * TAG_LEN as u64)?;
    (sealed_len(plain) == sealed).then_some(plain)
}

fn random<const N: usize>() -> Result<Zeroizing<[u8; N]>, SealError> {
    let mut out = Zeroizing::new([0u8; N]);
    SystemRandom::new()
        .fill(&mut out[..])
        .map_err(|_| SealError::Random)?;
    Ok(out)
}

/// A fresh random 256-bit salt (for [`Keyring::wrap`]).
pub fn random_salt() -> Result<[u8; KEY_LEN], SealError> {
    Ok(*random::<KEY_LEN>()?)
}

/// A line for a key file: `version`, a space and a fresh random key in hex.
pub fn generate_key_line(version: u32) -> Result<String, SealError> {
    let key = random::<KEY_LEN>()?;
    Ok(format!("{version} {}", hex::encode(&key[..])))
}

/// Adds a fresh random key to the key file at `path` under the next
/// version (1 for a new file, created readable by its owner only, with a
/// comment saying what it is), syncs it and reads it back; answers the
/// version added.
pub fn add_key_version(path: &Path) -> Result<u32, SealError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let shown = path.display().to_string();
    let existing = if path.exists() {
        Some(Keyring::from_file(path)?)
    } else {
        None
    };
    let version = match &existing {
        Some(k) => k
            .current()
            .checked_add(1)
            .ok_or_else(|| SealError::KeyVersionsExhausted {
                path: shown.clone(),
            })?,
        None => 1,
    };
    let line = generate_key_line(version)?;
    let write_err = |source| SealError::KeyFileWrite {
        path: shown.clone(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(write_err)?;
    if existing.is_none() {
        writeln!(
            f,
            "# Kura cluster keys: \"<version> <64 hex digits>\" per line; the highest version seals\n\
             # new instances. Gateways only: never give this file to storage nodes or voters."
        )
        .map_err(write_err)?;
    }
    writeln!(f, "{line}").map_err(write_err)?;
    f.sync_all().map_err(write_err)?;
    drop(f);
    if Keyring::from_file(path)?.current() != version {
        return Err(SealError::KeyFileInvalid {
            path: shown,
            line: 0,
            reason: format!("version {version} did not read back as the newest"),
        });
    }
    Ok(version)
}

/// The versioned cluster keys a gateway holds.
pub struct Keyring {
    keys: BTreeMap<u32, Zeroizing<[u8; KEY_LEN]>>,
    source: String,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("source", &self.source)
            .field("versions", &self.versions())
            .finish()
    }
}

impl Keyring {
    /// Reads a key file: one key per line, `<version> <64 hex digits>`,
    /// `#` starts a comment. The file must not be readable by every user.
    pub fn from_file(path: &Path) -> Result<Keyring, SealError> {
        let shown = path.display().to_string();
        let meta = std::fs::metadata(path).map_err(|source| SealError::KeyFileUnreadable {
            path: shown.clone(),
            source,
        })?;
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o004 != 0 {
                return Err(SealError::KeyFileExposed { path: shown, mode });
            }
        }
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|source| {
            SealError::KeyFileUnreadable {
                path: shown.clone(),
                source,
            }
        })?);
        Keyring::parse(&text, &shown)
    }

    /// Parses key file text; `source` names it in errors.
    pub fn parse(text: &str, source: &str) -> Result<Keyring, SealError> {
        let mut keys = BTreeMap::new();
        for (n, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let invalid = |reason: String| SealError::KeyFileInvalid {
                path: source.to_string(),
                line: n + 1,
                reason,
            };
            let mut parts = line.split_whitespace();
            let (Some(version), Some(key), None) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(invalid(
                    "expected \"<version> <64 hex digits>\"".to_string(),
                ));
            };
            let version: u32 =
                version.parse().ok().filter(|v| *v > 0).ok_or_else(|| {
                    invalid(format!("version {version:?} is not a number from 1"))
                })?;
            let mut material = Zeroizing::new([0u8; KEY_LEN]);
            hex::decode_to_slice(key, &mut material[..]).map_err(|_| {
                invalid(format!(
                    "the key of version {version} is not 64 hex digits (256 bits)"
                ))
            })?;
            if material.iter().all(|b| *b == 0) {
                return Err(invalid(format!(
                    "the key of version {version} is all zeros"
                )));
            }
            if keys.insert(version, material).is_some() {
                return Err(invalid(format!("version {version} appears twice")));
            }
        }
        if keys.is_empty() {
            return Err(SealError::KeyFileEmpty {
                path: source.to_string(),
            });
        }
        Ok(Keyring {
            keys,
            source: source.to_string(),
        })
    }

    /// Where the keys came from (a path), for messages.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The version new instances are sealed under: the highest.
    pub fn current(&self) -> u32 {
        self.keys.keys().next_back().copied().unwrap_or(0)
    }

    /// Every version held, ascending.
    pub fn versions(&self) -> Vec<u32> {
        self.keys.keys().copied().collect()
    }

    pub fn has(&self, version: u32) -> bool {
        self.keys.contains_key(&version)
    }

    fn material(&self, version: u32) -> Result<&[u8; KEY_LEN], SealError> {
        self.keys
            .get(&version)
            .map(|k| &**k)
            .ok_or_else(|| SealError::UnknownKeyVersion {
                version,
                have: format!("{:?}", self.versions()),
            })
    }

    /// A value that tells whether two parties hold the same key of one
    /// version and reveals nothing about the key: the metadata cluster
    /// keeps it, and a gateway whose key differs refuses to start.
    pub fn check_value(&self, version: u32) -> Result<[u8; 32], SealError> {
        Ok(blake3::derive_key(CHECK_CONTEXT, self.material(version)?))
    }

    /// The content fingerprint under key `version`: a keyed blake3 of the
    /// tenant and the plaintext's blake3. Equal content of one tenant gives
    /// equal fingerprints under one version; without the key, a known file
    /// cannot be matched to a fingerprint.
    pub fn fingerprint(
        &self,
        version: u32,
        tenant: &str,
        plain_blake3: &[u8; 32],
    ) -> Result<[u8; 32], SealError> {
        let key = Zeroizing::new(blake3::derive_key(
            FINGERPRINT_CONTEXT,
            self.material(version)?,
        ));
        let mut h = blake3::Hasher::new_keyed(&key);
        h.update(&(tenant.len() as u64).to_le_bytes());
        h.update(tenant.as_bytes());
        h.update(plain_blake3);
        Ok(*h.finalize().as_bytes())
    }

    fn wrapping_key(
        &self,
        version: u32,
        salt: &[u8; KEY_LEN],
        ctx: &WrapContext<'_>,
    ) -> Result<LessSafeKey, SealError> {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(self.material(version)?);
        let info = [WRAP_INFO, &ctx.object_key[..]];
        let okm = prk
            .expand(&info, &AES_256_GCM)
            .map_err(|_| SealError::UnwrapFailed { version })?;
        Ok(LessSafeKey::new(UnboundKey::from(okm)))
    }

    /// Wraps `secrets` under cluster key `version` with a fresh salt.
    pub fn wrap(
        &self,
        version: u32,
        ctx: &WrapContext<'_>,
        secrets: &Secrets,
    ) -> Result<Wrapped, SealError> {
        if secrets.patient_id.len() > PATIENT_ID_MAX {
            return Err(SealError::PatientIdTooLong(secrets.patient_id.len()));
        }
        let salt = random_salt()?;
        let key = self.wrapping_key(version, &salt, ctx)?;
        let mut bytes = Vec::with_capacity(WRAPPED_MIN + secrets.patient_id.len());
        bytes.extend_from_slice(&secrets.data_key.0[..]);
        bytes.extend_from_slice(&secrets.plain_blake3);
        bytes.extend_from_slice(secrets.patient_id.as_bytes());
        // Each wrap has its own key (random salt): a zero nonce is safe.
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key([0; 12]),
            Aad::from(ctx.aad(version)),
            &mut bytes,
        )
        .map_err(|_| SealError::UnwrapFailed { version })?;
        Ok(Wrapped {
            key_version: version,
            salt,
            bytes,
        })
    }

    /// Opens secrets wrapped by [`Keyring::wrap`] for the same context.
    pub fn unwrap(&self, wrapped: &Wrapped, ctx: &WrapContext<'_>) -> Result<Secrets, SealError> {
        let version = wrapped.key_version;
        if wrapped.bytes.len() < WRAPPED_MIN || wrapped.bytes.len() > WRAPPED_MIN + PATIENT_ID_MAX {
            return Err(SealError::WrappedMalformed {
                len: wrapped.bytes.len(),
                reason: "not the length of a data key, a blake3, a Patient ID and a tag",
            });
        }
        let key = self.wrapping_key(version, &wrapped.salt, ctx)?;
        let mut bytes = Zeroizing::new(wrapped.bytes.clone());
        let plain = key
            .open_in_place(
                Nonce::assume_unique_for_key([0; 12]),
                Aad::from(ctx.aad(version)),
                &mut bytes,
            )
            .map_err(|_| SealError::UnwrapFailed { version })?;
        let mut data_key = Zeroizing::new([0u8; KEY_LEN]);
        data_key.copy_from_slice(&plain[..KEY_LEN]);
        let mut plain_blake3 = [0u8; 32];
        plain_blake3.copy_from_slice(&plain[KEY_LEN..2 * KEY_LEN]);
        let patient_id = std::str::from_utf8(&plain[2 * KEY_LEN..])
            .map_err(|_| SealError::WrappedMalformed {
                len: wrapped.bytes.len(),
                reason: "the Patient ID is not UTF-8",
            })?
            .to_string();
        Ok(Secrets {
            data_key: DataKey(data_key),
            plain_blake3,
            patient_id,
        })
    }
}

impl Keyring {
    fn field_key(&self, version: u32, context: &str) -> Result<LessSafeKey, SealError> {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, FIELD_INFO).extract(self.material(version)?);
        let info = [FIELD_INFO, context.as_bytes()];
        let okm = prk
            .expand(&info, &AES_256_GCM)
            .map_err(|_| SealError::UnwrapFailed { version })?;
        Ok(LessSafeKey::new(UnboundKey::from(okm)))
    }

    /// Seals a short string under key `version`, bound to `context` (e.g.
    /// the tenant it belongs to): `s1:<version>:<hex>`, a fresh random
    /// nonce each time. The empty string stays empty (nothing to hide).
    pub fn seal_field(
        &self,
        version: u32,
        context: &str,
        plain: &str,
    ) -> Result<String, SealError> {
        if plain.is_empty() {
            return Ok(String::new());
        }
        if plain.len() > FIELD_MAX {
            return Err(SealError::FieldTooLong(plain.len()));
        }
        let key = self.field_key(version, context)?;
        let nonce = random::<12>()?;
        let mut bytes = Vec::with_capacity(12 + plain.len() + TAG_LEN);
        bytes.extend_from_slice(&nonce[..]);
        bytes.extend_from_slice(plain.as_bytes());
        let tag = key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(context.as_bytes()),
                &mut bytes[12..],
            )
            .map_err(|_| SealError::UnwrapFailed { version })?;
        bytes.extend_from_slice(tag.as_ref());
        Ok(format!("{FIELD_PREFIX}{version}:{}", hex::encode(bytes)))
    }

    /// Opens a field made by [`Keyring::seal_field`] for the same context.
    pub fn open_field(&self, sealed: &str, context: &str) -> Result<String, SealError> {
        if sealed.is_empty() {
            return Ok(String::new());
        }
        let rest = sealed
            .strip_prefix(FIELD_PREFIX)
            .ok_or(SealError::FieldMalformed("no s1: prefix"))?;
        let (version, hex_part) = rest
            .split_once(':')
            .ok_or(SealError::FieldMalformed("no key version"))?;
        let version: u32 = version
            .parse()
            .map_err(|_| SealError::FieldMalformed("the key version is not a number"))?;
        let mut bytes = hex::decode(hex_part).map_err(|_| SealError::FieldMalformed("not hex"))?;
        if bytes.len() < 12 + TAG_LEN {
            return Err(SealError::FieldMalformed("too short"));
        }
        let key = self.field_key(version, context)?;
        let mut nonce = [0u8; 12];
        nonce.copy_from_slice(&bytes[..12]);
        let plain = key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut bytes[12..],
            )
            .map_err(|_| SealError::UnwrapFailed { version })?;
        String::from_utf8(plain.to_vec()).map_err(|_| SealError::FieldMalformed("not UTF-8"))
    }
}

/// The key version a sealed field names, if it is one.
pub fn field_version(sealed: &str) -> Option<u32> {
    sealed
        .strip_prefix(FIELD_PREFIX)?
        .split_once(':')?
        .0
        .parse()
        .ok()
}

/// What a wrapping is bound to: opening it for another instance fails.
#[derive(Clone, Copy, Debug)]
pub struct WrapContext<'a> {
    pub tenant: &'a str,
    pub sop_instance_uid: &'a str,
    pub object_key: &'a [u8; 32],
}

impl WrapContext<'_> {
    fn aad(&self, version: u32) -> Vec<u8> {
        let mut aad = Vec::with_capacity(64 + self.tenant.len() + self.sop_instance_uid.len());
        aad.extend_from_slice(WRAP_INFO);
        aad.extend_from_slice(&version.to_be_bytes());
        for part in [self.tenant.as_bytes(), self.sop_instance_uid.as_bytes()] {
            aad.extend_from_slice(&(part.len() as u64).to_be_bytes());
            aad.extend_from_slice(part);
        }
        aad.extend_from_slice(self.object_key);
        aad
    }
}

/// An instance's data key.
#[derive(Clone)]
pub struct DataKey(Zeroizing<[u8; KEY_LEN]>);

impl DataKey {
    pub fn generate() -> Result<DataKey, SealError> {
        Ok(DataKey(random::<KEY_LEN>()?))
    }

    /// A data key of known bytes (tests and fuzzing; real keys come from
    /// [`DataKey::generate`] or an unwrap).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> DataKey {
        DataKey(Zeroizing::new(bytes))
    }

    fn aead(&self) -> LessSafeKey {
        // A 32-byte key is always a valid AES-256 key.
        match UnboundKey::new(&AES_256_GCM, &self.0[..]) {
            Ok(k) => LessSafeKey::new(k),
            Err(_) => unreachable!("AES-256-GCM takes any 32-byte key"),
        }
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(<redacted>)")
    }
}

/// What a manifest keeps sealed: the data key, the plaintext's blake3 (for
/// end-to-end verification and what Stat shows) and the Patient ID.
#[derive(Clone)]
pub struct Secrets {
    pub data_key: DataKey,
    pub plain_blake3: [u8; 32],
    pub patient_id: String,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secrets")
            .field("data_key", &self.data_key)
            .field("plain_blake3", &hex::encode(self.plain_blake3))
            .field("patient_id", &"<redacted>")
            .finish()
    }
}

/// Secrets wrapped under one cluster key version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wrapped {
    pub key_version: u32,
    pub salt: [u8; KEY_LEN],
    pub bytes: Vec<u8>,
}

fn chunk_nonce(counter: u32, last: bool) -> Nonce {
    let mut n = [0u8; 12];
    n[7..11].copy_from_slice(&counter.to_be_bytes());
    n[11] = u8::from(last);
    Nonce::assume_unique_for_key(n)
}

fn chunk_aad(object_key: &[u8; 32]) -> [u8; CHUNK_AAD.len() + 32] {
    let mut aad = [0u8; CHUNK_AAD.len() + 32];
    aad[..CHUNK_AAD.len()].copy_from_slice(CHUNK_AAD);
    aad[CHUNK_AAD.len()..].copy_from_slice(object_key);
    aad
}

/// Seals an object as it arrives, and hashes its plaintext.
pub struct Sealer {
    key: LessSafeKey,
    aad: [u8; CHUNK_AAD.len() + 32],
    counter: u32,
    /// Plaintext of the chunk being filled: sealed once more bytes follow
    /// (it is then not the last) or at [`Sealer::finish`].
    pending: Vec<u8>,
    hasher: blake3::Hasher,
    plain_len: u64,
}

impl Sealer {
    pub fn new(data_key: &DataKey, object_key: &[u8; 32]) -> Sealer {
        Sealer {
            key: data_key.aead(),
            aad: chunk_aad(object_key),
            counter: 0,
            pending: Vec::with_capacity(CHUNK_PLAIN),
            hasher: blake3::Hasher::new(),
            plain_len: 0,
        }
    }

    fn seal_chunk(&mut self, plain: &[u8], last: bool, out: &mut Vec<u8>) -> Result<(), SealError> {
        let start = out.len();
        out.extend_from_slice(plain);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                chunk_nonce(self.counter, last),
                Aad::from(&self.aad[..]),
                &mut out[start..],
            )
            .map_err(|_| SealError::TooLarge)?;
        out.extend_from_slice(tag.as_ref());
        self.counter = self.counter.checked_add(1).ok_or(SealError::TooLarge)?;
        Ok(())
    }

    /// Takes plaintext; appends the chunks it completes to `out`.
    pub fn push(&mut self, mut plain: &[u8], out: &mut Vec<u8>) -> Result<(), SealError> {
        self.hasher.update(plain);
        self.plain_len += plain.len() as u64;
        while !plain.is_empty() {
            if self.pending.len() == CHUNK_PLAIN {
                let pending = std::mem::take(&mut self.pending);
                self.seal_chunk(&pending, false, out)?;
                self.pending = pending;
                self.pending.clear();
            }
            if self.pending.is_empty() && plain.len() > CHUNK_PLAIN {
                self.seal_chunk(&plain[..CHUNK_PLAIN], false, out)?;
                plain = &plain[CHUNK_PLAIN..];
                continue;
            }
            let take = (CHUNK_PLAIN - self.pending.len()).min(plain.len());
            self.pending.extend_from_slice(&plain[..take]);
            plain = &plain[take..];
        }
        Ok(())
    }

    /// Seals the last chunk; answers the plaintext's blake3 and length.
    pub fn finish(mut self, out: &mut Vec<u8>) -> Result<([u8; 32], u64), SealError> {
        let pending = std::mem::take(&mut self.pending);
        self.seal_chunk(&pending, true, out)?;
        Ok((*self.hasher.finalize().as_bytes(), self.plain_len))
    }
}

/// Opens a sealed object as it arrives.
pub struct Opener {
    key: LessSafeKey,
    aad: [u8; CHUNK_AAD.len() + 32],
    counter: u32,
    pending: Vec<u8>,
    sealed_in: u64,
}

impl Opener {
    pub fn new(data_key: &DataKey, object_key: &[u8; 32]) -> Opener {
        Opener {
            key: data_key.aead(),
            aad: chunk_aad(object_key),
            counter: 0,
            pending: Vec::with_capacity(CHUNK_SEALED),
            sealed_in: 0,
        }
    }

    fn open_chunk(
        &mut self,
        sealed: &[u8],
        last: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), SealError> {
        let start = out.len();
        out.extend_from_slice(sealed);
        let opened = self
            .key
            .open_in_place(
                chunk_nonce(self.counter, last),
                Aad::from(&self.aad[..]),
                &mut out[start..],
            )
            .map(|p| p.len());
        match opened {
            Ok(len) => {
                out.truncate(start + len);
                self.counter = self.counter.checked_add(1).ok_or(SealError::TooLarge)?;
                Ok(())
            }
            Err(_) => {
                out.truncate(start);
                Err(SealError::ChunkRejected {
                    chunk: u64::from(self.counter),
                })
            }
        }
    }

    /// Takes sealed bytes; appends the plaintext of the chunks it completes
    /// (every chunk but the last, which [`Opener::finish`] opens).
    pub fn push(&mut self, mut sealed: &[u8], out: &mut Vec<u8>) -> Result<(), SealError> {
        self.sealed_in += sealed.len() as u64;
        while !sealed.is_empty() {
            if self.pending.len() == CHUNK_SEALED {
                let pending = std::mem::take(&mut self.pending);
                self.open_chunk(&pending, false, out)?;
                self.pending = pending;
                self.pending.clear();
            }
            if self.pending.is_empty() && sealed.len() > CHUNK_SEALED {
                self.open_chunk(&sealed[..CHUNK_SEALED], false, out)?;
                sealed = &sealed[CHUNK_SEALED..];
                continue;
            }
            let take = (CHUNK_SEALED - self.pending.len()).min(sealed.len());
            self.pending.extend_from_slice(&sealed[..take]);
            sealed = &sealed[take..];
        }
        Ok(())
    }

    /// Opens the last chunk: an object cut at a chunk boundary fails here
    /// (its last chunk was sealed as not last).
    pub fn finish(mut self, out: &mut Vec<u8>) -> Result<(), SealError> {
        if self.pending.len() < TAG_LEN {
            return Err(SealError::Truncated {
                bytes: self.sealed_in,
            });
        }
        let pending = std::mem::take(&mut self.pending);
        self.open_chunk(&pending, true, out)
    }
}

#[cfg(test)]
mod tests;
