"""Files written before the package was laid out by job still load: a run folder made by main at c38c0ff
(tiny random backbone, linear4 head, 2 epochs on the bundled sample) gives the same masks and resumes."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import FIXTURES, metrics_rows
from webdino_seg import Predictor, load_model
from webdino_seg.app.cli import main
from webdino_seg.data.images import read_image

OLD_RUN = FIXTURES / "run_from_c38c0ff"
REPO = Path(__file__).parents[1]
SAMPLE_VALID = REPO / "examples" / "pennfudan-sample" / "valid_images"


def test_an_old_checkpoint_gives_the_masks_it_gave_then() -> None:
    model, ckpt = load_model(OLD_RUN / "best_model_iou.pth")
    assert ckpt["head_name"] == "linear4" and not model.fine_tune
    predictor = Predictor.from_checkpoint(OLD_RUN / "best_model_iou.pth", device="cpu")
    then = np.load(OLD_RUN / "predictions.npz")
    assert sorted(then.files) == sorted(p.name for p in SAMPLE_VALID.iterdir())
    for name in then.files:
        now = predictor.predict(read_image(SAMPLE_VALID / name))
        assert now.shape == then[name].shape
        assert (now != then[name]).mean() <= 1e-4, name  # the same masks (float rounding aside)


def test_an_old_run_folder_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    run = tmp_path / "run"
    shutil.copytree(OLD_RUN, run)
    (run / "predictions.npz").unlink()
    monkeypatch.chdir(REPO)  # config.yaml names the data relative to the repository
    before = metrics_rows(run)
    assert main(["train", "--resume", str(run), "--epochs", "3"]) == 0
    assert "resuming" in capsys.readouterr().out
    after = metrics_rows(run)
    assert after[:2] == before and len(after) == 3
    load_model(run / "final_model.pth")
    assert (run / "valid_preds").is_dir() and len(list((run / "valid_preds").iterdir())) == 4
