from __future__ import annotations

import datetime as dt
import itertools
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import insert, make_url, text

from daemon.config import database_url
from daemon.errors import FlorenceWatchError
from daemon.index import db as db_module
from daemon.index.db import Database, Document, File, Result
from daemon.index.search import MARK_END, MARK_START, MAX_TERMS, fts_query, parse, search, search_sql
from daemon.testing.postgres import Cluster


@pytest.mark.parametrize(
    ("query", "positive", "negative"),
    [
        ("red car", '"red" AND "car"', ""),
        ('"red car" parked', '"red car" AND "parked"', ""),
        ('caption:"red car"', '{caption} : "red car"', ""),
        # path: also searches the path's names, cut where digits meet letters (db migration 0007)
        ("text:invoice label:dog path:2024", '{ocr} : "invoice" AND {labels} : "dog" AND {path names} : "2024"', ""),
        ("desc:sofa ocr:total objects:wheel", '{description} : "sofa" AND {ocr} : "total" AND {labels} : "wheel"', ""),
        ("Caption:Red", '{caption} : "Red"', ""),
        ("car -dog", '"car"', '"dog"'),
        ('-label:dog -"red sofa"', "", '{labels} : "dog" OR "red sofa"'),
        ("cat OR dog", '"cat" OR "dog"', ""),
        ("a b OR c", '"a" AND "b" OR "c"', ""),
        ("OR a OR", '"a"', ""),
        ("-dog OR cat*", '"cat"*', '"dog"'),  # a prefix: the * after the quotes, written by us
        ("caption:flow* -path:img2*", '{caption} : "flow"*', '{path names} : "img2"*'),
        ("flow**", '"flow"*', ""),
        ("café*", '"café"*', ""),
        # * means a prefix only after one word; anywhere else it is text, a space to the tokenizer
        ("a*b*", '"a*b*"', ""),
        ("*", "", ""),
        ("*a", '"*a"', ""),
        ('"x*"', '"x*"', ""),
        ('"x"*', '"x"', ""),
        ("foo:*", '"foo:*"', ""),
        ("whe:*", '"whe:*"', ""),
        ("&*", "", ""),
        ("x&*", '"x&*"', ""),
        ("caption:*", "", ""),
        ("12.5*", '"12.5*"', ""),
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


def test_a_page_of_words_is_cut_to_the_first_few() -> None:
    q = parse(" ".join(f"w{n}" for n in range(1000)))
    assert [t.text for t in q.terms] == [f"w{n}" for n in range(MAX_TERMS)]


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
def db(database: str) -> Iterator[Database]:
    """The same few documents on each backend in turn (SQLite, then PostgreSQL)."""
    db = Database(database_url(database))
    rows = [
        ("/p/car.jpg", "a red car parked", "A red car parked on a red street.", "STOP", "car wheel", "2024-01-01"),
        ("/p/dog.jpg", "a dog on a sofa", "A brown dog sleeps on a red sofa.", "", "dog sofa", "2024-07-01"),
        ("/p/2024/receipt.png", "a receipt", "A shop receipt.", "TOTAL 12.50 café", "paper", "2025-01-01"),
        ("/p/gone.jpg", "a red car", "", "", "car", "2025-01-01"),
        *OTHERS,
    ]
    add_documents(db, rows, deleted=lambda path: path == "/p/gone.jpg" or path.startswith("/old/"))
    yield db
    db.close()


def add_documents(
    db: Database, rows: list[tuple[str, str, str, str, str, str]], deleted: Callable[[str], bool] = lambda _: False
) -> None:
    """Files and their documents: (path, caption, description, OCR text, labels, day modified) each."""
    with db.transaction(write=True) as s:
        for path, cap, desc, ocr, labels, day in rows:
            mtime_ns = int(dt.datetime.fromisoformat(day).timestamp() * 1e9)
            f = File(path=path, state="deleted" if deleted(path) else "indexed", mtime_ns=mtime_ns)
            s.add(f)
            s.flush()
            s.add(Document(file_id=f.id, path=path, caption=cap, description=desc, ocr=ocr, labels=labels))


def ranks_like_sqlite(db: Database) -> bool:
    """Whether this backend's order is FTS5's bm25 (PostgreSQL's ts_rank_cd knows no rare words)."""
    return db.engine.dialect.name == "sqlite"


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
        # Words are cut as FTS5's unicode61 cuts them, on PostgreSQL too: at every character
        # that is not a letter or a digit, accents and case folded.
        ("12", ["/p/2024/receipt.png"]),  # PostgreSQL's own parser would keep "12.50" whole
        ('"12.50"', ["/p/2024/receipt.png"]),  # the words 12 and 50, side by side
        ("50 12", ["/p/2024/receipt.png"]),
        ('"50 12"', []),
        ("CAFÉ", ["/p/2024/receipt.png"]),
        ("café", ["/p/2024/receipt.png"]),
        ("cafe\u0301", ["/p/2024/receipt.png"]),  # the accent as a combining character
        ("street.", ["/p/car.jpg"]),
        ("red-street", ["/p/car.jpg"]),  # a phrase: "red street"
        ("png", ["/p/2024/receipt.png"]),  # paths are words too
        ("path:receipt.png", ["/p/2024/receipt.png"]),
        ("path:p/car", ["/p/car.jpg"]),
        ("path:red", []),
        ('"parked a"', []),  # a phrase never spans two fields (caption "... parked", description "A ...")
        ('"car wheel"', ["/p/car.jpg"]),
        ("label:car -text:stop", []),
        # tsquery's operators are plain text: words, never syntax.
        ("car & wheel", ["/p/car.jpg"]),
        ("car | zebra", []),
        ("!car", ["/p/car.jpg"]),
        ("car <-> wheel", ["/p/car.jpg"]),
        ("whe:*", []),  # no prefix search
        ("car:A", []),  # "car a": no field has that phrase
        ("'car'", ["/p/car.jpg"]),
    ],
)
def test_search_finds_and_ranks(db: Database, query: str, paths: list[str]) -> None:
    with db.transaction() as s:
        hits = search(s, query)
    assert all(isinstance(h.score, float) for h in hits)
    if not ranks_like_sqlite(db) and parse(query).positive:  # the same documents, perhaps in another order
        assert sorted(h.path for h in hits) == sorted(paths)
        return
    assert [h.path for h in hits] == paths
    if parse(query).positive:  # ranked: the order comes from the scores, not from a tie broken by chance
        assert all(a.score > b.score for a, b in itertools.pairwise(hits))


