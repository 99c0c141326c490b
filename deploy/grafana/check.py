"""Checks the Grafana dashboard against Kura's Prometheus metrics, offline.

    python deploy/grafana/check.py [DASHBOARD.json] [--repo DIR]

Run from the repository root (validate.sh does); --repo points elsewhere.
DASHBOARD defaults to kura-dashboard.json next to this script. Standard
library only.

Checks:
  - the JSON parses and is importable: schemaVersion 39, a uid, no
    numeric id, a `datasource` variable of type datasource (prometheus),
    and every panel and query uses that variable;
  - panel ids are unique; every gridPos lies within the 24 columns and no
    two panels overlap;
  - every query names only metrics of METRICS below (identifiers
    kura_[a-z0-9_]+; _bucket/_sum/_count only on histograms), counters and
    histograms only inside rate()/irate()/increase(), gauges never; label
    matchers use the metric's labels (or instance, job, le) and known
    values (outcome, kind, state); by/without/on() name known labels;
  - every metric of METRICS is on some panel, except those in LEFT_OUT;
  - every metric of METRICS is still a string in crates/*/src (a renamed
    metric fails here rather than leaving an empty panel).

Prints one line per problem and exits 1 if there is any; otherwise one
summary line.
"""

import argparse
import glob
import json
import os
import re
import sys

# The metrics Kura exports: name -> (kind, {label: allowed values or None}).
# Counters end in _total; histograms are exported as _bucket/_sum/_count.
C, G, H = "counter", "gauge", "histogram"
RPC = {"rpc": None}
METRICS = {
    # Gateways: the Archive API and the data path.
    "kura_gateway_requests_total": (C, {"rpc": None, "code": None}),
    "kura_gateway_request_duration_seconds": (H, RPC),
    "kura_gateway_received_bytes_total": (C, {}),
    "kura_gateway_sent_bytes_total": (C, {}),
    "kura_gateway_instances_stored_total": (C, {}),
    "kura_gateway_instances_retrieved_total": (C, {}),
    "kura_gateway_under_protected_stores_total": (C, {}),
    "kura_gateway_shard_reads_total": (C, {"outcome": {"ok", "failed", "corrupt"}}),
    "kura_gateway_corrupt_shards_total": (C, {}),
    "kura_gateway_hedged_shard_reads_total": (C, {}),
    "kura_gateway_reconstructed_segments_total": (C, {}),
    "kura_gateway_shard_write_failures_total": (C, {}),
    "kura_gateway_shards_written_total": (C, {}),
    "kura_gateway_object_hash_mismatches_total": (C, {}),
    # Gateways: limits and encryption at rest.
    "kura_gateway_streams_in_flight": (G, {}),
    "kura_gateway_admission_refused_total": (
        C,
        {"limit": {"streams_per_identity", "streams_per_gateway"}},
    ),
    "kura_gateway_unseal_failures_total": (C, {}),
    "kura_gateway_keys_rewrapped_total": (C, {}),
    # Gateways: the Admin API.
    "kura_admin_requests_total": (C, {"rpc": None, "code": None}),
    "kura_admin_request_duration_seconds": (H, RPC),
    # Repair (in gateways).
    "kura_repair_passes_total": (C, {}),
    "kura_repair_shards_total": (C, {"kind": {"rebuilt", "moved", "damaged"}}),
    "kura_repair_written_bytes_total": (C, {}),
    "kura_repair_read_bytes_total": (C, {}),
    "kura_repair_cross_site_bytes_total": (C, {}),
    "kura_repair_failures_total": (C, {}),
    "kura_repair_queue_instances": (G, {}),
    "kura_repair_queue_shards": (G, {}),
    "kura_repair_queue_bytes": (G, {}),
    "kura_repair_eta_seconds": (G, {}),
    "kura_repair_waiting_instances": (G, {}),
    # Storage nodes.
    "kura_store_shards": (G, {"node": None}),
    "kura_store_used_bytes": (G, {"node": None}),
    "kura_store_capacity_bytes": (G, {"node": None}),
    "kura_store_corrupt_shards": (G, {"node": None}),
    "kura_store_scrubbed_bytes_total": (C, {}),
    "kura_store_scrub_passes_total": (C, {}),
    "kura_store_scrub_corrupt_found_total": (C, {}),
    "kura_store_gc_sweeps_total": (C, {}),
    "kura_store_orphan_shards_reclaimed_total": (C, {}),
    # Metadata voters.
    "kura_meta_raft_term": (G, {"voter": None}),
    "kura_meta_raft_leader": (G, {"voter": None}),
    "kura_meta_raft_is_leader": (G, {"voter": None}),
    "kura_meta_raft_last_log_index": (G, {"voter": None}),
    "kura_meta_raft_applied_index": (G, {"voter": None}),
    "kura_meta_raft_apply_lag": (G, {"voter": None}),
    # The cluster, published by the Raft leader only.
    "kura_cluster_instances": (G, {}),
    "kura_cluster_under_protected_instances": (G, {}),
    "kura_cluster_unreadable_instances": (G, {}),
    "kura_cluster_at_risk_instances": (G, {}),
    "kura_cluster_protection_counts_capped": (G, {}),
    "kura_cluster_nodes": (G, {"state": {"up", "down", "lost", "draining", "removed"}}),
    "kura_cluster_node_capacity_bytes": (G, {"node": None, "site": None}),
    "kura_cluster_node_used_bytes": (G, {"node": None, "site": None}),
    "kura_cluster_node_up": (G, {"node": None, "site": None}),
}

