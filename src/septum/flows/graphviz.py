"""Graphviz at the edge: DOT text (``septum.render.graph.map_to_dot``) to SVG with the ``dot``
binary (Debian package ``graphviz``).

::

    DOT text ──► dot -K<engine> -Tsvg (stdin → stdout, with a timeout) ──► SVG text
                        │ missing, failing or too slow
                        ▼
                  GraphvizError (what to install, or dot's own stderr)
"""

from __future__ import annotations

import subprocess

from septum.errors import SeptumError

__all__ = ["ENGINES", "GraphvizError", "render_svg"]

#: Layout engines Graphviz ships (``dot -K``).
ENGINES = frozenset({"dot", "neato", "fdp", "sfdp", "circo", "twopi", "osage", "patchwork"})


class GraphvizError(SeptumError):
    """Graphviz is missing, rejected the DOT text, or took too long."""


def render_svg(
    dot_text: str,
    engine: str = "dot",
    *,
    timeout: float = 60.0,
    binary: str = "dot",
) -> str:
    """SVG text of ``dot_text`` laid out by ``engine``. Runs ``binary -K<engine> -Tsvg``
    (no shell), feeding the DOT text on stdin; costs one process and Graphviz's layout time
    (roughly quadratic in edges for ``dot``), bounded by ``timeout`` seconds.

    Raises :class:`GraphvizError` when the engine is not one Graphviz ships, the binary is
    missing ("install the Debian package graphviz"), it exits non-zero (its stderr is in
    the message) or it runs past the timeout (it is killed).
    """
    if engine not in ENGINES:
        raise GraphvizError(
            f"unknown Graphviz layout engine {engine!r} (one of {', '.join(sorted(ENGINES))})"
        )
    try:
        done = subprocess.run(
            [binary, f"-K{engine}", "-Tsvg"],
            input=dot_text.encode("utf-8"),
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as e:
        raise GraphvizError(
            f"Graphviz {binary!r} not found: install the Debian package graphviz "
            "(apt-get install graphviz)"
        ) from e
    except PermissionError as e:
        raise GraphvizError(f"Graphviz {binary!r} cannot be run: {e}") from e
    except subprocess.TimeoutExpired as e:
        raise GraphvizError(
            f"Graphviz {binary!r} took longer than {timeout:g} s to lay out the graph "
            f"(engine {engine}); try a coarser granularity or another engine"
        ) from e
    if done.returncode != 0:
        stderr = done.stderr.decode("utf-8", errors="replace").strip()
        raise GraphvizError(
            f"Graphviz {binary!r} failed (exit status {done.returncode}): "
            + (stderr or "no message on stderr")
        )
    return done.stdout.decode("utf-8", errors="replace")
