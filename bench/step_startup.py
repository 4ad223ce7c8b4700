"""How long a study step takes to start: a new interpreter (``pipeline.step_launcher=subprocess``)
against a fork of the step server (``fork``, the default), both through the study's own
``Pipeline.launch``, one thread each (a step of ``pipeline.parallel=2`` on 2 cores).

Two measures, each the median of ``--repeats`` launches per launcher, the launchers alternating:

- to the stage: a step that ends where ``geovq.train`` would start the stage, after the imports,
  Hydra's composition and the settings checks (``stage=sample ckpt_path=last``: the entry point
  refuses it right before it dispatches, exit 1, one ``error:`` line);
- a whole tiny step: ``stage=vae debug=tiny`` (one epoch on 256 images, a small GridVAE).

The first forked step also starts the server (once per study); it is timed apart.

    python bench/step_startup.py                        # ~4 min on 2 busy cores
    nice -n 19 python bench/step_startup.py --repeats 5 --save --note "a full-MNIST study ran beside"

Only the standard library is imported at the top: a forked step runs this file's top again (as
multiprocessing re-runs the main module), which must cost it nothing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
DATA_ROOT = Path(os.environ.get("GEOVQ_DATA_ROOT", Path(__file__).resolve().parents[2] / "shared" / "data"))
TINY_VAE = ["debug=tiny", "figures=false", "model.latent_dim=8", "model.hidden_channels=16", "model.n_res_blocks=1"]
# name -> (stage, overrides, the exit status and a line of its log that show it ran as meant)
MEASURES = {
    "to the stage (stage=sample, stopped at dispatch)": ("sample", ["ckpt_path=last"], 1,
                                                         "error: ckpt_path: stage=sample does not train"),
    "whole tiny step (stage=vae debug=tiny)": ("vae", TINY_VAE, 0, "done: stage=vae"),
}


def launch_seconds(pipe, name: str, stage: str, overrides: list[str], start, expected: tuple[int, str]) -> float:
    """Wall time from the launch of one step to its exit."""
    from geovq.study.parallel import STEP_LOG, step_environment

    plan = pipe.plan(name, stage, overrides, {})
    pipe.prepare_folder(plan)
    log_file = plan.folder / STEP_LOG
    started = time.perf_counter()
    process = pipe.launch(plan, env=step_environment(0, 1, []), log_file=log_file, start=start)
    returncode = process.wait()
    seconds = time.perf_counter() - started
    status, line = expected
    if returncode != status or line not in log_file.read_text():
        raise SystemExit(f"step {name} ended with {returncode}, not as the benchmark expects ({status}, '{line}'); "
                         f"see {log_file}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="launches per launcher and measure (median)")
    parser.add_argument("--data-root", type=Path, default=DATA_ROOT)
    parser.add_argument("--note", default="", help="a line for the results file (e.g. what else was running)")
    parser.add_argument("--save", action="store_true", help="also write bench/results/step_startup_<date>.txt")
    args = parser.parse_args()

    import torch

    import geovq.train  # noqa: F401  (the config resolvers the plans need)
    from geovq.study.runner import Pipeline
    from geovq.study.step_process import start_forked, start_subprocess
    from train_step import cpu_description

    cpu, flags = cpu_description()
    lines = [f"bench/step_startup.py, {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()}",
             f"CPU: {cpu}, {os.cpu_count()} logical cores; flags: {', '.join(flags) or 'none listed'}",
             f"python {platform.python_version()}, torch {torch.__version__}; each step 1 thread",
             f"$ python bench/step_startup.py {shlex.join(sys.argv[1:])}",
             f"load average at the start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}"]
    if args.note:
        lines.append(f"note: {args.note}")
    print("\n".join(lines), flush=True)

    starters = {"subprocess": start_subprocess, "fork": start_forked}
    with tempfile.TemporaryDirectory(prefix="step_startup_") as root:
        pipe = Pipeline(Path(root), [f"data.root={args.data_root}", "data.download=false"], {})
        stage, overrides, *expected = next(iter(MEASURES.values()))
        first_fork = launch_seconds(pipe, "server", stage, overrides, start_forked, tuple(expected))
        lines.append(f"first forked step, which starts the step server (once per study): {first_fork:.2f} s")
        print(lines[-1], flush=True)
        times = {(measure, launcher): [] for measure in MEASURES for launcher in starters}
        for repeat in range(args.repeats):
            for measure, (stage, overrides, *expected) in MEASURES.items():
                for launcher, start in starters.items():
                    seconds = launch_seconds(pipe, f"{launcher}_{stage}_{repeat}", stage, overrides, start,
                                             tuple(expected))
                    times[measure, launcher].append(seconds)
                    print(f"  {measure}, {launcher}: {seconds:.2f} s", flush=True)

    lines += ["", "| measure | subprocess: median (min-max) | fork: median (min-max) | subprocess / fork |",
              "|---|---|---|---|"]
    for measure in MEASURES:
        sub, fork = times[measure, "subprocess"], times[measure, "fork"]
        lines.append(f"| {measure} | {statistics.median(sub):.2f} s ({min(sub):.2f}-{max(sub):.2f}) | "
                     f"{statistics.median(fork):.2f} s ({min(fork):.2f}-{max(fork):.2f}) | "
                     f"{statistics.median(sub) / statistics.median(fork):.1f}x |")
    lines += ["", f"medians of {args.repeats} launches each, launchers alternating; load average at the end: "
              f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}. Where other work runs beside it, read the "
              "ratios, which are measured side by side, more than the seconds."]
    print("\n".join(lines[-(len(MEASURES) + 4):]))
    if args.save:
        RESULTS.mkdir(exist_ok=True)
        path = RESULTS / f"step_startup_{dt.date.today():%Y-%m-%d}.txt"
        path.write_text("\n".join(lines) + "\n")
        print(f"saved {path}")


if __name__ == "__main__":
    main()
