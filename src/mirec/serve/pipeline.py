"""The ranking stage of the two-stage pipeline: retrieval -> ranking -> diversity.

:class:`RankStage` wraps a trained ranker (``mirec train --task ctr``) so that
:meth:`mirec.serve.recommender.Recommender.recommend` with ``rank=True`` can score the
retrieved candidates with it::

    K interests --ANN--> top-M per interest --union--> C candidates
    ranker(user, profile, history, candidate c) for every c  -> (C,) logits, one batch
    diversify(lambda) on the ranker's scores                 -> the final n

The ranker must have been trained on the same prepared data set as the bundle's retriever
(same dense item ids; checked by the data set checksum). Its user features (dense id, profile
codes) come from its checkpoint; a user it has not seen gets the "unknown" user row and profile
code 0. The history it sees is the one the retriever sees (the last ``ctr.max_len`` events;
all of it for a ranker trained on whole user sequences, MIMN with ``train.stream``, as it
learnt), so a ranker for the pipeline should be trained with ``ctr.history=all``: a served
event log has no ratings to pick the positives with.

A ranker trained on the retriever's candidates (``--candidates``) also reads the candidate
features of :mod:`mirec.data.cand_features` (retrieval score and rank, the interest, item
statistics of its training window, the user's category gaps and activity), computed here from
the live history by the same function its training data used.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mirec.data import cand_features
from mirec.data.cand_features import ItemWindow
from mirec.data.ctr import CTRBatch
from mirec.data.split import left_pad
from mirec.errors import MirecConfigError
from mirec.models.base import streams
from mirec.runs import RankRunConfig, load_ranker
from mirec.serve.bundle import Bundle


class RankStage:
    def __init__(self, model: torch.nn.Module, checkpoint: dict, max_len: int, name: str = "",
                 whole_history: bool = False) -> None:
        self.model = model.eval()
        self.max_len = max_len
        self.whole_history = whole_history  # trained on whole user sequences: read all of it
        self.name = name
        self.run_dir: str | Path | None = None
        self.config: RankRunConfig | None = None  # the ranking run's settings (from_run)
        self.profile = checkpoint["profile"]  # (U, F) long
        self.user_index = {raw: u for u, raw in enumerate(checkpoint.get("user_raw_ids", []))}
        self.unknown_user = checkpoint["features"]["num_users"]
        f = checkpoint["features"]
        self.window = ItemWindow.from_dict(f["window"]) if f.get("num_dense") else None
        cats = f["item_categories"].numpy()  # (N, C) category ids + 1, 0 = padding
        self.cat_indptr = np.r_[0, np.cumsum((cats > 0).sum(1))].astype(np.int64)
        self.cat_ids = cats[cats > 0] - 1  # row-major: each item's categories in turn

    @property
    def uses_candidates(self) -> bool:
        """Trained on a retriever's candidates: :meth:`score` needs their retrieval scores."""
        return self.window is not None

    def dense(self, u: int, hist: list[int], cand: np.ndarray, f: np.ndarray, k: np.ndarray,
              num_interests: int) -> np.ndarray:
        """The candidate features (C, F) of ``cand`` for the dense user ``u`` (-1 unknown)."""
        h = np.asarray(hist, dtype=np.int64)
        return cand_features.features(np.asarray(cand, dtype=np.int64), f, k, f, k, num_interests, h, h, u,
                                      self.window, self.cat_indptr, self.cat_ids)

    @classmethod
    def from_run(cls, run_dir: str | Path, bundle: Bundle) -> RankStage:
        """Load a ranking run's best checkpoint and check that it matches ``bundle``."""
        model, ck = load_ranker(run_dir)
        want = bundle.manifest.get("dataset_checksum")
        if want and ck.get("dataset_checksum") and ck["dataset_checksum"] != want:
            raise MirecConfigError(f"--ranker: {run_dir} was trained on another data set than the bundle "
                                   f"(checksum {ck['dataset_checksum'][:12]} != {want[:12]})")
        if ck["features"]["num_items"] != bundle.trained_items:
            raise MirecConfigError(f"--ranker: {run_dir} knows {ck['features']['num_items'] - 1} items, "
                                   f"the bundle {bundle.trained_items - 1}")
        cfg = ck["parsed_config"]
        stage = cls(model, ck, cfg.ctr.max_len, name=cfg.model,
                    whole_history=streams(model, cfg.train.stream))
        stage.run_dir = run_dir  # a reload opens it again
        stage.config = cfg  # the pipeline evaluation checks its split against the retriever's
        return stage

    @torch.inference_mode()
    def score(self, user_id: str | None, hist: list[int], cand: np.ndarray, f: np.ndarray | None = None,
              k: np.ndarray | None = None, num_interests: int = 0) -> np.ndarray:
        """Logits of the candidates ``cand`` (C,) for this user and dense history: (C,).
        A candidate-trained ranker also needs their retrieval scores ``f`` (C,) and interests
        ``k`` (C,) out of ``num_interests``."""
        C, L = len(cand), max(len(hist), 1) if self.whole_history else self.max_len
        u = self.user_index.get(user_id, -1) if user_id is not None else -1
        dense = None
        if self.uses_candidates:
            if f is None or k is None:
                raise ValueError("RankStage.score: this ranker needs the candidates' retrieval scores")
            dense = torch.from_numpy(self.dense(u, hist, cand, f, k, num_interests))
        profile = self.profile[u] if u >= 0 else torch.zeros(self.profile.shape[1], dtype=torch.long)
        window = torch.from_numpy(left_pad(hist, L))  # (L,)
        batch = CTRBatch(user=torch.full((C,), u if u >= 0 else self.unknown_user, dtype=torch.long),
                         profile=profile[None].expand(C, -1),
                         item=torch.from_numpy(np.asarray(cand, dtype=np.int64)),
                         hist=window[None].expand(C, -1), mask=(window > 0)[None].expand(C, -1),
                         dense=dense)
        one = getattr(self.model, "score_one_user", self.model)  # DIN: one history, C candidates
        return one(batch).numpy().astype(np.float64)  # (C,)
