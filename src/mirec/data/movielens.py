"""MovieLens rating data sets (GroupLens), in their three distributed layouts.

- ML-100K: ``u.data`` (tab-separated, no header: user, item, rating, timestamp), ``u.item``
  (``|``-separated, latin-1: id|title|release date|video release date|IMDb URL|19 genre flags 0/1)
  and ``u.user`` (``|``-separated: id|age|gender|occupation|zip code).
- ML-1M and ML-10M: ``ratings.dat`` (``user::item::rating::timestamp``), ``movies.dat``
  (``id::title::Genre1|Genre2``, latin-1 in ML-1M) and, in ML-1M only, ``users.dat``
  (``user::gender::age::occupation::zip``; age and occupation are the README's codes, kept as is).
- ML-20M, ML-25M, ML-32M (and ml-latest): ``ratings.csv`` (header
  ``userId,movieId,rating,timestamp``) and ``movies.csv`` (header ``movieId,title,genres``, genres
  ``|``-separated, titles quoted when they contain commas).

The variant is detected from the files present (the CSV layout is named after its directory,
e.g. ``ml-25m``, or ``ml-csv`` when the name is not a known one). Ratings are kept; genres become
the items' categories ("(no genres listed)" and ML-100K's "unknown" genre give an empty list).

MovieLens ids are integers, so a non-integer id is a bad row. The large ratings files are
scanned with Polars; the small metadata files are split line by line in Python, so ``::``
separators, ``:`` inside titles and latin-1 text are read exactly.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

import polars as pl

from mirec.data.prepare import RawLog
from mirec.data.reader import Col, OnBadRows, csv_locator, read_validated, scan_text, text_problem
from mirec.data.sources import Source, register
from mirec.data.text import BOM
from mirec.errors import MirecDataError

GENRES_100K = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
)
NO_GENRES = ("", "unknown", "(no genres listed)")

Frame = tuple[pl.DataFrame, int]  # a validated table and its number of bad rows skipped


def load_movielens(path: Path, on_bad_rows: OnBadRows = "error") -> RawLog:
    """Read a MovieLens directory (ML-100K, ML-1M, ML-10M or ML-20M/25M/32M) into a RawLog.

    Raises :class:`MirecDataError` when the directory lacks the expected files or a row is bad
    (``on_bad_rows="error"``); with ``"skip"`` bad rows are dropped and counted (bad event rows in
    ``bad_rows_skipped``, bad metadata rows in ``source["bad_metadata_rows_skipped"]``).
    """
    path = Path(path)
    variant = detect_variant(path)
    users: Frame | None = None
    if variant == "ml-100k":
        events = _ratings_100k(path / "u.data", on_bad_rows)
        items = _items_100k(path / "u.item", on_bad_rows)
        users = _users_100k(path / "u.user", on_bad_rows)
    elif variant in ("ml-1m", "ml-10m"):
        events = _ratings_dat(path / "ratings.dat", on_bad_rows)
        items = _movies_dat(path / "movies.dat", on_bad_rows)
        if variant == "ml-1m":
            users = _users_dat(path / "users.dat", on_bad_rows)
    else:
        events = _ratings_csv(path / "ratings.csv", on_bad_rows)
        items = _movies_csv(path / "movies.csv", on_bad_rows)
    source: dict[str, object] = {"name": "movielens", "variant": variant, "path": str(path)}
    bad_meta = items[1] + (users[1] if users else 0)
    if bad_meta:
        source["bad_metadata_rows_skipped"] = bad_meta
    return RawLog(events=events[0], source=source, items=items[0],
                  users=users[0] if users else None, bad_rows_skipped=events[1])


def detect_variant(path: Path) -> str:
    """The MovieLens variant stored in directory ``path``, checking its required files."""
    if not path.is_dir():
        raise MirecDataError(f"{path}: not a directory; expected a MovieLens directory holding "
                             f"u.data (ML-100K), ratings.dat (ML-1M/10M) or ratings.csv (ML-20M+)")
    if (path / "u.data").exists():
        variant, required = "ml-100k", ("u.data", "u.item", "u.user")
    elif (path / "ratings.dat").exists():
        variant = "ml-1m" if (path / "users.dat").exists() else "ml-10m"
        required = ("ratings.dat", "movies.dat")
    elif (path / "ratings.csv").exists():
        variant, required = _csv_variant(path), ("ratings.csv", "movies.csv")
    else:
        raise MirecDataError(
            f"{path}: not a MovieLens directory: expected u.data, u.item, u.user (ML-100K), "
            f"ratings.dat, movies.dat[, users.dat] (ML-1M/10M) or ratings.csv, movies.csv "
            f"(ML-20M/25M/32M)"
        )
    missing = [name for name in required if not (path / name).exists()]
    if missing:
        raise MirecDataError(f"{path}: {variant} directory lacks {', '.join(missing)} "
                             f"(expected {', '.join(required)})")
    return variant


def _csv_variant(path: Path) -> str:
    name = path.name.lower()
    return name if re.fullmatch(r"ml-(\d+m|latest(-small)?)", name) else "ml-csv"


# ---- events ----------------------------------------------------------------------------------

def _event_cols(user: str, item: str, rating: str, ts: str) -> list[Col]:
    return [Col(user, "user", "int"), Col(item, "item", "int"), Col(ts, "ts", "time"),
            Col(rating, "rating", "float")]


def _ratings_100k(file: Path, on_bad_rows: OnBadRows) -> Frame:
    names = ("user", "item", "rating", "timestamp")
    lf = scan_text(file, "\t", has_header=False, names=names, quote_char=None)
    return read_validated(lf, _event_cols(*names), csv_locator(file, 1, "\t", None), on_bad_rows,
                          lambda: text_problem(file, "\t", None, has_header=False))


def _ratings_dat(file: Path, on_bad_rows: OnBadRows) -> Frame:
    # Polars needs a one-byte separator: split on ':' and keep every other column
    names = ("user", "_1", "item", "_2", "rating", "_3", "timestamp")
    lf = scan_text(file, ":", has_header=False, names=names, quote_char=None)
    cols = _event_cols("user", "item", "rating", "timestamp")
    return read_validated(lf, cols, csv_locator(file, 1, ":", None), on_bad_rows,
                          lambda: text_problem(file, ":", None, has_header=False))


def _ratings_csv(file: Path, on_bad_rows: OnBadRows) -> Frame:
    lf = scan_text(file, ",", has_header=True)
    cols = _event_cols("userId", "movieId", "rating", "timestamp")
    return read_validated(lf, cols, csv_locator(file, 2), on_bad_rows, lambda: text_problem(file))


# ---- items -----------------------------------------------------------------------------------

def _genre_list(genres: pl.Expr) -> pl.Expr:
    """``Genre1|Genre2`` -> list of genres, without empty and "no genre" entries."""
    return (genres.fill_null("").str.split("|")
            .list.eval(pl.element().filter(~pl.element().is_in(NO_GENRES))))


def _items_100k(file: Path, on_bad_rows: OnBadRows) -> Frame:
    names = ("movie id", "movie title", "release date", "video release date", "IMDb URL",
             *GENRES_100K)
    lf, locate = split_lines(file, "|", names)
    cols = [Col("movie id", "item", "int"), Col("movie title", "title", "str", required=False),
            *(Col(g, g, "int") for g in GENRES_100K)]
    df, n_bad = read_validated(lf, cols, locate, on_bad_rows)
    flags = [pl.when(pl.col(g) != 0).then(pl.lit(g)) for g in GENRES_100K if g not in NO_GENRES]
    cats = pl.concat_list(flags).list.drop_nulls().alias("categories")
    return df.select("item", "title", cats), n_bad


def _movies_dat(file: Path, on_bad_rows: OnBadRows) -> Frame:
    lf, locate = split_lines(file, "::", ("MovieID", "Title", "Genres"))
    return _movies(lf, locate, ("MovieID", "Title", "Genres"), on_bad_rows)


def _movies_csv(file: Path, on_bad_rows: OnBadRows) -> Frame:
    lf = scan_text(file, ",", has_header=True)
    return _movies(lf, csv_locator(file, 2), ("movieId", "title", "genres"), on_bad_rows)


def _movies(lf: pl.LazyFrame, locate: Callable[[int], str], names: Sequence[str],
            on_bad_rows: OnBadRows) -> Frame:
    cols = [Col(names[0], "item", "int"), Col(names[1], "title", "str", required=False),
            Col(names[2], "genres", "str", required=False)]
    df, n_bad = read_validated(lf, cols, locate, on_bad_rows)
    return df.select("item", "title", _genre_list(pl.col("genres")).alias("categories")), n_bad


# ---- users -----------------------------------------------------------------------------------

def _profile_cols(names: Sequence[str]) -> list[Col]:
    """``names``: the file's (user, age, gender, occupation, zip) column names."""
    user, age, gender, occupation, zip_code = names
    return [Col(user, "user", "int"), Col(age, "age", "int", required=False),
            Col(gender, "gender", "str", required=False),
            Col(occupation, "occupation", "str", required=False),
            Col(zip_code, "zip_code", "str", required=False)]