def test_best_match_first(db: Database) -> None:
    with db.transaction() as s:
        hits = search(s, "red")
    # "red" three times in car.jpg (caption and description) against once in dog.jpg.
    assert [h.path for h in hits] == ["/p/car.jpg", "/p/dog.jpg"]
    assert hits[0].score > hits[1].score > 0
    assert hits[0].caption == "a red car parked"


def test_search_index_follows_updates_and_deletes(db: Database) -> None:
    with db.transaction(write=True) as s:
        doc = s.get(Document, 1)
        doc.caption = "a blue bicycle"
        s.delete(s.get(Document, 2))
    with db.transaction() as s:
        assert [h.path for h in search(s, "bicycle")] == ["/p/car.jpg"]
        assert search(s, "dog") == []


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
    # PostgreSQL's tsquery syntax, which must stay text there
    "a & b",
    "a | b",
    "!a",
    "!!a",
    "a <-> b",
    "a <2> b",
    "a:*",
    "a:AB",
    "a:*AB",
    "(a | b) & !c",
    "& | ! <-> :*",
    "'a':* & 'b'",
    "car\x00wheel",
    "caption:\x00car",
    "-\x00",
    "a OR " * 1000,
    " ".join(f"w{n}" for n in range(1000)),
    "e\u0301\u0301\u0301",
    "\u0301",
    "\U0001f600 car",
    "\x02car\x03",  # the snippet marks
    "$$; SELECT 1; $$",
    ":t0 :limit",
    # a prefix: only after one word, and made in SQL from that word's lexeme (db migration 0007)
    "a*b*",
    "**",
    "-*",
    "*a*",
    '"x*"',
    "foo:*",
    "&*",
    "a&*",
    "'*",
    "a'*",
    "a:*b*",
    "caption:a*",
    "path:*",
    "a* OR *",
    "\x00*",
    "a\x00*",
    "e\u0301*",
    "\u0301*",
    "日本*",
    "\U0001f600*",
    "a*:*",
    "a* & b*",
    "x" * 5000 + "*",
    "car*" * 100,
]


