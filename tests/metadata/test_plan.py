"""The rules that keep a person's work, table-driven: ``plan`` alone, no exiftool.

Their real twin is test_tag (the same rules through real exiftool and real files).
"""

from __future__ import annotations

from typing import Any

import pytest

from daemon.config import MetadataConfig
from daemon.metadata.plan import Decisions, Target, Wanted, decide, plan

ALT, DESC, SUBJ = "XMP-iptcCore:AltTextAccessibility", "XMP-dc:Description", "XMP-dc:Subject"
EXIF_DESC, IPTC_DESC = "IFD0:ImageDescription", "IPTC:Caption-Abstract"
IPTC_KW, HIER, TREE = "IPTC:Keywords", "XMP-lr:HierarchicalSubject", "XMP-digiKam:TagsList"
WANT = Wanted(alt_text="a dog on a sofa", description="A brown dog lies on a red sofa.", keywords=["dog", "sofa"])
JPEG = Target("/p/photo.jpg", embedded=True, extension=".jpg")
PREV = {"tags": {ALT: "an old caption", DESC: "An old description."}, "keywords": ["cat"]}


def run(
    current: dict[str, Any],
    previous: dict[str, Any] | None = None,
    target: Target = JPEG,
    wanted: Wanted = WANT,
    decided: Decisions | None = None,
    **policy: Any,
) -> Any:
    return plan(wanted, current, previous, MetadataConfig(**policy), target, decided)


# (case, current, previous, policy, field, expected value written or None when left alone)
TEXT_RULES = [
    ("empty gets ours", {}, None, {}, ALT, "a dog on a sofa"),
    ("a person's alt text stays", {ALT: "Grace, at home"}, None, {}, ALT, None),
    ("our earlier alt text is replaced", {ALT: "an old caption"}, PREV, {}, ALT, "a dog on a sofa"),
    ("overwrite replaces a person's", {ALT: "Grace, at home"}, None, {"alt_text": "overwrite"}, ALT, "a dog on a sofa"),
    ("off never writes", {}, None, {"alt_text": "off"}, ALT, None),
    (
        "camera boilerplate counts as empty",
        {EXIF_DESC: "OLYMPUS DIGITAL CAMERA"},
        None,
        {},
        EXIF_DESC,
        "A brown dog lies on a red sofa.",
    ),
    ("a person's text in one description keeps all three", {IPTC_DESC: "My dog"}, None, {}, DESC, None),
    (
        "our earlier description is replaced",
        {DESC: "An old description."},
        PREV,
        {},
        DESC,
        "A brown dog lies on a red sofa.",
    ),
    ("description off", {}, None, {"description": "off"}, DESC, None),
]


@pytest.mark.parametrize(
    ("case", "current", "previous", "policy", "field", "expected"), TEXT_RULES, ids=[r[0] for r in TEXT_RULES]
)
def test_text_field_rules(
    case: str, current: dict, previous: dict | None, policy: dict, field: str, expected: str | None
) -> None:
    out = run(current, previous, **policy)
    assert out.written["tags"].get(field) == expected
    assert (field in out.changed) == (expected is not None and current.get(field) != expected)
    if expected is None and current.get(field):
        assert field in out.kept


# (case, current keywords, previous ours, policy, expected dc:subject)
KEYWORD_RULES = [
    ("ours added to none", [], [], {}, ["dog", "sofa"]),
    ("a person's keywords stay first", ["holiday"], [], {}, ["holiday", "dog", "sofa"]),
    ("our earlier keywords are replaced", ["holiday", "cat"], ["cat"], {}, ["holiday", "dog", "sofa"]),
    ("no duplicates", ["dog"], [], {}, ["dog", "sofa"]),
    ("overwrite keeps only ours", ["holiday"], [], {"keywords": "overwrite"}, ["dog", "sofa"]),
    ("off writes none", ["holiday"], [], {"keywords": "off"}, None),
]


@pytest.mark.parametrize(
    ("case", "now", "prev", "policy", "expected"), KEYWORD_RULES, ids=[r[0] for r in KEYWORD_RULES]
)
def test_keyword_rules(case: str, now: list[str], prev: list[str], policy: dict, expected: list[str] | None) -> None:
    out = run({SUBJ: now, IPTC_KW: now} if now else {}, {"tags": {}, "keywords": prev}, **policy)
    assert out.written["tags"].get(SUBJ) == expected
    assert out.written["tags"].get(IPTC_KW) == expected
    if expected is not None:
        # HierarchicalSubject holds every keyword: Immich reads it instead of dc:subject.
        assert set(expected) <= set(out.written["tags"][HIER])


