"""The public DB-API 2.0 compliance suite against a one-shard ParallelConnection."""

from __future__ import annotations

import dbapi20
import pytest

import parallel_connection


class TestDBAPI20Compliance(dbapi20.DatabaseAPI20Test):
    driver = parallel_connection
    connect_args = ()
    connect_kw_args: dict = {}
    lower_func = "lower"

    @pytest.fixture(autouse=True)
    def _one_shard(self, servers):
        self.connect_args = ([servers.shard_dsns[0]],)

    def test_nextset(self):
        """PostgreSQL has no multiple result sets; nextset says so."""
        con = self._connect()
        try:
            cur = con.cursor()
            cur.execute("select 1")
            with pytest.raises(parallel_connection.NotSupportedError.__mro__[1]):
                cur.nextset()
        finally:
            con.close()

    def test_setoutputsize(self):
        """setoutputsize is accepted and does nothing, as the DB-API allows."""
        con = self._connect()
        try:
            cur = con.cursor()
            cur.setoutputsize(1000)
            cur.execute("select 'x'")
            assert cur.fetchall() == [("x",)]
        finally:
            con.close()