@pytest.mark.parametrize("query", NASTY)
def test_any_input_gives_results_or_nothing_never_an_error(db: Database, query: str) -> None:
    with db.transaction() as s:
        hits = search(s, query)
    assert isinstance(hits, list)
    with db.transaction() as s:
        assert search(s, "car")  # and the index is still there


def test_snippet_marks_what_matched(db: Database) -> None:
    with db.transaction() as s:
        [hit] = search(s, "text:total")
        [car] = search(s, "wheel")
    assert f"{MARK_START}TOTAL{MARK_END}" in hit.snippet
    assert hit.snippet_marked() == "[TOTAL] 12.50 café"
    assert car.snippet_marked("<b>", "</b>") == "car <b>wheel</b>"


def test_long_fields_give_a_dozen_words_around_the_match(db: Database) -> None:
    words = " ".join(f"w{n}" for n in range(30))
    with db.transaction(write=True) as s:
        s.get(Document, 3).ocr = f"{words} needle {words}."
    with db.transaction() as s:
        [hit] = search(s, "needle")
    marked = hit.snippet_marked()
    assert marked.startswith("…") and marked.endswith("…")
    assert "[needle]" in marked
    assert 8 <= len(marked.split()) <= 14


def test_search_sees_the_writes_of_its_own_transaction(db: Database) -> None:
    with db.transaction(write=True) as s:
        s.get(Document, 2).labels = "dog sofa kite"
        s.flush()  # the index (FTS5's triggers, PostgreSQL's tsvector trigger) follows at once
        assert [h.path for h in search(s, "kite")] == ["/p/dog.jpg"]
        assert search(s, "label:sofa -label:kite") == []


# Word forms, file and folder names, prefixes (db migration 0007): the same documents on both backends.
FORMS = [
    ("/pics/flower2.webp", "a red tulip", "", "", "tulip", "2024-01-01"),
    ("/home/u/Pictures/2024-06 Rome/x.jpg", "a fountain in a square", "", "", "fountain", "2024-06-02"),
    ("/p/trip2024/beach.jpg", "sand and sea", "", "", "beach", "2024-06-03"),
    ("/p/dog.jpg", "a dog asleep on a sofa", "A brown dog.", "", "dog sofa", "2024-01-04"),
    ("/p/kennel.jpg", "three dogs playing", "", "", "dogs", "2024-01-05"),
    ("/p/road.jpg", "a car parked by the road", "Two people running.", "", "car", "2024-01-06"),
    ("/p/track.jpg", "a morning run", "", "", "track", "2024-01-07"),
    ("/p/garden.jpg", "a bed of flowers", "", "", "flowers", "2024-01-08"),
    ("/p/vase.jpg", "a flower in a vase", "", "", "vase", "2024-01-09"),
]
TULIP, ROME, TRIP, DOG, KENNEL, ROAD, TRACK, GARDEN, VASE = (row[0] for row in FORMS)


@pytest.fixture
def forms(database: str) -> Iterator[Database]:
    """FORMS on each backend in turn."""
    db = Database(database_url(database))
    add_documents(db, FORMS)
    yield db
    db.close()


def found(db: Database, query: str) -> list[str]:
    """The paths that *query* finds, in path order (the backends find the same, but rank differently)."""
    with db.transaction() as s:
        return sorted(h.path for h in search(s, query))


def indexed(db: Database, word: str) -> list[str]:
    """The paths whose full-text index holds *word*, asked directly: search() needs the newest schema."""
    if db.engine.dialect.name == "sqlite":
        where, word = "file_id IN (SELECT rowid FROM documents_fts WHERE documents_fts MATCH :w)", f'"{word}"'
    else:
        where = "tsv || path_tsv @@ phraseto_tsquery('florence_search', :w)"
    with db.transaction() as s:
        return sorted(s.execute(text(f"SELECT path FROM documents WHERE {where}"), {"w": word}).scalars())


