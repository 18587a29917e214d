"""An exclusive lock on a run directory, so two jobs never write the same checkpoints and metrics.

The lock is the file DIR/.lock, held with flock() and describing its holder as JSON (pid, host, start time):

- Same machine: the kernel drops a flock when its holder dies, however it dies, so a lock whose flock can be
  taken is stale; the holder's pid and process start time (from /proc, which tells a reused pid apart) are
  checked as well, in case the filesystem does not support flock.
- Shared filesystem, other machine: NFSv4 and Lustre/GPFS with locking enabled carry flock between machines. Where
  a filesystem keeps flocks per machine, the holder's heartbeat decides: a background thread touches the file every
  HEARTBEAT seconds while the lock is held, and a lock from another host is only taken over once its heartbeat is
  older than STALE_AFTER.

Releasing empties the file rather than deleting it: deleting would let a process that opened the old file keep a
lock that a newer process, on a new file, does not see.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import threading
import time
from pathlib import Path

from core.errors import ConfigError

LOCK_FILE = ".lock"
HEARTBEAT = 30.0  # seconds between touches of the lock file while held
STALE_AFTER = 300.0  # a lock from another host without a heartbeat for this long is abandoned


def _start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22); None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def process_alive(pid: int, start_ticks: int | None = None) -> bool:
    """True when process `pid` exists on this machine and, when known, started at `start_ticks` (not a reuse)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    return start_ticks is None or _start_ticks(pid) in (None, start_ticks)


def describe(holder: dict) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
    return f"pid {holder.get('pid')} on host {holder.get('host')}, started {started}"


class DirectoryLock:
    """Hold DIR/.lock for the life of a run: `acquire()` raises ConfigError naming the holder (`key` is the config
    key or flag the directory came from); `release()` is idempotent."""

    def __init__(self, directory: str | Path, key: str = "train.out_dir"):
        self.directory, self.key = Path(directory), key
        self.path = self.directory / LOCK_FILE
        self._fd: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.took_over: dict | None = None  # the stale holder replaced, if any

    def acquire(self) -> DirectoryLock:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise ConfigError(f"{self.key} {self.directory} cannot be written: {e.strerror}") from None
        try:
            self._claim(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._thread = threading.Thread(target=self._beat, name="run-dir-lock", daemon=True)
        self._thread.start()
        return self

    def _claim(self, fd: int) -> None:
        flock_works = True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise self._busy(self._read(fd)) from None
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            flock_works = False  # decide from the holder's description alone
        holder = self._read(fd)
        if holder:
            here = holder.get("host") == socket.gethostname()
            alive = here and process_alive(int(holder.get("pid", -1)), holder.get("start_ticks"))
            # Alive with the flock free: flock is unsupported here, or the record is this very process's own.
            if alive and (holder.get("pid") != os.getpid() or not flock_works):
                raise self._busy(holder)
            if not here and time.time() - os.fstat(fd).st_mtime < STALE_AFTER:
                raise self._busy(holder, f"its heartbeat is younger than {STALE_AFTER:.0f} s")
            self.took_over = holder
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
              "start_ticks": _start_ticks(os.getpid())}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        os.fsync(fd)

    def _busy(self, holder: dict, why: str = "") -> ConfigError:
        who = describe(holder) if holder else "a process that has not written its details yet"
        because = f" ({why})" if why else ""
        return ConfigError(f"{self.key} {self.directory} is in use by another run: {who}{because}; wait for it to "
                           f"finish or choose another {self.key} (lock file {self.path})")

    @staticmethod
    def _read(fd: int) -> dict:
        """The holder's description; {} when empty or torn (a holder killed while writing it)."""
        try:
            data = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        except (ValueError, UnicodeDecodeError):
            return {}
        return data if isinstance(data, dict) else {}

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT):
            with contextlib.suppress(OSError):  # a heartbeat is advisory; the flock is the lock
                os.utime(self.path)

    def release(self) -> None:
        if self._fd is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with contextlib.suppress(OSError):  # a read-only filesystem: the flock still goes with the descriptor
            os.ftruncate(self._fd, 0)
        os.close(self._fd)
        self._fd = None
