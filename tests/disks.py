"""Small real filesystems for the tests: a tmpfs the test mounts, fills, remounts and unmounts."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def mount_tmpfs(where: Path, options: str) -> None:
    """Mount a tmpfs with *options* (``size=1m``) at *where*; skip the test where mounting is not allowed."""
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")


@contextmanager
def tmpfs(where: Path, options: str) -> Iterator[Path]:
    """*where* on a tmpfs for the block, unmounted after (however often the test mounted it again)."""
    mount_tmpfs(where, options)
    try:
        yield where
    finally:
        for _ in range(3):
            if not os.path.ismount(where):
                break
            subprocess.run(["umount", "-l", str(where)], check=False)


def fill(folder: Path) -> Path:
    """Take every free block of *folder*'s filesystem with one file; returns it (delete it for room)."""
    filler = folder / ".filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass  # ENOSPC: full
    finally:
        os.close(fd)
    return filler
