"""The stage registry (geovq/stage_registry.py) is the one list of stages: every row has its
module and its config, and the pipeline's per-stage override lists are its stages."""

from __future__ import annotations

import importlib

import pytest
from omegaconf import OmegaConf

from geovq import CONF_DIR
from geovq.errors import ConfigError
from geovq.stage_registry import STAGES, STEP_STAGES
from geovq.stages import get_stage


@pytest.mark.parametrize("name", list(STAGES))
def test_each_stage_has_its_module_and_its_config(name):
    assert callable(importlib.import_module(STAGES[name].module).run)
    assert get_stage(name) is importlib.import_module(STAGES[name].module).run
    assert OmegaConf.load(CONF_DIR / "stage" / f"{name}.yaml").stage.name == name


def test_every_stage_config_is_a_registered_stage():
    assert {path.stem for path in (CONF_DIR / "stage").glob("*.yaml")} == set(STAGES)


def test_the_pipeline_config_has_one_override_list_per_step_stage():
    pipeline = OmegaConf.load(CONF_DIR / "stage" / "pipeline.yaml").pipeline
    # reuse_from lists folders, not overrides.
    lists = [key for key, value in pipeline.items() if OmegaConf.is_list(value) and key not in ("all", "reuse_from")]
    assert lists == list(STEP_STAGES)


def test_an_unknown_stage_names_the_known_ones():
    with pytest.raises(ConfigError, match="unknown stage 'nope'.*vae, quantize"):
        get_stage("nope")
