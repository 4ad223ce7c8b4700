"""What makes a Transformer prior epoch cheaper on this CPU, and what it costs in NLL.

Times one training step (forward, backward, AdamW step) of ``geovq.models.prior.TransformerPrior``
on 7x7 code grids, for precision (float32 vs bf16 autocast), batch size, model size and dropout,
and prints each as a ratio to the reference setting (float32, batch 128, d_model 128, 3 layers,
dropout 0.1: the prior experiment=paper started from) measured in the same process. Then trains the reference model and
the chosen cheaper settings for the same number of images on real code grids and compares
their validation NLL, so that a faster setting which learns worse shows.

    python bench/prior_step.py --codes outputs/experiments/quick/vqvae_ema/codes.pt
    python bench/prior_step.py --steps 20 --no-nll      # timings only, random codes
    python bench/prior_step.py --side-by-side          # one process on all cores vs one per core
    python bench/prior_step.py --attention             # how the bf16 step computes its attention

``--attention`` times experiment=paper's prior (d_model 64) in float32, and in bf16 autocast with
its attention computed three ways: as the model computes it on a CPU (from matrix products in
bf16: geovq.nn.transformer.attention), by torch's kernel in float32 (the model's way until
2026-12-07) and by torch's kernel in bf16, in alternating rounds so that a slow spell of the machine hits
each setting alike (each round starts with the next one); each round's times are given as ratios
to that round's float32 step.

``--side-by-side`` measures what ``pipeline.parallel`` buys: the training throughput of the
experiment=paper prior in this process on all cores, against as many single-thread processes as
cores training at the same time (as the pipeline's independent priors do).
"""

from __future__ import annotations

import argparse
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from unittest import mock

import torch
import torch.nn.functional as F

from geovq.artifacts import load_code_grids
from geovq.models.prior import TransformerPrior
from geovq.nn import transformer
from geovq.precision import cpu_has_native_bf16, fast_precision

# The reference is the prior experiment=paper started from (d_model 128, dropout 0.1).
REFERENCE = {"precision": "fp32", "batch": 128, "d_model": 128, "n_layer": 3, "dropout": 0.1}
# experiment=paper's prior today: d_model 64, no dropout, float32 where bf16 is emulated.
PAPER_PRIOR = {"precision": "fp32", "batch": 128, "d_model": 64, "n_layer": 3, "dropout": 0.0}
SETTINGS = [
    REFERENCE,
    {**REFERENCE, "precision": "bf16"},
    {**REFERENCE, "batch": 256},
    {**REFERENCE, "precision": "bf16", "batch": 256},
    {**REFERENCE, "precision": "bf16", "batch": 512},
    {**REFERENCE, "d_model": 64},
    {**REFERENCE, "precision": "bf16", "d_model": 64},
    {**REFERENCE, "dropout": 0.0},
    PAPER_PRIOR,
    {**PAPER_PRIOR, "precision": "bf16"},
    {**REFERENCE, "precision": "bf16", "batch": 256, "d_model": 96},
]
# Compared on validation NLL: float32 against bf16 at the same model and batch, a larger batch
# (fewer steps for the same images), the half-width model given the same images and twice as
# many (about the reference's training time), and the same models without dropout.
NLL_SETTINGS = [(REFERENCE, 1), (SETTINGS[1], 1), (SETTINGS[3], 1), (SETTINGS[5], 1), (SETTINGS[5], 2),
                (SETTINGS[6], 1), (SETTINGS[6], 2), (SETTINGS[7], 1), (PAPER_PRIOR, 1), (PAPER_PRIOR, 2),
                (SETTINGS[9], 1)]


def build(setting: dict, n_codes: int) -> tuple[TransformerPrior, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = TransformerPrior(n_codes=n_codes, n_layer=setting["n_layer"], n_head=4, d_model=setting["d_model"],
                             dropout=setting["dropout"])
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)


