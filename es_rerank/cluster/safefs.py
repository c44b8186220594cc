"""File-system steps that stay safe when es-rerank runs as root.

The node runs as a service user who owns its data, logs and run folders and may plant
symlinks there; root must never follow such a link, never change the owner of a folder
es-rerank did not create, and never write through a path another user controls. So:

- every open uses ``O_NOFOLLOW`` and every owner or mode change goes through a file
  descriptor of an object just created or just checked (``fchown``/``fchmod``), never
  a path that could be swapped, and never recursively;
- files are replaced by writing a new file beside them and renaming it over the old
  one, so a hard or soft link at the old name is unlinked, not written through;
- what es-rerank created under its folder is listed in a manifest file there
  (:data:`MANIFEST`), and only those entries are ever reused, rewritten or deleted.
"""

from __future__ import annotations

import errno
import os
import pwd
import shutil
import stat
from pathlib import Path

from ..errors import ClusterError

MANIFEST = ".es-rerank-created"
"""Names (relative to the cluster folder) of the entries es-rerank created there."""

_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC


def lstat_or_none(path: Path) -> os.stat_result | None:
    """``lstat`` that answers None for a missing path (a symlink is reported as one)."""
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def describe_owner(uid: int) -> str:
    """A user name for messages, or the number when it has no name."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def check_dir(path: Path, *, uid: int, what: str) -> None:
    """Require ``path`` to be a real directory (not a symlink) owned by ``uid``.

    Raises:
        ClusterError: It is missing, a symlink, not a directory, or owned by someone else.
    """
    st = lstat_or_none(path)
    if st is None:
        raise ClusterError(f"{what} {path} does not exist")
    if stat.S_ISLNK(st.st_mode):
        raise ClusterError(f"{what} {path} is a symlink; es-rerank never follows links in its folder: "
                           "remove the link")
    if not stat.S_ISDIR(st.st_mode):
        raise ClusterError(f"{what} {path} is not a directory")
    if st.st_uid != uid:
        raise ClusterError(f"{what} {path} is owned by {describe_owner(st.st_uid)}, expected "
                           f"{describe_owner(uid)}; es-rerank will not use or change it")


def make_dir(path: Path, *, mode: int, uid: int | None = None, gid: int | None = None) -> None:
    """Create one directory (never an existing one) and set its mode and owner through its fd.

    Args:
        path: The directory to create; its parent must exist.
        mode: Permission bits, applied exactly (the umask does not apply).
        uid: New owner. Defaults to leaving the creator as owner.
        gid: New group. Defaults to leaving the group as created.

    Raises:
        ClusterError: Something already exists at ``path`` (a symlink included).
    """
    try:
        os.mkdir(path, 0o700)
    except FileExistsError as e:
        raise ClusterError(f"{path} already exists; es-rerank did not create it and will not use it") from e
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW)
    try:
        if uid is not None or gid is not None:
            os.fchown(fd, -1 if uid is None else uid, -1 if gid is None else gid)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def write_file(path: Path, data: bytes, *, mode: int, uid: int | None = None, gid: int | None = None) -> None:
    """Write ``data`` to a new file beside ``path`` and rename it over ``path``.

    Whatever was at ``path`` (a file, a symlink, a hard link to another file) is
    replaced as a directory entry and never written through. The parent folder must
    be one that only the caller can write to.
    """
    tmp = path.with_name(f".{path.name}.es-rerank-tmp")
    if lstat_or_none(tmp) is not None:
        os.unlink(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if uid is not None or gid is not None:
            os.fchown(fd, -1 if uid is None else uid, -1 if gid is None else gid)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_text(path: Path, *, limit: int = 1 << 20) -> str | None:
    """Read a regular file without following a symlink at its name; None when absent.

    A symlink, FIFO, device or directory at ``path`` reads as None: a file another user
    controls must not make root read (and show) some other file.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | _NOFOLLOW)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR, errno.EACCES, errno.ENXIO):
            return None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        if st.st_size > limit:
            os.lseek(fd, st.st_size - limit, os.SEEK_SET)
        chunks = []
        while True:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks).decode("utf-8", errors="replace")
    finally:
        os.close(fd)


def remove_entry(path: Path) -> bool:
    """Unlink a file or symlink (never its target); False when nothing was there.

    Raises:
        ClusterError: ``path`` is a directory.
    """
    st = lstat_or_none(path)
    if st is None:
        return False
    if stat.S_ISDIR(st.st_mode):
        raise ClusterError(f"{path} is a directory where a file was expected; not removing it")
    os.unlink(path)
    return True


def remove_tree(path: Path) -> None:
    """Delete a directory tree es-rerank created, without following any symlink in it."""
    if not shutil.rmtree.avoids_symlink_attacks:  # pragma: no cover - Linux has fd-based rmtree
        raise ClusterError("this platform's shutil.rmtree can follow symlinks; refusing to delete "
                           f"{path}")
    check_dir(path, uid=os.geteuid(), what="folder to delete")
    shutil.rmtree(path)


