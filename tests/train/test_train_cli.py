"""`python -m lora_train.train` end to end with no dataset given, and the tiny base cache."""

import json
import threading

import lora_train.tiny_base as tiny_base_module
from lora_train.model import VGGT, load_pretrained
from lora_train.tiny_base import TinyBaseRecipe, ensure_tiny_base, tiny_base_config
from lora_train.train import main as train_main


def test_cli_trains_on_generated_facades_when_no_data_root(tmp_path, monkeypatch, tiny_base, capsys):
    monkeypatch.setenv("VGGT_LORA_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    code = train_main([
        "--config", "default", "--output-dir", str(out),
        "--model.checkpoint", str(tiny_base), "--data.synthetic_scenes", "2", "--data.num_views", "2",
        "--data.width", "70", "--eval.max_windows", "1", "--data.cache_dir", str(tmp_path / "windows"),
        "--train.epochs", "1", "--train.steps_per_epoch", "1", "--lora.strategy=A", "--lora.rank=2",
        "--eval.num_visualizations", "0",
    ])
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "cache" / "scenes").iterdir() if p.is_dir()) == [
        "facade-n2-seed0-v1"
    ]
    events = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events] == ["step", "epoch", "end"]
    assert events[1]["checkpoint_dir"].endswith("epoch_0001") and events[2]["status"] == "completed"
    assert (out / "config.yaml").is_file()
    assert "run completed" in capsys.readouterr().out


def test_tiny_base_is_cached_by_content_and_built_once(tmp_path, monkeypatch):
    recipe = TinyBaseRecipe(steps=1, num_scenes=2, num_views=2, width=70, batch_size=1,
                            views_per_scene=4, image_size=(96, 64))
    calls = []
    real_train = tiny_base_module.train_tiny_base

    def counting_train(*args, **kwargs):
        calls.append(1)
        return real_train(*args, **kwargs)

    monkeypatch.setattr(tiny_base_module, "train_tiny_base", counting_train)
    paths = []
    threads = [threading.Thread(target=lambda: paths.append(ensure_tiny_base(tmp_path, recipe, progress=False)))
               for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and len(set(paths)) == 1  # the lock made the second caller wait and reuse
    path = paths[0]
    assert path.parent.name == "bases" and path.suffix == ".safetensors"
    card = json.loads(path.with_suffix(".json").read_text())
    assert card["recipe"]["steps"] == 1 and card["model"]["enable_point"] is False
    model = VGGT(tiny_base_config())
    report = load_pretrained(model, path)  # strict load
    assert report is not None
    other = ensure_tiny_base(tmp_path, TinyBaseRecipe(**{**card["recipe"], "image_size": (96, 64), "steps": 2}), progress=False)
    assert other != path and len(calls) == 2  # a different recipe is a different cache entry