def train_step(model, optimizer, grids: torch.Tensor, precision: str) -> float:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        loss = model.token_nll(grids).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def step_seconds(setting: dict, grids: torch.Tensor, n_codes: int, steps: int) -> float:
    model, optimizer = build(setting, n_codes)
    model.train()
    batch = grids[: setting["batch"]]
    for _ in range(3):  # warm-up: first calls allocate and pick kernels
        train_step(model, optimizer, batch, setting["precision"])
    started = time.perf_counter()
    for _ in range(steps):
        train_step(model, optimizer, batch, setting["precision"])
    return (time.perf_counter() - started) / steps


@torch.no_grad()
def mean_nll(model, grids: torch.Tensor) -> float:
    model.eval()
    return float(torch.cat([model.token_nll(grids[s : s + 1000]) for s in range(0, len(grids), 1000)]).mean())


def nll_after(setting: dict, train: torch.Tensor, val: torch.Tensor, n_codes: int, images: int) -> tuple[float, float]:
    """Validation NLL after training on ``images`` grids (the same grids in the same order for
    every setting), and the seconds it took."""
    model, optimizer = build(setting, n_codes)
    model.train()
    generator = torch.Generator().manual_seed(0)
    order = torch.cat([torch.randperm(len(train), generator=generator) for _ in range(math.ceil(images / len(train)))])[:images]
    started = time.perf_counter()
    for start in range(0, images, setting["batch"]):
        train_step(model, optimizer, train[order[start : start + setting["batch"]]], setting["precision"])
    seconds = time.perf_counter() - started
    return mean_nll(model, val), seconds


def label(setting: dict) -> str:
    return (f"{setting['precision']}, batch {setting['batch']}, d={setting['d_model']}, {setting['n_layer']} layers, "
            f"dropout {setting['dropout']:g}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--codes", help="a codes.pt (stage=quantize or stage=vqvae); random codes if omitted")
    parser.add_argument("--steps", type=int, default=30, help="timed training steps per setting")
    parser.add_argument("--images", type=int, default=20000, help="training images for the NLL comparison")
    parser.add_argument("--no-nll", action="store_true", help="skip the NLL comparison")
    parser.add_argument("--nll-only", action="store_true", help="skip the step timings")
    parser.add_argument("--side-by-side", action="store_true",
                        help="only compare one process on all cores with one single-thread process per core")
    parser.add_argument("--attention", action="store_true",
                        help="only compare float32 with bf16, its attention in float32 and in bf16 (--rounds rounds)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of --attention")
    parser.add_argument("--bf16", choices=("auto", "on", "off"), default="auto",
                        help="bf16 settings: auto runs them only where the CPU computes bf16 natively "
                             "(emulated bf16 is 8-13x slower: the NLL comparison would take hours)")
    args = parser.parse_args()
    with_bf16 = args.bf16 == "on" or (args.bf16 == "auto" and cpu_has_native_bf16())

    if args.codes:
        payload = load_code_grids(args.codes).payload
        n_codes, splits = int(payload["n_codes"]), payload["splits"]
        train, val = splits["train"].long(), splits["val"].long()
    else:
        n_codes = 128
        train = torch.randint(0, n_codes, (4096, 7, 7), generator=torch.Generator().manual_seed(0))
        val = train[:1000]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {n_codes} codes, {len(train)} training grids, "
          f"CPU computes bf16 natively: {cpu_has_native_bf16()} (experiment=paper's priors: {fast_precision('cpu', 'prior')})")

    if args.side_by_side:
        return side_by_side(train, n_codes, args.steps, with_bf16)
    if args.attention:
        if not with_bf16:
            parser.error("--attention compares bf16 settings, which this CPU only emulates (--bf16 on forces them)")
        return attention_precision(train, n_codes, args.steps, args.rounds)
    if not args.nll_only:
        timings(train, n_codes, args.steps, with_bf16)
    if not args.no_nll and args.codes:
        nll_comparison(train, val, n_codes, args.images, with_bf16)


def kept(setting: dict, with_bf16: bool) -> bool:
    return with_bf16 or setting["precision"] != "bf16"


