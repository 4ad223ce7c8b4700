"""A small decoder-only Transformer (GPT) over code sequences, in plain torch.

Read top to bottom: the key-value cache, causal self-attention, the MLP, a block, the model, and
sampling. In the spirit of karpathy/nanoGPT: no framework inside, no cross-attention.

Sequences. A code grid flattened in raster order is ``c_0 ... c_{L-1}`` (L = H * W, 49 for a 7x7
grid), codes in [0, K). The model reads ``[<start>, c_0, ..., c_{T-2}]`` and its output at
position i is the distribution of ``c_i`` given ``c_<i``: ``logits[:, i]`` predicts code i. The
start token is row K of the token embedding (K + 1 rows); the head has K outputs, since the start
token is never predicted. Positions are learned: input position 0 holds the start token and
position i >= 1 holds ``c_{i-1}``, so L position embeddings cover every input (the last code,
``c_{L-1}``, is predicted but never read).

Sampling feeds one token per step and keeps every layer's keys and values in a ``KVCache``, so a
step costs one position's work instead of recomputing the whole prefix.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geovq.errors import ParameterError


class KVCache:
    """Keys and values of the positions one attention layer has seen so far (B x H x L x d_head).

    The buffers are allocated on the first ``append`` with the keys' dtype and device, so the
    cache follows autocast and the model's device without being told.
    """

    def __init__(self, max_len: int):
        self.max_len = max_len
        self.length = 0
        self.k: Tensor | None = None
        self.v: Tensor | None = None

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store the new positions' keys/values; return those of every position so far."""
        if self.k is None:
            batch, n_head, _, head_dim = k.shape
            self.k = k.new_empty(batch, n_head, self.max_len, head_dim)
            self.v = v.new_empty(batch, n_head, self.max_len, head_dim)
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KVCache holds at most {self.max_len} positions, got {end}.")
        self.k[:, :, self.length : end] = k
        self.v[:, :, self.length : end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


def attention(q: Tensor, k: Tensor, v: Tensor, **kwargs) -> Tensor:
    """``F.scaled_dot_product_attention``, but not torch's CPU kernel under reduced-precision
    autocast. That kernel is several times slower in bf16 than in float32 at the prior's size (49
    positions, head size 16), enough to make the whole bf16 step slower than float32's. On a CPU,
    bf16 attention is computed from its matrix products instead (``attention_by_matmuls``: less
    CPU time than the kernel in float32 in a profile and in a study, not separable in the step
    benchmark), and float16, whose products a CPU rarely computes natively, in float32 by the
    kernel, the result cast back (``bench/prior_step.py --attention``; the figures:
    docs/benchmarks.md)."""
    if q.device.type != "cpu" or q.dtype not in (torch.bfloat16, torch.float16):
        return F.scaled_dot_product_attention(q, k, v, **kwargs)
    if q.dtype == torch.bfloat16:
        return attention_by_matmuls(q, k, v, **kwargs)
    return attention_in_float32(q, k, v, **kwargs)


def attention_in_float32(q: Tensor, k: Tensor, v: Tensor, **kwargs) -> Tensor:
    """``F.scaled_dot_product_attention`` computed in float32, the result cast back to q's dtype."""
    mask = kwargs.get("attn_mask")
    if mask is not None and mask.is_floating_point():  # an additive mask must match the queries' dtype
        kwargs["attn_mask"] = mask.float()
    # Autocast would cast the float32 inputs back to bf16 / float16 for this op: off around it.
    with torch.autocast("cpu", enabled=False):
        y = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), **kwargs)
    return y.to(q.dtype)


