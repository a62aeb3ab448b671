"""What to write into one file, given what it holds now: the rules that keep a person's work.

Pure functions, no exiftool: the caller reads the file, :func:`plan` decides,
the caller runs the arguments it returns. The rules:

* a description or alt text someone wrote is never overwritten: we write a
  field only where it is empty, camera boilerplate, or still exactly what
  we wrote before (policy ``fill``); ``overwrite`` always writes; ``off`` never;
* a person's keywords are kept; ours are added, and on a re-tag only the
  keywords we added earlier are replaced;
* a person's removal is a decision: a keyword of ours they took out, or an
  alt text or description of ours they changed or removed, is never written
  again for that image (:func:`decide`); adding the keyword back themselves
  takes the decision back;
* every value is sanitised first: a newline in a value would become a new
  exiftool argument (``"caption\\n-all="`` once erased a whole file).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

from daemon.config import MetadataConfig
from daemon.files import EXIF_EXTENSIONS, IIM_EXTENSIONS

Tag = tuple[str, str]  # the name exiftool writes -> the key exiftool -G1 reads it back under

ALT: Tag = ("XMP-iptcCore:AltTextAccessibility", "XMP-iptcCore:AltTextAccessibility")
DESCRIPTIONS: tuple[Tag, ...] = (
    ("XMP-dc:Description", "XMP-dc:Description"),
    ("EXIF:ImageDescription", "IFD0:ImageDescription"),
    ("IPTC:Caption-Abstract", "IPTC:Caption-Abstract"),
    ("PDF:Subject", "PDF:Subject"),  # a PDF's document info, which every PDF reader shows
)
SUBJECT: Tag = ("XMP-dc:Subject", "XMP-dc:Subject")
IPTC_KEYWORDS: Tag = ("IPTC:Keywords", "IPTC:Keywords")
HIERARCHY: Tag = ("XMP-lr:HierarchicalSubject", "XMP-lr:HierarchicalSubject")
PDF_KEYWORDS: Tag = ("PDF:Keywords", "PDF:Keywords")
KEYWORDS = (SUBJECT, IPTC_KEYWORDS, HIERARCHY, PDF_KEYWORDS)
# digiKam's own keyword tree ("a/b"); Immich reads it before anything else,
# so it is written only where a file already has one.
TAGS_LIST: Tag = ("XMP-digiKam:TagsList", "XMP-digiKam:TagsList")
LIST_KEYS = frozenset([r for _, r in KEYWORDS] + [TAGS_LIST[1]])
READ_KEYS = [ALT[1]] + [r for _, r in DESCRIPTIONS] + [r for _, r in KEYWORDS] + [TAGS_LIST[1]]

IPTC_CAPTION_BYTES = 2000
IPTC_KEYWORD_BYTES = 64
XMP_DESCRIPTION_CHARS = 2000

# What cameras and editors put in ImageDescription when nobody wrote one:
# it counts as empty, not as a person's text.
_BOILERPLATE = re.compile(
    r"^\s*(|.*digital camera|sony dsc|dcim|default|exif_jpeg_picture|created with gimp|"
    r"file written by adobe photoshop.*|samsung|lg digital camera|image description|"
    r"[a-z]+ digital still camera|<[^>]*>|\?+)\s*$",
    re.IGNORECASE,
)
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")


def sanitize(value: str) -> str:
    """One line of printable text: control, format and separator characters become spaces."""
    value = unicodedata.normalize("NFC", value)
    value = _UNSAFE.sub(" ", value)
    value = "".join(" " if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp", "Cs") else c for c in value)
    return re.sub(r"\s+", " ", value).strip()


def cut_words(text: str, limit: int) -> str:
    """At most *limit* characters, cut at a word boundary when there is one."""
    if len(text) <= limit:
        return text
    cut = text[: limit + 1].rsplit(" ", 1)[0] if " " in text[: limit + 1] else text[:limit]
    return cut[:limit].rstrip(" ,;:-")


def cut_bytes(text: str, limit: int) -> str:
    """At most *limit* UTF-8 bytes, never splitting a character."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    return data[:limit].decode("utf-8", errors="ignore").rstrip()


@dataclass(frozen=True)
class Wanted:
    """What the model says the file should carry."""

    alt_text: str
    description: str
    keywords: list[str]


@dataclass(frozen=True)
class Target:
    """Where the tags go and which tag families that place can carry."""

    path: str
    embedded: bool  # the image itself, not a sidecar
    extension: str  # of the image: decides IPTC-IIM and EXIF

    def carries(self, tag: Tag) -> bool:
        group = tag[0].split(":", 1)[0]
        if self.extension == ".pdf":  # a document: Dublin Core and its own document info, no photo fields
            return group == "XMP-dc" or (group == "PDF" and self.embedded)
        if group == "PDF":
            return False
        if group == "EXIF":
            return self.embedded and self.extension in EXIF_EXTENSIONS
        if group == "IPTC":
            return self.embedded and self.extension in IIM_EXTENSIONS
        return True


