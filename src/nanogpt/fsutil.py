"""Writing files safely: atomic replacement, no writing through symbolic links, one owner per run folder.

Every file a command writes into a run folder (or an export folder) goes through here, so that
a crash leaves the old file or the new one, a symbolic link planted where a file belongs is
refused instead of followed, two trainings never share a folder, and an OS error (full disk,
read-only folder, a file where a folder belongs) becomes one line naming the path.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import IO

from nanogpt.errors import NanoGPTError

LOCK_NAME = ".lock"

_REASONS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EEXIST: "a file is in the way",
    errno.ELOOP: "it is a symbolic link, which is never written through",
    errno.EISDIR: "it is a folder",
}


def user_cache_dir() -> Path:
    """nanogpt's folder in the user's cache: $XDG_CACHE_HOME/nanogpt, by default ~/.cache/nanogpt."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nanogpt"


def os_error(e: OSError, doing: str, path: str | Path, advice: str) -> NanoGPTError:
    """One line for an OS error: ``cannot DOING PATH: REASON; ADVICE``."""
    reason = _REASONS.get(e.errno or -1) or (e.strerror or str(e))
    return NanoGPTError(f"cannot {doing} {path}: {reason}; {advice}")


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (where the platform allows opening a folder)."""
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def refuse_symlink(path: Path) -> None:
    """Raise a one-line error if ``path`` is a symbolic link (whatever it points to)."""
    if path.is_symlink():
        raise NanoGPTError(f"refusing to write {path}: it is a symbolic link, which is never written through; "
                           "remove the link or write somewhere else")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: readers see the old file or the new one, never half.

    The new file is renamed over the old name, so a symbolic link there is replaced, never
    followed (and refused up front, so that nobody is surprised by the replacement).
    """
    refuse_symlink(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def open_append(path: Path) -> IO[str]:
    """Open ``path`` to append text, creating it; a symbolic link there is refused (O_NOFOLLOW)."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(str(path), flags, 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP or path.is_symlink():
            refuse_symlink(path)
        raise
    return os.fdopen(fd, "a", encoding="utf-8")


class RunLock:
    """An exclusive lock on a run folder (``flock`` on ``FOLDER/.lock``, which holds the owner's pid).

    The kernel releases a ``flock`` when its process dies, however it dies, so a lock left by a
    killed run is simply taken over by the next one. The lock file itself is never deleted
    (deleting it would let two processes lock two different files of the same name).
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        """Take the lock or raise one line naming the pid that holds it."""
        import fcntl

        advice = "pick another --out-dir"
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise NanoGPTError(f"--run.out_dir {self.folder} is a file, not a folder; {advice}") from None
        except OSError as e:
            raise os_error(e, "create the run folder", self.folder, advice) from None
        try:
            fd = os.open(str(self.path), os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as e:
            raise os_error(e, "lock the run folder by writing", self.path, f"make {self.folder} writable or {advice}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise NanoGPTError(f"{self.folder} is in use by another training (pid {holder}); wait for it to "
                               f"finish, stop it, or {advice}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Give the lock back (closing the file releases the flock); a second call does nothing."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