def test_hierarchy_keeps_a_persons_tree_and_adds_ours_under_the_parent() -> None:
    out = run(
        {HIER: ["People|Grace", "florence|cat"], SUBJ: ["Grace", "cat"], TREE: ["People/Grace"]},
        {"tags": {}, "keywords": ["cat"]},
        keyword_parent="florence",
    )
    assert out.written["tags"][HIER] == ["People|Grace", "florence|dog", "florence|sofa"]
    assert out.written["tags"][TREE] == ["People/Grace", "florence/dog", "florence/sofa"]
    assert out.written["tags"][SUBJ] == ["Grace", "dog", "sofa"]


def test_digikam_tree_only_where_the_file_has_one() -> None:
    assert TREE not in run({}).written["tags"]


@pytest.mark.parametrize(
    ("target", "iptc", "exif"),
    [
        (JPEG, True, True),
        (Target("/p/a.tif", True, ".tif"), True, True),
        (Target("/p/a.png", True, ".png"), False, True),
        (Target("/p/a.webp", True, ".webp"), False, True),
        (Target("/p/a.nef.xmp", False, ".nef"), False, False),  # a sidecar: XMP only
        (Target("/p/a.jpg.xmp", False, ".jpg"), False, False),
    ],
)
def test_tag_families_per_target(target: Target, iptc: bool, exif: bool) -> None:
    out = run({}, target=target)
    assert (IPTC_DESC in out.written["tags"] and IPTC_KW in out.written["tags"]) == iptc
    assert (EXIF_DESC in out.written["tags"]) == exif
    assert ("-IPTC:CodedCharacterSet=UTF8" in out.args) == iptc  # else non-Latin IPTC text is lost
    assert DESC in out.written["tags"] and ALT in out.written["tags"]


def test_nothing_to_do_when_the_file_already_holds_exactly_ours() -> None:
    first = run({})
    again = run(first.written["tags"], first.written)
    assert again.args == [] and again.changed == []


def test_hostile_values_become_one_line_each() -> None:
    out = run({}, wanted=Wanted("cap\n-all=", "desc\r\n-overwrite_original", ["k\n-all=", "\u2028x"]))
    assert not any("\n" in a or "\r" in a or "\u2028" in a for a in out.args)
    assert "-XMP-iptcCore:AltTextAccessibility=cap -all=" in out.args
    assert out.written["keywords"] == ["k -all=", "x"]


def test_alt_text_is_cut_at_a_word_and_iptc_keywords_at_64_bytes() -> None:
    long_kw = "ü" * 40  # 80 bytes in UTF-8
    out = run({}, wanted=Wanted("word " * 60, "d", [long_kw]), alt_text_max=30)
    assert len(out.written["tags"][ALT]) <= 30 and not out.written["tags"][ALT].endswith(" ")
    assert out.written["tags"][IPTC_KW] == ["ü" * 32] and out.written["tags"][SUBJ] == [long_kw]


# --- a person's removals are decisions ------------------------------------------

WROTE = {
    "tags": {
        ALT: "a dog on a sofa",
        DESC: "A brown dog.",
        SUBJ: ["cat", "sofa"],
        IPTC_KW: ["cat", "sofa"],
        HIER: ["cat", "sofa"],
    },
    "keywords": ["cat", "sofa"],
}
KEPT = {ALT: "a dog on a sofa", DESC: "A brown dog."}

