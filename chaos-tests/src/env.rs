//! What a run needs from its machine and its environment: root, `ip`,
//! `iptables`, the `kura` binary, the seed and the soak flag.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

/// Scenarios run one at a time: each builds a whole cluster.
static SERIAL: Mutex<()> = Mutex::new(());

/// Takes the suite's lock (a failed scenario does not poison it for the
/// next ones).
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Fails with a clear message unless the process is root and has `ip`,
/// `iptables` and `mount`.
pub fn require_root_and_tools() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("?");
    assert!(
        uid == "0",
        "the chaos tests need root (network namespaces, veth, iptables, tmpfs mounts); \
         this process runs with effective uid {uid}. Run them as root: \
         `sudo -E cargo test --workspace --test chaos -- --nocapture`"
    );
    for (tool, args, package) in [
        ("ip", &["-V"][..], "iproute2"),
        ("iptables", &["--version"][..], "iptables"),
        ("mount", &["--version"][..], "mount"),
    ] {
        let ok = Command::new(tool)
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            ok,
            "the chaos tests need `{tool}` (Debian package {package}): \
             apt-get install -y {package}"
        );
    }
}

/// The `kura` binary: `$KURA_BIN`, or `<target>/debug/kura` next to this
/// test executable (`<target>/debug/deps/chaos-…`). Refuses a binary older
/// than the workspace's sources: `cargo test --workspace --test chaos`
/// builds this crate, not the `kura` binary (`cargo build --workspace`
/// does, and so does a plain `cargo test --workspace`).
pub fn kura_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("KURA_BIN") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "KURA_BIN={} is not a file", p.display());
        return p;
    }
    let exe = std::env::current_exe().expect("the test executable's path");
    let debug = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test executable lives in <target>/<profile>/deps");
    let bin = debug.join("kura");
    assert!(
        bin.is_file(),
        "no kura binary at {}: build it first with `cargo build --workspace` \
         (or point KURA_BIN at one)",
        bin.display()
    );
    if let Some((newest, path)) = newest_input(&bin) {
        let built = mtime(&bin).unwrap_or(SystemTime::UNIX_EPOCH);
        assert!(
            newest <= built,
            "{} is older than {} (changed after the binary was built): run \
             `cargo build --workspace` first (`cargo test --workspace --test chaos` \
             does not rebuild the kura binary), or set KURA_BIN to use it anyway",
            bin.display(),
            path.display()
        );
    }
    bin
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// The newest file the `kura` binary was built from: the files cargo's
/// dep-info (`kura.d` next to it) lists, else every file under
/// `crates/*/src`, `crates/*/build.rs`, `crates/*/Cargo.toml` and `proto/`.
fn newest_input(bin: &Path) -> Option<(SystemTime, PathBuf)> {
    let dep_info = std::fs::read_to_string(bin.with_extension("d")).ok();
    if let Some(text) = dep_info
        && let Some((_, inputs)) = text.split_once(": ")
    {
        return inputs
            .split_whitespace()
            .map(PathBuf::from)
            .filter_map(|p| Some((mtime(&p)?, p)))
            .max();
    }
    newest_source()
}

fn newest_source() -> Option<(SystemTime, PathBuf)> {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    let root = manifest.parent()?.to_path_buf();
    let mut stack = vec![root.join("proto")];
    for entry in std::fs::read_dir(root.join("crates")).ok()?.flatten() {
        let c = entry.path();
        stack.push(c.join("src"));
        for f in ["build.rs", "Cargo.toml"] {
            stack.push(c.join(f));
        }
    }
    let mut newest: Option<(SystemTime, PathBuf)> = None;
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            if let Ok(rd) = std::fs::read_dir(&p) {
                stack.extend(rd.flatten().map(|e| e.path()));
            }
        } else if let Ok(t) = meta.modified()
            && newest.as_ref().is_none_or(|(n, _)| t > *n)
        {
            newest = Some((t, p));
        }
    }
    newest
}

/// The run's seed: `$KURA_CHAOS_SEED`, or a fresh random one.
pub fn seed() -> u64 {
    match std::env::var("KURA_CHAOS_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("KURA_CHAOS_SEED={s:?} is not a u64")),
        Err(_) => rand::random(),
    }
}

/// `KURA_CHAOS_SOAK=1`: longer workload and fault phases (manual runs).
pub fn soak() -> bool {
    std::env::var("KURA_CHAOS_SOAK").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// A phase length: `base`, or six times it in soak mode.
pub fn phase(base: Duration) -> Duration {
    if soak() { base * 6 } else { base }
}

/// `KURA_CHAOS_STRICT=1`: the known product bugs the scenarios detect fail
/// the scenario instead of being reported as warnings.
pub fn strict() -> bool {
    std::env::var("KURA_CHAOS_STRICT").is_ok_and(|v| !v.is_empty() && v != "0")
}
