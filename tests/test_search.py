from __future__ import annotations

from pathlib import Path

import pytest

from daemon.db import Database, Document, File
from daemon.search import fts_query, search


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("red car", '"red" "car"'),
        ('"red car" parked', '"red car" "parked"'),
        ('a "dangling', '"a" "dangling"'),
        ("NEAR(a b)", '"NEAR(a" "b)"'),
        ("-dog OR cat*", '"-dog" "OR" "cat*"'),
        ('"', ""),
        ("   ", ""),
        ("café 日本", '"café" "日本"'),
    ],
)
def test_user_text_is_always_quoted(query: str, expected: str) -> None:
    assert fts_query(query) == expected


@pytest.fixture
def db(tmp_path: Path) -> Database:
    db = Database(f"sqlite:///{tmp_path}/i.db")
    rows = [
        ("/p/car.jpg", "a red car parked", "A red car parked on a street.", "STOP", "car wheel"),
        ("/p/dog.jpg", "a dog on a sofa", "A brown dog sleeps on a red sofa.", "", "dog sofa"),
        ("/p/2024/receipt.png", "a receipt", "A shop receipt.", "TOTAL 12.50 café", "paper"),
        ("/p/gone.jpg", "a red car", "", "", "car"),
    ]
    with db.transaction(write=True) as s:
        for path, cap, desc, ocr, labels in rows:
            f = File(path=path, state="deleted" if "gone" in path else "indexed")
            s.add(f)
            s.flush()
            s.add(Document(file_id=f.id, path=path, caption=cap, description=desc, ocr=ocr, labels=labels))
    return db


@pytest.mark.parametrize(
    ("query", "paths"),
    [
        ("car", ["/p/car.jpg"]),  # the deleted file is not found
        ("red", ["/p/car.jpg", "/p/dog.jpg"]),
        ('"red car"', ["/p/car.jpg"]),
        ("sofa dog", ["/p/dog.jpg"]),
        ("total", ["/p/2024/receipt.png"]),  # OCR text
        ("cafe", ["/p/2024/receipt.png"]),  # diacritics folded
        ("2024", ["/p/2024/receipt.png"]),  # path
        ("wheel", ["/p/car.jpg"]),  # object label
        ('"', []),
        ("NEAR(", []),
        ("zebra", []),
    ],
)
def test_search_finds_and_ranks(db: Database, query: str, paths: list[str]) -> None:
    with db.transaction() as s:
        hits = search(s, query)
    assert sorted(h.path for h in hits) == sorted(paths)
    assert all(isinstance(h.score, float) for h in hits)
    db.close()


def test_best_match_first(db: Database) -> None:
    with db.transaction() as s:
        hits = search(s, "red")
    # "red" twice in car.jpg (caption and description) against once per field in dog.jpg.
    assert [h.path for h in hits][0] == "/p/car.jpg"
    assert hits[0].score >= hits[1].score
    assert hits[0].caption == "a red car parked"
    db.close()


def test_search_index_follows_updates_and_deletes(db: Database) -> None:
    with db.transaction(write=True) as s:
        doc = s.get(Document, 1)
        doc.caption = "a blue bicycle"
        s.delete(s.get(Document, 2))
    with db.transaction() as s:
        assert [h.path for h in search(s, "bicycle")] == ["/p/car.jpg"]
        assert search(s, "dog") == []
    db.close()
