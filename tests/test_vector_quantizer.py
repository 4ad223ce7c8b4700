"""The VQ layer (geovq.nn.vq) part by part: lookup, losses and straight-through gradient (layer),
EMA codebook (codebook), k-means init (init), dead-code restarts (restarts), one-process collectives
(distributed; two processes in test_vq_distributed.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from geovq.errors import ConfigError, ParameterError
from geovq.metrics.codebook import perplexity, utilization
from geovq.nn.conv import ConvDecoder, ConvEncoder
from geovq.nn.vq import VectorQuantizer
from geovq.nn.vq.distributed import all_gather_rows, filled_on_rank0, summed_over_ranks, world_size
from geovq.nn.vq.init import kmeans_init_codebook
from geovq.nn.vq.restarts import dead_codes, reset_optimizer_state_rows

MNIST_ROOT = "/work/shared/data"


def clustered_grid(n_images=8, dim=4, n_clusters=6, hw=5, spread=0.05, seed=0):
    """B x D x H x W latents drawn around ``n_clusters`` well separated centers."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(n_clusters, dim, generator=g) * 3
    which = torch.randint(n_clusters, (n_images, hw, hw), generator=g)
    z = centers[which] + spread * torch.randn(n_images, hw, hw, dim, generator=g)
    return z.movedim(-1, 1).contiguous(), centers


# -- lookup and losses -------------------------------------------------------------------------
def test_nearest_code_lookup_and_shapes():
    torch.manual_seed(0)
    vq = VectorQuantizer(n_codes=10, code_dim=3)
    vq.embedding.data = torch.randn(10, 3)
    z = torch.randn(2, 3, 4, 5)
    out = vq(z)
    assert out.quantized.shape == z.shape
    assert out.codes.shape == (2, 4, 5) and out.codes.dtype == torch.int64
    flat = z.movedim(1, -1).reshape(-1, 3)
    expected = torch.cdist(flat, vq.embedding.detach()).argmin(1).view(2, 4, 5)
    assert torch.equal(out.codes, expected)
    # Forward value of the straight-through output is the code itself.
    assert torch.allclose(out.quantized, vq.lookup(out.codes))
    assert torch.allclose(out.quantized.movedim(1, -1), vq.codebook[out.codes])
    assert out.counts.sum() == 2 * 4 * 5 and out.counts.shape == (10,)
    assert torch.equal(vq.nearest(z), out.codes)
    assert out.restarted.numel() == 0


def test_losses_are_means_per_element_and_route_gradients():
    torch.manual_seed(0)
    vq = VectorQuantizer(n_codes=6, code_dim=4, commitment_cost=0.7)
    z = torch.randn(3, 4, 2, 2, requires_grad=True)
    out = vq(z)
    q = vq.lookup(out.codes).detach()
    mse = ((z.detach() - q) ** 2).mean()
    assert torch.allclose(out.codebook_loss, mse)
    assert torch.allclose(out.commitment_loss, mse)  # reported unscaled
    assert torch.allclose(out.loss, out.codebook_loss + 0.7 * out.commitment_loss)
    # The codebook loss moves only the codebook, the commitment loss only the encoder output.
    g_codebook = torch.autograd.grad(out.codebook_loss, [vq.embedding, z], allow_unused=True, retain_graph=True)
    assert g_codebook[0].abs().sum() > 0 and (g_codebook[1] is None or g_codebook[1].abs().sum() == 0)
    g_commit = torch.autograd.grad(out.commitment_loss, [vq.embedding, z], allow_unused=True)
    assert (g_commit[0] is None or g_commit[0].abs().sum() == 0) and g_commit[1].abs().sum() > 0


def test_straight_through_gradient_reaches_encoder():
    torch.manual_seed(0)
    encoder = ConvEncoder(1, 16, 4, n_res_blocks=1)
    vq = VectorQuantizer(n_codes=8, code_dim=4)
    decoder = ConvDecoder(4, 16, 1, n_res_blocks=1)
    x = torch.rand(4, 1, 28, 28)
    z_e = encoder(x)
    with torch.no_grad():  # codes spread over the encoder's outputs, so the decoder sees variety
        vq.embedding.copy_(z_e.movedim(1, -1).reshape(-1, 4)[torch.randperm(196)[:8]])
    out = vq(z_e)
    assert (out.counts > 0).sum() > 1
    rec = F.binary_cross_entropy_with_logits(decoder(out.quantized), x)  # reconstruction alone
    rec.backward()
    grads = [p.grad for p in encoder.parameters()]
    assert all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    # The codebook gets no gradient from the reconstruction (it only learns from its own loss).
    assert vq.embedding.grad is None or vq.embedding.grad.abs().sum() == 0


