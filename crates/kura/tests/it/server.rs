//! `kura server`: three separate processes, one per site, form a cluster
//! from one kura.toml with certificates made by `kura certs`, and serve the
//! Archive API over TLS; a config without certificates and a bad config
//! are refused with what to do.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use kura_testkit::Proc;
use kura_testkit::certs::CertDir;

fn free_port() -> u16 {
    kura_testkit::free_port().expect("free port")
}

fn kura_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_kura"))
}

fn kura(args: &[&str]) -> Output {
    Command::new(kura_bin())
        .args(args)
        .env_remove("KURA_TENANT")
        .env_remove("KURA_CERTS")
        .output()
        .expect("run kura")
}

/// `kura server --config CONFIG --node ID [--check]`: its exit code and
/// stderr.
fn server(config: &Path, node: &str, check: bool) -> (Option<i32>, String) {
    let config = config.to_str().expect("utf-8");
    let mut args = vec!["server", "--config", config, "--node", node];
    if check {
        args.push("--check");
    }
    let o = kura(&args);
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The cluster's certificates: a CA, nodes 1-3, and a client of tenant
/// `default` that stores and reads; `[tls] dir` points at them.
fn make_certs(config: &Path) -> CertDir {
    let dir = config.parent().expect("config dir").join("certs");
    let certs = CertDir::init(kura_bin(), &dir).expect("kura certs init");
    certs.keys().expect("kura keys generate");
    for id in 1..=3 {
        certs.node(config, id).expect("kura certs node");
    }
    certs
        .client(
            "default",
            kura_auth::ClientRoles::of(&[
                kura_auth::ClientRole::Reader,
                kura_auth::ClientRole::Writer,
            ]),
        )
        .expect("kura certs client");
    certs
}

fn corpus_dir() -> PathBuf {
    PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()),
    )
    .join("../../../shared/corpus")
}

fn write_config(dir: &Path) -> (PathBuf, String) {
    let gateway = format!("127.0.0.1:{}", free_port());
    let mut text = String::from(
        "[cluster]\ndata_shards = 2\nparity_shards = 1\n\n[[site]]\nname = \"tokyo\"\n[[site]]\nname = \"osaka\"\n[[site]]\nname = \"fukuoka\"\n",
    );
    for (i, site) in ["tokyo", "osaka", "fukuoka"].iter().enumerate() {
        let id = i + 1;
        text.push_str(&format!(
            "\n[[node]]\nid = {id}\nsite = \"{site}\"\ndata = \"{}\"\nmeta = \"127.0.0.1:{}\"\nstore = \"127.0.0.1:{}\"\n",
            dir.join(format!("node-{id}")).display(),
            free_port(),
            free_port()
        ));
        if id == 1 {
            text.push_str(&format!("gateway = \"{gateway}\"\n"));
        }
    }
    text.push_str("\n[tls]\ndir = \"certs\"\n\n[encryption]\nkeys_file = \"certs/cluster.keys\"\n");
    let path = dir.join("kura.toml");
    std::fs::write(&path, text).expect("write config");
    (path, gateway)
}

