"""The data-source registry: what `mirec data prepare` and `mirec data fetch` dispatch through."""

from __future__ import annotations

import inspect
from pathlib import Path

import polars as pl
import pytest

from mirec.cli import PREPARE_COMMON, data_prepare
from mirec.data import sources
from mirec.data.fetch import DATASETS, FetchOptions, fetch
from mirec.data.prepare import PrepareConfig, RawLog
from mirec.errors import MirecConfigError
from tests.test_cli import run

TAOBAO = "1,100,7,pv,10\n1,101,7,buy,11\n2,100,7,pv,12\n2,102,8,buy,13\n"


def test_every_source_is_registered_and_the_cli_takes_its_options() -> None:
    known = sources.sources()
    assert set(known) == {"movielens", "recbole", "amazon", "taobao", "csv", "parquet", "jsonl",
                          "sequences"}
    cli_params = set(inspect.signature(data_prepare).parameters) - set(PREPARE_COMMON)
    for src in known.values():
        assert {o.name for o in src.options} <= cli_params, src.name
    # the fetch catalogue reads its files with registered sources
    assert {spec.source for spec in DATASETS.values()} <= set(known)


def test_options_are_checked_and_defaulted(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("user_id,item_id,timestamp\nu1,i1,5\nu1,i2,6\n")
    raw = sources.load("csv", path)  # the declared default columns
    assert raw.events["item"].to_list() == ["i1", "i2"]
    with pytest.raises(MirecConfigError, match=r"^--meta: source 'csv' does not take this option"):
        sources.load("csv", path, meta="m.json")
    with pytest.raises(MirecConfigError, match=r"^SOURCE: unknown source 'nope' \(one of: amazon, csv, jsonl, movielens"):
        sources.get("nope")


def test_a_new_source_is_one_register_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def load_toy(path: Path, on_bad_rows: str = "error", scale: str = "1") -> RawLog:
        n = int(scale)
        events = pl.DataFrame({"user": [1] * n, "item": list(range(n)), "ts": list(range(n))})
        return RawLog(events=events, source={"name": "toy", "path": str(path)})

    monkeypatch.setattr(sources, "SOURCES", dict(sources.sources()))
    sources.register(sources.Source("toy", "a toy", load_toy, (sources.Option("scale", "n", "1"),)))
    assert sources.load("toy", tmp_path, scale="3").events.height == 3
    with pytest.raises(ValueError, match="registered twice"):
        sources.register(sources.Source("toy", "another toy", load_toy))


def test_fetch_passes_options_through_the_registry(tmp_path: Path) -> None:
    log = tmp_path / "UserBehavior.csv"
    log.write_text(TAOBAO)
    opts = FetchOptions(local=log, loader_options={"behaviors": "buy"},
                        prepare=PrepareConfig(k_core=1), progress=False)
    res = fetch("taobao", tmp_path / "out", tmp_path / "cache", opts)
    assert res.details["counts"] == {"events": 2, "users": 2, "items": 2}
    bad = FetchOptions(local=log, loader_options={"meta": "x"}, prepare=PrepareConfig(k_core=1))
    with pytest.raises(MirecConfigError, match="--meta: source 'taobao' does not take"):
        fetch("taobao", tmp_path / "out2", tmp_path / "cache", bad)
    assert not (tmp_path / "out2").exists()


def test_cli_prepare_sequences_and_latin1_movielens(tmp_path: Path) -> None:
    seq = tmp_path / "pairs.txt"
    seq.write_text("1 10\n1 11\n2 11\n2 10\n")
    attrs = tmp_path / "attrs.json"
    attrs.write_text('{"10": [5], "11": [6, 7]}')
    out = tmp_path / "seq"
    p = run("data", "prepare", "sequences", str(seq), "--attributes", str(attrs), "--format",
            "pairs", "--k-core", "1", "--out", str(out))
    assert f"wrote {out}" in p.stdout.replace("\n", "")
    items = pl.read_parquet(out / "items.parquet")
    assert items["categories"].to_list() == [["5"], ["6", "7"]]

    ml = tmp_path / "ml-1m"
    ml.mkdir()
    (ml / "ratings.dat").write_text("1::914::3::978300760\n2::914::4::978300761\n")
    (ml / "movies.dat").write_bytes("914::Cité des enfants perdus, La (1995)::Sci-Fi\n"
                                    .encode("latin-1"))
    (ml / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n")
    p = run("data", "prepare", "movielens", str(ml), "--k-core", "1", "--out", str(tmp_path / "ml"))
    titles = pl.read_parquet(tmp_path / "ml" / "items.parquet")["title"].to_list()
    assert titles == ["Cité des enfants perdus, La (1995)"]


def test_cli_errors_name_the_line_and_the_option(tmp_path: Path) -> None:
    seq = tmp_path / "seq.txt"
    seq.write_text("1 10 11\n2\n")
    p = run("data", "prepare", "sequences", str(seq), "--out", str(tmp_path / "o"), ok=False)
    assert p.returncode == 2
    assert "seq.txt:2: user '2' has no items" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1  # one line, however long
    p = run("data", "prepare", "sequences", str(seq), "--behaviors", "pv", ok=False)
    assert p.returncode == 2
    assert "--behaviors: source 'sequences' does not take this option" in " ".join(p.stderr.split())
    p = run("data", "sources")
    assert "sequences" in p.stdout and "--attributes" in p.stdout
    assert not (tmp_path / "o").exists()
