"""The desktop search bars on a large index: what GNOME Shell and KRunner wait for, per key press.

Builds the search bench's index (``bench/search.py``: 100,000 images, words
and vectors) over real files (one small JPEG, hard-linked 100,000 times, so
the provider's "still on disk" check and its thumbnails are real), starts
the daemon (``run --role watch``: it answers searches warm), a session bus
of its own and the provider the bus starts from the files ``install-service
--desktop`` writes. Then, over one connection, as a shell keeps one:

- GNOME Shell: GetInitialResultSet, then GetResultMetas for the 5 it shows;
- KRunner: Match (its thumbnails as icons);

each query once cold (thumbnails made on the way) and its best of five warm;
then the same with the daemon stopped (the provider searches the index
itself, by words).

    python bench/desktop.py                 # ~3 min on 2 CPU cores
    python bench/desktop.py --images 20000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus
from PIL import Image

from bench.search import add_vectors, build, wait_for_daemon
from daemon.desktop import files
from daemon.desktop.files import BUS_NAME, GNOME_PATH, KRUNNER_PATH
from daemon.index.db import Database
from daemon.service.unit import current_argv
from daemon.testing.helpers import CORPUS, minilm_folder, write_toml

QUERIES = ["photo", "red car", "label:dog", "bicycle37", "text:invoice", "puppy on a couch"]
GNOME_SHOWS = 5  # MAX_LIST_SEARCH_RESULTS_ROWS in GNOME Shell's search.js


async def _call(bus: MessageBus, path: str, iface: str, member: str, signature: str, *body: Any) -> Any:
    msg = Message(destination=BUS_NAME, path=path, interface=iface, member=member, signature=signature, body=list(body))
    reply = await bus.call(msg)
    if reply is None or reply.message_type == MessageType.ERROR:
        raise SystemExit(f"{member} failed: {reply and reply.body}")
    return reply.body[0] if reply.body else None


async def gnome(bus: MessageBus, query: str) -> int:
    ids = await _call(bus, GNOME_PATH, "org.gnome.Shell.SearchProvider2", "GetInitialResultSet", "as", query.split())
    await _call(bus, GNOME_PATH, "org.gnome.Shell.SearchProvider2", "GetResultMetas", "as", ids[:GNOME_SHOWS])
    return len(ids)


async def krunner(bus: MessageBus, query: str) -> int:
    return len(await _call(bus, KRUNNER_PATH, "org.kde.krunner1", "Match", "s", query))


async def measure(address: str, label: str) -> None:
    bus = await MessageBus(bus_address=address).connect()
    try:
        print(f"\n{label}")
        print(f"{'query':<22} {'hits':>4} {'GNOME cold':>11} {'warm ms':>8} {'KRunner cold':>13} {'warm ms':>8}")
        worst = 0.0
        for query in QUERIES:
            row = []
            for shell in (gnome, krunner):
                times = []
                for _ in range(6):
                    started = time.perf_counter()
                    hits = await shell(bus, query)
                    times.append((time.perf_counter() - started) * 1000)
                row.append((hits, times[0], min(times[1:])))
                worst = max(worst, *times)
            (hits, g_cold, g_warm), (_, k_cold, k_warm) = row
            print(f"{query!r:<22} {hits:>4} {g_cold:>11.1f} {g_warm:>8.1f} {k_cold:>13.1f} {k_warm:>8.1f}")
        print(f"slowest answer: {worst:.0f} ms")
    finally:
        bus.disconnect()


def _files(db: Database, root: Path) -> None:
    """One small JPEG behind every indexed path: hard links to one copy per folder (a file takes at most
    65,000 links on ext4), so 100,000 files cost a few hundred files' bytes."""
    from sqlalchemy import text

    master = root / "master.jpg"
    Image.open(CORPUS / "pillow/hopper.jpg").save(master)
    with db.transaction() as s:
        paths = list(s.scalars(text("SELECT path FROM files")))
    for path in paths:
        folder = os.path.dirname(path)
        if not os.path.isdir(folder):
            os.makedirs(folder)
            shutil.copyfile(master, os.path.join(folder, ".master.jpg"))
        os.link(os.path.join(folder, ".master.jpg"), path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100_000)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="fw-bench-desktop-"))
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "DBUS_SESSION_BUS_ADDRESS")}
    for kind in ("DATA", "CONFIG", "CACHE", "STATE", "RUNTIME"):
        env[f"XDG_{kind}{'' if kind == 'RUNTIME' else '_HOME'}"] = str(home / kind.lower())
        (home / kind.lower()).mkdir()
    os.environ.update(env)
    url = f"sqlite:///{home / 'index.db'}"
    db = Database(url)
    started = time.perf_counter()
    build(db, args.images, root=str(home / "photos"))
    add_vectors(db, str(minilm_folder()))
    _files(db, home)
    db.close()
    print(f"built an index of {args.images:,} images, with files and vectors, in {time.perf_counter() - started:.0f} s")
    cfg = write_toml(
        home / "config.toml",
        {
            "watch": {"folders": [str(home / "inbox")]},  # not the photos: nothing to reconcile
            "index": {"database": url},
            "search": {"semantic": True, "embedding_model": str(minilm_folder())},
        },
    )
    files.install(current_argv(str(cfg)))
    base = [sys.executable, "-m", "daemon", "--config", str(cfg)]
    daemon = subprocess.Popen([*base, "run", "--role", "watch"], env=env, stderr=subprocess.DEVNULL)
    bus = subprocess.Popen(
        ["dbus-daemon", "--session", "--nofork", f"--address=unix:path={home / 'bus'}", "--print-address=1"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert bus.stdout is not None
        address = bus.stdout.readline().decode().strip()
        wait_for_daemon(base, env)
        asyncio.run(measure(address, "the daemon running (words and meaning)"))
        daemon.terminate()
        daemon.wait(60)
        asyncio.run(measure(address, "no daemon: the provider searches the index itself (words)"))
    finally:
        for proc in (daemon, bus):
            if proc.poll() is None:
                proc.terminate()
                proc.wait(60)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
