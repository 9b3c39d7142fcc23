"""`wm-collect` then `wm-train` end to end on a real environment, as a user runs them."""

import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def _run(*args):
    return subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True, timeout=300)


def test_collect_then_train_end_to_end(tmp_path):
    data = tmp_path / "data"
    collected = _run("wm-collect", "CarRacing-v3", "-o", str(data), "--episodes", "3", "--steps", "20", "--no-progress")
    assert collected.returncode == 0, collected.stderr
    assert len(list(data.glob("episode_*.npz"))) == 3
    trained = _run(
        "wm-train",
        "configs/tiny.yaml",
        "--no-progress",
        "--set",
        f"data.path={data}",
        "--set",
        f"train.out_dir={tmp_path / 'run'}",
        "--set",
        "data.val_fraction=0.34",
    )
    assert trained.returncode == 0, trained.stderr
    assert "epoch 2 val loss=" in trained.stdout + trained.stderr
    assert (tmp_path / "run" / "best.pt").exists()


def test_cli_errors_are_one_line_with_nonzero_exit(tmp_path):
    result = _run("wm-train", "configs/tiny.yaml", "--set", "train.lr_typo=1")
    assert result.returncode != 0
    assert "unknown key(s) ['lr_typo'] in section 'train'" in result.stderr
    assert "Traceback" not in result.stderr
    result = _run("wm-collect", "NoSuchEnv-v0", "-o", str(tmp_path / "d"), "--episodes", "1")
    assert result.returncode != 0 and "NoSuchEnv-v0" in result.stderr and "Traceback" not in result.stderr
