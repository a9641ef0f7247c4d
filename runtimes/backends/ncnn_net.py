"""ncnn backend: an `.ncnn.param` + `.ncnn.bin` net run through ncnn's Python binding (`ncnn.Net`), torch-free,
as on a phone or an ARM board; its sidecar `<name>.ncnn.param.json` carries vaekit's metadata.

ncnn has no batch axis: a batch runs image by image, one extractor each. ncnn computes in fp16 storage and
arithmetic by default wherever the CPU has the instructions (F16C on x86 included), so an fp32 net is run
with every reduced-precision option off, and an fp16 net with them on: the artifact computes what it says.
Its C++ parser trusts the file (a param naming a blob no layer writes, or a weight count the .bin lacks, is
a segfault), so a net is loaded only after both halves match the sidecar's sha256 and `check_net` has walked
the param, inferred every blob's shape from the input's and matched each layer's weights to the .bin.
"""

from __future__ import annotations

import importlib.util
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vaekit.errors import VaekitError
from vaekit.runtimes.artifacts import WITH_ARTICLE, Role, checked_sidecar, ncnn_bin, sidecar_metadata
from vaekit.runtimes.base import ArtifactInfo, Decoder, Encoder, metadata_to_info

LABEL = "ncnn"
INSTALL = "pip install 'vaekit[ncnn]' (a device) or 'vaekit[mobile]' (export)"
REDUCED = ("use_fp16_packed", "use_fp16_storage", "use_fp16_arithmetic", "use_bf16_storage", "use_bf16_packed")
BLOBS = {"encoder": ("in0", ("out0", "out1")), "decoder": ("in0", ("out0",))}  # what pnnx names them


def status(device: str) -> str:
    if importlib.util.find_spec("ncnn") is None:
        return f"ncnn not installed ({INSTALL})"
    return ""


MAGIC = "7767517"
FP16_TAG = 0x01306B47  # the 4-byte flag before an fp16 weight blob in a .bin (0: fp32)
ELEMENTWISE = {"ReLU", "Sigmoid", "TanH", "ELU", "Clip", "Swish", "HardSigmoid", "HardSwish", "Mish", "GELU"}
LIMIT = 1 << 26  # elements in one blob or weight: far above any vaekit model, far below a hostile count
Shape = tuple[int, ...]  # (w,), (h, w) or (c, h, w), as ncnn's Mat holds them


@dataclass(frozen=True)
class NetLayer:
    """One layer of a checked net: what layerwise parity compares (its first output blob and that blob's shape)."""

    name: str
    kind: str
    blob: str
    shape: Shape
    weighted: bool


def _bad(path: Path, why: str) -> VaekitError:
    return VaekitError(f"{path.name} is not an ncnn net vaekit can load: {why}")


def _params(tokens: list[str]) -> dict[int, list[float]]:
    """`k=v` and array `-233xx=n,v1,..,vn` params (the array under key xx, ncnn's own convention)."""
    found: dict[int, list[float]] = {}
    for token in tokens:
        key, sep, value = token.partition("=")
        k, parts = int(key), value.split(",")
        if not sep or k in found or not -23400 < k < 32:
            raise ValueError(f"param {token!r}")
        if k <= -23300:
            if int(parts[0]) != len(parts) - 1:
                raise ValueError(f"array param {token!r}")
            found[-k - 23300] = [float(v) for v in parts[1:]]
        else:
            found[k] = [float(value)] if len(parts) == 1 else []
            if not found[k] or not math.isfinite(found[k][0]):
                raise ValueError(f"param {token!r}")
    return found


def _int(params: dict[int, list[float]], key: int, default: int, lo: int, hi: int) -> int:
    value = params.get(key, [default])[0]
    if value != int(value) or not lo <= value <= hi:
        raise ValueError(f"param {key}={value:g} outside {lo}..{hi}")
    return int(value)


def _conv(kind: str, p: dict[int, list[float]], shape: Shape) -> tuple[Shape, int, int]:
    """(Convolution | Deconvolution) -> output shape, weight count, bias count."""
    out, kw, kh = _int(p, 0, 0, 1, 65536), _int(p, 1, 0, 1, 64), _int(p, 11, _int(p, 1, 0, 1, 64), 1, 64)
    dw, dh = _int(p, 2, 1, 1, 64), _int(p, 12, _int(p, 2, 1, 1, 64), 1, 64)
    sw, sh = _int(p, 3, 1, 1, 64), _int(p, 13, _int(p, 3, 1, 1, 64), 1, 64)
    pl, pt = _int(p, 4, 0, 0, 64), _int(p, 14, _int(p, 4, 0, 0, 64), 0, 64)
    pr, pb = _int(p, 15, pl, 0, 64), _int(p, 16, pt, 0, 64)
    weights, bias = _int(p, 6, 0, 1, LIMIT), _int(p, 5, 0, 0, 1) * out
    if len(shape) != 3 or weights != out * kw * kh * shape[0]:
        raise ValueError(f"{kind} of {weights} weights on a {shape} blob")
    _, h, w = shape
    if kind == "Convolution":
        oh, ow = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1, (w + pl + pr - dw * (kw - 1) - 1) // sw + 1
    else:
        oh = (h - 1) * sh + dh * (kh - 1) + 1 - pt - pb + _int(p, 19, 0, 0, 64)
        ow = (w - 1) * sw + dw * (kw - 1) + 1 - pl - pr + _int(p, 18, 0, 0, 64)
    if oh < 1 or ow < 1 or out * oh * ow > LIMIT:
        raise ValueError(f"{kind} output {out}x{oh}x{ow}")
    return (out, oh, ow), weights, bias


