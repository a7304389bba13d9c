"""A real Redis Cluster on loopback: masters (and optional replicas) built with
``redis-server --cluster-enabled yes`` and ``redis-cli --cluster create``."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time

import redis

from .servers import RedisServer


def cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is valid and free too."""
    import random
    import socket

    rng = random.Random()
    for _ in range(1000):
        port = rng.randint(20000, 55000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair for a cluster node")


class RedisClusterNodes:
    """``masters`` masters with ``replicas`` replicas each, on consecutive free ports."""

    def __init__(self, masters: int = 3, replicas: int = 0) -> None:
        self.count = masters * (1 + replicas)
        self.replicas = replicas
        self.nodes: list[RedisServer] = []

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}/0"

    def start(self) -> RedisClusterNodes:
        for _ in range(self.count):
            # each node has a directory of its own: one config file name serves all; a port
            # (pair) taken before the node binds it is picked again
            node = RedisServer("--cluster-enabled", "yes", "--cluster-config-file",
                               "nodes.conf", "--cluster-node-timeout", "2000",
                               pick_port=cluster_port)
            self.nodes.append(node.start())
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli is required to build a cluster")
        addrs = [f"127.0.0.1:{n.port}" for n in self.nodes]
        subprocess.run([cli, "--cluster", "create", *addrs, "--cluster-replicas",
                        str(self.replicas), "--cluster-yes"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with redis.Redis(port=self.nodes[0].port) as c:
                info = c.cluster("info")
                flags = [line.split()[2] for line in
                         c.execute_command("CLUSTER", "NODES").decode().splitlines()]
            state = info.get("cluster_state") if isinstance(info, dict) else None
            replicas = sum("slave" in f for f in flags)
            if state == "ok" and replicas == self.count - self.count // (1 + self.replicas):
                return self
            time.sleep(0.1)
        raise RuntimeError("cluster did not reach state ok")

    def flushall(self) -> None:
        for node in self.nodes:
            with contextlib.suppress(redis.ResponseError), node.client() as c:
                c.flushall()  # replicas are read-only and refuse it

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