def test_straight_through_gradient_is_identity():
    vq = VectorQuantizer(n_codes=5, code_dim=2)
    z = torch.randn(1, 2, 3, 3, requires_grad=True)
    upstream = torch.randn(1, 2, 3, 3)
    (vq(z).quantized * upstream).sum().backward()
    assert torch.allclose(z.grad, upstream)


# -- statistics ----------------------------------------------------------------------------------
def test_statistics_move_in_training_only():
    torch.manual_seed(0)
    vq = VectorQuantizer(n_codes=6, code_dim=3, ema=True, restart_dead_codes=True, dead_code_threshold=0.5)
    z = torch.randn(2, 3, 4, 4)
    before = {name: value.clone() for name, value in vq.state_dict().items()}
    vq.eval()
    out = vq(z)
    assert out.counts.sum() == 32
    assert all(torch.equal(value, before[name]) for name, value in vq.state_dict().items())
    vq.train()
    out = vq(z)
    assert torch.equal(vq.steps_since_used, (out.counts == 0).long())
    assert torch.equal(vq.ema_usage, out.counts.float())  # the first training step's counts


def test_models_saved_with_the_old_usage_buffer_load():
    vq = VectorQuantizer(n_codes=4, code_dim=2)
    state = {**vq.state_dict(), "usage_counts": torch.tensor([1, 0, 2, 0])}
    VectorQuantizer(n_codes=4, code_dim=2).load_state_dict(state)  # strict
    nested = nn.Sequential(VectorQuantizer(n_codes=4, code_dim=2))
    nested.load_state_dict({f"0.{name}": value for name, value in state.items()})


# -- EMA ----------------------------------------------------------------------------------------
def test_ema_moves_used_codes_toward_inputs_and_leaves_unused_ones():
    torch.manual_seed(0)
    vq = VectorQuantizer(n_codes=4, code_dim=2, ema=True, decay=0.9)
    assert len(list(vq.parameters())) == 0  # the codebook is a buffer
    start = torch.tensor([[0.0, 0.0], [10.0, 10.0], [-10.0, 10.0], [10.0, -10.0]])
    vq.embedding.copy_(start)
    vq.embed_sum.copy_(start)  # cluster_size is 1: statistics consistent with the codebook
    target = torch.tensor([1.0, 2.0])
    z = (target + 0.01 * torch.randn(2, 3, 3, 2)).movedim(-1, 1)  # all nearest to code 0
    out = vq(z)
    assert out.counts.tolist() == [18, 0, 0, 0]
    assert out.codebook_loss == 0
    assert torch.allclose(out.loss, vq.commitment_cost * out.commitment_loss)
    mean = z.movedim(1, -1).reshape(-1, 2).mean(0)
    assert (vq.embedding[0] - mean).norm() < (start[0] - mean).norm() * 0.5
    assert torch.equal(vq.embedding[1:], start[1:])
    for _ in range(50):
        vq(z)
    assert torch.allclose(vq.embedding[0], mean, atol=1e-3)
    assert torch.equal(vq.embedding[1:], start[1:])
    # Evaluation mode does not update.
    vq.eval()
    before = vq.embedding.clone()
    vq(z + 5)
    assert torch.equal(vq.embedding, before)


# -- k-means init ---------------------------------------------------------------------------------
def test_kmeans_init_gives_distinct_codes_within_data_range():
    torch.manual_seed(0)
    z, _ = clustered_grid(n_images=16, dim=4, n_clusters=6)
    # Many exact duplicates (like MNIST's blank background cells) must not give duplicate codes.
    z[:8, :, :3, :] = 0.0
    vq = VectorQuantizer(n_codes=16, code_dim=4, kmeans_init=True)
    assert not bool(vq.initialized)
    vq(z)
    assert bool(vq.initialized)
    codebook = vq.codebook
    assert torch.unique(codebook, dim=0).shape[0] == 16
    assert torch.cdist(codebook, codebook).add(torch.eye(16) * 1e9).min() > 1e-6
    flat = z.movedim(1, -1).reshape(-1, 4)
    assert (codebook >= flat.min(0).values - 1e-5).all() and (codebook <= flat.max(0).values + 1e-5).all()
    # Initialised once: a second batch does not re-run k-means (a learned codebook only moves
    # through the optimizer).
    after_first = codebook.clone()
    vq(z * 2 + 1)
    assert torch.equal(vq.codebook, after_first)