@dataclass(frozen=True)
class Decisions:
    """What a person decided against for one image: keywords of ours, and whole fields."""

    keywords: frozenset[str] = frozenset()
    fields: frozenset[str] = frozenset()  # "alt_text", "description"


def decide(stored: Decisions, previous: dict[str, Any] | None, current: dict[str, Any]) -> Decisions:
    """*stored* decisions, plus what of ours (*previous*) the file no longer holds, less keywords added back.

    dc:subject and the XMP alt text and description are what every photo
    tool edits: one of ours missing there is a decision. IPTC keywords, the
    hierarchy and the EXIF/IPTC descriptions count only while the file still
    has that tag at all: some tools drop a whole tag family when they save,
    which is no decision about our words. A keyword the file holds although
    we did not write it there is the person adding it back.
    """
    prev = previous or {}
    prev_tags: dict[str, Any] = prev.get("tags", {})
    ours: list[str] = prev.get("keywords", [])
    subject = set(current.get(SUBJECT[1], []))
    removed = {k for k in ours if _removed(k, prev_tags, current)}
    added_back = {k for k in stored.keywords if k in subject and k not in ours}
    fields = set(stored.fields)
    for name, tags in (("alt_text", (ALT,)), ("description", DESCRIPTIONS)):
        for t in tags:
            edited = t[1] in prev_tags and current.get(t[1]) != prev_tags[t[1]]
            if edited and (t[1] in current or t in (ALT, DESCRIPTIONS[0])):
                fields.add(name)
    return Decisions(frozenset((stored.keywords | removed) - added_back), frozenset(fields))


def _removed(keyword: str, prev_tags: dict[str, Any], current: dict[str, Any]) -> bool:
    """Whether a keyword tag we wrote *keyword* into lacks it now (see decide)."""
    for tag in (SUBJECT, IPTC_KEYWORDS, HIERARCHY):
        if tag[1] not in prev_tags or (tag != SUBJECT and tag[1] not in current):
            continue
        now = current.get(tag[1], [])
        if tag == HIERARCHY:
            if keyword in {h.rsplit("|", 1)[-1] for h in prev_tags[tag[1]]} and keyword not in {
                h.rsplit("|", 1)[-1] for h in now
            }:
                return True
        elif _ours_in(keyword, prev_tags[tag[1]]) and not _ours_in(keyword, now):
            return True
    return False


def _ours_in(keyword: str, values: Any) -> bool:
    # IPTC keywords are cut to 64 bytes: ours may be there in its cut form.
    return keyword in values or cut_bytes(keyword, IPTC_KEYWORD_BYTES) in values


@dataclass
class Outcome:
    """A plan, and after it ran, what a write did: where, what we now own, what changed."""

    target: str
    written: dict[str, Any]
    changed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # fields left alone because a person wrote them
    before: dict[str, Any] = field(default_factory=dict)  # our fields as they were in the target
    args: list[str] = field(default_factory=list)  # exiftool arguments that carry it out ([] = nothing to do)
    decisions: Decisions = field(default_factory=Decisions)  # the person's, as of this write


def plan(
    wanted: Wanted,
    current: dict[str, Any],
    previous: dict[str, Any] | None,
    config: MetadataConfig,
    target: Target,
    decided: Decisions | None = None,
) -> Outcome:
    """Decide what to write: *current* is what the target holds now, *previous* what we wrote last time,
    *decided* the person's earlier decisions about this image."""
    decisions = decide(decided or Decisions(), previous, current)
    p = _Planner(current, previous or {}, config, target)
    p.outcome.decisions = decisions
    p.text_fields(wanted, skip=decisions.fields)
    ours = list(dict.fromkeys(k for k in (sanitize(k) for k in wanted.keywords) if k and k not in decisions.keywords))
    if (ours or p.prev_keywords) and config.keywords != "off":
        p.keywords(ours)
    if any(a.startswith("-IPTC:") for a in p.outcome.args):
        p.outcome.args += ["-IPTC:CodedCharacterSet=UTF8", "-Photoshop:IPTCDigest=new"]
    return p.outcome


