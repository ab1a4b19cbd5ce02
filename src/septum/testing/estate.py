"""Seeded, realistic estates for benchmarks and scale tests.

:func:`generate_estate` builds a validated :class:`~septum.model.resources.Repository`
directly from the frozen model objects (no YAML, so it is fast: the default 10,000 workloads
and 1,000 policies take well under a second or two). The same seed always gives an equal
repository. What it contains::

    apps (Zipf-sized) × roles (lb web api worker db cache queue search) × envs (prod staging
    dev) × locations  ──►  workloads, ~N/enforcers per enforcer (the first one on an on-prem
    enforcer is the host itself, then VMs and containers; cloud enforcers hold cloud
    instances); IPv4 from 198.18.0.0/15 (one or more /24s per enforcer), some IPv6 from
    2001:db8::/32, a few time-bounded addresses.

    tiers: security (100: quarantine, env isolation, PCI, monitoring, DNS, a CIDR deny list,
    pass for the rest) → access (150: users) → platform (200) → one tier per team (300+),
    whose policies select app && role and allow the app's call graph on both sides, plus
    env-specific, cross-app, staged, deny and log policies up to the requested count.

Address plan (:data:`ADDRESS_PLAN`)::

    198.18.0.0 - 198.19.63.255   workloads, a /24 block (or several) per enforcer
    198.19.64.0/19               time-bounded (migration) addresses
    198.19.96.0/19               free: used by address_changes()
    198.19.128.0/18              corporate VPN pool (user sessions)
    198.19.254.10                control plane (failsafe egress tcp/8443)
    198.19.255.0/24              admin range (failsafe ingress tcp/22)
    2001:db8:0:<enforcer>::/64   workloads' IPv6;  2001:db8:ffff::/48 free

:func:`estate_documents` turns any Repository back into resource dicts in the syntax of
the README's policy language reference (and :func:`estate_yaml` into YAML text) so that
benchmarks can measure parsing too; loading that text gives an equal Repository.
:func:`label_changes` and :func:`address_changes` produce sequences of single-workload changes
for the incremental benchmarks; :func:`apply_changes` applies them to a Repository (the
full-recompute reference).

Everything here is pure: no I/O, no clock, randomness only from ``random.Random(seed)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from random import Random
from types import MappingProxyType
from typing import Any, Final

from septum.model.dump import repository_documents, repository_yaml
from septum.model.parse import parse_service_port
from septum.model.resources import (
    KIND_LABEL,
    NAME_LABEL,
    NAMESPACE_LABEL,
    Action,
    AddressBinding,
    Direction,
    FailsafeEntry,
    IPAddress,
    IPNetwork,
    Mode,
    Network,
    Peer,
    PeerKind,
    Policy,
    PolicyMode,
    Repository,
    Rule,
    Segment,
    Service,
    ServicePort,
    Settings,
    Tier,
    TierDefault,
    User,
    UserGroup,
    Workload,
    WorkloadKind,
)
from septum.model.selector import ALL, Selector, parse_selector

__all__ = [
    "ADDRESS_PLAN",
    "AddressChange",
    "Change",
    "LabelChange",
    "address_changes",
    "apply_changes",
    "estate_documents",
    "estate_yaml",
    "generate_estate",
    "label_changes",
]

#: Where the generator puts what (see the module docstring).
ADDRESS_PLAN: Final[Mapping[str, IPNetwork]] = MappingProxyType(
    {
        "estate-v4": IPv4Network("198.18.0.0/15"),
        "estate-v6": IPv6Network("2001:db8::/32"),
        "workloads-v4": IPv4Network("198.18.0.0/15"),  # first 320 /24s only, see _BLOCKS
        "temporary-v4": IPv4Network("198.19.64.0/19"),
        "free-v4": IPv4Network("198.19.96.0/19"),
        "vpn": IPv4Network("198.19.128.0/18"),
        "control-plane": IPv4Network("198.19.254.10/32"),
        "admin": IPv4Network("198.19.255.0/24"),
        "free-v6": IPv6Network("2001:db8:ffff::/48"),
    }
)

_WORKLOAD_BASE = int(IPv4Address("198.18.0.0"))
_BLOCKS = 320  # /24 blocks for workloads: 198.18.0.0 - 198.19.63.255
_BLOCK_HOSTS = 254  # .1 - .254 of each /24
_V6_BASE = int(IPv6Address("2001:db8::"))
_T_START = datetime(2026, 1, 1, tzinfo=UTC)
_T_MID = datetime(2026, 7, 1, tzinfo=UTC)
_T_END = datetime(2027, 1, 1, tzinfo=UTC)

ENVS: Final = ("prod", "staging", "dev")
_ENV_WEIGHTS: Final = (0.5, 0.25, 0.25)
LOCATIONS: Final = ("par1", "fra1", "ams1", "lon1")
CLOUD_LOCATIONS: Final = ("aws-eu-west-1", "gcp-europe-west4")
_APP_WORDS: Final = (
    "shop", "billing", "search", "auth", "catalog", "cart", "checkout", "ledger", "mail",
    "media", "report", "inventory", "pricing", "payments", "ads", "analytics", "profile",
    "review", "shipping", "tax", "loyalty", "chat", "notify", "upload", "wiki", "crm", "erp",
    "hr", "payroll", "sso", "vault", "gateway", "forum", "booking", "maps", "feeds", "recs",
    "fraud", "kyc", "docs",
)  # fmt: skip
_TEAM_WORDS: Final = (
    "alpha", "bravo", "cobalt", "delta", "ember", "falcon", "granite", "harbor", "indigo",
    "juniper", "kepler", "lumen", "meridian", "nova", "onyx", "pulsar", "quartz", "raven",
    "sierra", "tundra",
)  # fmt: skip
_OPTIONAL_ROLES: Final = ("lb", "worker", "cache", "queue", "search")
_MODES: Final = (Mode.ENFORCED, Mode.VISIBILITY, Mode.TEST, Mode.SELECTIVE, Mode.IDLE)
_MODE_WEIGHTS: Final = (0.90, 0.04, 0.02, 0.02, 0.02)
_USER_ROLES: Final = ("developer", "dba", "sre", "analyst")
_USER_ROLE_WEIGHTS: Final = (0.6, 0.1, 0.15, 0.15)


# ----------------------------------------------------------------------------- small helpers


def _frozen(labels: Mapping[str, str]) -> Mapping[str, str]:
    """Labels as the parser stores them: a read-only, key-sorted mapping."""
    return MappingProxyType(dict(sorted(labels.items())))


def _sel(text: str) -> Selector:
    return parse_selector(text)


def _ar(app: str, role: str, env: str | None = None) -> Selector:
    text = f'app == "{app}" && role == "{role}"'
    return _sel(text if env is None else f'{text} && env == "{env}"')


def _port(text: str) -> ServicePort:
    """``tcp/443``, ``udp/8000-8099``, ``tcp``, ``icmp``, ``any``: the parser's reading."""
    return parse_service_port(text)


