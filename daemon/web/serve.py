"""``florence-watch serve``: the index as a local web page.

A search box (the same language as ``florence-watch search``), a grid of
thumbnails, and a page per image with the detected objects and text regions
drawn over it. No assets from the internet.

Safety: URLs name files by their index id, never by path, so only indexed
files can be served and no path can be traversed; every page is a Jinja2
template in ``daemon/web/templates`` with autoescaping on, so no HTML is built
here and every text (the model's included) reaches the page as text; the
server binds to 127.0.0.1 unless configured otherwise.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import threading
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from jinja2 import Environment, PackageLoader, StrictUndefined

from daemon import pdf
from daemon.config import Config, expand
from daemon.draw import Shape, colour, shapes
from daemon.errors import FlorenceWatchError, ImageError
from daemon.imaging import decode
from daemon.index.db import Database, File, Image
from daemon.index.meaning import Meaning, hybrid_search
from daemon.index.pages import page_count, pages_of
from daemon.index.records import results_for
from daemon.index.search import MARK_END, MARK_START, Hit, parse
from daemon.model.query_embed import query_encoder
from daemon.results import Summary, TaskResults, summarize
from daemon.tasks import layers as task_layers

log = logging.getLogger(__name__)

THUMB_PX = 320
VIEW_PX = 1600  # the picture on an image's page: big enough for a screen, small enough to send
PAGE_SIZE = 60
_ROUTE = re.compile(r"^/(image|thumb|view)/(\d{1,12})$")

# autoescape=True, not by file name: a template added later cannot opt out by being named .svg or .txt.
# StrictUndefined: a misspelt variable is an error in the tests, not a silently empty spot on the page.
_TEMPLATES = Environment(
    loader=PackageLoader("daemon.web", "templates"),
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def _page(template: str, **context: Any) -> bytes:
    """A page rendered from ``daemon/web/templates/<template>``."""
    return _TEMPLATES.get_template(template).render(**context).encode()


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "text/html; charset=utf-8"
    cache: bool = False


@dataclass(frozen=True)
class Card:
    """One search hit in the grid."""

    file_id: int
    caption: str
    name: str  # the file's name, without its folder
    snippet: list[tuple[str, bool]]  # (text, marked) runs; empty when the snippet is just the caption
    page: int | None = None  # the document's page the words are on


@dataclass(frozen=True)
class Region:
    """One shape of the overlay, in image pixels."""

    label: str
    colour: str
    points: str  # the SVG polygon's "x,y x,y ..."
    x: float  # where its label goes
    y: float


class WebApp:
    """Turns a request path into a response; the HTTP server below only carries it."""

    def __init__(self, config: Config, db: Database, meaning: Meaning | None = None) -> None:
        """*meaning*: one already warming (``serve`` shares its query service's); else loaded at the first search."""
        self.config = config
        self.db = db
        self.thumbs = expand(config.serve.thumbnails)
        self.meaning = meaning or Meaning(config.search, query_encoder)

    def respond(self, target: str) -> Response:
        url = urlsplit(target)
        if url.path == "/":
            return self.search_page(parse_qs(url.query))
        m = _ROUTE.match(url.path)
        if m is None:
            return self.not_found("no such page")
        kind, file_id = m.group(1), int(m.group(2))
        found = self._indexed(file_id)
        if found is None:
            return self.not_found("this image is not in the index")
        f, image, pages = found
        page = _page_number(parse_qs(url.query), pages)
        if page is None:
            return self.not_found(f"this document has {pages} page(s)" if pages else "an image has no pages")
        page = page if pages else 0  # 0: an image, not a page
        if kind == "image":
            return self.image_page(f, image, page)
        return self.picture(f, image, THUMB_PX if kind == "thumb" else VIEW_PX, page)

    def _indexed(self, file_id: int) -> tuple[File, Image, int] | None:
        """The indexed file, its image and how many pages it has (0: an image); None if not indexed."""
        with self.db.transaction() as s:
            f = s.get(File, file_id)
            if f is None or f.state != "indexed" or f.image_id is None:
                return None
            image = s.get(Image, f.image_id)
            return (f, image, page_count(s, image.id)) if image is not None else None

    # --- pages ------------------------------------------------------------------

    def search_page(self, params: dict[str, list[str]]) -> Response:
        """The search form, and the hits (the newest images when nothing is asked)."""
        q = params.get("q", [""])[0]
        folder = params.get("folder", [""])[0]
        since = params.get("since", [""])[0]
        has_text = params.get("has_text", [""])[0] == "1"
        error = ""
        try:
            query = parse(q, folder=folder or None, since=since or None, has_text=has_text)
            with self.db.transaction() as s:
                hits = hybrid_search(s, query, limit=PAGE_SIZE, meaning=self.meaning, everything=True)
        except FlorenceWatchError as exc:
            error, hits = str(exc), []
        body = _page(
            "search.html",
            title="florence-watch" + (f": {q}" if q else ""),
            q=q,
            folder=folder,
            since=since,
            has_text=has_text,
            error=error,
            searched=bool(q or folder or since or has_text),
            cards=[_card(h) for h in hits],
        )
        return Response(HTTPStatus.OK, body)

    def image_page(self, f: File, image: Image, page: int) -> Response:
        """The picture (a document's page *page*; 0 for an image) with its regions drawn over it, what the
        model said of it, and what was written."""
        with self.db.transaction() as s:
            model, results = results_for(s, image.id)
            pages = pages_of(s, image.id, model) if page else []
        w, h = image.width, image.height
        if pages:  # the page's own regions and text, over the page as drawn for the model
            results, w, h = pages[page - 1].results, pages[page - 1].width, pages[page - 1].height
        summary = summarize(results)
        font = max(w, h) / 32  # in image pixels: the labels scale with the picture
        written = json.loads(f.written) if f.written else None
        body = _page(
            "image.html",
            title=summary.caption or f.path,
            heading=summary.caption or os.path.basename(f.path),
            caption=summary.caption,
            file_id=f.id,
            page=page,
            pages=len(pages),
            width=w,
            height=h,
            stage_px=max(480, min(w, VIEW_PX)),
            font=font,
            layers=_layers(results, font),
            facts=_facts(summary, f, image, model),
            tags={k: _show(v) for k, v in written.get("tags", {}).items()} if written else None,
            target=f.metadata_target or f.path,
            tag_state=f.tag_state,
        )
        return Response(HTTPStatus.OK, body)

    def picture(self, f: File, image: Image, size: int, page: int = 0) -> Response:
        """A JPEG of the decoded image (orientation applied, as the model saw it) or of a document's
        *page*, made once and cached."""
        key = f.sha256 or image.sha256
        cached = self.thumbs / key[:2] / f"{key}-{size}{f'-p{page}' if page else ''}.jpg"
        if cached.exists():
            return Response(HTTPStatus.OK, cached.read_bytes(), "image/jpeg", cache=True)
        try:
            pic = pdf.pages(f.path, [page], self.config.pdf.dpi)[0] if page else decode(f.path).image
        except ImageError as exc:
            return self.not_found(f"cannot read the image: {exc.reason}")
        pic.thumbnail((size, size))
        buf = BytesIO()
        pic.save(buf, "JPEG", quality=85)
        data = buf.getvalue()
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            # Write beside, then rename: two requests for one thumbnail never see half a file.
            fd, tmp = tempfile.mkstemp(dir=cached.parent, suffix=".tmp")
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.replace(tmp, cached)
        except OSError as exc:  # still served, made again next time
            log.warning("cannot cache a thumbnail in %s: %s", cached.parent, exc)
            return Response(HTTPStatus.OK, data, "image/jpeg")
        return Response(HTTPStatus.OK, data, "image/jpeg", cache=True)

    def not_found(self, why: str) -> Response:
        """A 404 page that says *why*."""
        return Response(HTTPStatus.NOT_FOUND, _page("not_found.html", title="Not found", why=why))


def _card(hit: Hit) -> Card:
    """A hit as the grid shows it; a snippet that only repeats the caption is left out."""
    snippet = marked(hit.snippet) if hit.snippet and hit.snippet != hit.caption else []
    return Card(hit.file_id, hit.caption, os.path.basename(hit.path), snippet, hit.page)


def _page_number(params: dict[str, list[str]], pages: int) -> int | None:
    """The ``?page=`` asked for: 1 when none is; None for one the file does not have."""
    asked = params.get("page", ["1"])[0]
    if not asked.isdigit() or len(asked) > 6:
        return None
    n = int(asked)
    return n if 1 <= n <= max(1, pages) else None


def marked(snippet: str) -> list[tuple[str, bool]]:
    """A snippet's (text, marked) runs, split at its match markers.

    The template wraps the marked runs in <mark> and escapes every run, so a
    snippet never needs to be trusted as markup.
    """
    runs: list[tuple[str, bool]] = []
    for n, piece in enumerate(snippet.split(MARK_START)):
        # Every piece after a start marker is marked up to its end marker; a stray end marker is dropped.
        inside, _, after = piece.partition(MARK_END) if n else ("", "", piece)
        runs += [(inside, True), (after.replace(MARK_END, ""), False)]
    return [(text, is_marked) for text, is_marked in runs if text]


def _layers(results: TaskResults, font: float) -> dict[str, list[Region]]:
    """The overlay's layers (named by the task catalogue), each with its regions.

    A task that ran but found nothing still gets its layer, with a toggle that says (0).
    """
    out: dict[str, list[Region]] = {}
    # In the catalogue's order, not the results': the toggles keep their places from one image to the next.
    for task, layer in task_layers().items():
        if task in results:
            out.setdefault(layer, []).extend(_region(sh, font) for sh in shapes(results[task], task))
    return out


def _region(shape: Shape, font: float) -> Region:
    corners = shape.polygon()
    x0, y0 = min(p[0] for p in corners), min(p[1] for p in corners)
    # The label sits just above the shape, or just inside it when the shape touches the picture's top.
    return Region(
        shape.label, colour(shape.label), " ".join(f"{x:.1f},{y:.1f}" for x, y in corners), x0, max(font, y0 - 3)
    )


def _facts(summary: Summary, f: File, image: Image, model: str | None) -> list[tuple[str, str]]:
    """The facts table's rows; empty facts are left out."""
    rows = [
        ("Caption", summary.caption),
        ("Description", summary.description),
        ("Text in the image", summary.ocr),
        ("Keywords", ", ".join(summary.labels or [])),
        ("File", f.path),
        ("Size", f"{image.width} × {image.height} {image.format or ''}"),
        ("Model", model or ""),
    ]
    return [(k, v) for k, v in rows if v]


def _show(value: Any) -> str:
    """A metadata value as one line: lists (keywords) joined by commas."""
    return ", ".join(map(str, value)) if isinstance(value, list) else str(value)


class _Handler(BaseHTTPRequestHandler):
    app: WebApp
    server_version = "florence-watch"

    def do_GET(self) -> None:  # its name is the http.server API
        self._reply(head=False)

    def do_HEAD(self) -> None:
        self._reply(head=True)

    def _reply(self, head: bool) -> None:
        try:
            r = self.app.respond(self.path)
        except Exception:  # one bad request must not stop the server
            log.exception("error serving %s", self.path)
            r = Response(HTTPStatus.INTERNAL_SERVER_ERROR, _page("error.html", title="Error"))
        self.send_response(r.status)
        self.send_header("Content-Type", r.content_type)
        self.send_header("Content-Length", str(len(r.body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        # Nothing from elsewhere: no CDN, no fonts, no frames.
        self.send_header(
            "Content-Security-Policy",
            "default-src 'self'; style-src 'unsafe-inline'; "
            "script-src 'unsafe-inline'; img-src 'self'; frame-ancestors 'none'",
        )
        self.send_header("Cache-Control", "private, max-age=3600" if r.cache else "no-store")
        self.end_headers()
        if not head:
            self.wfile.write(r.body)

    def log_message(self, format: str, *args: Any) -> None:  # the http.server API names it format
        log.debug("%s %s", self.address_string(), format % args)


def make_server(
    config: Config, db: Database, host: str | None = None, port: int | None = None, meaning: Meaning | None = None
) -> ThreadingHTTPServer:
    """A server for the index, bound but not yet serving (``serve_forever``)."""
    handler = type("Handler", (_Handler,), {"app": WebApp(config, db, meaning)})
    host = host or config.serve.host
    port = config.serve.port if port is None else port
    try:
        server = ThreadingHTTPServer((host, port), handler)
    except OSError as exc:
        raise FlorenceWatchError(
            f"cannot listen on {host}:{port}: {exc.strerror}"
            + (" (is another serve running? set serve.port)" if exc.errno == 98 else "")
        ) from None
    server.daemon_threads = True
    return server


def serve_in_thread(server: ThreadingHTTPServer) -> threading.Thread:
    """Serve from a daemon thread; stop it with ``server.shutdown()``."""
    t = threading.Thread(target=server.serve_forever, name="serve", daemon=True)
    t.start()
    return t


def url_of(server: ThreadingHTTPServer, **query: str) -> str:
    """The server's address as a URL, with *query* as its search parameters."""
    host, port = server.server_address[:2]
    host = host.decode() if isinstance(host, bytes) else host
    return f"http://{host}:{port}/" + (f"?{urlencode(query)}" if query else "")