class _Planner:
    def __init__(
        self, current: dict[str, Any], previous: dict[str, Any], config: MetadataConfig, target: Target
    ) -> None:
        self.current, self.config, self.target = current, config, target
        self.prev_tags: dict[str, Any] = previous.get("tags", {})
        self.prev_keywords: list[str] = previous.get("keywords", [])
        self.outcome = Outcome(target=target.path, written={"tags": {}, "keywords": []}, before=current)

    def free(self, tag: Tag, value: Any) -> bool:
        """Empty, still ours, already exactly our value (an interrupted write of ours), or boilerplate."""
        now = self.current.get(tag[1])
        return not now or now == self.prev_tags.get(tag[1]) or now == value or bool(_BOILERPLATE.match(now))

    def text_fields(self, wanted: Wanted, skip: frozenset[str]) -> None:
        """Alt text on its own; the descriptions as one group, so a person's caption in any keeps all three.

        Fields in *skip* are the person's decision: never written again.
        """
        desc = cut_words(sanitize(wanted.description), XMP_DESCRIPTION_CHARS)
        alt = {ALT: cut_words(sanitize(wanted.alt_text), self.config.alt_text_max)} if self.target.carries(ALT) else {}
        groups = [
            ("alt_text", self.config.alt_text, alt),
            (
                "description",
                self.config.description,
                {
                    tag: cut_bytes(desc, IPTC_CAPTION_BYTES) if tag[0].startswith("IPTC") else desc
                    for tag in DESCRIPTIONS
                    if self.target.carries(tag)
                },
            ),
        ]
        for name, policy, values in groups:
            values = {tag: v for tag, v in values.items() if v}
            if policy == "off" or not values:
                continue
            if name in skip or (policy == "fill" and not all(self.free(tag, v) for tag, v in values.items())):
                self.outcome.kept += [tag[1] for tag in values if self.current.get(tag[1])]
                continue
            for tag, value in values.items():
                self.set(tag, value)

    def merged(self, tag: Tag, ours: list[str], earlier: set[str]) -> list[str]:
        """*tag*'s entries as the file has them, less our *earlier* ones we no longer want, then ours not yet there.

        The file's order is kept, so a file that already holds what we want
        is not rewritten. With policy overwrite the list is ours alone.
        """
        if self.config.keywords == "overwrite":
            return list(dict.fromkeys(ours))
        kept = [k for k in self.current.get(tag[1], []) if k not in earlier or k in ours]
        return list(dict.fromkeys(kept + ours))

    def keywords(self, ours: list[str]) -> None:
        """dc:subject and IPTC keywords, a hierarchy that holds every keyword, digiKam's tree if present."""
        parent = sanitize(self.config.keyword_parent).strip("|/")
        ours_hier = [f"{parent}|{k}" if parent else k for k in ours]
        prev_flat = set(self.prev_keywords)
        prev_hier = prev_flat | {f"{parent}|{k}" for k in self.prev_keywords if parent}
        flat = self.merged(SUBJECT, ours, prev_flat)
        self.set(SUBJECT, flat)
        iptc: list[str] = []
        if self.target.carries(IPTC_KEYWORDS):
            iptc = self.merged(IPTC_KEYWORDS, [cut_bytes(k, IPTC_KEYWORD_BYTES) for k in ours], prev_flat)
            self.set(IPTC_KEYWORDS, iptc)
        # HierarchicalSubject must hold every keyword (Immich reads it instead
        # of dc:subject): a person's hierarchy, ours, and every flat keyword
        # that is not already a leaf of it.
        if self.target.carries(PDF_KEYWORDS):
            self.set(PDF_KEYWORDS, self.merged(PDF_KEYWORDS, ours, prev_flat))
        if self.target.carries(HIERARCHY):
            hier = self.merged(HIERARCHY, ours_hier, prev_hier)
            leaves = {h.rsplit("|", 1)[-1] for h in hier}
            self.set(HIERARCHY, hier + [k for k in dict.fromkeys(flat + iptc) if k not in leaves])
        if TAGS_LIST[1] in self.current:
            prev_tree = {h.replace("|", "/") for h in prev_hier}
            self.set(TAGS_LIST, self.merged(TAGS_LIST, [h.replace("|", "/") for h in ours_hier], prev_tree))
        self.outcome.written["keywords"] = ours

    def set(self, tag: Tag, value: Any) -> None:
        write_key, read_key = tag
        self.outcome.written["tags"][read_key] = value
        if self.current.get(read_key) == value:
            return  # already there: no rewrite, no new file
        self.outcome.changed.append(read_key)
        if tag == PDF_KEYWORDS:
            # One string in the PDF, which exiftool reads split at commas, or at spaces where it has
            # none: a lone keyword of two words gets a comma after it, so that it reads back whole.
            self.outcome.args.append(f"-{write_key}={', '.join(value)}{',' * (len(value) == 1)}")
        elif isinstance(value, list):
            # Assigning a list tag several times in one command sets the whole
            # list; assigning nothing clears it.
            self.outcome.args.extend([f"-{write_key}={v}" for v in value] or [f"-{write_key}="])
        else:
            self.outcome.args.append(f"-{write_key}={value}")
