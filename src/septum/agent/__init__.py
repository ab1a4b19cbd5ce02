"""The host agent: applies an enforcer's ruleset to the kernel and records flows.

```
 source (repository dir) ──► compile (pure core) ──► NftBackend (one atomic transaction)
        │                                   │                 │
        └── unreachable? restore StateStore ┘                 └─► conntrack: cut revoked flows
 nflog + conntrack events ──► FlowRecorder ──► flow records (JSON lines)
```

Everything here touches the world (files, subprocesses, netlink); each port is a small
``Protocol`` with a real implementation and a fake in ``septum.testing``.
"""
