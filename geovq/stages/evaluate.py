"""stage=evaluate: the comparison figures of one pipeline, all on held-out data.

From a ``samples.pt`` the provenance leads to the prior, its code grids, and the codebook and
decoder (pipeline A: GridVAE + geodesic codebook; B: VQ-VAE). Measured:

- reconstruction MSE per pixel over the whole test split, through the codes (A: decoding the
  codebook vectors; B: the VQ layer), and for A the continuous GridVAE (posterior mean);
- codebook utilization and code perplexity of the training codes;
- prior test NLL (nats per token), perplexity, bits per image, and the unigram baseline;
- sample fidelity with the project's MNIST classifier: Fréchet distance of its features between
  the samples and the test images with a 95% bootstrap interval over the samples (its sampling
  noise: ``fidelity/fid_ci_low``, ``fidelity/fid_ci_high``, ``stage.fid_bootstrap`` resamples), the
  same distance between training and test images (the floor to read it against), mean confidence
  and entropy of the predicted digits. The real images' features are computed once per classifier
  and kept beside it (geovq/metrics/feature_cache.py): a study's later evaluations read them.

Also measured under the paper's own protocol, for Table 1 like for like (``paper/`` keys):
reconstruction MSE on the first test batch of 128 images, and the prior's perplexity on
training code grids (a seeded choice of as many as there are test grids).

With ``stage.reconstruction_only=true`` it measures the code grids of ``stage.codes`` alone
(``geodesic`` | ``vqvae``: the newest of that pipeline, or a path): the
reconstruction and codebook figures and the first-batch MSE, no prior nor samples (a study with
``pipeline.priors=false``).

Writes evaluation.json and metrics.json in the run folder.
"""

from __future__ import annotations

import json
import math

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from geovq.aposteriori import continuous_mse
from geovq.artifacts import (
    EVALUATION_FILE,
    MODEL_FILE,
    SAMPLES_FILE,
    atomic_write_text,
    load_artifact,
    load_input,
)
from geovq.errors import ConfigError, config_section
from geovq.inputs import given_or_newest, require_prior_grids, resolve_codes
from geovq.loggers import log_without_trainer
from geovq.metrics.codebook import code_counts, usage_summary
from geovq.metrics.feature_cache import cached_features
from geovq.metrics.fidelity import fidelity_report
from geovq.metrics.prior import nll_summary, prior_nll, unigram_entropy
from geovq.metrics.reconstruction import decoded_mse
from geovq.metrics.subsets import seeded_subset
from geovq.models.decoding import code_decoder
from geovq.models.inference import map_images
from geovq.models.io import load_model, model_from_artifact
from geovq.run_folder import output_dir, write_run_files

# The paper measured reconstruction MSE on one test batch of this size.
PAPER_BATCH = 128


@torch.no_grad()
def run(cfg: DictConfig) -> dict:
    options = cfg.stage
    # Every input is loaded and checked before the data and the first figure.
    if options.reconstruction_only:
        samples = prior = classifier = None
        codes = load_artifact(resolve_codes(cfg), kind="code_grids")
    else:
        samples = load_artifact(given_or_newest(cfg, options.samples, "sample", SAMPLES_FILE, kind="samples"), kind="samples")
        prior_art = load_input(samples, "prior", kind="prior", path=options.prior)
        codes = load_input(samples, "codes", kind="code_grids", path=options.codes)  # what the samples were decoded from
        require_prior_grids(prior_art, codes)  # the prior's own grids, or a fine-tuned decoder's copy of them
    decode, decoder_inputs, label = code_decoder(codes, options.decoder, options.codebook)
    if samples is not None:
        prior = model_from_artifact(prior_art)
        classifier = load_model(given_or_newest(cfg, options.classifier, "classifier", MODEL_FILE, kind="classifier"), "classifier")

    with config_section("data"):
        datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    test_images = datamodule.split("test").tensors[0]
    grids = {split: grid.to(torch.int64) for split, grid in codes.payload["splits"].items()}
    if len(grids["test"]) != len(test_images):
        raise ConfigError(
            f"the code grids hold {len(grids['test'])} test images but data= gives {len(test_images)}; "
            "evaluate with the same data settings (data.subset/test_subset) the pipeline used."
        )
    n_codes = int(codes.payload["n_codes"])
    results = {"method": label, "data/n_test": len(test_images),
               **reconstruction_figures(decode, decoder_inputs, grids, n_codes, test_images)}
    if samples is not None:
        results.update(prior_figures(prior, grids, n_codes))
        train_images = datamodule.split("train").tensors[0][: len(test_images)]
        results.update(fidelity_figures(cfg, classifier, samples, test_images, train_images))

    atomic_write_text(output_dir(cfg) / EVALUATION_FILE, json.dumps(results, indent=2) + "\n")
    metrics = {k: v for k, v in results.items() if isinstance(v, (int, float))}
    write_run_files(cfg, metrics)
    log_without_trainer(cfg, metrics)
    return metrics