def attention_by_matmuls(
    q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None, dropout_p: float = 0.0, is_causal: bool = False
) -> Tensor:
    """softmax(q k^T / sqrt(d) + mask) v in plain torch ops, with ``F.scaled_dot_product_attention``'s
    arguments and meaning: ``is_causal`` lets query i see keys <= i (the triangle aligned to the top
    left), a boolean ``attn_mask`` marks the keys a query may see, a float one is added."""
    scores = (q * (1.0 / math.sqrt(q.shape[-1]))) @ k.transpose(-2, -1)
    if is_causal:
        attn_mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            # Masked out as -inf added, not by masked_fill: for finite scores the same to the bit
            # (x + 0 = x), but for the 2-D masks used here one pass over the scores instead of a
            # copy and a fill (the prior's bf16 step: docs/benchmarks.md).
            attn_mask = scores.new_zeros(attn_mask.shape).masked_fill_(~attn_mask, float("-inf"))
        scores = scores + attn_mask.to(scores.dtype)
    weights = scores.softmax(dim=-1)
    if dropout_p > 0.0:
        weights = F.dropout(weights, dropout_p)
    return weights @ v


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_head: int, dropout: float):
        super().__init__()
        self.n_head = n_head
        self.dropout = dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, cache: KVCache | None = None) -> Tensor:
        batch, length, d_model = x.shape
        q, k, v = self.qkv(x).split(d_model, dim=2)
        q, k, v = (t.view(batch, length, self.n_head, -1).transpose(1, 2) for t in (q, k, v))
        past = 0
        if cache is not None:
            past = cache.length
            k, v = cache.append(k, v)
        dropout_p = self.dropout if self.training else 0.0
        if past == 0:
            y = attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        elif length == 1:
            # One new query after the cached prefix: it may see every position, no mask needed.
            y = attention(q, k, v, dropout_p=dropout_p)
        else:
            # Several new queries after a cached prefix: is_causal would align the triangle to the
            # top-left, so spell out that query i sees positions <= past + i.
            mask = torch.ones(length, past + length, dtype=torch.bool, device=x.device).tril(diagonal=past)
            y = attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        y = y.transpose(1, 2).reshape(batch, length, d_model)
        return self.resid_dropout(self.proj(y))


