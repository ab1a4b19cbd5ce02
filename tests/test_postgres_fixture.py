"""The storage fixtures themselves: ``database_url`` gives a working, empty database on SQLite
and on a real PostgreSQL server, and PostgreSQL's LISTEN/NOTIFY (which the server uses to fan
out revisions between replicas) works between two connections."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine, inspect, select

from tests.postgres import PostgresServer

NOTIFY_TIMEOUT = 10.0


def _items(metadata: MetaData) -> Table:
    return Table(
        "items",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("name", String(100), nullable=False, unique=True),
    )


def test_database_url_is_a_fresh_working_database(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        assert inspect(engine).get_table_names() == []
        metadata = MetaData()
        items = _items(metadata)
        metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(items.insert(), [{"name": "alpha"}, {"name": "beta"}])
        with engine.connect() as conn:
            names = conn.execute(select(items.c.name).order_by(items.c.name)).scalars().all()
        assert names == ["alpha", "beta"]
        assert engine.dialect.name == database_url.split("+")[0]
    finally:
        engine.dispose()


def test_database_url_rolls_back(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        metadata = MetaData()
        items = _items(metadata)
        metadata.create_all(engine)

        def insert_then_fail() -> None:
            with engine.begin() as conn:
                conn.execute(items.insert(), [{"name": "gone"}])
                raise RuntimeError("abort")

        with pytest.raises(RuntimeError, match="abort"):
            insert_then_fail()
        with engine.connect() as conn:
            assert conn.execute(select(items.c.name)).scalars().all() == []
    finally:
        engine.dispose()


def test_postgres_server_is_private_and_fast(postgres_server: PostgresServer) -> None:
    with postgres_server.connect() as conn:
        settings = dict(
            conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)",
                (
                    [
                        "listen_addresses",
                        "fsync",
                        "synchronous_commit",
                        "full_page_writes",
                        "port",
                        "unix_socket_directories",
                    ],
                ),
            ).fetchall()
        )
        assert settings == {
            "listen_addresses": "127.0.0.1",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "port": str(postgres_server.port),
            "unix_socket_directories": str(postgres_server.socket_dir),
        }
        assert conn.execute(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
        ).fetchone() == (True,)


def test_databases_are_created_and_dropped(postgres_server: PostgresServer) -> None:
    name = postgres_server.create_database()
    try:
        with postgres_server.connect(name) as conn:
            conn.execute("CREATE TABLE t (x int)")
        # a session left open does not stop the drop
        lingering = postgres_server.connect(name)
    finally:
        postgres_server.drop_database(name)
    lingering.close()
    with postgres_server.connect() as conn:
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    assert found is None


def test_listen_notify_between_two_connections(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    dbname = postgres_url.rsplit("/", 1)[1]
    with postgres_server.connect(dbname) as listener, postgres_server.connect(dbname) as sender:
        listener.execute("LISTEN revisions")
        # a notification sent inside a transaction is delivered only on commit
        with sender.transaction():
            sender.execute("SELECT pg_notify('revisions', '41')")
        sender.execute("NOTIFY revisions, '42'")
        got = [
            (n.channel, n.payload, n.pid)
            for n in listener.notifies(timeout=NOTIFY_TIMEOUT, stop_after=2)
        ]
        assert got == [
            ("revisions", "41", sender.info.backend_pid),
            ("revisions", "42", sender.info.backend_pid),
        ]


def test_listen_wakes_a_waiting_listener(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    """The replica pattern: one thread blocks in ``notifies()``, another commits and notifies;
    the waiting thread wakes with the payload (bounded by a timeout, never a sleep)."""
    dbname = postgres_url.rsplit("/", 1)[1]
    received: list[str] = []
    listening = threading.Event()

    def listen() -> None:
        with postgres_server.connect(dbname) as listener:
            listener.execute("LISTEN revisions")
            listening.set()
            received.extend(
                n.payload for n in listener.notifies(timeout=NOTIFY_TIMEOUT, stop_after=1)
            )

    thread = threading.Thread(target=listen)
    thread.start()
    try:
        assert listening.wait(NOTIFY_TIMEOUT)
        with postgres_server.connect(dbname, autocommit=False) as sender:
            sender.execute("SELECT pg_notify('revisions', 'rev-7')")
            sender.commit()
    finally:
        thread.join(NOTIFY_TIMEOUT + 5)
    assert not thread.is_alive()
    assert received == ["rev-7"]
