"""A study as data: steps and methods declared in YAML, checked before anything runs."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from geovq.errors import ConfigError
from geovq.study.spec import plan_study

STEPS = {
    "vae": {"stage": "vae"},
    "quantize_geodesic": {"stage": "quantize", "inputs": {"stage.vae": "vae"}},
    "quantize_kmeans": {"stage": "quantize", "inputs": {"stage.vae": "vae"}, "overrides": ["quantizer=kmeans"]},
    "vqvae": {"stage": "vqvae"},
}
METHODS = {
    "A_geodesic": {"codes": "quantize_geodesic", "paper": "A"},
    "A_kmeans": {"codes": "quantize_kmeans", "prior": ["model.n_layer=1"]},
    "B": {"codes": "vqvae", "title": "B: VQ-VAE"},
}


def test_a_chain_lists_inputs_first_and_shares_the_vae():
    study = plan_study(STEPS, METHODS)
    assert [s.name for s in study.chain("quantize_kmeans")] == ["vae", "quantize_kmeans"]
    assert [s.name for s in study.chain("vqvae")] == ["vqvae"]
    assert study.steps["quantize_kmeans"].inputs == (("stage.vae", "vae"),)
    assert study.steps["quantize_kmeans"].output == "codes.pt" and study.steps["vae"].output == "model.pt"
    assert study.methods["A_kmeans"].overrides["prior"] == ("model.n_layer=1",)
    assert study.methods["A_geodesic"].title == "A_geodesic" and study.methods["B"].title == "B: VQ-VAE"


def test_one_prior_per_distinct_set_of_code_grids():
    steps = {**STEPS, "tuned": {"stage": "finetune", "inputs": {"stage.codes": "quantize_geodesic"}}}
    methods = {**METHODS, "A_tuned": {"codes": "tuned"}, "A_tuned_small": {"codes": "tuned", "prior": ["model.n_layer=1"]}}
    study = plan_study(steps, methods)
    # The fine-tuned decoder's codes copy quantize_geodesic's grids: A_geodesic's prior serves both.
    assert study.grids_step("A_tuned") == "quantize_geodesic"
    assert study.derived_step("A_tuned", "prior") == "prior_A_geodesic"
    assert study.derived_step("A_tuned", "sample") == "sample_A_tuned"
    # Other prior settings, another prior (the first method with those settings owns it).
    assert study.derived_step("A_tuned_small", "prior") == "prior_A_tuned_small"
    assert study.derived_step("A_kmeans", "prior") == "prior_A_kmeans"


@pytest.mark.parametrize(
    ("steps", "methods", "message"),
    [
        (STEPS, {"X": {"codes": "nowhere"}}, r"pipeline.methods.X.codes=nowhere is not a step"),
        (STEPS, {"X": {"codes": "vae"}}, r"stage=vae step, which makes no code grids"),
        (STEPS, {"X": {"title": "no codes"}}, r"must name the step whose code grids"),
        (STEPS, {"X": {"codes": "vqvae", "paper": "C"}}, r"rows A and B only"),
        (STEPS, {"X": {"codes": "vqvae", "priorr": []}}, r"unknown keys \['priorr'\]"),
        ({**STEPS, "q": {"stage": "quantize", "inputs": {"stage.vae": "missing"}}}, METHODS, r"inputs.stage.vae=missing is not a step"),
        ({"a": {"stage": "quantize", "inputs": {"stage.vae": "b"}}, "b": {"stage": "finetune", "inputs": {"stage.codes": "a"}}},
         {"X": {"codes": "a"}}, r"cycle: a -> b -> a"),
        ({"p": {"stage": "prior"}}, {"X": {"codes": "p"}}, r"stage=prior is not a step a study declares"),
        ({"v": {"stage": "vae", "overrides": "model.beta=1"}}, {"X": {"codes": "v"}}, r"must be a list of overrides"),
        (STEPS, {}, r"declares no methods"),
    ],
)
def test_mistakes_in_a_study_are_one_message(steps, methods, message):
    with pytest.raises(ConfigError, match=message):
        plan_study(steps, methods)


def test_experiment_paper_declares_the_paper_and_its_controls(compose_config, data_root, tmp_path):
    cfg = compose_config(tmp_path / "e", ["experiment=paper", f"data.root={data_root}"])
    pipeline = OmegaConf.to_container(cfg.pipeline, resolve=True)
    study = plan_study(pipeline["steps"], pipeline["methods"])
    assert list(study.methods) == ["A_geodesic", "A_kmeans", "B_paper_objective", "B_per_image", "B_ema"]
    # One GridVAE serves both a posteriori quantizers.
    assert study.chain(study.methods["A_kmeans"].codes)[0] is study.chain(study.methods["A_geodesic"].codes)[0]
    assert {m.paper for m in study.methods.values()} == {"A", "B", None}


def test_experiment_aposteriori_compares_each_head_start_with_a_budget_matched_control(compose_config, data_root, tmp_path):
    cfg = compose_config(tmp_path / "e", ["experiment=aposteriori", f"data.root={data_root}"])
    pipeline = OmegaConf.to_container(cfg.pipeline, resolve=True)
    study = plan_study(pipeline["steps"], pipeline["methods"])

    defaults = {stage: compose_config(tmp_path / stage, [f"stage={stage}", f"data.root={data_root}"]).trainer.max_epochs
                for stage in ("vae", "vqvae", "finetune")}

    def code_epochs(method: str) -> int:  # the epochs of every network that made the method's codes
        total = 0
        for step in study.chain(study.methods[method].codes):
            epochs = [int(o.split("=")[1]) for o in step.overrides if o.startswith("trainer.max_epochs=")]
            total += epochs[0] if epochs else defaults.get(step.stage, 0)
        return total

    controls = {a: b for a, b in pipeline["comparisons"] if b.startswith("B_ema")}
    for method in ("hybrid_beta003", "A_beta003_finetuned"):
        matched = [b for a, b in pipeline["comparisons"] if a == method and code_epochs(b) == code_epochs(method)]
        assert matched, (method, code_epochs(method), controls)
    # The fine-tuned decoder's method shares A_beta003's prior (the same code grids).
    assert study.derived_step("A_beta003_finetuned", "prior") == "prior_A_beta003"


def test_a_method_is_added_from_the_command_line(compose_config, data_root, tmp_path):
    cfg = compose_config(tmp_path / "e", [
        "experiment=quick", f"data.root={data_root}",
        "+pipeline.steps.quantize_k64={stage: quantize, inputs: {stage.vae: vae}, overrides: ['quantizer=kmeans', 'quantizer.n_clusters=64']}",
        "+pipeline.methods.A_kmeans_64={codes: quantize_k64, title: 'A: K-Means, K=64'}",
    ])
    pipeline = OmegaConf.to_container(cfg.pipeline, resolve=True)
    study = plan_study(pipeline["steps"], pipeline["methods"])
    assert study.methods["A_kmeans_64"].title == "A: K-Means, K=64"
    assert [s.name for s in study.chain("quantize_k64")] == ["vae", "quantize_k64"]
    assert study.steps["quantize_k64"].overrides == ("quantizer=kmeans", "quantizer.n_clusters=64")


def test_pipeline_only_keeps_the_named_methods_and_the_steps_they_need(compose_config, data_root, tmp_path):
    cfg = compose_config(tmp_path / "e", ["experiment=paper", f"data.root={data_root}", "pipeline.only=[A_geodesic,B_ema]"])
    pipeline = OmegaConf.to_container(cfg.pipeline, resolve=True)
    study = plan_study(pipeline["steps"], pipeline["methods"], only=pipeline["only"])
    assert list(study.methods) == ["A_geodesic", "B_ema"]
    assert study.steps_run == {"vae", "quantize_geodesic", "vqvae_ema"}  # figure 1 (needs K-Means) is left out
    assert plan_study(STEPS, METHODS).steps_run == set(STEPS)


@pytest.mark.parametrize("only, message", [
    (["A_geodesic", "B_emma"], r"pipeline.only names \['B_emma'\], which are not methods of this study; its methods: A_geodesic, A_kmeans, B"),
    ("A_geodesic", r"pipeline.only is a list of method names"),
    ([], r"pipeline.only=\[\] names no method; name some, e.g. 'pipeline.only=\[A_geodesic\]', or leave it null"),
])
def test_pipeline_only_names_methods_of_the_study(only, message):
    with pytest.raises(ConfigError, match=message):
        plan_study(STEPS, METHODS, only=only)
