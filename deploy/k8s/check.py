"""Checks that rendered Kura manifests and their kura.toml agree.

    python check.py RENDERED.yaml [--cluster-domain cluster.local] [--kura BIN]

Run by validate.sh after kustomize rendered an overlay and
kubernetes-validate accepted every object. Schemas cannot see what this
checks: that every [[node]] of kura.toml is run by exactly one workload
whose pods are reachable at the node's addresses, on the ports they
expose, in the zone of the node's site; that Services, PodDisruptionBudgets
and NetworkPolicies select the pods they are meant for; that the budgets
never allow losing a Raft quorum or more shards than the erasure profile
tolerates with a whole site down; that every pod is locked down.

With --kura, also runs `BIN server --config kura.toml --node ID --check`
for every node, so the binary's own parser accepts the file.

Prints one line per problem and exits 1 if there is any.
"""

import argparse
import collections
import math
import os
import subprocess
import sys
import tempfile
import tomllib

import yaml

PROBLEMS = []


def problem(msg):
    if msg not in PROBLEMS:
        PROBLEMS.append(msg)


def kn(obj):
    return f"{obj['kind']}/{obj['metadata']['name']}"


def selects(selector, labels):
    """A Kubernetes label selector (matchLabels + matchExpressions)."""
    if selector is None:
        return False
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e["key"], e["operator"], e.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def split_addr(addr):
    host, _, port = addr.rpartition(":")
    if not host or not port.isdigit():
        return None, None
    return host, int(port)


class Workload:
    """A StatefulSet or Deployment running kura: its pods and their ids."""

    def __init__(self, obj):
        self.obj = obj
        self.name = obj["metadata"]["name"]
        self.kind = obj["kind"]
        spec = obj["spec"]
        self.replicas = spec.get("replicas", 1)
        self.pod = spec["template"]["spec"]
        self.labels = spec["template"]["metadata"].get("labels") or {}
        self.annotations = spec["template"]["metadata"].get("annotations") or {}
        self.component = self.labels.get("app.kubernetes.io/component")
        self.container = next(
            (c for c in self.pod.get("containers", []) if c["name"] == "kura"), None
        )
        self.ports = {}  # name -> number
        if self.container:
            for p in self.container.get("ports", []):
                self.ports[p.get("name", str(p["containerPort"]))] = p["containerPort"]
        self.zones = self._zones()

    def env(self, name):
        for e in (self.container or {}).get("env", []):
            if e["name"] == name:
                return e.get("value")
        return None

    def _zones(self):
        """Zones the pods are pinned to by required node affinity, or None."""
        aff = (self.pod.get("affinity") or {}).get("nodeAffinity") or {}
        req = aff.get("requiredDuringSchedulingIgnoredDuringExecution") or {}
        zones = None
        for term in req.get("nodeSelectorTerms", []):
            for e in term.get("matchExpressions", []):
                if e["key"] == "topology.kubernetes.io/zone" and e["operator"] == "In":
                    zones = set(zones or ()) | set(e.get("values", []))
        return zones

    def pods(self):
        """[(pod name or None, node id or problem text)]."""
        c = self.container
        if c is None:
            return []
        argv = (c.get("command") or []) + (c.get("args") or [])
        if self.kind == "StatefulSet":
            want = '--node "$((KURA_NODE_BASE + ${HOSTNAME##*-}))"'
            if not any(want in a for a in argv):
                problem(f"{kn(self.obj)}: the command does not pass {want}")
                return []
            base = self.env("KURA_NODE_BASE")
            if base is None or not base.isdigit():
                problem(f"{kn(self.obj)}: KURA_NODE_BASE is {base!r}, want a number")
                return []
            return [(f"{self.name}-{i}", int(base) + i) for i in range(self.replicas)]
        node = self.env("KURA_NODE")
        if node is None or not node.isdigit():
            problem(f"{kn(self.obj)}: KURA_NODE is {node!r}, want a number")
            return []
        if not ("$(KURA_NODE)" in argv or "--node" not in argv):
            problem(f"{kn(self.obj)}: --node is not $(KURA_NODE)")
        return [(None, int(node))]


