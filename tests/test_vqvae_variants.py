"""The VQ-VAE's variants: the paper's loss reduction, today's quantizers from vector-quantize-pytorch
(FSQ, rotation trick, cosine codebook, SimVQ) and the start from an a posteriori codebook."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from geovq.artifacts import load_code_grids, require_made_from
from geovq.data.images import ImageDataModule
from geovq.errors import ArtifactError, ConfigError, config_section
from geovq.models.grid_vae import GridVAE
from geovq.models.io import load_model
from geovq.models.vqvae import VQVAE
from geovq.quantize import EuclideanKMeans
from geovq.train import run_stage


@pytest.fixture(scope="module")
def mnist(data_root):
    """320 MNIST training images, N x 1 x 28 x 28 in [0, 1]."""
    import torchvision

    images = torchvision.datasets.MNIST(root=str(data_root), train=True, download=False).data[:320]
    return images.float().div(255).unsqueeze(1)


VARIANTS = {"vqvae_fsq": "fsq", "vqvae_rotation": "library_vq", "vqvae_cosine": "library_vq", "vqvae_simvq": "simvq"}


def variant_model(make_cfg, variant: str) -> VQVAE:
    """The model a variant's config builds, at the tests' tiny size."""
    return instantiate(make_cfg("stage=vqvae", f"model={variant}").model)


def instantiate_with(make_cfg, *overrides):
    """The model of stage=vqvae with these overrides, built as the stage builds it (its errors
    name the config key)."""
    with config_section("model"):
        return instantiate(make_cfg("stage=vqvae", *overrides).model)


def train_steps(model, images, steps=30, batch=32, lr=3e-3):
    """Plain Adam steps on the training objective; the loss of every step."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    losses = []
    for step in range(steps):
        x = images[(step * batch) % len(images):][:batch]
        terms = model.loss_terms(x)
        optimizer.zero_grad()
        terms["objective"].backward()
        optimizer.step()
        losses.append(float(terms["loss"].detach()))
    return losses


# -- the paper's objective ----------------------------------------------------------------------
def test_paper_reduction_gives_the_documented_loss_values(tiny_model, mnist):
    x = mnist[:16]
    models = {}
    for reduction in ("per_image", "paper"):
        torch.manual_seed(0)
        models[reduction] = VQVAE(**tiny_model, quantizer={"n_codes": 32, "commitment_cost": 0.5},
                                  loss_reduction=reduction).eval()
    per_image, paper = (models[r].loss_terms(x) for r in ("per_image", "paper"))
    out = models["paper"].quantizer(models["paper"].encode(x))
    bce_sum = F.binary_cross_entropy_with_logits(paper["logits"], x, reduction="sum")
    vq_mean = out.codebook_loss + 0.5 * out.commitment_loss
    # paper: BCE summed over the batch + the quantizer's means, unscaled.
    assert torch.allclose(paper["objective"], bce_sum + vq_mean)
    assert torch.allclose(paper["loss"], (bce_sum + vq_mean) / 16)
    # per_image: as before, BCE per image + the VQ loss summed over an image's grid.
    assert torch.allclose(per_image["objective"], bce_sum / 16 + vq_mean * 7 * 7 * 8)
    assert per_image["objective"] is per_image["loss"]
    # The logged terms are per image in both.
    for key in ("rec", "vq_loss", "codebook_loss", "commitment_loss"):
        assert torch.allclose(per_image[key], paper[key]), key
    # The VQ terms weigh B*H*W*D times less under the paper's reduction.
    ratio = (bce_sum / vq_mean) / (per_image["rec"] / per_image["vq_loss"])
    assert torch.allclose(ratio, torch.tensor(16 * 7 * 7 * 8.0))


def test_paper_objective_config_and_bad_reduction(make_cfg):
    assert variant_model(make_cfg, "vqvae_paper_objective").hparams.loss_reduction == "paper"
    with pytest.raises(ConfigError, match="model.loss_reduction"):
        instantiate_with(make_cfg, "model.loss_reduction=mean")


