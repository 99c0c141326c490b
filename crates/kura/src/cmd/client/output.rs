//! `InstanceInfo` as text and JSON, and the time and protection formats
//! every client command prints.

use super::*;

pub(super) fn protection_name(value: i32) -> String {
    match Protection::try_from(value) {
        Ok(Protection::Full) => "full".to_owned(),
        Ok(Protection::UnderProtected) => "under-protected".to_owned(),
        Ok(Protection::Unspecified) => "unspecified".to_owned(),
        Err(_) => format!("unknown ({value})"),
    }
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`).
pub(super) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let day = doy - (153 * mp + 2) / 5 + 1; // [1, 31]
    let month = if mp < 10 { mp + 3 } else { mp - 9 }; // [1, 12]
    let year = yoe + era * 400 + i64::from(month <= 2);
    // Both in range by construction.
    (year, month as u32, day as u32)
}

/// Milliseconds since the Unix epoch → RFC 3339 in UTC, e.g.
/// `2024-03-01T12:34:56.789Z` (or without the milliseconds).
pub fn rfc3339(unix_ms: i64, millis: bool) -> String {
    let secs = unix_ms.div_euclid(1000);
    let ms = unix_ms.rem_euclid(1000);
    let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    let (h, m, s) = (sod / 3600, sod % 3600 / 60, sod % 60);
    if millis {
        format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{ms:03}Z")
    } else {
        format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}Z")
    }
}

pub fn info_json(info: &InstanceInfo) -> Value {
    json!({
        "tenant": info.tenant,
        "sop_instance_uid": info.sop_instance_uid,
        "sop_class_uid": info.sop_class_uid,
        "study_instance_uid": info.study_instance_uid,
        "series_instance_uid": info.series_instance_uid,
        "transfer_syntax_uid": info.transfer_syntax_uid,
        "patient_id": info.patient_id,
        "modality": info.modality,
        "study_date": info.study_date,
        "size": info.size,
        "blake3": info.blake3,
        "protection": protection_name(info.protection),
        "stored_at": rfc3339(info.stored_at_unix_ms, true),
        "stored_at_unix_ms": info.stored_at_unix_ms,
        "ec_data_shards": info.ec_data_shards,
        "ec_parity_shards": info.ec_parity_shards,
        "retained_until": (info.retained_until_unix_ms > 0)
            .then(|| rfc3339(info.retained_until_unix_ms, true)),
        "legal_hold": (!info.legal_hold.is_empty()).then_some(&info.legal_hold),
    })
}

pub(super) fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

pub(super) fn write_info(out: &mut impl Write, info: &InstanceInfo) -> io::Result<()> {
    let ts_name = kura_dicom::transfer_syntax_name(&info.transfer_syntax_uid)
        .map(|name| format!(" ({name})"))
        .unwrap_or_default();
    let fields: [(&str, String); 17] = [
        ("tenant", info.tenant.clone()),
        ("sop_instance_uid", info.sop_instance_uid.clone()),
        ("sop_class_uid", info.sop_class_uid.clone()),
        ("study_instance_uid", info.study_instance_uid.clone()),
        ("series_instance_uid", info.series_instance_uid.clone()),
        (
            "transfer_syntax_uid",
            format!("{}{ts_name}", or_dash(&info.transfer_syntax_uid)),
        ),
        ("patient_id", info.patient_id.clone()),
        ("modality", info.modality.clone()),
        ("study_date", info.study_date.clone()),
        (
            "size",
            format!("{} bytes ({})", info.size, HumanBytes(info.size)),
        ),
        ("blake3", info.blake3.clone()),
        ("protection", protection_name(info.protection)),
        ("stored_at", rfc3339(info.stored_at_unix_ms, true)),
        ("ec_data_shards", info.ec_data_shards.to_string()),
        ("ec_parity_shards", info.ec_parity_shards.to_string()),
        (
            "retained_until",
            if info.retained_until_unix_ms > 0 {
                rfc3339(info.retained_until_unix_ms, true)
            } else {
                String::new()
            },
        ),
        ("legal_hold", info.legal_hold.clone()),
    ];
    for (name, value) in fields {
        writeln!(out, "{name}: {}", or_dash(&value))?;
    }
    Ok(())
}

pub fn print_json(value: &Value) -> anyhow::Result<()> {
    let stdout = io::stdout();
    let mut out = stdout.lock();
    serde_json::to_writer_pretty(&mut out, value).context("writing JSON")?;
    writeln!(out)?;
    out.flush()?;
    Ok(())
}
