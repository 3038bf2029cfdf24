"""One writer per bundle: `.lock` holds the writer's pid, host, command and start time.

A second writer gets BundleLockedError naming the holder; a lock whose process is dead on this
host (or that cannot be read) is taken over, since no one else can release it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from medqwen_cli.bundle.manifest import LOCK_FILE, now
from medqwen_cli.errors import BundleLockedError


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def bundle_lock(root: Path, command: str = "") -> Iterator[None]:
    """Exclusive write lock: a second writer gets BundleLockedError; a dead holder's lock is taken over."""
    lock = root / LOCK_FILE
    me = {"pid": os.getpid(), "host": socket.gethostname(), "command": command, "since": now()}
    for _attempt in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(lock.read_text() or "{}")
            except (OSError, json.JSONDecodeError):
                holder = {}
            stale = holder.get("host") == me["host"] and not _pid_alive(
                int(holder.get("pid", 0) or 0)
            )
            if stale or not holder:
                with contextlib.suppress(FileNotFoundError):
                    lock.unlink()
                continue
            raise BundleLockedError(
                f"bundle {root} is locked by process {holder.get('pid')} on {holder.get('host')} "
                f"({holder.get('command') or 'unknown command'}, since {holder.get('since')})",
                "wait for that command to finish; if it is gone on another host, delete "
                f"{lock} by hand",
            ) from None
        with os.fdopen(fd, "w") as fh:
            json.dump(me, fh)
        break
    else:  # pragma: no cover - two stale takeovers in a row
        raise BundleLockedError(f"could not take the lock of {root}", "retry the command")
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
