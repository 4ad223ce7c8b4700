"""Transformer prior: causality, KV-cache sampling, overfitting, seeding, errors, a real Trainer run."""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from geovq.artifacts import save_code_grids
from geovq.data.code_grids import CodeGridDataModule
from geovq.errors import ConfigError, ParameterError
from geovq.metrics.prior import nll_summary, unigram_entropy
from geovq.models.prior import TransformerPrior
from geovq.nn.transformer import GPT, sample_next_code

K = 16
TINY = dict(n_codes=K, grid_size=7, n_layer=2, n_head=2, d_model=32, dropout=0.0)


def tiny_gpt(**overrides) -> GPT:
    torch.manual_seed(0)
    args = dict(vocab_size=K, seq_len=49, n_layer=2, n_head=2, d_model=32, dropout=0.0)
    args.update(overrides)
    return GPT(**args).eval()


def tiny_prior(**overrides) -> TransformerPrior:
    torch.manual_seed(0)
    return TransformerPrior(**{**TINY, **overrides})


# -- the transformer --------------------------------------------------------------------------
def test_logits_shape_and_causal_mask():
    model = tiny_gpt()
    codes = torch.randint(0, K, (3, 49), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(codes)
        assert logits.shape == (3, 49, K)
        for j in (0, 7, 30, 48):
            changed = codes.clone()
            changed[:, j] = (changed[:, j] + 1) % K
            new = model(changed)
            # logits[:, i] sees codes < i only: positions <= j cannot move ...
            torch.testing.assert_close(new[:, : j + 1], logits[:, : j + 1], rtol=0, atol=1e-6)
            # ... and the next one does (the mask is not hiding everything).
            if j < 48:
                assert not torch.allclose(new[:, j + 1], logits[:, j + 1])
        # A prefix gives the same logits as the full sequence on its positions.
        torch.testing.assert_close(model(codes[:, :10]), logits[:, :10], rtol=1e-5, atol=1e-5)


def test_first_logits_do_not_depend_on_any_code():
    model = tiny_gpt()
    a = torch.zeros(2, 49, dtype=torch.int64)
    b = torch.full((2, 49), K - 1, dtype=torch.int64)
    with torch.no_grad():
        torch.testing.assert_close(model(a)[:, 0], model(b)[:, 0], rtol=0, atol=1e-6)


def naive_generate(model: GPT, n: int, temperature, top_k, generator) -> torch.Tensor:
    """Sampling by recomputing the whole prefix at every step (no cache)."""
    codes = torch.zeros(n, model.seq_len, dtype=torch.int64)
    with torch.no_grad():
        for i in range(model.seq_len):
            # Position i's logits depend on codes < i only, so whatever sits at i and after is inert.
            logits = model(codes[:, : i + 1])[:, i]
            codes[:, i] = sample_next_code(logits, temperature, top_k, generator)
    return codes


@pytest.mark.parametrize("temperature,top_k", [(1.0, None), (0.7, 5), (1.3, 1)])
def test_kv_cache_generation_matches_full_recompute(temperature, top_k):
    model = tiny_gpt().double()  # float64: cached and full attention agree far below sampling noise
    # Untrained logits are nearly flat; sharpen them so the samples depend on the context.
    with torch.no_grad():
        model.head.weight.mul_(50)
    cached = model.generate(6, temperature, top_k, generator=torch.Generator().manual_seed(3), batch_size=6)
    naive = naive_generate(model, 6, temperature, top_k, torch.Generator().manual_seed(3))
    assert cached.dtype == torch.int64 and cached.shape == (6, 49)
    assert torch.equal(cached, naive)


def test_cached_logits_match_full_forward():
    from geovq.nn.transformer import KVCache

    model = tiny_gpt()
    codes = torch.randint(0, K, (4, 49), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(codes)
        caches = [KVCache(49) for _ in model.blocks]
        start = torch.full((4, 1), model.start_token)
        tokens = torch.cat([start, codes[:, :-1]], dim=1)
        # a prefill of several tokens, then one token at a time, then a chunk after a cached prefix
        parts = [model._logits(tokens[:, :5], 0, caches)]
        parts += [model._logits(tokens[:, i : i + 1], i, caches) for i in range(5, 20)]
        parts.append(model._logits(tokens[:, 20:], 20, caches))
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mask", ["causal", "bool", "float"])
def test_attention_by_matmuls_matches_torchs_kernel(mask):
    """The matmul path means what scaled_dot_product_attention means: a causal triangle aligned to
    the top left when there are fewer queries than keys (the sampling cache), a boolean mask of
    the keys each query may see, an additive float mask."""
    from geovq.nn.transformer import attention_by_matmuls

    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 3, 4, 8, generator=gen, dtype=torch.float64)
    k, v = (torch.randn(2, 3, 6, 8, generator=gen, dtype=torch.float64) for _ in range(2))
    kwargs = {"is_causal": True} if mask == "causal" else {}
    if mask == "bool":
        kwargs["attn_mask"] = torch.ones(4, 6, dtype=torch.bool).tril(diagonal=2)
    if mask == "float":
        kwargs["attn_mask"] = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(attention_by_matmuls(q, k, v, **kwargs), F.scaled_dot_product_attention(q, k, v, **kwargs))


@pytest.mark.parametrize("past", [0, 39])
def test_attention_by_matmuls_masks_by_adding_without_changing_a_bit(past):
    """The mask is added as 0 / -inf (one pass over the scores) instead of masked_fill's copy and
    fill: in bf16, the prior's training precision on CPU, the output and every gradient are the
    masked_fill formula's to the bit, for the training step's causal triangle (past=0) and for
    sampling's cache (10 new queries after 39 cached positions). The mask change alone moves no
    figure (the flattened cross-entropy beside it does, by float32 rounding: next test)."""
    from geovq.nn.transformer import attention_by_matmuls

    gen = torch.Generator().manual_seed(1)
    q = torch.randn(3, 4, 49 - past, 16, generator=gen).bfloat16().requires_grad_()
    k, v = (torch.randn(3, 4, 49, 16, generator=gen).bfloat16().requires_grad_() for _ in range(2))
    grad = torch.randn(3, 4, 49 - past, 16, generator=gen).bfloat16()
    visible = torch.ones(49 - past, 49, dtype=torch.bool).tril(diagonal=past)

    def by_masked_fill(q, k, v):
        scores = (q * (1.0 / math.sqrt(q.shape[-1]))) @ k.transpose(-2, -1)
        return scores.masked_fill(~visible, float("-inf")).softmax(dim=-1) @ v

    attends = [by_masked_fill, lambda q, k, v: attention_by_matmuls(q, k, v, attn_mask=visible)]
    if past == 0:
        attends.append(lambda q, k, v: attention_by_matmuls(q, k, v, is_causal=True))
    results = []
    for attend in attends:
        out = attend(q, k, v)
        results.append((out, *torch.autograd.grad(out, (q, k, v), grad)))
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))


