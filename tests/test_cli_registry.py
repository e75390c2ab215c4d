"""The recipe registry: every entry resolves, has its presets and its command; the registry
imports no recipe, and rlhf.eval imports nothing from rlhf.recipes."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rlhf.cli import app
from rlhf.recipes.common import RecipeConfig
from rlhf.recipes.registry import RECIPES, online_recipes, recipe, stage_recipe

SRC = Path(__file__).resolve().parents[1] / "src" / "rlhf"
NAMES = [entry.name for entry in RECIPES]


def test_names_and_stages_are_unique():
    assert len(set(NAMES)) == len(NAMES)
    stages = [entry.stage for entry in RECIPES if entry.stage]
    assert len(set(stages)) == len(stages)


@pytest.mark.parametrize("name", NAMES)
def test_an_entry_resolves_to_its_config_class_run_function_and_presets(name):
    entry = recipe(name)
    assert issubclass(entry.config_class(), RecipeConfig)
    assert callable(entry.run_function())
    assert entry.presets and all(entry.preset_file(preset).is_file() for preset in entry.presets)


def test_every_packaged_preset_is_a_registered_recipes():
    declared = {f"{entry.name}_{preset}" for entry in RECIPES for preset in entry.presets}
    packaged = {path.stem for path in (SRC / "presets").glob("*.yaml")}
    # the pipeline's and the loop's presets are theirs, not a recipe's
    assert packaged - {p for p in packaged if p.startswith(("pipeline_", "loop_"))} == declared


def test_pipeline_stages_are_pipeline_sections():
    from rlhf.recipes.pipeline import PipelineConfig

    for entry in RECIPES:
        if entry.stage is not None:
            assert entry.stage in PipelineConfig.model_fields
            assert stage_recipe(entry.stage) is entry


def test_online_recipes_are_the_online_ones():
    assert {"grpo", "rloo", "reinforce", "remax", "ppo"} <= {r.name for r in online_recipes()}
    assert not {"sft", "dpo", "rm"} & {r.name for r in online_recipes()}


def test_unknown_names_say_which_exist():
    with pytest.raises(ValueError, match=r"no recipe 'sfft'.*sft, pretrain"):
        recipe("sfft")
    with pytest.raises(ValueError, match=r"stages: .*reward_model"):
        stage_recipe("rm")


def test_every_recipe_is_a_command_in_registry_order():
    result = CliRunner().invoke(app, ["--help"], terminal_width=200)
    assert result.exit_code == 0
    listed = [line.split()[0] for line in result.output.splitlines() if line.startswith("  ")]
    commands = [name for name in listed if name in NAMES]
    assert commands == NAMES
    for entry in RECIPES:  # each one's summary, as far as the listing shows it
        line = next(line for line in result.output.splitlines() if line.split()[:1] == [entry.name])
        assert entry.help.startswith(line.split(None, 1)[1].removesuffix("...").rstrip())


@pytest.mark.parametrize("name", NAMES)
def test_loss_option_only_where_registered(name):
    result = CliRunner().invoke(app, [name, "--help"])
    assert result.exit_code == 0
    assert ("--loss" in result.output) == recipe(name).loss_option


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, wherever the import sits (TYPE_CHECKING, functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return found


@pytest.mark.parametrize("path", sorted((SRC / "eval").glob("*.py")), ids=lambda p: p.name)
def test_eval_imports_nothing_from_recipes(path):
    assert not {name for name in _imports(path) if name.startswith("rlhf.recipes")}


def test_the_registry_imports_no_recipe():
    code = (
        "import sys, rlhf.recipes.registry as r; "
        "print(sorted(m for m in sys.modules if m.startswith('rlhf.recipes.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['rlhf.recipes.registry']"
