"""The import contracts of pyproject.toml ([tool.importlinter]; docs/design.md, "Layers") catch
an import that breaks them: an upward import, a sibling importing its sibling, the web app
reaching past rlhf.data, a recipe importing another recipe.

``make test`` checks the real tree with ``lint-imports``. Here each contract runs on a copy of
``src/rlhf`` with one bad import added, against the same copy without it: the added import is
reported (and the contract broken) whatever the rest of the tree holds at the time."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "pyproject.toml"
IGNORED = shutil.ignore_patterns("__pycache__")  # copies of src/rlhf without bytecode

# (contract id, file of the copy, import appended to it, the violation lint-imports reports)
CASES = [
    ("layers", "losses/kl.py", "import rlhf.recipes", "rlhf.losses.kl -> rlhf.recipes"),
    ("layers", "rollout/types.py", "import rlhf.online", "rlhf.rollout.types -> rlhf.online"),
    ("layers", "sim/world.py", "import rlhf.models.load", "rlhf.sim.world -> rlhf.models.load"),
    ("feedback", "feedback/tasks.py", "import rlhf.models", "rlhf.feedback.tasks -> rlhf.models"),
    (
        "recipes",
        "recipes/sft.py",
        "import rlhf.recipes.ppo",
        "rlhf.recipes.sft -> rlhf.recipes.ppo",
    ),
]


def lint(src: Path, contract: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` of one contract of pyproject.toml over the package ``src/rlhf``."""
    env = {**os.environ, "PYTHONPATH": str(src)}  # the copy comes before the installed tree
    command = "from importlinter.cli import lint_imports_command; lint_imports_command()"
    return subprocess.run(
        [sys.executable, "-c", command, str(CONFIG), "--contract", contract, "--no-cache"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def baselines(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Each contract's report on an unmodified copy of src/rlhf."""
    work = tmp_path_factory.mktemp("clean")
    shutil.copytree(ROOT / "src" / "rlhf", work / "src" / "rlhf", ignore=IGNORED)
    contracts = dict.fromkeys(contract for contract, *_ in CASES)  # each once, in order
    return {contract: lint(work / "src", contract, work).stdout for contract in contracts}


def _short(line: str) -> str:
    """A violation line without its ``(l.N)`` suffix: ``- a.b -> c.d (l.3)`` -> ``a.b -> c.d``."""
    return line.strip().removeprefix("-").strip().split(" (l.")[0]


@pytest.mark.parametrize(("contract", "file", "statement", "violation"), CASES)
def test_a_bad_import_breaks_its_contract(
    baselines: dict[str, str],
    tmp_path: Path,
    contract: str,
    file: str,
    statement: str,
    violation: str,
) -> None:
    shutil.copytree(ROOT / "src" / "rlhf", tmp_path / "src" / "rlhf", ignore=IGNORED)
    target = tmp_path / "src" / "rlhf" / file
    target.write_text(target.read_text() + f"\n{statement}  # injected by tests/test_layers.py\n")

    result = lint(tmp_path / "src", contract, tmp_path)

    report = result.stdout
    assert result.returncode != 0, report + result.stderr
    broken = [line for line in report.splitlines() if line.endswith(" BROKEN")]
    assert len(broken) == 1, report  # the one contract checked, named as broken
    found = {_short(line) for line in report.splitlines() if " -> " in line}
    before = {_short(line) for line in baselines[contract].splitlines() if " -> " in line}
    assert violation in found - before, report


def test_every_registered_recipe_is_in_the_recipes_contract():
    """A recipe added to the registry but not to the independence contract could import
    another recipe unnoticed: name the ones missing from pyproject.toml's list."""
    import tomllib

    from rlhf.recipes.registry import RECIPES

    contracts = tomllib.loads(CONFIG.read_text(encoding="utf-8"))["tool"]["importlinter"]
    listed = next(c for c in contracts["contracts"] if c["id"] == "recipes")["modules"]
    missing = sorted({entry.module for entry in RECIPES} - set(listed))
    assert not missing, f"add {missing} to the 'recipes' contract in pyproject.toml"
