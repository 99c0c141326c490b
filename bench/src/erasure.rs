//! Erasure-coding micro benchmark: single-thread throughput of Reed-Solomon
//! encode and reconstruct for both codes (raw crate calls), of kura-erasure's
//! own segment paths (which add copies and blake3 checks), and of blake3,
//! each against a `memcpy` of the same bytes measured in the same run. The
//! machine is shared and noisy, so every operation is sampled in interleaved
//! rounds (noise hits all of them alike) and the median is reported; read the
//! ratios to memcpy, not the absolute figures.
//!
//! `cargo run --release -p kura-bench --bin erasure [-- --quick] [--json]`

use std::hint::black_box;
use std::time::{Duration, Instant};

use kura_erasure::{Code, EcParams, SegmentCodec, SegmentExpectation};
use reed_solomon_erasure::galois_8;
use reed_solomon_simd::{ReedSolomonDecoder, ReedSolomonEncoder};

const PROFILES: [(usize, usize); 5] = [(4, 2), (6, 3), (5, 4), (8, 4), (9, 6)];
const SHARD_BYTES: [usize; 2] = [64 * 1024, 1024 * 1024];

/// How long and how often to sample each operation.
#[derive(Clone, Copy)]
struct Budget {
    /// Time one sample should take (iterations are calibrated to it).
    sample: Duration,
    /// Samples per operation; the median is reported.
    rounds: usize,
}

const BUDGET_FULL: Budget = Budget {
    sample: Duration::from_millis(20),
    rounds: 9,
};
const BUDGET_QUICK: Budget = Budget {
    sample: Duration::from_millis(2),
    rounds: 3,
};

/// One measured operation: runs once and returns the time of the part that
/// counts (set-up such as cloning inputs is excluded).
type Op<'a> = Box<dyn FnMut() -> Duration + 'a>;

fn timed(f: impl FnOnce()) -> Duration {
    let start = Instant::now();
    f();
    start.elapsed()
}

struct Row {
    label: String,
    gbps: f64,
}

