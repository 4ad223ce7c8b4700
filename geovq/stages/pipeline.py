"""stage=pipeline (``experiment=paper`` / ``experiment=quick``): a whole study as one command.

The study is data (``geovq/conf/study/``, checked by ``geovq/study/spec.py``); ``geovq/study/``
runs it: each method's steps in ``seed_<n>/`` of one experiment folder, reusing the steps already
done (``runner.py``), one or ``pipeline.parallel=N`` at a time (``parallel.py``), then report.md,
report.json and the figures (``report.py``, ``figures.py``). This stage hands it the config and
the way to run a stage.
"""

from __future__ import annotations

from omegaconf import DictConfig

from geovq.stages import get_stage
from geovq.study.runner import run_study


def run(cfg: DictConfig) -> dict:
    return run_study(cfg, get_stage)
