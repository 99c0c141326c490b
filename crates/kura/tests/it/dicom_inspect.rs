//! `kura dicom inspect` over the shared corpus (`shared/corpus/MANIFEST.tsv`):
//! the verdict, identity and error code of every file, and the exit code.

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

fn kura(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kura"))
        .args(args)
        .output()
        .expect("run the kura binary")
}

fn corpus_dir() -> PathBuf {
    PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()),
    )
    .join("../../../shared/corpus")
}

struct Row {
    file: String,
    accept: bool,
    sop_instance_uid: String,
    study_instance_uid: String,
}

/// The manifest; a missing corpus fails the test (CI has it).
fn manifest() -> Vec<Row> {
    let path = corpus_dir().join("MANIFEST.tsv");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "the shared DICOM corpus is missing: cannot read {}: {e}",
            path.display()
        )
    });
    text.lines()
        .skip(1)
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let cols: Vec<&str> = line.split('\t').collect();
            Row {
                file: cols[0].to_string(),
                accept: cols[1] == "accept",
                sop_instance_uid: cols.get(2).unwrap_or(&"").to_string(),
                study_instance_uid: cols.get(3).unwrap_or(&"").to_string(),
            }
        })
        .collect()
}

fn expected_code(file: &str) -> &'static str {
    match file {
        "no_meta.dcm" | "not_dicom.txt" => "not_part10",
        "MR_truncated.dcm" => "truncated",
        "meta_missing_tsyntax.dcm" => "missing_transfer_syntax",
        "empty_charset_LEI.dcm" => "missing_uid",
        other => panic!("{other}: refused in the manifest, but this test does not know why"),
    }
}

fn json(output: &Output) -> Vec<Value> {
    let text = String::from_utf8_lossy(&output.stdout);
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Array(items)) => items,
        other => panic!("not a JSON array: {other:?}\n{text}"),
    }
}

#[test]
fn inspects_the_whole_corpus_as_json() {
    let rows = manifest();
    assert!(rows.len() >= 19, "manifest has {} rows", rows.len());
    let paths: Vec<String> = rows
        .iter()
        .map(|row| corpus_dir().join(&row.file).display().to_string())
        .collect();
    let mut args = vec!["dicom", "inspect", "--json"];
    args.extend(paths.iter().map(String::as_str));
    let output = kura(&args);
    assert_eq!(
        output.status.code(),
        Some(1),
        "some files are refused: exit code 1\n{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let results = json(&output);
    assert_eq!(results.len(), rows.len());
    for ((row, path), result) in rows.iter().zip(&paths).zip(&results) {
        let file = &row.file;
        assert_eq!(result["file"], path.as_str(), "{file}");
        assert_eq!(result["ok"], row.accept, "{file}: {result}");
        if row.accept {
            let identity = &result["identity"];
            assert_eq!(
                identity["sop_instance_uid"],
                row.sop_instance_uid.as_str(),
                "{file}"
            );
            assert_eq!(
                identity["study_instance_uid"],
                row.study_instance_uid.as_str(),
                "{file}"
            );
            assert!(result.get("error").is_none(), "{file}: {result}");
            assert!(
                result["summary"]["instance_bytes"].as_u64().unwrap_or(0) > 0,
                "{file}"
            );
        } else {
            assert_eq!(
                result["error"]["code"],
                expected_code(file),
                "{file}: {result}"
            );
            let message = result["error"]["message"].as_str().unwrap_or("");
            assert!(!message.is_empty(), "{file}");
            assert!(result.get("identity").is_none(), "{file}: {result}");
        }
    }
}

#[test]
fn accepted_files_exit_zero_with_readable_text() {
    let ct = corpus_dir().join("CT_small.dcm").display().to_string();
    let mr = corpus_dir()
        .join("MR_small_bigendian.dcm")
        .display()
        .to_string();
    let output = kura(&["dicom", "inspect", &ct, &mr]);
    assert_eq!(output.status.code(), Some(0));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("CT_small.dcm: accepted"), "{text}");
    assert!(
        text.contains("1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322"),
        "{text}"
    );
    // The operator asked: the patient's name is shown.
    assert!(text.contains("CompressedSamples^CT1"), "{text}");
    assert!(text.contains("Explicit VR Big Endian"), "{text}");
}

#[test]
fn a_missing_file_is_refused_not_a_crash() {
    let ct = corpus_dir().join("CT_small.dcm").display().to_string();
    let output = kura(&[
        "dicom",
        "inspect",
        "--json",
        "/nonexistent/kura-test.dcm",
        &ct,
    ]);
    assert_eq!(output.status.code(), Some(1));
    let results = json(&output);
    assert_eq!(results.len(), 2);
    assert_eq!(results[0]["ok"], false);
    assert_eq!(results[0]["error"]["code"], "io");
    assert_eq!(results[1]["ok"], true);

    let text = kura(&["dicom", "inspect", "/nonexistent/kura-test.dcm"]);
    assert_eq!(text.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&text.stdout).contains("refused [io]"));
}

#[test]
fn help_works() {
    let output = kura(&["--help"]);
    assert_eq!(output.status.code(), Some(0));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("dicom"), "{text}");

    let output = kura(&["dicom", "inspect", "--help"]);
    assert_eq!(output.status.code(), Some(0));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("--json"), "{text}");

    // No files is a usage error.
    assert_eq!(kura(&["dicom", "inspect"]).status.code(), Some(2));
}
