"""The stages, one row each: what ``stage=<name>`` runs, the file it leaves for the next steps,
and whether it trains through a Lightning Trainer (and so may run distributed).

Everything that lists stages reads this table: ``geovq.stages.get_stage``, the study (which
stages a step may name, what each step's output is), the pipeline's per-stage override lists
and the tests. Adding a stage: its module in ``geovq/stages/``, its ``conf/stage/<name>.yaml``,
and a row here. It sits below both ``geovq.stages`` and ``geovq.study``, so neither imports the
other for it.
"""

from __future__ import annotations

from dataclasses import dataclass

from geovq.artifacts import CODES_FILE, EVALUATION_FILE, MODEL_FILE, SAMPLES_FILE


@dataclass(frozen=True)
class StageInfo:
    name: str
    module: str  # the module whose run(cfg) runs it
    output: str | None  # the file a study step of this stage leaves for the next steps (None: not a step)
    trains: bool  # fits a model through a Lightning Trainer
    headline: tuple[str, ...] = ()  # the metrics a finished run prints first, when it reported them
    # A stage whose code grids are its input's, unchanged (only the decoder they record differs):
    # the config key of that input. A study trains one prior for both.
    same_grids_as: str | None = None


STAGES: dict[str, StageInfo] = {
    stage.name: stage
    for stage in (
        StageInfo("classifier", "geovq.stages.classifier", MODEL_FILE, trains=True,
                  headline=("test/accuracy",)),
        StageInfo("vae", "geovq.stages.vae", MODEL_FILE, trains=True,
                  headline=("test/mse", "rate/kl_per_position", "quantized/test_mse")),
        StageInfo("quantize", "geovq.stages.quantize", CODES_FILE, trains=False,
                  headline=("quantized/test_mse", "quantized/train_codes_used", "quantized/train_n_codes")),
        StageInfo("vqvae", "geovq.stages.vqvae", CODES_FILE, trains=True,
                  headline=("test/mse", "codes/train_codes_used", "codes/train_n_codes")),
        StageInfo("finetune", "geovq.stages.finetune", CODES_FILE, trains=True,
                  headline=("test/mse", "codes/train_codes_used", "codes/train_n_codes"), same_grids_as="stage.codes"),
        StageInfo("prior", "geovq.stages.prior", MODEL_FILE, trains=True,
                  headline=("test/nll", "test/perplexity")),
        StageInfo("sample", "geovq.stages.sample", SAMPLES_FILE, trains=False,
                  headline=("fidelity/fid", "fidelity/fid_floor")),
        StageInfo("evaluate", "geovq.stages.evaluate", EVALUATION_FILE, trains=False,
                  headline=("fidelity/fid", "fidelity/fid_floor")),
        StageInfo("pipeline", "geovq.stages.pipeline", None, trains=False),  # the study: runs the others
    )
}
# The stages a study runs as steps, each with its own override list pipeline.<name>.
STEP_STAGES = tuple(name for name, stage in STAGES.items() if stage.output is not None)


TRAINING_STAGES = tuple(name for name, stage in STAGES.items() if stage.trains)


def trains(stage: str) -> bool:
    """Whether ``stage`` fits a model (and so has checkpoints to resume); False for unknown names."""
    return stage in STAGES and STAGES[stage].trains