# -- today's quantizers -------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.slow  # trains or runs the CLI: the slow tier (CI runs both tiers)
def test_variant_trains_and_round_trips_code_grids(make_cfg, mnist, variant):
    torch.manual_seed(0)
    model = variant_model(make_cfg, variant)
    assert model.hparams.quantizer["kind"] == VARIANTS[variant] and model.n_codes == 128
    images = mnist[:256]
    losses = train_steps(model, images)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) < 0.8 * sum(losses[:5]), losses
    model.eval()
    x = mnist[256:300]
    codes = model.codes(x)
    assert codes.shape == (44, 7, 7) and codes.dtype == torch.int64
    assert 0 <= int(codes.min()) and int(codes.max()) < 128
    z_q, same = model.quantize(model.encode(x))
    assert torch.equal(same, codes)
    assert torch.equal(z_q.movedim(1, -1), model.codebook[codes])
    # decode_codes is what a prior's samples go through; here it reproduces the evaluation's logits.
    terms = model.loss_terms(x)
    assert torch.allclose(model.decode_codes(codes), terms["logits"], atol=1e-6)
    assert int(terms["counts"].sum()) == 44 * 49 and torch.isfinite(terms["loss"])
    with pytest.raises(Exception, match="codes must lie in"):
        model.decode_codes(torch.full((1, 7, 7), 128))


def test_variant_is_deterministic(make_cfg, mnist):
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        model = variant_model(make_cfg, "vqvae_rotation")
        train_steps(model, mnist[:128], steps=4)
        runs.append((model.state_dict(), model.eval().codes(mnist[256:288])))
    (first, codes_a), (second, codes_b) = runs
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert torch.equal(codes_a, codes_b)


def test_unknown_kind_and_leftover_options_name_the_key(make_cfg):
    with pytest.raises(ConfigError, match="model.quantizer.kind"):
        instantiate_with(make_cfg, "model.quantizer.kind=pq")
    with pytest.raises(ConfigError, match="model.quantizer.ema.*kind=fsq has no option 'ema'"):
        instantiate_with(make_cfg, "model=vqvae_fsq", "+model.quantizer.ema=true")
    with pytest.raises(ConfigError, match="model.quantizer.levels"):
        instantiate_with(make_cfg, "model=vqvae_fsq", "model.quantizer.levels=[2,2]")


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.slow  # trains or runs the CLI: the slow tier (CI runs both tiers)
def test_stage_vqvae_writes_codes_with_each_variant(make_cfg, data_root, tmp_path, variant):
    metrics = run_stage(make_cfg("stage=vqvae", f"model={variant}", "figures=false"))
    out = tmp_path / "run"
    model, model_art = load_model(out / "model.pt", "vqvae")
    codes = load_code_grids(out / "codes.pt")
    require_made_from(codes, "vqvae", model_art)
    test = codes.payload["splits"]["test"]
    assert codes.payload["n_codes"] == 128 and test.shape == (200, 7, 7)
    assert 0 <= int(test.min()) and int(test.max()) < 128
    assert metrics["test/mse"] > 0 and 0 < metrics["codes/train_utilization"] <= 1
    # The saved model rebuilds from its artifact and assigns the stored codes.
    images = ImageDataModule(root=str(data_root), subset=256, test_subset=200, download=False).split("test").tensors[0]
    assert torch.equal(model.codes(images[:50]), test[:50])


