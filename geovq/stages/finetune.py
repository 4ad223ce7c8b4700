"""stage=finetune: train a GridVAE's decoder on its a posteriori codebook (pipeline A + fine-tuned decoder).

The GridVAE was trained to decode its continuous posterior means; after quantization it decodes
codebook vectors instead. This stage closes that gap on the decoder's side only: the encoder,
the codebook and every image's code grid (the assignments in ``stage.codes``) stay fixed, and the
decoder learns, with the GridVAE's reconstruction loss (BCE summed per image), to decode each
training image from the codebook vectors its code grid looks up.

``stage.codes``: a codes.pt of stage=quantize (or of stage=vae with callbacks=quantize), or
``geodesic`` for the newest such file. The GridVAE and the codebook come from its provenance.
Writes model.pt (kind ``grid_vae``: the fine-tuned GridVAE, made from those codes) and codes.pt
(the same grids and codebook, recording the fine-tuned GridVAE as their decoder, so that
stage=prior/sample/evaluate decode with it unchanged), checkpoints/, csv/, metrics.json
(``recon/test_mse_before`` and ``recon/test_mse``: test MSE through the codes with the original
and the fine-tuned decoder), reconstructions.png, config.yaml.
"""

from __future__ import annotations

import time

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import Tensor
from torch.utils.data import TensorDataset
from torchmetrics import MeanSquaredError

from geovq.artifacts import (
    CODES_FILE,
    MODEL_FILE,
    Artifact,
    load_code_grids,
    load_input,
    save_code_grids,
)
from geovq.callbacks.model_artifact import best_checkpoint
from geovq.data.in_memory import InMemoryDataModule
from geovq.errors import ArtifactError, ConfigError, config_section
from geovq.loggers import log_final_and_finish
from geovq.metrics.reconstruction import decoded_mse
from geovq.models.base import GeovqModule
from geovq.models.io import model_from_artifact, save_model
from geovq.run_folder import as_floats, output_dir, result_config, write_run_files
from geovq.stages.prior import resolve_codes
from geovq.training import (
    build_trainer,
    check_checkpoint_folder,
    check_optimizer,
    check_optimizer_unchanged,
    resume_checkpoint,
)
from geovq.viz.images import image_rows_figure, save_figure

SPLITS = ("train", "val", "test")


class DecoderOnCodes(GeovqModule):
    """A GridVAE whose decoder learns to decode the codebook vectors of fixed code grids. The
    encoder takes no gradient (so the optimizer leaves it alone) and the codebook is a buffer."""

    def __init__(self, vae, codebook: Tensor, optimizer=None, scheduler=None):
        super().__init__(optimizer, scheduler)
        self.vae = vae.train()  # a loaded model comes in eval mode; it has no dropout or norm layers either way
        self.vae.encoder.requires_grad_(False)
        self.register_buffer("codebook", torch.as_tensor(codebook, dtype=torch.float32))
        self.mse = torch.nn.ModuleDict({s: MeanSquaredError() for s in ("val", "test")})

    def decode_codes(self, grids: Tensor) -> Tensor:
        """Pixel logits of code grids N x H x W."""
        return self.vae.decode(self.codebook[grids.to(self.codebook.device)].permute(0, 3, 1, 2))

    def _step(self, batch, split: str) -> Tensor:
        images, grids = batch
        logits = self.decode_codes(grids)
        # The GridVAE's reconstruction term: Bernoulli NLL summed over pixels, averaged over images.
        loss = F.binary_cross_entropy_with_logits(logits, images, reduction="sum") / len(images)
        if split != "train":
            self.mse[split](torch.sigmoid(logits), images)
            self.log(f"{split}/mse", self.mse[split], prog_bar=True, on_step=False, on_epoch=True)
        self.log(f"{split}/loss", loss, prog_bar=True, on_step=split == "train", on_epoch=True, batch_size=len(images))
        return loss


class ImagesWithCodes(InMemoryDataModule):
    """Each split's images with their code grids, in the order the quantize stage encoded them."""

    def __init__(self, images, codes: Artifact):
        super().__init__()
        self.save_hyperparameters({key: images.hparams[key] for key in ("batch_size", "eval_batch_size", "num_workers")})
        self.images, self.grids = images, codes.payload["splits"]
        for split in SPLITS:
            n_images, n_grids = len(images.split(split)), len(self.grids.get(split, ()))
            if n_images != n_grids:
                raise ConfigError(
                    f"{codes.path} holds {n_grids} {split} code grids but data= gives {n_images} {split} images; "
                    "fine-tune with the data settings (data.*, seed) of the run that made the codes."
                )

    def dataset(self, split: str) -> TensorDataset:
        return TensorDataset(self.images.split(split).tensors[0], self.grids[split])


