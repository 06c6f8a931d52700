"""The fault proxy itself: the delay asked for is the delay given, bytes keep their order."""

from __future__ import annotations

import contextlib
import socket
import statistics
import threading
import time
from collections.abc import Iterator

import psycopg2
import pytest
from conftest import Servers

from parallel_connection.proxy import TcpProxy


@pytest.fixture
def echo() -> Iterator[int]:
    """A plain TCP echo server on 127.0.0.1; yields its port."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve(conn: socket.socket) -> None:
        with conn:
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
            except OSError:
                pass

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield listener.getsockname()[1]
    listener.close()


def _client(proxy: TcpProxy) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, f"connection ended after {len(data)} of {size} bytes"
        data += chunk
    return data


def _round_trips(proxy: TcpProxy, count: int) -> list[float]:
    times = []
    with _client(proxy) as sock:
        for i in range(count):
            message = b"ping %d" % i
            start = time.perf_counter()
            sock.sendall(message)
            assert _recv_exactly(sock, len(message)) == message
            times.append(time.perf_counter() - start)
    return times


def test_a_small_delay_is_not_rounded_up(echo: int) -> None:
    with TcpProxy("127.0.0.1", echo, delay=0.005).start() as proxy:
        median = statistics.median(_round_trips(proxy, 20))
    assert 0.009 <= median <= 0.025, f"median round trip {median * 1000:.1f} ms, expected about 10 ms"


def test_a_larger_delay_is_given_each_way(echo: int) -> None:
    with TcpProxy("127.0.0.1", echo, delay=0.03).start() as proxy:
        times = _round_trips(proxy, 5)
    assert min(times) >= 0.06, [round(t * 1000, 1) for t in times]
    assert statistics.median(times) < 0.09  # not rounded up to 50 ms each way either


def test_many_small_writes_keep_their_order(echo: int) -> None:
    with TcpProxy("127.0.0.1", echo, delay=0.005).start() as proxy, _client(proxy) as sock:
        sent = b"".join(b"%06d" % i for i in range(3000))

        def send() -> None:
            for i in range(0, len(sent), 6):
                sock.sendall(sent[i : i + 6])
                if i == len(sent) // 2:
                    proxy.delay = 0.0  # lowered mid-stream: later chunks are due before earlier ones

        sender = threading.Thread(target=send)
        proxy.delay = 0.05
        sender.start()
        received = _recv_exactly(sock, len(sent))
        sender.join()
    assert received == sent


def test_a_black_hole_holds_bytes_until_it_lifts(echo: int) -> None:
    with TcpProxy("127.0.0.1", echo).start() as proxy, _client(proxy) as sock:
        assert _round_trips(proxy, 1)  # the proxy is connected and forwarding
        proxy.black_hole = True
        sock.sendall(b"held")
        sock.settimeout(0.2)
        with pytest.raises(TimeoutError):
            sock.recv(4)
        sock.settimeout(5)
        start = time.perf_counter()
        proxy.black_hole = False
        assert _recv_exactly(sock, 4) == b"held"
        assert time.perf_counter() - start < 0.03


def test_close_ends_open_connections(echo: int) -> None:
    proxy = TcpProxy("127.0.0.1", echo, delay=0.005).start()
    with _client(proxy) as sock:
        assert _round_trips(proxy, 1)
        proxy.close()
        with contextlib.suppress(ConnectionResetError):  # a reset or an orderly end, never a hang
            assert sock.recv(1) == b""


def test_select_1_through_a_5_ms_proxy_takes_one_round_trip(servers: Servers) -> None:
    dsn = servers.shard_dsns[0]
    with TcpProxy.for_dsn(dsn, delay=0.005) as proxy:
        conn = psycopg2.connect(proxy.dsn(dsn))
        try:
            conn.autocommit = True
            times = []
            with conn.cursor() as cur:
                for _ in range(10):
                    start = time.perf_counter()
                    cur.execute("SELECT 1")
                    assert cur.fetchone() == (1,)
                    times.append(time.perf_counter() - start)
        finally:
            conn.close()
    median = statistics.median(times)
    assert 0.01 <= median < 0.04, f"median SELECT 1 {median * 1000:.1f} ms"
