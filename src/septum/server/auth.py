"""Who is calling, and what they may do: API tokens, roles and permissions.

Tokens are ``sep_<id>_<secret>`` with 160 random bits of secret; only SHA-256 of the secret
is stored (a token is a random key, not a password, so a slow hash adds nothing). A token is
found by its id and compared in constant time.

Roles and what they may do (``PERMISSIONS``):

========  ====================================================================
admin     everything, including users and tokens
security  read everything; write every resource of every tier; provision,
          rollback; enrol agents
owner     read policy and versions; see workloads and flows only inside their
          scope; write policies only in tiers they own (a team of theirs is
          among the tier's ``owners``) whose ``appliesTo`` is provably inside
          their scope
auditor   read everything, including the audit log; write nothing
agent     its own enforcer's desired state; report its own status and flows
========  ====================================================================
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime

from septum.model.selector import Selector, parse_selector

__all__ = [
    "PERMISSIONS",
    "Permission",
    "Principal",
    "Role",
    "hash_secret",
    "new_token",
    "split_token",
]


class Role(enum.Enum):
    ADMIN = "admin"
    SECURITY = "security"
    OWNER = "owner"
    AUDITOR = "auditor"
    AGENT = "agent"


class Permission(enum.Enum):
    READ_POLICY = "read-policy"  # policy resources, versions, diffs
    READ_INVENTORY = "read-inventory"  # workloads, networks, users (owners: scoped)
    WRITE_INVENTORY = "write-inventory"
    WRITE_POLICY = "write-policy"  # owners: checked per resource (tier, scope)
    WRITE_GLOBAL = "write-global"  # tiers, services, segments, settings, assertions
    PROVISION = "provision"  # provision, rollback
    RUN_ASSERTIONS = "run-assertions"
    READ_FLOWS = "read-flows"  # owners: scoped
    WRITE_FLOWS = "write-flows"  # agents: their own reports
    READ_AUDIT = "read-audit"
    MANAGE_USERS = "manage-users"
    ENROL_AGENTS = "enrol-agents"
    AGENT_STATE = "agent-state"  # agents: their own enforcer


_P = Permission
PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.ADMIN: frozenset(p for p in Permission if p is not _P.AGENT_STATE),
    Role.SECURITY: frozenset(
        {
            _P.READ_POLICY,
            _P.READ_INVENTORY,
            _P.WRITE_INVENTORY,
            _P.WRITE_POLICY,
            _P.WRITE_GLOBAL,
            _P.PROVISION,
            _P.RUN_ASSERTIONS,
            _P.READ_FLOWS,
            _P.WRITE_FLOWS,
            _P.READ_AUDIT,
            _P.ENROL_AGENTS,
        }
    ),
    Role.OWNER: frozenset(
        {_P.READ_POLICY, _P.READ_INVENTORY, _P.WRITE_POLICY, _P.RUN_ASSERTIONS, _P.READ_FLOWS}
    ),
    Role.AUDITOR: frozenset(
        {_P.READ_POLICY, _P.READ_INVENTORY, _P.RUN_ASSERTIONS, _P.READ_FLOWS, _P.READ_AUDIT}
    ),
    Role.AGENT: frozenset({_P.AGENT_STATE, _P.WRITE_FLOWS}),
}


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller."""

    name: str
    role: Role
    scope: Selector | None = None  # owners
    teams: tuple[str, ...] = ()  # owners
    enforcer: str | None = None  # agents

    def may(self, permission: Permission) -> bool:
        return permission in PERMISSIONS[self.role]

    @property
    def scoped(self) -> bool:
        """True when what this caller sees is limited to a selector (owners)."""
        return self.role is Role.OWNER

    def owns_tier(self, tier_owners: tuple[str, ...]) -> bool:
        return bool({self.name, *self.teams} & set(tier_owners))

    @classmethod
    def of(
        cls,
        name: str,
        role: str,
        scope: str | None,
        teams: list[str] | tuple[str, ...],
        enforcer: str | None,
    ) -> Principal:
        return cls(
            name,
            Role(role),
            parse_selector(scope) if scope else None,
            tuple(teams),
            enforcer,
        )


TOKEN_PREFIX = "sep_"


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_token() -> tuple[str, str, str]:
    """A new token: (token text to hand out once, its id, the hash of its secret)."""
    token_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(20)
    return f"{TOKEN_PREFIX}{token_id}_{secret}", token_id, hash_secret(secret)


def split_token(text: str) -> tuple[str, str] | None:
    """(id, secret) of a well-formed token, else None."""
    if not text.startswith(TOKEN_PREFIX):
        return None
    token_id, sep, secret = text[len(TOKEN_PREFIX) :].partition("_")
    if not sep or len(token_id) != 16 or not secret:
        return None
    return token_id, secret


def secret_matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)


def token_usable(
    expires_at: datetime | None, revoked_at: datetime | None, now: datetime
) -> bool:
    return revoked_at is None and (expires_at is None or now < expires_at)