def decoder_inputs(codes: Artifact) -> tuple[Artifact, Artifact]:
    """The GridVAE and the codebook the code grids were made with, checked by their sha256."""
    inputs = codes.provenance.get("inputs", {})
    if "vae" not in inputs or "codebook" not in inputs:
        made_by = "a VQ-VAE (stage=vqvae)" if "vqvae" in inputs else f"stage={codes.provenance.get('stage')}"
        raise ArtifactError(
            f"{codes.path} holds code grids of {made_by}, with no GridVAE and codebook: stage=finetune "
            "fine-tunes the decoder of pipeline A. Give stage.codes=<codes.pt of stage=quantize>."
        )
    return load_input(codes, "vae", kind="grid_vae"), load_input(codes, "codebook", kind="codebook")


def run(cfg: DictConfig) -> dict:
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    codes = load_code_grids(resolve_codes(cfg))
    vae_art, codebook_art = decoder_inputs(codes)
    with config_section("data"):
        images = instantiate(cfg.data)
    images.prepare_data()
    data = ImagesWithCodes(images, codes)
    # Only the optimizer and scheduler of model= apply: the architecture is the saved GridVAE's.
    with config_section("model"):
        optimizer, scheduler = instantiate(cfg.model.optimizer), instantiate(cfg.model.get("scheduler"))
    model = DecoderOnCodes(model_from_artifact(vae_art), codebook_art.payload["vectors"], optimizer, scheduler)
    original = DecoderOnCodes(model_from_artifact(vae_art), codebook_art.payload["vectors"])  # stays as it was
    test_images, test_grids = images.split("test").tensors[0], data.grids["test"]

    started = time.perf_counter()
    trainer, metrics = fit_and_test(cfg, model, data)
    metrics["time/fit"] = time.perf_counter() - started
    model.cpu().eval()
    metrics["recon/test_mse_before"] = decoded_mse(original.decode_codes, test_grids, test_images)
    metrics["recon/test_mse"] = decoded_mse(model.decode_codes, test_grids, test_images)
    if trainer.is_global_zero:
        folder, config = output_dir(cfg), result_config(cfg)
        tuned = save_model(folder / MODEL_FILE, model.vae, "grid_vae", stage="finetune", config=config, inputs={"codes": codes})
        # The same grids and codebook; only the decoder they lead to is the fine-tuned one.
        save_code_grids(
            folder / CODES_FILE, codes.payload["splits"], int(codes.payload["n_codes"]), stage="finetune",
            config=config, inputs={"vae": tuned, "codebook": codebook_art, "codes": codes},
        )
        if cfg.figures:
            with torch.no_grad():
                rows = {"test images": test_images[:16]}
                rows["codes, GridVAE decoder"] = torch.sigmoid(original.decode_codes(test_grids[:16]))
                rows["codes, fine-tuned decoder"] = torch.sigmoid(model.decode_codes(test_grids[:16]))
            save_figure(image_rows_figure(rows), folder / "reconstructions.png")
        write_run_files(cfg, metrics)
    log_final_and_finish(trainer, metrics)
    return metrics


def fit_and_test(cfg: DictConfig, model: DecoderOnCodes, data: ImagesWithCodes) -> tuple[L.Trainer, dict]:
    """Fit (or resume) as train_and_test does, with the best epoch by val/loss restored, then test.
    train_and_test itself does not fit: it builds the model from model= and saves it as its kind."""
    check_optimizer(model)
    check_checkpoint_folder(cfg)
    resume = resume_checkpoint(cfg)
    if resume is not None:
        check_optimizer_unchanged(model, resume[1], resume[0])
    trainer = build_trainer(cfg)
    trainer.fit(model, datamodule=data, ckpt_path=resume and resume[0], weights_only=True)
    best = best_checkpoint(trainer)
    if best:
        model.load_state_dict(torch.load(best, map_location=model.device, weights_only=True)["state_dict"])
    metrics = {k.removesuffix("_epoch"): v for k, v in as_floats(trainer.callback_metrics).items() if not k.endswith("_step")}
    results = trainer.test(model, datamodule=data, verbose=False)
    metrics.update(as_floats(results[0]) if results else {})
    metrics["epochs"] = float(trainer.current_epoch)
    return trainer, metrics
