#!/usr/bin/env python3
"""Failover time of a Kitara cluster: SIGKILL the owner of a store, then measure until a
lock of that store through another node is answered 200 (the first order the new owner
decides). Repeated over N kills; prints each, then the median and the max.

    python3 benches/cluster/failover.py --kitara target/release/kitara \
        --mysql mysql://kitara:kitara@127.0.0.1:3306 [--kills 10] [--lease-ms 5000]

It makes a database of its own (dropped at the end), starts three nodes on it on free
ports, and restarts each killed node (same id) before the next kill. SPEC.md's bound is
the lease + 3 s. Standard library only.
"""

import argparse
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request

TOKEN = "failover-bench-token-0123456789"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(port, method, path, body=None, timeout=5.0):
    """(status, headers, json) or None when nothing answered."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    request.add_header("Content-Type", "application/json")
    request.add_header("Authorization", f"Bearer {TOKEN}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, answer.headers, json.loads(answer.read())
    except urllib.error.HTTPError as e:
        return e.code, e.headers, json.loads(e.read() or b"null")
    except (urllib.error.URLError, ConnectionError, TimeoutError, socket.timeout):
        return None


class Node:
    def __init__(self, kitara, url, node_id, lease_ms):
        self.id, self.port = node_id, free_port()
        env = dict(os.environ, DATABASE_URL=url, KITARA_NODE_ID=node_id,
                   KITARA_PORT=str(self.port), KITARA_LEASE_MS=str(lease_ms),
                   KITARA_ADMIN_TOKEN=TOKEN, KITARA_LOG="warn")
        self.process = subprocess.Popen([kitara, "serve"], env=env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if ready(self.port):
                return
            time.sleep(0.05)
        raise SystemExit(f"node {node_id} did not become ready")

    def kill(self):
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=30)


def ready(port):
    answer = call(port, "GET", "/readyz", timeout=1)
    return answer is not None and answer[0] == 200


def owner_of(port, store):
    answer = call(port, "GET", "/api/v1/admin/cluster")
    if not answer or answer[0] != 200:
        return None, None
    for row in answer[2]["data"]["stores"]:
        if row["store_id"] == store:
            return row["owner"], row["epoch"]
    return None, None


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--kitara", default="target/release/kitara")
    parser.add_argument("--mysql", required=True, help="server URL without a database")
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--lease-ms", type=int, default=5000)
    args = parser.parse_args()

    name = f"kitara_failover_{random.randrange(1 << 32):08x}"
    admin = args.mysql.rstrip("/")
    subprocess.run(["mysql", "-h127.0.0.1", "-ukitara", "-pkitara", "-e",
                    f"CREATE DATABASE {name}"], check=True)
    url = f"{admin}/{name}"
    subprocess.run([args.kitara, "migrate"], env=dict(os.environ, DATABASE_URL=url),
                   check=True, stdout=subprocess.DEVNULL)
    nodes = {}
    try:
        for node_id in ("n1", "n2", "n3"):
            nodes[node_id] = Node(args.kitara, url, node_id, args.lease_ms)
        first = nodes["n1"].port
        status, _, store = call(first, "POST", "/api/v1/admin/stores",
                                {"store_name": "failover", "user_id": 1})
        assert status == 201, store
        store = store["data"]["id"]
        while True:
            status, _, product = call(first, "POST", "/api/v1/admin/products",
                                      {"product_name": "hot", "store_id": store,
                                       "current_stock": 1_000_000})
            if status == 201:
                break
            time.sleep(0.05)
        product = product["data"]["id"]
        lock = {"user_id": 2, "products": [{"product_id": product, "quantity": 1}]}
        took = []
        for kill in range(args.kills):
            # Settled: every node answers, and the store's owner serves it.
            while True:
                owner, epoch = owner_of(next(iter(nodes.values())).port, store)
                if owner in nodes and all(ready(n.port) for n in nodes.values()):
                    answer = call(nodes[owner].port, "POST", "/api/v1/order/lock", lock)
                    if answer and answer[0] == 200:
                        break
                time.sleep(0.1)
            victim = nodes.pop(owner)
            through = next(iter(nodes.values()))
            killed_at = time.monotonic()
            victim.kill()
            while True:
                answer = call(through.port, "POST", "/api/v1/order/lock", lock, timeout=15)
                if answer and answer[0] == 200:
                    served = time.monotonic() - killed_at
                    break
                time.sleep(0.01)
            new_owner, new_epoch = owner_of(through.port, store)
            took.append(served)
            print(f"kill {kill + 1}: {owner} (epoch {epoch}) killed; first 200 "
                  f"{served:.3f} s later, decided by {answer[1].get('Kitara-Node')}; "
                  f"owner now {new_owner} at epoch {new_epoch}", flush=True)
            nodes[owner] = Node(args.kitara, url, owner, args.lease_ms)
        print(f"failover over {len(took)} SIGKILLs (lease {args.lease_ms} ms, bound "
              f"{args.lease_ms / 1000 + 3:.1f} s): median {statistics.median(took):.3f} s, "
              f"max {max(took):.3f} s, min {min(took):.3f} s")
    finally:
        for node in nodes.values():
            node.stop()
        subprocess.run(["mysql", "-h127.0.0.1", "-ukitara", "-pkitara", "-e",
                        f"DROP DATABASE {name}"], check=False)


if __name__ == "__main__":
    sys.exit(main())
