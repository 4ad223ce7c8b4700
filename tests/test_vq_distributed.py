"""The VQ layer under torch.distributed (geovq.nn.vq.distributed): two gloo processes on CPU, plain DDP.

One spawn runs every scenario (starting processes costs more than training them); each rank saves
what it ends with to a file, and the tests compare the ranks, and the ranks with one process.
DDP's re-broadcast of rank 0's buffers before every forward is off (``NO_BUFFER_SYNC``), so
that identical codebooks come from the layer's own synchronisation, not from DDP overwriting them.
"""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from geovq.nn.vq import VectorQuantizer
from geovq.nn.vq.restarts import reset_optimizer_state_rows

IN, DIM, GRID, N_CODES = 6, 4, 3, 16
BATCH, STEPS, WORLD = 8, 12, 2  # per-process batch B; the one-process run takes 2B

SCENARIOS = {
    # EMA codebook, k-means init and both restart criteria: every collective of the layer.
    "ema_restarts": dict(ema=True, kmeans_init=True, restart_dead_codes=True, dead_code_threshold=0.5,
                         dead_code_window=2),
    # Learned codebook (a parameter: DDP averages its gradient) with restarts and k-means init.
    "learned_restarts": dict(kmeans_init=True, restart_dead_codes=True, dead_code_threshold=0.5,
                             dead_code_window=2),
    # No restarts (their random seeds depend on the local batch size): compared with one process.
    "ema_match": dict(ema=True, kmeans_init=True),
}


def global_batches(seed=0):
    """STEPS batches of 2B inputs (2B x IN x GRID x GRID) around a few clusters, some of them rare."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(10, IN, generator=g) * 2
    probs = torch.tensor([8, 8, 6, 6, 4, 4, 2, 1, 1, 1], dtype=torch.float)
    which = torch.multinomial(probs, STEPS * WORLD * BATCH * GRID * GRID, replacement=True, generator=g)
    x = centers[which] + 0.2 * torch.randn(which.numel(), IN, generator=g)
    return x.view(STEPS, WORLD * BATCH, GRID, GRID, IN).movedim(-1, 2).contiguous()


# DDP's re-broadcast of rank 0's buffers before every forward, off (renamed in recent torch).
NO_BUFFER_SYNC = ({"forward_sync_buffers": False}
                  if "forward_sync_buffers" in inspect.signature(nn.parallel.DistributedDataParallel).parameters
                  else {"broadcast_buffers": False})


class TinyVQModel(nn.Module):
    """Linear (1x1 conv) encoder -> VectorQuantizer -> linear decoder."""

    def __init__(self, **quantizer):
        super().__init__()
        self.encoder = nn.Conv2d(IN, DIM, 1)
        self.vq = VectorQuantizer(n_codes=N_CODES, code_dim=DIM, **quantizer)
        self.decoder = nn.Conv2d(DIM, IN, 1)

    def forward(self, x):
        out = self.vq(self.encoder(x))
        return F.mse_loss(self.decoder(out.quantized), x) + out.loss, out


def train(quantizer: dict, rank: int, world: int) -> dict:
    """Train on this rank's slice of every global batch; what the rank ends with."""
    torch.manual_seed(0)
    model = TinyVQModel(**quantizer)
    wrapped = nn.parallel.DistributedDataParallel(model, **NO_BUFFER_SYNC) if world > 1 else model
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    restarted, local_counts = [], 0
    per_rank = WORLD * BATCH // world
    for x in global_batches():
        loss, out = wrapped(x[rank * per_rank:(rank + 1) * per_rank])
        opt.zero_grad()
        loss.backward()
        if not model.vq.ema:
            reset_optimizer_state_rows(opt, model.vq.embedding, out.restarted)
        opt.step()
        restarted.append(out.restarted.clone())
        local_counts += int(out.counts.sum())
    result = {name: t.detach().clone() for name, t in model.state_dict().items()}
    result["restarted"] = restarted
    result["local_counts"] = local_counts
    return result


def _worker(rank: int, world: int, folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world)
    try:
        results = {name: train(options, rank, world) for name, options in SCENARIOS.items()}
        torch.save(results, f"{folder}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(WORLD, str(folder)), nprocs=WORLD, join=True)
    return [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


@pytest.mark.parametrize("scenario", ["ema_restarts", "learned_restarts"])
@pytest.mark.slow  # trains or runs the CLI: the slow tier (CI runs both tiers)
def test_ranks_end_with_identical_codebooks_and_restarts(ranks, scenario):
    first, second = ranks[0][scenario], ranks[1][scenario]
    # Each rank saw its own data, so without synchronisation the codebooks would differ.
    assert not torch.equal(global_batches()[0][:BATCH], global_batches()[0][BATCH:])
    n_restarts = sum(r.numel() for r in first["restarted"])
    assert n_restarts > 0, "the scenario should exercise restarts"
    assert all(torch.equal(a, b) for a, b in zip(first["restarted"], second["restarted"]))
    assert torch.equal(first["vq.embedding"], second["vq.embedding"])  # bit-identical
    for name in ("vq.steps_since_used", "vq.ema_usage", "vq.initialized", "vq.cluster_size", "vq.embed_sum"):
        if name in first:
            assert torch.equal(first[name], second[name]), name
    # Each forward returned its own batch's counts (the VQ-VAE sums them over the ranks per epoch).
    total = STEPS * WORLD * BATCH * GRID * GRID
    assert first["local_counts"] == second["local_counts"] == total // WORLD
    # DDP keeps the encoder identical too (a sanity check of the harness).
    assert torch.equal(first["encoder.weight"], second["encoder.weight"])


def test_two_processes_match_one_process_with_the_double_batch(ranks):
    single = train(SCENARIOS["ema_match"], rank=0, world=1)
    for rank in ranks:
        got = rank["ema_match"]
        # The statistics describe the global batch: the same codes went unused as with one process.
        assert torch.equal(got["vq.steps_since_used"], single["vq.steps_since_used"])
        # Tolerance: the two runs do the same arithmetic except for summation order (per-rank
        # sums all-reduced vs one sum over 2B for the EMA statistics; DDP's averaged gradients vs
        # one mean), i.e. float32 rounding of ~1e-7 relative per step, carried through 12 Adam
        # steps. A layer that kept per-process statistics (half the data) is off by ~0.2 here.
        for name in ("vq.embedding", "vq.cluster_size", "vq.embed_sum", "encoder.weight"):
            assert torch.allclose(got[name], single[name], rtol=1e-4, atol=1e-5), name