def _sel_peer(selector: Selector) -> Peer:
    return Peer(PeerKind.SELECTOR, selector=selector)


def _net_peer(name: str) -> Peer:
    return Peer(PeerKind.NETWORK, ref=name)


def _cidr_peer(cidr: IPNetwork) -> Peer:
    return Peer(PeerKind.CIDR, cidr=cidr)


def _users_peer(text: str) -> Peer:
    return Peer(PeerKind.USERS, selector=_sel(text))


@dataclass(frozen=True, slots=True)
class _R:
    """A rule before numbering: the generator's shorthand."""

    action: Action
    peers: tuple[Peer, ...] = ()
    refs: tuple[str, ...] = ()
    ports: tuple[str, ...] = ()
    expires: datetime | None = None
    description: str | None = None


def _rules(
    written: Sequence[_R] | None, services: Mapping[str, Service]
) -> tuple[Rule, ...] | None:
    """Number rules and flatten services exactly as the parser does (named services, then
    inline ports, de-duplicated), so that a YAML round trip gives equal objects."""
    if written is None:
        return None
    out: list[Rule] = []
    for index, r in enumerate(written):
        flat: list[ServicePort] = [p for ref in r.refs for p in services[ref].ports]
        flat.extend(_port(p) for p in r.ports)
        out.append(
            Rule(
                action=r.action,
                index=index,
                peers=r.peers,
                services=tuple(dict.fromkeys(flat)),
                service_refs=r.refs,
                expires=r.expires,
                description=r.description,
            )
        )
    return tuple(out)


# ----------------------------------------------------------------------------------- the plan


@dataclass(frozen=True, slots=True)
class _App:
    name: str
    team: str
    roles: tuple[str, ...]
    db_service: str  # postgres | mysql
    cache_service: str  # redis | memcached
    api_service: str  # "<app>-api"
    pci: bool


@dataclass(frozen=True, slots=True)
class _Enforcer:
    name: str
    env: str
    loc: str
    cloud: bool
    first_block: int  # index of its first /24 in the workload range


