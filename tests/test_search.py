from __future__ import annotations

import datetime as dt
import itertools
import time
from pathlib import Path

import pytest

from daemon.db import Database, Document, File
from daemon.errors import FlorenceWatchError
from daemon.search import MARK_END, MARK_START, fts_query, parse, search


@pytest.mark.parametrize(
    ("query", "positive", "negative"),
    [
        ("red car", '"red" AND "car"', ""),
        ('"red car" parked', '"red car" AND "parked"', ""),
        ('caption:"red car"', '{caption} : "red car"', ""),
        ("text:invoice label:dog path:2024", '{ocr} : "invoice" AND {labels} : "dog" AND {path} : "2024"', ""),
        ("desc:sofa ocr:total objects:wheel", '{description} : "sofa" AND {ocr} : "total" AND {labels} : "wheel"', ""),
        ("Caption:Red", '{caption} : "Red"', ""),
        ("car -dog", '"car"', '"dog"'),
        ('-label:dog -"red sofa"', "", '{labels} : "dog" OR "red sofa"'),
        ("cat OR dog", '"cat" OR "dog"', ""),
        ("a b OR c", '"a" AND "b" OR "c"', ""),
        ("OR a OR", '"a"', ""),
        ("-dog OR cat*", '"cat*"', '"dog"'),
        ("well-known", '"well-known"', ""),
        ('a "dangling', '"a" AND "dangling"', ""),
        ('a"b', '"a b"', ""),
        ("NEAR(a b)", '"NEAR(a" AND "b)"', ""),
        ("AND NOT", '"AND" AND "NOT"', ""),
        ("foo:bar", '"foo:bar"', ""),  # not a field: plain text
        ('foo:"bar baz"', '"foo:bar baz"', ""),
        ("https://example.org/x", '"https://example.org/x"', ""),
        ("text:", '"text:"', ""),
        ('"', "", ""),
        ('"..." ;', "", ""),  # punctuation only: no term at all
        ("-", "", ""),
        ("   ", "", ""),
        ("café 日本", '"café" AND "日本"', ""),
    ],
)
def test_query_grammar(query: str, positive: str, negative: str) -> None:
    q = parse(query)
    assert (q.positive, q.negative) == (positive, negative)
    assert fts_query(query) == positive


def test_filters_parse_and_bad_dates_are_explained(tmp_path: Path) -> None:
    q = parse("car", folder=str(tmp_path) + "/", since="2024-06-01", has_text=True)
    assert q.folder == str(tmp_path)
    assert q.since == dt.datetime(2024, 6, 1).timestamp()
    assert q.has_text
    assert abs(parse("", since="7d").since - (time.time() - 7 * 86400)) < 5
    for bad in ("last tuesday", "99999999999d", "0001-01-01", "2024-13-01"):
        with pytest.raises(FlorenceWatchError, match=f"--since '{bad}': not a date"):
            parse("car", since=bad)


# Documents of deleted files are never found, but still count in bm25's statistics. Without
# these, "red" or "car" would be in most documents: bm25 then gives them no weight, every
# score is 0 and the order of the hits says nothing.
OTHERS = [
    (f"/old/{word}.jpg", f"a {word} in a field", f"A {word} stands in a green field.", "", word, "2020-01-01")
    for word in ("tree", "horse", "house", "tractor", "fence", "barn")
]


@pytest.fixture
def db(tmp_path: Path) -> Database:
    db = Database(f"sqlite:///{tmp_path}/i.db")
    rows = [
        ("/p/car.jpg", "a red car parked", "A red car parked on a red street.", "STOP", "car wheel", "2024-01-01"),
        ("/p/dog.jpg", "a dog on a sofa", "A brown dog sleeps on a red sofa.", "", "dog sofa", "2024-07-01"),
        ("/p/2024/receipt.png", "a receipt", "A shop receipt.", "TOTAL 12.50 café", "paper", "2025-01-01"),
        ("/p/gone.jpg", "a red car", "", "", "car", "2025-01-01"),
        *OTHERS,
    ]
    with db.transaction(write=True) as s:
        for path, cap, desc, ocr, labels, day in rows:
            mtime_ns = int(dt.datetime.fromisoformat(day).timestamp() * 1e9)
            deleted = path == "/p/gone.jpg" or path.startswith("/old/")
            f = File(path=path, state="deleted" if deleted else "indexed", mtime_ns=mtime_ns)
            s.add(f)
            s.flush()
            s.add(Document(file_id=f.id, path=path, caption=cap, description=desc, ocr=ocr, labels=labels))
    return db


