"""YAML configs: presets, inheritance, dotted overrides and the one-line errors."""

import textwrap

import pytest

from lora_train.config import PRESET_DIR, TrainConfig, apply_overrides, config_from_dict, load_config
from lora_train.errors import UserError
from lora_train.train import main as train_main
from lora_train.runtime import parse_overrides


def write(path, text):
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.parametrize("preset", sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))
def test_every_preset_loads_and_round_trips(preset):
    config = load_config(preset)
    assert isinstance(config, TrainConfig)
    assert config_from_dict(config.to_dict()) == config


def test_strategy_presets_set_their_own_values():
    a, b, c = (load_config(f"strategy_{s}") for s in "abc")
    assert (a.lora.strategy, b.lora.strategy, c.lora.strategy) == ("A", "B", "C")
    # the value in the preset is the one used (the public fork's B/C LRs were silently overridden)
    assert (a.optim.lr, b.optim.lr, c.optim.lr) == (1e-4, 5e-5, 3e-5)
    assert c.optim.clip_norms["aggregator"] == 0.5
    # inherited from default.yaml
    assert b.model.preset == "tiny" and b.data.width == load_config("default").data.width


def test_inherit_from_file_and_overrides(tmp_path):
    write(tmp_path / "base.yaml", """
        inherit: strategy_c
        optim: {lr: 2.0e-4}
    """)
    top = write(tmp_path / "top.yaml", """
        inherit: base.yaml
        lora: {rank: 8}
        optim:
          clip_norms: {aggregator: 0.25, depth_head: 1.0, camera_head: 1.0}
    """)
    config = load_config(top, {"optim.weight_decay": "0", "lora.use_dora": "true", "data.num_views": 4})
    assert config.lora.strategy == "C" and config.lora.rank == 8 and config.lora.use_dora is True
    assert config.optim.lr == 2e-4 and config.optim.weight_decay == 0.0 and config.data.num_views == 4
    assert config.optim.clip_norms == {"aggregator": 0.25, "depth_head": 1.0, "camera_head": 1.0}
    # a single entry of a mapping can be overridden without dropping the others
    config = apply_overrides(config, {"optim.clip_norms.depth_head": "0.5"})
    assert config.optim.clip_norms == {"aggregator": 0.25, "depth_head": 0.5, "camera_head": 1.0}
    # PyYAML reads 1e-4 (no dot) as a string; numbers are still accepted
    assert load_config(write(tmp_path / "e.yaml", "optim: {lr: 1e-4}\n")).optim.lr == 1e-4


def test_unknown_key_in_file_names_key_and_file(tmp_path):
    path = write(tmp_path / "typo.yaml", """
        inherit: default
        optim:
          learning_rate: 1.0e-4
    """)
    with pytest.raises(UserError) as err:
        load_config(path)
    message = str(err.value)
    assert "optim.learning_rate" in message and "typo.yaml" in message and "\n" not in message


@pytest.mark.parametrize(
    "key, value, fragment",
    [
        ("optim.lr", "fast", "optim.lr"),
        ("train.epochs", "2.5", "train.epochs"),
        ("train.device", "tpu", "train.device"),
        ("lora.rank", "0", "lora.rank"),
        ("lora.strategy", "Z", "lora.strategy"),
        ("data.width", "100", "data.width"),
        ("optim.clip_norms.decoder", "1.0", "optim.clip_norms.decoder"),
        ("optim.warmup_ratio", "1.5", "optim.warmup_ratio"),
        ("train.progress_bar", "3", "train.progress_bar"),
        ("optim.lrr", "1", "optim.lrr"),
        ("model.checkpoint", "/no/such/model.pt", "model.checkpoint"),
    ],
)
def test_bad_override_names_the_key(key, value, fragment):
    with pytest.raises(UserError) as err:
        load_config("default", {key: value})
    assert fragment in str(err.value)


def test_missing_config_and_bad_yaml(tmp_path):
    with pytest.raises(UserError, match="config not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(UserError, match="invalid YAML"):
        load_config(write(tmp_path / "bad.yaml", "optim: {lr: [\n"))
    with pytest.raises(UserError, match="circular"):
        load_config(write(tmp_path / "loop.yaml", "inherit: loop.yaml\n"))


def test_parse_overrides_forms():
    assert parse_overrides(["--optim.lr", "1e-3", "--lora.rank=8"]) == {"optim.lr": "1e-3", "lora.rank": "8"}
    with pytest.raises(UserError, match="--epochs"):
        parse_overrides(["--epochs", "3"])
    with pytest.raises(UserError, match="needs a value"):
        parse_overrides(["--optim.lr"])


def test_cli_exits_2_with_one_line_error(tmp_path, capsys):
    path = write(tmp_path / "typo.yaml", "trian: {epochs: 1}\n")
    with pytest.raises(SystemExit) as exit_info:
        train_main(["--config", str(path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "trian" in err and err.count("\n") == 1
    with pytest.raises(SystemExit) as exit_info:
        train_main(["--config", "default", "--optim.lr", "-1"])
    assert exit_info.value.code == 2
    assert "optim.lr" in capsys.readouterr().err
