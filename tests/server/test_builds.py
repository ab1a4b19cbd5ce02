"""Incremental provisioning (``server.builds``) equals the full path: the same relabellings
provisioned into two databases, one with the active version kept built and one without,
leave every enforcer with the same stored state (digest) and the same update (whole table
or the same element deltas) at every revision; changes the incremental path does not take
(addresses, policies) fall back and the path resumes after them."""

from __future__ import annotations

import json
import zlib
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from septum.model.dump import repository_documents
from septum.server import service
from septum.server.builds import Builds
from septum.server.db import Database, EnforcerChange, EnforcerState
from septum.testing.estate import generate_estate, label_changes

AT = datetime(2026, 11, 1, 12, tzinfo=UTC)


def _database(path: Path) -> tuple[Database, Any]:
    db = Database(f"sqlite+pysqlite:///{path}")
    db.migrate()
    service.bootstrap_admin(db, "root", AT)
    return db, service.principal_of_name(db, "root")


def _stored(db: Database, revision: int) -> tuple[dict[str, str], dict[str, Any]]:
    with db.read() as s:
        digests = {e.enforcer: e.digest for e in s.execute(select(EnforcerState)).scalars()}
        changes = {
            c.enforcer: (
                c.full,
                None if c.deltas is None else json.loads(zlib.decompress(c.deltas)),
            )
            for c in s.execute(
                select(EnforcerChange).where(EnforcerChange.revision == revision)
            ).scalars()
        }
    return digests, changes


def test_incremental_provisioning_equals_the_full_path(tmp_path: Path) -> None:
    repo = generate_estate(seed=7, workloads=400, policies=80, enforcers=40)
    entries = [{"path": "estate.yaml", "body": d} for d in repository_documents(repo)]
    fast_db, fast_p = _database(tmp_path / "fast.db")
    full_db, full_p = _database(tmp_path / "full.db")
    builds = Builds(background=False)
    try:
        for db, p in ((fast_db, fast_p), (full_db, full_p)):
            service.replace_draft(db, p, entries, AT)
        service.provision(fast_db, fast_p, "v1", AT, service.ReplaySource(None), builds)
        service.provision(full_db, full_p, "v1", AT, service.ReplaySource(None))
        changes = label_changes(repo, seed=3, n=30)
        workloads = {w.name: w for w in repo.workloads}
        for i, change in enumerate(changes):
            for db, p in ((fast_db, fast_p), (full_db, full_p)):
                if i == 12:  # an address change: the full path, then incremental again
                    w = workloads[change.workload]
                    doc = service.get_document(db, p, "Workload", w.name, "draft")
                    doc["spec"]["addresses"] = [*doc["spec"]["addresses"], "198.19.250.7"]
                    service.put_document(db, p, "Workload", w.name, doc, AT)
                if change.new is None:
                    service.patch_labels(db, p, "Workload", change.workload, {}, [change.key], AT)
                else:
                    service.patch_labels(
                        db, p, "Workload", change.workload, {change.key: change.new}, [], AT
                    )
            fast = service.provision(
                fast_db, fast_p, f"c{i}", AT, service.ReplaySource(None), builds
            )
            full = service.provision(full_db, full_p, f"c{i}", AT, service.ReplaySource(None))
            assert fast["enforcers"] == full["enforcers"], (i, change)
            revision = full["enforcers"]["revision"]
            assert _stored(fast_db, revision) == _stored(full_db, revision), (i, change)
        # Every relabelling but the one after the address change (which re-primed) was
        # incremental.
        assert builds.incremental == len(changes) - 1
    finally:
        fast_db.dispose()
        full_db.dispose()


def test_a_time_boundary_since_the_build_sends_provisioning_the_full_way(tmp_path: Path) -> None:
    repo = generate_estate(seed=7, workloads=60, policies=20, enforcers=6)
    w = repo.workloads[0]
    binding = replace(w.addresses[0], valid_until=datetime(2026, 11, 2, tzinfo=UTC))
    repo = replace(
        repo,
        workloads=(replace(w, addresses=(binding, *w.addresses[1:])), *repo.workloads[1:]),
    )
    db, p = _database(tmp_path / "t.db")
    builds = Builds(background=False)
    try:
        entries = [{"path": "estate.yaml", "body": d} for d in repository_documents(repo)]
        service.replace_draft(db, p, entries, AT)
        service.provision(db, p, "v1", AT, service.ReplaySource(None), builds)
        other = repo.workloads[1].name
        service.patch_labels(db, p, "Workload", other, {"canary": "yes"}, [], AT)
        service.provision(db, p, "before", AT, service.ReplaySource(None), builds)
        assert builds.incremental == 1
        later = datetime(2026, 11, 3, tzinfo=UTC)  # the address's validity ended meanwhile
        service.patch_labels(db, p, "Workload", other, {"canary": "no"}, [], later)
        service.provision(db, p, "after", later, service.ReplaySource(None), builds)
        assert builds.incremental == 1
    finally:
        db.dispose()
