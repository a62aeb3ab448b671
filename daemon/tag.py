"""Writing alt text, a description and keywords into images (or .xmp sidecars).

One long-lived exiftool process (``-stay_open``), one call per file so each
file gets its own error. Rules that protect people's work:

* a description or alt text someone wrote is never overwritten: we write a
  field only where it is empty or still holds exactly what we wrote before;
* a person's keywords are kept; ours are added, and on a re-tag only the
  keywords we added earlier are replaced;
* every value is sanitised first: a newline in a value would become a new
  exiftool argument (``"caption\\n-all="`` once erased a whole file).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import MetadataConfig
from .errors import MetadataError
from .files import EXIF_EXTENSIONS, IIM_EXTENSIONS, SIDECAR_ONLY_EXTENSIONS

log = logging.getLogger(__name__)

# Tag to write -> key exiftool -G1 reports it under when read back.
ALT = ("XMP-iptcCore:AltTextAccessibility", "XMP-iptcCore:AltTextAccessibility")
DESCRIPTIONS = (
    ("XMP-dc:Description", "XMP-dc:Description"),
    ("EXIF:ImageDescription", "IFD0:ImageDescription"),
    ("IPTC:Caption-Abstract", "IPTC:Caption-Abstract"),
)
KEYWORDS = (
    ("XMP-dc:Subject", "XMP-dc:Subject"),
    ("IPTC:Keywords", "IPTC:Keywords"),
    ("XMP-lr:HierarchicalSubject", "XMP-lr:HierarchicalSubject"),
)
# digiKam's own keyword tree ("a/b"); Immich reads it before anything else,
# so it is written only where a file already has one.
TAGS_LIST = ("XMP-digiKam:TagsList", "XMP-digiKam:TagsList")
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


@dataclass
class Outcome:
    """What a write did: where, what we now own in the file, what changed."""

    target: str
    written: dict[str, Any]
    changed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # fields left alone because a person wrote them
    before: dict[str, Any] = field(default_factory=dict)  # our fields as they were in the target


def sidecar_path(path: str | Path, pattern: str) -> Path:
    p = Path(path)
    return p.with_name(pattern.format(name=p.name, stem=p.stem))


class MetadataWriter:
    """Long-lived exiftool processes (``-stay_open``) that read and write our fields.

    *processes* > 1 lets that many threads write at once, each through its
    own exiftool; every call still handles one file.
    """

    def __init__(self, config: MetadataConfig | None = None, processes: int = 1) -> None:
        import exiftool

        self.config = config or MetadataConfig()
        self.processes = max(1, processes)
        self._pool: queue.Queue[Any] = queue.Queue()
        self._all: list[Any] = []
        try:
            for _ in range(self.processes):
                et = exiftool.ExifToolHelper(common_args=["-G1", "-charset", "filename=utf8"])
                et.run()
                self._all.append(et)
                self._pool.put(et)
        except FileNotFoundError:
            raise MetadataError(
                "exiftool", "exiftool is not installed: install Debian's libimage-exiftool-perl "
                "(sudo apt-get install libimage-exiftool-perl) or set metadata.write = false"
            ) from None

    def close(self) -> None:
        for _ in self._all:
            et = self._pool.get()  # waits for a call in progress to finish
            if et.running:
                et.terminate()
        self._all.clear()

    def __enter__(self) -> MetadataWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- reading --------------------------------------------------------------

    def read(self, path: str | Path) -> dict[str, Any]:
        """Our fields as they are in *path* now (lists for keyword tags)."""
        _check_name(path)
        if not os.path.exists(path):
            return {}
        args = ["-j", "-struct", *[f"-{k}" for k in READ_KEYS], str(path)]
        return _our_fields(json.loads(self._execute(path, args) or "[{}]")[0])

    def read_many(self, paths: list[Path]) -> dict[Path, dict[str, Any]]:
        """Like read() for several files in one exiftool command; a file it could not read is left out.

        One command for many files costs exiftool about half as much per
        file as a command each.
        """
        names = [p for p in dict.fromkeys(paths) if "\n" not in str(p) and "\r" not in str(p)]
        out: dict[Path, dict[str, Any]] = {p: {} for p in names if not p.exists()}
        names = [p for p in names if p not in out]
        if names:
            args = ["-j", "-struct", *[f"-{k}" for k in READ_KEYS], *map(str, names)]
            try:
                data = json.loads(self._execute(names[0], args) or "[]")
            except (MetadataError, ValueError):
                return out  # one bad file fails the command: each is read again on its own
            by_name = {str(p): p for p in names}
            out.update((by_name[d["SourceFile"]], _our_fields(d)) for d in data if d.get("SourceFile") in by_name)
        return out

    # --- writing --------------------------------------------------------------

    def target_for(self, path: str | Path) -> Path:
        """The file itself, or its sidecar when the format, permissions or config say so.

        Raises MetadataError when ``sidecar = "never"`` and the file cannot hold the tags.
        """
        p = Path(path)
        mode = self.config.sidecar
        if mode == "always":
            return sidecar_path(p, self.config.sidecar_name)
        reason = None
        if p.suffix.lower() in SIDECAR_ONLY_EXTENSIONS:
            reason = f"{p.suffix.lower()} files cannot hold these tags"
        elif not os.access(p, os.W_OK) or not os.access(p.parent, os.W_OK):
            # exiftool writes a temp file beside the image and renames it.
            reason = "the file or its folder is read-only"
        if reason is None:
            return p
        if mode == "never":
            raise MetadataError(path, f"not written: {reason} and metadata.sidecar is \"never\"")
        return sidecar_path(p, self.config.sidecar_name)

    def write(
        self,
        path: str | Path,
        *,
        alt_text: str,
        description: str,
        keywords: list[str],
        previous: dict[str, Any] | None = None,
        dry_run: bool = False,
        current: dict[str, Any] | None = None,
    ) -> Outcome:
        """Write our fields into *path* (or its sidecar), keeping a person's work.

        *previous* is what the index says we wrote last time: values still
        equal to it are ours to replace. With *dry_run* nothing is written:
        the outcome says what would change. *current* is the target's
        fields if the caller has just read them (read_many).
        """
        _check_name(path)
        cfg = self.config
        target = self.target_for(path)
        embedded = target == Path(path)
        if not embedded and not os.access(target.parent, os.W_OK) and not (
            target.exists() and os.access(target, os.W_OK)
        ):
            raise MetadataError(path, f"cannot write metadata: neither the file nor a sidecar in {target.parent} is writable")
        ext = Path(path).suffix.lower()
        if current is None:
            current = self.read(target)
        prev_tags: dict[str, Any] = (previous or {}).get("tags", {})
        prev_keywords: list[str] = (previous or {}).get("keywords", [])
        outcome = Outcome(target=str(target), written={"tags": {}, "keywords": []}, before=current)
        args: list[str] = []

        def applies(tag: tuple[str, str]) -> bool:
            """Whether this file (or sidecar) should carry *tag* at all."""
            group = tag[0].split(":", 1)[0]
            if group == "EXIF":
                return embedded and ext in EXIF_EXTENSIONS
            if group == "IPTC":
                return embedded and ext in IIM_EXTENSIONS
            return True

        def free(tag: tuple[str, str], value: Any) -> bool:
            # Empty, still ours, already exactly our value (an interrupted
            # write of ours), or camera boilerplate: not a person's text.
            now = current.get(tag[1])
            return not now or now == prev_tags.get(tag[1]) or now == value or bool(_BOILERPLATE.match(now))

        # Alt text on its own; the descriptions as one group, so a person's
        # caption in any of them keeps all three consistent.
        text_fields = [
            (cfg.alt_text, {ALT: cut_words(sanitize(alt_text), cfg.alt_text_max)}),
            (cfg.description, {
                tag: (cut_bytes(desc, IPTC_CAPTION_BYTES) if tag[0].startswith("IPTC") else desc)
                for desc in [cut_words(sanitize(description), XMP_DESCRIPTION_CHARS)]
                for tag in DESCRIPTIONS if applies(tag)
            }),
        ]
        for policy, wanted in text_fields:
            wanted = {tag: v for tag, v in wanted.items() if v}
            if policy == "off" or not wanted:
                continue
            if policy == "fill" and not all(free(tag, v) for tag, v in wanted.items()):
                outcome.kept += [tag[1] for tag in wanted if current.get(tag[1])]
                continue
            for tag, value in wanted.items():
                self._set(args, outcome, tag, value, current)

        ours = list(dict.fromkeys(k for k in (sanitize(k) for k in keywords) if k))
        if ours and cfg.keywords != "off":
            self._keywords(args, outcome, current, prev_keywords, ours, applies)

        if args and not dry_run:
            if any(a.startswith("-IPTC:") for a in args):
                args += ["-IPTC:CodedCharacterSet=UTF8", "-Photoshop:IPTCDigest=new"]
            # -P keeps the file's modification time: people sort photos by it.
            self._execute(path, ["-overwrite_original", "-P", *args, str(target)])
        return outcome

    def _keywords(self, args: list[str], outcome: Outcome, current: dict[str, Any], prev_ours: list[str],
                  ours: list[str], applies: Any) -> None:
        """A person's keywords stay (unless policy is overwrite); ours replace our earlier ones."""
        cfg = self.config
        overwrite = cfg.keywords == "overwrite"

        def merged(read_key: str, new: list[str]) -> list[str]:
            kept = [] if overwrite else [k for k in current.get(read_key, []) if k not in prev_ours]
            return list(dict.fromkeys(kept + new))

        # Earlier hierarchical/tree entries of ours, with or without a parent.
        parent = sanitize(cfg.keyword_parent).strip("|/")
        ours_hier = [f"{parent}|{k}" if parent else k for k in ours]
        prev_hier = set(prev_ours) | {f"{parent}|{k}" for k in prev_ours if parent}
        prev_tree = {h.replace("|", "/") for h in prev_hier}

        flat = merged(KEYWORDS[0][1], ours)
        self._set(args, outcome, KEYWORDS[0], flat, current)
        iptc: list[str] = []
        if applies(KEYWORDS[1]):
            iptc = merged(KEYWORDS[1][1], [cut_bytes(k, IPTC_KEYWORD_BYTES) for k in ours])
            self._set(args, outcome, KEYWORDS[1], iptc, current)
        # HierarchicalSubject must hold every keyword (Immich reads it
        # instead of dc:subject): a person's hierarchy, ours, and every flat
        # keyword that is not already a leaf of it.
        hier = [] if overwrite else [h for h in current.get(KEYWORDS[2][1], []) if h not in prev_hier]
        hier = list(dict.fromkeys(hier + ours_hier))
        leaves = {h.rsplit("|", 1)[-1] for h in hier}
        hier += [k for k in dict.fromkeys(flat + iptc) if k not in leaves]
        self._set(args, outcome, KEYWORDS[2], hier, current)
        if TAGS_LIST[1] in current:
            tree = [] if overwrite else [t for t in current[TAGS_LIST[1]] if t not in prev_tree]
            tree = list(dict.fromkeys(tree + [h.replace("|", "/") for h in ours_hier]))
            self._set(args, outcome, TAGS_LIST, tree, current)
        outcome.written["keywords"] = ours

    @staticmethod
    def _set(args: list[str], outcome: Outcome, tag: tuple[str, str], value: Any, current: dict[str, Any]) -> None:
        write_key, read_key = tag
        outcome.written["tags"][read_key] = value
        if current.get(read_key) == value:
            return  # already there: no rewrite, no new file
        outcome.changed.append(read_key)
        if isinstance(value, list):
            # Assigning a list tag several times in one command sets the whole list.
            args.extend(f"-{write_key}={v}" for v in value)
        else:
            args.append(f"-{write_key}={value}")

    def _execute(self, path: str | Path, args: list[str]) -> str:
        import exiftool.exceptions

        for a in args:
            if "\n" in a or "\r" in a:  # defence in depth: sanitize() already removed them
                raise MetadataError(path, "refusing to pass a line break to exiftool")
        et = self._pool.get()  # one request at a time per exiftool process
        try:
            return et.execute(*args)
        except exiftool.exceptions.ExifToolExecuteError as exc:
            raise MetadataError(path, _exiftool_reason(exc.stderr or exc.stdout or str(exc))) from None
        except (exiftool.exceptions.ExifToolException, OSError) as exc:
            raise MetadataError(path, f"exiftool failed: {exc}") from None
        finally:
            self._pool.put(et)