def sync_tree(src: Path, dst: Path, *, dir_mode: int, file_mode: int, gid: int | None = None,
              skip: frozenset[str] = frozenset()) -> None:
    """Copy the regular files and folders of ``src`` over ``dst``, creating what is missing.

    Existing folders in ``dst`` must be real folders of the current user; files are
    replaced (never written through). Symlinks and special files in ``src`` are skipped.

    Args:
        src: A folder the current user owns (a distribution's ``config``).
        dst: The folder to update; created when missing.
        dir_mode: Mode of created folders.
        file_mode: Mode of written files.
        gid: Group of created folders and written files. Defaults to the creator's.
        skip: File names (at any depth) not to copy.
    """
    if lstat_or_none(dst) is None:
        make_dir(dst, mode=dir_mode, gid=gid)
    check_dir(dst, uid=os.geteuid(), what="folder")
    for entry in sorted(os.scandir(src), key=lambda e: e.name):
        if entry.name in skip:
            continue
        if entry.is_dir(follow_symlinks=False):
            sync_tree(Path(entry.path), dst / entry.name, dir_mode=dir_mode, file_mode=file_mode, gid=gid, skip=skip)
        elif entry.is_file(follow_symlinks=False):
            write_file(dst / entry.name, Path(entry.path).read_bytes(), mode=file_mode, gid=gid)


# -- the manifest of what es-rerank created ------------------------------------------

def created_entries(home: Path) -> set[str]:
    """Names listed in the manifest of ``home`` (empty when there is none)."""
    text = read_text(home / MANIFEST)
    if text is None:
        return set()
    return {line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")}


def record_created(home: Path, name: str) -> None:
    """Add ``name`` to the manifest of ``home`` (rewritten atomically, mode 0644)."""
    names = created_entries(home) | {name}
    body = "# entries es-rerank created in this folder; only these are reused or deleted\n"
    body += "".join(f"{n}\n" for n in sorted(names))
    write_file(home / MANIFEST, body.encode(), mode=0o644)


def require_created(home: Path, name: str, *, uid: int) -> bool:
    """Whether ``home/name`` exists as a folder es-rerank created; False when absent.

    Raises:
        ClusterError: Something is at ``home/name`` that es-rerank did not create, or
            it became a symlink, a file, or another user's folder.
    """
    path = home / name
    st = lstat_or_none(path)
    if st is None:
        return False
    if name not in created_entries(home):
        raise ClusterError(
            f"{path} exists but es-rerank did not create it (it is not listed in {home / MANIFEST}); "
            "es-rerank will not use, change or delete it: move it away (a folder left by an older "
            "es-rerank can simply be deleted) or choose another ES_RERANK_CLUSTER_DIR"
        )
    check_dir(path, uid=uid, what="cluster entry")
    return True


# -- the cluster folder itself ----------------------------------------------------------

def prepare_home(home: Path, *, reader_uid: int | None = None) -> bool:
    """Create the cluster folder, or check that an existing one is safe to work in.

    The folder must be a real directory (not a symlink) owned by the current user and
    writable by nobody else; es-rerank never changes its owner or mode. When
    ``reader_uid`` is given (root runs the node as that service user), every folder
    above must also be owned by root or the current user and writable by nobody else
    (sticky folders such as /tmp excepted), and the service user must be able to pass
    through each of them.

    Args:
        home: The cluster folder (absolute).
        reader_uid: The service user's uid when the node runs as one. Defaults to none.

    Returns:
        True when this call created the folder.

    Raises:
        ClusterError: The folder or a folder above it fails one of the checks (the
            message names the folder and what to do).
    """
    euid = os.geteuid()
    if reader_uid is not None:
        _check_ancestors(home, euid=euid, reader_uid=reader_uid)
    created = False
    if lstat_or_none(home) is None:
        for folder in [*reversed(home.parents), home]:
            if lstat_or_none(folder) is None:
                make_dir(folder, mode=0o755)
        record_created(home, ".")
        created = True
    check_dir(home, uid=euid, what="cluster folder (ES_RERANK_CLUSTER_DIR)")
    mode = stat.S_IMODE(os.lstat(home).st_mode)
    if mode & 0o022:
        raise ClusterError(f"cluster folder {home} is writable by other users (mode {mode:04o}); "
                           f"run `chmod go-w {home}` or choose another ES_RERANK_CLUSTER_DIR")
    if reader_uid is not None and not mode & 0o001:
        raise ClusterError(f"cluster folder {home} (mode {mode:04o}) cannot be entered by the service user "
                           f"{describe_owner(reader_uid)}; run `chmod o+x {home}` or choose another "
                           "ES_RERANK_CLUSTER_DIR")
    return created


def _check_ancestors(home: Path, *, euid: int, reader_uid: int) -> None:
    parent = Path(os.path.realpath(home.parent))
    for folder in [*reversed(parent.parents), parent]:
        st = lstat_or_none(folder)
        if st is None:
            continue  # created below by root, with mode 0755
        mode = stat.S_IMODE(st.st_mode)
        if st.st_uid not in (0, euid):
            raise ClusterError(f"{folder}, above the cluster folder {home}, is owned by "
                               f"{describe_owner(st.st_uid)}: that user could swap the cluster folder; "
                               "choose an ES_RERANK_CLUSTER_DIR under folders owned by root")
        if mode & 0o022 and not mode & stat.S_ISVTX:
            raise ClusterError(f"{folder}, above the cluster folder {home}, is writable by other users "
                               f"(mode {mode:04o}); choose another ES_RERANK_CLUSTER_DIR")
        if st.st_uid != reader_uid and not mode & 0o001:
            raise ClusterError(f"the service user {describe_owner(reader_uid)} cannot enter {folder} "
                               f"(mode {mode:04o}), above the cluster folder {home}; choose an "
                               "ES_RERANK_CLUSTER_DIR outside it, e.g. /var/lib/es-rerank")
