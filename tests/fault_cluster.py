"""A throwaway multi-node Ray cluster on this machine, driven over stdin/stdout (tests/pipeline/test_faults.py).

One process can only be connected to one Ray cluster and the test session already has its own, so the
cluster lives in this helper process and the pipeline joins it from a CLI subprocess (--ray-address).

    python -m tests.fault_cluster --workers 2 --worker-cpus 1 --temp-dir /tmp/rf-xyz

prints one JSON line {"address": ..., "workers": N} once every node is up, then obeys one command per
line, answering one JSON line each:
    kill N   remove worker node N hard (raylet and its worker processes SIGKILLed)
    add      start one more worker node (same shape)
    quit     shut the cluster down and exit (so does end of input)

The head node has no CPUs, so every stage actor lands on a worker node. Nothing is written to
/tmp/ray/ray_current_cluster (nor removed from it): another process's plain `ray.init()` must never
find this cluster.
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--worker-cpus", type=int, default=1)
    parser.add_argument("--temp-dir", required=True, help="short path: Ray's unix sockets live under it")
    parser.add_argument("--object-store-mb", type=int, default=100)
    args = parser.parse_args(argv)

    import ray._common.utils
    import ray._private.utils
    from ray.cluster_utils import Cluster

    # Cluster.add_node records the head's address for `ray.init()` auto-discovery and shutdown deletes
    # that record: neither may touch /tmp/ray/ray_current_cluster, which may belong to someone else.
    ray._private.utils.write_ray_address = lambda *a, **k: None
    ray._common.utils.reset_ray_address = lambda *a, **k: None

    store = args.object_store_mb * 1024 * 1024
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "object_store_memory": store, "temp_dir": args.temp_dir,
                        "include_dashboard": False},
    )
    workers = []

    def add() -> None:
        workers.append(cluster.add_node(num_cpus=args.worker_cpus, object_store_memory=store,
                                        temp_dir=args.temp_dir))

    try:
        for _ in range(args.workers):
            add()
        cluster.wait_for_nodes()
        print(json.dumps({"address": cluster.address, "workers": len(workers)}), flush=True)
        for line in sys.stdin:
            cmd = line.split()
            if not cmd:
                continue
            if cmd[0] == "kill":
                node = workers[int(cmd[1])]
                cluster.remove_node(node, allow_graceful=False)
                print(json.dumps({"killed": int(cmd[1])}), flush=True)
            elif cmd[0] == "add":
                add()
                print(json.dumps({"added": len(workers) - 1}), flush=True)
            elif cmd[0] == "quit":
                break
            else:
                print(json.dumps({"error": f"unknown command {line.strip()!r}"}), flush=True)
    finally:
        cluster.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
