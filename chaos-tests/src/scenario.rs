//! The frame every scenario runs in: the suite's lock, the prerequisites,
//! the seed (printed at the start and again on failure), a runtime, the
//! standard cluster, and the closing heal + check + figures.

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::check::{self, Verdict};
use crate::cluster::{Cluster, Tuning};
use crate::env;
use crate::workload::{Mix, Workload};

/// What a scenario gets.
pub struct Ctx {
    pub number: u32,
    pub name: &'static str,
    pub seed: u64,
    pub rng: StdRng,
    pub kura: PathBuf,
    /// Lines of scenario-specific figures, printed with the others.
    pub notes: Vec<String>,
    started: Instant,
}

impl Ctx {
    /// The digits that make this scenario's UIDs.
    pub fn tag(&self) -> String {
        format!("{}.{}", self.number, self.seed % 1_000_000)
    }

    /// Prints and keeps a figure line.
    pub fn note(&mut self, line: impl Into<String>) {
        let line = line.into();
        println!("  [{:>6.1}s] {line}", self.started.elapsed().as_secs_f64());
        self.notes.push(line);
    }

    /// Reports a known product bug the scenario observed: a warning in the
    /// figures (and at the end of the run), a failure with
    /// `KURA_CHAOS_STRICT=1`.
    pub fn product_bug(&mut self, what: impl Into<String>) {
        let what = what.into();
        assert!(!env::strict(), "PRODUCT BUG (KURA_CHAOS_STRICT=1): {what}");
        self.note(format!(
            "PRODUCT BUG (warning; KURA_CHAOS_STRICT=1 fails on it): {what}"
        ));
    }

    /// Availability of reads and writes that started in `window`, as a note.
    pub fn window_note(
        &mut self,
        label: &str,
        history: &[crate::workload::Op],
        window: (Duration, Duration),
    ) {
        use crate::workload::Kind;
        let (w_ok, w_all) = check::availability(history, Kind::Store, window);
        let (r_ok, r_all) = check::availability(history, Kind::Retrieve, window);
        // Calls already running when the window opened (a stuck client
        // starts nothing inside it).
        let across: Vec<String> = history
            .iter()
            .filter(|o| o.start < window.0 && o.end > window.0)
            .map(|o| {
                format!(
                    "{} {:.1}s {}",
                    if o.kind == Kind::Store {
                        "write"
                    } else {
                        "read"
                    },
                    (o.end - o.start).as_secs_f64(),
                    o.outcome.label()
                )
            })
            .collect();
        self.note(format!(
            "{label} ({:.1}s-{:.1}s): writes ok {w_ok}/{w_all}, reads ok {r_ok}/{r_all}; \
             calls running at its start: {across:?}",
            window.0.as_secs_f64(),
            window.1.as_secs_f64()
        ));
    }

    /// Prints a progress line.
    pub fn log(&self, line: impl AsRef<str>) {
        println!(
            "  [{:>6.1}s] {}",
            self.started.elapsed().as_secs_f64(),
            line.as_ref()
        );
    }
}

struct OnFailure {
    number: u32,
    name: &'static str,
    seed: u64,
}

impl Drop for OnFailure {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "=== chaos scenario {} ({}) FAILED with seed {}: reproduce with \
                 KURA_CHAOS_SEED={} cargo test --workspace --test chaos -- --nocapture {}",
                self.number, self.name, self.seed, self.seed, self.name
            );
        }
    }
}