def check_config(cfg, where):
    """What `kura server` refuses at start, as far as it concerns layout."""
    cluster = cfg.get("cluster", {})
    k, m = cluster.get("data_shards", 5), cluster.get("parity_shards", 4)
    sites = [s["name"] for s in cfg.get("site", [])]
    nodes = cfg.get("node", [])
    if len(set(sites)) != len(sites) or not sites:
        problem(f"{where}: site names missing or used twice: {sites}")
    ids = [n.get("id") for n in nodes]
    for i in ids:
        if not isinstance(i, int) or i <= 0 or ids.count(i) > 1:
            problem(f"{where}: node id {i!r} is not > 0 or used twice")
    seen = {}
    for n in nodes:
        if n.get("site") not in sites:
            problem(f"{where}: node {n.get('id')}: site {n.get('site')!r} is not a [[site]]")
        if not any(r in n for r in ("meta", "store", "gateway")):
            problem(f"{where}: node {n.get('id')} has no role")
        for role in ("meta", "store", "gateway", "ops"):
            if role not in n:
                continue
            host, port = split_addr(n[role])
            if host is None:
                problem(f"{where}: node {n['id']}: {role} address {n[role]!r} is not host:port")
            elif n[role] in seen:
                problem(f"{where}: node {n['id']}: {role} address {n[role]} is also {seen[n[role]]}")
            seen[n[role]] = f"node {n['id']} {role}"
    stores = [n for n in nodes if "store" in n]
    per_site = collections.Counter(n["site"] for n in stores)
    if len(stores) < k + m:
        problem(f"{where}: RS({k},{m}) needs {k + m} storage nodes, there are {len(stores)}")
    # The placement puts an even share of a segment's k+m shards in each
    # site; a site must hold its share, and losing one must leave k.
    share = math.ceil((k + m) / max(len(sites), 1))
    for s in sites:
        if per_site[s] < share:
            problem(f"{where}: site {s} has {per_site[s]} storage nodes, RS({k},{m}) puts {share} shards there")
    if share > m:
        problem(f"{where}: RS({k},{m}) over {len(sites)} sites puts {share} shards in a site, more than m={m}: losing a site loses data")
    return k, m, sites, nodes, per_site


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("rendered")
    ap.add_argument("--cluster-domain", default="cluster.local")
    ap.add_argument("--kura", help="a built kura binary: run `server --check` for every node")
    args = ap.parse_args()

    with open(args.rendered) as f:
        objs = [o for o in yaml.safe_load_all(f) if o]
    by_kind = collections.defaultdict(list)
    for o in objs:
        by_kind[o["kind"]].append(o)

    # One namespace for everything.
    namespaces = {o["metadata"]["name"] for o in by_kind["Namespace"]}
    ns_used = {o["metadata"].get("namespace") for o in objs if o["kind"] != "Namespace"}
    if len(ns_used) != 1 or None in ns_used:
        problem(f"objects are spread over namespaces {sorted(map(str, ns_used))}: want one")
    ns = next(iter(ns_used))
    if ns not in namespaces:
        problem(f"namespace {ns} is not among the rendered objects")

    workloads = [Workload(o) for o in by_kind["StatefulSet"] + by_kind["Deployment"]]
    services = {o["metadata"]["name"]: o for o in by_kind["Service"]}
    configmaps = {o["metadata"]["name"]: o for o in by_kind["ConfigMap"]}

    # The kura.toml every workload mounts: one and the same.
    cm_names = set()
    for w in workloads:
        for v in w.pod.get("volumes", []):
            if "configMap" in v:
                cm_names.add(v["configMap"]["name"])
        mounts = {vm["mountPath"]: vm["name"] for vm in (w.container or {}).get("volumeMounts", [])}
        if mounts.get("/etc/kura") != "config":
            problem(f"{kn(w.obj)}: kura.toml volume not mounted at /etc/kura")
    if len(cm_names) != 1:
        problem(f"workloads mount {len(cm_names)} ConfigMaps {sorted(cm_names)}: want one kura.toml for all")
        return
    cm_name = cm_names.pop()
    if cm_name not in configmaps or "kura.toml" not in configmaps[cm_name].get("data", {}):
        problem(f"ConfigMap {cm_name} with key kura.toml is not among the rendered objects")
        return
    toml_text = configmaps[cm_name]["data"]["kura.toml"]
    where = f"ConfigMap {cm_name} kura.toml"
    try:
        cfg = tomllib.loads(toml_text)
    except tomllib.TOMLDecodeError as e:
        problem(f"{where}: {e}")
        return
    k, m, sites, nodes, per_site = check_config(cfg, where)
    node_by_id = {n.get("id"): n for n in nodes}

    # Every pod of every workload: its node, the node's addresses and site.
    runs = {}  # node id -> workload name
    for w in workloads:
        c = w.container
        if c is None:
            problem(f"{kn(w.obj)}: no container named kura")
            continue
        for pod, nid in w.pods():
            node = node_by_id.get(nid)
            who = f"{kn(w.obj)} pod {pod}" if pod else kn(w.obj)
            if node is None:
                problem(f"{who} runs node {nid}, which kura.toml does not have")
                continue
            if nid in runs and runs[nid] != w.name:
                problem(f"node {nid} is run by both {runs[nid]} and {w.name}")
            runs[nid] = w.name
            if w.component not in ("meta", "store", "gateway") or w.component not in node:
                problem(f"{who} is a {w.component} workload, node {nid} has no {w.component} address")
            if w.zones is not None and w.zones != {node["site"]}:
                problem(f"{who} is pinned to zones {sorted(w.zones)}, node {nid} is in site {node['site']}")
            if w.component == "store" and w.zones is None:
                problem(f"{who}: a storage node must be pinned to its site's zone")
            if node.get("data") not in {vm["mountPath"] for vm in c.get("volumeMounts", [])}:
                problem(f"{who}: node {nid}'s data dir {node.get('data')} is not a mounted volume")
            for role in ("meta", "store", "gateway", "ops"):
                if role not in node:
                    continue
                host, port = split_addr(node[role])
                if host is None:
                    continue
                if port not in w.ports.values():
                    problem(f"{who}: node {nid} {role} port {port} is not a container port")
                check_host(w, pod, nid, role, host, port, ns, args.cluster_domain, services)
    for nid, node in node_by_id.items():
        if nid not in runs:
            problem(f"kura.toml node {nid} is run by no workload")

    check_services(services, workloads)
    check_pods(workloads)
    check_budgets(by_kind["PodDisruptionBudget"], workloads, node_by_id, k, m, per_site)
    check_network(by_kind["NetworkPolicy"], workloads)

    # Every pod mounts the certificates where kura.toml's [tls] dir says.
    tls_dir = (cfg.get("tls") or {}).get("dir")
    if (cfg.get("tls") or {}).get("insecure_plaintext"):
        problem(f"{where}: insecure_plaintext: a deployment runs TLS")
    elif not tls_dir:
        problem(f"{where}: no [tls] dir: the pods need their certificates")
    else:
        for w in workloads:
            mounts = {vm["mountPath"]: vm["name"] for vm in (w.container or {}).get("volumeMounts", [])}
            vols = {v["name"]: v for v in w.pod.get("volumes", [])}
            vol = vols.get(mounts.get(tls_dir, ""), {})
            if "secret" not in vol:
                problem(f"{kn(w.obj)}: no Secret mounted at [tls] dir {tls_dir}")

    # The cluster key file: mounted from a Secret into every gateway at
    # [encryption] keys_file, and into nothing else (storage nodes and
    # voters must never hold it: that is what makes their disks safe).
    keys_file = (cfg.get("encryption") or {}).get("keys_file")
    if not keys_file:
        problem(f"{where}: no [encryption] keys_file: gateways seal every instance and refuse to start without it")
    else:
        keys_dir = os.path.dirname(keys_file)
        for w in workloads:
            mounts = {vm["mountPath"]: vm["name"] for vm in (w.container or {}).get("volumeMounts", [])}
            vols = {v["name"]: v for v in w.pod.get("volumes", [])}
            vol = vols.get(mounts.get(keys_dir, ""), {})
            if w.component == "gateway" and "secret" not in vol:
                problem(f"{kn(w.obj)}: no Secret mounted at {keys_dir}, the dir of [encryption] keys_file")
            if w.component != "gateway" and keys_dir in mounts:
                problem(f"{kn(w.obj)}: a {w.component} workload mounts the cluster keys at {keys_dir}: only gateways may hold them")
            mode = (vol.get("secret") or {}).get("defaultMode")
            if w.component == "gateway" and mode is not None and mode & 0o004:
                problem(f"{kn(w.obj)}: the cluster keys are readable by every user (defaultMode {mode:o}); kura refuses that")

    if args.kura and not PROBLEMS:
        # The operator's recipe, run for real: a CA, a certificate for
        # every node from this kura.toml (its DNS names), then each node's
        # `server --check` with them.
        with tempfile.TemporaryDirectory() as tmp:
            certs = os.path.join(tmp, "certs")
            toml_path = os.path.join(tmp, "kura.toml")
            keys = os.path.join(tmp, "cluster.keys")
            with open(toml_path, "w") as f:
                f.write(
                    toml_text.replace(f'dir = "{tls_dir}"', f'dir = "{certs}"').replace(
                        f'keys_file = "{keys_file}"', f'keys_file = "{keys}"'
                    )
                )
            steps = [[args.kura, "certs", "init", "--out", certs]]
            steps += [[args.kura, "keys", "generate", "--file", keys]]
            steps += [
                [args.kura, "certs", "node", "--config", toml_path, "--node", str(nid)]
                for nid in sorted(node_by_id)
            ]
            steps += [
                [args.kura, "server", "--config", toml_path, "--node", str(nid), "--check"]
                for nid in sorted(node_by_id)
            ]
            for step in steps:
                r = subprocess.run(step, capture_output=True, text=True, timeout=60)
                if r.returncode != 0:
                    problem(f"{' '.join(step[1:])}: {(r.stderr or r.stdout).strip()}")
                    break

    return len(objs), len(nodes), len(workloads)


