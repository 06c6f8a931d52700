"""A small TCP proxy that adds latency, resets or black-holes connections.

For fault tests and for benchmarks that show what fan-out gains when shards
are on other machines. It listens on 127.0.0.1 only.
"""

from __future__ import annotations

import collections
import socket
import struct
import threading
import time

import psycopg2.extensions

__all__ = ["TcpProxy"]


class _Pipe:
    """One direction of one connection: each chunk forwarded ``delay`` seconds after it was read, in order."""

    def __init__(self, proxy: TcpProxy, src: socket.socket, dst: socket.socket) -> None:
        self.proxy, self.src, self.dst = proxy, src, dst
        self.queue: collections.deque[tuple[float, bytes]] = collections.deque()
        self.cond = threading.Condition()
        self.closed = False  # the source has ended
        self.aborted = False  # the proxy reset the connection: forward nothing more

    def start(self) -> None:
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._write, daemon=True).start()

    def wake(self) -> None:
        with self.cond:
            self.cond.notify_all()

    def abort(self) -> None:
        with self.cond:
            self.aborted = True
            self.cond.notify_all()

    def _read(self) -> None:
        try:
            while data := self.src.recv(65536):
                with self.cond:
                    self.queue.append((time.monotonic() + self.proxy.delay, data))
                    self.cond.notify_all()
        except OSError:
            pass
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def _next(self) -> bytes | None:
        """The next chunk once it is due and the proxy lets it through; None once there is no more."""
        with self.cond:
            while True:
                if self.aborted:
                    return None
                if self.queue and not self.proxy.black_hole:
                    # A FIFO, not a heap: a delay lowered mid-stream never reorders bytes.
                    wait = self.queue[0][0] - time.monotonic()
                    if wait <= 0:
                        return self.queue.popleft()[1]
                    self.cond.wait(wait)
                elif self.closed and not self.queue:
                    return None
                else:
                    self.cond.wait()  # woken by a read, the black hole lifting, or an abort

    def _write(self) -> None:
        try:
            while (data := self._next()) is not None:
                self.dst.sendall(data)
            if not self.aborted:
                self.dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


class TcpProxy:
    """Forward 127.0.0.1:<port> to ``upstream``, optionally slowed down or cut off."""

    def __init__(self, upstream_host: str, upstream_port: int, *, delay: float = 0.0) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.delay = delay
        self._black_hole = False
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._pipes: list[_Pipe] = []
        self._lock = threading.Lock()
        self._closed = False

    @property
    def black_hole(self) -> bool:
        """While true, bytes are still read (TCP acknowledges them) but none are forwarded."""
        return self._black_hole

    @black_hole.setter
    def black_hole(self, value: bool) -> None:
        self._black_hole = value
        with self._lock:
            pipes = list(self._pipes)
        for pipe in pipes:
            pipe.wake()

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
            pipes, self._pipes = self._pipes, []
        for pipe in pipes:
            pipe.abort()
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
            pipes = [_Pipe(self, client, server), _Pipe(self, server, client)]
            with self._lock:
                self._sockets += [client, server]
                self._pipes += pipes
            for pipe in pipes:
                pipe.start()