@pytest.mark.parametrize(
    ("query", "paths"),  # best first
    [
        ("car", ["/p/car.jpg"]),  # the deleted file is not found
        ("red", ["/p/car.jpg", "/p/dog.jpg"]),  # three times in the car's text, once in the dog's
        ("red OR sofa", ["/p/dog.jpg", "/p/car.jpg"]),  # the dog matches both words
        ('"red car"', ["/p/car.jpg"]),
        ("sofa dog", ["/p/dog.jpg"]),
        ("total", ["/p/2024/receipt.png"]),  # OCR text
        ("cafe", ["/p/2024/receipt.png"]),  # diacritics folded
        ("2024", ["/p/2024/receipt.png"]),  # path
        ("wheel", ["/p/car.jpg"]),  # object label
        ('"', []),
        ("NEAR(", []),
        ("zebra", []),
        ("caption:red", ["/p/car.jpg"]),  # the dog's "red" is in its description
        ("desc:red", ["/p/car.jpg", "/p/dog.jpg"]),  # twice in the car's description, once in the dog's
        ("label:dog", ["/p/dog.jpg"]),
        ("label:sofa -caption:car", ["/p/dog.jpg"]),
        ("text:total", ["/p/2024/receipt.png"]),
        ("text:red", []),
        ("path:2024", ["/p/2024/receipt.png"]),
        ('caption:"red car"', ["/p/car.jpg"]),
        ('caption:"car red"', []),
        ("red -dog", ["/p/car.jpg"]),
        ("-car", ["/p/2024/receipt.png", "/p/dog.jpg"]),  # nothing to rank: newest first
        ("-label:car -label:dog", ["/p/2024/receipt.png"]),
        ("car OR receipt", ["/p/2024/receipt.png", "/p/car.jpg"]),  # "receipt" is the rarer word
        ("sofa OR receipt -paper", ["/p/dog.jpg"]),
    ],
)
def test_search_finds_and_ranks(db: Database, query: str, paths: list[str]) -> None:
    with db.transaction() as s:
        hits = search(s, query)
    assert [h.path for h in hits] == paths
    assert all(isinstance(h.score, float) for h in hits)
    if parse(query).positive:  # ranked: the order comes from the scores, not from a tie broken by chance
        assert all(a.score > b.score for a, b in itertools.pairwise(hits))
    db.close()


def test_best_match_first(db: Database) -> None:
    with db.transaction() as s:
        hits = search(s, "red")
    # "red" three times in car.jpg (caption and description) against once in dog.jpg.
    assert [h.path for h in hits] == ["/p/car.jpg", "/p/dog.jpg"]
    assert hits[0].score > hits[1].score > 0
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


@pytest.mark.parametrize(
    ("filters", "paths"),
    [
        ({"folder": "/p/2024"}, ["/p/2024/receipt.png"]),
        ({"folder": "/p/20"}, []),  # a folder, not a prefix of names
        ({"folder": "/p/"}, ["/p/car.jpg", "/p/dog.jpg", "/p/2024/receipt.png"]),
        ({"since": "2024-06-01"}, ["/p/dog.jpg", "/p/2024/receipt.png"]),
        ({"since": "2024-06-01T00:00"}, ["/p/dog.jpg", "/p/2024/receipt.png"]),
        ({"has_text": True}, ["/p/car.jpg", "/p/2024/receipt.png"]),
        ({"has_text": True, "since": "2024-06-01"}, ["/p/2024/receipt.png"]),
    ],
)
def test_filters_alone_and_with_words(db: Database, filters: dict, paths: list[str]) -> None:
    with db.transaction() as s:
        alone = [h.path for h in search(s, parse("", **filters))]
        with_word = [h.path for h in search(s, parse("a", **filters))]  # "a" is in every caption
    assert sorted(alone) == sorted(paths)
    assert sorted(with_word) == sorted(paths)
    if len(alone) > 1:  # nothing to rank: newest first
        assert alone[0] == "/p/2024/receipt.png"
    db.close()


NASTY = [
    '"',
    "'",
    '""',
    "NEAR(",
    "NEAR(a b, 2)",
    "a:b:c",
    "*",
    "^a",
    "--",
    "(",
    ")",
    "{caption}",
    "{caption} : x",
    "caption:(",
    "caption:*",
    "\\",
    "%",
    "_",
    "OR",
    "NOT",
    "AND",
    "a AND OR NOT b",
    "\x00",
    "x" * 5000,
    "'; DROP TABLE files; --",
    "label:",
    '-"',
    'path:"/p',
    "日本語 -",
    'caption:""',
    'col:"a" OR -',
]


@pytest.mark.parametrize("query", NASTY)
def test_any_input_gives_results_or_nothing_never_an_error(db: Database, query: str) -> None:
    with db.transaction() as s:
        hits = search(s, query)
    assert isinstance(hits, list)
    with db.transaction() as s:
        assert search(s, "car")  # and the index is still there
    db.close()


def test_snippet_marks_what_matched(db: Database) -> None:
    with db.transaction() as s:
        [hit] = search(s, "text:total")
        [car] = search(s, "wheel")
    assert f"{MARK_START}TOTAL{MARK_END}" in hit.snippet
    assert hit.snippet_marked() == "[TOTAL] 12.50 café"
    assert car.snippet_marked("<b>", "</b>") == "car <b>wheel</b>"
    db.close()