class MLP(nn.Module):
    def __init__(self, d_model: int, dropout: float):
        super().__init__()
        self.fc = nn.Linear(d_model, 4 * d_model)
        self.proj = nn.Linear(4 * d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """Pre-LayerNorm Transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, d_model: int, n_head: int, dropout: float):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_head, dropout)
        self.ln_2 = nn.LayerNorm(d_model)
        self.mlp = MLP(d_model, dropout)

    def forward(self, x: Tensor, cache: KVCache | None = None) -> Tensor:
        x = x + self.attn(self.ln_1(x), cache)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """Autoregressive model of code sequences of length ``seq_len`` over ``vocab_size`` codes."""

    def __init__(
        self,
        vocab_size: int,
        seq_len: int = 49,
        n_layer: int = 3,
        n_head: int = 4,
        d_model: int = 128,
        dropout: float = 0.0,
    ):
        super().__init__()
        _check_architecture(vocab_size, seq_len, n_layer, n_head, d_model, dropout)
        self.vocab_size = vocab_size
        self.seq_len = seq_len
        self.start_token = vocab_size  # the extra embedding row
        self.tok_emb = nn.Embedding(vocab_size + 1, d_model)
        self.pos_emb = nn.Embedding(seq_len, d_model)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(d_model, n_head, dropout) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        self.apply(_init_weights)
        # GPT-2's scaled init of the projections that write into the residual stream.
        for name, param in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

    def forward(self, codes: Tensor) -> Tensor:
        """Logits B x T x K for codes B x T (1 <= T <= seq_len): ``logits[:, i]`` predicts code i."""
        if codes.ndim != 2 or not 1 <= codes.shape[1] <= self.seq_len:
            raise ValueError(f"expected codes of shape B x T with 1 <= T <= {self.seq_len}, got {tuple(codes.shape)}.")
        start = codes.new_full((codes.shape[0], 1), self.start_token)
        tokens = torch.cat([start, codes[:, :-1]], dim=1)
        return self._logits(tokens)

    def _logits(self, tokens: Tensor, start_pos: int = 0, caches: list[KVCache] | None = None) -> Tensor:
        """Logits for input tokens (start token included) at positions start_pos, start_pos + 1, ..."""
        positions = torch.arange(start_pos, start_pos + tokens.shape[1], device=tokens.device)
        x = self.drop(self.tok_emb(tokens) + self.pos_emb(positions))
        for i, block in enumerate(self.blocks):
            x = block(x, None if caches is None else caches[i])
        return self.head(self.ln_f(x))

    @torch.no_grad()
    def generate(
        self,
        n: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
        batch_size: int = 1000,
    ) -> Tensor:
        """Sample n sequences, n x seq_len int64 on the model's device (batched, with a KV cache).

        Runs in eval mode (no dropout) and restores the previous mode. ``generator`` (on the
        model's device) makes the samples reproducible; ``top_k=1`` is greedy decoding.
        """
        check_sampling_args(temperature, top_k, self.vocab_size)
        if n < 0:
            raise ParameterError("n", f"the number of samples must be >= 0, got {n}.")
        if batch_size < 1:
            raise ParameterError("batch_size", f"the sampling batch size must be >= 1, got {batch_size}.")
        was_training = self.training
        self.eval()
        try:
            chunks = [
                self._generate_batch(min(batch_size, n - first), temperature, top_k, generator)
                for first in range(0, n, batch_size)
            ]
        finally:
            self.train(was_training)
        if not chunks:
            return torch.empty(0, self.seq_len, dtype=torch.int64, device=self.head.weight.device)
        return torch.cat(chunks)

    def _generate_batch(self, batch: int, temperature: float, top_k: int | None, generator) -> Tensor:
        device = self.head.weight.device
        caches = [KVCache(self.seq_len) for _ in self.blocks]
        codes = torch.empty(batch, self.seq_len, dtype=torch.int64, device=device)
        token = torch.full((batch, 1), self.start_token, dtype=torch.int64, device=device)
        for i in range(self.seq_len):
            logits = self._logits(token, start_pos=i, caches=caches)[:, -1]
            codes[:, i] = sample_next_code(logits, temperature, top_k, generator)
            token = codes[:, i : i + 1]
        return codes


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


# -- sampling ---------------------------------------------------------------------------------
def sample_next_code(logits: Tensor, temperature: float = 1.0, top_k: int | None = None, generator=None) -> Tensor:
    """One code per row of logits B x K: softmax(logits / temperature) over the top_k codes.

    ``top_k=1`` is the argmax (greedy, no randomness drawn).
    """
    if top_k == 1:
        return logits.argmax(dim=-1)
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth_best = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def check_sampling_args(temperature: float, top_k: int | None, vocab_size: int) -> None:
    """ParameterError unless temperature > 0 and top_k is None or in [1, vocab_size]."""
    if not temperature > 0:  # also refuses NaN
        raise ParameterError(
            "temperature",
            f"sampling temperature must be > 0, got {temperature}. Use 1.0 to sample the learned "
            "distribution, a smaller value (e.g. 0.8) for sharper samples, or top_k=1 for greedy decoding.",
        )
    if top_k is not None and (isinstance(top_k, bool) or int(top_k) != top_k or not 1 <= top_k <= vocab_size):
        raise ParameterError(
            "top_k",
            f"top_k must be an integer in [1, {vocab_size}] (the number of codes) or null for no "
            f"truncation, got {top_k}.",
        )


def _check_architecture(vocab_size, seq_len, n_layer, n_head, d_model, dropout) -> None:
    if vocab_size < 1:
        raise ParameterError("vocab_size", f"the vocabulary must hold at least 1 code, got {vocab_size}.")
    if seq_len < 1:
        raise ParameterError("seq_len", f"the sequence length must be >= 1, got {seq_len}.")
    for name, value in (("n_layer", n_layer), ("n_head", n_head)):
        if value < 1:
            raise ParameterError(name, f"{name} must be >= 1, got {value}.")
    if d_model % n_head:
        raise ParameterError(
            "d_model",
            f"d_model={d_model} is not divisible by n_head={n_head}. Pick d_model as a multiple of "
            "n_head (e.g. d_model=128 with n_head=4).",
        )
    if not 0.0 <= dropout < 1.0:
        raise ParameterError("dropout", f"dropout must lie in [0, 1), got {dropout}.")
