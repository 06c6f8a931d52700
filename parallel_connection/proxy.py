"""A small TCP proxy that adds latency, resets or black-holes connections.

For fault tests and for benchmarks that show what fan-out gains when shards
are on other machines. It listens on 127.0.0.1 only.
"""

from __future__ import annotations

import heapq
import socket
import struct
import threading
import time

import psycopg2.extensions

__all__ = ["TcpProxy"]


class _Pipe:
    """One direction of one connection: bytes delivered ``delay`` seconds after they arrive."""

    def __init__(self, proxy: TcpProxy, src: socket.socket, dst: socket.socket) -> None:
        self.proxy, self.src, self.dst = proxy, src, dst
        self.queue: list[tuple[float, int, bytes]] = []
        self.cond = threading.Condition()
        self.closed = False
        self.seq = 0

    def start(self) -> None:
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._write, daemon=True).start()

    def _read(self) -> None:
        try:
            while data := self.src.recv(65536):
                with self.cond:
                    self.seq += 1
                    heapq.heappush(self.queue, (time.monotonic() + self.proxy.delay, self.seq, data))
                    self.cond.notify()
        except OSError:
            pass
        with self.cond:
            self.closed = True
            self.cond.notify()

    def _write(self) -> None:
        try:
            while True:
                with self.cond:
                    while not self.queue and not self.closed:
                        self.cond.wait()
                    if not self.queue:
                        break
                    due, _, data = self.queue[0]
                    wait = due - time.monotonic()
                    if wait > 0 or self.proxy.black_hole:
                        self.cond.wait(max(wait, 0.05))
                        continue
                    heapq.heappop(self.queue)
                self.dst.sendall(data)
            self.dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


class TcpProxy:
    """Forward 127.0.0.1:<port> to ``upstream``, optionally slowed down or cut off."""

    def __init__(self, upstream_host: str, upstream_port: int, *, delay: float = 0.0) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.delay = delay
        self.black_hole = False
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def for_dsn(cls, dsn: str, *, delay: float = 0.0) -> TcpProxy:
        params = psycopg2.extensions.parse_dsn(dsn)
        return cls(params.get("host", "127.0.0.1"), int(params.get("port", 5432)), delay=delay).start()

    def dsn(self, dsn: str) -> str:
        """``dsn`` pointed at this proxy instead of its server."""
        params = psycopg2.extensions.parse_dsn(dsn)
        params.update(host="127.0.0.1", port=str(self.port))
        return psycopg2.extensions.make_dsn(dsn=None, **params)

    def start(self) -> TcpProxy:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def reset(self) -> None:
        """Abort every open connection (a reset once no thread still reads it)."""
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        self.reset()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._sockets += [client, server]
            _Pipe(self, client, server).start()
            _Pipe(self, server, client).start()
