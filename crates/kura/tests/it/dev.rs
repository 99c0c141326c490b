//! `kura dev` as a user runs it: a child process, driven by the client
//! commands and by an external Python gRPC client; its peak memory while a
//! 200 MB instance goes in and out; Ctrl-C and restart.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use kura_dicom::synthetic::{Synthetic, head, pixels, uid};

struct Dev {
    child: Child,
    gateway: String,
    /// Where it keeps its CA and client certificates.
    certs: String,
    /// The child's stderr (its logs), shown if the test fails.
    log: PathBuf,
}

impl Dev {
    fn start(data: &Path) -> Dev {
        let log = data.with_extension(format!("{}.log", std::process::id()));
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_kura"))
            .args(kura_testkit::KURA_DEV_ON_FREE_PORTS)
            .args(["--json", "--data"])
            .arg(data)
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .expect("start kura dev");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the startup line");
        let v: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("kura dev printed {line:?}: {e}"));
        let gateway = v["gateway"].as_str().expect("gateway address").to_string();
        assert_eq!(v["tls"], true, "kura dev runs TLS by default: {v}");
        let certs = v["certs"].as_str().expect("certs directory").to_string();
        Dev {
            child,
            gateway,
            certs,
            log,
        }
    }

    /// Peak resident set of the process (VmHWM), bytes.
    fn peak_rss(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("status");
        let kib: u64 = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .expect("VmHWM");
        kib * 1024
    }

    /// Ctrl-C, and the exit status.
    fn interrupt(mut self) -> std::process::ExitStatus {
        let ok = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .expect("kill -INT");
        assert!(ok.success());
        self.child.wait().expect("wait")
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(60).collect();
            eprintln!("--- kura dev log (last lines) ---");
            for l in tail.into_iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

/// Runs a client command against `dev`, finding its credentials through
/// `KURA_CERTS` as a user would after `kura dev`.
fn kura(args: &[&str], dev: &Dev) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kura"))
        .args(args)
        .args(["--endpoint", &dev.gateway])
        .env_remove("KURA_TENANT")
        .env("KURA_CERTS", &dev.certs)
        .output()
        .expect("run kura")
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

fn file_blake3(path: &Path) -> String {
    let mut f = std::fs::File::open(path).expect("open");
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finalize().to_hex().to_string()
}

/// Writes a synthetic multi-frame instance of about `pixel_bytes` to `path`
/// without holding it in memory.
fn write_large(path: &Path, s: &Synthetic, pixel_bytes: u32) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    f.write_all(&head(s, 100, pixel_bytes)).expect("write");
    let mut buf = vec![0u8; 1 << 20];
    let mut offset = 0u64;
    while offset < u64::from(pixel_bytes) {
        let n = (u64::from(pixel_bytes) - offset).min(buf.len() as u64) as usize;
        pixels(1, offset, &mut buf[..n]);
        f.write_all(&buf[..n]).expect("write");
        offset += n as u64;
    }
    f.flush().expect("flush");
}

fn corpus_dir() -> PathBuf {
    PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()),
    )
    .join("../../../shared/corpus")
}

const LARGE_PIXEL_BYTES: u32 = 200 * 1024 * 1024;
/// How much the dev process (3 voters, 9 storage nodes with their RocksDB,
/// a gateway) may grow while a 200 MiB instance goes in and out: half the
/// instance, so nothing holds it whole (measured: ~60 MiB).
const PEAK_GROWTH_MAX: u64 = 100 * 1024 * 1024;