def _plan_apps(rng: Random, apps: int) -> list[_App]:
    teams = [f"team-{w}" for w in _TEAM_WORDS[: max(1, min(len(_TEAM_WORDS), apps // 5 or 1))]]
    words = list(_APP_WORDS)
    rng.shuffle(words)
    out: list[_App] = []
    n_pci = max(1, round(apps * 0.05)) if apps > 1 else 0
    for i in range(apps):
        roles: tuple[str, ...]
        if i == apps - 1:
            # The last (smallest) app is the platform: monitors and resolvers in every env.
            name, roles = "platform", ("monitor", "dns")
        else:
            word = words[i % len(words)]
            name = word if i < len(words) else f"{word}-{i // len(words) + 1}"
            optional = tuple(r for r in _OPTIONAL_ROLES if rng.random() < 0.4)
            roles = ("web", "api", "db", *optional)
        out.append(
            _App(
                name=name,
                team="platform-team" if name == "platform" else teams[i % len(teams)],
                roles=roles,
                db_service=rng.choice(("postgres", "postgres", "mysql")),
                cache_service=rng.choice(("redis", "redis", "memcached")),
                api_service=f"{name}-api",
                pci=0 < i <= n_pci and name != "platform",
            )
        )
    return out


def _plan_services(rng: Random, apps: Sequence[_App]) -> dict[str, Service]:
    shared: dict[str, tuple[str, ...]] = {
        "http": ("tcp/80",),
        "https": ("tcp/443",),
        "ssh": ("tcp/22",),
        "dns": ("udp/53", "tcp/53"),
        "ntp": ("udp/123",),
        "postgres": ("tcp/5432",),
        "mysql": ("tcp/3306",),
        "redis": ("tcp/6379",),
        "memcached": ("tcp/11211", "udp/11211"),
        "kafka": ("tcp/9092-9094",),
        "search": ("tcp/9200", "tcp/9300"),
        "metrics": ("tcp/9100-9199",),
        "grafana": ("tcp/3000",),
        "ping": ("icmp", "icmpv6"),
        "ldap": ("tcp/389", "tcp/636"),
        "smtp": ("tcp/25", "tcp/587"),
        "ephemeral": ("tcp/32768-60999", "udp/32768-60999"),
    }
    services = {
        name: Service(name, tuple(_port(p) for p in ports)) for name, ports in shared.items()
    }
    for app in apps:
        first = 8000 + rng.randrange(100) * 10
        width = rng.choice((0, 0, 0, 1, 9))
        text = f"tcp/{first}" if width == 0 else f"tcp/{first}-{first + width}"
        services[app.api_service] = Service(app.api_service, (_port(text),), f"The {app.name} API")
    return services


def _plan_enforcers(rng: Random, enforcers: int, counts: Sequence[int]) -> list[_Enforcer]:
    out: list[_Enforcer] = []
    block = 0
    n_cloud = enforcers // 20  # 5% cloud targets
    for e in range(enforcers):
        cloud = e >= enforcers - n_cloud
        env = ENVS[0] if e < enforcers // 2 else rng.choices(ENVS, _ENV_WEIGHTS)[0]
        loc = rng.choice(CLOUD_LOCATIONS if cloud else LOCATIONS)
        name = f"cloud-{loc}-{e:04d}" if cloud else f"host-{env}-{loc}-{e:04d}"
        out.append(_Enforcer(name, env, loc, cloud, block))
        block += max(1, math.ceil(counts[e] / _BLOCK_HOSTS))
    if block > _BLOCKS:
        raise ValueError(
            f"too many workloads per enforcer for the address plan: {block} /24 blocks "
            f"needed, {_BLOCKS} available (198.18.0.0 - 198.19.63.255)"
        )
    return out


def _v4(block: int, host: int) -> IPv4Address:
    """Host ``host`` (0-based) of the enforcer whose first /24 is ``block``: .1 - .254."""
    block += host // _BLOCK_HOSTS
    return IPv4Address(_WORKLOAD_BASE + block * 256 + 1 + host % _BLOCK_HOSTS)


def _v6(enforcer: int, host: int) -> IPv6Address:
    return IPv6Address(_V6_BASE | ((enforcer + 1) << 64) | (host + 1))


def _enforcer_cidrs(e: _Enforcer, count: int) -> list[IPv4Network]:
    blocks = max(1, math.ceil(count / _BLOCK_HOSTS))
    return [IPv4Network((_WORKLOAD_BASE + (e.first_block + b) * 256, 24)) for b in range(blocks)]


# ------------------------------------------------------------------------------- inventory


def _make_workloads(
    rng: Random,
    apps: Sequence[_App],
    enforcers: Sequence[_Enforcer],
    counts: Sequence[int],
    ipv6_fraction: float,
) -> list[Workload]:
    weights = [1.0 / (rank + 1) ** 0.9 for rank in range(len(apps))]
    cum: list[float] = []
    total = 0.0
    for w in weights:
        total += w
        cum.append(total)
    serial: dict[tuple[str, str, str], int] = {}
    temporary = int(IPv4Address("198.19.64.1"))
    out: list[Workload] = []
    for ei, e in enumerate(enforcers):
        for j in range(counts[ei]):
            app = rng.choices(apps, cum_weights=cum)[0]
            role = rng.choice(app.roles)
            if e.cloud:
                kind = WorkloadKind.CLOUD
            elif j == 0:
                kind = WorkloadKind.HOST
            else:
                kind = WorkloadKind.CONTAINER if rng.random() < 0.65 else WorkloadKind.VM
            key = (app.name, role, e.env)
            serial[key] = serial.get(key, 0) + 1
            name = f"{app.name}-{role}-{e.env}-{serial[key]}"
            namespace = app.name if kind is WorkloadKind.CONTAINER else None
            labels = {
                "app": app.name,
                "role": role,
                "env": e.env,
                "loc": e.loc,
                "team": app.team,
                KIND_LABEL: kind.value,
                NAME_LABEL: name,
            }
            if namespace is not None:
                labels[NAMESPACE_LABEL] = namespace
            if app.pci and e.env == "prod":
                labels["pci"] = "true"
            if rng.random() < 0.001:
                labels["quarantine"] = f"incident-{rng.randrange(1000, 10000)}"
            bindings = [AddressBinding(_v4(e.first_block, j))]
            if rng.random() < ipv6_fraction:
                bindings.append(AddressBinding(_v6(ei, j)))
            if rng.random() < 0.01 and temporary < int(IPv4Address("198.19.95.255")):
                # A migration address, valid for the first half of 2026 only.
                bindings.append(AddressBinding(IPv4Address(temporary), _T_START, _T_MID))
                temporary += 1
            mode = rng.choices(_MODES, _MODE_WEIGHTS)[0]
            out.append(
                Workload(
                    name=name,
                    kind=kind,
                    labels=_frozen(labels),
                    addresses=tuple(bindings),
                    enforcer=e.name,
                    mode=mode,
                    namespace=namespace,
                )
            )
    return out


def _make_networks() -> list[Network]:
    def net(name: str, cidrs: Iterable[str], excepts: Iterable[str] = (), **labels: str) -> Network:
        labels.update({KIND_LABEL: "network", NAME_LABEL: name})
        return Network(
            name,
            _frozen(labels),
            tuple(_net(c) for c in cidrs),
            tuple(_net(c) for c in excepts),
        )

    out = [
        net("internet", ["0.0.0.0/0", "::/0"], ["198.18.0.0/15", "2001:db8::/32"],
            zone="internet"),
        net("corp-vpn", [str(ADDRESS_PLAN["vpn"])], zone="corp"),
        net("cdn", ["192.0.2.0/24"], zone="internet", provider="cdn"),
        net("bad-actors", ["198.51.100.0/24"], zone="internet", reputation="bad"),
        net("legacy-dc", ["10.0.0.0/8"], zone="legacy"),
    ]  # fmt: skip
    out.extend(
        net(f"partner-{i:02d}", [f"203.0.113.{32 * i}/27"], zone="partner", partner=f"p{i:02d}")
        for i in range(8)
    )
    return out


def _net(text: str) -> IPNetwork:
    return IPv6Network(text) if ":" in text else IPv4Network(text)


def _make_users(rng: Random, users: int) -> tuple[list[User], list[UserGroup]]:
    group_of = {"developer": "developers", "dba": "dbas", "sre": "sres", "analyst": "analysts"}
    members: dict[str, list[str]] = {g: [] for g in group_of.values()}
    out: list[User] = []
    vpn = int(IPv4Address("198.19.128.1"))
    for i in range(users):
        name = f"user-{i:04d}"
        role = rng.choices(_USER_ROLES, _USER_ROLE_WEIGHTS)[0]
        members[group_of[role]].append(name)
        labels = {
            "role": role,
            "location": rng.choice(("paris", "berlin", "lisbon", "london", "remote")),
            "department": rng.choice(("engineering", "ops", "finance", "data")),
            KIND_LABEL: "user",
            NAME_LABEL: name,
        }
        if rng.random() < 0.7:
            session = AddressBinding(IPv4Address(vpn + i), _T_START, _T_END)
        else:
            day = rng.randrange(365)
            start = datetime.fromordinal(_T_START.toordinal() + day).replace(tzinfo=UTC)
            end = start.replace(hour=18)
            session = AddressBinding(IPv4Address(vpn + i), start.replace(hour=8), end)
        out.append(User(name, _frozen(labels), (session,)))
    groups = [
        UserGroup(group, tuple(names), _frozen({"role": role}))
        for role, group in group_of.items()
        if (names := members[group])
    ]
    return out, groups


# --------------------------------------------------------------------------------- policies


def _guardrails(
    rng: Random,
    apps: Sequence[_App],
    services: Mapping[str, Service],
) -> list[Policy]:
    """The security, access and platform tiers' policies (fixed, about 16)."""
    deny, allow, pass_, log = Action.DENY, Action.ALLOW, Action.PASS, Action.LOG

    def pol(
        name: str,
        tier: str,
        order: float,
        applies: Selector = ALL,
        ingress: Sequence[_R] | None = None,
        egress: Sequence[_R] | None = None,
    ) -> Policy:
        return Policy(
            name,
            tier,
            order,
            applies,
            PolicyMode.ENFORCE,
            _rules(ingress, services),
            _rules(egress, services),
        )

    quarantined = _sel_peer(_sel("has(quarantine)"))
    out = [
        pol("quarantine", "security", 10, ingress=[_R(deny, (quarantined,))],
            egress=[_R(deny, (quarantined,))]),
        pol("quarantine-self", "security", 11, _sel("has(quarantine)"),
            ingress=[_R(deny)], egress=[_R(deny)]),
    ]  # fmt: skip
    for env in ENVS:
        others = ", ".join(f'"{o}"' for o in ENVS if o != env)
        peer = _sel_peer(_sel(f"env in {{{others}}}"))
        out.append(
            pol(f"isolate-{env}", "security", 20, _sel(f'env == "{env}"'),
                ingress=[_R(deny, (peer,))], egress=[_R(deny, (peer,))])
        )  # fmt: skip
    pci_apps = [a for a in apps if a.pci]
    callers = [a for a in apps if not a.pci and a.name != "platform"]
    pci_rules = [_R(pass_, (Peer(PeerKind.SEGMENT, selector=_sel("has(pci)"), ref="pci"),))]
    for target in pci_apps:
        for caller in rng.sample(callers, min(2, len(callers))):
            pci_rules.append(
                _R(pass_, (_sel_peer(_ar(caller.name, "api", "prod")),), (target.api_service,))
            )
    pci_rules.append(_R(deny, description="Nothing else reaches PCI."))
    monitor = _sel_peer(_sel('role == "monitor"'))
    out += [
        pol("pci-guardrail", "security", 30, _sel("has(pci)"), ingress=pci_rules),
        pol("monitoring-targets", "security", 40, ingress=[_R(allow, (monitor,), ("metrics",))]),
        pol("monitoring-scrape", "security", 40, _sel('role == "monitor"'),
            egress=[_R(allow, (_sel_peer(_sel("has(app)")),), ("metrics",))]),
        pol("dns-clients", "security", 50,
            egress=[_R(allow, (_sel_peer(_sel('role == "dns"')),), ("dns", "ntp"))]),
        pol("dns-servers", "security", 50, _sel('role == "dns"'),
            ingress=[_R(allow, (_sel_peer(_sel("has(app)")),), ("dns", "ntp"))]),
        pol("deny-list", "security", 60,
            ingress=[_R(log, (_net_peer("bad-actors"),)),
                     _R(deny, (_cidr_peer(IPv4Network("198.51.100.0/24")),),
                        description="Known bad actors.")]),
        pol("hand-off", "security", 1000, ingress=[_R(pass_)], egress=[_R(pass_)]),
        pol("dba-access", "access", 1000, _sel('role == "db" && env == "prod"'),
            ingress=[_R(allow, (_users_peer('role == "dba"'),), ("postgres", "mysql"))]),
        pol("developer-access", "access", 1000, _sel('env == "dev"'),
            ingress=[_R(allow, (_users_peer('role == "developer"'),))]),
        pol("sre-access", "access", 1000, _sel('env != "prod" || role != "db"'),
            ingress=[_R(allow, (_users_peer('role == "sre"'),), ("ssh", "ping"))]),
        pol("dns-upstream", "platform", 1000, _sel('role == "dns"'),
            egress=[_R(allow, (_net_peer("internet"),), ("dns", "ntp"))]),
    ]  # fmt: skip
    return out


def _consumers(app: _App, role: str) -> tuple[tuple[str, ...], str | None]:
    """Which roles of the same app call ``role``, and the service they use."""
    has = set(app.roles)
    if role == "lb":
        return (), "https"
    if role == "web":
        return (("lb",), "http") if "lb" in has else ((), "https")
    if role == "api":
        return ("web",), app.api_service
    if role == "db":
        return tuple(r for r in ("api", "worker", "db") if r in has), app.db_service
    if role == "cache":
        return tuple(r for r in ("api", "worker") if r in has), app.cache_service
    if role == "queue":
        return tuple(r for r in ("api", "worker", "queue") if r in has), "kafka"
    if role == "search":
        return tuple(r for r in ("api", "search") if r in has), "search"
    return (), None  # worker, monitor, dns: nobody calls them within the app


def _base_policy(
    rng: Random, app: _App, role: str, tier: str, services: Mapping[str, Service]
) -> Policy:
    """Least privilege for one (app, role): ingress from its callers, egress to its callees,
    both written with selector peers on app && role."""
    allow = Action.ALLOW
    callers, service = _consumers(app, role)
    ingress: list[_R] = []
    if role in ("lb", "web") and not callers:
        ingress.append(_R(allow, (_net_peer("internet"),), ("https",)))
    for caller in callers:
        assert service is not None
        ingress.append(_R(allow, (_sel_peer(_ar(app.name, caller)),), (service,)))
    if role == "monitor":
        ingress.append(_R(allow, (_users_peer('role in {"developer", "sre"}'),), ("grafana",)))
    egress: list[_R] = []
    for callee in app.roles:
        if callee == role and role not in ("db", "queue", "search"):
            continue
        if role in _consumers(app, callee)[0]:
            callee_service = _consumers(app, callee)[1]
            assert callee_service is not None
            egress.append(_R(allow, (_sel_peer(_ar(app.name, callee)),), (callee_service,)))
    if role == "worker" and rng.random() < 0.5:
        egress.append(_R(allow, (_net_peer("internet"),), ("https",), description="Webhooks."))
    if rng.random() < 0.05:
        ingress.append(
            _R(allow, (_users_peer('role == "analyst"'),), ("https",),
               expires=datetime(2026, rng.randrange(1, 13), 1, tzinfo=UTC),
               description="Temporary access for an audit.")
        )  # fmt: skip
    # Workers and caches never accept connections, caches and dbs never open any: [] applies.
    return Policy(
        name=f"{app.name}-{role}",
        tier=tier,
        order=100,
        applies_to=_ar(app.name, role),
        ingress=_rules(ingress, services),
        egress=_rules(egress, services),
        description=f"Least privilege for {app.name} {role}.",
    )


def _extra_policy(
    rng: Random,
    serial: int,
    apps: Sequence[_App],
    tier_of: Mapping[str, str],
    services: Mapping[str, Service],
    networks: Sequence[str],
    enforcer_cidrs: Sequence[IPv4Network],
) -> Policy:
    """One more policy of a random flavour: env-specific, cross-app, staged, deny or log."""
    app = rng.choice(apps)
    role = rng.choice(app.roles)
    env = rng.choice(ENVS)
    tier = tier_of[app.name]
    allow, deny = Action.ALLOW, Action.DENY
    flavour = rng.choices(("env", "cross", "staged", "deny", "log"), (50, 30, 5, 10, 5))[0]
    name = f"{app.name}-{role}-{flavour}-{serial:05d}"
    applies = _ar(app.name, role, env)
    ingress: list[_R] | None = None
    egress: list[_R] | None = None
    mode = PolicyMode.ENFORCE
    order: float = rng.choice((50, 200, 500))
    if flavour == "env":
        ingress = []
        for _ in range(rng.randint(1, 4)):
            kind = rng.random()
            if kind < 0.4:
                other = rng.choice(apps)
                peer = _sel_peer(_ar(other.name, rng.choice(other.roles), env))
            elif kind < 0.6:
                peer = _net_peer(rng.choice(networks))
            elif kind < 0.8:
                peer = _cidr_peer(rng.choice(enforcer_cidrs))
            else:
                peer = _users_peer(f'role == "{rng.choice(_USER_ROLES)}"')
            refs: tuple[str, ...] = ()
            ports: tuple[str, ...] = ()
            if rng.random() < 0.6:
                refs = tuple(rng.sample(sorted(services), rng.randint(1, 2)))
            else:
                first = rng.randrange(1024, 60000)
                ports = (f"{rng.choice(('tcp', 'udp'))}/{first}-{first + rng.randrange(50)}",)
            expires = datetime(2027, rng.randrange(1, 13), 1, tzinfo=UTC) if (
                rng.random() < 0.05) else None  # fmt: skip
            ingress.append(_R(allow, (peer,), refs, ports, expires))
    elif flavour == "cross":
        target = rng.choice(apps)
        applies = _ar(app.name, "api") if "api" in app.roles else applies
        peer = _sel_peer(_ar(target.name, "api"))
        egress = [_R(allow, (peer,), (target.api_service,),
                     description=f"{app.name} calls the {target.name} API.")]  # fmt: skip
    elif flavour == "staged":
        mode, order = PolicyMode.STAGED, 10
        ingress = [
            _R(allow, (_net_peer("cdn"),), ("https",)),
            _R(deny, (_net_peer("internet"),), description="Planned: CDN only."),
        ]
    elif flavour == "deny":
        ingress = [_R(deny, (_cidr_peer(rng.choice(enforcer_cidrs)),), ("ssh",))]
        egress = [_R(deny, (_net_peer("legacy-dc"),))]
    else:
        ingress = [_R(Action.LOG, (), ("ssh",), description="Audit SSH.")]
    return Policy(
        name=name,
        tier=tier,
        order=order,
        applies_to=applies,
        mode=mode,
        ingress=_rules(ingress, services),
        egress=_rules(egress, services),
    )


# ------------------------------------------------------------------------------------ public


def generate_estate(
    seed: int,
    workloads: int = 10_000,
    policies: int = 1_000,
    enforcers: int = 100,
    *,
    apps: int = 100,
    users: int = 100,
    ipv6_fraction: float = 0.1,
) -> Repository:
    """A realistic repository, the same for the same arguments.

    ``workloads`` are spread evenly over ``enforcers`` (each gets ``workloads // enforcers``
    or one more); ``policies`` is exact when at least the ~16 guardrail policies fit (else
    the first ``policies`` guardrails). About ``ipv6_fraction`` of the workloads also get an
    IPv6 address. Raises ValueError when the workloads do not fit the address plan (more than
    about 80,000, or more than 254 per enforcer beyond 320 /24 blocks in total).

    Cost: linear in workloads + policies; about half a second for the defaults.
    """
    if min(workloads, policies, enforcers, apps, users) < 0:
        raise ValueError("counts must not be negative")
    rng = Random(seed)
    n_enf = max(1, min(enforcers, workloads)) if workloads else 0
    counts = [workloads // n_enf + (1 if e < workloads % n_enf else 0) for e in range(n_enf)]
    app_plan = _plan_apps(rng, max(1, apps))
    services = _plan_services(rng, app_plan)
    enforcer_plan = _plan_enforcers(rng, n_enf, counts)
    workload_list = _make_workloads(rng, app_plan, enforcer_plan, counts, ipv6_fraction)
    network_list = _make_networks()
    user_list, group_list = _make_users(rng, users)

    teams = sorted({a.team for a in app_plan})
    tiers = [
        Tier("security", 100, TierDefault.DENY, ("security-team",), "Guardrails."),
        Tier("access", 150, TierDefault.PASS, ("identity-team",), "Human access."),
        Tier("platform", 200, TierDefault.PASS, ("platform-team",), "Shared infrastructure."),
        *(Tier(f"apps-{t}", 300 + i, TierDefault.DENY, (t,)) for i, t in enumerate(teams)),
    ]
    tier_of = {a.name: f"apps-{a.team}" for a in app_plan}

    policy_list = _guardrails(rng, app_plan, services)[:policies]
    pairs = [(a, r) for a in app_plan for r in a.roles]
    rng.shuffle(pairs)
    for app, role in pairs[: max(0, policies - len(policy_list))]:
        policy_list.append(_base_policy(rng, app, role, tier_of[app.name], services))
    cidrs = [
        c for e, n in zip(enforcer_plan, counts, strict=True) for c in _enforcer_cidrs(e, n)
    ] or [IPv4Network("198.18.0.0/24")]
    net_names = [n.name for n in network_list]
    serial = 0
    while len(policy_list) < policies:
        serial += 1
        policy_list.append(
            _extra_policy(rng, serial, app_plan, tier_of, services, net_names, cidrs)
        )

    settings = Settings(
        failsafe=(
            FailsafeEntry(Direction.INGRESS, (_port("tcp/22"),), (ADDRESS_PLAN["admin"],)),
            FailsafeEntry(Direction.EGRESS, (_port("tcp/8443"),), (ADDRESS_PLAN["control-plane"],)),
        )
    )
    segments = [
        Segment("pci", _sel("has(pci)"), "Cardholder-data environment."),
        Segment("prod", _sel('env == "prod"')),
        Segment("non-prod", _sel('env in {"dev", "staging"}')),
        Segment("cloud", _sel('septum.io/kind == "cloud"')),
    ]

    def by_name(items: Iterable[Any]) -> tuple[Any, ...]:
        return tuple(sorted(items, key=lambda item: item.name))

    return Repository(
        workloads=by_name(workload_list),
        networks=by_name(network_list),
        services=by_name(services.values()),
        segments=by_name(segments),
        tiers=by_name(tiers),
        policies=by_name(policy_list),
        users=by_name(user_list),
        user_groups=by_name(group_list),
        settings=settings,
    )


# --------------------------------------------------------------------------- back to YAML

# The serializer is production code (``septum k8s import --out`` writes repositories too).
estate_documents = repository_documents
estate_yaml = repository_yaml


# ------------------------------------------------------------------- incremental changes


@dataclass(frozen=True, slots=True)
class LabelChange:
    """One label of one workload set (``new``) or removed (``new`` None). ``labels`` is the
    workload's complete label mapping after the change (implicit labels included), ready for
    ``LabelIndex.upsert_endpoint``. Changes of one list apply in order."""

    workload: str
    key: str
    old: str | None
    new: str | None
    labels: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class AddressChange:
    """Addresses of one workload changed: ``removed`` and ``added`` are disjoint, and
    ``addresses`` is the complete new binding tuple. Added addresses are held by nobody else
    (at any time) in the repository or in earlier changes of the same list."""

    workload: str
    removed: tuple[IPAddress, ...]
    added: tuple[IPAddress, ...]
    addresses: tuple[AddressBinding, ...]


Change = LabelChange | AddressChange


def label_changes(repo: Repository, seed: int, n: int) -> list[LabelChange]:
    """``n`` random single-label changes of random workloads: a new role, env, app (with its
    team), location, quarantine added or lifted, PCI scope toggled. Deterministic for
    (repo, seed, n). Reserved ``septum.io/`` labels are never touched. Cost: O(W + n)."""
    if not repo.workloads or n <= 0:
        return []
    rng = Random(seed)
    values: dict[str, list[str]] = {}
    for w in repo.workloads:
        for key in ("app", "role", "env", "loc"):
            if key in w.labels:
                values.setdefault(key, [])
                values[key].append(w.labels[key])
    choices = {k: sorted(set(v)) for k, v in values.items()}
    team_of = {w.labels["app"]: w.labels.get("team") for w in repo.workloads if "app" in w.labels}
    current: dict[str, dict[str, str]] = {}
    out: list[LabelChange] = []
    while len(out) < n:
        w = rng.choice(repo.workloads)
        labels = current.setdefault(w.name, dict(w.labels))
        key = rng.choice(("role", "role", "env", "app", "loc", "quarantine", "pci"))
        old = labels.get(key)
        new: str | None
        if key in ("quarantine", "pci"):
            new = None if old is not None else ("true" if key == "pci" else "incident-0001")
        else:
            options = [v for v in choices.get(key, []) if v != old]
            if not options:
                continue
            new = rng.choice(options)
        if new is None:
            del labels[key]
        else:
            labels[key] = new
        out.append(LabelChange(w.name, key, old, new, _frozen(labels)))
        if key == "app" and new is not None:
            team = team_of.get(new)
            if team is not None and labels.get("team") != team and len(out) < n:
                old_team = labels.get("team")
                labels["team"] = team
                out.append(LabelChange(w.name, "team", old_team, team, _frozen(labels)))
    return out


def address_changes(repo: Repository, seed: int, n: int) -> list[AddressChange]:
    """``n`` random single-workload address changes: renumber (replace the first address),
    add a secondary IPv4 or IPv6 address, or drop a secondary one. New addresses come from
    the free ranges of :data:`ADDRESS_PLAN`, skipping any address the repository uses.
    Deterministic for (repo, seed, n). Cost: O(W + n)."""
    if not repo.workloads or n <= 0:
        return []
    rng = Random(seed)
    used: set[IPAddress] = {b.address for w in repo.workloads for b in w.addresses}
    used.update(b.address for u in repo.users for b in u.sessions)
    v4 = int(ADDRESS_PLAN["free-v4"].network_address) + 1
    v6 = int(ADDRESS_PLAN["free-v6"].network_address) + 1
    v4_end = int(ADDRESS_PLAN["free-v4"].broadcast_address)

    def fresh(version: int) -> IPAddress:
        nonlocal v4, v6
        while True:
            candidate: IPAddress
            if version == 4:
                if v4 >= v4_end:
                    raise ValueError("the free IPv4 range of the address plan is exhausted")
                candidate, v4 = IPv4Address(v4), v4 + 1
            else:
                candidate, v6 = IPv6Address(v6), v6 + 1
            if candidate not in used:
                used.add(candidate)
                return candidate

    current: dict[str, tuple[AddressBinding, ...]] = {}
    out: list[AddressChange] = []
    for _ in range(n):
        w = rng.choice(repo.workloads)
        bindings = current.get(w.name, w.addresses)
        what = rng.choice(("renumber", "renumber", "add", "drop"))
        if what == "drop" and len(bindings) < 2:
            what = "renumber" if bindings else "add"
        if what == "renumber" and not bindings:
            what = "add"
        removed: tuple[IPAddress, ...] = ()
        added: tuple[IPAddress, ...] = ()
        if what == "renumber":
            first = bindings[0]
            new = fresh(first.address.version)
            removed, added = (first.address,), (new,)
            bindings = (replace(first, address=new), *bindings[1:])
        elif what == "add":
            new = fresh(6 if rng.random() < 0.3 else 4)
            added = (new,)
            bindings = (*bindings, AddressBinding(new))
        else:
            victim = bindings[rng.randrange(1, len(bindings))]
            removed = (victim.address,)
            bindings = tuple(b for b in bindings if b is not victim)
            if any(b.address == victim.address for b in bindings):
                removed = ()  # still held through another binding
        current[w.name] = bindings
        out.append(AddressChange(w.name, removed, added, bindings))
    return out


def apply_changes(repo: Repository, changes: Iterable[Change]) -> Repository:
    """``repo`` with the changes applied in order (the full-recompute reference for
    incremental tests). Cost: O(W + number of changes)."""
    workloads = {w.name: w for w in repo.workloads}
    for change in changes:
        w = workloads[change.workload]
        if isinstance(change, LabelChange):
            workloads[w.name] = replace(w, labels=change.labels)
        else:
            workloads[w.name] = replace(w, addresses=change.addresses)
    return replace(repo, workloads=tuple(workloads[name] for name in sorted(workloads)))