def test_token_nll_is_cross_entropy_per_token_in_raster_order():
    """token_nll flattens the logits to (tokens, K) for speed: the per-token NLL of each grid
    cell, in raster order, as cross_entropy over the B x K x L logits gives it (to float32
    rounding), for grids and for flat sequences alike."""
    prior = TransformerPrior(n_codes=K, grid_size=7, n_layer=1, n_head=2, d_model=16)
    grids = torch.randint(0, K, (5, 7, 7), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = F.cross_entropy(prior(grids).transpose(1, 2), grids.view(5, 49), reduction="none")
        torch.testing.assert_close(prior.token_nll(grids), expected, rtol=0, atol=1e-5)
        torch.testing.assert_close(prior.token_nll(grids.view(5, 49)), expected, rtol=0, atol=1e-5)
        # a non-contiguous grid (transposed) is read in its own raster order
        flipped = grids.transpose(1, 2)
        expected_flipped = F.cross_entropy(prior(flipped).transpose(1, 2), flipped.reshape(5, 49), reduction="none")
        torch.testing.assert_close(prior.token_nll(flipped), expected_flipped, rtol=0, atol=1e-5)


def test_attention_avoids_torchs_cpu_kernel_under_bf16_autocast(monkeypatch):
    """torch's CPU attention kernel is several times slower in bf16 than in float32 at the prior's
    size (docs/benchmarks.md): under bf16 autocast on a CPU the model computes attention from its
    matrix products, in bf16 like the rest, with and without the sampling cache, and agrees with
    float32; float16 autocast keeps the kernel, in float32."""
    real = F.scaled_dot_product_attention
    seen = []

    def recording(q, k, v, **kwargs):
        y = real(q, k, v, **kwargs)
        seen.append((q.dtype, k.dtype, v.dtype, y.dtype))  # y: what the kernel computed in (autocast or not)
        return y

    monkeypatch.setattr(F, "scaled_dot_product_attention", recording)
    model = tiny_gpt().train()
    codes = torch.randint(0, K, (4, 49), generator=torch.Generator().manual_seed(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(codes)
    assert logits.dtype == torch.bfloat16
    assert seen == []  # not the kernel
    F.cross_entropy(logits.float().reshape(-1, K), codes.reshape(-1)).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    with torch.no_grad():
        reference = model(codes)
    torch.testing.assert_close(logits.float(), reference, rtol=0.05, atol=0.05)

    # Sampling's cache: a prefix, several new positions after it (a mask), then one at a time.
    from geovq.nn.transformer import KVCache

    seen.clear()  # the float32 reference above used the kernel
    model.eval()
    tokens = torch.cat([torch.full((4, 1), model.start_token), codes[:, :-1]], dim=1)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        caches = [KVCache(49) for _ in model.blocks]
        parts = [model._logits(tokens[:, :5], 0, caches), model._logits(tokens[:, 5:9], 5, caches)]
        parts += [model._logits(tokens[:, i : i + 1], i, caches) for i in range(9, 49)]
        model.generate(2, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert seen == []
    torch.testing.assert_close(torch.cat(parts, dim=1).float(), reference, rtol=0.05, atol=0.05)

    with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
        model(codes)
    assert len(seen) == 2 and set(seen) == {(torch.float32,) * 4}  # one call per layer, in float32


def test_generate_restores_training_mode_and_handles_batches():
    model = tiny_gpt(dropout=0.1).train()
    out = model.generate(5, generator=torch.Generator().manual_seed(0), batch_size=2)
    assert model.training and out.shape == (5, 49)
    assert model.generate(0).shape == (0, 49)


@pytest.mark.slow  # trains or runs the CLI: the slow tier (CI runs both tiers)
def test_overfits_four_grids():
    torch.manual_seed(0)
    grids = torch.randint(0, K, (4, 49), generator=torch.Generator().manual_seed(0))
    grids[:, 0] = torch.arange(4)  # distinct first codes: the rest is then fully predictable
    model = GPT(K, 49, n_layer=2, n_head=4, d_model=64, dropout=0.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        loss = F.cross_entropy(model(grids).transpose(1, 2), grids)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        nll = F.cross_entropy(model(grids).transpose(1, 2), grids).item()
    assert nll < 0.1, nll  # floor: ln(4)/49 = 0.028 for the unpredictable first code


# -- the LightningModule ----------------------------------------------------------------------
def test_sample_shape_range_and_seed():
    prior = tiny_prior()
    with torch.no_grad():
        prior.gpt.head.weight.mul_(20)
    a = prior.sample(10, seed=0, batch_size=4)
    assert a.shape == (10, 7, 7) and a.dtype == torch.int64
    assert int(a.min()) >= 0 and int(a.max()) < K
    assert torch.equal(a, prior.sample(10, seed=0, batch_size=4))
    assert not torch.equal(a, prior.sample(10, seed=1, batch_size=4))
    b = prior.sample(10, temperature=0.5, top_k=3, seed=7)
    assert torch.equal(b, prior.sample(10, temperature=0.5, top_k=3, seed=7))


def test_top_k_1_is_greedy_and_deterministic():
    prior = tiny_prior()
    with torch.no_grad():
        prior.gpt.head.weight.mul_(20)
    greedy = prior.sample(4, top_k=1, seed=0)
    assert torch.equal(greedy, prior.sample(4, top_k=1, seed=123))
    assert torch.equal(greedy, prior.sample(4, top_k=1, seed=None))
    assert (greedy == greedy[0]).all()  # no randomness: every sample is the same grid
    # and it is the argmax of the model's own logits at every step
    logits = prior(greedy)
    assert torch.equal(logits.argmax(-1).view(4, 7, 7), greedy)


@pytest.mark.parametrize("kwargs", [dict(temperature=0.0), dict(temperature=-1.0), dict(temperature=float("nan")),
                                    dict(top_k=0), dict(top_k=K + 1), dict(top_k=-3)])
def test_bad_sampling_arguments(kwargs):
    prior = tiny_prior()
    with pytest.raises(ParameterError, match="temperature" if "temperature" in kwargs else "top_k") as raised:
        prior.sample(2, **kwargs)
    assert raised.value.parameter == next(iter(kwargs))


def test_bad_architecture_names_the_argument_of_each_layer():
    with pytest.raises(ParameterError) as raised:
        GPT(vocab_size=0)
    assert raised.value.parameter == "vocab_size"
    with pytest.raises(ParameterError) as raised:  # the model names the GPT's vocabulary as it is configured
        TransformerPrior(n_codes=0)
    assert raised.value.parameter == "n_codes"
    with pytest.raises(ParameterError, match="divisible") as raised:
        TransformerPrior(d_model=30, n_head=4)
    assert raised.value.parameter == "d_model"


def test_grid_size_mismatch_is_a_config_error():
    prior = tiny_prior()
    small = TransformerPrior(**{**TINY, "grid_size": 4})
    with pytest.raises(ConfigError, match="model.grid_size=4"):
        small.token_nll(torch.zeros(2, 7, 7, dtype=torch.int64))
    assert prior.token_nll(torch.zeros(2, 7, 7, dtype=torch.int64)).shape == (2, 49)


def test_hparams_exclude_optimizer():
    prior = TransformerPrior(**TINY, optimizer=lambda params: torch.optim.SGD(params, lr=0.1))
    assert "optimizer" not in prior.hparams and prior.hparams.n_codes == K
    assert isinstance(prior.configure_optimizers(), torch.optim.SGD)


def write_tiny_artifact(path, n_train=64, n_val=24, n_test=30, n_codes=K):
    gen = torch.Generator().manual_seed(0)
    grids = {
        "train": torch.randint(0, n_codes, (n_train, 7, 7), generator=gen),
        "val": torch.randint(0, n_codes, (n_val, 7, 7), generator=gen),
        "test": torch.randint(0, n_codes, (n_test, 7, 7), generator=gen),
    }
    save_code_grids(path, grids, n_codes, stage="test", config={})
    return grids


def test_trainer_fit_and_test_logs_nll_perplexity_bits(tmp_path):
    grids = write_tiny_artifact(tmp_path / "codes.pt")
    # eval_batch_size 16 does not divide 30: the test figures must still be over every token
    data = CodeGridDataModule(tmp_path / "codes.pt", batch_size=16, eval_batch_size=16, n_codes=K)
    prior = tiny_prior()
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(prior, datamodule=data)
    fit_metrics = dict(trainer.callback_metrics)
    for name in ("train/nll", "train/perplexity", "train/bits_per_image", "train/loss",
                 "val/nll", "val/perplexity", "val/bits_per_image", "val/loss"):
        assert name in fit_metrics, name
    (results,) = trainer.test(prior, datamodule=data, verbose=False)
    nll = results["test/nll"]
    assert math.isclose(results["test/perplexity"], math.exp(nll), rel_tol=1e-5)
    assert math.isclose(results["test/bits_per_image"], nll * 49 / math.log(2), rel_tol=1e-5)
    assert math.isclose(results["test/loss"], nll, rel_tol=1e-5)
    # the NLL is the token-weighted mean over the whole test split
    prior.eval()
    with torch.no_grad():
        expected = F.cross_entropy(prior(grids["test"]).transpose(1, 2), grids["test"].view(30, 49)).item()
    assert math.isclose(nll, expected, rel_tol=1e-5)
    # an untrained-ish model on uniform random codes sits near ln K
    assert abs(nll - math.log(K)) < 0.5


# -- metrics ----------------------------------------------------------------------------------
def test_unigram_entropy_on_hand_made_counts():
    uniform = torch.tensor([0, 1, 2, 3] * 5)
    assert math.isclose(unigram_entropy(uniform, 4), math.log(4), rel_tol=1e-12)
    assert math.isclose(unigram_entropy(uniform, 16), math.log(4), rel_tol=1e-12)  # unused codes add nothing
    assert unigram_entropy(torch.full((3, 7, 7), 5), 8) == 0.0
    skewed = np.array([0, 0, 0, 1])
    assert math.isclose(unigram_entropy(skewed, 2), -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    with pytest.raises(ConfigError):
        unigram_entropy(torch.zeros(0, dtype=torch.int64), 4)
    with pytest.raises(ValueError):
        unigram_entropy(torch.tensor([4]), 4)


def test_nll_summary():
    s = nll_summary(math.log(4), 49)
    assert math.isclose(s["perplexity"], 4.0)
    assert math.isclose(s["bits_per_image"], 98.0)


@pytest.mark.parametrize("batch_size", [7, 250, 1000])
def test_evaluation_nll_does_not_depend_on_the_batch_size(batch_size):
    """stage=evaluate batches its NLL (geovq/batching.py); the figure is the mean over every token."""
    from geovq.metrics.prior import prior_nll

    prior = tiny_prior().eval()
    codes = torch.randint(0, K, (300, 7, 7), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = float(prior.token_nll(codes).mean())
    assert prior_nll(prior, codes, batch_size=batch_size) == pytest.approx(expected, rel=1e-6)