def reconstruction_figures(decode, decoder_inputs: dict, grids: dict, n_codes: int, test_images: torch.Tensor) -> dict:
    """Test MSE through the codes (and, for A, of the continuous GridVAE), codebook use of the
    training codes, and the paper's first-batch MSE."""
    usage = usage_summary(code_counts(grids["train"], n_codes))
    results = {
        "recon/test_mse": decoded_mse(decode, grids["test"], test_images),
        "codes/n_codes": n_codes,
        "codes/codes_used": usage["codes_used"],
        "codes/utilization": usage["utilization"],
        "codes/perplexity": usage["perplexity"],
        "paper/recon_mse_first_batch": decoded_mse(decode, grids["test"][:PAPER_BATCH], test_images[:PAPER_BATCH]),
    }
    if "vae" in decoder_inputs:
        vae = model_from_artifact(decoder_inputs["vae"])
        mu = map_images(vae, test_images, lambda x: vae.encode(x)[0])
        results["recon/continuous_test_mse"] = continuous_mse(vae, mu, test_images)
    return results


def prior_figures(prior, grids: dict, n_codes: int) -> dict:
    """The prior's NLL on the test grids, the unigram baseline, and the paper's perplexity on
    training grids."""
    test_nll = nll_summary(prior_nll(prior, grids["test"]), grids["test"][0].numel())
    # The paper's protocol: perplexity on training codes, here on a seeded choice of as many
    # training grids as there are test grids (10,000 of 55,000 on MNIST): a fifth of the
    # forward passes, 0.1-0.7% above the full split's perplexity for experiment=paper's priors.
    train_nll = prior_nll(prior, seeded_subset(grids["train"], len(grids["test"])))
    unigram = unigram_entropy(grids["train"], n_codes)
    return {
        "prior/test_nll": test_nll["nll"],
        "prior/test_perplexity": test_nll["perplexity"],
        "prior/test_bits_per_image": test_nll["bits_per_image"],
        "prior/unigram_nll": unigram,
        "prior/unigram_perplexity": math.exp(unigram),
        "paper/prior_train_perplexity": math.exp(train_nll),
    }


def fidelity_figures(cfg: DictConfig, classifier: tuple, samples, test_images: torch.Tensor, train_images: torch.Tensor) -> dict:
    """The samples scored by the project's classifier (model, artifact) against the test images
    (fidelity_report)."""
    model, artifact = classifier
    sample_images = samples.payload["images"].to(torch.float32) / 255.0
    fidelity = fidelity_report(model, sample_images, test_images, train_images, seed=cfg.seed,
                               n_bootstrap=cfg.stage.fid_bootstrap, real_features=cached_features(model, artifact))
    return {**{f"fidelity/{key}": value for key, value in fidelity.items()}, "fidelity/n_samples": len(sample_images)}