/// Measures every op in interleaved rounds over `bytes` bytes of data each
/// run; returns GB/s medians in op order.
fn measure_all(budget: Budget, bytes: usize, ops: &mut [(String, Op<'_>)]) -> Vec<Row> {
    // Warm up and calibrate: iterations per sample so one sample lasts
    // about `budget.sample`.
    let iterations: Vec<u32> = ops
        .iter_mut()
        .map(|(_, op)| {
            op();
            let once = op().max(Duration::from_nanos(100));
            let n = budget.sample.as_secs_f64() / once.as_secs_f64();
            n.clamp(1.0, 100_000.0) as u32
        })
        .collect();
    let mut samples: Vec<Vec<f64>> = vec![Vec::with_capacity(budget.rounds); ops.len()];
    for _ in 0..budget.rounds {
        for ((_, op), (n, out)) in ops
            .iter_mut()
            .zip(iterations.iter().zip(samples.iter_mut()))
        {
            let mut total = Duration::ZERO;
            for _ in 0..*n {
                total += op();
            }
            out.push(bytes as f64 * f64::from(*n) / total.as_secs_f64() / 1e9);
        }
    }
    ops.iter()
        .zip(samples)
        .map(|((label, _), mut s)| {
            s.sort_by(f64::total_cmp);
            Row {
                label: label.clone(),
                gbps: s[s.len() / 2],
            }
        })
        .collect()
}

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// The data shards lost in the worst case: as many data shards as parity
/// allows (parity loss costs nothing on the read path).
fn lost_data(k: usize, m: usize, lost: usize) -> Vec<usize> {
    (0..lost.min(m).min(k)).collect()
}

/// Row labels must not depend on the profile: "m" for the worst case.
fn lost_name(lost: usize, m: usize) -> String {
    if lost == m && m != 1 {
        "m".to_string()
    } else {
        lost.to_string()
    }
}

/// Results of one (profile, shard size) configuration.
struct Config {
    k: usize,
    m: usize,
    shard: usize,
    rows: Vec<Row>,
}

fn run_config(budget: Budget, k: usize, m: usize, shard: usize) -> Config {
    let data_len = k * shard;
    let data = pseudo_random(data_len, (k * 31 + m) as u64);
    let data_shards: Vec<Vec<u8>> = data.chunks(shard).map(<[u8]>::to_vec).collect();
    let mut ops: Vec<(String, Op<'_>)> = Vec::new();

    // Ceiling: copy the same bytes.
    let mut copy_dst = vec![0u8; data_len];
    let copy_src = data.clone();
    ops.push((
        "memcpy".into(),
        Box::new(move || {
            timed(|| {
                copy_dst.copy_from_slice(black_box(&copy_src));
                black_box(&mut copy_dst);
            })
        }),
    ));
    let hash_src = data_shards.concat();
    ops.push((
        "blake3".into(),
        Box::new(move || {
            timed(|| {
                black_box(blake3::hash(black_box(&hash_src)));
            })
        }),
    ));

    // Encryption at rest (kura-seal): seal and open the same bytes, as the
    // gateway does before encoding and after decoding.
    let seal_key = kura_seal::DataKey::from_bytes([7; 32]);
    let seal_src = data.clone();
    let mut sealed = Vec::with_capacity(data_len + data_len / 4096 + 64);
    {
        let key = seal_key.clone();
        let src = seal_src.clone();
        let mut out = Vec::with_capacity(data_len + data_len / 4096 + 64);
        ops.push((
            "kura-seal seal".into(),
            Box::new(move || {
                timed(|| {
                    out.clear();
                    let mut s = kura_seal::Sealer::new(&key, &[1; 32]);
                    s.push(black_box(&src), &mut out).expect("seal");
                    black_box(s.finish(&mut out).expect("seal"));
                })
            }),
        ));
    }
    {
        let mut s = kura_seal::Sealer::new(&seal_key, &[1; 32]);
        s.push(&seal_src, &mut sealed).expect("seal");
        s.finish(&mut sealed).expect("seal");
        let mut out = Vec::with_capacity(data_len);
        ops.push((
            "kura-seal open".into(),
            Box::new(move || {
                timed(|| {
                    out.clear();
                    let mut o = kura_seal::Opener::new(&seal_key, &[1; 32]);
                    o.push(black_box(&sealed), &mut out).expect("open");
                    o.finish(&mut out).expect("open");
                    black_box(&mut out);
                })
            }),
        ));
    }

    // reed-solomon-erasure, GF(2^8).
    let rs8 = galois_8::ReedSolomon::new(k, m).expect("valid profile");
    let mut parity8 = vec![vec![0u8; shard]; m];
    rs8.encode_sep(&data_shards, &mut parity8).expect("encode");
    {
        let rs = rs8.clone();
        let input = data_shards.clone();
        let mut parity = parity8.clone();
        ops.push((
            "gf8 encode".into(),
            Box::new(move || timed(|| rs.encode_sep(&input, &mut parity).expect("encode"))),
        ));
    }
    for lost in [m, 1] {
        let rs = rs8.clone();
        let missing = lost_data(k, m, lost);
        let mut slots: Vec<(Vec<u8>, bool)> = data_shards
            .iter()
            .chain(&parity8)
            .map(|s| (s.clone(), true))
            .collect();
        ops.push((
            format!("gf8 reconstruct {} lost", lost_name(lost, m)),
            Box::new(move || {
                for &i in &missing {
                    slots[i].1 = false;
                }
                timed(|| rs.reconstruct_data(&mut slots).expect("reconstruct"))
            }),
        ));
    }

    // reed-solomon-simd, GF(2^16).
    let mut encoder16 = ReedSolomonEncoder::new(k, m, shard).expect("valid profile");
    for s in &data_shards {
        encoder16.add_original_shard(s).expect("add");
    }
    let parity16: Vec<Vec<u8>> = encoder16
        .encode()
        .expect("encode")
        .recovery_iter()
        .map(<[u8]>::to_vec)
        .collect();
    {
        let input = data_shards.clone();
        let mut encoder = encoder16;
        ops.push((
            "gf16 encode".into(),
            Box::new(move || {
                timed(|| {
                    encoder.reset(k, m, shard).expect("reset");
                    for s in &input {
                        encoder.add_original_shard(s).expect("add");
                    }
                    black_box(
                        encoder
                            .encode()
                            .expect("encode")
                            .recovery(0)
                            .map(<[u8]>::len),
                    );
                })
            }),
        ));
    }
    for lost in [m, 1] {
        let missing = lost_data(k, m, lost);
        let originals: Vec<(usize, Vec<u8>)> = (0..k)
            .filter(|i| !missing.contains(i))
            .map(|i| (i, data_shards[i].clone()))
            .collect();
        let recovery: Vec<(usize, Vec<u8>)> = (0..missing.len())
            .map(|j| (j, parity16[j].clone()))
            .collect();
        let mut decoder = ReedSolomonDecoder::new(k, m, shard).expect("valid profile");
        ops.push((
            format!("gf16 reconstruct {} lost", lost_name(lost, m)),
            Box::new(move || {
                timed(|| {
                    decoder.reset(k, m, shard).expect("reset");
                    for (i, s) in &originals {
                        decoder.add_original_shard(*i, s).expect("add");
                    }
                    for (j, s) in &recovery {
                        decoder.add_recovery_shard(*j, s).expect("add");
                    }
                    let decoded = decoder.decode().expect("decode");
                    black_box(decoded.restored_original(0).map(<[u8]>::len));
                })
            }),
        ));
    }

    // kura-erasure's paths: shard copies, headers and blake3 included.
    for code in Code::ALL {
        let tag = match code {
            Code::ReedSolomonGf8 => "gf8",
            Code::ReedSolomonGf16 => "gf16",
        };
        let params = EcParams {
            data_shards: k as u8,
            parity_shards: m as u8,
            segment_bytes: data_len as u32,
            code,
        };
        let key = [7u8; 32];
        let mut codec = SegmentCodec::new(params).expect("valid profile");
        let segment = codec.encode(key, 0, &data).expect("encode");
        let encoded: Vec<Vec<u8>> = segment.shards.iter().map(|s| s.encode_to_vec()).collect();
        let expected = SegmentExpectation {
            object_key: key,
            index: 0,
            data_len: data_len as u32,
            shard_blake3: Some(segment.shard_blake3s()),
            payloads_verified: false,
        };
        {
            let mut codec = SegmentCodec::new(params).expect("valid profile");
            let input = data.clone();
            ops.push((
                format!("kura encode_segment {tag}"),
                Box::new(move || {
                    timed(|| drop(black_box(codec.encode(key, 0, &input).expect("encode"))))
                }),
            ));
        }
        // Reads fetch exactly k shards: the data shards still there, then
        // parity in index order.
        let mut cases = vec![0, 1, m];
        if code == Code::ReedSolomonGf16 {
            cases.retain(|&lost| lost != 0); // healthy path has no code
        }
        cases.dedup();
        for lost in cases {
            let missing = lost_data(k, m, lost);
            let mut fetched: Vec<Option<Vec<u8>>> = encoded.iter().cloned().map(Some).collect();
            for &i in &missing {
                fetched[i] = None;
            }
            for slot in fetched.iter_mut().skip(k + missing.len()) {
                *slot = None;
            }
            let mut codec = SegmentCodec::new(params).expect("valid profile");
            let expected = expected.clone();
            let label = if lost == 0 {
                "kura decode_segment healthy".to_string()
            } else {
                format!("kura decode_segment {tag} {} lost", lost_name(lost, m))
            };
            if lost == 0 {
                // As the gateway reads over TLS: the nodes verified the
                // payloads, only headers and lengths are checked here.
                let mut codec = SegmentCodec::new(params).expect("valid profile");
                let verified = SegmentExpectation {
                    payloads_verified: true,
                    ..expected.clone()
                };
                let fetched = fetched.clone();
                ops.push((
                    "kura decode_segment healthy, verified".to_string(),
                    Box::new(move || {
                        let input = fetched.clone(); // not timed
                        timed(|| drop(black_box(codec.decode(&verified, input).expect("decode"))))
                    }),
                ));
            }
            ops.push((
                label,
                Box::new(move || {
                    let input = fetched.clone(); // not timed
                    timed(|| drop(black_box(codec.decode(&expected, input).expect("decode"))))
                }),
            ));
        }
    }

    let rows = measure_all(budget, data_len, &mut ops);
    Config { k, m, shard, rows }
}

fn size_name(bytes: usize) -> String {
    if bytes >= 1024 * 1024 {
        format!("{} MiB", bytes / (1024 * 1024))
    } else {
        format!("{} KiB", bytes / 1024)
    }
}

fn print_tables(configs: &[Config]) {
    for &shard in &SHARD_BYTES {
        let group: Vec<&Config> = configs.iter().filter(|c| c.shard == shard).collect();
        let Some(first) = group.first() else { continue };
        println!(
            "\nshard size {} (data per op = k x shard); GB/s of data (fraction of memcpy)\n",
            size_name(shard)
        );
        print!("| {:<34} |", "operation");
        for c in &group {
            print!(" {:>14} |", format!("RS({},{})", c.k, c.m));
        }
        println!();
        print!("|{}|", "-".repeat(36));
        for _ in &group {
            print!("{}:|", "-".repeat(15));
        }
        println!();
        for (i, row) in first.rows.iter().enumerate() {
            print!("| {:<34} |", row.label);
            for c in &group {
                let gbps = c.rows[i].gbps;
                let ceiling = c.rows[0].gbps;
                let cell = if i == 0 {
                    format!("{gbps:.1}")
                } else {
                    format!("{gbps:.1} ({:.2})", gbps / ceiling)
                };
                print!(" {cell:>14} |");
            }
            println!();
        }
    }
}

fn print_json(configs: &[Config]) {
    let mut records = Vec::new();
    for c in configs {
        let ceiling = c.rows[0].gbps;
        for row in &c.rows {
            records.push(format!(
                "{{\"profile\":\"RS({},{})\",\"k\":{},\"m\":{},\"shard_bytes\":{},\"op\":\"{}\",\"gbps\":{:.3},\"memcpy_fraction\":{:.4}}}",
                c.k,
                c.m,
                c.k,
                c.m,
                c.shard,
                row.label,
                row.gbps,
                row.gbps / ceiling
            ));
        }
    }
    println!("[\n  {}\n]", records.join(",\n  "));
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut budget = BUDGET_FULL;
    let mut json = false;
    for arg in &args {
        match arg.as_str() {
            "--quick" => budget = BUDGET_QUICK,
            "--json" => json = true,
            "-h" | "--help" => {
                println!("usage: erasure [--quick] [--json]");
                return;
            }
            other => {
                eprintln!("unknown argument {other:?}; usage: erasure [--quick] [--json]");
                std::process::exit(2);
            }
        }
    }
    if cfg!(debug_assertions) {
        eprintln!("warning: debug build; run with --release for meaningful figures");
    }
    let started = Instant::now();
    let mut configs = Vec::new();
    for &shard in &SHARD_BYTES {
        for &(k, m) in &PROFILES {
            eprintln!("measuring RS({k},{m}) with {} shards ...", size_name(shard));
            configs.push(run_config(budget, k, m, shard));
        }
    }
    if json {
        print_json(&configs);
    } else {
        print_tables(&configs);
        println!(
            "\nsingle thread; median of {} interleaved samples; total {:.0} s",
            budget.rounds,
            started.elapsed().as_secs_f64()
        );
    }
}