def check_host(w, pod, nid, role, host, port, ns, domain, services):
    """The address must reach this pod: <pod>.<headless svc> for a
    StatefulSet, <svc> selecting only this workload for a Deployment."""
    who = f"{kn(w.obj)} pod {pod}" if pod else kn(w.obj)
    suffix = f".{ns}.svc.{domain}"
    if not host.endswith(suffix):
        problem(f"{who}: node {nid} {role} host {host} is not in namespace {ns} (*{suffix})")
        return
    parts = host[: -len(suffix)].split(".")
    if w.kind == "StatefulSet":
        svc_name = w.obj["spec"].get("serviceName")
        if parts != [pod, svc_name]:
            problem(f"{who}: node {nid} {role} host {host}, want {pod}.{svc_name}{suffix}")
            return
        svc = services.get(svc_name)
        if svc is None or svc["spec"].get("clusterIP") != "None":
            problem(f"{kn(w.obj)}: serviceName {svc_name} is not a headless Service")
            return
        if not svc["spec"].get("publishNotReadyAddresses"):
            problem(f"Service/{svc_name}: peers must resolve before they are ready (publishNotReadyAddresses)")
    else:
        if len(parts) != 1 or parts[0] not in services:
            problem(f"{who}: node {nid} {role} host {host} is not <service>{suffix}")
            return
        svc = services[parts[0]]
        if svc["spec"].get("clusterIP") == "None":
            problem(f"{who}: node {nid} {role} host {host} names a headless Service")
    if not selects({"matchLabels": svc["spec"].get("selector") or {}}, w.labels):
        problem(f"{who}: node {nid} {role} host {host}: Service {svc['metadata']['name']} does not select its pods")
    if port not in {p["port"] for p in svc["spec"].get("ports", [])}:
        problem(f"{who}: node {nid} {role} port {port} is not a port of Service {svc['metadata']['name']}")


