"""Every training command and the config class it resolves, for tests that go over them all:
read from the recipe registry, so a recipe added there is tested here too."""

from __future__ import annotations

from rlhf.recipes.registry import RECIPES, recipe

RECIPE_CONFIGS = {entry.name: f"{entry.module}:{entry.config}" for entry in RECIPES}


def config_class(name: str) -> type:
    return recipe(name).config_class()
