"""Finding and signalling a node process only when it is provably ours.

A pid file alone proves nothing: after a reboot or a crash its number may belong to
any process, root's included. A process counts as our node only when, read from
``/proc/<pid>``, it runs the engine's main class, carries the node's own tag
(``-Des_rerank.node=<node folder>``, set by es-rerank in the JVM options) as an exact
argument, and belongs to the user the node runs as. Signals go through a pidfd opened
before the check, so a number reused in between cannot redirect them.
"""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

NODE_TAG = "-Des_rerank.node="
"""JVM option that names the node folder in the node's command line."""


@dataclass(frozen=True)
class NodeIdentity:
    """What a process must show to be the node started from ``node_dir``.

    Attributes:
        main_class: The engine's main class, an exact command-line argument (ES adds a
            module prefix: ``org.elasticsearch.server/org.elasticsearch.bootstrap.Elasticsearch``).
        node_dir: The node folder named by the tag.
        uid: The user the node runs as.
    """

    main_class: str
    node_dir: Path
    uid: int

    @property
    def tag(self) -> str:
        return f"{NODE_TAG}{self.node_dir}"

    def matches(self, pid: int) -> bool:
        """Whether ``pid`` is this node now (False for a missing or unreadable process)."""
        try:
            owner = os.stat(f"/proc/{pid}").st_uid
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                argv = fh.read().split(b"\0")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            return False
        args = {a.decode("utf-8", errors="replace") for a in argv}
        main_ok = self.main_class in args or any(a.endswith(f"/{self.main_class}") for a in args)
        return owner == self.uid and main_ok and self.tag in args

    def find(self) -> list[int]:
        """Pids of running processes that match, found by scanning /proc."""
        pids = []
        for entry in os.scandir("/proc"):
            if entry.name.isdigit() and self.matches(int(entry.name)):
                pids.append(int(entry.name))
        return sorted(pids)


def read_pid(text: str | None) -> int | None:
    """The pid in a pid file's text, or None when it holds no positive integer."""
    if text is None:
        return None
    text = text.strip()
    if not text.isdigit() or len(text) > 10:
        return None
    pid = int(text)
    return pid if pid > 1 else None


def terminate(pid: int, identity: NodeIdentity, *, timeout: float) -> bool:
    """Stop ``pid`` if, and only if, it is the node ``identity`` describes.

    Sends SIGTERM, waits up to ``timeout`` seconds, then SIGKILL.

    Returns:
        True when the process was ours and is gone; False when it was not ours (or
        already gone), in which case nothing was signalled.
    """
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    try:
        if not identity.matches(pid):
            return False
        logger.info("stopping node pid %d (%s)", pid, identity.node_dir)
        signal.pidfd_send_signal(pidfd, signal.SIGTERM)
        if _wait_gone(pidfd, timeout):
            return True
        logger.warning("node pid %d still running after %.0f s; sending SIGKILL", pid, timeout)
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        if not _wait_gone(pidfd, 30.0):
            raise OSError(f"node pid {pid} survived SIGKILL for 30 s")
        return True
    finally:
        os.close(pidfd)


def _wait_gone(pidfd: int, timeout: float) -> bool:
    import select

    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    # a pidfd becomes readable when the process exits (reaped by init, not by us)
    return bool(poller.poll(max(0.0, timeout) * 1000))


def alive(pid: int) -> bool:
    """Whether a process with this number is running (of any user; a zombie awaiting its reaper is not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rsplit(b")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in (b"Z", b"X")
