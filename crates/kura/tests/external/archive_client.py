#!/usr/bin/env python3
"""An external client of Kura's public API, written against proto/ only.

Generates Python stubs from proto/kura/v1/archive.proto with grpcio-tools
into a temporary directory, then against a running gateway (over TLS with
a client certificate when --ca/--cert/--key are given):
  - lists services through server reflection v1alpha (the only version
    Python's grpcio-reflection client speaks),
  - stores every `accept` corpus file (first of each SOP Instance UID) and
    retrieves it byte-exact,
  - checks that every `reject` file is refused with INVALID_ARGUMENT.
Exits non-zero on the first failure.
"""

import argparse
import hashlib
import importlib
import os
import sys
import tempfile

import grpc
from grpc_tools import protoc

TENANT = "python-client"
CHUNK = 256 * 1024


def generate(proto_root, out_dir):
    rc = protoc.main([
        "protoc",
        f"-I{proto_root}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        os.path.join(proto_root, "kura", "v1", "archive.proto"),
    ])
    if rc != 0:
        sys.exit(f"protoc failed with {rc}")
    sys.path.insert(0, out_dir)
    pb2 = importlib.import_module("kura.v1.archive_pb2")
    grpc_pb2 = importlib.import_module("kura.v1.archive_pb2_grpc")
    return pb2, grpc_pb2


def store_messages(pb2, data):
    yield pb2.StoreRequest(header=pb2.StoreHeader(tenant=TENANT, size=len(data)))
    for i in range(0, len(data), CHUNK):
        yield pb2.StoreRequest(chunk=data[i:i + CHUNK])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--proto-root", required=True)
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--ca", help="the cluster's CA certificate (PEM)")
    ap.add_argument("--cert", help="a client certificate (PEM) of tenant python-client")
    ap.add_argument("--key", help="its private key (PEM)")
    args = ap.parse_args()

    out = tempfile.mkdtemp(prefix="kura-py-")
    pb2, grpc_pb2 = generate(args.proto_root, out)
    if args.ca:
        def read(path):
            with open(path, "rb") as f:
                return f.read()
        creds = grpc.ssl_channel_credentials(
            root_certificates=read(args.ca),
            private_key=read(args.key),
            certificate_chain=read(args.cert),
        )
        channel = grpc.secure_channel(args.endpoint, creds)
        # A plaintext client on the TLS port gets nowhere.
        plain = grpc.insecure_channel(args.endpoint)
        try:
            grpc_pb2_probe = importlib.import_module("kura.v1.archive_pb2_grpc")
            grpc_pb2_probe.ArchiveStub(plain).Stat(
                pb2.StatRequest(tenant=TENANT, sop_instance_uid="1.2.3"), timeout=5)
            sys.exit("a plaintext call to the TLS gateway was answered")
        except grpc.RpcError as e:
            print(f"plaintext call refused as it must be: {e.code()}")
        plain.close()
    else:
        channel = grpc.insecure_channel(args.endpoint)
    grpc.channel_ready_future(channel).result(timeout=30)

    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    answers = refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    services = [s.name for a in answers for s in a.list_services_response.service]
    if "kura.v1.Archive" not in services:
        sys.exit(f"reflection v1alpha does not list kura.v1.Archive: {services}")
    print(f"reflection v1alpha lists {len(services)} services")

    stub = grpc_pb2.ArchiveStub(channel)
    seen = set()
    stored = refused = 0
    with open(os.path.join(args.corpus, "MANIFEST.tsv")) as f:
        rows = [line.rstrip("\n").split("\t") for line in f][1:]
    for row in rows:
        name, expect = row[0], row[1]
        uid = row[2] if len(row) > 2 else ""
        with open(os.path.join(args.corpus, name), "rb") as f:
            data = f.read()
        if expect == "reject":
            try:
                stub.Store(store_messages(pb2, data), timeout=60)
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.INVALID_ARGUMENT:
                    sys.exit(f"{name}: expected INVALID_ARGUMENT, got {e.code()}: {e.details()}")
                refused += 1
                continue
            sys.exit(f"{name}: a reject file was stored")
        if uid in seen:
            continue
        seen.add(uid)
        resp = stub.Store(store_messages(pb2, data), timeout=60)
        if resp.info.sop_instance_uid != uid or resp.info.size != len(data):
            sys.exit(f"{name}: unexpected StoreResponse {resp}")
        got = bytearray()
        info = None
        for msg in stub.Retrieve(pb2.RetrieveRequest(tenant=TENANT, sop_instance_uid=uid), timeout=60):
            if msg.HasField("info"):
                info = msg.info
            else:
                got.extend(msg.chunk)
        if info is None or bytes(got) != data:
            sys.exit(f"{name}: retrieved bytes differ (sha256 {hashlib.sha256(got).hexdigest()})")
        stat = stub.Stat(pb2.StatRequest(tenant=TENANT, sop_instance_uid=uid), timeout=30)
        if stat.blake3 != info.blake3:
            sys.exit(f"{name}: Stat and Retrieve disagree")
        stored += 1
    print(f"python client: stored and retrieved {stored} instances, {refused} refused as expected")
    if stored == 0 or refused == 0:
        sys.exit("nothing was exercised")


if __name__ == "__main__":
    main()
