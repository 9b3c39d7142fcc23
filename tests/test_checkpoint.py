import pytest
import torch

from wm_train import load_checkpoint, save_checkpoint


@pytest.fixture
def saved(tmp_path, untrained_model):
    """A checkpoint saved by this test (the one thing under test) and what went into it."""
    model, cfg, codec = untrained_model()
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, model, cfg, codec, epoch=4)
    return path, model, cfg, codec


def test_round_trip_restores_weights_config_and_codec(tmp_path, saved):
    path, model, cfg, codec = saved
    loaded, loaded_cfg, extras = load_checkpoint(path)
    assert loaded_cfg == cfg and extras["action_codec"] == codec and extras["epoch"] == 4
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor)
    assert set(extras["versions"]) >= {"torch", "wm"}
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temporary left


def test_checkpoint_is_plain_data(saved):
    path, *_ = saved
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == "wm-checkpoint" and isinstance(payload["config"], dict)


def test_other_format_version_is_refused(saved):
    path, *_ = saved
    payload = torch.load(path, weights_only=True)
    payload["format_version"] = 99
    torch.save(payload, path)
    with pytest.raises(ValueError, match=r"format version 99, expected one of \[1, 2, 3\]"):
        load_checkpoint(path)


def test_non_checkpoint_files_are_refused(tmp_path):
    (tmp_path / "notes.pt").write_text("hello")
    with pytest.raises(ValueError, match="not a readable wm checkpoint"):
        load_checkpoint(tmp_path / "notes.pt")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a wm checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")