/// Runs one scenario: serially, as root, with the seed printed.
pub fn run<F, Fut>(number: u32, name: &'static str, body: F)
where
    F: FnOnce(Ctx) -> Fut,
    Fut: Future<Output = ()>,
{
    let _serial = env::serial();
    env::require_root_and_tools();
    let kura = env::kura_bin();
    let seed = env::seed();
    println!(
        "=== chaos scenario {number} ({name}): seed {seed} (reproduce with KURA_CHAOS_SEED={seed}){}",
        if env::soak() { ", soak mode" } else { "" }
    );
    let _on_failure = OnFailure { number, name, seed };
    let ctx = Ctx {
        number,
        name,
        seed,
        rng: StdRng::seed_from_u64(seed),
        kura,
        notes: Vec::new(),
        started: Instant::now(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let started = Instant::now();
    rt.block_on(body(ctx));
    rt.shutdown_timeout(Duration::from_secs(5));
    println!(
        "=== chaos scenario {number} ({name}) passed in {:.0}s (seed {seed})",
        started.elapsed().as_secs_f64()
    );
}

/// The standard cluster (3 sites x 3 nodes, RS(3,3)) with `tuning`,
/// started and ready; `before_start` may mount tmpfs on data dirs.
pub async fn standard_cluster(
    ctx: &Ctx,
    tuning: Tuning,
    before_start: impl FnOnce(&mut Cluster),
) -> Cluster {
    let mut c = Cluster::prepare(&ctx.kura);
    c.tuning = tuning;
    let specs = c.standard_specs();
    c.add_nodes(&specs);
    before_start(&mut c);
    let t = Instant::now();
    c.start_all();
    c.wait_ready(Duration::from_secs(120)).await;
    ctx.log(format!(
        "cluster of {} processes ready in {:.1}s ({}; host {}, sites {})",
        c.nodes.len(),
        t.elapsed().as_secs_f64(),
        c.dir.display(),
        c.net.host_ip,
        c.net
            .sites
            .iter()
            .map(|s| format!("{}={}", s.name, s.ip))
            .collect::<Vec<_>>()
            .join(" ")
    ));
    c
}

/// Starts the standard workload on every gateway.
pub fn workload(ctx: &Ctx, cluster: &Cluster, mix: Mix) -> Workload {
    Workload::start(&ctx.tag(), ctx.seed, mix, cluster.targets(&[]))
}

/// Sleeps for a phase (longer in soak mode).
pub async fn phase(secs: f64) {
    tokio::time::sleep(env::phase(Duration::from_secs_f64(secs))).await;
}

/// The heal phase: stops the workload (after its calls in flight), then
/// waits for full protection (`expect_up` nodes up, nothing
/// under-protected, damaged or on a lost node). Answers the time from the
/// fault to full protection, or what was missing.
pub async fn heal(
    ctx: &mut Ctx,
    cluster: &Cluster,
    workload: &mut Workload,
    fault_started: Instant,
    expect_up: &[u64],
) -> Result<Duration, String> {
    workload.stop().await;
    let meta = cluster.meta();
    let before = meta.counts().await;
    let attention = meta.attention().await.map(|a| a.len());
    let damaged = meta.damaged().await.map(|d| d.len());
    let t = Instant::now();
    let healed = check::wait_healed(&meta, expect_up, Duration::from_secs(180))
        .await
        .map(|_| fault_started.elapsed());
    ctx.note(format!(
        "heal phase: at its start (total, under-protected) manifests {before:?}, needing attention \
         {attention:?}, damaged shards {damaged:?}; fully protected {:.1}s later",
        t.elapsed().as_secs_f64()
    ));
    healed
}

/// The end of every scenario: checks the history against the healed
/// cluster, prints the figures, and fails on a missed heal or any lost,
/// corrupt or inconsistent instance.
pub async fn verify(
    mut ctx: Ctx,
    cluster: &Cluster,
    workload: &Workload,
    window: (Duration, Duration),
    healed: Result<Duration, String>,
) -> Verdict {
    let meta = cluster.meta();
    let history = workload.history();
    write_history(&cluster.dir.join("history.tsv"), &history);
    let targets = cluster.targets(&[]);
    let verdict = check::check(&history, &targets, &workload.studies()).await;
    let repair = cluster.repair_figures();
    let counts = meta.counts().await;
    println!(
        "=== figures of scenario {} ({}), seed {}:",
        ctx.number, ctx.name, ctx.seed
    );
    for l in check::figures(&history, window).lines() {
        println!("  {l}");
    }
    match &healed {
        Ok(d) => println!(
            "  time from fault to full protection: {:.1}s",
            d.as_secs_f64()
        ),
        Err(e) => println!("  NOT HEALED: {e}"),
    }
    println!("  {}", check::repair_line(&repair));
    if let Some((total, under)) = counts {
        println!("  manifests: {total} ({under} under-protected)");
    }
    for n in ctx.notes.drain(..) {
        println!("  {n}");
    }
    println!("  {}", verdict.summary());
    if let Err(e) = healed {
        panic!("scenario {} ({}): {e}", ctx.number, ctx.name);
    }
    assert!(
        verdict.ok(),
        "scenario {} ({}): the history does not check out:\n{}",
        ctx.number,
        ctx.name,
        verdict.summary()
    );
    assert!(verdict.acked > 0, "no write was acknowledged at all");
    verdict
}

/// The history as TSV in the run's directory (kept with
/// `KURA_CHAOS_KEEP=1`), one call per line.
fn write_history(path: &std::path::Path, history: &[crate::workload::Op]) {
    use std::fmt::Write as _;
    let mut out = String::from(
        "client\tkind\tuid\tgateway\tstart_s\tend_s\toutcome\tsize\tsent_blake3\tgot_blake3\n",
    );
    for o in history {
        let _ = writeln!(
            out,
            "{}\t{:?}\t{}\t{}\t{:.3}\t{:.3}\t{}\t{}\t{}\t{}",
            o.client,
            o.kind,
            o.uid,
            o.gateway,
            o.start.as_secs_f64(),
            o.end.as_secs_f64(),
            o.outcome.label(),
            o.size,
            o.sent,
            o.got.as_deref().unwrap_or("-")
        );
    }
    if let Err(e) = std::fs::write(path, out) {
        eprintln!("chaos: cannot write {}: {e}", path.display());
    }
}
