from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from vaekit.checkpoint import MODEL_FILE, load_model
from vaekit.errors import VaekitError


def test_round_trip_reproduces_outputs_bit_for_bit(conv_run: Path, tmp_path: Path) -> None:
    model, cfg = load_model(conv_run)
    copy = tmp_path / "copy"
    shutil.copytree(conv_run, copy)
    again, cfg2 = load_model(copy / MODEL_FILE)
    assert cfg == cfg2
    x = torch.rand(5, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    z = torch.randn(5, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model.encode(x)[0], again.encode(x)[0])
        assert torch.equal(model.encode(x)[1], again.encode(x)[1])
        assert torch.equal(model.decode(z), again.decode(z))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_checkpoint_is_a_clear_error(conv_run: Path, tmp_path: Path, damage: str) -> None:
    run = tmp_path / "run"
    shutil.copytree(conv_run, run)
    weights = run / MODEL_FILE
    data = weights.read_bytes()
    weights.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x00\xff" * 999, "empty": b""}[damage])
    with pytest.raises(VaekitError, match="corrupt or truncated"):
        load_model(run)


def test_config_that_does_not_match_the_weights(conv_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(conv_run, run)
    raw = json.loads((run / "config.json").read_text())
    raw["model"]["latent_dim"] = 7
    (run / "config.json").write_text(json.dumps(raw))
    with pytest.raises(VaekitError, match="does not match its config"):
        load_model(run)


def test_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(VaekitError, match="not found"):
        load_model(tmp_path / "nope")


def test_an_artifact_directory_or_graph_given_as_checkpoint(tmp_path: Path) -> None:
    """The mistake named, not "config.json not found": export wrote it, train did not."""
    art = tmp_path / "art"
    art.mkdir()
    (art / "decoder.onnx").write_bytes(b"onnx")
    with pytest.raises(VaekitError, match=f"{art} is an artifact directory, not a run directory: give the --out"):
        load_model(art)
    with pytest.raises(VaekitError, match=r"decoder.onnx is not a checkpoint \(it is an exported graph\)"):
        load_model(art / "decoder.onnx")