def check_services(services, workloads):
    for name, svc in services.items():
        sel = svc["spec"].get("selector")
        chosen = [w for w in workloads if sel and selects({"matchLabels": sel}, w.labels)]
        if not chosen:
            problem(f"Service/{name} selects no pods")
        comps = {w.component for w in chosen}
        if len(comps) > 1:
            problem(f"Service/{name} selects pods of several roles {sorted(comps)}")
        for p in svc["spec"].get("ports", []):
            tp = p.get("targetPort", p["port"])
            for w in chosen:
                if tp not in w.ports and tp not in w.ports.values():
                    problem(f"Service/{name} port {p['port']} targets {tp!r}, not a port of {w.name}")


def check_pods(workloads):
    """Locked down, sized, probed, scraped."""
    for w in workloads:
        c, who = w.container, kn(w.obj)
        if c is None:
            continue
        psc, sc = w.pod.get("securityContext") or {}, c.get("securityContext") or {}
        want = {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
        }
        for key, value in want.items():
            if sc.get(key, psc.get(key)) != value:
                problem(f"{who}: securityContext.{key} is {sc.get(key, psc.get(key))!r}, want {value!r}")
        if (sc.get("capabilities") or {}).get("drop") != ["ALL"]:
            problem(f"{who}: capabilities must drop ALL")
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if seccomp != "RuntimeDefault":
            problem(f"{who}: seccompProfile is {seccomp!r}, want RuntimeDefault")
        if w.pod.get("automountServiceAccountToken") is not False:
            problem(f"{who}: mounts a service account token it does not need")
        req = (c.get("resources") or {}).get("requests") or {}
        if not {"cpu", "memory"} <= set(req):
            problem(f"{who}: resource requests need cpu and memory")
        if "memory" not in ((c.get("resources") or {}).get("limits") or {}):
            problem(f"{who}: no memory limit")
        for kind in ("livenessProbe", "readinessProbe"):
            probe = c.get(kind)
            if not probe:
                problem(f"{who}: no {kind}")
                continue
            if "httpGet" in probe:
                port = probe["httpGet"]["port"]
                if port not in w.ports and port not in w.ports.values():
                    problem(f"{who}: {kind} port {port!r} is not a container port")
            elif "grpc" in probe:
                if probe["grpc"]["port"] not in w.ports.values():
                    problem(f"{who}: {kind} gRPC port {probe['grpc']['port']} is not a container port")
            else:
                problem(f"{who}: {kind} is neither httpGet nor grpc")
        if w.annotations.get("prometheus.io/scrape") != "true" or w.annotations.get(
            "prometheus.io/port"
        ) != str(w.ports.get("ops")):
            problem(f"{who}: prometheus.io annotations must point at the ops port")
        if w.kind == "StatefulSet":
            if w.obj["spec"].get("podManagementPolicy") != "Parallel":
                problem(f"{who}: podManagementPolicy must be Parallel (peers wait for each other)")
            if not any(t["metadata"]["name"] == "data" for t in w.obj["spec"].get("volumeClaimTemplates", [])):
                problem(f"{who}: no volumeClaimTemplate 'data'")


