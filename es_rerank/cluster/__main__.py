"""``python3 -m es_rerank.cluster start``: start the local node with the standard library only.

The quick start runs this from the source tree beside ``pip install`` (nothing of es-rerank's
dependencies is installed yet), so that the node's download and start overlap the install.
``es-rerank cluster start`` is the same start for everyone else. It reads the same
``ES_RERANK_CLUSTER_*`` variables and prints one line: what started, where, in how long, and
what it fetched.

Example:
    $ PYTHONPATH=. python3 -m es_rerank.cluster start
    Elasticsearch 9.2.8 up at http://127.0.0.1:9200 in 41.0 s (fetched 100 MB from Maven Central; cluster folder 142 MB)
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from ..errors import ClusterError
from . import maven
from .distributions import DISTRIBUTIONS
from .local import LocalCluster


def _mb(n: int) -> str:
    return f"{n / 1e6:.0f} MB"


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink()) \
        if path.is_dir() else 0


def _archives(cluster: LocalCluster) -> list[Path]:
    """Where the engine's zip sits in the local Maven repository once fetched."""
    engine = DISTRIBUTIONS[cluster.engine]
    group, artifact, version, packaging = engine.coordinates(cluster.version).split(":")
    return [maven.local_repository().joinpath(*group.split("."), artifact, version, f"{artifact}-{version}.{packaging}")]


def start(engine: str | None, port: int | None, timeout: float) -> str:
    """Start the node (a no-op when it runs) and describe it in one line."""
    cluster = LocalCluster(engine=engine, port=port)
    fetched = [a for a in _archives(cluster) if not a.is_file()]
    started = time.monotonic()
    url = cluster.start(timeout=timeout)
    seconds = time.monotonic() - started
    got = sum(a.stat().st_size for a in fetched if a.is_file())
    what = f"fetched {_mb(got)} from Maven Central; " if got else ""
    return (f"{DISTRIBUTIONS[cluster.engine].display} {cluster.version} up at {url} in {seconds:.1f} s "
            f"({what}cluster folder {_mb(_size(cluster.home))})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m es_rerank.cluster",
                                     description="Start the local node (standard library only).")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("start", help="Fetch (once) and start the local node; a no-op when it already runs.")
    p.add_argument("--engine", choices=sorted(DISTRIBUTIONS), default=None,
                   help="default: ES_RERANK_CLUSTER_ENGINE, else elasticsearch")
    p.add_argument("--port", type=int, default=None, help="default: ES_RERANK_CLUSTER_PORT, else the engine's")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for health (default 180)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        print(start(args.engine, args.port, args.timeout), flush=True)
    except ClusterError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
