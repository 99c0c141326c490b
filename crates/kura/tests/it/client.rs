//! The client commands without a gateway: what they say when it cannot be
//! reached or the input is wrong. Their end-to-end tests against a running
//! gateway live with `kura dev`.

use std::process::{Command, Output};

fn kura(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kura"))
        .args(args)
        // The defaults must not come from the environment of the test run.
        .env_remove("KURA_ENDPOINT")
        .env_remove("KURA_TENANT")
        .env_remove("KURA_CERTS")
        .output()
        .expect("run the kura binary")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn an_unreachable_gateway_is_named_with_a_hint() {
    let output = kura(&["stat", "1.2.3", "--endpoint", "127.0.0.1:1"]);
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(output.stdout.is_empty());
    // One line: what failed, which endpoint, what to do.
    assert_eq!(text.trim_end().lines().count(), 1, "{text}");
    assert!(text.starts_with("kura: stat 1.2.3: "), "{text}");
    assert!(text.contains("http://127.0.0.1:1"), "{text}");
    assert!(text.contains("kura dev"), "{text}");

    for args in [
        &["ls", "--study", "1.2", "--endpoint", "127.0.0.1:1"][..],
        &[
            "retrieve",
            "1.2.3",
            "-o",
            "out.dcm",
            "--endpoint",
            "127.0.0.1:1",
        ],
    ] {
        let output = kura(args);
        let text = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {text}");
        assert!(text.contains("http://127.0.0.1:1"), "{args:?}: {text}");
    }
}

#[test]
fn the_endpoint_comes_from_the_environment() {
    let output = Command::new(env!("CARGO_BIN_EXE_kura"))
        .args(["stat", "1.2.3"])
        .env("KURA_ENDPOINT", "127.0.0.1:1")
        .output()
        .expect("run the kura binary");
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(text.contains("http://127.0.0.1:1"), "{text}");
}

#[test]
fn storing_a_missing_path_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("no-such-study");
    let missing = missing.display().to_string();
    // Checked before connecting: the endpoint is never tried.
    let output = kura(&["store", &missing, "--endpoint", "127.0.0.1:1"]);
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(text.starts_with("kura: store: "), "{text}");
    assert!(text.contains(&missing), "{text}");
    assert!(text.contains("No such file"), "{text}");
    assert!(!text.contains("127.0.0.1:1"), "{text}");
}

#[test]
fn bad_usage_exits_2() {
    let bad_endpoint = kura(&["stat", "1.2.3", "--endpoint", "https://127.0.0.1:1"]);
    assert_eq!(bad_endpoint.status.code(), Some(2));
    assert!(
        stderr(&bad_endpoint).contains("TLS"),
        "{}",
        stderr(&bad_endpoint)
    );

    let bad_tenant = kura(&["stat", "1.2.3", "--tenant", "a b"]);
    assert_eq!(bad_tenant.status.code(), Some(2));
    assert!(stderr(&bad_tenant).contains("tenant"));

    let json_to_stdout = kura(&["retrieve", "1.2.3", "-o", "-", "--json"]);
    assert_eq!(json_to_stdout.status.code(), Some(2));
    assert!(stderr(&json_to_stdout).contains("--json"));

    let no_concurrency = kura(&["store", ".", "--concurrency", "0"]);
    assert_eq!(no_concurrency.status.code(), Some(2));
}

#[test]
fn client_help_names_the_commands() {
    let output = kura(&["--help"]);
    assert_eq!(output.status.code(), Some(0));
    let text = String::from_utf8_lossy(&output.stdout);
    for command in ["store", "retrieve", "stat", "ls"] {
        assert!(text.contains(command), "{command}: {text}");
    }
    let output = kura(&["store", "--help"]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("--concurrency"), "{text}");
    assert!(text.contains("KURA_ENDPOINT"), "{text}");
}
