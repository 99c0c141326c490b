//! Every file of `corpus/<target>` and `regressions/<target>` through its
//! harness: the seeds keep working and a crash once found stays fixed.

use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()),
    )
}

fn replay(target: &str, harness: fn(&[u8])) {
    let mut n = 0;
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root().join(dir).join(target)) else {
            continue;
        };
        for e in entries.flatten() {
            let data = std::fs::read(e.path()).expect("read a corpus file");
            harness(&data);
            n += 1;
        }
    }
    assert!(n > 0, "no corpus for {target} under {}", root().display());
}

#[test]
fn dicom_identity() {
    replay("dicom_identity", kura_fuzz::dicom_identity);
}

#[test]
fn dicom_validate() {
    replay("dicom_validate", kura_fuzz::dicom_validate);
}

#[test]
fn sealed_object() {
    replay("sealed_object", kura_fuzz::sealed_object);
}

#[test]
fn key_file() {
    replay("key_file", kura_fuzz::key_file);
}

#[test]
fn meta_payload() {
    replay("meta_payload", kura_fuzz::meta_payload);
}

#[test]
fn shard() {
    replay("shard", kura_fuzz::shard);
}

/// Writes the generated seeds (sealed objects, payloads, shards, key
/// files): `cargo test -p kura-fuzz --test replay -- --ignored write_seeds`.
#[test]
#[ignore]
fn write_seeds() {
    let write = |target: &str, name: &str, bytes: &[u8]| {
        let dir = root().join("corpus").join(target);
        std::fs::create_dir_all(&dir).expect("corpus dir");
        std::fs::write(dir.join(name), bytes).expect("write seed");
    };
    // Sealed objects under the fuzz key: empty, one short chunk, two chunks.
    let key = kura_seal::DataKey::from_bytes([7; 32]);
    for (name, len) in [("empty", 0usize), ("short", 100), ("two-chunks", 70_000)] {
        let plain: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let mut s = kura_seal::Sealer::new(&key, &kura_fuzz::FUZZ_OBJECT_KEY);
        let mut out = Vec::new();
        s.push(&plain, &mut out).expect("seal");
        s.finish(&mut out).expect("seal");
        write("sealed_object", name, &out);
    }
    write(
        "key_file",
        "two-versions",
        b"# keys\n1 0707070707070707070707070707070707070707070707070707070707070707\n2 1111111111111111111111111111111111111111111111111111111111111111 # newest\n",
    );
    let keys = kura_seal::Keyring::parse(
        "1 0707070707070707070707070707070707070707070707070707070707070707",
        "seed",
    )
    .expect("keys");
    write(
        "key_file",
        "sealed-field",
        keys.seal_field(1, "ctx", "PID-1")
            .expect("field")
            .as_bytes(),
    );
    // Payloads: a few commands and queries.
    use kura_proto::codec::encode;
    use kura_proto::meta::{Command, Consistency, KeyCheck, Query};
    let commands = [
        Command::SetRetention {
            tenant: "t".into(),
            days: Some(3650),
        },
        Command::RegisterKeys {
            checks: vec![KeyCheck {
                version: 1,
                check: [3; 32],
            }],
        },
        Command::DeleteManifests {
            tenant: "t".into(),
            uids: vec!["1.2.3".into()],
            now_unix_ms: 1,
        },
    ];
    for (i, c) in commands.iter().enumerate() {
        write(
            "meta_payload",
            &format!("command-{i}"),
            &encode(c).expect("encode"),
        );
    }
    let q = Query::NotSealedUnder {
        key_version: 2,
        after: Some(("t".into(), "1.2".into())),
        limit: 10,
        scan: 100,
        consistency: Consistency::Stale,
    };
    write("meta_payload", "query", &encode(&q).expect("encode"));
    // Shards: a segment of a small object, encoded.
    let ec = kura_erasure::EcParams::default();
    let mut enc = kura_erasure::ObjectEncoder::new(ec, [5; 32]).expect("encoder");
    let mut segs = enc.push(&[42u8; 5000]).expect("push");
    let (tail, _) = enc.finish().expect("finish");
    segs.extend(tail);
    for (i, shard) in segs[0].shards.iter().take(2).enumerate() {
        write("shard", &format!("shard-{i}"), &shard.encode_to_vec());
    }
}
