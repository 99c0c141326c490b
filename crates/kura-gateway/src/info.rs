//! Manifests as the public API shows them.

use kura_placement::{Manifest, Protection};
use kura_proto::v1::{self, InstanceInfo};

/// The public description of a stored instance; `secrets` are its opened
/// sealed secrets (the instance's blake3 and Patient ID live only there).
pub fn instance_info(m: &Manifest, secrets: &kura_seal::Secrets) -> InstanceInfo {
    InstanceInfo {
        tenant: m.tenant.clone(),
        sop_instance_uid: m.sop_instance_uid.clone(),
        sop_class_uid: m.sop_class_uid.clone(),
        study_instance_uid: m.study_instance_uid.clone(),
        series_instance_uid: m.series_instance_uid.clone(),
        transfer_syntax_uid: m.transfer_syntax_uid.clone(),
        patient_id: secrets.patient_id.clone(),
        modality: m.modality.clone(),
        size: m.sealing.plain_size,
        blake3: hex::encode(secrets.plain_blake3),
        protection: match m.protection {
            Protection::Full => v1::Protection::Full,
            Protection::UnderProtected => v1::Protection::UnderProtected,
        } as i32,
        stored_at_unix_ms: m.stored_at_unix_ms,
        study_date: m.study_date.clone(),
        ec_data_shards: u32::from(m.ec.data_shards),
        ec_parity_shards: u32::from(m.ec.parity_shards),
        // Filled by Stat, which reads the tenant's and study's policies.
        retained_until_unix_ms: 0,
        legal_hold: String::new(),
    }
}
