"""How close each model's training step comes to what this machine can compute.

For every model the study trains (GridVAE, VQ-VAE with EMA, the MNIST classifier, the Transformer
prior as ``experiment=paper`` trains it), every precision the machine computes natively (float32;
bf16 autocast only where the CPU has AVX512-BF16 or AMX, or the GPU supports it), with and without
``torch.compile`` and, for the conv models, with and without ``channels_last``, it times one
training step (the model's own ``training_step``, backward, its optimizer's step, at batch 128 on
random MNIST-shaped images or random 7x7 code grids: no dataset needed) and prints

- ms per step (median and fastest of the timed steps) and images / s (median),
- the FLOPs of one step (``torch.utils.flop_counter.FlopCounterMode``: forward + backward; the
  optimizer's element-wise update is not counted) and the achieved GFLOP/s of the fastest step
  (the peaks are best-of-10 too, so that a shared machine biases both the same way),
- its fraction of the machine's peak, measured in the same run and the same precision as the
  best of a 2048x2048 matmul and a 3x3 64->64 conv at 28x28, batch 128 (forward):
  fraction = achieved / max(peak matmul, peak conv),
- for compiled settings (``torch.compile`` of the loss computation training_step calls:
  ``loss_terms``, ``forward`` or ``token_nll``): the compile time (the warm-up steps' time beyond their steady-state
  time) and after how many steps it pays against the eager step of the same setting.

    python bench/train_step.py                          # all models, defaults (~5-6 min on 2 cores)
    python bench/train_step.py --models prior,classifier --steps 20
    python bench/train_step.py --no-compile             # eager only (seconds)
    python bench/train_step.py --device cuda            # on a GPU

Each compiled setting runs in its own process with a fresh inductor cache (a cold compile, as the
first study step that compiles pays) and is stopped after ``--compile-timeout`` seconds (a row
then reads "timeout"); all of them together get ``--compile-budget`` seconds (rows left then read
"skipped"), so that the default run stays within a few minutes on 2 cores. On a busy 2-core CPU
a cold compile took 26-51 s (GridVAE, classifier, prior) and 86-160 s for the VQ-VAE (its
quantizer breaks the graph in many places and recompiles over its first steps): for a complete
table use ``--compile-timeout 400 --compile-budget 0``. Threads: torch's default.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from geovq.precision import BF16_CPU_FLAGS, cpu_has_native_bf16, fast_precision

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
BATCH = 128
N_CODES = 128
STEPS_PER_EPOCH = 55000 // BATCH  # the study's training split
# model name -> (Hydra overrides of conf/train.yaml, conv model?, the method torch.compile wraps).
# The compiled method is the computation of the loss that training_step calls; training_step
# itself stays eager: its self.log and torchmetrics updates would break the graph and (the
# metrics' update counters) recompile it at every step.
MODELS = {
    "grid_vae": (["model=grid_vae"], True, "loss_terms"),
    "vqvae_ema": (["model=vqvae_ema"], True, "loss_terms"),
    "classifier": (["model=classifier"], True, "forward"),
    "prior": (["model=prior"], False, "token_nll"),  # + experiment=paper's model.* overrides of its priors
}
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
# Each bench model's name in geovq.precision (the resolver's model argument).
PRECISION_NAME = {"grid_vae": "grid_vae", "vqvae_ema": "vqvae", "classifier": "classifier", "prior": "prior"}
# Only the classifier's stage converts to channels_last in bf16 (conf/stage/classifier.yaml).
CHANNELS_LAST_IN_BF16 = {"classifier"}


# -- the machine ------------------------------------------------------------------------------
def cpu_description() -> tuple[str, list[str]]:
    """The CPU's model name and which of CPU_FLAGS it has (Linux; empty where unreadable)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown CPU", []
    lines = text.splitlines()
    name = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown CPU")
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    return name, [flag for flag in CPU_FLAGS if flag in flags]


def cpu_kind() -> str:
    """``amx`` or ``bf16cpu`` where the CPU computes bf16 natively (with AMX, or AVX512-BF16 only),
    else "" (the name's suffix of a saved table)."""
    if not cpu_has_native_bf16():
        return ""
    return "amx" if "amx_bf16" in cpu_description()[1] else "bf16cpu"