def _users_100k(file: Path, on_bad_rows: OnBadRows) -> Frame:
    names = ("user id", "age", "gender", "occupation", "zip code")
    lf, locate = split_lines(file, "|", names)
    return read_validated(lf, _profile_cols(names), locate, on_bad_rows)


def _users_dat(file: Path, on_bad_rows: OnBadRows) -> Frame:
    names = ("UserID", "Gender", "Age", "Occupation", "Zip-code")
    lf, locate = split_lines(file, "::", names)
    cols = _profile_cols(("UserID", "Age", "Gender", "Occupation", "Zip-code"))
    return read_validated(lf, cols, locate, on_bad_rows)


# ---- small text files ------------------------------------------------------------------------

def read_text(file: Path) -> str:
    """A small text file's contents: UTF-8 (a byte-order mark skipped), or latin-1 when it is not
    valid UTF-8 (MovieLens 1M's files)."""
    if not file.exists():
        raise MirecDataError(f"{file}: file not found")
    data = file.read_bytes()
    data = data[len(BOM):] if data.startswith(BOM) else data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def split_lines(file: Path, separator: str, names: Sequence[str]
                ) -> tuple[pl.LazyFrame, Callable[[int], str]]:
    """Split a small text file into string columns ``names``, one row per non-blank line.

    Each line is split on ``separator`` at most ``len(names) - 1`` times (so the last column keeps
    any extra separators); missing trailing fields are null. Returns the rows and a locator giving
    each row's ``file:line``.
    """
    rows: list[list[str | None]] = []
    lines: list[int] = []
    for number, line in enumerate(read_text(file).split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        fields: list[str | None] = list(line.split(separator, len(names) - 1))
        rows.append(fields + [None] * (len(names) - len(fields)))
        lines.append(number)
    frame = pl.DataFrame(rows, schema={n: pl.String for n in names}, orient="row")
    return frame.lazy(), lambda row: f"{file}:{lines[row]}" if row < len(lines) else str(file)


register(Source("movielens", "MovieLens directory: ML-100K, ML-1M/10M (.dat) or ML-20M+ (.csv)",
                load_movielens))