def check_budgets(pdbs, workloads, node_by_id, k, m, per_site):
    """Voluntary disruptions never cost a quorum or more than m shards."""
    covered = collections.Counter()
    for pdb in pdbs:
        sel = pdb["spec"].get("selector")
        chosen = [w for w in workloads if selects(sel, w.labels)]
        if not chosen:
            problem(f"{kn(pdb)} selects no pods")
        for w in chosen:
            covered[w.name] += 1
        comps = {w.component for w in chosen}
        max_unavailable = pdb["spec"].get("maxUnavailable")
        if not isinstance(max_unavailable, int):
            problem(f"{kn(pdb)}: use an absolute maxUnavailable (got {max_unavailable!r})")
            continue
        if comps == {"meta"}:
            voters = sum(w.replicas for w in chosen)
            quorum = voters // 2 + 1
            if voters - max_unavailable < quorum:
                problem(f"{kn(pdb)}: {voters} voters, maxUnavailable {max_unavailable} leaves less than a quorum of {quorum}")
        elif comps == {"store"}:
            all_stores = [w for w in workloads if w.component == "store"]
            if sorted(w.name for w in chosen) != sorted(w.name for w in all_stores):
                problem(f"{kn(pdb)}: one budget must cover the storage nodes of every site, not {sorted(w.name for w in chosen)}")
            worst_site = max(per_site.values(), default=0)
            if max_unavailable + worst_site > m:
                problem(
                    f"{kn(pdb)}: maxUnavailable {max_unavailable} + a whole site "
                    f"({worst_site} storage nodes) down is more than m={m} shards"
                )
        elif comps != {"gateway"}:
            problem(f"{kn(pdb)} mixes roles {sorted(comps)}")
    for w in workloads:
        if covered[w.name] != 1:
            problem(f"{kn(w.obj)} is covered by {covered[w.name]} PodDisruptionBudgets, want exactly 1")


def check_network(policies, workloads):
    """Every container port is open to someone; nothing else is open."""
    default_deny = any(
        p["spec"].get("podSelector") == {} and not p["spec"].get("ingress")
        and "Ingress" in p["spec"].get("policyTypes", [])
        for p in policies
    )
    if not default_deny:
        problem("no default-deny ingress NetworkPolicy")
    for w in workloads:
        allowed = set()
        for p in policies:
            if not selects(p["spec"].get("podSelector"), w.labels):
                continue
            for rule in p["spec"].get("ingress", []) or []:
                if not rule.get("ports"):
                    problem(f"{kn(p)}: an ingress rule without ports opens every port")
                for port in rule.get("ports", []):
                    allowed.add(w.ports.get(port["port"], port["port"]))
        for name, number in w.ports.items():
            if number not in allowed:
                problem(f"{kn(w.obj)}: port {name} ({number}) is open to nobody")
        for number in allowed - set(w.ports.values()):
            problem(f"{kn(w.obj)}: NetworkPolicy opens port {number}, which it does not listen on")


if __name__ == "__main__":
    counts = main()
    for p in PROBLEMS:
        print(f"check.py: {p}")
    if PROBLEMS:
        print(f"check.py: {len(PROBLEMS)} problem(s) in {sys.argv[1]}")
        sys.exit(1)
    objs, nodes, workloads = counts
    print(f"check.py: {objs} objects, {workloads} workloads, {nodes} [[node]]s: consistent")