def _reshape(p: dict[int, list[float]], shape: Shape) -> Shape:
    total = math.prod(shape)
    dims = [_int(p, k, -233, -233, LIMIT) for k in (2, 1, 0)]  # c, h, w; -233: absent, -1: inferred
    dims = [d for d in dims if d != -233] or [total]
    known = math.prod(d for d in dims if d != -1)
    if dims.count(-1) > 1 or 0 in dims or known == 0 or total % known:
        raise ValueError(f"Reshape of {shape} to {dims}")
    new = tuple(total // known if d == -1 else d for d in dims)
    if math.prod(new) != total:
        raise ValueError(f"Reshape of {shape} to {new}")
    return new


def _layer(kind: str, p: dict[int, list[float]], shape: Shape) -> tuple[Shape, int, int]:
    """One layer's output shape, weight count and bias count, or ValueError for anything vaekit never writes."""
    if kind in ("Convolution", "Deconvolution"):
        return _conv(kind, p, shape)
    if kind == "InnerProduct":
        out, weights = _int(p, 0, 0, 1, 65536), _int(p, 2, 0, 1, LIMIT)
        if weights != out * math.prod(shape):
            raise ValueError(f"InnerProduct of {weights} weights on a {shape} blob")
        return (out,), weights, _int(p, 1, 0, 0, 1) * out
    if kind == "Reshape":
        return _reshape(p, shape), 0, 0
    if kind in ELEMENTWISE or kind == "Split":
        return shape, 0, 0
    raise ValueError(f"layer type {kind!r} is not one vaekit writes")


def _weights_end(data: bytes, offset: int, count: int, precision: str) -> int:
    """Where a flagged weight blob of `count` values, stored in `precision`, ends in the .bin."""
    if offset + 4 > len(data):
        raise ValueError(".bin ends before a layer's weights")
    (flag,) = struct.unpack_from("<I", data, offset)
    if (precision, flag) not in (("fp32", 0), ("fp16", FP16_TAG)):
        raise ValueError(f"weight flag {flag:#x} in a {precision} net")
    return offset + 4 + (4 * count if flag == 0 else (2 * count + 3) // 4 * 4)


def check_net(path: Path, data: bytes, info: ArtifactInfo) -> list[NetLayer]:
    """Walk the param as ncnn would: counts, blob wiring, every blob's shape from the input's, and each weighted
    layer's share of the .bin (`data`), so nothing ncnn's parser would crash on reaches it. Returns the layers."""
    outputs = BLOBS[info.role][1]
    shape_in: Shape = info.image_shape if info.role == "encoder" else (info.latent_dim,)
    try:
        lines = [line.split() for line in path.read_text(encoding="ascii").splitlines() if line.strip()]
        if not lines or lines[0] != [MAGIC] or len(lines) < 2 or len(lines[1]) != 2:
            raise ValueError(f"no {MAGIC} header and layer/blob counts")
        n_layers, n_blobs = int(lines[1][0]), int(lines[1][1])
        if n_layers != len(lines) - 2 or not 1 <= n_blobs <= 4096:
            raise ValueError(f"{len(lines) - 2} layers listed, {n_layers} declared")
        shapes: dict[str, Shape] = {}
        layers: list[NetLayer] = []
        offset = 0
        for tokens in lines[2:]:
            kind, n_in, n_out = tokens[0], int(tokens[2]), int(tokens[3])
            blobs = tokens[4 : 4 + n_in + n_out]
            if not (0 <= n_in <= 1 and 1 <= n_out <= 8) or len(blobs) != n_in + n_out or any("=" in b for b in blobs):
                raise ValueError(f"layer {tokens[1]!r} blob list")
            params = _params(tokens[4 + n_in + n_out :])
            if kind == "Input":
                if n_in or shapes:
                    raise ValueError("an Input that is not the first layer")
                new, weights, bias = shape_in, 0, 0
            else:
                if n_in != 1 or blobs[0] not in shapes:
                    raise ValueError(f"layer {tokens[1]!r} reads a blob no earlier layer writes")
                new, weights, bias = _layer(kind, params, shapes[blobs[0]])
            if weights:
                offset = _weights_end(data, offset, weights, info.precision) + 4 * bias
            for blob in blobs[n_in:]:
                if blob in shapes:
                    raise ValueError(f"blob {blob!r} written twice")
                shapes[blob] = new
            layers.append(NetLayer(tokens[1], kind, blobs[n_in], new, bool(weights)))
        if len(shapes) != n_blobs or "in0" not in shapes or any(o not in shapes for o in outputs):
            raise ValueError(f"{len(shapes)} blobs for {n_blobs} declared, or no in0 / {', '.join(outputs)}")
        if offset != len(data):
            raise ValueError(f"the layers need {offset} bytes of weights, the .bin has {len(data)}")
        expected = (info.latent_dim,) if info.role == "encoder" else info.image_shape
        wrong = [f"{o} {shapes[o]}" for o in outputs if shapes[o] != expected]
        if wrong:
            raise ValueError(f"outputs {', '.join(wrong)} where the sidecar says {expected}")
        return layers
    except (ValueError, IndexError, UnicodeDecodeError, OSError, OverflowError) as exc:
        raise _bad(path, str(exc)) from None


def _info(path: Path, sidecar: dict[str, Any]) -> ArtifactInfo:
    return metadata_to_info(sidecar["graph_metadata"], backend=LABEL, device="cpu", path=str(path))


class NcnnRunner:
    """One loaded net; each image gets its own extractor (they are cheap and hold that image's blobs)."""

    def __init__(self, path: Path, role: Role, threads: int | None) -> None:
        self.info = _info(path, checked_sidecar(path))
        if self.info.role != role:
            raise VaekitError(f"{path} is {WITH_ARTICLE[self.info.role]} net, not {WITH_ARTICLE[role]}")
        try:
            import ncnn
        except ImportError:
            raise VaekitError(f"ncnn is not installed: {INSTALL}") from None
        self.ncnn, self.net = ncnn, ncnn.Net()
        for option in REDUCED:
            if hasattr(self.net.opt, option):
                setattr(self.net.opt, option, self.info.precision == "fp16")
        if threads:
            self.net.opt.num_threads = threads
        self.layers = check_net(path, ncnn_bin(path).read_bytes(), self.info)
        if self.net.load_param(str(path)) != 0 or self.net.load_model(str(ncnn_bin(path))) != 0:
            raise VaekitError(f"ncnn cannot load {path.name} and {ncnn_bin(path).name}: re-export")
        self.input, self.outputs = BLOBS[role]
        self.sizes = {layer.blob: math.prod(layer.shape) for layer in self.layers}  # what each blob must hold

    def run(self, array: np.ndarray, blobs: tuple[str, ...] = ()) -> list[np.ndarray]:
        """The outputs (then `blobs`, intermediate ones) for each image of the batch, stacked."""
        names = (*self.outputs, *blobs)
        results: list[list[np.ndarray]] = [[] for _ in names]
        for item in array:
            extractor = self.net.create_extractor()
            if blobs:  # light mode frees each blob once read: layerwise reads them all
                extractor.set_light_mode(False)
            extractor.input(self.input, self.ncnn.Mat(np.ascontiguousarray(item)))
            for name, found in zip(names, results, strict=True):
                code, mat = extractor.extract(name)
                if code != 0:
                    raise VaekitError(f"ncnn failed to run {Path(self.info.path).name}: no blob {name} (code {code})")
                found.append(np.array(mat))
                if found[-1].size != self.sizes.get(name):  # check_net inferred it: a net that lied about its shapes
                    raise VaekitError(f"ncnn returned {found[-1].shape} from {Path(self.info.path).name}")
        return [np.stack(found).astype(np.float32, copy=False) for found in results]


class NcnnEncoder(Encoder):
    def __init__(self, runner: NcnnRunner) -> None:
        self.runner, self.info = runner, runner.info

    def _encode(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mu, log_var = self.runner.run(images)
        return mu.reshape(len(images), -1), log_var.reshape(len(images), -1)


class NcnnDecoder(Decoder):
    def __init__(self, runner: NcnnRunner) -> None:
        self.runner, self.info = runner, runner.info

    def _decode(self, z: np.ndarray) -> np.ndarray:
        return self.runner.run(z)[0].reshape(len(z), *self.info.image_shape)


def load(path: Path, role: Role, device: str, threads: int | None = None) -> Encoder | Decoder:
    """threads: ncnn's worker threads (default: every core)."""
    runner = NcnnRunner(path, role, threads)
    return NcnnEncoder(runner) if role == "encoder" else NcnnDecoder(runner)


def capture_tensors(
    path: Path, device: str, names: list[str], x: np.ndarray, threads: int | None = None
) -> dict[str, np.ndarray]:
    """ncnn's value of each blob in `names` (and of the outputs) for layerwise parity: ncnn exposes every blob."""
    runner = NcnnRunner(path, sidecar_metadata(path)["graph_metadata"]["role"], threads)
    wanted = tuple(n for n in dict.fromkeys(names) if n not in runner.outputs)
    values = runner.run(x, wanted)
    shapes = {layer.blob: layer.shape for layer in runner.layers}
    names_out = (*runner.outputs, *wanted)
    return {n: v.reshape(len(x), *shapes[n]) for n, v in zip(names_out, values, strict=True)}


def describe(path: Path, role: Role = "decoder") -> ArtifactInfo:
    return _info(path, sidecar_metadata(path))
