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

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from geovq.artifacts import CODES_FILE, load_code_grids, save_code_grids
from geovq.data.images_with_codes import ImagesWithCodes
from geovq.errors import config_section
from geovq.inputs import grid_vae_and_codebook, resolve_codes
from geovq.loggers import log_final_and_finish
from geovq.metrics.reconstruction import decoded_mse
from geovq.models.decoder_on_codes import DecoderOnCodes
from geovq.models.grid_vae import GridVAE
from geovq.models.io import model_from_artifact
from geovq.run_folder import output_dir, result_config, write_run_files
from geovq.training import train_and_test
from geovq.viz.images import image_rows_figure, save_figure


def run(cfg: DictConfig) -> dict:
    codes = load_code_grids(resolve_codes(cfg))
    vae_art, codebook_art = grid_vae_and_codebook(codes)
    vectors = codebook_art.payload["vectors"]
    original = []  # the GridVAE as it was, built right after the model (the seeded draws keep their order)

    def build(images):
        data = ImagesWithCodes(images, codes)
        # Only the optimizer and scheduler of model= apply: the architecture is the saved GridVAE's.
        with config_section("model"):
            optimizer, scheduler = instantiate(cfg.model.optimizer), instantiate(cfg.model.get("scheduler"))
        model = DecoderOnCodes(model_from_artifact(vae_art), vectors, optimizer, scheduler)
        original.append(model_from_artifact(vae_art))
        return model, data

    started = time.perf_counter()
    trained = train_and_test(cfg, GridVAE, build=build)
    metrics, model = trained.metrics, trained.model
    metrics["time/fit"] = time.perf_counter() - started
    model.cpu().eval()
    test_images, test_grids = trained.datamodule.images.split("test").tensors[0], codes.payload["splits"]["test"]
    metrics["recon/test_mse_before"] = decoded_mse(lambda grids: original[0].decode_codebook(vectors, grids), test_grids, test_images)
    metrics["recon/test_mse"] = decoded_mse(model.decode_codes, test_grids, test_images)
    if trained.trainer.is_global_zero:
        # The same grids and codebook; only the decoder they lead to is the fine-tuned one (model.pt).
        save_code_grids(
            output_dir(cfg) / CODES_FILE, codes.payload["splits"], int(codes.payload["n_codes"]), stage="finetune",
            config=result_config(cfg), inputs={"vae": trained.model_artifact, "codebook": codebook_art, "codes": codes},
        )
        if cfg.figures:
            with torch.no_grad():
                rows = {"test images": test_images[:16]}
                rows["codes, GridVAE decoder"] = torch.sigmoid(original[0].decode_codebook(vectors, test_grids[:16]))
                rows["codes, fine-tuned decoder"] = torch.sigmoid(model.decode_codes(test_grids[:16]))
            save_figure(image_rows_figure(rows), output_dir(cfg) / "reconstructions.png")
        write_run_files(cfg, metrics)
    log_final_and_finish(trained.trainer, metrics)
    return metrics
