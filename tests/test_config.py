"""Config tree: defaults validate, YAML + overrides merge, bad keys get one sentence."""

from __future__ import annotations

import pytest
import yaml

from unveil.config import Config, config_from_dict, load_config
from unveil.errors import ConfigError


def test_defaults_round_trip_through_yaml(tmp_path):
    cfg = Config()
    p = tmp_path / "c.yaml"
    p.write_text(cfg.to_yaml())
    again = load_config(p)
    assert again == cfg
    assert again.preprocess.hu_window == (-1000.0, 500.0)


def test_overrides_parse_yaml_values():
    cfg = load_config(
        overrides=["train.steps=7", "preprocess.spacing=[2, 2, 3]", "model.fusion=concat"]
    )
    assert cfg.train.steps == 7
    assert cfg.preprocess.spacing == (2.0, 2.0, 3.0)
    assert cfg.model.fusion == "concat"


def test_base_inheritance(tmp_path):
    (tmp_path / "parent.yaml").write_text(yaml.safe_dump({"train": {"steps": 5, "batch_size": 3}}))
    (tmp_path / "child.yaml").write_text(
        yaml.safe_dump({"base": "parent.yaml", "train": {"steps": 9}})
    )
    cfg = load_config(tmp_path / "child.yaml")
    assert (cfg.train.steps, cfg.train.batch_size) == (9, 3)


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("train.stepz=3", "unknown config key 'train.stepz' (did you mean 'steps'?)"),
        ("trian.steps=3", "valid keys under the top level are"),
        ("train.steps=abc", "config key 'train.steps' is invalid"),
        ("model.fusion=bogus", "'affine+cross_attention'"),
        ("preprocess.hu_window=[500, -1000]", "low < high"),
        ("split.fractions=[0.5, 0.5, 0.5]", "summing to 1"),
        ("data.lung_labels=[spleen]", "'spleen' is not among data.labels"),
        ("preprocess.orientation=RRS", "three axis codes"),
    ],
)
def test_bad_values_one_sentence(override, fragment):
    with pytest.raises(ConfigError) as info:
        load_config(overrides=[override])
    msg = str(info.value)
    assert fragment in msg
    assert "\n" not in msg


def test_valid_keys_listed_for_unknown_key():
    with pytest.raises(ConfigError) as info:
        load_config(overrides=["train.stepz=3"])
    assert "steps, batch_size" in str(info.value)


def test_heads_must_divide_channels():
    with pytest.raises(ConfigError, match="divisible by model.heads"):
        config_from_dict(
            {
                "model": {
                    "fusion": "cross_attention",
                    "channels": [8, 12],
                    "heads": 8,
                    "norm_groups": 4,
                }
            }
        )


def test_sampler_must_match_process():
    with pytest.raises(ConfigError, match="cannot sample"):
        load_config(overrides=["diffusion.process=rflow"])
    cfg = load_config(overrides=["diffusion.process=rflow", "diffusion.sampler=rflow"])
    assert cfg.diffusion.sampler == "rflow"


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("3\n")
    with pytest.raises(ConfigError, match="mapping of sections"):
        load_config(scalar)


def test_override_without_equals():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(overrides=["train.steps"])


def test_effect_head_needs_its_inputs_and_is_refused_on_load():
    from unveil.config import load_config, resolve_config_path

    with pytest.raises(ConfigError, match="lung-height channel"):
        load_config(resolve_config_path("demo"), ["preprocess.position_channel=false"])
    with pytest.raises(ConfigError, match="prediction sample"):
        load_config(resolve_config_path("demo-diffusion"), ["diffusion.prediction=v_prediction"])
    assert (
        load_config(resolve_config_path("demo"), ["model.effect_knots=0"]).model.effect_knots == 0
    )
