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
code 0. The history it sees is the one the retriever sees (the last ``ctr.max_len`` events),
so a ranker for the pipeline should be trained with ``ctr.history=all``: a served event log
has no ratings to pick the positives with.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mirec.data.ctr import CTRBatch
from mirec.data.split import left_pad
from mirec.errors import MirecConfigError
from mirec.runs import load_ranker
from mirec.serve.bundle import Bundle


class RankStage:
    def __init__(self, model: torch.nn.Module, checkpoint: dict, max_len: int, name: str = "") -> None:
        self.model = model.eval()
        self.max_len = max_len
        self.name = name
        self.run_dir: str | Path | None = None
        self.profile = checkpoint["profile"]  # (U, F) long
        self.user_index = {raw: u for u, raw in enumerate(checkpoint.get("user_raw_ids", []))}
        self.unknown_user = checkpoint["features"]["num_users"]

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
        stage = cls(model, ck, cfg.ctr.max_len, name=cfg.model)
        stage.run_dir = run_dir  # a reload opens it again
        return stage

    @torch.no_grad()
    def score(self, user_id: str | None, hist: list[int], cand: np.ndarray) -> np.ndarray:
        """Logits of the candidates ``cand`` (C,) for this user and dense history: (C,)."""
        C, L = len(cand), self.max_len
        u = self.user_index.get(user_id, -1) if user_id is not None else -1
        profile = self.profile[u] if u >= 0 else torch.zeros(self.profile.shape[1], dtype=torch.long)
        window = torch.from_numpy(left_pad(hist, L))  # (L,)
        batch = CTRBatch(user=torch.full((C,), u if u >= 0 else self.unknown_user, dtype=torch.long),
                         profile=profile[None].expand(C, -1),
                         item=torch.from_numpy(np.asarray(cand, dtype=np.int64)),
                         hist=window[None].expand(C, -1), mask=(window > 0)[None].expand(C, -1))
        return self.model(batch).numpy().astype(np.float64)  # (C,)
