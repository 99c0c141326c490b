//! The DICOM front door driven by dcmtk's tools (external clients no one
//! here wrote): C-ECHO admits known AE titles only, the corpus stored with
//! `storescu` reads back through gRPC with the data set byte-exact (as
//! dcmtk's own `storescp +B` receives it from the same `storescu`), an
//! identical resend succeeds, the same UID with other bytes is refused with
//! 0111, and a calling AE without the writer role gets 0124.

use std::process::{Command, Output};

use kura_auth::{ClientRole, ClientRoles};
use kura_gateway::dimse::DicomPeer;

use crate::harness::{Cluster, TENANT, corpus, corpus_dir, retrieve};

fn peer(title: &str, roles: &[ClientRole]) -> DicomPeer {
    DicomPeer {
        ae_title: title.into(),
        tenant: TENANT.into(),
        roles: ClientRoles::of(roles),
    }
}

async fn cluster() -> Cluster {
    let dir = tempfile::tempdir().expect("temp dir");
    Cluster::start_with(dir, |c| {
        c.dicom_port = Some(0);
        c.dicom.peers = vec![
            peer("ECHOSCU", &[ClientRole::Reader]),
            peer("STORESCU", &[ClientRole::Writer, ClientRole::Reader]),
            peer("READONLY", &[ClientRole::Reader]),
        ];
    })
    .await
}

/// Runs a dcmtk tool against the cluster's DICOM port (Nagle off, as
/// FACTS.md says dcmtk needs).
fn dcmtk(c: &Cluster, tool: &str, args: &[&str]) -> Output {
    dcmtk_files(c, tool, args, &[])
}

fn dcmtk_files(c: &Cluster, tool: &str, args: &[&str], files: &[&str]) -> Output {
    let addr = c.dev.dicom_addr().expect("DICOM front door runs");
    Command::new(tool)
        .args(args)
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .args(files)
        .env("TCP_NODELAY", "1")
        .output()
        .unwrap_or_else(|e| panic!("run {tool} (dcmtk; ./run test installs it): {e}"))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn echo_admits_known_calling_ae_titles_calling_this_archive() {
    let c = cluster().await;
    let ok = dcmtk(&c, "echoscu", &["-aet", "ECHOSCU", "-aec", "KURA"]);
    assert!(ok.status.success(), "echo: {}", text(&ok));
    let unknown = dcmtk(&c, "echoscu", &["-aet", "NOBODY", "-aec", "KURA"]);
    assert!(!unknown.status.success());
    assert!(
        text(&unknown).contains("Calling AE Title Not Recognized"),
        "{}",
        text(&unknown)
    );
    let wrong_called = dcmtk(&c, "echoscu", &["-aet", "ECHOSCU", "-aec", "ORTHANC"]);
    assert!(!wrong_called.status.success());
    assert!(
        text(&wrong_called).contains("Called AE Title Not Recognized"),
        "{}",
        text(&wrong_called)
    );
}

/// storescu's option that proposes a file's own transfer syntax, so it
/// sends the data set as stored (no conversion).
fn propose(transfer_syntax: &str) -> &'static str {
    match transfer_syntax {
        "1.2.840.10008.1.2" => "-xi",
        "1.2.840.10008.1.2.2" => "-xb",
        "1.2.840.10008.1.2.1.99" => "-xd",
        "1.2.840.10008.1.2.5" => "-xr",
        "1.2.840.10008.1.2.4.50" => "-xy",
        "1.2.840.10008.1.2.4.70" => "-xs",
        "1.2.840.10008.1.2.4.90" => "-xv",
        "1.2.840.10008.1.2.4.91" => "-xw",
        _ => "-xe",
    }
}

/// dcmtk's own SCP as the reference: it writes every data set exactly as
/// received (`+B`), so what storescu sends can be compared with what Kura
/// stored (storescu re-encodes a file's data set as it sends it).
struct Reference {
    _proc: kura_testkit::Proc,
    port: u16,
    dir: tempfile::TempDir,
}