def native_precisions(device: str) -> list[str]:
    if device == "cuda":
        return ["fp32", "bf16"] if torch.cuda.is_bf16_supported() else ["fp32"]
    return ["fp32", "bf16"] if cpu_has_native_bf16() else ["fp32"]


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed_runs(fn, device: str, reps: int) -> list[float]:
    """Seconds of each of ``reps`` calls of ``fn``, the device synchronised around each."""
    times = []
    for _ in range(reps):
        sync(device)
        started = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - started)
    return times


def best_seconds(fn, device: str, reps: int) -> float:
    fn()  # warm-up: kernel choice, allocation
    fn()
    return min(timed_runs(fn, device, reps))


def peaks(precision: str, device: str, reps: int = 10) -> dict[str, float]:
    """GFLOP/s of a 2048x2048 matmul and of a 3x3 64->64 conv at 28x28 x batch 128 (forward,
    the better of contiguous and channels_last), in ``precision``: the machine's peak here."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(2048, 2048, generator=generator).to(device, dtype) for _ in range(2))
    matmul = 2 * 2048**3 / best_seconds(lambda: a @ b, device, reps) / 1e9
    conv = torch.nn.Conv2d(64, 64, 3, padding=1, bias=False).to(device, dtype)
    x = torch.randn(BATCH, 64, 28, 28, generator=generator).to(device, dtype)
    conv_flops = 2 * BATCH * 64 * 64 * 9 * 28 * 28
    conv_best = 0.0
    with torch.no_grad():
        for fmt in (torch.contiguous_format, torch.channels_last):
            conv_fmt, x_fmt = conv.to(memory_format=fmt), x.to(memory_format=fmt)
            conv_best = max(conv_best, conv_flops / best_seconds(lambda: conv_fmt(x_fmt), device, reps) / 1e9)
    return {"matmul": matmul, "conv": conv_best}


# -- the models -------------------------------------------------------------------------------
def compose_model_config(name: str):
    """The model's config composed as ``python -m geovq.train model=...`` would compose it."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import geovq.train  # noqa: F401  (registers the config resolvers)
    from geovq import CONF_DIR

    overrides = list(MODELS[name][0])
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        if name == "prior":  # the prior experiment=paper trains: its model.* overrides
            paper = compose("train", overrides=["experiment=paper"])
            overrides += [item for item in paper.pipeline.prior if str(item).startswith("model.")]
        cfg = compose("train", overrides=overrides)
    GlobalHydra.instance().clear()
    return cfg.model, overrides


def build(name: str, device: str, channels_last: bool):
    """The model (instantiated from its config), its configured optimizer, and a random batch."""
    from hydra.utils import instantiate

    model_cfg, overrides = compose_model_config(name)
    torch.manual_seed(0)
    # What a stage reads from its data when the config leaves it unset (MNIST: 7x7 grids, 10 digits).
    from_data = {"prior": {"n_codes": N_CODES, "grid_size": 7}, "classifier": {"n_classes": 10}}.get(name, {})
    model = instantiate(model_cfg, **{key: value for key, value in from_data.items() if model_cfg.get(key) is None})
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    optimizer = model.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    generator = torch.Generator().manual_seed(0)
    if name == "prior":
        batch = [torch.randint(0, N_CODES, (BATCH, 7, 7), generator=generator).to(device)]
    else:
        images = torch.rand(BATCH, 1, 28, 28, generator=generator).to(device)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        batch = [images, torch.randint(0, 10, (BATCH,), generator=generator).to(device)]
    return model, optimizer, batch, overrides


