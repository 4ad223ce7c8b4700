"""Every geovq command line quoted in README.md and in the pages of docs/ parses and composes
with Hydra.

A command (a line of a code block or an inline code span that runs ``python -m geovq.train`` or
``geovq``) is split as the shell would, its arguments read by Hydra's own argument parser, its
overrides parsed by Hydra's override grammar and the config composed in-process, as
``python -m geovq.train`` does before running anything: a renamed config key, a group option
that no longer exists or a quoting mistake fails here. A multirun (``-m``) is composed with each
sweep at its first value. Inline spans that hold only overrides (``'pipeline.prior=[...]'``) are
parsed. The per-step override lists of ``pipeline.<step>=[...]`` are parsed too and composed
for that step's stage, as the pipeline does.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.utils import get_args_parser
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import OmegaConf

import geovq.train  # noqa: F401  (registers the config resolvers)
from geovq import CONF_DIR
from geovq.stage_registry import STEP_STAGES
from geovq.study.spec import plan_study

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
# The README and the pages it links: the commands moved out of the README are checked the same way.
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]

# How geovq/study/runner.py composes each step of `pipeline.<step>` (`all` reaches every step).
PIPELINE_STEP_ARGS = {stage: [f"stage={stage}"] for stage in STEP_STAGES}
PLACEHOLDER = re.compile(r"<[^<>\s=][^<>=]*>")  # <run>, <interrupted run>: a dummy value stands in
OVERRIDE_WORD = re.compile(r"^(~|\+\+?)?[A-Za-z_][\w.@/-]*=")
FRAGMENT = re.compile(r"^['\"]?(~|\+\+?)?[A-Za-z_][\w.@]*=")
GEOVQ_COMMAND = re.compile(r"python3? -m geovq\.train\b|(^|[\s;&|(])geovq\s")
SHELL_OPERATORS = {"&&", "||", ";", "|", "&", "(", ")"}


def readme_snippets(text: str) -> list[tuple[str, str]]:
    """('command' | 'overrides', text) for every geovq command and every override-only inline span."""
    found, prose = [], []
    in_fence = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
            prose.append("")
        elif in_fence:
            if GEOVQ_COMMAND.search(line):
                found.append(("command", line.strip()))
            prose.append("")
        else:
            prose.append(line)
    for span in re.findall(r"`([^`]+)`", "\n".join(prose)):
        span = " ".join(span.split())
        if GEOVQ_COMMAND.search(span):
            found.append(("command", span))
        elif FRAGMENT.match(span):
            found.append(("overrides", span))
    return list(dict.fromkeys(found))


def shell_words(line: str) -> list[str]:
    lexer = shlex.shlex(PLACEHOLDER.sub("x", line), posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    return list(lexer)


def geovq_arguments(line: str) -> list[list[str]]:
    """The arguments after the program of each geovq command of a shell line (`a && geovq ...`)."""
    commands, current = [], []
    for word in [*shell_words(line), ";"]:
        if word not in SHELL_OPERATORS:
            current.append(word)
            continue
        for i in range(len(current)):
            if re.fullmatch(r"python3?", current[i]) and current[i + 1 : i + 3] == ["-m", "geovq.train"]:
                commands.append(current[i + 3 :])
                break
            if current[i] == "geovq":
                commands.append(current[i + 1 :])
                break
        current = []
    return commands


def compose_train(overrides: list[str], config_name: str = "train"):
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name, overrides=overrides, return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()


def check_pipeline_lists(overrides) -> None:
    """Each `pipeline.<stage>=[...]` item is an override that the stage accepts."""
    parser = OverridesParser.create()
    for override in overrides:
        key = override.key_or_group
        if not key.startswith("pipeline.") or not isinstance(override.value(), list) or key in ("pipeline.seeds", "pipeline.reuse_from", "pipeline.only"):
            continue
        step, items = key.removeprefix("pipeline."), override.value()
        assert all(isinstance(item, str) for item in items), f"{override.input_line}: items must be override strings"
        parser.parse_overrides(items)
        if step == "all":
            continue
        assert step in PIPELINE_STEP_ARGS, f"unknown pipeline step '{step}': not a stage of geovq/stage_registry.py"
        compose_train([*PIPELINE_STEP_ARGS[step], *items])


def check_command(arguments: list[str]) -> None:
    """Parse and compose one command's arguments (the words after `python -m geovq.train`)."""
    try:
        args = get_args_parser().parse_args(arguments)
    except SystemExit:
        raise AssertionError(f"Hydra's command line rejects {shlex.join(arguments)}") from None
    overrides = OverridesParser.create().parse_overrides(args.overrides)
    sweeps = [o.input_line for o in overrides if o.is_sweep_override()]
    assert args.multirun or not sweeps, f"sweeps {sweeps} need -m/--multirun"
    first_points = [
        f"{o.get_key_element()}={next(iter(o.sweep_string_iterator()))}" if o.is_sweep_override() else o.input_line
        for o in overrides
    ]
    cfg = compose_train(first_points, args.config_name or "train")
    check_pipeline_lists(overrides)
    if cfg.stage.name == "pipeline":  # the study it runs is well formed
        pipeline = OmegaConf.to_container(cfg.pipeline, resolve=False)
        plan_study(pipeline["steps"], pipeline["methods"])


