from __future__ import annotations

import pytest
from pydantic import Field

from rlhf.config import (
    ConfigError,
    StrictModel,
    apply_overrides,
    config_help,
    describe_config,
    load_config,
    preset_path,
)
from rlhf.recipes.pretrain import PretrainConfig
from rlhf.recipes.sft import SFTConfig


class Inner(StrictModel):
    lr: float = Field(1e-3, gt=0, description="learning rate")
    name: str = Field("x", description="a name")


class Outer(StrictModel):
    inner: Inner = Field(default_factory=Inner, description="inner section")
    steps: int = Field(10, description="steps")


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("steps: 3\ninner:\n  name: from-yaml\n")
    cfg = load_config(Outer, path, ["inner.lr=0.5", "inner.name=cli"])
    assert (cfg.steps, cfg.inner.lr, cfg.inner.name) == (3, 0.5, "cli")


def test_unknown_key_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"inner\.lrr: unknown key"):
        load_config(Outer, None, ["inner.lrr=1"])
    path = tmp_path / "c.yaml"
    path.write_text("stepz: 3\n")
    with pytest.raises(ConfigError, match=r"stepz: unknown key"):
        load_config(Outer, path)


def test_ill_typed_value_is_named():
    with pytest.raises(ConfigError, match=r"inner\.lr: .*(greater than 0|valid number)"):
        load_config(Outer, None, ["inner.lr=-1"])
    with pytest.raises(ConfigError, match=r"steps: .*integer"):
        load_config(Outer, None, ["steps=many"])


def test_bad_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("steps: 3\ninner: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:\d+: invalid YAML"):
        load_config(Outer, path)


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="expected key=value"):
        apply_overrides({}, ["no-equals-sign"])
    with pytest.raises(ConfigError, match="steps is a value, not a section"):
        apply_overrides({"steps": 3}, ["steps.x=1"])


def test_every_leaf_is_documented():
    for cls in (SFTConfig, PretrainConfig):
        rows = describe_config(cls)
        assert rows, cls
        undocumented = [key for key, _, _, description in rows if not description]
        assert not undocumented, undocumented
    assert "train.lr" in config_help(SFTConfig)


def test_presets_load_and_unknown_preset_fails():
    assert preset_path("sft", "tiny").is_file()
    with pytest.raises(ConfigError, match="no preset 'huge' for sft"):
        preset_path("sft", "huge")


def test_model_needs_exactly_one_source():
    with pytest.raises(ConfigError, match=r"exactly one of model\.path and model\.tiny"):
        load_config(SFTConfig, None, ["data.train=x.jsonl", "model.dtype=float32"])
