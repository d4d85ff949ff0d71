"""Typed config: defaults < file < overrides, and errors that name the field."""

import dataclasses
import typing
from dataclasses import dataclass, field

import pytest

from mirec.config import from_dict, load, setting, size, to_dict
from mirec.data.split import SplitConfig
from mirec.errors import MirecConfigError
from mirec.runs import RunConfig


@dataclass
class Inner:
    lr: float = 0.001
    ns: tuple[int, ...] = (20, 50)


@dataclass
class Outer:
    name: str = "x"
    epochs: int = 3
    inner: Inner = field(default_factory=Inner)


def test_precedence_file_then_overrides(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('epochs = 5\n[inner]\nlr = 0.01\n')
    cfg = load(Outer, f, ["inner.lr=0.5", "inner.ns=10,20"])
    assert cfg.epochs == 5 and cfg.inner.lr == 0.5 and cfg.inner.ns == (10, 20)
    assert cfg.name == "x"


def test_list_overrides_take_commas_or_brackets():
    for text in ("10,20", "[10, 20]", " [10,20] "):
        assert load(Outer, None, [f"inner.ns={text}"]).inner.ns == (10, 20)


def test_errors_name_the_field(tmp_path):
    with pytest.raises(MirecConfigError, match=r"inner\.lr: expected float, got 'abc'"):
        load(Outer, None, ["inner.lr=abc"])
    with pytest.raises(MirecConfigError, match="epochs: expected int"):
        from_dict(Outer, {"epochs": "many"})
    with pytest.raises(MirecConfigError, match="nope: unknown setting"):
        from_dict(Outer, {"nope": 1})
    with pytest.raises(MirecConfigError, match=r"split.max_len: must be in \[1, 16384\], got 0"):
        load(SplitConfig, None, ["max_len=0"])
    with pytest.raises(MirecConfigError, match="not found"):
        load(Outer, tmp_path / "missing.toml")


def test_roundtrip():
    cfg = Outer(epochs=9)
    assert from_dict(Outer, to_dict(cfg)) == cfg


# ------------------------------------------------------------------ every numeric setting's bounds


def _numeric_settings(kind: type) -> list[tuple[type, list[str], str]]:
    """(config loaded, fixed overrides, key) for every ``kind`` (float or int) field a user can
    set: the sections of a retrieval and a ranking run, each model's ``model_args``, SynthConfig."""
    from mirec.data.synth import SynthConfig
    from mirec.models.registry import SPECS
    from mirec.runs import RankRunConfig, RunConfig

    def of(cls: type, prefix: str = "") -> list[str]:
        keys = []
        for name, tp in typing.get_type_hints(cls).items():
            if dataclasses.is_dataclass(tp):
                keys += of(tp, f"{prefix}{name}.")
            elif kind in (tp, *typing.get_args(tp)):
                keys.append(prefix + name)
        return keys

    out = [(root, [], key) for root in (RunConfig, RankRunConfig, SynthConfig) for key in of(root)]
    for name, s in SPECS.items():
        root = {"retrieval": RunConfig, "ranking": RankRunConfig}.get(s.task)
        for key in of(s.config, "model_args."):
            out.append((root, [f"model={name}"], key) if root else (s.config, [], key[len("model_args."):]))
    return out


FLOATS = _numeric_settings(float)
INTS = _numeric_settings(int)
ALLOWS_INF = {"model_args.pow_p"}  # MIND: inf = hard attention


def _ids(cases):
    return [f"{c.__name__}:{fixed[0][6:] + ':' if fixed else ''}{key}" for c, fixed, key in cases]


def test_the_setting_lists_cover_the_configs():
    keys = {k for _, _, k in FLOATS}
    assert {"train.lr", "train.temperature", "train.weight_decay", "cand.random_share", "split.train_frac",
            "model_args.dropout", "model_args.pow_p", "noise"} <= keys
    assert {"train.batch_size", "model_args.dim", "model_args.num_interests", "split.max_len",
            "eval.batch_size", "num_users"} <= {k for _, _, k in INTS}


@pytest.mark.parametrize("cls, fixed, key", FLOATS, ids=_ids(FLOATS))
def test_every_float_setting_refuses_nan_and_inf(cls, fixed, key):
    """nan (and inf, where the setting does not say it means something) is refused with one
    message naming the key, whichever float setting it is given to."""
    name = key.rsplit(".", 1)[-1]
    with pytest.raises(MirecConfigError, match=rf"(^|\.){name}: .*nan"):
        load(cls, None, [*fixed, f"{key}=nan"])
    if key in ALLOWS_INF:
        load(cls, None, [*fixed, f"{key}=inf"])
    else:
        with pytest.raises(MirecConfigError, match=rf"(^|\.){name}: .*inf"):
            load(cls, None, [*fixed, f"{key}=-inf" if key.endswith("lambda") else f"{key}=inf"])


@pytest.mark.parametrize("cls, fixed, key", INTS, ids=_ids(INTS))
def test_every_int_setting_refuses_a_size_past_64_bits(cls, fixed, key):
    if cls is RunConfig and key == "model_args.max_len":
        pytest.skip("a retriever's max_len is split.max_len's (runs.model_config); its own is ignored")
    with pytest.raises(MirecConfigError, match=key.rsplit(".", 1)[-1]):
        load(cls, None, [*fixed, f"{key}={10 ** 20}"])


def test_bounds_declared_next_to_the_field():
    @dataclass
    class Sized:
        rate: float = setting(0.5, ge=0, lt=1)
        widths: list[int] = size(factory=lambda: [8, 16], most=64)
        power: float = setting(2.0, gt=0, finite=False)
        plain: float = 1.0

    assert load(Sized, None, ["power=inf"]).power == float("inf")
    for override, says in [("rate=1", r"rate: must be in \[0, 1\), got 1.0"),
                           ("widths=8,65", r"widths\[1\]: must be in \[1, 64\], got 65"),
                           ("power=nan", "power: must be > 0, got nan"),
                           ("plain=-inf", "plain: must be finite, got -inf")]:
        with pytest.raises(MirecConfigError, match=rf"^{says}$"):
            load(Sized, None, [override])


def test_a_config_file_that_is_not_utf8_names_the_file_line_and_byte(tmp_path):
    f = tmp_path / "c.toml"
    f.write_bytes("epochs = 5\n[inner]\nlr = 0.5 # \u00e9t\u00e9\n".encode("latin-1"))
    with pytest.raises(MirecConfigError, match=r"c\.toml: not UTF-8 text \(line 3, byte 30: b'\\xe9'\)"):
        load(Outer, f)
    with pytest.raises(MirecConfigError, match="cannot read the config file"):
        load(Outer, tmp_path)


def test_leave_one_out_brings_its_cutoffs_ties_and_the_models_recipe_unless_given(tmp_path):
    """``split.protocol=loo`` alone gives the published tables' HR/NDCG at 5, 10, 20 with ties
    counted against the target, and the model's own ``loo_defaults``; whatever the user gives (on
    the command line, in a file, or a saved run's settings) wins, and the other protocols keep
    the plain defaults."""
    from mirec.models.registry import SPECS

    for name in ("sasrec", "comirec-sa", "comirec-dr"):
        recipe = SPECS[name].build.loo_defaults
        assert recipe["model_args"]  # each of these models has a leave-one-out recipe
        cfg = load(RunConfig, None, ["split.protocol=loo", f"model={name}"])
        assert cfg.eval.ns == (5, 10, 20) and cfg.eval.ties == "pessimistic"
        assert cfg.train.select == "ndcg@10" and cfg.train.plateau_decay == 0.3  # beside the model's own
        assert cfg.model_args == recipe["model_args"]
        assert cfg.train.negative_score == recipe.get("train", {}).get("negative_score", "readout")
        assert cfg.train.weight_average == recipe.get("train", {}).get("weight_average", 0.0)
    sa = load(RunConfig, None, ["split.protocol=loo"])  # ComiRec-SA's own
    assert sa.train.negative_score == "max" and sa.train.weight_average == 0.9995
    given = load(RunConfig, None, ["split.protocol=loo", "eval.ns=[10]", "model_args.item_features=off"])
    assert given.eval.ns == (10,) and given.eval.ties == "pessimistic"
    assert given.model_args["item_features"] == "off"
    f = tmp_path / "run.toml"
    f.write_text('model = "sasrec"\n[split]\nprotocol = "loo"\n[eval]\nties = "low-id"\n')
    from_file = load(RunConfig, f)
    assert from_file.eval.ties == "low-id" and from_file.eval.ns == (5, 10, 20)
    assert from_file.model_args == SPECS["sasrec"].build.loo_defaults["model_args"]
    saved = to_dict(load(RunConfig, None, ["split.protocol=loo", "model=sasrec", "model_args.dim=32"]))
    saved["model_args"] = {"dim": 32, "item_features": "off"}  # a saved run keeps every field it has
    assert load(RunConfig, None, [], base=saved).model_args == {"dim": 32, "item_features": "off"}
    for other in ([], ["split.protocol=comirec"]):
        plain = load(RunConfig, None, other)
        assert plain.eval.ns == (20, 50) and plain.eval.ties == "low-id" and plain.model_args == {}
        assert plain.train.negative_score == "readout" and plain.train.select == "auto"
        assert plain.train.plateau_decay == 1.0 and plain.train.weight_average == 0.0
