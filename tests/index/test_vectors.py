"""The vector index's cache files: written on the first load, memory-mapped on the next, rebuilt when stale.

On both backends: an SQLite index keeps them beside its file, PostgreSQL in
$XDG_CACHE_HOME (each test its own). A second load that reads no vector from
the database (``VectorIndex._read`` counted) is the proof that the files were used.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import delete, func, select, update

from daemon.config import database_url
from daemon.index.db import Database, Embedding, Image
from daemon.index.vectors import VectorIndex, store

DIM = 8
QUERIES = np.random.default_rng(5).standard_normal((6, DIM)).astype(np.float32)


@pytest.fixture(autouse=True)
def own_cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache-home"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    return cache


@pytest.fixture
def full_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """One entry per read of every vector of a model from the database (``_read`` without ids)."""
    reads: list[int] = []
    original = VectorIndex._read

    def counting(self: VectorIndex, session: object, ids: list[int] | None = None) -> list[object]:
        if ids is None:
            reads.append(1)
        return original(self, session, ids)  # type: ignore[arg-type]

    monkeypatch.setattr(VectorIndex, "_read", counting)
    return reads


@pytest.fixture
def db(database: str) -> Iterator[Database]:
    db = Database(database_url(database))
    try:
        yield db
    finally:
        db.close()


def _unit_rows(n: int, seed: int) -> np.ndarray:
    rows = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _filled(db: Database, n: int = 40, model: str = "m") -> list[int]:
    with db.transaction(write=True) as s:
        images = [Image(sha256=f"{i:064x}", width=1, height=1) for i in range(n)]
        s.add_all(images)
        s.flush()
        ids = [im.id for im in images]
        store(s, model, dict(zip(ids, _unit_rows(n, 1), strict=True)))
    return ids


def _load(db: Database, model: str = "m") -> VectorIndex:
    with db.transaction() as s:
        return VectorIndex.load(s, model)


def _answers(vi: VectorIndex) -> list[list[tuple[int, float]]]:
    return [vi.nearest(q, 100) for q in QUERIES]  # every image, ranked


def _fresh(db: Database, model: str = "m") -> list[list[tuple[int, float]]]:
    """What an index built straight from the database's rows answers (not counted as a load's read)."""
    columns = (Embedding.id, Embedding.image_id, Embedding.dim, Embedding.vector, Embedding.created_at)
    with db.transaction() as s:
        rows = list(s.execute(select(*columns).where(Embedding.model == model).order_by(Embedding.id)))
    vi = VectorIndex(model)
    vi._replace_all(rows)
    return _answers(vi)


def _cache_files(db: Database, cache_home: Path) -> list[Path]:
    if db.engine.url.get_backend_name() == "sqlite":
        folder = Path(str(db.engine.url.database) + ".vectors")
    else:
        [folder] = (cache_home / "florence-watch" / "vectors").iterdir()
    return sorted(folder.iterdir())


def test_the_first_load_writes_the_cache_and_the_next_one_maps_it(
    db: Database, full_reads: list[int], own_cache_home: Path
) -> None:
    ids = _filled(db)
    first = _load(db)
    assert len(full_reads) == 1 and len(first) == 40
    files = _cache_files(db, own_cache_home)
    assert len(files) == 4 and all(f.stat().st_mode & 0o777 == 0o600 for f in files)
    assert {f.name.split(".")[-2] for f in files if f.name.endswith(".npy")} == {"vectors", "ids", "recent"}

    second = _load(db)
    assert len(full_reads) == 1  # no vector came from the database
    assert second.image_ids.tolist() == first.image_ids.tolist() and sorted(second.image_ids.tolist()) == ids
    np.testing.assert_array_equal(second.matrix, first.matrix)
    assert _answers(second) == _answers(first) == _fresh(db)
    np.testing.assert_allclose(np.linalg.norm(second.matrix, axis=1), 1.0, atol=1e-5)  # stored as unit rows
    with db.transaction() as s:
        assert second.refresh(s) == 0  # nothing new: the bookkeeping came back with the vectors
    assert len(full_reads) == 1


def _add(db: Database, ids: list[int]) -> None:
    with db.transaction(write=True) as s:
        image = Image(sha256="f" * 64, width=1, height=1)
        s.add(image)
        s.flush()
        store(s, "m", {image.id: _unit_rows(1, 9)[0]})


def _replace(db: Database, ids: list[int]) -> None:
    with db.transaction(write=True) as s:
        store(s, "m", {ids[3]: QUERIES[0] / np.linalg.norm(QUERIES[0])})


def _replace_with_an_older_clock(db: Database, ids: list[int]) -> None:
    """Another host, its clock behind: the row's new time is not the newest, and nothing else changes."""
    with db.transaction(write=True) as s:
        oldest = s.scalar(select(func.min(Embedding.created_at))) or 0.0
        vector = (QUERIES[1] / np.linalg.norm(QUERIES[1])).astype("<f2").tobytes()
        s.execute(update(Embedding).where(Embedding.image_id == ids[7]).values(vector=vector, created_at=oldest - 5.0))


def _delete(db: Database, ids: list[int]) -> None:
    with db.transaction(write=True) as s:
        s.execute(delete(Embedding).where(Embedding.image_id == ids[0]))


