"""The test servers never race for a port (tests/servers.py)."""

from __future__ import annotations

import socket

import pytest

from .servers import RedisServer, dead_port, free_port

pytestmark = pytest.mark.redis


def test_a_redis_server_whose_port_was_taken_starts_on_another(fresh_redis):
    """The first pick is the port of another redis-server (someone took it between the pick
    and the bind): its answer is not taken for ours, and the next pick is used."""
    picks = iter([fresh_redis.port])
    server = RedisServer(pick_port=lambda: next(picks, None) or free_port())
    try:
        server.start()
        assert server.port != fresh_redis.port
        with server.client() as c:
            assert int(c.info("server")["process_id"]) == server.proc.pid
        port = server.port
        server.restart()  # a restart keeps the port it got
        assert server.port == port
        with server.client() as c:
            assert int(c.info("server")["process_id"]) == server.proc.pid
    finally:
        server.stop()


def test_a_dead_port_refuses_connections_while_it_is_held():
    with dead_port() as port:
        with pytest.raises(ConnectionRefusedError), socket.create_connection(
                ("127.0.0.1", port), timeout=2):
            pass
        with socket.socket() as other, pytest.raises(OSError):
            # nobody else can listen there meanwhile, not even with SO_REUSEADDR (which
            # redis-server sets)
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            other.bind(("127.0.0.1", port))
