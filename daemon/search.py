"""Full-text search over the index (SQLite FTS5, ranked by bm25).

User text never reaches FTS5's query syntax raw: each word or quoted phrase
is quoted, so a stray quote, ``-`` or ``NEAR`` is just text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.orm import Session

_TOKENS = re.compile(r'"([^"]*)"|(\S+)')


@dataclass
class Hit:
    path: str
    caption: str
    score: float


def fts_query(query: str) -> str:
    """Quote each word or "phrase" of *query* for FTS5; all must match."""
    parts = []
    for phrase, word in _TOKENS.findall(query):
        term = (phrase or word).replace('"', "").strip()
        if term:
            parts.append('"' + term + '"')
    return " ".join(parts)


def search(session: Session, query: str, limit: int = 20) -> list[Hit]:
    """Indexed files matching *query*, best first."""
    match = fts_query(query)
    if not match:
        return []
    rows = session.execute(
        text(
            "SELECT d.path, d.caption, bm25(documents_fts) AS rank "
            "FROM documents_fts JOIN documents d ON d.file_id = documents_fts.rowid "
            "JOIN files f ON f.id = d.file_id "
            "WHERE documents_fts MATCH :match AND f.state = 'indexed' "
            "ORDER BY rank LIMIT :limit"
        ),
        {"match": match, "limit": limit},
    ).all()
    # bm25 is lower-is-better and negative; people expect higher-is-better.
    return [Hit(path=p, caption=c or "", score=round(-r, 4)) for p, c, r in rows]