def test_kmeans_recovers_clusters():
    torch.manual_seed(0)
    z, centers = clustered_grid(n_images=16, dim=3, n_clusters=5, spread=0.01)
    found = kmeans_init_codebook(z.movedim(1, -1).reshape(-1, 3), 5, iters=10)
    assert torch.cdist(centers, found).min(1).values.max() < 0.05


def test_kmeans_init_with_ema_keeps_statistics_consistent():
    torch.manual_seed(0)
    z, _ = clustered_grid(n_images=8, dim=4, n_clusters=6)
    vq = VectorQuantizer(n_codes=8, code_dim=4, ema=True, kmeans_init=True)
    vq(z)
    assert torch.allclose(vq.embed_sum / vq.cluster_size.unsqueeze(1), vq.embedding, atol=1e-4)


# -- dead-code restarts ----------------------------------------------------------------------------
def _fit_codebook_only(restart: bool, steps=60, seed=0):
    """Fixed latents from 12 clusters, a learned codebook initialised as usual (collapses); the
    code counts of the last 10 steps."""
    torch.manual_seed(seed)
    z, _ = clustered_grid(n_images=16, dim=4, n_clusters=12, seed=seed)
    vq = VectorQuantizer(n_codes=16, code_dim=4, restart_dead_codes=restart, dead_code_window=5)
    opt = torch.optim.Adam(vq.parameters(), lr=1e-2)
    n_restarted, counts = 0, 0
    for step in range(steps):
        out = vq(z)
        if step >= steps - 10:
            counts = counts + out.counts
        opt.zero_grad()
        out.loss.backward()
        n_restarted += reset_optimizer_state_rows(opt, vq.embedding, out.restarted) > 0
        opt.step()
    return counts.numpy(), n_restarted


def test_dead_code_restart_revives_codes():
    plain, _ = _fit_codebook_only(restart=False)
    revived, n_restarts = _fit_codebook_only(restart=True)
    assert n_restarts > 0
    assert utilization(plain) < 0.7  # partial collapse: several of the 16 codes never win
    assert utilization(revived) >= 0.9 and utilization(revived) > utilization(plain) + 0.25
    assert perplexity(revived) > perplexity(plain) * 1.5


def test_dead_code_criteria():
    steps_since_used = torch.tensor([0, 3, 5, 1])
    assert dead_codes(steps_since_used, None, 3, 0.0).tolist() == [False, True, True, False]
    usage = torch.tensor([4.0, 4.0, 4.0, 0.5])  # the average is 3.125: code 3 is under half of it
    assert dead_codes(steps_since_used, usage, None, 0.5).tolist() == [False, False, False, True]
    assert dead_codes(steps_since_used, usage, 3, 0.5).tolist() == [False, True, True, True]
    assert not dead_codes(steps_since_used, torch.full((4,), -1.0), None, 0.5).any()  # no step yet


def test_restart_with_ema_resets_statistics_to_the_new_vector():
    torch.manual_seed(0)
    z, _ = clustered_grid(n_images=4, dim=4, n_clusters=3)
    vq = VectorQuantizer(n_codes=8, code_dim=4, ema=True, restart_dead_codes=True, dead_code_window=2)
    restarted = []
    for _ in range(6):
        out = vq(z)
        restarted.append(out.restarted)
    restarted = torch.unique(torch.cat(restarted))
    assert restarted.numel() > 0
    assert torch.isfinite(vq.embedding).all()
    ratio = vq.embed_sum / vq.cluster_size.unsqueeze(1)
    assert torch.allclose(ratio, vq.embedding, atol=1e-3)


