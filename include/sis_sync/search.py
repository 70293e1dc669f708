"""Search that ignores case and accents alike on SQLite and PostgreSQL.

Neither store folds accents on its own the same way (SQLite's LIKE folds ASCII case only;
PostgreSQL's needs the ``unaccent`` extension), so the commit keeps a folded copy of the
searchable fields in each person's and class's ``search_text`` column, and a search folds its
words the same way before a plain ``LIKE``. The column starts with the name (family name first
for people), so ordering by it lists people alphabetically, case and accents aside.
"""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa

from include.sis_sync import model

# The fields folded into search_text, the sort name first.
SEARCH_FIELDS: dict[str, tuple[str, ...]] = {
    model.USERS.name: (
        "family_name",
        "given_name",
        "middle_name",
        "email",
        "username",
        "sis_key",
        "sis_id",
        "student_number",
        "teacher_number",
    ),
    model.SECTIONS.name: ("name", "code", "sis_key", "subject", "period"),
}
# Letters that Unicode does not decompose into a base letter and a mark, and typographic
# apostrophes (O\u2019Brien typed on a phone finds O'Brien).
_LETTERS = str.maketrans(
    {"ø": "o", "ł": "l", "đ": "d", "ð": "d", "\u0131": "i", "æ": "ae", "œ": "oe", "þ": "th"}
    | {"\u2019": "'", "\u2018": "'", "\u02bc": "'"}
)
_MARKS = r"[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]"


def fold(values: pd.Series) -> pd.Series:
    """Lower case, without accents, with single spaces: "Zoë  O'Brien" → "zoe o'brien".

    Only the values with a non-ASCII letter go through the Unicode steps in Python (a few
    percent of a roster, and the costly part); lower case and spaces are Arrow's, in bulk."""
    text = values.astype("string").fillna("")
    ascii_only = text.str.isascii()
    if not ascii_only.all():
        odd = text[~ascii_only].str.normalize("NFKD").str.replace(_MARKS, "", regex=True)
        text = text.where(ascii_only, odd.str.casefold().str.translate(_LETTERS))
    lowered = pc.utf8_lower(pa.array(text, type=pa.large_string()))
    spaced = pc.utf8_trim_whitespace(pc.replace_substring_regex(lowered, r"\s+", " "))
    return pd.Series(spaced, index=values.index, dtype="string")


def fold_text(text: str) -> str:
    """:func:`fold` of one string (a search's words)."""
    return str(fold(pd.Series([text], dtype="string")).iloc[0])


def search_text(entity: str, frame: pd.DataFrame) -> pd.Series:
    """The folded search text of each row of ``frame`` (which holds sis_key and the fields):
    the fields joined by spaces (in Arrow), then folded once."""
    names = [name for name in SEARCH_FIELDS[entity] if name in frame.columns]
    parts = [pa.array(frame[n].astype("string").fillna(""), type=pa.large_string()) for n in names]
    joined = pc.binary_join_element_wise(*parts, pa.scalar(" ", pa.large_string()))
    return fold(pd.Series(joined, index=frame.index, dtype="string"))


def matches(column: sa.ColumnElement[str], words: str) -> sa.ColumnElement[bool]:
    """``column`` contains each of the folded ``words``, in any order ("thi nguyen" finds
    "Nguyễn Thị"); ``%`` and ``_`` are taken as text."""
    words_ = fold_text(words).split()
    if not words_:
        return sa.true()
    return sa.and_(*(column.like(f"%{like_escaped(word)}%", escape="\\") for word in words_))


def like_escaped(text: str) -> str:
    """``text`` as a LIKE pattern matches it literally (with ``ESCAPE '\\'``)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
