"""``florence-watch serve``: the index as a local web page.

A search box (the same language as ``florence-watch search``), a grid of
thumbnails, and a page per image with the detected objects and text regions
drawn over it. Standard library only, no assets from the internet.

Safety: URLs name files by their index id, never by path, so only indexed
files can be served and no path can be traversed; every text is escaped;
the server binds to 127.0.0.1 unless configured otherwise.
"""

from __future__ import annotations

import html
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

from .results import summarize
from .config import Config, expand
from .db import Database, File, Image
from .draw import Shape, colour, shapes
from .errors import FlorenceWatchError, ImageError
from .imaging import decode
from .index import results_for
from .search import MARK_END, MARK_START, parse, search
from .tasks import layers as task_layers

log = logging.getLogger(__name__)

THUMB_PX = 320
VIEW_PX = 1600  # the picture on an image's page: big enough for a screen, small enough to send
PAGE_SIZE = 60
_ROUTE = re.compile(r"^/(image|thumb|view)/(\d{1,12})$")


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "text/html; charset=utf-8"
    cache: bool = False


class WebApp:
    """Turns a request path into a response; the HTTP server below only carries it."""

    def __init__(self, config: Config, db: Database) -> None:
        self.config = config
        self.db = db
        self.thumbs = expand(config.serve.thumbnails)

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
        f, image = found
        if kind == "image":
            return self.image_page(f, image)
        return self.picture(f, image, THUMB_PX if kind == "thumb" else VIEW_PX)

    def _indexed(self, file_id: int) -> tuple[File, Image] | None:
        with self.db.transaction() as s:
            f = s.get(File, file_id)
            if f is None or f.state != "indexed" or f.image_id is None:
                return None
            image = s.get(Image, f.image_id)
            return (f, image) if image is not None else None

    # --- pages ------------------------------------------------------------------

    def search_page(self, params: dict[str, list[str]]) -> Response:
        q = params.get("q", [""])[0]
        folder = params.get("folder", [""])[0]
        since = params.get("since", [""])[0]
        has_text = params.get("has_text", [""])[0] == "1"
        error = ""
        try:
            query = parse(q, folder=folder or None, since=since or None, has_text=has_text)
            with self.db.transaction() as s:
                hits = search(s, query, limit=PAGE_SIZE, everything=True)
        except FlorenceWatchError as exc:
            error, hits = str(exc), []
        e = html.escape
        cards = []
        for h in hits:
            snippet = ""
            if h.snippet and h.snippet != h.caption:
                snippet = f'<div class="snip">{_marked(h.snippet)}</div>'
            cards.append(
                f'<a class="card" href="/image/{h.file_id}"><img src="/thumb/{h.file_id}" loading="lazy" '
                f'alt="{e(h.caption)}"><div class="cap">{e(h.caption)}</div>{snippet}'
                f'<div class="path">{e(os.path.basename(h.path))}</div></a>'
            )
        if error:
            summary = f'<p class="error">{e(error)}</p>'
        elif q or folder or since or has_text:
            summary = f"<p>{len(hits)} match{'es' if len(hits) != 1 else ''}</p>"
        else:
            summary = "<p>The newest images</p>"
        form = (
            '<form method="get" action="/" class="search">'
            f'<input type="search" name="q" id="q" value="{e(q)}" placeholder="red car, label:dog, '
            'text:invoice, -cat, &quot;a phrase&quot;" autofocus>'
            f'<input type="text" name="folder" value="{e(folder)}" placeholder="folder">'
            f'<input type="text" name="since" value="{e(since)}" placeholder="since (2024-06-01, 7d)" size="14">'
            f'<label><input type="checkbox" name="has_text" value="1"{" checked" if has_text else ""}> has text</label>'
            '<button type="submit">Search</button></form>'
            '<p class="help">Fields: <code>caption:</code> <code>desc:</code> <code>text:</code> '
            '<code>label:</code> <code>path:</code> &middot; <code>-word</code> excludes &middot; '
            '<code>OR</code> &middot; <code>"quoted phrase"</code></p>'
        )
        body = form + summary + f'<div class="grid">{"".join(cards)}</div>'
        return Response(HTTPStatus.OK, _page("florence-watch" + (f": {q}" if q else ""), body))

    def image_page(self, f: File, image: Image) -> Response:
        with self.db.transaction() as s:
            model, results = results_for(s, image.id)
        summary = summarize(results)
        e = html.escape
        layers: dict[str, list[Shape]] = {}
        for task, result in results.items():
            layer = task_layers().get(task)
            if layer:
                layers.setdefault(layer, []).extend(shapes(result, task))
        w, h = image.width, image.height
        font = max(w, h) / 32  # in image pixels: the labels scale with the picture
        svg = [f'<svg id="overlay" viewBox="0 0 {w} {h}" preserveAspectRatio="none" '
               f'xmlns="http://www.w3.org/2000/svg" style="font-size:{font:.1f}px">']
        for layer, found in layers.items():
            svg.append(f'<g class="layer" data-layer="{layer}">')
            for sh in found:
                corners = sh.polygon()
                pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in corners)
                x0, y0 = min(p[0] for p in corners), min(p[1] for p in corners)
                c = colour(sh.label)
                svg.append(f'<g class="shape"><title>{e(sh.label)}</title>'
                           f'<polygon points="{pts}" stroke="{c}"/>')
                if sh.label:
                    svg.append(f'<text class="label" x="{x0:.1f}" y="{max(font, y0 - 3):.1f}" fill="{c}">'
                               f'{e(sh.label)}</text>')
                svg.append("</g>")
            svg.append("</g>")
        svg.append("</svg>")
        toggles = "".join(
            f'<label><input type="checkbox" class="toggle" data-layer="{layer}" checked> {e(layer)} '
            f'({len(found)})</label>' for layer, found in layers.items()
        ) + ('<label><input type="checkbox" id="toggle-labels" checked> labels</label>' if layers else "")
        written = json.loads(f.written) if f.written else None
        rows = [("Caption", summary.caption), ("Description", summary.description), ("Text in the image", summary.ocr),
                ("Keywords", ", ".join(summary.labels or [])), ("File", f.path),
                ("Size", f"{w} × {h} {image.format or ''}"), ("Model", model or "")]
        facts = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in rows if v)
        meta = "<p>Nothing written into this file (yet).</p>"
        if written:
            tags = written.get("tags", {})
            meta = (f"<p>Written to <code>{e(f.metadata_target or f.path)}</code> ({e(f.tag_state)}):</p><table>"
                    + "".join(f"<tr><th>{e(k)}</th><td>{e(_show(v))}</td></tr>" for k, v in tags.items())
                    + "</table>")
        body = (
            '<p><a href="/">&larr; search</a></p>'
            f'<h1>{e(summary.caption or os.path.basename(f.path))}</h1>'
            f'<div class="toggles">{toggles}</div>'
            # As wide as the page allows, at most 80 % of the window high, small images shown larger.
            f'<div class="stage" style="width:min(100%, {max(480, min(w, VIEW_PX))}px, calc(80vh * {w} / {h}))">'
            f'<img id="picture" src="/view/{f.id}" alt="{e(summary.caption)}">{"".join(svg)}</div>'
            f'<table class="facts">{facts}</table><h2>In the file\'s metadata</h2>{meta}'
        )
        return Response(HTTPStatus.OK, _page(summary.caption or f.path, body, script=_TOGGLE_JS))

    def picture(self, f: File, image: Image, size: int) -> Response:
        """A JPEG of the decoded image (orientation applied, as the model saw it), made once and cached."""
        key = f.sha256 or image.sha256
        cached = self.thumbs / key[:2] / f"{key}-{size}.jpg"
        if cached.exists():
            return Response(HTTPStatus.OK, cached.read_bytes(), "image/jpeg", cache=True)
        try:
            pic = decode(f.path).image
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
        body = f'<p><a href="/">&larr; search</a></p><h1>Not found</h1><p>{html.escape(why)}</p>'
        return Response(HTTPStatus.NOT_FOUND, _page("Not found", body))