@pytest.mark.parametrize("ema", [True, False])
def test_threshold_restarts_revive_codes_within_a_few_steps(ema):
    """The short-run collapse in miniature: k-means fits the first batch, then the "encoder"
    moves its outputs away and one code takes everything. Codes whose recent usage falls under
    the threshold are re-seeded from the new outputs within a few steps; a 100-step window waits."""

    def run(**criterion):
        torch.manual_seed(0)
        vq = VectorQuantizer(n_codes=16, code_dim=4, ema=ema, kmeans_init=True, restart_dead_codes=True,
                             **criterion)
        used = [int((vq(torch.randn(8, 4, 5, 5)).counts > 0).sum())]
        restarted = []
        for _ in range(5):
            out = vq(torch.randn(8, 4, 5, 5) * 0.5 + 3)  # moved away from the k-means codebook
            used.append(int((out.counts > 0).sum()))
            restarted.append(out.restarted)
        return vq, used, restarted

    vq, used, restarted = run(dead_code_threshold=0.5, dead_code_window=None)
    assert used[0] == 16 and used[1] <= 3  # k-means: all codes; after the move: collapse
    assert restarted[0].numel() > 0 and restarted[1].numel() > 0  # restarted from the next step on
    assert min(used[3:]) >= 14, used  # back to (nearly) the whole codebook within 3 steps
    assert torch.isfinite(vq.codebook).all()
    _, waiting, restarted = run(dead_code_window=100)
    assert max(waiting[1:]) <= 3 and all(r.numel() == 0 for r in restarted)


@pytest.mark.parametrize("scale", [1, 10])
def test_usage_average_is_relative_and_starts_at_the_first_batch(scale):
    """``scale`` repeats every vector: ten times the vectors per step, the same decisions."""
    torch.manual_seed(0)
    vq = VectorQuantizer(n_codes=4, code_dim=2, restart_dead_codes=True, dead_code_threshold=0.5,
                         dead_code_decay=0.5, dead_code_window=None)
    vq.embedding.data = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [-10.0, 0.0]])

    def step(*codes):
        z = vq.embedding.detach()[list(codes) * scale]
        return vq(z.view(1, -1, 1, 2).movedim(-1, 1))

    assert torch.equal(vq.ema_usage, torch.full((4,), -1.0))  # not started
    step(0, 0, 1, 1, 2, 2, 3, 3)
    assert vq.ema_usage.tolist() == [2.0 * scale] * 4  # the first batch's counts
    out = step(0, 0, 0, 1, 1, 2, 2, 3)  # code 3: 1 vector against an average of 2
    assert out.restarted.numel() == 0
    assert vq.ema_usage.tolist() == [2.5 * scale, 2.0 * scale, 2.0 * scale, 1.5 * scale]
    out = step(0, 0, 0, 0, 1, 1, 2, 2)  # code 3 unused: its average 0.75 < half the average 2
    assert out.restarted.numel() == 0  # (restarts are decided at the start of a step)
    out = step(0, 0, 1, 1, 2, 2, 3, 3)
    assert out.restarted.tolist() == [3]
    # Re-seeded: its usage starts again at the average, so one bad step does not kill it again.
    assert vq.ema_usage[3] > 0.5 * vq.ema_usage.mean()
    # Without the option the layer has no such buffer, so models saved before it load as before.
    assert "ema_usage" not in VectorQuantizer(n_codes=4, code_dim=2).state_dict()


def test_restart_seeds_come_from_the_current_step():
    torch.manual_seed(0)
    vq = VectorQuantizer(n_codes=8, code_dim=3, restart_dead_codes=True, dead_code_window=1, restart_noise=0.0)
    vq(torch.randn(2, 3, 4, 4) + 20)  # far from every code: the worst represented vectors...
    latest = torch.randn(2, 3, 4, 4)
    out = vq(latest)  # ... but an older encoder's: the codes unused at step 1 restart from step 2's
    assert out.restarted.numel() > 0
    flat = latest.movedim(1, -1).reshape(-1, 3)
    for code in vq.codebook[out.restarted]:
        assert (flat - code).norm(dim=1).min() < 1e-5  # a vector of this step, not an older one