# -- the a posteriori start (hybrid) ------------------------------------------------------------
def test_started_model_reproduces_the_aposteriori_reconstruction_then_trains(tiny_model, mnist):
    torch.manual_seed(0)
    vae = GridVAE(**tiny_model).eval()
    x = mnist[:64]
    with torch.no_grad():
        mu = vae.encode(x)[0]
    rows = mu.permute(0, 2, 3, 1).reshape(-1, 8).numpy()
    kmeans = EuclideanKMeans(n_clusters=16, n_landmarks=len(rows), random_state=0, progress=False).fit(rows)
    centers = torch.as_tensor(kmeans.cluster_centers_, dtype=torch.float32)
    expected = torch.as_tensor(kmeans.predict(rows)).reshape(64, 7, 7)

    model = VQVAE(**tiny_model, quantizer={"n_codes": 16, "ema": True, "restart_dead_codes": True,
                                     "dead_code_threshold": 0.5, "dead_code_window": None})
    model.init_from_grid_vae(vae, centers)
    model.eval()
    assert torch.equal(model.codes(x), expected)
    with torch.no_grad():
        aposteriori = torch.sigmoid(vae.decode(centers[expected].permute(0, 3, 1, 2)))
    assert torch.allclose(model.reconstruct(x), aposteriori, atol=1e-6)
    losses = train_steps(model, mnist[:256], steps=10)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert not torch.equal(model.codebook, centers)  # the codebook trains on from there


def test_start_refuses_mismatched_models(tiny_model):
    vae = GridVAE(**tiny_model)
    with pytest.raises(ConfigError, match=r"model.latent_dim=4.*Set model.latent_dim=8"):
        VQVAE(**{**tiny_model, "latent_dim": 4}).init_from_grid_vae(vae, torch.zeros(128, 8))
    with pytest.raises(ConfigError, match=r"Set model.quantizer.n_codes=16"):
        VQVAE(**tiny_model).init_from_grid_vae(vae, torch.zeros(16, 8))
    with pytest.raises(ConfigError, match=r"kind=fsq has no codebook"):
        VQVAE(**tiny_model, quantizer={"kind": "fsq", "levels": [8, 4, 4]}).init_from_grid_vae(vae, torch.zeros(128, 8))


@pytest.fixture(scope="module")
def quantized_vae(compose_config, tiny_overrides, tmp_path_factory):
    """A tiny GridVAE and its K-Means codebook (K=8), through the stages."""
    root = tmp_path_factory.mktemp("aposteriori")
    run_stage(compose_config(root / "vae", tiny_overrides() + ["stage=vae", "figures=false"]))
    run_stage(compose_config(root / "quantize", tiny_overrides() + [
        "stage=quantize", f"stage.vae={root / 'vae' / 'model.pt'}", "quantizer=kmeans", "quantizer.n_clusters=8",
        "quantizer.n_landmarks=300", "quantizer.progress=false"]))
    return root / "quantize" / "codes.pt"


@pytest.mark.slow  # trains or runs the CLI: the slow tier (CI runs both tiers)
def test_stage_vqvae_starts_from_the_aposteriori_codebook(quantized_vae, make_cfg, tmp_path):
    metrics = run_stage(make_cfg("stage=vqvae", "model=vqvae_hybrid", "model.quantizer.n_codes=8",
                                 f"stage.init_codes={quantized_vae}", "figures=false"))
    # Nearest-code assignment, as K-Means assigns: the started model gives the same test codes
    # (up to a distance tie computed another way).
    assert metrics["init/test_code_agreement"] >= 0.999 and metrics["init/test_mse"] > 0
    codes = load_code_grids(tmp_path / "run" / "codes.pt")
    require_made_from(codes, "init_codes", load_code_grids(quantized_vae))
    assert metrics["test/mse"] > 0 and codes.payload["n_codes"] == 8


@pytest.mark.slow  # trains or runs the CLI: the slow tier (CI runs both tiers)
def test_stage_vqvae_refuses_a_start_without_a_codebook(quantized_vae, make_cfg, tmp_path):
    run_stage(make_cfg("stage=vqvae", "model.quantizer.n_codes=8", "figures=false", output_dir=tmp_path / "b"))
    with pytest.raises(ArtifactError, match="written by stage=vqvae.*codes.pt of stage=quantize"):
        run_stage(make_cfg("stage=vqvae", "model=vqvae_hybrid", f"stage.init_codes={tmp_path / 'b' / 'codes.pt'}"))
    with pytest.raises(ConfigError, match="Set model.quantizer.n_codes=8"):
        run_stage(make_cfg("stage=vqvae", "model=vqvae_hybrid", f"stage.init_codes={quantized_vae}", "figures=false"))