def _marked(snippet: str) -> str:
    """Escape a snippet, then turn its match markers into <mark>."""
    return html.escape(snippet).replace(MARK_START, "<mark>").replace(MARK_END, "</mark>")


def _show(value: Any) -> str:
    return ", ".join(map(str, value)) if isinstance(value, list) else str(value)


_TOGGLE_JS = """
for (const box of document.querySelectorAll('input.toggle')) {
  box.addEventListener('change', () => {
    for (const g of document.querySelectorAll(`g.layer[data-layer="${box.dataset.layer}"]`))
      g.style.display = box.checked ? '' : 'none';
  });
}
const labels = document.getElementById('toggle-labels');
if (labels) labels.addEventListener('change', () => {
  for (const t of document.querySelectorAll('#overlay text.label')) t.style.display = labels.checked ? '' : 'none';
});
"""

_CSS = """
body{font:15px/1.4 system-ui,sans-serif;margin:1.5em;background:#fafafa;color:#222}
form.search{display:flex;flex-wrap:wrap;gap:.5em;align-items:center}
form.search input[type=search]{flex:1 1 22em;font-size:1.1em;padding:.35em}
.help{color:#666;font-size:.85em}.error{color:#b00020}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(200px,1fr));gap:1em}
.card{display:block;background:#fff;border:1px solid #ddd;border-radius:6px;padding:.5em;color:inherit;text-decoration:none}
.card img{width:100%;height:180px;object-fit:contain;background:#eee}
.cap{font-weight:600}.snip{color:#444;font-size:.9em}.path{color:#888;font-size:.8em;overflow-wrap:anywhere}
mark{background:#ffe066}
.stage{position:relative;display:inline-block;max-width:100%}
.stage img{display:block;width:100%;height:auto}
.stage svg{position:absolute;inset:0;width:100%;height:100%;pointer-events:none}
.stage polygon{fill:none;stroke-width:3;vector-effect:non-scaling-stroke}
.stage text{paint-order:stroke;stroke:#000;stroke-width:.12em;font-weight:600}
.toggles label{margin-right:1em}
table.facts th,table th{text-align:left;vertical-align:top;padding-right:1em;color:#555;font-weight:500}
"""


