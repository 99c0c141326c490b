//! The drill report: availability, RTO, RPO and time to full protection
//! from the recorded calls, as JSON, a table and a self-contained HTML page
//! with a timeline.

use super::*;

pub(super) fn ratio(ok: usize, all: usize) -> Value {
    if all == 0 {
        Value::Null
    } else {
        json!(ok as f64 / all as f64)
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn build_report(
    a: &SiteDownArgs,
    endpoint: &str,
    sh: &Shared,
    m: Marks,
    lost: &[String],
    half: &[String],
    acked: usize,
) -> Value {
    let during = |c: &&Call| c.start >= m.t_out && c.start < m.t_back;
    let count = |write: bool, f: &dyn Fn(&&Call) -> bool| {
        let all: Vec<&Call> = sh.calls.iter().filter(|c| c.write == write).collect();
        let sel: Vec<&&Call> = all.iter().filter(|c| f(c)).collect();
        (sel.iter().filter(|c| c.ok).count(), sel.len())
    };
    let (w_ok, w_all) = count(true, &during);
    let (r_ok, r_all) = count(false, &during);
    let (bw_ok, _) = count(true, &|c: &&Call| c.end < m.t_out);
    // RTO: the first write that started after the site went out and was
    // acknowledged.
    let rto = sh
        .calls
        .iter()
        .filter(|c| c.write && c.ok && c.start >= m.t_out)
        .map(|c| c.end - m.t_out)
        .fold(None, |acc: Option<f64>, x| {
            Some(acc.map_or(x, |a| a.min(x)))
        });
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    for c in sh.calls.iter().filter(|c| !c.ok) {
        *errors
            .entry(format!(
                "{} {}",
                if c.write { "store" } else { "retrieve" },
                c.code
            ))
            .or_default() += 1;
    }
    // Per-second timeline.
    let end = sh.calls.iter().map(|c| c.end).fold(0.0f64, f64::max);
    let seconds = end.ceil() as usize + 1;
    let mut timeline = vec![[0u64; 4]; seconds];
    for c in &sh.calls {
        let s = (c.end as usize).min(seconds - 1);
        let slot = match (c.write, c.ok) {
            (true, true) => 0,
            (false, true) => 1,
            (true, false) => 2,
            (false, false) => 3,
        };
        timeline[s][slot] += 1;
    }
    json!({
        "drill": "site-down",
        "site": a.site,
        "endpoint": endpoint,
        "started_unix_ms": unix_ms() - (end * 1000.0) as i64,
        "site_out": m.taken,
        "site_restored": m.restored,
        "outage_secs": m.t_back - m.t_out,
        "baseline_writes_per_sec": if m.t_out > 0.0 { bw_ok as f64 / m.t_out } else { 0.0 },
        "write_availability": ratio(w_ok, w_all),
        "read_availability": ratio(r_ok, r_all),
        "writes_during_outage": {"ok": w_ok, "attempted": w_all},
        "reads_during_outage": {"ok": r_ok, "attempted": r_all},
        "rto_secs": rto,
        "rpo_instances_lost": lost.len(),
        "lost": lost,
        "unknown_outcome_half_written": half,
        "acknowledged_writes": acked,
        "time_to_full_protection_secs": m.t_full.map(|t| t - m.t_back),
        "errors": errors,
        "marks": {"out": m.t_out, "back": m.t_back, "full": m.t_full},
        "timeline": timeline.iter().enumerate().map(|(i, t)| json!({
            "t": i, "writes_ok": t[0], "reads_ok": t[1], "writes_failed": t[2], "reads_failed": t[3],
        })).collect::<Vec<_>>(),
        "under_protected": sh.protection.iter().map(|(t, u)| json!({"t": t, "instances": u})).collect::<Vec<_>>(),
    })
}

pub(super) fn fmt_opt(v: &Value, unit: &str) -> String {
    match v.as_f64() {
        Some(x) if unit == "%" => format!("{:.1} %", x * 100.0),
        Some(x) => format!("{x:.2} {unit}"),
        None => "n/a".into(),
    }
}

pub(super) fn print_table(r: &Value) {
    println!(
        "site-down drill of site {}",
        r["site"].as_str().unwrap_or("?")
    );
    let rows = [
        ("outage", fmt_opt(&r["outage_secs"], "s")),
        (
            "write availability during outage",
            format!(
                "{} ({} of {})",
                fmt_opt(&r["write_availability"], "%"),
                r["writes_during_outage"]["ok"],
                r["writes_during_outage"]["attempted"]
            ),
        ),
        (
            "read availability during outage",
            format!(
                "{} ({} of {})",
                fmt_opt(&r["read_availability"], "%"),
                r["reads_during_outage"]["ok"],
                r["reads_during_outage"]["attempted"]
            ),
        ),
        (
            "RTO (writes acknowledged again)",
            fmt_opt(&r["rto_secs"], "s"),
        ),
        (
            "RPO (acknowledged instances lost)",
            r["rpo_instances_lost"].to_string(),
        ),
        (
            "time to full protection after restore",
            fmt_opt(&r["time_to_full_protection_secs"], "s"),
        ),
        (
            "acknowledged drill writes",
            r["acknowledged_writes"].to_string(),
        ),
    ];
    for (k, v) in rows {
        println!("  {k:<40} {v}");
    }
    if let Some(errors) = r["errors"].as_object().filter(|e| !e.is_empty()) {
        println!("  failed calls:");
        for (k, v) in errors {
            println!("    {k:<36} {v}");
        }
    }
}

/// A self-contained HTML page with the figures and an SVG timeline.
pub(super) fn html_report(r: &Value) -> String {
    let timeline = r["timeline"].as_array().cloned().unwrap_or_default();
    let prot = r["under_protected"].as_array().cloned().unwrap_or_default();
    let (w, h, pad) = (900.0, 260.0, 40.0);
    let tmax = (timeline.len().max(2) - 1) as f64;
    let vmax = timeline
        .iter()
        .flat_map(|t| {
            ["writes_ok", "reads_ok", "writes_failed", "reads_failed"]
                .map(|k| t[k].as_f64().unwrap_or(0.0))
        })
        .fold(1.0f64, f64::max);
    let pmax = prot
        .iter()
        .map(|p| p["instances"].as_f64().unwrap_or(0.0))
        .fold(1.0f64, f64::max);
    let x = |t: f64| pad + t / tmax * (w - 2.0 * pad);
    let y = |v: f64, max: f64| h - pad - v / max * (h - 2.0 * pad);
    let line = |key: &str, color: &str| {
        let pts: Vec<String> = timeline
            .iter()
            .map(|t| {
                format!(
                    "{:.1},{:.1}",
                    x(t["t"].as_f64().unwrap_or(0.0)),
                    y(t[key].as_f64().unwrap_or(0.0), vmax)
                )
            })
            .collect();
        format!(
            "<polyline fill='none' stroke='{color}' stroke-width='2' points='{}'/>",
            pts.join(" ")
        )
    };
    let ppts: Vec<String> = prot
        .iter()
        .map(|p| {
            format!(
                "{:.1},{:.1}",
                x(p["t"].as_f64().unwrap_or(0.0)),
                y(p["instances"].as_f64().unwrap_or(0.0), pmax)
            )
        })
        .collect();
    let out = r["marks"]["out"].as_f64().unwrap_or(0.0);
    let back = r["marks"]["back"].as_f64().unwrap_or(0.0);
    let mut rows = String::new();
    for (k, v) in [
        ("Site", r["site"].to_string()),
        ("Outage", fmt_opt(&r["outage_secs"], "s")),
        (
            "Write availability during outage",
            fmt_opt(&r["write_availability"], "%"),
        ),
        (
            "Read availability during outage",
            fmt_opt(&r["read_availability"], "%"),
        ),
        ("RTO", fmt_opt(&r["rto_secs"], "s")),
        (
            "RPO (acknowledged instances lost)",
            r["rpo_instances_lost"].to_string(),
        ),
        (
            "Time to full protection after restore",
            fmt_opt(&r["time_to_full_protection_secs"], "s"),
        ),
        (
            "Acknowledged drill writes",
            r["acknowledged_writes"].to_string(),
        ),
        ("Site taken out by", r["site_out"].to_string()),
    ] {
        rows.push_str(&format!(
            "<tr><th>{}</th><td>{}</td></tr>",
            html_escape(k),
            html_escape(&v)
        ));
    }
    format!(
        "<!doctype html><html><head><meta charset='utf-8'><title>Kura site-down drill</title>\
<style>body{{font-family:sans-serif;margin:2em}}th{{text-align:left;padding-right:2em}}\
.legend span{{margin-right:1.5em}}</style></head><body>\
<h1>Kura failover drill: site-down</h1><table>{rows}</table>\
<h2>Timeline</h2><svg width='{w}' height='{h}' xmlns='http://www.w3.org/2000/svg'>\
<rect x='{ox:.1}' y='{pad}' width='{ow:.1}' height='{ih:.1}' fill='#fdd'/>\
<line x1='{pad}' y1='{base:.1}' x2='{xr:.1}' y2='{base:.1}' stroke='#999'/>\
{wl}{rl}{wf}{rf}<polyline fill='none' stroke='#a0a' stroke-dasharray='4 3' stroke-width='2' points='{pp}'/>\
<text x='{pad}' y='{ty}' font-size='12'>0 s</text><text x='{xr:.1}' y='{ty}' font-size='12' text-anchor='end'>{tmax:.0} s</text>\
</svg><p class='legend'><span style='color:#080'>■ stores ok/s</span><span style='color:#06c'>■ retrieves ok/s</span>\
<span style='color:#c00'>■ failed stores/s</span><span style='color:#f80'>■ failed retrieves/s</span>\
<span style='color:#a0a'>┅ under-protected instances (max {pmax:.0})</span><span style='background:#fdd'>site out</span></p>\
<h2>Raw report</h2><pre>{raw}</pre></body></html>",
        ox = x(out),
        ow = (x(back) - x(out)).max(0.0),
        ih = h - 2.0 * pad,
        base = h - pad,
        xr = w - pad,
        ty = h - pad / 3.0,
        wl = line("writes_ok", "#080"),
        rl = line("reads_ok", "#06c"),
        wf = line("writes_failed", "#c00"),
        rf = line("reads_failed", "#f80"),
        pp = ppts.join(" "),
        raw = html_escape(&serde_json::to_string_pretty(r).unwrap_or_default()),
    )
}

pub(super) fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&#39;")
        .replace('"', "&quot;")
}