def make_step(name: str, model, optimizer, batch, precision: str, device: str, compiled: bool):
    """One training step as Lightning runs it: training_step under autocast, backward, the
    model's on_before_optimizer_step hook (the VQ-VAE's restarted codes), the optimizer's step.
    ``compiled``: the model's loss computation (MODELS) is replaced by its torch.compile."""
    if compiled:
        method = MODELS[name][2]
        setattr(model, method, torch.compile(getattr(model, method)))

    def step() -> None:
        with torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model.training_step(batch, 0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        model.on_before_optimizer_step(optimizer)
        optimizer.step()

    return step


@dataclass
class Row:
    model: str
    precision: str
    compiled: bool
    channels_last: bool
    ms: float = float("nan")  # median ms per step
    best_ms: float = float("nan")  # the fastest timed step
    gflop_per_step: float = float("nan")
    compile_s: float | None = None  # warm-up time beyond its steady-state steps (compiled rows)
    note: str = ""

    @property
    def images_per_s(self) -> float:
        return BATCH / self.ms * 1e3

    @property
    def gflops(self) -> float:
        """Achieved GFLOP/s of the fastest step: like the peaks (best of 10), what the step reaches
        when nothing else takes the cores; the median is in ms and images / s."""
        return self.gflop_per_step / self.best_ms * 1e3

    def setting(self) -> str:
        return (f"{self.precision}{', compile' if self.compiled else ''}"
                f"{', channels_last' if self.channels_last else ''}")


def count_gflop(step) -> float:
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops() / 1e9


def measure(name: str, precision: str = "fp32", compiled: bool = False, channels_last: bool = False,
            steps: int = 10, warmup: int = 3, device: str = "cpu", count_flops: bool = True) -> Row:
    """Time ``steps`` training steps of ``name`` after ``warmup`` untimed ones (and, eager, count
    the FLOPs of one more step)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*self.log.*")  # no Trainer: logging is a no-op
        model, optimizer, batch, _ = build(name, device, channels_last)
        step = make_step(name, model, optimizer, batch, precision, device, compiled)
        warm_times = timed_runs(step, device, warmup)
        row = Row(name, precision, compiled, channels_last)
        if count_flops and not compiled:
            row.gflop_per_step = count_gflop(step)
        times = timed_runs(step, device, steps)
    times.sort()
    median = times[len(times) // 2] if len(times) % 2 else (times[len(times) // 2 - 1] + times[len(times) // 2]) / 2
    row.ms = median * 1e3
    row.best_ms = times[0] * 1e3
    if compiled:
        row.compile_s = max(0.0, sum(warm_times) - warmup * median)
    return row


# -- compiled settings in their own process, time-boxed ------------------------------------------
def measure_in_subprocess(name: str, precision: str, channels_last: bool, args) -> Row:
    spec = json.dumps({"name": name, "precision": precision, "channels_last": channels_last,
                       "steps": args.steps, "warmup": args.warmup, "device": args.device})
    env = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="train_step_inductor_") as cache:
        if not args.warm_cache:  # a cold compile, as the first study step that compiles pays it
            env["TORCHINDUCTOR_CACHE_DIR"] = cache
            env["TRITON_CACHE_DIR"] = os.path.join(cache, "triton")
        timeout = args.compile_timeout
        if args.compile_budget > 0:
            timeout = min(timeout, args.compile_budget - args.compile_spent)
            if timeout < 20:
                return Row(name, precision, True, channels_last,
                           note=f"skipped: --compile-budget {args.compile_budget:.0f} s spent")
        started = time.perf_counter()
        try:
            done = subprocess.run([sys.executable, __file__, "--one", spec], capture_output=True, text=True,
                                  env=env, timeout=timeout, cwd=REPO)
        except subprocess.TimeoutExpired:
            return Row(name, precision, True, channels_last, note=f"timeout: not done in {timeout:.0f} s")
        finally:
            args.compile_spent += time.perf_counter() - started
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return Row(name, precision, True, channels_last, note=f"failed: {tail[:120]}")
    return Row(**json.loads(lines[-1]))


def run_one(spec: str) -> None:
    """--one: a compiled setting in this process; prints its Row as JSON."""
    spec = json.loads(spec)
    row = measure(spec["name"], spec["precision"], True, spec["channels_last"], spec["steps"], spec["warmup"],
                  spec["device"], count_flops=False)
    print(json.dumps(asdict(row)))


# -- the table --------------------------------------------------------------------------------
def pays_after(row: Row, eager: Row | None) -> str:
    if row.compile_s is None or eager is None or row.ms != row.ms:
        return ""
    saved = (eager.ms - row.ms) / 1e3
    if saved <= 0:
        return "never (slower)"
    n = row.compile_s / saved
    return f"{n:.0f} steps ({n / STEPS_PER_EPOCH:.1f} epochs)"


def study_settings(model: str, device: str) -> tuple[tuple[str, bool], tuple[str, bool]]:
    """(precision, channels_last) of ``model``'s training in a study before the precision work
    (main at 05e991c: bf16 autocast for the prior wherever bf16 is native, float32 for the rest)
    and today (what ``${geovq_fast_precision:...}`` and the stage's callbacks pick here)."""
    bf16 = native_precisions(device) == ["fp32", "bf16"]
    before = ("bf16" if bf16 and model == "prior" else "fp32", False)
    today = "bf16" if fast_precision("gpu" if device == "cuda" else "cpu", PRECISION_NAME[model]) == "bf16-mixed" else "fp32"
    return before, (today, today == "bf16" and device == "cpu" and model in CHANNELS_LAST_IN_BF16)


def before_and_after(rows: list[Row], peak: dict[str, dict[str, float]], device: str) -> list[str]:
    """For each model: its setting in a study at 05e991c and today, each with its fraction of this
    machine's peak in that precision and its images / s (eager rows of this run)."""
    eager = {(r.model, r.precision, r.channels_last): r for r in rows if not r.compiled and r.ms == r.ms}
    lines = ["| model | 05e991c: setting | fraction of peak | images / s | today: setting | fraction of peak | "
             "images / s | speed-up |", "|---|---|---|---|---|---|---|---|"]
    for model in dict.fromkeys(r.model for r in rows):
        ends = [eager.get((model, *setting)) for setting in study_settings(model, device)]
        if None in ends:
            continue  # a setting this run did not time (--precisions)
        cells = [f"{r.setting()} | {r.gflops / max(peak[r.precision].values()):.3f} | {r.images_per_s:.0f}" for r in ends]
        lines.append(f"| {model} | {cells[0]} | {cells[1]} | {ends[0].ms / ends[1].ms:.2f}x |")
    return lines


def table(rows: list[Row], peak: dict[str, dict[str, float]]) -> list[str]:
    lines = ["| model | setting | ms / step (best) | images / s | GFLOP / step | GFLOP/s (best) | fraction of peak | "
             "compile s | compile pays after |", "|---|---|---|---|---|---|---|---|---|"]
    eager = {(r.model, r.precision, r.channels_last): r for r in rows if not r.compiled}
    for row in rows:
        if row.ms != row.ms:
            lines.append(f"| {row.model} | {row.setting()} | {row.note} | | {row.gflop_per_step:.2f} | | | | |")
            continue
        top = max(peak[row.precision].values())
        base = eager.get((row.model, row.precision, row.channels_last))
        lines.append(
            f"| {row.model} | {row.setting()} | {row.ms:.0f} ({row.best_ms:.0f}) | {row.images_per_s:.0f} | "
            f"{row.gflop_per_step:.2f} | "
            f"{row.gflops:.1f} | {row.gflops / top:.3f} | "
            f"{'' if row.compile_s is None else f'{row.compile_s:.1f}'} | {pays_after(row, base)} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per setting (after --warmup)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compiled: they compile)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile settings")
    parser.add_argument("--compile-timeout", type=float, default=90,
                        help="seconds a compiled setting may take in all (its own process: import, compile, "
                             "steps) before it is stopped")
    parser.add_argument("--compile-budget", type=float, default=240,
                        help="seconds all compiled settings together may take (0: no limit); the settings "
                             "left when it is spent are skipped")
    parser.add_argument("--warm-cache", action="store_true",
                        help="compile with torch's default inductor cache (a repeat compile) instead of a fresh one")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--precisions", help="comma-separated (fp32,bf16); default: those computed natively")
    parser.add_argument("--overwrite", action="store_true", help="--save replaces today's file of this machine kind")
    parser.add_argument("--note", default="", help="a line for the results file (e.g. what else was running)")
    parser.add_argument("--save", action="store_true",
                        help="write the table to bench/results/train_step_<date>.txt (_amx.txt on a CPU with AMX, _bf16cpu.txt "
                             "with AVX512-BF16 only, _cuda.txt on a GPU)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        return run_one(args.one)
    names = [name.strip() for name in args.models.split(",") if name.strip()]
    unknown = [name for name in names if name not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    precisions = args.precisions.split(",") if args.precisions else native_precisions(args.device)
    args.compile_spent = 0.0

    started = time.time()
    now = dt.datetime.now(dt.timezone.utc)
    cpu, flags = cpu_description()
    header = [
        f"bench/train_step.py, {now:%Y-%m-%d %H:%M} UTC, {platform.node()}",
        f"CPU: {cpu}, {os.cpu_count()} logical cores; flags: {', '.join(flags) or 'none of ' + ', '.join(CPU_FLAGS)}"
        f" (bf16 native: {cpu_has_native_bf16()}: needs one of {', '.join(BF16_CPU_FLAGS)})",
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}"
        + (f" ({torch.cuda.get_device_name()})" if args.device == "cuda" else ""),
        f"$ python bench/train_step.py {' '.join(sys.argv[1:])}",
    ]
    if args.note:
        header.append(f"note: {args.note}")
    print("\n".join(header), flush=True)

    peak = {}
    for precision in precisions:
        peak[precision] = peaks(precision, args.device)
        print(f"peak {precision}: matmul 2048x2048 {peak[precision]['matmul']:.1f} GFLOP/s, "
              f"conv 3x3 64->64 28x28 b128 {peak[precision]['conv']:.1f} GFLOP/s", flush=True)

    rows: list[Row] = []
    for name in names:
        conv = MODELS[name][1]
        for precision in precisions:
            for channels_last in ((False, True) if conv else (False,)):
                row = measure(name, precision, False, channels_last, args.steps, args.warmup, args.device)
                rows.append(row)
                print(f"  {name} {row.setting()}: {row.ms:.1f} ms (best {row.best_ms:.1f}), "
                      f"{row.gflops:.1f} GFLOP/s", flush=True)
                if not args.no_compile:
                    compiled = measure_in_subprocess(name, precision, channels_last, args)
                    compiled.gflop_per_step = row.gflop_per_step  # the same step's FLOPs
                    rows.append(compiled)
                    print(f"  {name} {compiled.setting()}: "
                          + (compiled.note or f"{compiled.ms:.1f} ms, compile {compiled.compile_s:.0f} s"), flush=True)

    lines = [*header]
    for precision in precisions:
        lines.append(f"peak {precision} (best of 10, same run): matmul 2048x2048 {peak[precision]['matmul']:.1f} "
                     f"GFLOP/s, conv 3x3 64->64 at 28x28 batch 128 {peak[precision]['conv']:.1f} GFLOP/s; "
                     f"fraction = GFLOP/s / {max(peak[precision].values()):.1f}")
    lines += ["", *table(rows, peak), "",
              f"ms / step: median (fastest) of {args.steps} timed steps after {args.warmup} warm-up steps, "
              f"batch {BATCH}; images / s from the median; GFLOP/s and fraction from the fastest step "
              "(as the peaks are the best of 10); "
              "GFLOP / step: FlopCounterMode on one eager step (forward + backward, optimizer not counted); "
              f"compile s: the warm-up steps' time beyond {args.warmup} steady steps, "
              f"{'default' if args.warm_cache else 'fresh (cold)'} inductor cache; an epoch = {STEPS_PER_EPOCH} steps. "
              f"Run took {time.time() - started:.0f} s.",
              "", "Each model as a study trains it, before the precision work (05e991c) and today (fraction of the "
              "peak in its own precision; speed-up: median step time before / today):", "",
              *before_and_after(rows, peak, args.device)]
    print("\n" + "\n".join(lines[len(header):]))
    if args.save:
        RESULTS.mkdir(exist_ok=True)
        # One file per day and kind of machine: a bf16-native CPU's table does not replace an AVX2
        # one's, nor an AMX CPU's (a higher bf16 peak) an AVX512-BF16 one's.
        machine = args.device if args.device != "cpu" else cpu_kind()
        path = RESULTS / f"train_step_{now:%Y-%m-%d}{'_' + machine if machine else ''}.txt"
        if path.exists() and not args.overwrite:
            path = path.with_name(f"{path.stem}_{now:%H%M}.txt")
        path.write_text("\n".join(lines) + "\n")
        print(f"\nwritten: {path}")


if __name__ == "__main__":
    main()