# Metrics deliberately not on the dashboard: name -> why. A metric listed
# here must not be used.
LEFT_OUT = {
    "kura_cluster_protection_counts_capped": "a flag for whoever investigates: the "
    "unreadable / at-risk counts examined their cap of suspect instances and are lower bounds",
}

# Labels Prometheus adds to every series, and the histogram bucket bound.
TARGET_LABELS = {"instance", "job"}
HIST_SUFFIXES = ("_bucket", "_sum", "_count")
RATE_FUNCS = ("rate", "irate", "increase")
DATASOURCE_VAR = "datasource"

PROBLEMS = []


def problem(msg):
    if msg not in PROBLEMS:
        PROBLEMS.append(msg)


def resolve(series):
    """The listed metric a series name belongs to, its kind, and a problem."""
    if series in METRICS:
        kind = METRICS[series][0]
        if kind == H:
            return series, kind, f"histogram {series} has no series of that name (use _bucket, _sum or _count)"
        return series, kind, None
    for suffix in HIST_SUFFIXES:
        base = series[: -len(suffix)]
        if series.endswith(suffix) and base in METRICS:
            if METRICS[base][0] == H:
                return base, H, None
            return None, None, f"{series}: {base} is a {METRICS[base][0]}, not a histogram"
    return None, None, f"unknown metric {series} (not in check.py's METRICS)"


def strip_strings(expr):
    """expr with the insides of string literals blanked (same length)."""
    return re.sub(r'"(?:[^"\\]|\\.)*"', lambda m: '"' + " " * (len(m.group()) - 2) + '"', expr)


MATCHER = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*,?')
ALL_LABELS = TARGET_LABELS | {"le"} | {lab for _, labels in METRICS.values() for lab in labels}