def check_overrides_span(span: str) -> None:
    """An inline span of overrides only (`experiment=paper trainer=gpu`): parsed, not composed,
    since it is meant to be added to a command given elsewhere."""
    words = shell_words(span)
    assert all(OVERRIDE_WORD.match(word) for word in words), f"not a list of overrides: {words}"
    check_pipeline_lists(OverridesParser.create().parse_overrides(words))


def check_snippet(kind: str, text: str) -> None:
    if kind == "overrides":
        check_overrides_span(text)
        return
    commands = geovq_arguments(text)
    assert commands, f"no geovq command found in {text!r}"
    for arguments in commands:
        check_command(arguments)


def is_synopsis(text: str) -> bool:
    """`python -m geovq.train stage=<name> [overrides]`: a usage pattern, not a command."""
    return bool(re.search(r"(^|\s)\[[^\]=]*\](\s|$)", text))


README_SNIPPETS = readme_snippets(README.read_text(encoding="utf-8"))
SNIPPETS = list(dict.fromkeys(snippet for page in PAGES for snippet in readme_snippets(page.read_text(encoding="utf-8"))))


def test_readme_and_docs_quote_the_commands():
    in_readme = [text for kind, text in README_SNIPPETS if kind == "command" and not is_synopsis(text)]
    everywhere = [text for kind, text in SNIPPETS if kind == "command" and not is_synopsis(text)]
    assert len(in_readme) > 10, in_readme
    assert len(everywhere) > 40, everywhere


@pytest.mark.parametrize(
    ("kind", "text"),
    [
        pytest.param(
            kind,
            text,
            id=("inline: " if kind == "overrides" else "") + " ".join(re.sub(r"\s#.*", "", text).split()),
            marks=[pytest.mark.skip(reason="usage synopsis")] if is_synopsis(text) else [],
        )
        for kind, text in SNIPPETS
    ],
)
@pytest.mark.slow  # trains or runs the CLI: the slow tier (CI runs both tiers)
def test_readme_command_parses_and_composes(kind, text):
    check_snippet(kind, text)


@pytest.mark.parametrize(
    ("kind", "text"),
    [
        ("command", "python -m geovq.train experiment=quick 'pipeline.prior=[trainer.max_epochs=8]'"),
        ("overrides", "'pipeline.prior=[trainer.max_epochs=8]'"),
        ("overrides", "'pipeline.vqvae=[\"model.no_such_key=1\"]'"),
        ("command", "python -m geovq.train stage=vqvae model.no_such_key=0.25"),
        ("command", "python -m geovq.train stage=no_such_stage"),
        ("command", "python -m geovq.train stage=vqvae seed=1,2   # a sweep without -m"),
        ("command", "pip install -e . && geovq -m stage=vqvae model.no_such_key=1,2"),
    ],
)
def test_the_check_rejects_broken_commands(kind, text):
    with pytest.raises((AssertionError, HydraException)):
        check_snippet(kind, text)


def test_a_quoted_list_of_overrides_reaches_the_pipeline():
    cfg = compose_train(["experiment=quick", 'pipeline.prior=["trainer.max_epochs=8"]'])
    assert list(cfg.pipeline.prior) == ["trainer.max_epochs=8"]
