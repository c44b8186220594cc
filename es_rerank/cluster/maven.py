"""Artifacts from Maven Central: the local Maven repository first, else ``mvn dependency:copy``."""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
from pathlib import Path

from ..errors import ClusterError

logger = logging.getLogger(__name__)


def local_repository(env: dict[str, str] | None = None) -> Path:
    """The local Maven repository mvn uses: ``-Dmaven.repo.local=`` in ``MAVEN_OPTS``, else ``~/.m2/repository``.

    Args:
        env: The environment to read. Defaults to ``os.environ``.
    """
    env = os.environ if env is None else env
    try:
        opts = shlex.split(env.get("MAVEN_OPTS", ""))
    except ValueError:  # unbalanced quotes: mvn would fail on them too; fall back to the default
        opts = []
    for opt in reversed(opts):
        if opt.startswith("-Dmaven.repo.local=") and opt.partition("=")[2]:
            return Path(opt.partition("=")[2]).expanduser()
    return Path.home() / ".m2" / "repository"


def fetch(coordinates: str, workdir: Path) -> Path:
    """Return a local file for ``group:artifact:version:packaging``.

    A copy already in the local Maven repository is used in place; otherwise
    ``mvn`` downloads it (into its repository) and copies it into ``workdir``.

    Args:
        coordinates: ``group:artifact:version:packaging``.
        workdir: An empty folder the caller owns and deletes afterwards.

    Raises:
        ClusterError: The coordinates are malformed, mvn is missing, or the artifact
            could not be fetched (the message carries mvn's last lines).
    """
    parts = coordinates.split(":")
    if len(parts) != 4 or not all(parts):
        raise ClusterError(f"Maven coordinates must be group:artifact:version:packaging, got {coordinates!r}")
    group, artifact, version, packaging = parts
    cached = local_repository().joinpath(*group.split("."), artifact, version, f"{artifact}-{version}.{packaging}")
    if cached.is_file():
        logger.info("using %s from the local Maven repository", coordinates)
        return cached
    if shutil.which("mvn") is None:
        raise ClusterError(f"Maven (mvn) is needed to fetch {coordinates} from Maven Central; install it")
    logger.info("fetching %s with mvn", coordinates)
    cmd = ["mvn", "-q", "-B", "dependency:copy", f"-Dartifact={coordinates}",
           f"-DoutputDirectory={workdir}", "-Dmdep.overWriteIfNewer=true"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=workdir, stdin=subprocess.DEVNULL)
    found = workdir / f"{artifact}-{version}.{packaging}"
    if proc.returncode != 0 or not found.is_file():
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
        raise ClusterError(f"could not fetch {coordinates} from Maven Central (mvn exit {proc.returncode}):\n{tail}")
    return found
