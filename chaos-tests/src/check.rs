//! The heal wait, the history checker and the figures.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kura_placement::NodeState;

use crate::cluster::RepairFig;
use crate::meta::Meta;
use crate::workload::{Kind, Op, Outcome, Target, archive_client, list_study, retrieve_call};

/// Waits for full protection: every node of `expect_up` is `Up`, no
/// manifest is under-protected or needs attention, no damaged shard is
/// recorded, and every shard holder is an `Up` node of the map (none on a
/// `Lost`, removed or unknown node). Answers how long it took, or what was
/// still missing at the deadline.
pub async fn wait_healed(
    meta: &Meta,
    expect_up: &[u64],
    within: Duration,
) -> Result<Duration, String> {
    let started = Instant::now();
    loop {
        let why = healed(meta, expect_up).await;
        let Some(why) = why else {
            return Ok(started.elapsed());
        };
        if started.elapsed() > within {
            return Err(format!(
                "not fully protected after {within:?}: {why} (last metadata error: {})",
                meta.last_error()
            ));
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
}

/// `None` when healed, else what is missing.
pub async fn healed(meta: &Meta, expect_up: &[u64]) -> Option<String> {
    let Some(map) = meta.map().await else {
        return Some("the metadata cluster does not answer".into());
    };
    let not_up: Vec<String> = expect_up
        .iter()
        .filter(|id| map.node(**id).is_none_or(|n| n.state != NodeState::Up))
        .map(|id| format!("{id}={:?}", map.node(*id).map(|n| n.state)))
        .collect();
    if !not_up.is_empty() {
        return Some(format!("nodes not up: {}", not_up.join(", ")));
    }
    match meta.counts().await {
        Some((_, 0)) => {}
        Some((total, under)) => return Some(format!("{under} of {total} under-protected")),
        None => return Some("no manifest counts".into()),
    }
    match meta.attention().await {
        Some(a) if a.is_empty() => {}
        Some(a) => return Some(format!("{} manifests need attention", a.len())),
        None => return Some("no attention page".into()),
    }
    match meta.damaged().await {
        Some(d) if d.is_empty() => {}
        Some(d) => return Some(format!("{} damaged shards recorded", d.len())),
        None => return Some("no damaged page".into()),
    }
    match meta.holders().await {
        Some(h) => {
            let bad: Vec<String> = h
                .iter()
                .filter(|id| map.node(**id).is_none_or(|n| n.state != NodeState::Up))
                .map(|id| format!("{id}={:?}", map.node(*id).map(|n| n.state)))
                .collect();
            if !bad.is_empty() {
                return Some(format!("shards still on nodes not up: {}", bad.join(", ")));
            }
        }
        None => return Some("no holder list".into()),
    }
    None
}

/// What the final read of an instance found.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Final {
    Found(String),
    NotFound,
    Unreadable(String),
}

/// Reads `uid` through the gateways until it is found, or two gateways
/// agree it is absent, or the attempts run out.
async fn final_read(targets: &[Target], uid: &str, salt: usize) -> Final {
    let mut not_found = 0;
    let mut last = String::new();
    for attempt in 0..16 {
        let t = &targets[(salt + attempt) % targets.len()];
        let mut c = archive_client(t);
        match retrieve_call(&mut c, uid, Duration::from_secs(20)).await {
            (Outcome::Ok, Some(h)) => return Final::Found(h),
            (Outcome::Fail { code, .. }, _) if code == "NOT_FOUND" => {
                not_found += 1;
                if not_found >= 2 {
                    return Final::NotFound;
                }
            }
            (o, _) => {
                last = format!("{} via {}", o.label(), t.label);
                tokio::time::sleep(Duration::from_millis(750)).await;
            }
        }
    }
    Final::Unreadable(last)
}

/// What the checker found.
#[derive(Debug, Default)]
pub struct Verdict {
    pub acked: usize,
    pub maybe_present: usize,
    pub maybe_absent: usize,
    pub refused_absent: usize,
    pub reads_checked: usize,
    pub listed: usize,
    pub lost: Vec<String>,
    pub corrupt: Vec<String>,
    pub violations: Vec<String>,
}

impl Verdict {
    pub fn ok(&self) -> bool {
        self.lost.is_empty() && self.corrupt.is_empty() && self.violations.is_empty()
    }

    pub fn summary(&self) -> String {
        let mut s = format!(
            "checker: {} acknowledged writes all read back exactly ({} lost, {} corrupt); \
             {} unacknowledged writes: {} complete, {} absent; {} refused writes absent; \
             {} successful reads in the history checked; {} instances listed by their studies; \
             {} other violations",
            self.acked,
            self.lost.len(),
            self.corrupt.len(),
            self.maybe_present + self.maybe_absent,
            self.maybe_present,
            self.maybe_absent,
            self.refused_absent,
            self.reads_checked,
            self.listed,
            self.violations.len()
        );
        for (what, list) in [
            ("LOST", &self.lost),
            ("CORRUPT", &self.corrupt),
            ("VIOLATION", &self.violations),
        ] {
            for l in list.iter().take(20) {
                let _ = write!(s, "\n  {what}: {l}");
            }
            if list.len() > 20 {
                let _ = write!(s, "\n  ... and {} more {what}", list.len() - 20);
            }
        }
        s
    }
}

/// Checks the history against what the cluster holds now (after the heal):
/// every acknowledged store reads back with the blake3 sent; no read in the
/// history returned other bytes than were stored for its UID; every store
/// without an acknowledgement is either absent or complete (a definite
/// refusal must be absent); and the studies list exactly complete
/// instances, every acknowledged one among them.
pub async fn check(history: &[Op], targets: &[Target], studies: &[String]) -> Verdict {
    assert!(!targets.is_empty(), "the checker needs a gateway");
    let mut v = Verdict::default();
    let stores: Vec<&Op> = history.iter().filter(|o| o.kind == Kind::Store).collect();
    let sent: HashMap<&str, &Op> = stores.iter().map(|o| (o.uid.as_str(), *o)).collect();

    for o in history {
        match (o.kind, &o.outcome, &o.got) {
            (Kind::Retrieve, Outcome::Ok, Some(got)) => {
                v.reads_checked += 1;
                if *got != o.sent {
                    v.corrupt.push(format!(
                        "read of {} via {} at {:.1}s returned blake3 {got}, stored {}",
                        o.uid,
                        o.gateway,
                        o.start.as_secs_f64(),
                        o.sent
                    ));
                }
            }
            (Kind::Store, Outcome::Ok, got) if got.as_deref() != Some(o.sent.as_str()) => {
                v.corrupt.push(format!(
                    "store of {} via {} acknowledged blake3 {got:?}, sent {}",
                    o.uid, o.gateway, o.sent
                ));
            }
            _ => {}
        }
    }

    let finals: Vec<(&Op, Final)> = futures::stream::iter(stores.iter().enumerate())
        .map(|(i, o)| async move { (*o, final_read(targets, &o.uid, i).await) })
        .buffer_unordered(6)
        .collect()
        .await;
    let mut found: HashMap<&str, Final> = HashMap::new();
    for (o, f) in finals {
        let what = format!(
            "store of {} via {} at {:.1}s-{:.1}s ({})",
            o.uid,
            o.gateway,
            o.start.as_secs_f64(),
            o.end.as_secs_f64(),
            o.outcome.label()
        );
        match (&o.outcome, &f) {
            (Outcome::Ok, Final::Found(h)) if *h == o.sent => v.acked += 1,
            (Outcome::Ok, Final::Found(h)) => v
                .corrupt
                .push(format!("{what}: reads back {h}, sent {}", o.sent)),
            (Outcome::Ok, Final::NotFound) => {
                v.lost.push(format!("{what}: NOT_FOUND after the heal"))
            }
            (Outcome::Ok, Final::Unreadable(e)) => v
                .lost
                .push(format!("{what}: unreadable after the heal: {e}")),
            (_, Final::Found(h)) if *h != o.sent => v
                .corrupt
                .push(format!("{what}: reads back {h}, sent {}", o.sent)),
            (Outcome::Fail { definite: true, .. }, Final::Found(_)) => {
                v.violations.push(format!("{what}: refused, yet stored"));
            }
            (Outcome::Fail { definite: true, .. }, Final::NotFound) => v.refused_absent += 1,
            (_, Final::Found(_)) => v.maybe_present += 1,
            (_, Final::NotFound) => v.maybe_absent += 1,
            (_, Final::Unreadable(e)) => v.violations.push(format!(
                "{what}: neither absent nor complete after the heal: {e}"
            )),
        }
        found.insert(o.uid.as_str(), f);
    }

    for (i, study) in studies.iter().enumerate() {
        let mut listed = None;
        let mut last = String::new();
        for attempt in 0..10 {
            let t = &targets[(i + attempt) % targets.len()];
            match list_study(&mut archive_client(t), study).await {
                Ok(l) => {
                    listed = Some(l);
                    break;
                }
                Err(s) if s.code() == tonic::Code::NotFound => {
                    listed = Some(Vec::new());
                    break;
                }
                Err(s) => {
                    last = format!("{}: {}", s.code(), s.message());
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        let Some(listed) = listed else {
            v.violations
                .push(format!("study {study} could not be listed: {last}"));
            continue;
        };
        let mut in_list: BTreeMap<&str, &str> = BTreeMap::new();
        for (uid, blake3) in &listed {
            v.listed += 1;
            in_list.insert(uid, blake3);
            match (sent.get(uid.as_str()), found.get(uid.as_str())) {
                (None, _) => v.violations.push(format!("study {study} lists {uid}, never stored")),
                (Some(o), Some(Final::Found(h))) if *h == o.sent && *blake3 == o.sent => {}
                (Some(o), f) => v.violations.push(format!(
                    "study {study} lists {uid} (blake3 {blake3}, sent {}) but its read gives {f:?}: a half-written instance is visible",
                    o.sent
                )),
            }
        }
        for o in stores
            .iter()
            .filter(|o| o.study == *study && o.outcome == Outcome::Ok)
        {
            if !in_list.contains_key(o.uid.as_str()) {
                v.violations.push(format!(
                    "study {study} does not list acknowledged {}",
                    o.uid
                ));
            }
        }
    }
    v
}

/// Counts of a history, overall and within a window.
pub fn figures(history: &[Op], window: (Duration, Duration)) -> String {
    let inside = |o: &&Op| o.start >= window.0 && o.start < window.1;
    let stores = history.iter().filter(|o| o.kind == Kind::Store);
    let reads = history.iter().filter(|o| o.kind == Kind::Retrieve);
    let ok = |o: &&Op| o.outcome == Outcome::Ok;
    let mut failed: BTreeMap<String, usize> = BTreeMap::new();
    for o in stores.clone().filter(|o| o.outcome != Outcome::Ok) {
        *failed.entry(o.outcome.label()).or_default() += 1;
    }
    let mut read_failed: BTreeMap<String, usize> = BTreeMap::new();
    for o in reads.clone().filter(|o| o.outcome != Outcome::Ok) {
        *read_failed.entry(o.outcome.label()).or_default() += 1;
    }
    let pct = |a: usize, b: usize| {
        if b == 0 {
            "n/a".to_string()
        } else {
            format!("{:.0}%", 100.0 * a as f64 / b as f64)
        }
    };
    let (w_ok, w_all) = (
        stores.clone().filter(inside).filter(ok).count(),
        stores.clone().filter(inside).count(),
    );
    let (r_ok, r_all) = (
        reads.clone().filter(inside).filter(ok).count(),
        reads.clone().filter(inside).count(),
    );
    let bytes: u64 = stores.clone().filter(ok).map(|o| o.size).sum();
    let lat = |kind: Kind, within: bool| {
        let mut v: Vec<f64> = history
            .iter()
            .filter(|o| o.kind == kind && o.outcome == Outcome::Ok)
            .filter(|o| !within || (o.start >= window.0 && o.start < window.1))
            .map(|o| (o.end - o.start).as_secs_f64())
            .collect();
        if v.is_empty() {
            return "-".to_string();
        }
        v.sort_by(f64::total_cmp);
        let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
        format!("p50 {:.2}s p99 {:.2}s max {:.2}s", q(0.5), q(0.99), q(1.0))
    };
    format!(
        "writes: {} acknowledged ({:.1} MB) of {}; failed by reason: {failed:?}\n\
         reads: {} ok of {}; failed by reason: {read_failed:?}\n\
         during the fault ({:.1}s-{:.1}s): writes ok {w_ok}/{w_all} ({}), reads ok {r_ok}/{r_all} ({})\n\
         latency of ok calls: writes {} (during the fault {}); reads {} (during the fault {})",
        stores.clone().filter(ok).count(),
        bytes as f64 / 1e6,
        stores.clone().count(),
        reads.clone().filter(ok).count(),
        reads.clone().count(),
        window.0.as_secs_f64(),
        window.1.as_secs_f64(),
        pct(w_ok, w_all),
        pct(r_ok, r_all),
        lat(Kind::Store, false),
        lat(Kind::Store, true),
        lat(Kind::Retrieve, false),
        lat(Kind::Retrieve, true),
    )
}

/// Share of ok calls of `kind` that started inside `window`.
pub fn availability(history: &[Op], kind: Kind, window: (Duration, Duration)) -> (usize, usize) {
    let v: Vec<&Op> = history
        .iter()
        .filter(|o| o.kind == kind && o.start >= window.0 && o.start < window.1)
        .collect();
    (
        v.iter().filter(|o| o.outcome == Outcome::Ok).count(),
        v.len(),
    )
}

/// The repair figures as one line.
pub fn repair_line(f: &RepairFig) -> String {
    format!(
        "repair: {:.2} MB written, {:.2} MB read, {:.2} MB across sites; {} shards rebuilt, \
         {} moved, {} damaged rewritten; {} instances repaired; {} failures",
        f.bytes_written as f64 / 1e6,
        f.bytes_read as f64 / 1e6,
        f.cross_site_bytes as f64 / 1e6,
        f.shards_rebuilt,
        f.shards_moved,
        f.damaged_rewritten,
        f.instances_repaired,
        f.failures
    )
}
