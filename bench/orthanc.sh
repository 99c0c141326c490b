#!/usr/bin/env bash
# Starts a throwaway Orthanc for the ingest benchmark (bench/src/ingest.rs):
# its own configuration, storage and index in a new temporary directory,
# REST API only (no DICOM server, no plugins, no authentication, remote
# access refused), stopped and deleted on exit.
#
#   bench/orthanc.sh                 # prints the URL, runs until Ctrl-C
#   bench/orthanc.sh COMMAND ARGS…   # runs COMMAND with ORTHANC_URL (and
#                                    # ORTHANC_PID, for its CPU) set,
#                                    # then stops Orthanc; exits as COMMAND
#
#   bench/orthanc.sh sh -c 'target/release/ingest --orthanc "$ORTHANC_URL"'
#
# Needs the Debian package: apt-get install -y orthanc.
# TMPDIR picks where the storage goes (the ingest bench's --dir should be on
# the same filesystem). ORTHANC_KEEP=1 keeps the directory for a look after.
#
# Orthanc 1.10 has no option to bind the HTTP server to one address: it
# listens on every interface, and with "RemoteAccessAllowed": false it
# refuses (403) every client that is not on the loopback.
set -euo pipefail

orthanc_bin=${ORTHANC_BIN:-$(command -v Orthanc || true)}
if [[ -z "$orthanc_bin" ]]; then
    echo "orthanc.sh: Orthanc not found; install it with: apt-get install -y orthanc" >&2
    exit 2
fi

# A port nothing listens on now (bash's /dev/tcp fails to connect).
free_port() {
    local port
    for _ in $(seq 1 200); do
        port=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return 0
        fi
    done
    echo "orthanc.sh: no free port found" >&2
    return 1
}

dir=$(mktemp -d "${TMPDIR:-/tmp}/orthanc-bench.XXXXXX")
pid=
cleanup() {
    local status=$?
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    fi
    if [[ "${ORTHANC_KEEP:-0}" == 1 ]]; then
        echo "orthanc.sh: kept $dir" >&2
    else
        rm -rf "$dir"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

http_port=$(free_port)
dicom_port=$(free_port)
mkdir -p "$dir/storage" "$dir/index"
cat >"$dir/orthanc.json" <<EOF
{
  "Name": "kura-bench",
  "StorageDirectory": "$dir/storage",
  "IndexDirectory": "$dir/index",
  "HttpPort": $http_port,
  "RemoteAccessAllowed": false,
  "AuthenticationEnabled": false,
  "DicomServerEnabled": false,
  "DicomPort": $dicom_port,
  "Plugins": [],
  "WebDavEnabled": false,
  "OrthancExplorerEnabled": false,
  "StorageCompression": false,
  "SyncStorageArea": true
}
EOF
# "SyncStorageArea": true is this version's default (fsync of every stored
# file, since Orthanc 1.7.4); written out so the setting is visible.

"$orthanc_bin" "$dir/orthanc.json" >"$dir/orthanc.log" 2>&1 &
pid=$!

url="http://127.0.0.1:$http_port"
for _ in $(seq 1 300); do
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "orthanc.sh: Orthanc exited while starting; its log:" >&2
        tail -n 30 "$dir/orthanc.log" >&2
        exit 1
    fi
    # GET /system with bash alone: answers once the REST API is up.
    if { exec 3<>"/dev/tcp/127.0.0.1/$http_port"; } 2>/dev/null; then
        printf 'GET /system HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
        status=$(head -n 1 <&3 || true)
        exec 3>&- 3<&-
        if [[ "$status" == *" 200 "* ]]; then
            break
        fi
    fi
    sleep 0.1
done
if [[ "${status:-}" != *" 200 "* ]]; then
    echo "orthanc.sh: Orthanc did not answer GET /system within 30 s; its log:" >&2
    tail -n 30 "$dir/orthanc.log" >&2
    exit 1
fi

echo "$url"
echo "orthanc.sh: $("$orthanc_bin" --version | head -n 1) at $url (pid $pid), data in $dir" >&2

if [[ $# -gt 0 ]]; then
    ORTHANC_URL=$url ORTHANC_PID=$pid "$@"
else
    echo "orthanc.sh: Ctrl-C stops it" >&2
    wait "$pid"
fi