@pytest.mark.parametrize(
    ("query", "paths"),
    [
        # Words match in their other forms: Porter's stemmer, in the index and in the query.
        ("dogs", [DOG, KENNEL]),  # "a dog", and "three dogs"
        ("dog", [DOG, KENNEL]),
        ("cars", [ROAD]),  # "a car"
        ("running", [ROAD, TRACK]),  # "running", and "a morning run"
        ("run", [ROAD, TRACK]),
        ("runs", [ROAD, TRACK]),
        ("sofas", [DOG]),
        ("label:dog", [DOG, KENNEL]),  # the labels "dog sofa", and "dogs"
        ('"cars parking"', [ROAD]),  # a phrase of stems: "car parked"
        ('"parking cars"', []),  # in this order only
        ("flowers", [TULIP, GARDEN, VASE]),  # flower2.webp's name too: flower2 is cut into flower and 2
        ("dogs -kennel", [DOG]),
        ("-dogs", [TULIP, ROME, TRIP, ROAD, TRACK, GARDEN, VASE]),
        # Parts of file and folder names: cut where digits meet letters, and at punctuation.
        ("flower", [TULIP, GARDEN, VASE]),
        ("flower2", [TULIP]),  # the name as it is
        ("path:flower", [TULIP]),
        ("path:flower2.webp", [TULIP]),
        ('"flower 2"', [TULIP]),
        ('"pics flower"', [TULIP]),  # the parts are side by side
        ('"webp pics"', []),  # but the end of the path is not next to the start of its parts
        ("caption:flower", [GARDEN, VASE]),  # not flower2.webp: its name is in its path
        ("2024", [ROME, TRIP]),  # a folder, and a part of a folder's name (trip2024)
        ("path:2024 rome", [ROME]),
        ("rome", [ROME]),
        ("pictures", [ROME]),
        ("trip", [TRIP]),
        ("06", [ROME]),
        ("webp", [TULIP]),
        # A trailing * means the words that start so, in any form and any part of a name.
        ("flow*", [TULIP, GARDEN, VASE]),
        ("flowers*", [TULIP, GARDEN, VASE]),  # the stem, flower, and what starts with it
        ("FLOW*", [TULIP, GARDEN, VASE]),
        ("tul*", [TULIP]),
        ("caption:tul*", [TULIP]),
        ("label:fount*", [ROME]),
        ("path:flow*", [TULIP]),
        ("path:pic*", [TULIP, ROME]),  # /pics, Pictures
        ("caption:flow*", [GARDEN, VASE]),
        ("2024*", [ROME, TRIP]),
        ("fount* OR dog*", [ROME, DOG, KENNEL]),
        ("dog* -label:dog*", []),
        ("flow* -path:flow*", [GARDEN, VASE]),
        ("run*", [ROAD, TRACK]),
        # Anywhere else, * is text: a space between words, never a wildcard.
        ("flow", []),
        ("flow *", []),
        ("*", []),
        ("**", []),
        ("*low", []),
        ("f*ower", []),
        ('"flow*"', []),
        ('"flow"*', []),
        ("a*b*", []),
        ("flow:*", []),
        ("&*", []),
        ("tulip*a", []),  # the phrase "tulip a"
        ("sea*sand", []),  # "sand and sea": not in this order
        ("sand*and", [TRIP]),
    ],
)
def test_word_forms_names_and_prefixes(forms: Database, query: str, paths: list[str]) -> None:
    assert found(forms, query) == sorted(paths)


def test_snippets_mark_word_forms_and_name_parts(forms: Database) -> None:
    with forms.transaction() as s:
        [dog, kennel] = sorted(search(s, "label:dogs"), key=lambda h: h.path)
        [tulip] = search(s, "path:flower")
        [prefix] = search(s, "tul*")
    assert (dog.snippet_marked(), kennel.snippet_marked()) == ("[dog] sofa", "[dogs]")
    assert tulip.snippet_marked() == "/pics/[flower]2.webp"  # the path as it is, the part marked
    assert prefix.snippet_marked() == "a red [tulip]"


