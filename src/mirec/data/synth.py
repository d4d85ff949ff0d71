"""A synthetic interaction log with planted multi-interest structure.

Every user ``u`` has ``k_u`` latent interests, ``k_u`` uniform in ``1..max_interests``, each a
distinct category drawn uniformly without replacement. A user's sequence is a sticky walk over
those interests: the first event picks an interest uniformly; each later event keeps the current
interest with probability ``stickiness`` and otherwise resamples one uniformly among the user's
``k_u`` interests (possibly the same). A fraction ``noise`` of events ignores the walk and takes
a uniformly random category instead. Within a category items follow a Zipf law of exponent
``zipf_a`` (rank 0 most popular). Sequence lengths are ``min_len`` plus a geometric excess of mean
``mean_len - min_len``; timestamps are strictly increasing per user: each user starts uniformly
within ``span_days`` after ``start_ts`` and its events follow at geometric gaps of mean
``mean_gap_s``.

So, for a user with ``k`` interests among ``C`` categories, in expectation:

- the fraction of events in the user's own interest categories is ``1 - noise * (1 - k / C)``;
- the fraction of consecutive pairs in the same category is
  ``(1 - noise)**2 * (s + (1 - s) / k) + (1 - (1 - noise)**2) / C`` with ``s = stickiness``.

Two settings make the log change over time (both off by default, which leaves the log exactly
as without them), so that a model frozen on the start of the timeline loses quality later:

- ``item_arrival``: a share of each category's items (random ranks, drawn once per seed) does
  not exist at ``start_ts``; each arrives at a uniform time within ``span_days`` (see
  :func:`item_arrivals`). An event only picks an item that has arrived by its time, with weight
  ``zipf(rank) * (1 + fresh_boost * 2 ** (-age / fresh_half_life_days))`` for a late item of age
  ``age`` (the early items: ``zipf(rank)``), so traffic moves to new items while they are fresh.
  It costs ``O(events * items_per_category)`` (every item of the category is weighed at the
  event's time).
- ``interest_drift``: between two consecutive events ``gap`` seconds apart, a user replaces one
  of its interest slots (uniform among its ``k_u``) with probability
  ``1 - exp(-interest_drift * gap / 86400)`` (a rate per day, at most one replacement between
  two events). The new category is uniform among ``max(1, round(trend_share * C))`` consecutive
  categories (mod ``C``) starting at ``floor(C * phase)``, ``phase`` the drift's time since
  ``start_ts`` in units of ``trend_period_days`` (mod 1): with ``trend_share < 1`` a window of
  trending categories moves across the catalogue once per ``trend_period_days`` (longer than
  the timeline, it never comes back to where it was), so the global category
  mix moves too; with 1 any category (it may equal the replaced one or another of the user's).
  The sticky walk keeps its slot; an event in a replaced slot takes the slot's new category.
  ``users.parquet`` keeps the interests at the user's first event.

Generation is vectorised over blocks of :data:`BLOCK_USERS` users (no Python loop per event or
per user); each block has its own random generator seeded from ``(seed, block index)``, so the
events depend only on the configuration's seed and model parameters, never on ``chunk_users``
(which only sets how many users are held in memory and written at once).

Two writers: :func:`synth_dataset` writes a prepared data set directory (the format of
:mod:`mirec.data.prepare`, loadable by :func:`mirec.data.dataset.load_dataset`) and
:func:`synth_raw` writes the same events as a raw CSV or Parquet log, or as a directory of
Parquet part files, one per chunk, as Spark writes them (for the preparation benchmark).

:data:`PRESETS` hold the shapes of the public logs the seeds' papers use (``taobao``,
``books``); a preset is a base that ``--set`` overrides apply on top of
(:func:`preset`); ``drift`` is a small log whose items arrive and whose interests move over two
months, for the freshness benchmark.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from mirec import __version__
from mirec.data.prepare import FORMAT_VERSION, PROTOCOL_VERSION, _combined
from mirec.errors import MirecConfigError
from mirec.io import (
    DATASET,
    atomic_dir,
    atomic_path,
    atomic_write_json,
    check_output_file,
    parquet_mark,
    sha256_file,
)

BLOCK_USERS = 1024  # users per random generator; chunks are whole numbers of blocks
_INT32_MAX = 2**31 - 1
_DAY_S = 24 * 3600
_ITEMS_STREAM = 2**40  # seed-sequence key of the item arrival draws (block keys are < 2**31)
_WEIGHTS_PER_SLICE = 1 << 21  # (event, item) weights held at once under item_arrival


@dataclass
class SynthConfig:
    """Parameters of the synthetic log.

    Attributes
    ----------
    num_users : int
        Number of users ``U`` (ids ``0..U-1``).
    num_categories : int
        Number of categories ``C``.
    items_per_category : int
        Items per category ``M``; the catalogue has ``C * M`` items, item ``c * M + r + 1`` being
        the rank-``r`` item of category ``c``.
    zipf_a : float
        Popularity exponent within a category (``P(rank r) ~ 1 / (r + 1) ** zipf_a``; 0 is
        uniform).
    max_interests : int
        ``Kmax``: each user has ``1..Kmax`` interests (uniform count), distinct categories.
    stickiness : float
        Probability that the next event stays in the current interest.
    noise : float
        Fraction of events whose category is uniformly random over all ``C``.
    min_len : int
        Minimum sequence length (>= 5 so that 5-core filtering keeps every user).
    mean_len : float
        Mean sequence length (``min_len`` + geometric excess).
    mean_gap_s : float
        Mean seconds between a user's consecutive events (geometric, >= 1).
    start_ts : int
        Earliest timestamp (Unix seconds); users start uniformly within ``span_days`` after it.
    span_days : float
        Days over which users start (and late items arrive).
    item_arrival : float
        Share in ``[0, 1)`` of each category's items that do not exist at ``start_ts`` and
        arrive uniformly within ``span_days`` (module docstring); 0 = every item from the start.
    fresh_boost : float
        A late item's popularity is multiplied by ``1 + fresh_boost`` at arrival, decaying to 1.
    fresh_half_life_days : float
        Half-life of that boost, in days.
    interest_drift : float
        Rate per day at which a user replaces one of its interests; 0 = interests never move.
    trend_share : float
        Share in ``(0, 1]`` of the categories a drifting interest moves to: a window of
        trending categories that moves with time (module docstring); 1 = any category.
    trend_period_days : float
        Days the trend window takes to move across every category once.
    seed : int
        Seed of every random draw.
    chunk_users : int
        Users generated and written at once (rounded up to a multiple of ``BLOCK_USERS``);
        bounds memory, does not change the events.
    """

    num_users: int = 10_000
    num_categories: int = 50
    items_per_category: int = 200
    zipf_a: float = 1.1
    max_interests: int = 4
    stickiness: float = 0.8
    noise: float = 0.05
    min_len: int = 5
    mean_len: float = 50.0
    mean_gap_s: float = 600.0
    start_ts: int = 1_500_000_000
    span_days: float = 365.0
    item_arrival: float = 0.0
    fresh_boost: float = 10.0
    fresh_half_life_days: float = 7.0
    interest_drift: float = 0.0
    trend_share: float = 1.0
    trend_period_days: float = 365.0
    seed: int = 0
    chunk_users: int = 100_000

    def validate(self) -> None:
        """Raise :class:`MirecConfigError` naming the first bad field."""
        for name in ("num_users", "num_categories", "items_per_category", "max_interests",
                     "min_len", "start_ts", "seed", "chunk_users"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
                raise MirecConfigError(f"{name}: expected int, got {v!r}")
        for name in ("zipf_a", "stickiness", "noise", "mean_len", "mean_gap_s", "span_days",
                     "item_arrival", "fresh_boost", "fresh_half_life_days", "interest_drift",
                     "trend_share", "trend_period_days"):
            v = getattr(self, name)
            if (not isinstance(v, (int, float, np.integer, np.floating)) or isinstance(v, bool)
                    or not math.isfinite(v)):
                raise MirecConfigError(f"{name}: expected a finite number, got {v!r}")
        if not 1 <= self.num_users <= _INT32_MAX:
            raise MirecConfigError(f"num_users: must be in 1..{_INT32_MAX}, got {self.num_users}")
        if self.num_categories < 1:
            raise MirecConfigError(f"num_categories: must be >= 1, got {self.num_categories}")
        if self.items_per_category < 1:
            raise MirecConfigError(
                f"items_per_category: must be >= 1, got {self.items_per_category}")
        if self.num_categories * self.items_per_category >= _INT32_MAX:
            raise MirecConfigError(
                f"items_per_category: num_categories * items_per_category must be < "
                f"{_INT32_MAX} (item ids are int32), got "
                f"{self.num_categories * self.items_per_category}")
        if self.zipf_a < 0:
            raise MirecConfigError(f"zipf_a: must be >= 0, got {self.zipf_a}")
        if not 1 <= self.max_interests <= self.num_categories:
            raise MirecConfigError(
                f"max_interests: must be in 1..num_categories ({self.num_categories}), "
                f"got {self.max_interests}")
        if not 0.0 <= self.stickiness <= 1.0:
            raise MirecConfigError(f"stickiness: must be in [0, 1], got {self.stickiness}")
        if not 0.0 <= self.noise <= 1.0:
            raise MirecConfigError(f"noise: must be in [0, 1], got {self.noise}")
        if self.min_len < 5:
            raise MirecConfigError(
                f"min_len: must be >= 5 (so 5-core filtering keeps every user), "
                f"got {self.min_len}")
        if self.mean_len < self.min_len:
            raise MirecConfigError(
                f"mean_len: must be >= min_len ({self.min_len}), got {self.mean_len}")
        if self.mean_gap_s < 1:
            raise MirecConfigError(f"mean_gap_s: must be >= 1, got {self.mean_gap_s}")
        if self.start_ts < 0:
            raise MirecConfigError(f"start_ts: must be >= 0, got {self.start_ts}")
        if self.seed < 0:
            raise MirecConfigError(f"seed: must be >= 0, got {self.seed}")
        if self.span_s < 1:
            raise MirecConfigError(f"span_days: must be at least one second, got {self.span_days}")
        if not 0.0 <= self.item_arrival < 1.0:
            raise MirecConfigError(f"item_arrival: must be in [0, 1), got {self.item_arrival}")
        if self.fresh_boost < 0:
            raise MirecConfigError(f"fresh_boost: must be >= 0, got {self.fresh_boost}")
        if self.fresh_half_life_days <= 0:
            raise MirecConfigError(
                f"fresh_half_life_days: must be > 0, got {self.fresh_half_life_days}")
        if self.interest_drift < 0:
            raise MirecConfigError(f"interest_drift: must be >= 0, got {self.interest_drift}")
        if not 0.0 < self.trend_share <= 1.0:
            raise MirecConfigError(f"trend_share: must be in (0, 1], got {self.trend_share}")
        if self.trend_period_days * _DAY_S < 1:
            raise MirecConfigError(
                f"trend_period_days: must be at least one second, got {self.trend_period_days}")
        if self.chunk_users < 1:
            raise MirecConfigError(f"chunk_users: must be >= 1, got {self.chunk_users}")

    @property
    def span_s(self) -> int:
        """``span_days`` in whole seconds."""
        return int(round(self.span_days * _DAY_S))

    @property
    def num_items(self) -> int:
        """Catalogue size ``C * M`` (real item ids are ``1..num_items``)."""
        return self.num_categories * self.items_per_category

    def to_dict(self) -> dict[str, Any]:
        """The configuration as a JSON-ready dict."""
        return {k: (v.item() if isinstance(v, np.generic) else v)
                for k, v in dataclasses.asdict(self).items()}


@dataclass
class SynthChunk:
    """The events and users of one chunk of consecutive users.

    Shapes: ``E`` events, ``n`` users, ``Kmax`` = ``max_interests``. Events are sorted by user,
    then time.
    """

    first_user: int
    user: np.ndarray  # (E,) int32, global user ids
    item: np.ndarray  # (E,) int32, 1..C*M
    category: np.ndarray  # (E,) int32, 0..C-1 (the item's category)
    ts: np.ndarray  # (E,) int64, strictly increasing within a user
    interests: np.ndarray  # (n, Kmax) int32, row u's first num_interests[u] entries, sorted; -1 pad
    num_interests: np.ndarray  # (n,) int32, 1..Kmax

    @property
    def num_users(self) -> int:
        return len(self.num_interests)


# Shapes of the public logs (counts after the papers' filtering): the catalogue is
# num_categories * items_per_category items, users * mean_len events in expectation. Within a
# category item popularity is Zipf (zipf_a), so most items are rare: on both presets the top 1%
# of items hold about 30% of the events and the median item gets about a quarter of the mean.
PRESETS: dict[str, dict[str, Any]] = {
    # Taobao UserBehavior: 976,779 users, 1,708,530 items, about 9,000 categories, 85.4M events
    "taobao": {"num_users": 976_779, "num_categories": 9_000, "items_per_category": 190,
               "zipf_a": 1.1, "mean_len": 87.4, "mean_gap_s": 3_600.0},
    # Amazon Books: 459,133 users, 313,966 items, 8.9M events
    "books": {"num_users": 459_133, "num_categories": 1_570, "items_per_category": 200,
              "zipf_a": 1.1, "mean_len": 19.4, "mean_gap_s": 86_400.0},
    # Freshness: 20,000 users active for about 15 days each (30 events, one every 12 hours),
    # starting over 60 days; half of each category's items arrive during those 60 days and are
    # popular while fresh; interests move (0.1 a day) to a window of 10% trending categories
    # that moves across the catalogue in 120 days (past the last events: it never comes back).
    # About 600,000 events over 10,000 items.
    "drift": {"num_users": 20_000, "num_categories": 100, "items_per_category": 100,
              "zipf_a": 1.1, "mean_len": 30.0, "mean_gap_s": 43_200.0, "span_days": 60.0,
              "item_arrival": 0.5, "fresh_boost": 10.0, "fresh_half_life_days": 7.0,
              "interest_drift": 0.1, "trend_share": 0.1, "trend_period_days": 120.0},
}


def preset(name: str | None) -> dict[str, Any]:
    """The :class:`SynthConfig` fields of preset ``name`` (``{}`` for None), a base for ``--set``.

    Raises :class:`MirecConfigError` naming the known presets when ``name`` is not one.
    """
    if name is None:
        return {}
    if name not in PRESETS:
        raise MirecConfigError(f"--preset: unknown preset {name!r} (known: {', '.join(PRESETS)})")
    return dict(PRESETS[name])


def _zipf_cdf(m: int, a: float) -> np.ndarray:
    """CDF over ranks ``0..m-1`` with ``P(r) ~ (r + 1) ** -a``; shape (m,) float64, last = 1."""
    w = np.arange(1, m + 1, dtype=np.float64) ** -a
    cdf = np.cumsum(w)
    return cdf / cdf[-1]


def item_arrivals(cfg: SynthConfig) -> np.ndarray:
    """When each item exists from: ``(N + 1,)`` int64 Unix seconds, index = item id (0: padding).

    Without ``item_arrival`` every item has ``start_ts``. Otherwise, in each category,
    ``floor(item_arrival * items_per_category)`` items at random ranks arrive late, at
    ``start_ts + t`` with ``t`` uniform in ``1..span_s`` (so exactly the late items have an
    arrival after ``start_ts``). Drawn from the seed alone (a generator of its own), so the same
    for every block and every ``chunk_users``.
    """
    c, m = cfg.num_categories, cfg.items_per_category
    out = np.full(cfg.num_items + 1, cfg.start_ts, dtype=np.int64)
    late = int(cfg.item_arrival * m)
    if late == 0:
        return out
    rng = np.random.default_rng(np.random.SeedSequence([int(cfg.seed), _ITEMS_STREAM]))
    ranks = np.argsort(rng.random((c, m)), axis=1)[:, :late]  # (C, late) late ranks
    ids = (np.arange(c, dtype=np.int64)[:, None] * m + ranks + 1).ravel()
    out[ids] = cfg.start_ts + rng.integers(1, cfg.span_s + 1, size=ids.size)
    return out


def _sample_interests(rng: np.random.Generator, n: int, c: int, kmax: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    """``k`` (n,) uniform in 1..kmax and ``(n, kmax)`` distinct categories, first k sorted.

    Draws ``kmax`` categories without replacement per row, one step at a time: step ``j`` draws
    a rank ``r`` among the ``c - j`` categories not yet chosen and maps it to the category
    ``r + #{i : s_i - i <= r}`` (``s`` the sorted chosen ones). Cost ``O(n * kmax**2)``.
    """
    k = rng.integers(1, kmax + 1, size=n)  # (n,)
    chosen = np.empty((n, kmax), dtype=np.int64)  # (n, kmax) in draw order
    srt = np.empty((n, 0), dtype=np.int64)  # (n, j) sorted chosen so far
    for j in range(kmax):
        r = rng.integers(0, c - j, size=n)  # (n,)
        below = srt - np.arange(j)  # (n, j) non-chosen categories below each chosen one
        cat = r + (below <= r[:, None]).sum(axis=1)
        chosen[:, j] = cat
        srt = np.sort(np.concatenate([srt, cat[:, None]], axis=1), axis=1)
    # keep the first k draws (a uniform k-subset), sorted, padded with -1
    keep = np.arange(kmax)[None, :] < k[:, None]  # (n, kmax)
    big = np.iinfo(np.int64).max
    out = np.sort(np.where(keep, chosen, big), axis=1)
    out[out == big] = -1
    return k.astype(np.int32), out.astype(np.int32)


def _block(cfg: SynthConfig, cdf: np.ndarray, arrival: np.ndarray, b: int) -> SynthChunk:
    """Generate block ``b`` (users ``b * BLOCK_USERS`` onwards) with its own generator.

    ``arrival`` is :func:`item_arrivals`. The draws come in a fixed order, those of
    ``interest_drift`` last, so that with both time settings off the events are those of
    earlier versions.
    """
    rng = np.random.default_rng(np.random.SeedSequence([int(cfg.seed), b]))
    u0 = b * BLOCK_USERS
    n = min(BLOCK_USERS, cfg.num_users - u0)
    c, m = cfg.num_categories, cfg.items_per_category
    k, interests = _sample_interests(rng, n, c, cfg.max_interests)  # (n,), (n, Kmax)

    p = 1.0 / (cfg.mean_len - cfg.min_len + 1.0)
    lens = cfg.min_len - 1 + rng.geometric(p, size=n)  # (n,) >= min_len
    off = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lens, out=off[1:])
    e = int(off[-1])
    ar = np.arange(e, dtype=np.int64)
    u_loc = np.repeat(np.arange(n, dtype=np.int64), lens)  # (E,)

    # sticky walk over interest indices: resample at flagged positions (always at a user's
    # first event), carry the last drawn index forward otherwise
    resample = rng.random(e) >= cfg.stickiness  # (E,)
    resample[off[:-1]] = True
    draw = rng.integers(0, k[u_loc])  # (E,) in 0..k_u-1
    last = np.maximum.accumulate(np.where(resample, ar, 0))  # (E,) last resample position
    slot = draw[last]  # (E,) the walk's interest slot
    cat = interests[u_loc, slot]  # (E,) int32
    noisy = rng.random(e) < cfg.noise
    noise_cat = rng.integers(0, c, size=int(noisy.sum()))
    u_rank = rng.random(e)  # (E,) picks the item within the category

    start = cfg.start_ts + rng.integers(0, cfg.span_s, size=n)  # (n,)
    gaps = rng.geometric(1.0 / cfg.mean_gap_s, size=e)  # (E,) >= 1
    cs = np.cumsum(gaps)
    ts = start[u_loc] + (cs - cs[off[:-1]][u_loc])  # first event at start, then + gaps

    if cfg.interest_drift > 0:
        cat = _drifted(cfg, rng, interests, k, u_loc, off[:-1], slot, gaps, ts)
    cat[noisy] = noise_cat
    if cfg.item_arrival > 0:
        rank = _fresh_ranks(cfg, arrival, cat, ts, u_rank)
    else:
        rank = np.minimum(np.searchsorted(cdf, u_rank, side="right"), m - 1)  # (E,)
    item = (cat.astype(np.int64) * m + rank + 1).astype(np.int32)
    return SynthChunk(first_user=u0, user=(u_loc + u0).astype(np.int32), item=item,
                      category=cat.astype(np.int32), ts=ts.astype(np.int64),
                      interests=interests, num_interests=k)


def _drifted(cfg: SynthConfig, rng: np.random.Generator, interests: np.ndarray, k: np.ndarray,
             u_loc: np.ndarray, first: np.ndarray, slot: np.ndarray, gaps: np.ndarray,
             ts: np.ndarray) -> np.ndarray:
    """Each event's category under ``interest_drift`` (module docstring): ``(E,)`` int32.

    ``interests`` (n, Kmax) and ``k`` (n,) are the users' interests at their first event
    (``first``: (n,) positions), ``slot`` (E,) the walk's slot of each event, ``gaps`` (E,) the
    seconds since the user's previous event (ignored at a first event).
    """
    e, c = len(ts), cfg.num_categories
    ar = np.arange(e, dtype=np.int64)
    is_first = np.zeros(e, dtype=bool)
    is_first[first] = True
    p_move = -np.expm1(-cfg.interest_drift * gaps / _DAY_S)  # (E,)
    moved = (rng.random(e) < p_move) & ~is_first  # (E,) a replacement just before this event
    moved_slot = rng.integers(0, k[u_loc])  # (E,) which slot it replaces
    width = max(1, round(cfg.trend_share * c))
    period_s = cfg.trend_period_days * _DAY_S
    phase = ((ts - cfg.start_ts) % period_s) / period_s  # (E,) in [0, 1)
    dest = (np.floor(c * phase).astype(np.int64) + rng.integers(0, width, size=e)) % c  # (E,)
    cat = np.empty(e, dtype=np.int32)
    for j in range(interests.shape[1]):
        # slot j's category: forward-fill from the user's first event and each replacement
        set_j = is_first | (moved & (moved_slot == j))
        val_j = np.where(is_first, interests[u_loc, j], dest)  # (E,)
        now_j = val_j[np.maximum.accumulate(np.where(set_j, ar, 0))]
        cat[slot == j] = now_j[slot == j]
    return cat


def _fresh_ranks(cfg: SynthConfig, arrival: np.ndarray, cat: np.ndarray, ts: np.ndarray,
                 u: np.ndarray) -> np.ndarray:
    """Each event's item rank under ``item_arrival``: ``(E,)`` int64.

    The items of the event's category that have arrived by its time are weighed ``zipf(rank)``,
    times ``1 + fresh_boost * 2 ** (-age / half-life)`` for late ones; the uniform ``u`` (E,)
    picks by inverse CDF. An item not yet arrived weighs 0, so it is never picked (the CDF's
    last entry is exactly 1 > u).
    """
    m = cfg.items_per_category
    zipf = np.arange(1, m + 1, dtype=np.float64) ** -float(cfg.zipf_a)  # (M,)
    arr = arrival[1:].reshape(cfg.num_categories, m)  # (C, M)
    half_life_s = cfg.fresh_half_life_days * _DAY_S
    rank = np.empty(len(ts), dtype=np.int64)
    step = max(1, _WEIGHTS_PER_SLICE // m)  # events a slice: ~16 MB an (e, M) array
    for s in range(0, len(ts), step):
        sl = slice(s, s + step)
        a = arr[cat[sl]]  # (e, M) arrival of each item of the event's category
        age = ts[sl, None] - a  # (e, M)
        fresh = np.where(a > cfg.start_ts, np.exp2(-np.maximum(age, 0) / half_life_s), 0.0)
        w = np.where(age >= 0, zipf * (1.0 + cfg.fresh_boost * fresh), 0.0)  # (e, M)
        cdf = np.cumsum(w, axis=1)
        cdf /= cdf[:, -1:]
        rank[sl] = (cdf <= u[sl, None]).sum(axis=1)
    return rank


def _concat(blocks: list[SynthChunk]) -> SynthChunk:
    if len(blocks) == 1:
        return blocks[0]
    return SynthChunk(
        first_user=blocks[0].first_user,
        **{f: np.concatenate([getattr(b, f) for b in blocks])
           for f in ("user", "item", "category", "ts", "interests", "num_interests")},
    )


def num_chunks(cfg: SynthConfig) -> int:
    """Number of chunks :func:`iter_chunks` yields for ``cfg``.

    Parameters
    ----------
    cfg : SynthConfig
        The configuration (``num_users`` and ``chunk_users`` matter).

    Returns
    -------
    int
        ``ceil(num_blocks / blocks_per_chunk)``.
    """
    return -(-_num_blocks(cfg) // _blocks_per_chunk(cfg))


def _num_blocks(cfg: SynthConfig) -> int:
    return -(-cfg.num_users // BLOCK_USERS)


def _blocks_per_chunk(cfg: SynthConfig) -> int:
    return max(1, -(-cfg.chunk_users // BLOCK_USERS))


def iter_chunks(cfg: SynthConfig) -> Iterator[SynthChunk]:
    """Generate the log chunk by chunk, in user order.

    Parameters
    ----------
    cfg : SynthConfig
        Validated here.

    Yields
    ------
    SynthChunk
        Consecutive users, about ``chunk_users`` at a time (whole blocks of ``BLOCK_USERS``).
        Concatenating the chunks gives the same events whatever ``chunk_users`` is.
    """
    cfg.validate()
    cdf = _zipf_cdf(cfg.items_per_category, float(cfg.zipf_a))
    arrival = item_arrivals(cfg)  # (N+1,)
    nb, per = _num_blocks(cfg), _blocks_per_chunk(cfg)
    for b0 in range(0, nb, per):
        yield _concat([_block(cfg, cdf, arrival, b) for b in range(b0, min(b0 + per, nb))])


_EVENTS_SCHEMA = pa.schema([("user", pa.int32()), ("item", pa.int32()), ("ts", pa.int64())])
_USERS_SCHEMA = pa.schema([("user", pa.int32()), ("raw_id", pa.string()),
                           ("interests", pa.list_(pa.int32())), ("num_interests", pa.int32())])


def _users_table(ch: SynthChunk) -> pa.Table:
    n = ch.num_users
    uid = np.arange(ch.first_user, ch.first_user + n, dtype=np.int32)
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(ch.num_interests, out=offsets[1:])
    flat = ch.interests[np.arange(ch.interests.shape[1])[None, :] < ch.num_interests[:, None]]
    return pa.table({
        "user": pa.array(uid),
        "raw_id": pa.array(uid).cast(pa.string()),
        "interests": pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat)),
        "num_interests": pa.array(ch.num_interests),
    }, schema=_USERS_SCHEMA)


def _items_frame(cfg: SynthConfig) -> pl.DataFrame:
    m = cfg.items_per_category
    item = pl.int_range(1, cfg.num_items + 1, dtype=pl.Int32, eager=True).alias("item")
    df = pl.DataFrame({"item": item})
    cat = (pl.col("item") - 1) // m
    rank = (pl.col("item") - 1) % m
    out = df.select(
        pl.col("item"),
        pl.col("item").cast(pl.String).alias("raw_id"),
        pl.format("c{} item {}", cat, rank).alias("title"),
        pl.concat_list(pl.format("c{}", cat)).alias("categories"),
    )
    if cfg.item_arrival > 0:
        out = out.with_columns(pl.Series("arrival_ts", item_arrivals(cfg)[1:]))
    return out


def synth_dataset(cfg: SynthConfig, out: str | Path, progress: bool = True) -> Path:
    """Generate the log and write it as a prepared data set directory.

    Parameters
    ----------
    cfg : SynthConfig
        What to generate (validated).
    out : str or Path
        The data set directory; written whole into a temporary sibling, then renamed.
    progress : bool
        Show a tqdm bar over chunks.

    Returns
    -------
    Path
        ``out``. It holds ``interactions.parquet`` (sorted by user, then time),
        ``items.parquet`` (every catalogue item, ``title`` like ``"c3 item 17"``, ``categories``
        ``["c3"]``; with ``item_arrival``, ``arrival_ts`` from :func:`item_arrivals`),
        ``users.parquet`` (with the planted ``interests`` and ``num_interests``) and
        ``meta.json`` (``source.name == "synth"``, the configuration, counts and checksums).
        Memory is bounded by one chunk, not by the number of events.
    """
    cfg.validate()
    t0 = time.perf_counter()
    out = Path(out)
    n_events = 0
    item_counts = np.zeros(cfg.num_items + 1, dtype=np.int64)  # (N+1,)
    with atomic_dir(out, DATASET) as tmp:
        with (pq.ParquetWriter(tmp / "interactions.parquet", _EVENTS_SCHEMA,
                               compression="zstd") as ev_w,
              pq.ParquetWriter(tmp / "users.parquet", _USERS_SCHEMA, compression="zstd") as us_w):
            for ch in tqdm(iter_chunks(cfg), total=num_chunks(cfg), disable=None if progress else True,
                           desc="synth", unit="chunk"):
                ev_w.write_table(pa.table({"user": ch.user, "item": ch.item, "ts": ch.ts},
                                          schema=_EVENTS_SCHEMA))
                us_w.write_table(_users_table(ch))
                n_events += len(ch.item)
                item_counts += np.bincount(ch.item, minlength=cfg.num_items + 1)
        _items_frame(cfg).write_parquet(tmp / "items.parquet")
        checksums = {name: sha256_file(tmp / name)
                     for name in ("interactions.parquet", "items.parquet", "users.parquet")}
        counts = {"events": n_events, "users": cfg.num_users, "items": cfg.num_items}
        meta = {
            "format": "mirec.dataset",
            "format_version": FORMAT_VERSION,
            "protocol_version": PROTOCOL_VERSION,
            "mirec_version": __version__,
            "source": {"name": "synth", "config": cfg.to_dict()},
            "filters": {"k_core": None, "note": "generated; no k-core applied"},
            "counts": {
                "raw_events": n_events,
                "bad_rows_skipped": 0,
                "duplicates_dropped": 0,
                "before_k_core": counts,
                "after_k_core": counts,
                "items_with_events": int((item_counts[1:] > 0).sum()),
            },
            "checksums": checksums,
            "dataset_checksum": _combined(checksums),
            "prepare_seconds": round(time.perf_counter() - t0, 3),
        }
        atomic_write_json(tmp / "meta.json", meta)
    return out


RAW_FORMATS = ("csv", "parquet", "parts")
_RAW_SCHEMA = pa.schema([("user", pa.int32()), ("item", pa.int32()),
                         ("category", pa.string()), ("timestamp", pa.int64())])


def synth_raw(cfg: SynthConfig, path: str | Path, fmt: Literal["csv", "parquet", "parts"] = "csv",
              progress: bool = True, overwrite: bool = False) -> Path:
    """Write the same events as :func:`synth_dataset` as a raw log.

    Parameters
    ----------
    cfg : SynthConfig
        What to generate (validated).
    path : str or Path
        Output file (``csv``, ``parquet``) or directory (``parts``), written to a temporary
        sibling and renamed into place.
    fmt : {"csv", "parquet", "parts"}
        One CSV or Parquet file, or a directory of Parquet part files (``part-00000.parquet``,
        one per chunk of users, and an empty ``_SUCCESS``), the layout Spark writes and the
        fastest to prepare (no text to parse; read in parallel).
    progress : bool
        Show a tqdm bar over chunks.
    overwrite : bool
        Replace an existing file mirec did not write (by default refused: a Parquet file is
        marked as mirec's in its key-value metadata; a CSV cannot be, so any existing one is).

    Returns
    -------
    Path
        ``path``: columns ``user`` (int, the user id), ``item`` (int, the item id),
        ``category`` (string ``"c<k>"``) and ``timestamp`` (int seconds). Rows are sorted by
        timestamp within each chunk of users (stable), so users interleave as in a real log;
        the row order (not the set of rows) depends on ``chunk_users``. Memory is bounded by one
        chunk.
    """
    cfg.validate()
    if fmt not in RAW_FORMATS:
        raise MirecConfigError(f"fmt: expected one of {', '.join(RAW_FORMATS)}, got {fmt!r}")
    path = Path(path)
    if fmt != "parts":
        check_output_file(path, overwrite)  # before any work
    names = pa.array([f"c{i}" for i in range(cfg.num_categories)], type=pa.string())
    tables = (_raw_table(ch, names) for ch in tqdm(
        iter_chunks(cfg), total=num_chunks(cfg), disable=None if progress else True,
        desc="synth raw", unit="chunk"))
    if fmt == "parts":
        with atomic_dir(path) as tmp:
            for i, table in enumerate(tables):
                pq.write_table(table, tmp / f"part-{i:05d}.parquet", compression="zstd")
            (tmp / "_SUCCESS").touch()
        return path
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        if fmt == "csv":
            # plain header and unquoted values (ids and "c<k>" hold no separators)
            f.write((",".join(_RAW_SCHEMA.names) + "\n").encode())
            writer = pacsv.CSVWriter(f, _RAW_SCHEMA, write_options=pacsv.WriteOptions(
                include_header=False, quoting_style="none"))
        else:
            writer = pq.ParquetWriter(f, parquet_mark(_RAW_SCHEMA), compression="zstd")
        with writer:
            for table in tables:
                writer.write_table(table)
    return path


def _raw_table(ch: SynthChunk, names: pa.Array) -> pa.Table:
    """One chunk's events as a raw table, sorted by time (stable)."""
    order = np.argsort(ch.ts, kind="stable")  # (E,)
    return pa.table({
        "user": ch.user[order], "item": ch.item[order],
        "category": names.take(pa.array(ch.category[order])),
        "timestamp": ch.ts[order],
    }, schema=_RAW_SCHEMA)