@pytest.mark.slow  # trains or runs the CLI: the slow tier (CI runs both tiers)
def test_restart_training_stays_finite_and_loss_falls():
    """The appendix's failure: restarts made the reconstruction loss explode. Ours must not."""
    import torchvision

    torch.manual_seed(0)
    images = torchvision.datasets.MNIST(root=MNIST_ROOT, train=True, download=False).data[:256]
    x_all = images.float().div(255).unsqueeze(1)
    encoder = ConvEncoder(1, 8, 4, n_res_blocks=0)
    vq = VectorQuantizer(n_codes=16, code_dim=4, commitment_cost=0.5, restart_dead_codes=True, dead_code_window=5)
    decoder = ConvDecoder(4, 8, 1, n_res_blocks=0)
    params = [*encoder.parameters(), *vq.parameters(), *decoder.parameters()]
    opt = torch.optim.Adam(params, lr=2e-3)
    losses, n_restarts, checked_reset = [], 0, False
    for step in range(150):
        x = x_all[torch.randint(len(x_all), (32,))]
        z_e = encoder(x)
        out = vq(z_e)
        rec = F.binary_cross_entropy_with_logits(decoder(out.quantized), x, reduction="sum") / len(x)
        loss = rec + out.loss * z_e[0].numel()
        assert torch.isfinite(loss), f"loss became {loss.item()} at step {step}"
        opt.zero_grad()
        loss.backward()
        if out.restarted.numel():
            n_restarts += 1
            touched = reset_optimizer_state_rows(opt, vq.embedding, out.restarted)
            if touched:
                state = opt.state[vq.embedding]
                rows = out.restarted
                assert touched == 2
                assert state["exp_avg"][rows].abs().sum() == 0 and state["exp_avg_sq"][rows].abs().sum() == 0
                others = torch.ones(16, dtype=torch.bool)
                others[rows] = False
                if others.any():
                    assert state["exp_avg_sq"][others].abs().sum() > 0
                checked_reset = True
        opt.step()
        losses.append(float(rec.detach()))
    assert n_restarts > 0 and checked_reset
    start, end = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert end < 0.6 * start, (start, end)
    assert max(losses[20:]) < losses[0]  # no explosion after restarts kicked in


def test_reset_optimizer_state_rows():
    p = nn.Parameter(torch.randn(4, 3))
    opt = torch.optim.Adam([p], lr=0.1)
    assert reset_optimizer_state_rows(opt, p, torch.tensor([1])) == 0  # no state yet
    (p ** 2).sum().backward()
    opt.step()
    step_before = opt.state[p]["step"].clone()
    assert reset_optimizer_state_rows(opt, p, torch.tensor([1, 3])) == 2
    st = opt.state[p]
    assert st["exp_avg"][[1, 3]].abs().sum() == 0 and st["exp_avg_sq"][[1, 3]].abs().sum() == 0
    assert st["exp_avg"][[0, 2]].abs().sum() > 0 and st["exp_avg_sq"][[0, 2]].abs().sum() > 0
    assert torch.equal(st["step"], step_before)
    assert reset_optimizer_state_rows(opt, p, torch.tensor([], dtype=torch.int64)) == 0
    # SGD's momentum buffer too.
    q = nn.Parameter(torch.randn(3, 2))
    sgd = torch.optim.SGD([q], lr=0.1, momentum=0.9)
    (q ** 2).sum().backward()
    sgd.step()
    assert reset_optimizer_state_rows(sgd, q, [0]) == 1
    assert sgd.state[q]["momentum_buffer"][0].abs().sum() == 0


# -- validation and determinism ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, parameter",
    [
        (dict(n_codes=0, code_dim=4), "n_codes"),
        (dict(n_codes=8, code_dim=0), "code_dim"),
        (dict(n_codes=8, code_dim=4, commitment_cost=-0.1), "commitment_cost"),
        (dict(n_codes=8, code_dim=4, decay=0.0), "decay"),
        (dict(n_codes=8, code_dim=4, decay=1.0), "decay"),
        (dict(n_codes=8, code_dim=4, ema=True, decay=1.5), "decay"),
        (dict(n_codes=8, code_dim=4, eps=0.0), "eps"),
        (dict(n_codes=8, code_dim=4, kmeans_iters=-1), "kmeans_iters"),
        (dict(n_codes=8, code_dim=4, dead_code_window=0), "dead_code_window"),
        (dict(n_codes=8, code_dim=4, restart_buffer_size=0), "restart_buffer_size"),
        (dict(n_codes=8, code_dim=4, restart_noise=-1.0), "restart_noise"),
        (dict(n_codes=8, code_dim=4, dead_code_threshold=-0.1), "dead_code_threshold"),
        (dict(n_codes=8, code_dim=4, dead_code_decay=0.0), "dead_code_decay"),
        (dict(n_codes=8, code_dim=4, dead_code_decay=1.0), "dead_code_decay"),
        (dict(n_codes=8, code_dim=4, restart_dead_codes=True, dead_code_window=None), "dead_code_threshold"),
    ],
)
def test_bad_arguments_raise_parameter_error(kwargs, parameter):
    with pytest.raises(ParameterError, match=parameter) as error:
        VectorQuantizer(**kwargs)
    assert error.value.parameter == parameter
    assert isinstance(error.value, ValueError) and not isinstance(error.value, ConfigError)
    assert "model." not in str(error.value)  # the layer does not know the config keys


