"""ImagesWithCodes: each split's images with their code grids, in the order the quantize stage
encoded them (what stage=finetune trains a decoder on)."""

from __future__ import annotations

from torch.utils.data import TensorDataset

from geovq.artifacts import Artifact
from geovq.data import SPLITS
from geovq.data.in_memory import InMemoryDataModule
from geovq.errors import ConfigError


class ImagesWithCodes(InMemoryDataModule):
    def __init__(self, images, codes: Artifact):
        super().__init__()
        self.save_hyperparameters({key: images.hparams[key] for key in ("batch_size", "eval_batch_size", "num_workers")})
        self.images, self.codes, self.grids = images, codes, codes.payload["splits"]
        for split in SPLITS:
            n_images, n_grids = len(images.split(split)), len(self.grids.get(split, ()))
            if n_images != n_grids:
                raise ConfigError(
                    f"{codes.path} holds {n_grids} {split} code grids but data= gives {n_images} {split} images; "
                    "fine-tune with the data settings (data.*, seed) of the run that made the codes."
                )

    @property
    def input_artifacts(self) -> dict:
        return {"codes": self.codes}

    def dataset(self, split: str) -> TensorDataset:
        return TensorDataset(self.images.split(split).tensors[0], self.grids[split])