#[test]
fn kura_dev_serves_the_client_commands_in_bounded_memory_and_restarts() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("data");
    let dev = Dev::start(&data);
    let g = &dev;

    // The corpus, as a folder.
    let o = kura(&["store", "--json"], g);
    assert_eq!(
        o.status.code(),
        Some(2),
        "store without paths is a usage error"
    );
    let corpus = corpus_dir();
    let corpus = corpus.to_str().expect("utf-8 path");
    let o = kura(&["store", corpus, "--json"], g);
    let summary = json(&o);
    assert_eq!(summary["stored"], 11, "{summary}");
    assert_eq!(o.status.code(), Some(1), "refusals give exit 1");
    let o = kura(&["store", corpus, "--json"], g);
    assert_eq!(json(&o)["already_stored"], 11);

    // A 200 MB multi-frame instance, in and out.
    let s = Synthetic {
        study: uid("900", 1),
        series: uid("901", 1),
        sop: uid("902", 1),
    };
    let big = tmp.path().join("big.dcm");
    write_large(&big, &s, LARGE_PIXEL_BYTES);
    let before = dev.peak_rss();
    let o = kura(&["store", big.to_str().expect("path"), "--json"], g);
    assert_eq!(
        json(&o)["stored"],
        1,
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let after_store = dev.peak_rss();
    let out = tmp.path().join("big.out.dcm");
    let o = kura(&["retrieve", &s.sop, "-o", out.to_str().expect("path")], g);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        file_blake3(&out),
        file_blake3(&big),
        "byte-exact round trip"
    );
    let peak = dev.peak_rss();
    eprintln!(
        "kura dev peak RSS: {} MiB before, {} MiB after a 200 MiB store, {} MiB after its retrieve",
        before >> 20,
        after_store >> 20,
        peak >> 20
    );
    assert!(
        peak.saturating_sub(before) < PEAK_GROWTH_MAX,
        "peak RSS grew by {} MiB, more than {} MiB",
        (peak - before) >> 20,
        PEAK_GROWTH_MAX >> 20
    );
    let o = kura(&["stat", &s.sop, "--json"], g);
    let info = json(&o);
    assert_eq!(
        info["size"].as_u64(),
        Some(std::fs::metadata(&big).expect("meta").len())
    );
    let o = kura(&["ls", "--study", &s.study, "--json"], g);
    assert_eq!(json(&o).as_array().map(Vec::len), Some(1));

    // Without credentials the same command is refused: TLS and
    // authentication are on.
    let o = Command::new(env!("CARGO_BIN_EXE_kura"))
        .args([
            "stat",
            &s.sop,
            "--endpoint",
            &format!("http://{}", dev.gateway),
        ])
        .env_remove("KURA_CERTS")
        .current_dir(tmp.path())
        .output()
        .expect("run kura");
    assert_eq!(o.status.code(), Some(2), "plaintext to a TLS gateway fails");

    // The external client, with a certificate made by `kura certs client`.
    let o = Command::new(env!("CARGO_BIN_EXE_kura"))
        .args([
            "certs",
            "client",
            "--tenant",
            "python-client",
            "--role",
            "reader+writer",
            "--dir",
            &dev.certs,
        ])
        .output()
        .expect("kura certs client");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    python_client(&dev);

    // Ctrl-C stops it cleanly; the same directory brings it all back.
    let status = dev.interrupt();
    assert!(status.success(), "kura dev exits 0 on Ctrl-C: {status:?}");
    let dev = Dev::start(&data);
    let o = kura(&["stat", &s.sop, "--json"], &dev);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = kura(&["store", corpus, "--json"], &dev);
    assert_eq!(
        json(&o)["already_stored"],
        11,
        "the corpus survived the restart"
    );
    assert!(dev.interrupt().success());
}

/// A Python grpcio client generated from `proto/` at test time stores and
/// retrieves corpus files. Needs a Python with grpcio-tools: `KURA_PYTHON`
/// (CI sets it to the venv `.ci/run` builds), else `python3` if it has
/// them. Without one the check is skipped with a notice — except in CI
/// (`CI` set), where that is a failure.
fn python_client(dev: &Dev) {
    let python = std::env::var("KURA_PYTHON").unwrap_or_else(|_| "python3".into());
    let has_tools = Command::new(&python)
        .args(["-c", "import grpc_tools, grpc_reflection"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_tools {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must provide a Python with grpcio-tools and grpcio-reflection (KURA_PYTHON)"
        );
        eprintln!(
            "SKIPPED the external Python client check: {python} lacks grpcio-tools/grpcio-reflection (see .ci/run)"
        );
        return;
    }
    let root = PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()),
    )
    .join("../..");
    let out = Command::new(&python)
        .arg(root.join("crates/kura/tests/external/archive_client.py"))
        .args(["--endpoint", &dev.gateway, "--proto-root"])
        .arg(root.join("proto"))
        .arg("--ca")
        .arg(Path::new(&dev.certs).join("ca.pem"))
        .arg("--cert")
        .arg(Path::new(&dev.certs).join("client-python-client-reader+writer.pem"))
        .arg("--key")
        .arg(Path::new(&dev.certs).join("client-python-client-reader+writer.key"))
        .arg("--corpus")
        .arg(corpus_dir())
        .output()
        .expect("run the Python client");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(out.status.success(), "the Python client failed:\n{text}");
}