@pytest.mark.parametrize("change", [_add, _replace, _replace_with_an_older_clock, _delete])
def test_a_stale_cache_is_rebuilt(db: Database, full_reads: list[int], change: object) -> None:
    ids = _filled(db)
    before = _answers(_load(db))
    assert _answers(_load(db)) == before and len(full_reads) == 1
    change(db, ids)  # type: ignore[operator]
    expected = _fresh(db)
    assert expected != before
    reads = len(full_reads)
    assert _answers(_load(db)) == expected and len(full_reads) == reads + 1  # the stamp told: read anew
    assert _answers(_load(db)) == expected and len(full_reads) == reads + 1  # and the rebuilt cache is used


def test_a_mapped_index_still_refreshes_without_touching_its_files(
    db: Database, full_reads: list[int], own_cache_home: Path
) -> None:
    ids = _filled(db)
    _load(db)
    vi = _load(db)
    assert len(full_reads) == 1
    files = {f: f.read_bytes() for f in _cache_files(db, own_cache_home)}
    _replace(db, ids)  # written in place, into the copy-on-write mapping
    _add(db, ids)  # appended: the buffer grows
    with db.transaction() as s:
        assert vi.refresh(s) == 2
    assert _answers(vi) == _fresh(db) and len(vi) == 41
    _delete(db, ids)
    with db.transaction() as s:
        vi.refresh(s)  # the count differs: everything read anew
    assert _answers(vi) == _fresh(db) and len(vi) == 40
    assert all(f.read_bytes() == data for f, data in files.items())  # the cache files never changed


def _truncate(files: list[Path]) -> None:
    vectors = next(f for f in files if f.name.endswith(".vectors.npy"))
    vectors.write_bytes(vectors.read_bytes()[:-7])


def _garble_stamp(files: list[Path]) -> None:
    next(f for f in files if f.name.endswith(".json")).write_text("{not json")


def _wrong_ids(files: list[Path]) -> None:
    ids = next(f for f in files if f.name.endswith(".ids.npy"))
    np.save(ids, np.zeros(3, dtype=np.float32))  # the path ends in .npy: written in place


def _garbage_header(files: list[Path]) -> None:
    next(f for f in files if f.name.endswith(".vectors.npy")).write_bytes(b"\x93NUMPY garbage" * 10)


def _lose_a_file(files: list[Path]) -> None:
    next(f for f in files if f.name.endswith(".recent.npy")).unlink()


@pytest.mark.parametrize("damage", [_truncate, _garble_stamp, _wrong_ids, _garbage_header, _lose_a_file])
def test_a_damaged_cache_is_rebuilt_quietly(
    db: Database, full_reads: list[int], own_cache_home: Path, damage: object, caplog: pytest.LogCaptureFixture
) -> None:
    _filled(db)
    expected = _answers(_load(db))
    damage(_cache_files(db, own_cache_home))  # type: ignore[operator]
    with caplog.at_level(logging.WARNING):
        assert _answers(_load(db)) == expected and len(full_reads) == 2
    assert not caplog.records  # nothing for the user to see
    assert _answers(_load(db)) == expected and len(full_reads) == 2  # mended: mapped again


def test_no_writable_cache_folder_still_gives_the_right_answers(
    db: Database, full_reads: list[int], own_cache_home: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _filled(db)
    own_cache_home.write_text("a file where the cache folder would be")  # mkdir fails, even as root
    if db.engine.url.get_backend_name() == "sqlite":
        Path(str(db.engine.url.database) + ".vectors").write_text("likewise")
    expected = _fresh(db)
    with caplog.at_level(logging.DEBUG, logger="daemon.index.vectors"):
        assert _answers(_load(db)) == expected
        assert _answers(_load(db)) == expected
    assert len(full_reads) == 2  # each load read the database
    assert any("cannot cache" in r.message and r.levelno == logging.DEBUG for r in caplog.records)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_an_unwritable_side_folder_falls_back_to_the_user_cache(
    tmp_path: Path, full_reads: list[int], own_cache_home: Path
) -> None:
    db = Database(database_url(str(tmp_path / "index.db")))
    try:
        _filled(db)
        (tmp_path / "index.db.vectors").write_text("not a folder")
        expected = _answers(_load(db))
        [folder] = (own_cache_home / "florence-watch" / "vectors").iterdir()
        assert len(list(folder.glob("*.npy"))) == 3
        assert _answers(_load(db)) == expected and len(full_reads) == 1
    finally:
        db.close()


def test_each_model_has_its_own_cache(db: Database, full_reads: list[int]) -> None:
    ids = _filled(db)
    with db.transaction(write=True) as s:
        store(s, "other", dict(zip(ids[:10], _unit_rows(10, 2), strict=True)))
    m, other = _answers(_load(db, "m")), _answers(_load(db, "other"))
    assert _answers(_load(db, "m")) == m == _fresh(db, "m")
    assert _answers(_load(db, "other")) == other == _fresh(db, "other")
    assert len(full_reads) == 2
    with db.transaction() as s:
        assert len(VectorIndex.load(s, "nobody")) == 0  # no vector: nothing cached, nothing fails


def test_the_stamp_is_written_last_and_names_its_files(db: Database, own_cache_home: Path) -> None:
    _filled(db)
    _load(db)
    files = _cache_files(db, own_cache_home)
    meta = json.loads(next(f for f in files if f.name.endswith(".json")).read_text())
    assert meta["rows"] == 40 and meta["dim"] == DIM and meta["model"] == "m"
    assert all(meta["generation"] in f.name for f in files if f.suffix == ".npy")
