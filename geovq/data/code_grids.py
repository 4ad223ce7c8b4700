"""Code-grid data: the train/val/test code grids of a ``code_grids`` artifact, as token sequences.

Each N x H x W grid is flattened in raster order (row by row) to N x (H*W) int64 tokens, the
order in which the prior predicts them, and held in memory (60,000 x 49 int64 is 24 MB).
Batches are one-element lists ``[tokens B x H*W]``.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from geovq.artifacts import load_code_grids
from geovq.batching import INFERENCE_BATCH
from geovq.data.in_memory import InMemoryDataModule
from geovq.errors import ConfigError

# The splits a Trainer entry point reads.
STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ()}


class CodeGridDataModule(InMemoryDataModule):
    def __init__(
        self,
        path: str | os.PathLike,
        batch_size: int = 128,
        eval_batch_size: int = INFERENCE_BATCH,
        n_codes: int | None = None,
        num_workers: int = 0,
        subset: int | None = None,
        test_subset: int | None = None,
    ):
        """``subset``: keep the first ``subset`` grids of the train and val splits, and the first
        ``test_subset`` (default ``subset``) of the test split, for quick runs (null: all)."""
        super().__init__()
        for name, value in (("subset", subset), ("test_subset", test_subset)):
            if value is not None and value < 1:
                raise ConfigError(f"data.{name} must be >= 1 code grid (or null for all), got {value}.")
        if batch_size < 1 or eval_batch_size < 1:
            raise ConfigError(
                f"data.batch_size and data.eval_batch_size must be >= 1, got {batch_size} and {eval_batch_size}."
            )
        if num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {num_workers}.")
        self.save_hyperparameters()
        self._tokens: dict[str, Tensor] | None = None
        self._n_codes: int | None = None
        self._grid_shape: tuple[int, int] | None = None

    # -- loading ----------------------------------------------------------------------------
    def _load(self) -> None:
        if self._tokens is not None:
            return
        path = self.hparams.path
        artifact = self.artifact = load_code_grids(path)
        n_codes = int(artifact.payload["n_codes"])
        wanted = self.hparams.n_codes
        if wanted is not None and wanted != n_codes:
            raise ConfigError(
                f"the code grids in {path} use a codebook of K={n_codes} codes but the prior's "
                f"vocabulary is n_codes={wanted}. Set model.n_codes={n_codes}, or point "
                "data.path at code grids made with a codebook of that size."
            )
        tokens, grid_shape = {}, None
        for name, grids in artifact.payload["splits"].items():
            if grids.ndim != 3:
                raise ConfigError(f"split '{name}' of {path} holds {tuple(grids.shape)} codes, not N x H x W grids.")
            if grid_shape is None:
                grid_shape = tuple(grids.shape[1:])
            elif tuple(grids.shape[1:]) != grid_shape:
                raise ConfigError(
                    f"the splits of {path} have grids of different shapes ({grid_shape} and "
                    f"{tuple(grids.shape[1:])}); rerun the stage that wrote it."
                )
            if grids.numel() and (int(grids.min()) < 0 or int(grids.max()) >= n_codes):
                raise ConfigError(
                    f"split '{name}' of {path} holds codes in [{int(grids.min())}, {int(grids.max())}], "
                    f"outside [0, {n_codes}) for its codebook of K={n_codes} codes; rerun the stage "
                    "that wrote it."
                )
            keep = self.hparams.subset if name != "test" or self.hparams.test_subset is None else self.hparams.test_subset
            tokens[name] = grids[:keep].flatten(1).to(torch.int64).contiguous()
        self._tokens, self._n_codes, self._grid_shape = tokens, n_codes, grid_shape

    def setup(self, stage: str | None = None) -> None:
        self._load()
        # Fail before training, not at the first batch, when a split the stage reads is empty.
        for name in STAGE_SPLITS.get(stage, ()) if stage is not None else ():
            self.split(name)

    # -- access -----------------------------------------------------------------------------
    @property
    def input_artifacts(self) -> dict:
        self._load()
        return {"codes": self.artifact}

    @property
    def n_codes(self) -> int:
        """The codebook size K of the artifact."""
        self._load()
        return self._n_codes

    @property
    def grid_shape(self) -> tuple[int, int]:
        """(H, W) of the code grids."""
        self._load()
        return self._grid_shape

    def split(self, name: str) -> Tensor:
        """Tokens N x (H*W) int64 of one split (train, val or test), raster order."""
        self._load()
        tokens = self._tokens.get(name)
        if tokens is None or len(tokens) == 0:
            what = "no" if tokens is None else "an empty"
            raise ConfigError(
                f"the code grids in {self.hparams.path} have {what} '{name}' split. Rerun the stage "
                f"that wrote them with a non-empty {name} split, or point data.path at complete code grids."
            )
        return tokens

    def dataset(self, split: str) -> TensorDataset:
        return TensorDataset(self.split(split))
