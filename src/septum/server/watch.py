"""What wakes the agents' long-polls: a per-process board of enforcer revisions.

::

    provision (this replica) ──poke──┐
    NOTIFY septum_state (any replica) ─► listener thread ──poke──┐
    (NOTIFY septum_auth: a credential was revoked ─► on_revocation)
    every poll_interval seconds ────────────────────────────────┤
                                                                 ▼
                        refresh: ONE query of every enforcer's revision ──► board.revisions
                                                                 └─► wake every waiter
    long-poll(enforcer, N): while board.revisions[enforcer] == N: wait for a wake or timeout

Why a board rather than a query per waiter: a thousand agents wait at once, and a change
wakes all of them; each then compares a dict entry, and only those whose revision moved
read their answer from the database (``states.StateAnswers``, which caches it).

Correctness never depends on a notification: revisions live in the database, every refresh
reads them all, and a refresh runs at least every ``poll_interval`` (also when LISTEN is not
available, as on SQLite). Notifications only make it sooner. A waiter's own answer is read
from the database, never from the board, so a stale board can delay but not mislead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping

from starlette.concurrency import run_in_threadpool

from septum.server.db import AUTH_CHANNEL, STATE_CHANNEL, Database
from septum.server.states import current_revisions

__all__ = ["StateBoard"]

log = logging.getLogger("septum.server.watch")


class StateBoard:
    def __init__(
        self,
        db: Database,
        poll_interval: float = 2.0,
        on_change: Callable[[Mapping[str, int], Mapping[str, int]], object] | None = None,
        on_revocation: Callable[[], object] | None = None,
        on_tick: Callable[[], object] | None = None,
    ) -> None:
        self.db = db
        self.poll_interval = poll_interval
        #: Called (in a worker thread, before waiters wake) with the revisions before and
        #: after a refresh that saw a change: ``StateAnswers.prefetch``.
        self.on_change = on_change
        #: Called (in the LISTEN thread) when another replica revoked a credential.
        self.on_revocation = on_revocation
        #: Called (in a worker thread) before each periodic refresh: ``service.replan``
        #: when a rule expired or an address window opened or closed.
        self.on_tick = on_tick
        self.revisions: dict[str, int] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None
        self._lock: asyncio.Lock | None = None
        self._pending = False
        self._poller: asyncio.Task[None] | None = None
        self._stop = threading.Event()
        self._listener: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    async def ensure_started(self) -> None:
        """Bind to the running loop (first use, or a new loop: test clients make one per
        request), read the revisions, and start the poller and the LISTEN thread."""
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            return
        self._loop = loop
        self._changed = asyncio.Event()
        self._lock = asyncio.Lock()
        await self.refresh()
        self._poller = loop.create_task(self._poll())
        if not self.db.sqlite and self._listener is None:
            self._listener = threading.Thread(
                target=self._listen, name="septum-listen", daemon=True
            )
            self._listener.start()

    def close(self) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.cancel()

    # ------------------------------------------------------------------ waking

    def poke(self) -> None:
        """Ask for a refresh soon (any thread)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(self._schedule)

    def _schedule(self) -> None:
        # Pokes that arrive while a refresh is queued are folded into it.
        if not self._pending:
            self._pending = True
            asyncio.get_running_loop().create_task(self.refresh())

    async def refresh(self) -> None:
        assert self._lock is not None
        async with self._lock:
            self._pending = False
            revisions = await run_in_threadpool(self._read, self.revisions)
            self.revisions = revisions
            changed, self._changed = self._changed, asyncio.Event()
            if changed is not None:
                changed.set()

    def _read(self, before: dict[str, int]) -> dict[str, int]:
        with self.db.read() as s:
            after = current_revisions(s)
        if self.on_change is not None and after != before:
            self.on_change(before, after)
        return after

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                if self.on_tick is not None:
                    await run_in_threadpool(self.on_tick)
                await self.refresh()
            except Exception:  # the database is down: keep serving, try again later
                log.warning("refreshing enforcer revisions failed", exc_info=True)

    async def wait_changed(self, enforcer: str, revision: int, timeout: float) -> None:
        """Return when the board says ``enforcer`` is past ``revision``, or after
        ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while self.revisions.get(enforcer, 0) == revision:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._changed is None:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    # ------------------------------------------------------------------ PostgreSQL

    def _revoked(self) -> None:
        if self.on_revocation is not None:
            self.on_revocation()

    def _listen(self) -> None:
        import psycopg

        conninfo = self.db.engine.url.set(drivername="postgresql").render_as_string(
            hide_password=False
        )
        while not self._stop.is_set():
            try:
                with psycopg.connect(conninfo, autocommit=True) as conn:
                    conn.execute(f"LISTEN {STATE_CHANNEL}")
                    conn.execute(f"LISTEN {AUTH_CHANNEL}")
                    self.poke()  # whatever happened while not listening
                    self._revoked()
                    while not self._stop.is_set():
                        for n in conn.notifies(timeout=1.0):
                            if n.channel == AUTH_CHANNEL:
                                self._revoked()
                            else:
                                self.poke()
            except psycopg.Error:
                log.warning("LISTEN failed; retrying", exc_info=True)
                self._stop.wait(1.0)