# (case, what the file holds now, decisions stored before, expected keywords, expected fields)
DECISIONS = [
    (
        "nothing removed",
        {**KEPT, SUBJ: ["cat", "sofa"], IPTC_KW: ["cat", "sofa"], HIER: ["cat", "sofa"]},
        Decisions(),
        set(),
        set(),
    ),
    (
        "a keyword removed everywhere",
        {**KEPT, SUBJ: ["sofa", "holiday"], IPTC_KW: ["sofa", "holiday"], HIER: ["sofa", "holiday"]},
        Decisions(),
        {"cat"},
        set(),
    ),
    (
        "removed from dc:subject only",
        {**KEPT, SUBJ: ["sofa"], IPTC_KW: ["cat", "sofa"], HIER: ["cat", "sofa"]},
        Decisions(),
        {"cat"},
        set(),
    ),
    (
        "the description changed",
        {
            ALT: "a dog on a sofa",
            DESC: "Rex, asleep",
            SUBJ: ["cat", "sofa"],
            IPTC_KW: ["cat", "sofa"],
            HIER: ["cat", "sofa"],
        },
        Decisions(),
        set(),
        {"description"},
    ),
    (
        "the alt text removed",
        {DESC: "A brown dog.", SUBJ: ["cat", "sofa"], IPTC_KW: ["cat", "sofa"], HIER: ["cat", "sofa"]},
        Decisions(),
        set(),
        {"alt_text"},
    ),
    (
        "earlier decisions stay",
        {**KEPT, SUBJ: ["cat", "sofa"], IPTC_KW: ["cat", "sofa"], HIER: ["cat", "sofa"]},
        Decisions(frozenset({"dog"}), frozenset({"alt_text"})),
        {"dog"},
        {"alt_text"},
    ),
    (
        "a keyword added back takes the decision back",
        {**KEPT, SUBJ: ["cat", "sofa", "dog"], IPTC_KW: ["cat", "sofa"], HIER: ["cat", "sofa"]},
        Decisions(frozenset({"dog"})),
        set(),
        set(),
    ),
]


@pytest.mark.parametrize(("case", "current", "stored", "keywords", "fields"), DECISIONS, ids=[d[0] for d in DECISIONS])
def test_decisions(case: str, current: dict, stored: Decisions, keywords: set[str], fields: set[str]) -> None:
    got = decide(stored, WROTE, current)
    assert (set(got.keywords), set(got.fields)) == (keywords, fields)


def test_a_removed_keyword_is_not_written_back_and_a_removed_field_stays_empty() -> None:
    now = {DESC: "A brown dog.", SUBJ: ["sofa", "holiday"], IPTC_KW: ["sofa", "holiday"], HIER: ["sofa", "holiday"]}
    out = run(now, WROTE, wanted=Wanted("a dog on a sofa", "A brown dog.", ["cat", "sofa", "dog"]))
    assert out.written["tags"][SUBJ] == ["sofa", "holiday", "dog"]  # the file's order, then what is new
    assert "cat" not in out.written["tags"][IPTC_KW] and "cat" not in out.written["tags"][HIER]
    assert ALT not in out.written["tags"] and not any(a.startswith(f"-{ALT}") for a in out.args)
    assert out.decisions == Decisions(frozenset({"cat"}), frozenset({"alt_text"}))


def test_a_copy_still_holding_a_rejected_keyword_loses_it() -> None:
    copy = {**KEPT, SUBJ: ["cat", "sofa"], IPTC_KW: ["cat", "sofa"], HIER: ["cat", "sofa"]}
    out = run(
        copy,
        WROTE,
        decided=Decisions(frozenset({"cat"})),
        wanted=Wanted("a dog on a sofa", "A brown dog.", ["cat", "sofa"]),
    )
    assert out.written["tags"][SUBJ] == ["sofa"] and out.decisions.keywords == {"cat"}


def test_when_every_keyword_of_ours_is_rejected_the_list_is_cleared() -> None:
    out = run(
        {SUBJ: ["cat"], IPTC_KW: ["cat"], HIER: ["cat"]},
        {"tags": {SUBJ: ["cat"]}, "keywords": ["cat"]},
        decided=Decisions(frozenset({"cat"})),
        wanted=Wanted("", "", ["cat"]),
    )
    assert f"-{SUBJ}=" in out.args and out.written["tags"][SUBJ] == []


def test_a_tool_that_drops_iptc_and_the_hierarchy_decides_nothing() -> None:
    # Some tools save XMP only: IPTC keywords and HierarchicalSubject vanish, dc:subject stays.
    got = decide(Decisions(), WROTE, {**KEPT, SUBJ: ["cat", "sofa"]})
    assert got == Decisions()


def test_a_file_already_as_wanted_is_not_rewritten_for_order() -> None:
    now = {**KEPT, SUBJ: ["sofa", "holiday"], HIER: ["sofa", "holiday"]}
    sidecar = Target("/p/photo.jpg.xmp", embedded=False, extension=".jpg")  # XMP only
    out = run(now, WROTE, target=sidecar, wanted=Wanted("a dog on a sofa", "A brown dog.", ["cat", "sofa"]))
    assert out.args == [] and out.decisions.keywords == {"cat"}