def test_migration_0007_rebuilds_the_index_without_the_model(database: str, monkeypatch: pytest.MonkeyPatch) -> None:
    url = database_url(database)
    with monkeypatch.context() as patch:  # an index made before 0007: with the migrations that had shipped
        patch.setattr(db_module, "MIGRATIONS", [m for m in db_module.MIGRATIONS if m[0] < "0007"])
        old = Database(url)
        add_documents(old, FORMS)
        before = indexed(old, "dogs"), indexed(old, "flower")
        old.close()
    assert before == ([KENNEL], [VASE])  # not "a dog", nor flower2.webp, nor the garden's "flowers"
    db = Database(url)  # 0007 runs, from the documents' text
    try:
        assert indexed(db, "dogs") == found(db, "dogs") == sorted([DOG, KENNEL])
        assert indexed(db, "flower") == sorted([TULIP, GARDEN, VASE])
        assert found(db, "flower") == found(db, "flow*") == sorted([TULIP, GARDEN, VASE])
        with db.transaction() as s:
            assert "0007_word_forms" in set(s.execute(text("SELECT name FROM schema_migrations")).scalars())
            assert [d.caption for d in s.query(Document).order_by(Document.file_id)] == [r[1] for r in FORMS]
            assert s.query(Result).count() == 0  # no model ran
        with db.transaction(write=True) as s:  # the triggers keep the new index current
            s.get(Document, 5).caption = "three cats playing"
            s.delete(s.get(Document, 4))
        assert found(db, "dogs") == [KENNEL]  # its labels
        assert found(db, "cat") == [KENNEL]
    finally:
        db.close()


def test_postgres_search_uses_the_gin_indexes(pg_url: str) -> None:
    """Each kind of condition is one the GIN indexes can answer (bench/search.py shows the real thing)."""
    db = Database(pg_url)
    n = 3000
    files = [{"id": i, "path": f"/p/{i}/img{i}.jpg", "state": "indexed", "mtime_ns": i} for i in range(1, n + 1)]
    docs = [
        {"file_id": i, "path": f"/p/{i}/img{i}.jpg", "caption": f"a photo of thing{i}", "labels": f"thing{i} car"}
        for i in range(1, n + 1)
    ]
    plans = {}
    try:
        with db.transaction(write=True) as s:
            s.execute(insert(File), files)
            s.execute(insert(Document), docs)
        with db.transaction(write=True) as s:
            s.execute(text("ANALYZE"))
        queries = ("thing7", 'caption:"of thing7"', "path:img7", "thing7 OR thing8 -car", "label:thing7 -text:stop")
        for query in (*queries, "thing7*", "path:img*", "-thing7* photo7"):
            sql, params = search_sql(parse(query), 20, "postgresql")
            with db.transaction() as s:
                s.execute(text("SET LOCAL enable_seqscan = off"))  # a table this small is read whole
                plans[query] = "\n".join(s.execute(text("EXPLAIN " + sql), params).scalars())
    finally:
        db.close()
    for query, plan in plans.items():
        assert "Seq Scan on documents" not in plan, (query, plan)
        assert "Bitmap Index Scan on ix_documents_" in plan, (query, plan)


def test_postgres_plans_each_search_for_its_words(pg_url: str) -> None:
    """psycopg prepares a statement run five times; PostgreSQL must not then plan it for any words."""
    db = Database(pg_url)
    try:
        for _ in range(12):
            with db.transaction() as s:
                search(s, "car")
        with db.transaction() as s:
            prepared, generic = s.execute(
                text(
                    "SELECT count(*), coalesce(sum(generic_plans), 0) FROM pg_prepared_statements "
                    "WHERE statement LIKE '%documents%'"
                )
            ).one()
    finally:
        db.close()
    assert prepared and not generic


@pytest.mark.parametrize("installed", [False, True])
def test_postgres_for_a_role_that_may_not_create_extensions(
    postgres: Cluster, pg_url: str, caplog: pytest.LogCaptureFixture, installed: bool
) -> None:
    """Not the database's owner: search works, and folds accents if a DBA installed unaccent first."""
    name = str(make_url(pg_url).database)
    postgres.sql("DO $$ BEGIN CREATE ROLE fw_search_plain LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
    postgres.sql("GRANT CREATE ON SCHEMA public TO fw_search_plain", database=name)
    if installed:
        postgres.sql("CREATE EXTENSION unaccent", database=name)
    db = Database(postgres.url(name, user="fw_search_plain"))
    try:
        with db.transaction(write=True) as s:
            s.add(File(id=1, path="/p/menu.jpg", state="indexed", mtime_ns=0))
            s.flush()
            s.add(Document(file_id=1, path="/p/menu.jpg", caption="a café menu"))
        with db.transaction() as s:
            assert [h.path for h in search(s, "CAFÉ")] == ["/p/menu.jpg"]
            assert [h.path for h in search(s, "cafe")] == (["/p/menu.jpg"] if installed else [])
            assert search(s, "menu")[0].snippet_marked() == "a café [menu]"
    finally:
        db.close()
    assert ("CREATE EXTENSION unaccent failed" in caplog.text) != installed
