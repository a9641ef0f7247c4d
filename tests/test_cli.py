from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from vaekit.cli.main import app

runner = CliRunner()


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def assert_one_line_error(code: int, err: str, pattern: str) -> None:
    assert code != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert pattern in lines[0], lines[0]


def test_train_resume_and_eval_json(tmp_path: Path, mnist_dir: Path) -> None:
    out = tmp_path / "run"
    common = [
        "--data",
        f"mnist:{mnist_dir}",
        "--image-size",
        "32",
        "--latent-dim",
        "4",
        "--hidden-dims",
        "8,16,16,16",
    ]
    code, stdout, err = run("train", *common, "--epochs", "1", "--batch-size", "32", "--out", str(out))
    assert code == 0, err
    assert "test -ELBO" in stdout
    code, stdout, err = run("train", "--out", str(out), "--resume", "--epochs", "2")
    assert code == 0, err
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    code, stdout, err = run("eval", "--checkpoint", str(out), "--iwae-samples", "4", "--json")
    assert code == 0, err
    result = json.loads(stdout)
    assert {"neg_elbo", "iwae_nll", "recon", "kld"} <= set(result)
    assert result["pixels_counted"] == 28 * 28  # padded to 32, counted over the original pixels
    assert result["iwae_nll"] <= result["neg_elbo"]


def test_mlp_on_digits_defaults(tmp_path: Path) -> None:
    out = tmp_path / "mlp"
    code, _, err = run("train", "--arch", "mlp", "--epochs", "1", "--batch-size", "128", "--out", str(out))
    assert code == 0, err
    cfg = json.loads((out / "config.json").read_text())
    assert (
        cfg["model"]["image_size"] == 28 and cfg["model"]["hidden_dims"] == [400] and cfg["model"]["latent_dim"] == 20
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--epochs", "0"], "--epochs must be >= 1"),
        (["train", "--image-size", "30"], "image size 30 does not fit"),
        (["train", "--data", "folder:/no/such/dir"], "no such directory"),
        (["train", "--data", "mnist:/no/such/dir"], "no such directory"),
        (["train", "--likelihood", "poisson"], "unknown likelihood"),
        (["train", "--device", "tpu"], "unknown device"),
        (["train", "--hidden-dims", "8,x"], "comma-separated integers"),
        (["eval", "--checkpoint", "/no/such/run"], "not found"),
        (["eval", "--split", "val"], "--split must be"),
        (["download", "cifar", "/tmp/x"], "only mnist"),
    ],
)
def test_bad_input_is_one_line(args: list[str], message: str, tmp_path: Path) -> None:
    if args[0] == "train":
        args = [*args, "--out", str(tmp_path / "run")]
    code, _, err = run(*args)
    assert_one_line_error(code, err, message)


def test_empty_folder_and_non_image(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    code, _, err = run("train", "--data", f"folder:{tmp_path / 'imgs'}", "--out", str(tmp_path / "r"))
    assert_one_line_error(code, err, "no images found")
    for i in range(3):
        Image.new("L", (8, 8), 40 * i).save(tmp_path / "imgs" / f"ok{i}.png")
    (tmp_path / "imgs" / "x.jpg").write_text("text, not a jpeg")
    code, _, err = run("train", "--data", f"folder:{tmp_path / 'imgs'}", "--out", str(tmp_path / "r"))
    assert_one_line_error(code, err, "cannot decode image")


def test_corrupt_checkpoint_via_cli(conv_run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(conv_run, run_dir)
    (run_dir / "model.safetensors").write_bytes(b"garbage")
    code, _, err = run("eval", "--checkpoint", str(run_dir))
    assert_one_line_error(code, err, "corrupt or truncated")
    code, _, err = run("train", "--out", str(run_dir), "--resume", "--lr", "0.1")
    assert_one_line_error(code, err, "drop --lr")


def _help(*command: str) -> str:
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    return result.stdout


def test_train_help_fits_a_screen_at_80_columns() -> None:
    lines = _help("train").splitlines()
    assert len(lines) <= 45, len(lines)  # was 101, then 61 before the panels and one-line help strings
    assert max(len(line) for line in lines) <= 80
    for panel in ("Options", "Model", "Loss", "Optimizer"):
        assert f"─ {panel} ─" in "\n".join(lines), panel


def test_no_flag_shows_a_value_placeholder() -> None:
    commands = [c.name or "" for c in app.registered_commands]
    assert {"train", "export", "generate", "bench"} <= set(commands)
    for command in ["", *commands]:
        text = _help(*([command] if command else []))
        assert "<bool>" not in text, command
    assert "<int>" in _help("train")  # options that take a value still say what kind
