"""The bad-input matrix: every CLI command against files and values a user (or an attacker) might hand it.

Each row must end with exit code != 0, exactly one non-empty line on stderr that names the problem, no
traceback, and every file that existed before byte-for-byte unchanged (no temp or staging files left
either). Rows run in-process through CliRunner; rows marked `sub` also run as a real `python -m vaekit`.
Rows marked `bug` are defects in commands owned elsewhere: xfail(strict) until fixed, then they flip.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from typer.testing import CliRunner

from tests.conftest import write_idx
from tests.test_data import write_hostile_images
from vaekit.cli.main import app
from vaekit.fsutil import LOCK_FILE

FULL_DISK_BYTES = 512 * 1024


@dataclass(frozen=True)
class Row:
    args: str  # command line with {placeholders} (see `places`)
    expect: str  # regex the single error line must match: it names the problem
    needs: str = ""  # readonly | fulldisk | no-tensorrt | no-cuda
    bug: str = ""  # a known defect (file: diagnosis); the row is xfail(strict) until it is fixed
    sub: bool = False  # also run through a real subprocess
    without: str = ""  # comma list of modules made unimportable for the row (a partial install)


ROWS: dict[str, Row] = {
    # --- train ---------------------------------------------------------------------------------------
    "train-epochs-zero": Row("train --epochs 0 --out {out}/r", r"--epochs must be >= 1, got 0", sub=True),
    "train-epochs-negative": Row("train --epochs -1 --out {out}/r", r"--epochs must be >= 1, got -1"),
    "train-batch-zero": Row("train --batch-size 0 --out {out}/r", r"--batch-size must be >= 1, got 0"),
    "train-batch-negative": Row("train --batch-size -4 --out {out}/r", r"--batch-size must be >= 1, got -4"),
    "train-lr-nan": Row("train --lr nan --out {out}/r", r"--lr must be > 0, got nan"),
    "train-lr-zero": Row("train --lr 0 --out {out}/r", r"--lr must be > 0"),
    "train-latent-zero": Row("train --latent-dim 0 --out {out}/r", r"latent_dim=0"),
    "train-latent-negative": Row("train --latent-dim -3 --out {out}/r", r"latent_dim=-3"),
    "train-image-size-zero": Row("train --image-size 0 --out {out}/r", r"image_size=0"),
    "train-hidden-zero": Row("train --hidden-dims 0 --out {out}/r", r"hidden_dims must be positive"),
    "train-hidden-negative": Row("train --hidden-dims 8,-8 --out {out}/r", r"hidden_dims must be positive"),
    "train-hidden-empty": Row("train --hidden-dims , --out {out}/r", r"--hidden-dims takes comma-separated"),
    "train-channels-2": Row("train --channels 2 --out {out}/r", r"channels=2"),
    "train-beta-negative": Row("train --beta -1 --out {out}/r", r"beta, gamma and capacity must be >= 0"),
    "train-capacity-iter-zero": Row("train --loss B --capacity-stop-iter 0 --out {out}/r", r"capacity-stop-iter"),
    "train-mnist-missing": Row("train --data mnist:{bad}/nope --out {out}/r", r"nope: no such directory"),
    "train-mnist-no-files": Row("train --data mnist:{bad} --out {out}/r", r"train-images-idx3-ubyte\[.gz\] not found"),
    "train-mnist-empty": Row("train {mnist_args} --data mnist:{bad}/mnist_empty --out {out}/r", r"bad magic number"),
    "train-mnist-truncated": Row(
        "train {mnist_args} --data mnist:{bad}/mnist_trunc --out {out}/r", r"mnist_trunc/train.*(truncated|ended)"
    ),
    "train-mnist-random": Row("train {mnist_args} --data mnist:{bad}/mnist_random --out {out}/r", r"mnist_random"),
    "train-mnist-corrupt-gzip": Row(
        "train {mnist_args} --data mnist:{bad}/mnist_zlib --out {out}/r",
        r"mnist_zlib/train-images",
    ),
    "train-mnist-1d": Row(
        "train {mnist_args} --data mnist:{bad}/mnist_1d --out {out}/r",
        r"mnist_1d/train-images",
    ),
    "train-mnist-zero-images": Row("train {mnist_args} --data mnist:{bad}/mnist_zero --out {out}/r", r"0 training"),
    "train-folder-no-images": Row("train --data folder:{bad}/empty_dir --out {out}/r", r"no images found"),
    "train-folder-not-images": Row("train --data folder:{bad}/fake_images --out {out}/r", r"cannot decode image"),
    "train-folder-only-bombs": Row(
        "train --data folder:{bad}/bomb_images --image-size 16 --out {out}/r", r"cannot decode image .*none of the"
    ),
    "train-without-safetensors": Row(
        "train --out {out}/r",
        r"needs safetensors, which is not installed: pip install 'vaekit\[train\]'",
        without="safetensors,onnxscript,sklearn",
    ),
    "train-out-inside-data": Row(
        "train --data folder:{bad}/fake_images --out {bad}/fake_images/run", r"output .*/run overlaps the input"
    ),
    "train-out-is-data": Row("train --data mnist:{bad}/mnist_random --out {bad}/mnist_random", r"overlaps the input"),
    "train-out-contains-data": Row("train --data folder:{bad}/fake_images --out {bad}", r"overlaps the input"),
    "export-out-inside-data": Row(
        "export --checkpoint {run} --data folder:{bad}/fake_images --out {bad}/fake_images/art", r"overlaps the input"
    ),
    "export-web-runtime-in-bundle": Row(
        "export --checkpoint {run} --out {out}/existing --overwrite --web --web-runtime-dir {out}/existing/web/ort",
        r"existing/web overlaps the input .*/ort",
    ),
    "train-without-torch": Row("train --out {out}/r", r"needs torch.*vaekit\[train\]", without="torch"),
    "train-resume-nothing": Row("train --resume --out {out}/r", r"r not found|nothing to resume"),
    "train-resume-empty-config": Row("train --resume --out {bad}/run_empty_config", r"config is not valid JSON"),
    "train-resume-random-config": Row("train --resume --out {bad}/run_random_config", r"run_random_config/config"),
    "train-resume-list-config": Row("train --resume --out {bad}/run_list_config", r"config is not a JSON object"),
    "train-resume-typed-config": Row(
        "train --resume --out {bad}/run_string_latent",
        r"latent_dim",
    ),
    "train-resume-truncated-trainer": Row(
        "train --resume --out {bad}/run_trunc_trainer", r"trainer.safetensors is corrupt or truncated"
    ),
    "train-resume-random-trainer": Row(
        "train --resume --out {bad}/run_random_trainer", r"trainer.safetensors is corrupt or truncated"
    ),
    "train-resume-nan-trainer": Row("train --resume --out {bad}/run_nan_weights", r"holds NaN or Inf in"),
    "train-resume-wrong-shape": Row("train --resume --out {bad}/run_wrong_shape", r"does not match its config.json"),
    "train-resume-huge-hidden": Row(
        "train --resume --out {bad}/run_huge_hidden", r"this model has [\d,]+ parameters .* GiB is available", sub=True
    ),
    "train-huge-latent": Row("train --latent-dim 1000000000 --out {out}/r", r"parameters .* GiB is available"),
    "train-resume-and-overwrite": Row("train --resume --overwrite --out {run}", r"contradict"),
    "train-existing-run": Row("train {mnist_args} --out {run}", r"already holds a run"),
    "train-out-is-file": Row("train --out {bad}/random.onnx", r"random.onnx"),
    "train-out-under-file": Row("train --out {bad}/random.onnx/run", r"Not a directory"),
    "train-out-readonly": Row("train {mnist_args} --out {ro}/run", r"Read-only file system", needs="readonly"),
    "train-out-full-disk": Row(
        "train {mnist_args} --out {full}/run", r"No space left on device", needs="fulldisk", sub=True
    ),
    "train-device-unknown": Row("train --device tpu --out {out}/r", r"unknown device 'tpu'"),
    "train-device-cuda": Row("train --device cuda --out {out}/r", r"no CUDA GPU", needs="no-cuda"),
    # --- eval ----------------------------------------------------------------------------------------
    "eval-missing": Row("eval --checkpoint {bad}/nope", r"nope not found"),
    "eval-dir-without-run": Row("eval --checkpoint {bad}/empty_dir", r"config.json not found"),
    "eval-onnx-as-checkpoint": Row("eval --checkpoint {bad}/random.onnx", r"random.onnx is not a checkpoint"),
    "eval-random-weights": Row("eval --checkpoint {bad}/run_random_model", r"corrupt or truncated", sub=True),
    "eval-empty-weights": Row("eval --checkpoint {bad}/run_empty_model", r"corrupt or truncated"),
    "eval-truncated-weights": Row("eval --checkpoint {bad}/run_trunc_model", r"corrupt or truncated"),
    "eval-nan-weights": Row("eval --checkpoint {bad}/run_nan_weights", r"holds NaN or Inf in"),
    "eval-wrong-shape": Row("eval --checkpoint {bad}/run_wrong_shape", r"fc_mu.weight has shape"),
    "eval-huge-latent": Row("eval --checkpoint {bad}/run_huge_latent", r"does not match its config.json", sub=True),
    "eval-empty-config": Row("eval --checkpoint {bad}/run_empty_config", r"config is not valid JSON"),
    "eval-typed-config": Row(
        "eval --checkpoint {bad}/run_string_latent",
        r"latent_dim",
    ),
    "eval-unknown-field": Row("eval --checkpoint {bad}/run_unknown_field", r"unexpected keyword argument 'bogus'"),
    "eval-iwae-zero": Row("eval --checkpoint {run} --iwae-samples 0", r"--iwae-samples and --limit must be >= 1"),
    "eval-limit-negative": Row("eval --checkpoint {run} --limit -1", r"--iwae-samples and --limit must be >= 1"),
    "eval-split-unknown": Row("eval --checkpoint {run} --split val", r"--split must be test or train"),
    "eval-data-missing": Row("eval --checkpoint {run} --data mnist:{bad}/nope", r"nope: no such directory"),
    "eval-folder-only-bombs": Row(
        "eval --checkpoint {run} --data folder:{bad}/bomb_images", r"cannot decode image .*none of the"
    ),
    "eval-disentangle-no-factors": Row(
        "eval --checkpoint {run} --data digits --disentanglement", r"--data digits has no factor table"
    ),
    "eval-png-without-disentangle": Row("eval --checkpoint {run} --png {png}", r"add --disentanglement"),
    "eval-disentangle-png-unwritable": Row(
        "eval --checkpoint {run} --data shapes --disentanglement --png {out}/t.bmpx", r"t.bmpx"
    ),
    "eval-without-safetensors": Row(
        "eval --checkpoint {run}", r"needs safetensors.*vaekit\[train\]", without="safetensors"
    ),
    # --- download ------------------------------------------------------------------------------------
    "download-unknown": Row("download cifar {out}/d", r"only mnist"),
    "download-unreachable": Row(
        "download mnist {out}/d --base-url file://{bad}/nope/", r"download of file://.*nope.* failed"
    ),
    "download-checksum": Row("download mnist {out}/d --base-url file://{bad}/mirror/", r"checksum mismatch"),
    "download-dest-is-file": Row("download mnist {bad}/random.onnx --base-url file://{bad}/mirror/", r"random.onnx"),
    "download-readonly": Row(
        "download mnist {ro}/d --base-url file://{bad}/mirror/", r"Read-only file system", needs="readonly"
    ),
    "download-full-disk": Row(
        "download mnist {full}/d --base-url file://{bad}/mirror/",
        r"No space left on device",
        needs="fulldisk",
    ),
    # --- export --------------------------------------------------------------------------------------
    "export-missing": Row(
        "export --checkpoint {bad}/nope --out {out}/existing --overwrite", r"nope not found", sub=True
    ),
    "export-random-weights": Row(
        "export --checkpoint {bad}/run_random_model --out {out}/existing --overwrite", r"corrupt or truncated"
    ),
    "export-nan-weights": Row(
        "export --checkpoint {bad}/run_nan_weights --out {out}/existing --overwrite", r"NaN or Inf"
    ),
    "export-wrong-shape": Row(
        "export --checkpoint {bad}/run_wrong_shape --out {out}/existing --overwrite", r"does not match"
    ),
    "export-huge-latent": Row(
        "export --checkpoint {bad}/run_huge_latent --out {out}/existing --overwrite", r"does not match", sub=True
    ),
    "export-onnx-as-checkpoint": Row("export --checkpoint {bad}/random.onnx --out {out}/e", r"not a checkpoint"),
    "export-max-batch-zero": Row(
        "export --checkpoint {run} --max-batch 0 --out {out}/existing --overwrite", r"--max-batch"
    ),
    "export-max-batch-negative": Row(
        "export --checkpoint {run} --max-batch -1 --out {out}/existing --overwrite",
        r"--max-batch",
    ),
    "export-calibration-zero": Row(
        "export --checkpoint {run} --int8 --calibration-images 0 --out {out}/existing --overwrite",
        r"--calibration-images",
    ),
    "export-precision-unknown": Row(
        "export --checkpoint {run} --precision fp8 --out {out}/existing --overwrite", r"fp8"
    ),
    "export-data-missing": Row(
        "export --checkpoint {run} --data mnist:{bad}/nope --out {out}/existing --overwrite", r"nope"
    ),
    "export-out-under-file": Row("export --checkpoint {run} --out {bad}/random.onnx/art", r"random.onnx"),
    "export-out-readonly": Row("export --checkpoint {run} --out {ro}/art", r"Read-only file system", needs="readonly"),
    "export-out-full-disk": Row(
        "export --checkpoint {run} --out {full}/existing --overwrite", r"No space left on device", needs="fulldisk"
    ),
    "export-folder-only-bombs": Row(
        "export --checkpoint {run} --data folder:{bad}/bomb_images --out {out}/existing --overwrite",
        r"cannot decode image .*none of the",
    ),
    "export-out-is-run": Row("export --checkpoint {run} --out {run} --overwrite", r"output .*run overlaps the input"),
    "export-out-inside-run": Row("export --checkpoint {run} --out {run}/art", r"overlaps the input .*run"),
    "export-out-contains-run": Row("export --checkpoint {run} --out {run}/.. --overwrite", r"overlaps the input"),
    "export-weights-out-is-run": Row(
        "export --checkpoint {run}/model.safetensors --out {run}/art", r"overlaps the input"
    ),
    "export-without-onnxscript": Row(
        "export --checkpoint {run} --out {out}/art", r"needs onnxscript.*vaekit\[train\]", without="onnxscript"
    ),
    "export-without-onnxruntime": Row(
        "export --checkpoint {run} --out {out}/art", r"needs onnxruntime.*vaekit\[cpu\]", without="onnxruntime"
    ),
    "export-trt-missing": Row(
        "export --checkpoint {run} --trt --out {out}/existing --overwrite", r"--trt", needs="no-tensorrt"
    ),
    # --- parity --------------------------------------------------------------------------------------
    "parity-missing": Row("parity {bad}/nope", r"nope is not an artifact directory", sub=True),
    "parity-file": Row("parity {bad}/random.onnx", r"random.onnx is not an artifact directory"),
    "parity-no-decoder": Row("parity {bad}/art_no_decoder", r"decoder.onnx not found"),
    "parity-random-decoder": Row("parity {bad}/art_random_decoder", r"decoder.onnx is not a valid ONNX file"),
    "parity-empty-decoder": Row("parity {bad}/art_empty_decoder", r"decoder.onnx is not a valid ONNX file"),
    "parity-truncated-decoder": Row("parity {bad}/art_trunc_decoder", r"decoder.onnx is not a valid ONNX file"),
    "parity-swapped-graphs": Row("parity {bad}/art_swapped --checkpoint {run}", r"is an? \w+ graph, not an? \w+"),
    "parity-random-inputs": Row("parity {bad}/art_random_npz", r"parity_inputs.npz is not a vaekit parity input"),
    "parity-pickled-inputs": Row("parity {bad}/art_pickle_npz", r"parity_inputs.npz is not a vaekit parity input"),
    "parity-nan-z": Row("parity {bad}/art_nan_z --checkpoint {run}", r"z contains NaN or Inf"),
    "parity-inf-z": Row("parity {bad}/art_inf_z --checkpoint {run}", r"z contains NaN or Inf"),
    "parity-narrow-z": Row("parity {bad}/art_narrow_z --checkpoint {run}", r"z must have shape \(N, 4\)"),
    "parity-wrong-images": Row(
        "parity {bad}/art_wrong_images --checkpoint {run}", r"images must have shape \(N, 1, 16, 16\)"
    ),
    "parity-path-traversal": Row("parity {bad}/art_traversal", r"points outside the model's folder; refused"),
    "parity-devices-unknown": Row("parity {art} --devices tpu", r"--devices takes"),
    "parity-other-model": Row("parity {art} --checkpoint {mlp} --png {out}/p.png", r"parity failed"),
    "parity-nan-checkpoint": Row("parity {art} --checkpoint {bad}/run_nan_weights", r"NaN or Inf"),
    "parity-json-under-file": Row(
        "parity {art} --checkpoint {run} --json {bad}/random.onnx/p.json --png {out}/p.png", r"random.onnx/p.json"
    ),
    "parity-png-readonly": Row(
        "parity {art} --checkpoint {run} --png {ro}/p.png", r"Read-only file system", needs="readonly"
    ),
    "parity-json-full-disk": Row(
        "parity {art} --checkpoint {run} --json {full}/existing/parity.json --png {out}/p.png",
        r"No space left on device",
        needs="fulldisk",
    ),
    # --- generate ------------------------------------------------------------------------------------
    "generate-missing": Row("generate --engine {bad}/nope.onnx --out {png}", r"nope.onnx not found"),
    "generate-random-onnx": Row("generate --engine {bad}/random.onnx --out {png}", r"not a valid ONNX", sub=True),
    "generate-empty-onnx": Row("generate --engine {bad}/empty.onnx --out {png}", r"not a valid ONNX"),
    "generate-truncated-onnx": Row("generate --engine {bad}/trunc.onnx --out {png}", r"not a valid ONNX"),
    "generate-random-plan": Row("generate --engine {bad}/random.plan --out {png}", r"random.plan|tensorrt|TensorRT"),
    "generate-empty-engine": Row("generate --engine {bad}/empty.engine --out {png}", r"empty.engine|tensorrt|TensorRT"),
    "generate-random-safetensors": Row("generate --engine {bad}/run_random_model --out {png}", r"corrupt"),
    "generate-lone-safetensors": Row("generate --engine {bad}/random.safetensors --out {png}", r"config.json"),
    "generate-unknown-suffix": Row("generate --engine {bad}/notes.txt --out {png}", r"unknown artifact type '.txt'"),
    "generate-encoder-as-decoder": Row(
        "generate --engine {art}/encoder.onnx --out {png}", r"is an encoder graph, not an? decoder"
    ),
    "generate-tampered-graph": Row(
        "generate --engine {bad}/art_meta5/decoder.onnx --out {png}", r"does not match the sha256 in manifest"
    ),
    "generate-latent-mismatch": Row("generate --engine {bad}/art_meta5_unlisted/decoder.onnx --out {png}", r"latent|z"),
    "generate-path-traversal": Row(
        "generate --engine {bad}/art_traversal/decoder.onnx --trust --out {png}", r"points outside the model's folder"
    ),
    "generate-nan-weights": Row(
        "generate --engine {bad}/art_nan_weights/decoder.onnx --out {png}", r"NaN|Inf|non-finite"
    ),
    "generate-n-zero": Row("generate --engine {art} --n 0 --out {png}", r"--n must be >= 1, got 0"),
    "generate-n-negative": Row("generate --engine {art} --n -3 --out {png}", r"--n must be >= 1, got -3"),
    "generate-interpolate-one": Row("generate --engine {art} --interpolate 1 --out {png}", r"needs >= 2 steps"),
    "generate-interpolate-negative": Row("generate --engine {art} --interpolate -2 --out {png}", r"-2"),
    "generate-traverse-zero": Row("generate --engine {art} --traverse 0 --out {png}", r"needs >= 2 steps"),
    "generate-traverse-negative": Row("generate --engine {art} --traverse -4 --data shapes --out {png}", r"-4"),
    "generate-data-without-traverse": Row("generate --engine {art} --data shapes --out {png}", r"add --traverse K"),
    "generate-traverse-no-factors": Row(
        "generate --engine {art} --traverse 3 --data digits --out {png}", r"--data digits has no factor table"
    ),
    "generate-both-pictures": Row("generate --engine {art} --interpolate 3 --traverse 3 --out {png}", r"pick one"),
    "generate-device-unknown": Row("generate --engine {art} --device tpu --out {png}", r"unknown device 'tpu'"),
    "generate-device-cuda": Row(
        "generate --engine {art} --device cuda --out {png}", r"CUDAExecutionProvider", needs="no-cuda"
    ),
    "generate-out-is-dir": Row("generate --engine {art} --out {out}/existing", r"Is a directory"),
    "generate-out-under-file": Row("generate --engine {art} --out {bad}/random.onnx/s.png", r"random.onnx/s.png"),
    "generate-npy-under-file": Row(
        "generate --engine {art} --out {out}/s.png --npy {bad}/random.onnx/z.npz", r"random.onnx/z.npz"
    ),
    "generate-out-readonly": Row(
        "generate --engine {art} --out {ro}/s.png", r"Read-only file system", needs="readonly", sub=True
    ),
    "generate-out-full-disk": Row(
        "generate --engine {art} --out {full}/existing/samples.png", r"No space left on device", needs="fulldisk"
    ),
    # --- reconstruct ---------------------------------------------------------------------------------
    "reconstruct-decoder-as-encoder": Row(
        "reconstruct --encoder {art}/decoder.onnx --decoder {art} --out {png}", r"is an? decoder graph, not an? encoder"
    ),
    "reconstruct-encoder-as-decoder": Row(
        "reconstruct --encoder {art} --decoder {art}/encoder.onnx --out {png}", r"is an encoder graph, not an? decoder"
    ),
    "reconstruct-mismatched-pair": Row(
        "reconstruct --encoder {art} --decoder {mlp} --out {png}", r"different checkpoints"
    ),
    "reconstruct-latent-mismatch": Row(
        "reconstruct --encoder {art} --decoder {bad}/art_meta5_unlisted --out {png}", r"do not fit|latent_dim 5"
    ),
    "reconstruct-n-zero": Row("reconstruct --encoder {art} --decoder {art} --n 0 --out {png}", r"--n must be >= 1"),
    "reconstruct-n-negative": Row(
        "reconstruct --encoder {art} --decoder {art} --n -1 --out {png}", r"--n must be >= 1", sub=True
    ),
    "reconstruct-random-inputs": Row(
        "reconstruct --encoder {bad}/art_random_npz --decoder {art} --out {png}", r"not a vaekit parity input"
    ),
    "reconstruct-nan-images": Row(
        "reconstruct --encoder {bad}/art_nan_images --decoder {art} --out {png}", r"expected uint8 images"
    ),
    "reconstruct-wrong-images": Row(
        "reconstruct --encoder {bad}/art_wrong_images --decoder {art} --out {png}", r"images must have shape"
    ),
    "reconstruct-nan-encoder": Row(
        "reconstruct --encoder {bad}/art_nan_weights --decoder {bad}/art_nan_weights --out {png}",
        r"z contains NaN or Inf",
    ),
    "reconstruct-no-inputs": Row("reconstruct --encoder {run} --decoder {art} --out {png}", r"parity_inputs.npz"),
    "reconstruct-data-missing": Row(
        "reconstruct --encoder {art} --decoder {art} --data mnist:{bad}/nope --out {png}", r"nope"
    ),
    "reconstruct-out-readonly": Row(
        "reconstruct --encoder {art} --decoder {art} --out {ro}/r.png", r"Read-only file system", needs="readonly"
    ),
    "reconstruct-out-full-disk": Row(
        "reconstruct --encoder {art} --decoder {art} --out {full}/existing/samples.png",
        r"No space left on device",
        needs="fulldisk",
    ),
    # --- info ----------------------------------------------------------------------------------------
    "info-missing": Row("info {bad}/nope.onnx", r"nope.onnx not found"),
    "info-random-onnx": Row("info {bad}/random.onnx", r"random.onnx is not a valid ONNX"),
    "info-empty-onnx": Row("info {bad}/empty.onnx", r"empty.onnx is not a valid ONNX"),
    "info-truncated-onnx": Row("info {bad}/trunc.onnx", r"trunc.onnx is not a valid ONNX", sub=True),
    "info-random-plan": Row("info {bad}/random.plan", r"random.plan|tensorrt|TensorRT"),
    "info-lone-safetensors": Row("info {bad}/random.safetensors", r"config.json"),
    "info-random-config": Row("info {bad}/run_random_config", r"run_random_config/config.json"),
    "info-path-traversal": Row("info {bad}/art_traversal/decoder.onnx", r"points outside the model's folder"),
    "info-latent-mismatch": Row("info {bad}/art_meta5_unlisted/decoder.onnx", r"latent"),
    "info-empty-dir": Row("info {bad}/empty_dir", r"holds neither a run"),
    "info-unknown-suffix": Row("info {bad}/notes.txt", r"unknown artifact type"),
    # --- view ---------------------------------------------------------------------------------------------
    "view-missing": Row("view {bad}/nope --no-open", r"nope not found"),
    "view-build-runtime-in-bundle": Row(
        "view {out}/existing --build --runtime-dir {out}/existing/web --no-open", r"existing/web overlaps the input"
    ),
    "view-no-bundle": Row("view {art} --no-open", r"has no web bundle: build it with `vaekit view .* --build`"),
    # --- build-engine and bench -------------------------------------------------------------------
    "build-engine-missing": Row("build-engine {bad}/nope.onnx", r"nope.onnx|tensorrt|TensorRT"),
    "build-engine-random": Row("build-engine {bad}/random.onnx", r"random.onnx|tensorrt|TensorRT"),
    "build-engine-max-batch-zero": Row(
        "build-engine {art}/decoder.onnx --max-batch 0", r"--max-batch|tensorrt|TensorRT"
    ),
    "bench-missing": Row("bench {bad}/nope", r"nope"),
    "bench-batch-zero": Row("bench {art} --batch-sizes 0", r"batch"),
    "bench-batch-text": Row("bench {art} --batch-sizes x", r"batch"),
    "bench-random-decoder": Row("bench {bad}/art_random_decoder", r"decoder.onnx"),
    "bench-runtime-unknown": Row("bench {art} --runtimes tpu --batch-sizes 1", r"runtime.*tpu"),
    "bench-graphs-unknown": Row("bench {art} --graphs unet --batch-sizes 1", r"graphs.*unet"),
    "bench-batch-over-max": Row("bench {art} --batch-sizes 9", r"\b9\b.*\b8\b"),
    "bench-threads-negative": Row("bench {art} --threads -1 --batch-sizes 1", r"threads"),
    "build-engine-plan-as-onnx": Row("build-engine {bad}/random.plan", r"random.plan|tensorrt|TensorRT"),
    "build-engine-without-tensorrt": Row(
        "build-engine {art}/decoder.onnx", r"needs TensorRT.*tensorrt not installed.*vaekit\[trt\]", without="tensorrt"
    ),
    "bench-without-onnxruntime": Row(
        "bench {art} --batch-sizes 1", r"needs onnxruntime.*vaekit\[cpu\]", without="onnxruntime"
    ),
}


# --- the files the rows point at ------------------------------------------------------------------


def _copy(src: Path, dst: Path, drop: tuple[str, ...] = ()) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*drop))
    return dst


def _edit_onnx(path: Path, latent_dim: str | None = None, nan_weights: bool = False) -> None:
    model = onnx.load(str(path))
    for prop in model.metadata_props:
        if latent_dim and prop.key == "latent_dim":
            prop.value = latent_dim
    if nan_weights:
        for tensor in model.graph.initializer:
            values = numpy_helper.to_array(tensor)
            if values.dtype == np.float32 and values.size > 16:
                tensor.CopyFrom(numpy_helper.from_array(np.full_like(values, np.nan), tensor.name))
    onnx.save(model, str(path))


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def make_bad_files(bad: Path, run: Path, art: Path) -> None:
    """Every broken input of the matrix, each in its own file or directory."""
    rng = np.random.default_rng(4)
    bad.mkdir()
    for suffix in (".onnx", ".plan", ".engine", ".safetensors"):
        (bad / f"random{suffix}").write_bytes(rng.bytes(4096))
        (bad / f"empty{suffix}").write_bytes(b"")
    graph = (art / "decoder.onnx").read_bytes()
    (bad / "trunc.onnx").write_bytes(graph[: len(graph) // 2])
    (bad / "notes.txt").write_text("not an artifact")
    (bad / "empty_dir").mkdir()
    (bad / "fake_images").mkdir()
    for name in ("a.png", "b.jpg", "c.png"):
        (bad / "fake_images" / name).write_bytes(rng.bytes(300))

    weights = (run / "model.safetensors").read_bytes()
    trainer = (run / "trainer.safetensors").read_bytes()
    config = json.loads((run / "config.json").read_text())
    run_files: dict[str, dict[str, bytes]] = {
        "run_random_model": {"model.safetensors": rng.bytes(5000)},
        "run_empty_model": {"model.safetensors": b""},
        "run_trunc_model": {"model.safetensors": weights[: len(weights) // 2]},
        "run_trunc_trainer": {"trainer.safetensors": trainer[: len(trainer) // 3]},
        "run_random_trainer": {"trainer.safetensors": rng.bytes(3000)},
        "run_empty_config": {"config.json": b""},
        "run_random_config": {"config.json": rng.bytes(300)},
        "run_list_config": {"config.json": b"[1, 2]"},
    }
    for name, files in run_files.items():
        target = _copy(run, bad / name)
        for file, data in files.items():
            (target / file).write_bytes(data)
    for name, section, key, value in (
        ("run_wrong_shape", "model", "latent_dim", 5),
        ("run_huge_latent", "model", "latent_dim", 10**9),  # would allocate ~2 TB before the shapes were compared
        ("run_huge_hidden", "model", "hidden_dims", [8, 10**7]),
        ("run_string_latent", "model", "latent_dim", "4"),
        ("run_unknown_field", "model", "bogus", 1),
    ):
        edited = json.loads(json.dumps(config))
        edited[section][key] = value
        (_copy(run, bad / name) / "config.json").write_text(json.dumps(edited))
    _poison_weights(_copy(run, bad / "run_nan_weights"))

    _copy(art, bad / "art_no_decoder", drop=("decoder.onnx",))
    (_copy(art, bad / "art_random_decoder") / "decoder.onnx").write_bytes(rng.bytes(3000))
    (_copy(art, bad / "art_empty_decoder") / "decoder.onnx").write_bytes(b"")
    (_copy(art, bad / "art_trunc_decoder") / "decoder.onnx").write_bytes(graph[: len(graph) // 2])
    swapped = _copy(art, bad / "art_swapped")
    shutil.copy(art / "encoder.onnx", swapped / "decoder.onnx")
    shutil.copy(art / "decoder.onnx", swapped / "encoder.onnx")
    with np.load(art / "parity_inputs.npz") as f:
        images, z = f["images"], f["z"]
    nan_z, inf_z, nan_images = z.copy(), z.copy(), images.astype(np.float32)
    nan_z[0, 0], inf_z[1, 1], nan_images[0, 0, 0, 0] = np.nan, np.inf, np.nan
    for name, arrays in {
        "art_nan_z": {"images": images, "z": nan_z},
        "art_inf_z": {"images": images, "z": inf_z},
        "art_narrow_z": {"images": images, "z": z[:, :3]},
        "art_wrong_images": {"images": images[:, :, :8], "z": z},
        "art_nan_images": {"images": nan_images, "z": z},
        "art_pickle_npz": {"images": np.array([{"code": 1}], dtype=object), "z": z},
    }.items():
        _save_npz(_copy(art, bad / name) / "parity_inputs.npz", **arrays)
    (_copy(art, bad / "art_random_npz") / "parity_inputs.npz").write_bytes(rng.bytes(1000))
    _edit_onnx(_copy(art, bad / "art_meta5") / "decoder.onnx", latent_dim="5")
    _edit_onnx(_copy(art, bad / "art_meta5_unlisted", drop=("manifest.json",)) / "decoder.onnx", latent_dim="5")
    nan_art = _copy(art, bad / "art_nan_weights", drop=("manifest.json",))
    for role in ("encoder", "decoder"):
        _edit_onnx(nan_art / f"{role}.onnx", nan_weights=True)
    traversal = _copy(art, bad / "art_traversal")
    model = onnx.load(str(traversal / "decoder.onnx"))
    biggest = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    biggest.ClearField("raw_data")
    biggest.data_location = onnx.TensorProto.EXTERNAL
    biggest.external_data.add(key="location", value="../../../../../../etc/passwd")
    onnx.save(model, str(traversal / "decoder.onnx"))

    write_hostile_images(bad / "bomb_images")
    _mnist_dirs(bad, rng)
    (bad / "mirror").mkdir()
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        (bad / "mirror" / name).write_bytes(b"not the MNIST file")


def _poison_weights(run_dir: Path) -> None:
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(run_dir / "model.safetensors"))
    name = next(k for k, v in tensors.items() if v.dtype == np.float32 and v.ndim == 2)
    tensors[name][0, 0] = np.nan
    save_file(tensors, str(run_dir / "model.safetensors"))
    trainer = run_dir / "trainer.safetensors"
    raw = load_file(str(trainer))
    raw["model." + name][0, 0] = np.nan
    from safetensors import safe_open

    with safe_open(str(trainer), "np") as f:
        meta = f.metadata()
    save_file(raw, str(trainer), metadata=meta)


def _mnist_dirs(bad: Path, rng: np.random.Generator) -> None:
    test_images = rng.integers(0, 255, (8, 28, 28), dtype=np.uint8)
    good = b"\x00\x00\x08\x03" + b"\x00\x00\x00\x10\x00\x00\x00\x1c\x00\x00\x00\x1c" + rng.bytes(16 * 784)
    variants = {
        "mnist_empty": b"",
        "mnist_trunc": good[: len(good) // 2],
        "mnist_random": rng.bytes(2000),
        "mnist_zlib": b"\x1f\x8b\x08\x00" + rng.bytes(500),
        "mnist_1d": b"\x00\x00\x08\x01\x00\x00\x00\x04abcd",
        "mnist_zero": b"\x00\x00\x08\x03" + b"\x00\x00\x00\x00\x00\x00\x00\x1c\x00\x00\x00\x1c",
    }
    for name, train_bytes in variants.items():
        root = bad / name
        root.mkdir()
        (root / "train-images-idx3-ubyte").write_bytes(train_bytes)
        write_idx(root / "t10k-images-idx3-ubyte", test_images if name != "mnist_zero" else test_images[:0])


# --- read-only and full file systems --------------------------------------------------------------


def _mount_tmpfs(target: Path, options: str) -> str:
    """'' when mounted, else why not (not root, no CAP_SYS_ADMIN in this sandbox, no mount binary)."""
    mount = shutil.which("mount")
    if mount is None:
        return "no mount binary"
    result = subprocess.run([mount, "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True, text=True)
    return (
        "" if result.returncode == 0 else f"mount -t tmpfs refused here: {result.stderr.strip() or result.returncode}"
    )


def _umount(target: Path) -> None:
    subprocess.run(["umount", str(target)], capture_output=True, check=False)


@pytest.fixture(scope="module")
def readonly_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path | str]:
    """A directory nobody can write: chmod for a normal user, a read-only tmpfs for root."""
    target = tmp_path_factory.mktemp("readonly")
    if os.geteuid() != 0:
        target.chmod(0o555)
        yield target
        target.chmod(0o755)
        return
    why = _mount_tmpfs(target, "ro,size=64k")
    yield why or target
    if not why:
        _umount(target)


@pytest.fixture(scope="module")
def full_dir(tmp_path_factory: pytest.TempPathFactory, conv_art: Path) -> Iterator[Path | str]:
    """A tiny tmpfs holding an artifact dir and a PNG, then filled to the last byte."""
    target = tmp_path_factory.mktemp("fulldisk")
    why = _mount_tmpfs(target, f"size={FULL_DISK_BYTES}")
    if why:
        yield why
        return
    try:
        existing = _copy(conv_art, target / "existing")
        (existing / "samples.png").write_bytes(b"\x89PNG previous picture")
        with contextlib.suppress(OSError), open(target / "filler", "wb", buffering=0) as f:
            while True:
                f.write(b"\0" * 4096)
        yield target
    finally:
        _umount(target)


# --- running a row --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, conv_run: Path, mlp_run: Path, conv_art: Path) -> Path:
    root = tmp_path_factory.mktemp("bad_inputs")
    run, art = _copy(conv_run, root / "run"), _copy(conv_art, root / "art")
    _copy(mlp_run, root / "mlp")
    make_bad_files(root / "bad", run, art)
    return root


def snapshot(*roots: Path) -> dict[str, str]:
    files = {}
    for root in roots:
        for path in sorted(root.rglob("*")):
            if path.is_file() and not path.is_symlink() and path.name not in ("filler", LOCK_FILE):
                files[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return files


def leftovers(*roots: Path) -> list[str]:
    """Temp files of atomic writes, partial downloads and export staging dirs: none may outlive a command."""
    pattern = re.compile(r"(\.tmp|\.part|\.staging-\w+)$")
    return [str(p) for root in roots for p in root.rglob("*") if pattern.search(p.name)]


def _requirement(needs: str, readonly: Path | str, full: Path | str) -> str:
    """'' when the row can run here, else the reason it is skipped."""
    if needs == "readonly":
        return readonly if isinstance(readonly, str) else ""
    if needs == "fulldisk":
        return full if isinstance(full, str) else ""
    if needs == "no-tensorrt":
        from vaekit.runtimes.registry import BACKENDS

        return "" if BACKENDS["trt"].status("cuda") else "TensorRT works here, so --trt is not a bad input"
    if needs == "no-cuda":
        from vaekit.runtimes.registry import BACKENDS

        return "" if BACKENDS["onnxrt"].status("cuda") else "CUDA works here, so --device cuda is not a bad input"
    return ""


def assert_refused(code: int, stderr: str, pattern: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code != 0, f"exit code 0; stderr: {stderr!r}"
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, f"{len(lines)} lines on stderr: {stderr!r}"
    assert re.search(pattern, lines[0]), f"{lines[0]!r} does not name the problem ({pattern!r})"


def _params() -> list[object]:
    params = []
    for name, row in ROWS.items():
        marks = [pytest.mark.xfail(strict=True, reason=row.bug)] if row.bug else []
        params.append(pytest.param(row, id=name, marks=marks))
    return params


@pytest.mark.parametrize("row", _params())
def test_bad_input_is_refused_in_one_line(
    row: Row,
    workspace: Path,
    tmp_path: Path,
    readonly_dir: Path | str,
    full_dir: Path | str,
    mnist_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    existing = _copy(workspace / "art", tmp_path / "existing")
    (existing / "samples.png").write_bytes(b"\x89PNG previous picture")
    places = {
        "run": str(workspace / "run"),
        "mlp": str(workspace / "mlp"),
        "art": str(workspace / "art"),
        "bad": str(workspace / "bad"),
        "out": str(tmp_path),
        "png": str(existing / "samples.png"),
        "ro": str(readonly_dir),
        "full": str(full_dir),
        "mnist_args": f"--data mnist:{mnist_dir} --latent-dim 4 --hidden-dims 8,16,16,16 --epochs 1 --device cpu",
    }
    skip = _requirement(row.needs, readonly_dir, full_dir)
    if skip:
        pytest.skip(skip)
    for module in filter(None, row.without.split(",")):
        monkeypatch.setitem(sys.modules, module, None)  # `import module` now fails, as on a partial install
    watched = [workspace, tmp_path] + ([full_dir] if isinstance(full_dir, Path) else [])
    before, temps_before = snapshot(*watched), set(leftovers(*watched))
    args = shlex.split(row.args.format(**places))

    result = CliRunner().invoke(app, args)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"uncaught {type(result.exception).__name__}: {result.exception}")
    assert_refused(result.exit_code, result.stderr, row.expect)
    if row.sub:
        env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK")}
        proc = subprocess.run(
            [sys.executable, "-m", "vaekit", *args], capture_output=True, text=True, env=env, timeout=120
        )
        assert_refused(proc.returncode, proc.stderr, row.expect)

    after = snapshot(*watched)
    changed = [p for p, digest in before.items() if after.get(p) != digest]
    assert changed == [], f"pre-existing files changed or removed: {changed}"
    left = sorted(set(leftovers(*watched)) - temps_before)
    for path in left:  # clean up before failing, so one leaky command does not fail the rows after it
        shutil.rmtree(path) if Path(path).is_dir() else Path(path).unlink()
    assert left == [], f"left behind: {left}"


def test_the_matrix_covers_every_command() -> None:
    """A new command must get rows here; the commands of the table are the app's own."""
    commands = {info.name or (info.callback.__name__ if info.callback else "") for info in app.registered_commands}
    covered = {row.args.split()[0] for row in ROWS.values()}
    assert commands - {"doctor"} <= covered, commands - covered