def timings(train: torch.Tensor, n_codes: int, steps: int, with_bf16: bool) -> None:
    reference = step_seconds(REFERENCE, train, n_codes, steps)
    print("\n| setting | ms / step | images / s | epoch of 55k images | speed vs reference |")
    print("|---|---|---|---|---|")
    for setting in (setting for setting in SETTINGS if kept(setting, with_bf16)):
        seconds = reference if setting is REFERENCE else step_seconds(setting, train, n_codes, steps)
        per_image = seconds / setting["batch"]
        ratio = (reference / REFERENCE["batch"]) / per_image
        print(f"| {label(setting)} | {seconds * 1e3:.0f} | {1 / per_image:.0f} | {55000 * per_image:.0f} s | {ratio:.2f}x |")


def single_thread_step(setting: dict, grids: torch.Tensor, n_codes: int, steps: int, start_at: float) -> float:
    """In a worker process: warm up, wait for the common start, then time ``steps`` steps on one thread."""
    torch.set_num_threads(1)
    step_seconds(setting, grids, n_codes, 3)
    time.sleep(max(0.0, start_at - time.time()))
    return step_seconds(setting, grids, n_codes, steps)


def side_by_side(train: torch.Tensor, n_codes: int, steps: int, with_bf16: bool) -> None:
    setting = dict(PAPER_PRIOR, precision="bf16" if with_bf16 else "fp32")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    alone = step_seconds(setting, train, n_codes, steps)
    with ProcessPoolExecutor(cores, mp_context=get_context("spawn")) as pool:
        start_at = time.time() + 15  # after every worker has imported torch and warmed up
        futures = [pool.submit(single_thread_step, setting, train, n_codes, steps, start_at) for _ in range(cores)]
        each = [future.result() for future in futures]
    together = sum(1 / seconds for seconds in each)
    print(f"\n{label(setting)}: one process, {torch.get_num_threads()} threads: {alone * 1e3:.0f} ms / step (1.00x); "
          f"{cores} single-thread processes at once: {', '.join(f'{s * 1e3:.0f}' for s in each)} ms / step, "
          f"{together * alone:.2f}x the steps per second")


def attention_precision(train: torch.Tensor, n_codes: int, steps: int, rounds: int) -> None:
    """experiment=paper's prior: float32, bf16 as the model runs it, bf16 with torch's kernel in
    float32 (``attention_in_float32``) and in bf16 (plain scaled_dot_product_attention), alternating."""
    settings = {
        "float32": ("fp32", transformer.attention),
        "bf16, attention by matrix products in bf16 (the model's)": ("bf16", transformer.attention),
        "bf16, attention in float32 (torch's kernel; the model's until 2026-12-07)": ("bf16", transformer.attention_in_float32),
        "bf16, attention in bf16 (torch's kernel)": ("bf16", F.scaled_dot_product_attention),
    }
    times: dict[str, list[float]] = {name: [] for name in settings}
    names = list(settings)
    for round_ in range(rounds):
        # Each round starts with another setting, so that a drift within rounds favours none.
        for name in names[round_ % len(names):] + names[: round_ % len(names)]:
            precision, attention = settings[name]
            with mock.patch.object(transformer, "attention", attention):
                times[name].append(step_seconds(dict(PAPER_PRIOR, precision=precision), train, n_codes, steps))
    reference = times["float32"]
    print(f"\nexperiment=paper's prior ({label(PAPER_PRIOR).split(', ', 1)[1]}); {rounds} rounds of {steps} steps, "
          "each round starting with the next setting")
    print("\n| setting | ms / step, each round | time vs float32, each round |")
    print("|---|---|---|")
    for name, seconds in times.items():
        print(f"| {name} | {' / '.join(f'{s * 1e3:.0f}' for s in seconds)} | "
              f"{' / '.join(f'{s / r:.2f}' for s, r in zip(seconds, reference))} |")


def nll_comparison(train: torch.Tensor, val: torch.Tensor, n_codes: int, images: int, with_bf16: bool) -> None:
    print(f"\nValidation NLL (nats/token) after training on {images} images (x2: twice as many), same order for each setting:")
    print("\n| setting | images | val NLL | training seconds |")
    print("|---|---|---|---|")
    for setting, times in ((setting, times) for setting, times in NLL_SETTINGS if kept(setting, with_bf16)):
        nll, seconds = nll_after(setting, train, val, n_codes, images * times)
        print(f"| {label(setting)} | {images * times} | {nll:.4f} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