def _page(title: str, body: str, script: str = "") -> bytes:
    js = f"<script>{script}</script>" if script else ""
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>{body}{js}</body></html>"
    ).encode()


class _Handler(BaseHTTPRequestHandler):
    app: WebApp
    server_version = "florence-watch"

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        self._reply(head=False)

    def do_HEAD(self) -> None:  # noqa: N802
        self._reply(head=True)

    def _reply(self, head: bool) -> None:
        try:
            r = self.app.respond(self.path)
        except Exception:  # noqa: BLE001 - one bad request must not stop the server
            log.exception("error serving %s", self.path)
            r = Response(HTTPStatus.INTERNAL_SERVER_ERROR, _page("Error", "<h1>Something went wrong</h1>"))
        self.send_response(r.status)
        self.send_header("Content-Type", r.content_type)
        self.send_header("Content-Length", str(len(r.body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        # Nothing from elsewhere: no CDN, no fonts, no frames.
        self.send_header("Content-Security-Policy", "default-src 'self'; style-src 'unsafe-inline'; "
                         "script-src 'unsafe-inline'; img-src 'self'; frame-ancestors 'none'")
        self.send_header("Cache-Control", "private, max-age=3600" if r.cache else "no-store")
        self.end_headers()
        if not head:
            self.wfile.write(r.body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the http.server API
        log.debug("%s %s", self.address_string(), format % args)


def make_server(config: Config, db: Database, host: str | None = None, port: int | None = None) -> ThreadingHTTPServer:
    """A server for the index, bound but not yet serving (``serve_forever``)."""
    handler = type("Handler", (_Handler,), {"app": WebApp(config, db)})
    host = host or config.serve.host
    port = config.serve.port if port is None else port
    try:
        server = ThreadingHTTPServer((host, port), handler)
    except OSError as exc:
        raise FlorenceWatchError(f"cannot listen on {host}:{port}: {exc.strerror}"
                                 + (" (is another serve running? set serve.port)" if exc.errno == 98 else "")) from None
    server.daemon_threads = True
    return server


def serve_in_thread(server: ThreadingHTTPServer) -> threading.Thread:
    t = threading.Thread(target=server.serve_forever, name="serve", daemon=True)
    t.start()
    return t


def url_of(server: ThreadingHTTPServer, **query: str) -> str:
    host, port = server.server_address[:2]
    host = host.decode() if isinstance(host, bytes) else host
    return f"http://{host}:{port}/" + (f"?{urlencode(query)}" if query else "")