def _our_fields(data: dict[str, Any]) -> dict[str, Any]:
    """Our fields from one exiftool JSON record (lists for keyword tags)."""
    out: dict[str, Any] = {}
    for key in READ_KEYS:
        value = data.get(key)
        if value is None or value == "":
            continue
        if key in LIST_KEYS:
            out[key] = [str(v) for v in (value if isinstance(value, list) else [value])]
        else:
            out[key] = str(value)
    return out


def _check_name(path: str | Path) -> None:
    if "\n" in str(path) or "\r" in str(path):
        raise MetadataError(path, "exiftool cannot take a file name containing a line break; rename the file")


def _exiftool_reason(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip().startswith(("Error", "Warning"))]
    text = lines[0] if lines else (stderr.strip().splitlines() or ["unknown exiftool error"])[0]
    return "exiftool: " + re.sub(r" - /.*$", "", text)


def remove_stale_temp_files(folders: list[Path]) -> list[Path]:
    """Delete ``*_exiftool_tmp`` files a crash left behind; they block later writes."""
    removed: list[Path] = []
    for folder in folders:
        for root, dirs, files in os.walk(folder):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for name in files:
                if name.endswith("_exiftool_tmp"):
                    p = Path(root, name)
                    try:
                        p.unlink()
                        removed.append(p)
                        log.warning("removed %s, left by an interrupted metadata write", p)
                    except OSError as exc:
                        log.warning("cannot remove stale %s: %s", p, exc.strerror)
    return removed