#[test]
fn three_processes_form_a_cluster_and_serve() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (config, gateway) = write_config(tmp.path());
    let certs = make_certs(&config);
    let certs = certs.dir.to_str().expect("utf-8").to_string();
    let config = config.to_str().expect("utf-8").to_string();
    // Start them in reverse order: the bootstrapper (node 1) comes last.
    let mut procs = Vec::new();
    for id in ["3", "2", "1"] {
        let log = std::fs::File::create(tmp.path().join(format!("node-{id}.log"))).expect("log");
        procs.push(Proc(
            Command::new(env!("CARGO_BIN_EXE_kura"))
                .args(["server", "--config", &config, "--node", id])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start kura server"),
        ));
    }
    let corpus = corpus_dir();
    let corpus = corpus.to_str().expect("utf-8");
    // The cluster forms within a deadline; until then stores are refused.
    let deadline = Instant::now() + Duration::from_secs(60);
    let summary = loop {
        let o = kura(&[
            "store",
            corpus,
            "--json",
            "--endpoint",
            &gateway,
            "--certs",
            &certs,
        ]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        // Early attempts may store some files before failing on others.
        let done = v["stored"].as_u64().unwrap_or(0) + v["already_stored"].as_u64().unwrap_or(0);
        if done == 11 {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "the cluster did not form: {}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(summary["refused"], 10, "{summary}");
    let out = tmp.path().join("ct.dcm");
    let o = kura(&[
        "retrieve",
        "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322",
        "-o",
        out.to_str().expect("utf-8"),
        "--endpoint",
        &gateway,
        "--certs",
        &certs,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        std::fs::read(&out).expect("out"),
        std::fs::read(corpus_dir().join("CT_small.dcm")).expect("in")
    );
    // Losing one whole site (RS(2,1), one shard per site): reads go on.
    drop(procs.remove(0)); // node 3 (fukuoka): killed
    let o = kura(&[
        "retrieve",
        "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322",
        "-o",
        out.to_str().expect("utf-8"),
        "--endpoint",
        &gateway,
        "--certs",
        &certs,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn a_server_without_certificates_refuses_to_start_and_says_how_to_make_them() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (config, _) = write_config(tmp.path());
    let text = std::fs::read_to_string(&config).expect("read");
    // No [tls] at all.
    std::fs::write(&config, text.replace("\n[tls]\ndir = \"certs\"\n", "")).expect("write");
    let (code, err) = server(&config, "1", false);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("kura certs init"), "{err}");
    assert!(err.contains("kura certs node"), "{err}");
    assert!(err.contains("insecure_plaintext"), "{err}");
    // [tls] dir given, the files missing: the missing file is named.
    std::fs::write(&config, &text).expect("write");
    let (code, err) = server(&config, "1", false);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("ca.pem"), "{err}");
    // Another node's certificate is refused.
    let certs = make_certs(&config);
    std::fs::copy(certs.dir.join("node-2.pem"), certs.dir.join("node-1.pem")).expect("copy");
    std::fs::copy(certs.dir.join("node-2.key"), certs.dir.join("node-1.key")).expect("copy");
    let (code, err) = server(&config, "1", true);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("is not node 1's certificate"), "{err}");
    // insecure_plaintext starts, with a warning.
    std::fs::write(
        &config,
        text.replace("dir = \"certs\"", "insecure_plaintext = true"),
    )
    .expect("write");
    let (code, err) = server(&config, "1", true);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("WARNING"), "{err}");
}

#[test]
fn a_gateway_without_its_cluster_keys_refuses_to_start() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (config, _) = write_config(tmp.path());
    let certs = make_certs(&config);
    let keys = certs.dir.join("cluster.keys");
    // A key file every user may read.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let (code, err) = server(&config, "1", true);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("may be read by any user") && err.contains("chmod 600"),
        "{err}"
    );
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let (code, err) = server(&config, "1", true);
    assert_eq!(code, Some(0), "{err}");
    // No key file, and no [encryption] section: both say how to make one.
    std::fs::remove_file(&keys).expect("rm");
    let (code, err) = server(&config, "1", true);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("cannot read the cluster key file"), "{err}");
    let text = std::fs::read_to_string(&config).expect("read");
    std::fs::write(
        &config,
        text.replace("\n[encryption]\nkeys_file = \"certs/cluster.keys\"\n", ""),
    )
    .expect("write");
    let (code, err) = server(&config, "1", true);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("kura keys generate --file"), "{err}");
    assert!(err.contains("KURA_CLUSTER_KEYS_FILE"), "{err}");
    // A node without a gateway needs no key (storage nodes never see one).
    let (code, err) = server(&config, "2", true);
    assert_eq!(code, Some(0), "{err}");
    // A key file that is not one names its line.
    std::fs::write(&keys, "1 abc\n").expect("write");
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    std::fs::write(&config, &text).expect("write");
    let (code, err) = server(&config, "1", true);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("cluster.keys, line 1"), "{err}");
}

#[test]
fn a_bad_config_is_refused_with_its_line() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (config, _) = write_config(tmp.path());
    let text = std::fs::read_to_string(&config).expect("read");
    std::fs::write(
        &config,
        text.replace("site = \"osaka\"", "site = \"kyoto\""),
    )
    .expect("write");
    let line = text
        .lines()
        .position(|l| l == "site = \"osaka\"")
        .expect("line")
        + 1;
    let (code, err) = server(&config, "1", true);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(&format!("kura.toml:{line}:")), "{err}");
    assert!(err.contains("\"kyoto\" is not a [[site]]"), "{err}");
    // And a node the config does not have.
    let (config, _) = write_config(tmp.path());
    let (code, err) = server(&config, "9", true);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("no [[node]] with id 9"), "{err}");
}
