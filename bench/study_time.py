"""Where a study's time went, and how two studies' times compare on a machine whose speed drifts.

Reads the ``train.log`` of finished study folders (``experiment=paper`` and the like): each step's
time (the "done in N s" lines), the study's wall time (its first to its last logged line) and the
sum of its steps (the core-seconds two cores share). The first folder is the reference.

Times taken hours apart on one VM differ by up to a third on the same code (2026-12-07: the
GridVAE took 280 s in one run and 390 s in the next). So besides the plain ratio of wall times it
gives the ratio normalized by the steps that run the same code in both studies (``--same-code``,
by default the GridVAE and the three VQ-VAEs): each study's wall time divided by its own
same-code steps, the machine's speed during that study measured inside it.

    python bench/study_time.py outputs/timing/paper_05e991c outputs/timing/paper_main
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import sys
from pathlib import Path

LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+\]")
DONE = re.compile(r"step (?:seed_\d+/)?(\S+): done in (\d+) s")
SAME_CODE = ("vae", "vqvae", "vqvae_ema", "vqvae_paper_objective")


def study_times(folder: Path) -> tuple[float, dict[str, int]]:
    """The study's wall seconds (first to last logged line) and each step's seconds."""
    log = folder / "train.log"
    if not log.is_file():
        raise SystemExit(f"error: {log} not found: give the folder of a finished study (its hydra.run.dir).")
    stamps, steps = [], {}
    for line in log.read_text().splitlines():
        stamp = LINE.match(line)
        if stamp:
            stamps.append(dt.datetime.fromisoformat(stamp.group(1)))
        done = DONE.search(line)
        if done:
            steps[done.group(1)] = int(done.group(2))
    if not steps:
        raise SystemExit(f"error: {log} records no finished step: is the study still running or did it fail?")
    return (stamps[-1] - stamps[0]).total_seconds(), steps


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path, help="study folders; the first is the reference")
    parser.add_argument("--same-code", nargs="+", default=list(SAME_CODE),
                        help="steps that run the same code in every study (the machine's speed inside each)")
    args = parser.parse_args(argv)
    studies = [(folder, *study_times(folder)) for folder in args.folders]
    for folder, _, steps in studies:
        missing = [name for name in args.same_code if name not in steps]
        if missing:
            raise SystemExit(f"error: {folder} has no finished step {', '.join(missing)}: pass --same-code with "
                             "steps every study ran.")
    ref_wall, ref_steps = studies[0][1], studies[0][2]
    ref_speed = ref_wall / sum(ref_steps[name] for name in args.same_code)
    print(f"same-code steps: {', '.join(args.same_code)}; reference: {studies[0][0]}\n")
    print("| study | wall s | steps' sum s | same-code steps s | wall / same-code | wall vs reference | normalized |")
    print("|---|---|---|---|---|---|---|")
    for folder, wall, steps in studies:
        same = sum(steps[name] for name in args.same_code)
        print(f"| {folder} | {wall:.0f} | {sum(steps.values())} | {same} | {wall / same:.3f} | "
              f"{wall / ref_wall:.3f} | {wall / same / ref_speed:.3f} |")
    names = sorted({name for _, _, steps in studies for name in steps})
    print("\n| step | " + " | ".join(str(folder.name) for folder, _, _ in studies) + " |")
    print("|---|" + "---|" * len(studies))
    for name in names:
        print(f"| {name} | " + " | ".join(str(steps.get(name, "-")) for _, _, steps in studies) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
