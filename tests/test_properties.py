"""Property tests of the runtime interface's input checks (runtimes/base.py), on a stub backend and on ONNX Runtime.

The claim under test: whatever a caller passes, `encode`/`decode` either run with the right output shapes
or raise InputError (a ValueError) that names what was expected and what was given — never a backend
error, a crash, or a silent broadcast.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from vaekit.runtimes.base import ArtifactInfo, Decoder, Encoder, InputError

LATENT = 4
IMAGE = (1, 16, 16)  # the conv_art fixture's shapes, so one set of strategies covers both backends
MAX_BATCH = 8
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ORT = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def stub_info(role: str) -> ArtifactInfo:
    return ArtifactInfo(role, LATENT, IMAGE, (0.0, 1.0), "bernoulli", "fp32", "stub", "cpu", MAX_BATCH)  # type: ignore[arg-type]


class StubEncoder(Encoder):
    """Records what reached the backend: the base class must hand over only checked, contiguous float32."""

    def __init__(self) -> None:
        self.info = stub_info("encoder")
        self.seen: list[np.ndarray] = []

    def _encode(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.seen.append(images)
        flat = images.reshape(len(images), -1)
        return flat[:, :LATENT], -flat[:, :LATENT]


class StubDecoder(Decoder):
    def __init__(self) -> None:
        self.info = stub_info("decoder")
        self.seen: list[np.ndarray] = []

    def _decode(self, z: np.ndarray) -> np.ndarray:
        self.seen.append(z)
        return np.broadcast_to(z[:, :1, None, None], (len(z), *IMAGE)).copy()


@pytest.fixture(scope="module")
def ort_pair(conv_art: Path) -> tuple[Encoder, Decoder]:
    from vaekit.runtimes import load_decoder, load_encoder

    return load_encoder(conv_art / "encoder.onnx"), load_decoder(conv_art / "decoder.onnx")


def shape_text(shape: tuple[int, ...]) -> str:
    return "(N, " + ", ".join(map(str, shape)) + ")"


finite = st.floats(-10, 10, width=32, allow_nan=False)
batches = st.integers(1, MAX_BATCH)
valid_z = batches.flatmap(lambda n: hnp.arrays(np.float32, (n, LATENT), elements=finite))
valid_images = batches.flatmap(lambda n: hnp.arrays(np.float32, (n, *IMAGE), elements=st.floats(0, 1, width=32)))


@st.composite
def wrong_shapes(draw: st.DrawFn, expected: tuple[int, ...]) -> tuple[int, ...]:
    """A shape of any rank (0..5) other than (n, *expected) for a batch n inside the valid range."""
    shape = tuple(draw(st.lists(st.integers(0, 12), min_size=0, max_size=5)))
    if len(shape) == len(expected) + 1 and shape[1:] == expected and 1 <= shape[0] <= MAX_BATCH:
        shape = (*shape, 1)
    return shape


@st.composite
def with_non_finite(draw: st.DrawFn, arrays: st.SearchStrategy[np.ndarray]) -> np.ndarray:
    array = draw(arrays).copy()
    flat = array.reshape(-1)
    flat[draw(st.integers(0, flat.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    return array


wrong_dtypes = st.sampled_from([np.float64, np.float16, np.int32, np.int64, np.uint8, np.bool_, np.complex64])


# --- the stub backend: the base class alone ---------------------------------------------------------


@FAST
@given(z=valid_z, step=st.integers(1, 3))
def test_valid_z_passes_through_with_the_right_shape(z: np.ndarray, step: int) -> None:
    decoder = StubDecoder()
    view = np.repeat(z, step, axis=1)[:, ::step]  # a strided view: same values, not contiguous for step > 1
    before = view.copy()
    images = decoder.decode(view)
    assert images.shape == (len(z), *IMAGE) and images.dtype == np.float32
    assert decoder.seen[0].flags.c_contiguous and np.array_equal(decoder.seen[0], z)
    assert np.array_equal(view, before)  # the caller's array is not touched


@FAST
@given(images=valid_images)
def test_valid_images_pass_through_with_the_right_shape(images: np.ndarray) -> None:
    encoder = StubEncoder()
    mu, log_var = encoder.encode(images)
    assert mu.shape == log_var.shape == (len(images), LATENT)
    assert mu.dtype == log_var.dtype == np.float32
    assert np.array_equal(encoder.seen[0], images)


@FAST
@given(shape=wrong_shapes((LATENT,)))
def test_any_wrong_z_shape_names_expected_and_given(shape: tuple[int, ...]) -> None:
    decoder = StubDecoder()
    with pytest.raises(ValueError) as info:
        decoder.decode(np.zeros(shape, dtype=np.float32))
    assert isinstance(info.value, InputError)
    message = str(info.value)
    batch_problem = len(shape) == 2 and shape[1] == LATENT  # right row shape, batch outside 1..max
    expected = f"1..{MAX_BATCH}" if batch_problem else shape_text((LATENT,))
    assert expected in message and str(shape[0] if batch_problem else shape) in message, message
    assert decoder.seen == []  # the backend never saw it


@FAST
@given(shape=wrong_shapes(IMAGE))
def test_any_wrong_image_shape_names_expected_and_given(shape: tuple[int, ...]) -> None:
    encoder = StubEncoder()
    with pytest.raises(InputError) as info:
        encoder.encode(np.zeros(shape, dtype=np.float32))
    message = str(info.value)
    assert shape_text(IMAGE) in message or f"1..{MAX_BATCH}" in message, message
    assert encoder.seen == []


@FAST
@given(dtype=wrong_dtypes, n=batches)
def test_any_other_dtype_is_refused_by_name(dtype: type, n: int) -> None:
    decoder = StubDecoder()
    with pytest.raises(InputError, match=rf"float32, got {np.dtype(dtype).name}"):
        decoder.decode(np.zeros((n, LATENT), dtype=dtype))


@FAST
@given(n=st.one_of(st.just(0), st.integers(MAX_BATCH + 1, 4 * MAX_BATCH)))
def test_batch_outside_the_profile_is_refused(n: int) -> None:
    with pytest.raises(InputError, match=rf"batch {n} is outside .* 1\.\.{MAX_BATCH}"):
        StubDecoder().decode(np.zeros((n, LATENT), dtype=np.float32))
    with pytest.raises(InputError, match=rf"batch {n} is outside .* 1\.\.{MAX_BATCH}"):
        StubEncoder().encode(np.zeros((n, *IMAGE), dtype=np.float32))


@FAST
@given(z=with_non_finite(valid_z), images=with_non_finite(valid_images))
def test_any_nan_or_inf_is_refused(z: np.ndarray, images: np.ndarray) -> None:
    with pytest.raises(InputError, match="NaN or Inf"):
        StubDecoder().decode(z)
    with pytest.raises(InputError, match="NaN or Inf"):
        StubEncoder().encode(images)


@FAST
@given(value=st.one_of(st.lists(st.floats(), max_size=4), st.none(), st.text(max_size=3), st.floats()))
def test_non_arrays_are_refused(value: object) -> None:
    with pytest.raises(InputError, match=re.escape(shape_text((LATENT,)))):
        StubDecoder().decode(value)  # type: ignore[arg-type]


# --- the real ONNX Runtime backend: the same checks stand in front of a real session ----------------


@ORT
@given(z=valid_z, images=valid_images)
def test_onnx_runtime_accepts_every_valid_batch(
    ort_pair: tuple[Encoder, Decoder], z: np.ndarray, images: np.ndarray
) -> None:
    encoder, decoder = ort_pair
    out = decoder.decode(z)
    assert out.shape == (len(z), *IMAGE) and out.dtype == np.float32 and np.isfinite(out).all()
    mu, log_var = encoder.encode(images)
    assert mu.shape == log_var.shape == (len(images), LATENT) and np.isfinite(mu).all()


@ORT
@given(
    bad=st.one_of(
        wrong_shapes((LATENT,)).map(lambda s: np.zeros(s, dtype=np.float32)),
        with_non_finite(valid_z),
        st.tuples(wrong_dtypes, batches).map(lambda t: np.zeros((t[1], LATENT), dtype=t[0])),
    )
)
def test_onnx_runtime_refuses_every_invalid_z(ort_pair: tuple[Encoder, Decoder], bad: np.ndarray) -> None:
    with pytest.raises(InputError):
        ort_pair[1].decode(bad)


@ORT
@given(
    bad=st.one_of(
        wrong_shapes(IMAGE).map(lambda s: np.zeros(s, dtype=np.float32)),
        with_non_finite(valid_images),
        st.tuples(wrong_dtypes, batches).map(lambda t: np.zeros((t[1], *IMAGE), dtype=t[0])),
    )
)
def test_onnx_runtime_refuses_every_invalid_image_batch(ort_pair: tuple[Encoder, Decoder], bad: np.ndarray) -> None:
    with pytest.raises(InputError):
        ort_pair[0].encode(bad)