impl Reference {
    fn start() -> Reference {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = kura_testkit::free_port().expect("port");
        let child = Command::new("storescp")
            .args(["+B", "+xa", "-aet", "REF", "-od"])
            .arg(dir.path())
            .arg(port.to_string())
            .spawn()
            .expect("run storescp (dcmtk)");
        let proc = kura_testkit::Proc(child);
        let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < end, "storescp did not listen");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Reference {
            _proc: proc,
            port,
            dir,
        }
    }

    /// Sends `file` with `args`; the transfer syntax and data set storescp
    /// received.
    fn data_set(&self, args: &[&str], file: &str) -> (String, Vec<u8>) {
        for e in std::fs::read_dir(self.dir.path()).expect("read dir") {
            let _ = std::fs::remove_file(e.expect("entry").path());
        }
        let o = Command::new("storescu")
            .args(args)
            .args(["-aec", "REF", "127.0.0.1", &self.port.to_string(), file])
            .env("TCP_NODELAY", "1")
            .output()
            .expect("run storescu");
        assert!(o.status.success(), "reference store: {}", text(&o));
        let received = std::fs::read_dir(self.dir.path())
            .expect("read dir")
            .next()
            .expect("storescp wrote the instance")
            .expect("entry")
            .path();
        let bytes = std::fs::read(received).expect("read received");
        let env = kura_dicom::envelope(&bytes).expect("envelope");
        (
            env.transfer_syntax_uid,
            bytes[env.data_set_offset as usize..].to_vec(),
        )
    }
}

/// The status storescu reports for its one file.
fn store_status(o: &Output) -> String {
    let t = text(o);
    t.lines()
        .find_map(|l| l.split("Received Store Response (").nth(1))
        .map(|s| s.trim_end_matches(')').to_string())
        .unwrap_or_else(|| format!("no response: {t}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn storescu_stores_the_corpus_and_grpc_reads_back_the_same_data_sets() {
    let c = cluster().await;
    let reference = Reference::start();
    let mut client = c.client().await;
    let mut stored: std::collections::HashMap<String, Vec<u8>> = Default::default();
    let mut successes = 0;
    for (file, accept, uid) in corpus() {
        if !accept {
            continue;
        }
        let path = corpus_dir().join(&file);
        let original = std::fs::read(&path).expect("corpus file");
        let env = kura_dicom::envelope(&original).expect("envelope");
        let path = path.to_str().expect("utf-8 path");
        let options = [
            "-v",
            "-R",
            propose(&env.transfer_syntax_uid),
            "-aet",
            "STORESCU",
        ];
        let (sent_syntax, data_set) = reference.data_set(&options, path);
        let mut args = options.to_vec();
        args.extend(["-aec", "KURA"]);
        let o = dcmtk_files(&c, "storescu", &args, &[path]);
        let status = store_status(&o);
        match stored.get(&uid) {
            // Several corpus files share a UID (one MR in four encodings):
            // the first is stored, an identical resend succeeds, other
            // bytes are refused as a duplicate SOP instance.
            Some(first) if first != &data_set => {
                assert!(status.contains("0x111"), "{file}: {status}");
                continue;
            }
            _ => assert_eq!(status, "Success", "{file}: {}", text(&o)),
        }
        successes += 1;
        let back = retrieve(&mut client, TENANT, &uid)
            .await
            .unwrap_or_else(|e| panic!("{file}: retrieve {uid}: {e}"));
        let back_env = kura_dicom::envelope(&back).expect("stored file has an envelope");
        assert_eq!(
            back_env.transfer_syntax_uid, sent_syntax,
            "{file}: stored in the transfer syntax it was sent in"
        );
        assert!(
            back[back_env.data_set_offset as usize..] == data_set[..],
            "{file}: the stored data set differs from the one sent ({} vs {} bytes)",
            back.len() - back_env.data_set_offset as usize,
            data_set.len()
        );
        stored.entry(uid).or_insert(data_set);
    }
    assert!(successes >= 10, "only {successes} files stored");

    // The same file again on a new association: identical, success.
    let ct = corpus_dir().join("CT_small.dcm").display().to_string();
    let again = dcmtk_files(
        &c,
        "storescu",
        &["-v", "-aet", "STORESCU", "-aec", "KURA"],
        &[ct.as_str()],
    );
    assert_eq!(store_status(&again), "Success", "{}", text(&again));

    // A calling AE without the writer role is refused, nothing stored.
    let refused = dcmtk_files(
        &c,
        "storescu",
        &["-v", "-aet", "READONLY", "-aec", "KURA"],
        &[ct.as_str()],
    );
    assert!(
        store_status(&refused).contains("0x124"),
        "{}",
        text(&refused)
    );
}
