"""The example configs under examples/ load with their recipe's config class, and their README
names every one of them."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlhf.config import load_config
from tests.recipe_configs import RECIPE_CONFIGS, config_class

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CONFIGS = sorted(EXAMPLES.glob("*/*.yaml"))


def test_every_recipe_has_a_real_model_example():
    assert {path.stem for path in CONFIGS} == set(RECIPE_CONFIGS)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: f"{path.parent.name}/{path.name}")
def test_example_config_loads(path):
    config = load_config(config_class(path.stem), path)
    assert config.model.path is not None  # a real model, not a tiny one
    assert path.name in (path.parent / "README.md").read_text()