def check_expr(where, expr, used):
    bare = strip_strings(expr)
    for m in re.finditer(r"(?<![A-Za-z0-9_:])kura_[A-Za-z0-9_:]*", bare):
        series = m.group()
        if not re.fullmatch(r"kura_[a-z0-9_]+", series):
            problem(f"{where}: {series!r} is not a metric name (kura_[a-z0-9_]+)")
            continue
        base, kind, why = resolve(series)
        if why:
            problem(f"{where}: {why}")
        if base is None:
            continue
        used.setdefault(base, set()).add(where)
        # What the series sits in: rate(NAME / increase( NAME ...
        before = re.search(r"([A-Za-z_]+)\s*\(\s*$", bare[: m.start()])
        func = before.group(1) if before else None
        if kind in (C, H) and func not in RATE_FUNCS:
            problem(f"{where}: {series} is a {kind}: use it in rate(), irate() or increase()")
        if kind == G and func in RATE_FUNCS:
            problem(f"{where}: {series} is a gauge: {func}() of it means nothing (deriv, delta, changes)")
        # Its label matchers, if any: {a="x", b=~"y|z"}.
        rest = expr[m.end():]
        if not rest.lstrip().startswith("{"):
            continue
        body = rest.lstrip()[1:]
        labels = METRICS[base][1]
        allowed = set(labels) | TARGET_LABELS | ({"le"} if series.endswith("_bucket") else set())
        while True:
            if body.lstrip().startswith("}"):
                break
            mm = MATCHER.match(body)
            if not mm:
                problem(f"{where}: cannot read the label matchers after {series}")
                break
            label, op, value = mm.groups()
            body = body[mm.end():]
            if label not in allowed:
                problem(f"{where}: {series} has no label {label!r} (it has {', '.join(sorted(allowed))})")
                continue
            values = labels.get(label)
            if values is None:
                continue
            wanted = [value] if op in ("=", "!=") else value.split("|")
            for v in wanted:
                if re.fullmatch(r"[A-Za-z0-9_]+", v) and v not in values:
                    problem(f"{where}: {series}{{{label}}} is never {v!r} (values: {', '.join(sorted(values))})")
    for m in re.finditer(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", bare):
        for label in filter(None, (s.strip() for s in m.group(2).split(","))):
            if label not in ALL_LABELS:
                problem(f"{where}: {m.group(1)} ({label}): no Kura metric has a label {label!r}")


def panels_of(dash):
    """Every panel (rows' nested panels too), and the groups laid out together."""
    top = dash.get("panels", [])
    every, groups = [], [top]
    for p in top:
        every.append(p)
        nested = p.get("panels") or []
        every.extend(nested)
        if nested:
            if not p.get("collapsed"):
                problem(f"row {p.get('title')!r}: an open row holds no panels of its own in Grafana (collapsed rows only)")
            groups.append(nested)
    return every, groups


def check_layout(every, groups):
    ids = {}
    for p in every:
        pid = p.get("id")
        if not isinstance(pid, int) or isinstance(pid, bool):
            problem(f"panel {p.get('title')!r}: id {pid!r} is not an integer")
        elif pid in ids:
            problem(f"panels {ids[pid]!r} and {p.get('title')!r} share id {pid}")
        else:
            ids[pid] = p.get("title")
        g = p.get("gridPos") or {}
        if not all(isinstance(g.get(k), int) for k in "xywh"):
            problem(f"panel {pid} {p.get('title')!r}: gridPos {g} needs integers x, y, w, h")
            continue
        if g["x"] < 0 or g["y"] < 0 or g["w"] < 1 or g["h"] < 1 or g["x"] + g["w"] > 24:
            problem(f"panel {pid} {p.get('title')!r}: gridPos {g} is outside the 24 columns")
    for group in groups:
        boxes = [(p, p.get("gridPos") or {}) for p in group]
        boxes = [(p, g) for p, g in boxes if all(isinstance(g.get(k), int) for k in "xywh")]
        for i, (a, ga) in enumerate(boxes):
            for b, gb in boxes[i + 1:]:
                if (ga["x"] < gb["x"] + gb["w"] and gb["x"] < ga["x"] + ga["w"]
                        and ga["y"] < gb["y"] + gb["h"] and gb["y"] < ga["y"] + ga["h"]):
                    problem(f"panels {a.get('id')} {a.get('title')!r} and {b.get('id')} {b.get('title')!r} overlap")


def check_datasources(dash, every):
    variables = dash.get("templating", {}).get("list", [])
    ds = [v for v in variables if v.get("name") == DATASOURCE_VAR]
    if not ds or ds[0].get("type") != "datasource" or ds[0].get("query") != "prometheus":
        problem(f"templating: needs a variable {DATASOURCE_VAR!r} of type datasource, query prometheus")
    want = {"type": "prometheus", "uid": "${" + DATASOURCE_VAR + "}"}
    queries = 0
    for p in every:
        if p.get("type") == "row":
            continue
        where = f"panel {p.get('id')} {p.get('title')!r}"
        if p.get("datasource") != want:
            problem(f"{where}: datasource must be {want}")
        targets = p.get("targets") or []
        if not targets:
            problem(f"{where}: no queries")
        refs = [t.get("refId") for t in targets]
        if len(set(refs)) != len(refs) or None in refs:
            problem(f"{where}: refIds {refs} must be present and unique")
        for t in targets:
            if t.get("datasource", want) != want:
                problem(f"{where} {t.get('refId')}: datasource must be {want}")
            if not (t.get("expr") or "").strip():
                problem(f"{where} {t.get('refId')}: empty expr")
            queries += 1
    return queries


def check_sources(repo):
    """Metric names missing from crates/*/src, and kura_ metrics only there."""
    files = sorted(glob.glob(os.path.join(repo, "crates", "*", "src", "**", "*.rs"), recursive=True))
    if not files:
        problem(f"no crates/*/src/**/*.rs under {os.path.abspath(repo)} (run from the repository root, or --repo)")
        return 0, []
    text = ""
    for f in files:
        with open(f, encoding="utf-8", errors="replace") as fh:
            text += fh.read()
    for name in METRICS:
        if f'"{name}"' not in text:
            problem(f'{name}: no "{name}" in crates/*/src (renamed or removed? update the dashboard and METRICS)')
    emitted = set(re.findall(r'\b(?:counter|gauge|histogram)!\(\s*"(kura_[a-z0-9_]+)"', text))
    return len(files), sorted(emitted - set(METRICS))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dashboard", nargs="?",
                    default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "kura-dashboard.json"))
    ap.add_argument("--repo", default=".", help="repository root holding crates/*/src (default: .)")
    args = ap.parse_args()

    try:
        with open(args.dashboard, encoding="utf-8") as f:
            dash = json.load(f)
    except (OSError, ValueError) as e:
        print(f"{args.dashboard}: {e}")
        return 1
    if dash.get("schemaVersion") != 39:
        problem(f"schemaVersion is {dash.get('schemaVersion')!r}, want 39")
    if not dash.get("uid") or not dash.get("title"):
        problem("the dashboard needs a uid and a title")
    if dash.get("id") is not None:
        problem("id must be null: Grafana assigns it on import")

    every, groups = panels_of(dash)
    check_layout(every, groups)
    queries = check_datasources(dash, every)

    used = {}
    for p in every:
        for t in p.get("targets") or []:
            check_expr(f"panel {p.get('id')} {p.get('title')!r} {t.get('refId')}", t.get("expr") or "", used)

    for name, why in LEFT_OUT.items():
        if name not in METRICS:
            problem(f"LEFT_OUT names {name}, which is not in METRICS")
        elif name in used:
            problem(f"{name} is in LEFT_OUT ({why}) but used by {sorted(used[name])[0]}")
    for name in METRICS:
        if name not in used and name not in LEFT_OUT:
            problem(f"{name} is on no panel (use it, or list it in LEFT_OUT with the reason)")

    nfiles, unlisted = check_sources(args.repo)

    if PROBLEMS:
        for p in PROBLEMS:
            print(p)
        return 1
    n = sum(1 for p in every if p.get("type") != "row")
    rows = sum(1 for p in every if p.get("type") == "row")
    line = (f"{os.path.basename(args.dashboard)}: {n} panels in {rows} rows, {queries} queries; "
            f"{len(used)}/{len(METRICS)} metrics used ({len(LEFT_OUT)} left out), "
            f"all found in crates/*/src ({nfiles} files)")
    if unlisted:
        line += f"; not on METRICS yet: {', '.join(unlisted)}"
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