/// What an operator does to rotate the cluster key of a `kura dev`
/// cluster: add a version to the key file, restart, re-wrap every data key
/// with `kura admin keys rotate`, retire the old version, and read
/// everything back byte for byte.
#[test]
fn an_operator_rotates_the_cluster_key_and_retires_the_old_one() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("data");
    let keys = data.join("cluster.keys");
    let keys = keys.to_str().expect("utf-8 path").to_string();
    let corpus = corpus_dir();
    let corpus = corpus.to_str().expect("utf-8 path").to_string();
    let usage = |v: &serde_json::Value| -> Vec<(u64, u64)> {
        v["versions"]
            .as_array()
            .expect("versions")
            .iter()
            .map(|x| {
                (
                    x["version"].as_u64().expect("version"),
                    x["instances"].as_u64().expect("instances"),
                )
            })
            .collect()
    };
    let local = |args: &[&str]| -> Output {
        Command::new(env!("CARGO_BIN_EXE_kura"))
            .args(args)
            .output()
            .expect("run kura")
    };

    let dev = Dev::start(&data);
    let o = kura(&["store", &corpus, "--json"], &dev);
    assert_eq!(json(&o)["stored"], 11);
    let status = json(&kura(&["admin", "keys", "status", "--json"], &dev));
    assert_eq!(status["current"], 1, "{status}");
    assert_eq!(usage(&status), vec![(1, 11)]);
    assert!(dev.interrupt().success());

    // A second version, appended to the same file.
    let o = local(&["keys", "generate", "--file", &keys, "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(json(&o)["version"], 2);
    let shown = json(&local(&["keys", "show", "--file", &keys, "--json"]));
    assert_eq!(shown["current"], 2, "{shown}");
    let text = std::fs::read_to_string(&keys).expect("key file");
    let secret_v1 = text
        .lines()
        .find(|l| l.starts_with("1 "))
        .expect("version 1 line")
        .to_string();
    assert!(
        !shown.to_string().contains(&secret_v1[2..]),
        "show never prints a key"
    );

    let dev = Dev::start(&data);
    let status = json(&kura(&["admin", "keys", "status", "--json"], &dev));
    assert_eq!(status["current"], 2);
    assert_eq!(usage(&status), vec![(1, 11), (2, 0)]);
    let o = kura(&["admin", "keys", "rotate", "--page", "4", "--json"], &dev);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r = json(&o);
    assert_eq!(
        (r["rewrapped"].as_u64(), r["failed"].as_u64()),
        (Some(11), Some(0)),
        "{r}"
    );
    let status = json(&kura(&["admin", "keys", "status", "--json"], &dev));
    assert_eq!(usage(&status), vec![(1, 0), (2, 11)]);
    assert!(dev.interrupt().success());

    // Version 1 retired: everything still reads, and is still recognised.
    let without_v1: String = text
        .lines()
        .filter(|l| !l.starts_with("1 "))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&keys, without_v1).expect("retire version 1");
    let dev = Dev::start(&data);
    let file = corpus_dir().join("CT_small.dcm");
    let sop = "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322";
    let out = tmp.path().join("ct.out.dcm");
    let o = kura(&["retrieve", sop, "-o", out.to_str().expect("path")], &dev);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(file_blake3(&out), file_blake3(&file));
    let o = kura(&["store", &corpus, "--json"], &dev);
    assert_eq!(json(&o)["already_stored"], 11);
    assert!(dev.interrupt().success());
}