def test_channel_mismatch_names_the_fix():
    vq = VectorQuantizer(n_codes=8, code_dim=64)
    with pytest.raises(ParameterError, match=r"z_e has 32 channels but the codebook has code_dim=64") as error:
        vq(torch.randn(2, 32, 7, 7))
    assert error.value.parameter == "z_e" and "model." not in str(error.value)
    with pytest.raises(ParameterError, match="B x D x H x W") as error:
        vq(torch.randn(10, 64))
    assert error.value.parameter == "z_e"
    with pytest.raises(ParameterError, match=r"\[0, 8\)") as error:
        vq.lookup(torch.tensor([[0, 8]]))
    assert error.value.parameter == "codes"


def test_kmeans_init_codebook_of_no_vector_names_its_argument():
    with pytest.raises(ParameterError, match="empty") as error:
        kmeans_init_codebook(torch.zeros(0, 3), 4)
    assert error.value.parameter == "x"


def test_deterministic_under_manual_seed():
    def run():
        torch.manual_seed(123)
        z, _ = clustered_grid(n_images=4, dim=4, n_clusters=5)
        vq = VectorQuantizer(n_codes=12, code_dim=4, kmeans_init=True, restart_dead_codes=True, dead_code_window=2)
        codes = [vq(z + 0.1 * torch.randn_like(z)).codes for _ in range(5)]
        return vq.codebook.clone(), torch.stack(codes)

    (a_cb, a_codes), (b_cb, b_codes) = run(), run()
    assert torch.equal(a_cb, b_cb) and torch.equal(a_codes, b_codes)
    assert not math.isnan(float(a_cb.sum()))


# -- one process: the collectives are plain calls ------------------------------------------------
def test_collectives_without_torch_distributed_are_plain_calls():
    assert world_size() == 1
    x = torch.randn(5, 3)
    assert summed_over_ranks(x) is x and all_gather_rows(x) is x
    filled = filled_on_rank0(torch.zeros(2, 3), lambda out: out.fill_(7.0))
    assert torch.equal(filled, torch.full((2, 3), 7.0))


# -- mixed precision ----------------------------------------------------------------------------
def test_autocast_bf16_keeps_distances_and_losses_in_float32():
    torch.manual_seed(0)
    encoder = ConvEncoder(1, 16, 16, n_res_blocks=1)
    x = torch.rand(32, 1, 28, 28)
    vq = VectorQuantizer(n_codes=64, code_dim=16, ema=True)
    with torch.no_grad():
        z = encoder(x)
        # Codes among the encoder's outputs, so close together that distances computed in
        # bfloat16 (an autocast matmul) picked the wrong code for most vectors (89%).
        vq.embedding.copy_(z.movedim(1, -1).reshape(-1, 16)[torch.randperm(32 * 49)[:64]])
        vq.embed_sum.copy_(vq.embedding)
    vq.eval()
    reference = vq(z).codes
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        same_input = vq(z)
        z_bf16 = encoder(x)
        from_bf16 = vq(z_bf16)
    assert z_bf16.dtype == torch.bfloat16
    # A float32 batch gets exactly its float32 codes under autocast.
    assert torch.equal(same_input.codes, reference)
    # bf16 encoder outputs get exactly the float32 codes of their (rounded) values; against the
    # float32 encoder's codes they differ only where bf16 rounding of the encoder's outputs
    # (8-bit mantissa) moved a vector across the boundary of two close codes: a few percent here.
    assert torch.equal(from_bf16.codes, vq(z_bf16.float()).codes)
    assert (from_bf16.codes != reference).float().mean() < 0.1
    assert from_bf16.quantized.dtype == torch.bfloat16 and same_input.quantized.dtype == torch.float32

    # Training under autocast: float32 finite losses, float32 EMA statistics, gradient to z_e.
    vq.train()
    z_e = z_bf16.detach().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = vq(z_e)
    for loss in (out.loss, out.commitment_loss, out.codebook_loss):
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert vq.embedding.dtype == vq.cluster_size.dtype == vq.embed_sum.dtype == torch.float32
    assert torch.isfinite(vq.embedding).all()
    (out.quantized.float().sum() + out.loss).backward()
    assert z_e.grad is not None and z_e.grad.dtype == torch.bfloat16 and torch.isfinite(z_e.grad.float()).all()
