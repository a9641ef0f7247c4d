from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from tests.test_cli import assert_one_line_error
from vaekit.cli.main import app
from vaekit.config import SAMPLE_COUNT, SAMPLE_SEED
from vaekit.runtimes import load_decoder
from vaekit.runtimes.generate import (
    generate_picture,
    interpolation_latents,
    prior_latents,
    slerp,
    top_dimensions,
    traversal_latents,
)
from vaekit.train import SAMPLES_PNG

runner = CliRunner()


def invoke(*args: str) -> tuple[int, str, str]:
    r = runner.invoke(app, list(args))
    return r.exit_code, r.stdout, r.stderr


@pytest.mark.parametrize("engine", ["decoder.onnx", "run"])
def test_generate_same_seed_same_images_on_every_runtime(
    conv_art: Path, conv_run: Path, tmp_path: Path, engine: str
) -> None:
    src = conv_run if engine == "run" else conv_art / engine
    code, _out, err = invoke(
        "generate",
        "--engine",
        str(src),
        "--n",
        "10",
        "--seed",
        "3",
        "--out",
        str(tmp_path / "s.png"),
        "--npy",
        str(tmp_path / "s.npz"),
    )
    assert code == 0, err
    with np.load(tmp_path / "s.npz") as f:
        z, images = f["z"], f["images"]
    np.testing.assert_array_equal(z, prior_latents(10, 4, 3))
    reference = load_decoder(conv_run).decode(z)
    np.testing.assert_allclose(images, reference, atol=1e-4, rtol=0)
    with Image.open(tmp_path / "s.png") as img:
        assert min(img.size) >= 256


def test_interpolation_and_traversal(conv_art: Path, tmp_path: Path) -> None:
    z = interpolation_latents(2, 5, 4, seed=0)
    ends = prior_latents(4, 4, 0)
    np.testing.assert_allclose(z[0], ends[0], atol=1e-6)
    np.testing.assert_allclose(z[4], ends[1], atol=1e-6)
    np.testing.assert_allclose(z[5], ends[2], atol=1e-6)
    dec = load_decoder(conv_art / "decoder.onnx")
    tz, dims = traversal_latents(dec, 3, 7)
    assert tz.shape == (21, 4) and len(set(dims)) == 3
    assert (tz[:7, dims[0]] == np.linspace(-3, 3, 7, dtype=np.float32)).all()
    assert np.count_nonzero(tz[:7], axis=1).max() == 1  # one dimension moves per row
    assert top_dimensions(dec, 4)[:3] == dims
    for flag in ("--interpolate", "--traverse"):
        code, _, err = invoke(
            "generate",
            "--engine",
            str(conv_art / "decoder.onnx"),
            flag,
            "4",
            "--n",
            "8",
            "--out",
            str(tmp_path / "x.png"),
        )
        assert code == 0, err


def test_slerp_keeps_the_norm_of_orthogonal_unit_vectors() -> None:
    a, b = np.array([1.0, 0.0], np.float32), np.array([0.0, 1.0], np.float32)
    path = slerp(a, b, 9)
    np.testing.assert_allclose(np.linalg.norm(path, axis=1), 1.0, atol=1e-6)


def test_reconstruct_from_artifacts(conv_art: Path, tmp_path: Path) -> None:
    code, out, err = invoke(
        "reconstruct",
        "--encoder",
        str(conv_art / "encoder.onnx"),
        "--decoder",
        str(conv_art / "decoder.onnx"),
        "--n",
        "8",
        "--out",
        str(tmp_path / "r.png"),
    )
    assert code == 0, err
    psnr = float(out.split("mean PSNR")[1].split("dB")[0])
    assert psnr > 10  # a tiny 2-epoch model, but far better than noise
    assert (tmp_path / "r.png").is_file()


def test_reconstruct_refuses_a_mismatched_pair(conv_art: Path, mlp_art: Path, tmp_path: Path) -> None:
    code, _, err = invoke(
        "reconstruct",
        "--encoder",
        str(conv_art / "encoder.onnx"),
        "--decoder",
        str(mlp_art / "decoder.onnx"),
        "--out",
        str(tmp_path / "r.png"),
    )
    assert_one_line_error(code, err, "different checkpoints")


def test_info(conv_art: Path) -> None:
    code, out, err = invoke("info", str(conv_art / "decoder.onnx"), "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["role"] == "decoder" and data["latent_dim"] == 4 and data["image_shape"] == [1, 16, 16]
    code, out, _ = invoke("info")
    assert code == 0 and "onnxruntime" in out


def test_manifest_hash_guards_the_artifact(conv_art: Path, tmp_path: Path) -> None:
    art = tmp_path / "art"
    shutil.copytree(conv_art, art)
    with open(art / "decoder.onnx", "ab") as f:
        f.write(b"\\0")  # still loads as ONNX? no matter: the hash no longer matches
    code, _, err = invoke("generate", "--engine", str(art / "decoder.onnx"), "--out", str(tmp_path / "g.png"))
    assert_one_line_error(code, err, "does not match the sha256 in manifest.json")
    assert not (tmp_path / "g.png").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--n", "0"], "--n must be >= 1"),
        (["--device", "npu"], "unknown device"),
        (["--interpolate", "1"], "needs >= 2 steps"),
        (["--interpolate", "3", "--traverse", "3"], "pick one"),
    ],
)
def test_generate_bad_input(conv_art: Path, tmp_path: Path, args: list[str], message: str) -> None:
    code, _, err = invoke(
        "generate", "--engine", str(conv_art / "decoder.onnx"), "--out", str(tmp_path / "g.png"), *args
    )
    assert_one_line_error(code, err, message)
    assert not (tmp_path / "g.png").exists()


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def test_training_samples_are_what_generate_draws_for_seed_0(conv_run: Path) -> None:
    """One seeding rule: samples.png is the picture `vaekit generate --seed 0` makes of the same run."""
    decoder = load_decoder(conv_run)
    images = decoder.decode(prior_latents(SAMPLE_COUNT, decoder.info.latent_dim, SAMPLE_SEED))
    picture = generate_picture(images, decoder.info.value_range, SAMPLE_SEED, None, [])
    np.testing.assert_array_equal(_pixels(conv_run / SAMPLES_PNG), np.asarray(picture))


def test_generate_seed_0_on_a_run_redraws_its_samples_png(conv_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "s.png"
    code, _, err = invoke("generate", "--engine", str(conv_run), "--seed", "0", "--n", "64", "--out", str(out))
    assert code == 0, err
    np.testing.assert_array_equal(_pixels(out), _pixels(conv_run / SAMPLES_PNG))


def test_generate_writes_the_format_its_suffix_names(conv_art: Path, tmp_path: Path) -> None:
    engine = str(conv_art / "decoder.onnx")
    code, _, err = invoke("generate", "--engine", engine, "--out", str(tmp_path / "x.jpg"))
    assert code == 0, err
    assert (tmp_path / "x.jpg").read_bytes()[:2] == b"\xff\xd8"
    code, _, err = invoke("generate", "--engine", engine, "--out", str(tmp_path / "x.gif"))
    assert_one_line_error(code, err, "end the name in .png")
    assert not (tmp_path / "x.gif").exists()
