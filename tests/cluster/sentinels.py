"""A Redis primary, its replicas and three Sentinels of our own on 127.0.0.1 (`redis-server`, `--sentinel`).

For the failover test and the ledger's replica tests: nothing here touches the machine's shared
Redis. Every server dies with the test process (tests.cluster.support's PR_SET_DEATHSIG).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from tests.cluster.support import _die_with_parent, wait_for
from tests.support.ports import free_port

MASTER = "relay"


def _binary() -> str:
    return shutil.which("redis-server") or "/usr/bin/redis-server"


def _client(port: int):
    import redis

    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=0.5, socket_connect_timeout=0.5,
                       decode_responses=True)


class Server:
    """One redis-server; `replica_of` a port makes it a replica."""

    def __init__(self, workdir: Path, replica_of: int | None = None):
        self.port = free_port()
        args = [_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(workdir),
                # A replica is online at once, not after the default 5 s wait for more replicas.
                "--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0"]
        if replica_of:
            args += ["--replicaof", "127.0.0.1", str(replica_of)]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        preexec_fn=_die_with_parent)
        if not wait_for(self.ping, 10):
            raise RuntimeError(f"redis-server on {self.port} did not start")

    def client(self):
        return _client(self.port)

    def ping(self) -> bool:
        import redis

        try:
            return self.client().ping()
        except redis.RedisError:
            return False

    def role(self) -> str:
        return self.client().role()[0]

    def online_replicas(self) -> int:
        info = self.client().info("replication")
        return sum(1 for key, value in info.items() if key.startswith("slave") and isinstance(value, dict)
                   and value.get("state") == "online")

    def kill(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def pause(self):
        self.process.send_signal(signal.SIGSTOP)

    def resume(self):
        self.process.send_signal(signal.SIGCONT)


class Sentinel:
    def __init__(self, workdir: Path, primary_port: int, *, down_after_ms: int, failover_timeout_ms: int):
        self.port = free_port()
        conf = workdir / f"sentinel-{self.port}.conf"
        conf.write_text("\n".join([
            f"port {self.port}", "bind 127.0.0.1", f"dir {workdir}",
            f"sentinel monitor {MASTER} 127.0.0.1 {primary_port} 2",
            f"sentinel down-after-milliseconds {MASTER} {down_after_ms}",
            f"sentinel failover-timeout {MASTER} {failover_timeout_ms}",
            f"sentinel parallel-syncs {MASTER} 1", ""]))
        self.process = subprocess.Popen([_binary(), str(conf), "--sentinel"], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        if not wait_for(self.ping, 10):
            raise RuntimeError(f"redis sentinel on {self.port} did not start")

    def ping(self) -> bool:
        import redis

        try:
            return _client(self.port).ping()
        except redis.RedisError:
            return False

    def primary(self) -> tuple[str, int] | None:
        import redis

        try:
            found = _client(self.port).sentinel_get_master_addr_by_name(MASTER)
        except redis.RedisError:
            return None
        return (found[0], int(found[1])) if found else None

    def knows_all(self, replicas: int, sentinels: int) -> bool:
        """Has this Sentinel discovered the replicas and the other Sentinels (a failover needs them)?"""
        import redis

        try:
            state = _client(self.port).sentinel_master(MASTER)
        except redis.RedisError:
            return False
        return int(state["num-slaves"]) >= replicas and int(state["num-other-sentinels"]) >= sentinels - 1

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


class ReplicatedRedis:
    """A primary and `replicas` replicas, online; with `sentinels`, that many Sentinels watching them."""

    def __init__(self, *, replicas: int = 1, sentinels: int = 0, down_after_ms: int = 1000,
                 failover_timeout_ms: int = 3000):
        self.dir = Path(tempfile.mkdtemp(prefix="relay-sentinel-"))
        self.servers: list[Server] = []
        self.sentinels: list[Sentinel] = []
        try:
            self.primary = self._add(Server(self.dir))
            self.replicas = [self._add(Server(self.dir, replica_of=self.primary.port)) for _ in range(replicas)]
            if not wait_for(lambda: self.primary.online_replicas() == replicas, 15):
                raise RuntimeError("the replicas did not come online")
            for _ in range(sentinels):
                self.sentinels.append(Sentinel(self.dir, self.primary.port, down_after_ms=down_after_ms,
                                               failover_timeout_ms=failover_timeout_ms))
            if sentinels and not wait_for(lambda: all(s.knows_all(replicas, sentinels) for s in self.sentinels), 20):
                raise RuntimeError("the Sentinels did not discover each other and the replicas")
        except BaseException:
            self.stop()
            raise

    def _add(self, server: Server) -> Server:
        self.servers.append(server)
        return server

    @property
    def sentinel_setting(self) -> str:
        return ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)

    def promoted(self) -> Server | None:
        """The replica every Sentinel now names as the primary, once it answers as one."""
        addresses = {s.primary() for s in self.sentinels}
        if len(addresses) != 1 or None in addresses:
            return None
        (_host, port), = addresses
        for server in self.replicas:
            if server.port == port and server.ping() and server.role() == "master":
                return server
        return None

    def stop(self):
        for sentinel in self.sentinels:
            sentinel.stop()
        for server in self.servers:
            server.resume()
            server.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
