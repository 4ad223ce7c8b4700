"""The quantization stage as a Lightning callback: quantize the GridVAE when its fit ends.

Non-gradient: at ``on_fit_end``, after SaveBestModel has put the best checkpoint's weights in the
module and written them as model.pt, it extracts the posterior means of every image through the Trainer's devices (under
DDP every rank encodes its shard and the shards are gathered), fits the quantizer once on rank
zero and writes codebook.pt and codes.pt beside the checkpoints. The same code runs alone as
stage=quantize on a saved GridVAE.

Several quantizers in one fit (callbacks=quantize_both) each get a ``name``: the callback then
writes into ``quantize_<name>/`` and prefixes its metrics ``quantized_<name>/`` (``time_<name>/``,
...) so that neither overwrites the other's, and it takes its quantizer as a config, which it
records with its codes in place of the run's ``quantizer=`` section (the one it did not use).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf

from geovq.aposteriori import check_quantizer, quantize_vae
from geovq.callbacks.model_artifact import SaveBestModel
from geovq.data import SPLITS
from geovq.errors import ConfigError, config_section
from geovq.models.grid_vae import GridVAE
from geovq.run_folder import NON_RESULT_SETTINGS


class QuantizeOnFitEnd(Callback):
    def __init__(
        self,
        quantizer,
        output_dir: str | Path,
        compare_assignments: bool = False,
        progress: bool = True,
        name: str | None = None,
    ):
        # A built quantizer is the run's quantizer= (recorded in the run's config); a config is
        # this callback's own, recorded with its codes (the saved run config lacks it).
        self.settings = None
        section = "quantizer"  # the config key an error message names
        if isinstance(quantizer, Mapping):  # a DictConfig (_recursive_: false) or a dict
            section = f"callbacks.quantize_{name}.quantizer" if name else "callbacks.quantize_on_fit_end.quantizer"
            self.settings = recorded_settings(quantizer)
            with config_section(section):
                quantizer = instantiate(quantizer)
        check_quantizer(quantizer, section)
        self.quantizer = quantizer
        self.name = name
        self.output_dir = Path(output_dir) / f"quantize_{name}" if name else Path(output_dir)
        self.compare_assignments = compare_assignments
        self.progress = progress
        self.metrics: dict = {}

    def on_fit_start(self, trainer: L.Trainer, pl_module) -> None:
        if not isinstance(pl_module, GridVAE):
            raise ConfigError(
                f"callbacks=quantize quantizes a GridVAE's latent space, but this run trains a "
                f"{type(pl_module).__name__}; use it with stage=vae."
            )
        self._model_saver(trainer)  # fail now, not after training

    def on_fit_end(self, trainer: L.Trainer, pl_module) -> None:
        # SaveBestModel's on_fit_end ran first: the module holds the best weights, saved as model.pt.
        saver = self._model_saver(trainer)
        datamodule = trainer.datamodule
        images = {split: datamodule.split(split).tensors[0] for split in SPLITS}
        # The run's config as stage=quantize records it, with the quantizer this callback used.
        config = saver.config if self.settings is None else {**saver.config, "quantizer": self.settings}
        metrics, _ = quantize_vae(
            pl_module,
            images,
            self.quantizer,
            self.output_dir,
            vae_artifact=saver.artifact,
            config=config,
            trainer=trainer,
            compare_assignments=self.compare_assignments,
            progress=self.progress,
        )
        self.metrics = named_metrics(metrics, self.name) if self.name else metrics
        for logger in trainer.loggers:
            logger.log_metrics(self.metrics, step=trainer.global_step)
        trainer.strategy.barrier("quantize_on_fit_end")

    @staticmethod
    def _model_saver(trainer: L.Trainer) -> SaveBestModel:
        for callback in trainer.callbacks:
            if isinstance(callback, SaveBestModel):
                return callback
        raise ConfigError("callbacks=quantize needs the GridVAE saved when its fit ends; use it with stage=vae.")


def recorded_settings(quantizer: Mapping) -> dict:
    """A quantizer config as a run records its quantizer= section (geovq.run_folder.result_config)."""
    settings = OmegaConf.to_container(quantizer, resolve=True) if isinstance(quantizer, DictConfig) else dict(quantizer)
    for key in NON_RESULT_SETTINGS["quantizer"]:
        settings.pop(key, None)
    return settings


def named_metrics(metrics: dict, name: str) -> dict:
    """``quantized/test_mse`` -> ``quantized_<name>/test_mse`` (likewise ``time/``, ``memory_mb/``,
    ``assign_<rule>/``); ``continuous/*`` is the GridVAE's own, the same for every quantizer."""
    return {key if key.startswith("continuous/") else key.replace("/", f"_{name}/", 1): value for key, value in metrics.items()}
