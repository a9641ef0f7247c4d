"""Traversals a person can check a disentanglement score against, from any runtime's encoder and decoder.

Each row moves one latent and is labelled with the factor that latent carries (the largest share of a
factor's information, vaekit.disentangle) and its KL in nats, rows in order of KL: an edge artifact draws the
same picture `vaekit eval --disentanglement --png` draws from the checkpoint.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from vaekit.data import to_float
from vaekit.disentangle import Disentanglement, factor_data, score
from vaekit.errors import VaekitError
from vaekit.runtimes.base import Decoder, Encoder, in_batches
from vaekit.runtimes.generate import AT_ZERO, decode_all, generate_picture, traversal_latents

TRAVERSE_STEPS = 9  # columns of a traversal picture: -3 to 3 in steps of 0.75


def score_encoder(encoder: Encoder, spec: str) -> Disentanglement:
    """MIG and SAP of an artifact's posterior means over every image of a dataset with a factor table."""
    shape = encoder.info.image_shape
    data = factor_data(spec, shape[1])
    if data.images.shape[1:] != shape:
        raise VaekitError(f"--data {spec} has images of {data.images.shape[1:]}, the encoder takes {shape}")
    mu, log_var = in_batches(encoder.encode, to_float(data.images, encoder.info.value_range), encoder.info.max_batch)
    return score(mu, log_var, data.factors, data.names)


def by_kl(report: Disentanglement) -> list[int]:
    """Latent dimensions, the most informative (highest KL) first."""
    return [int(j) for j in np.argsort(-report.kl, kind="stable")]


def row_labels(dims: list[int], report: Disentanglement | None) -> list[str]:
    """'dim 3: 41% of x, KL 2.41 nats' per traversed dimension (the share of that factor's information it
    holds), or 'dim 3' without a score to read it from."""
    if report is None:
        return [f"dim {d}" for d in dims]
    labels = []
    for d in dims:
        factor = report.carried(d)
        what = f"{report.nmi[d].max():.0%} of {factor}" if factor else "inactive"
        labels.append(f"dim {d}: {what}, KL {report.kl[d]:.2f} nats")
    return labels


def around(report: Disentanglement | None) -> str:
    """How the title says where the rows start: the code of a real image, which decodes to a shape (z = 0 of a
    model trained on `shapes` often decodes to an empty canvas)."""
    if report is None:
        return AT_ZERO
    return f"stay at the posterior mean of image {report.centre_index} of the data"


def traversal_picture(
    decoder: Decoder, report: Disentanglement, steps: int = TRAVERSE_STEPS
) -> tuple[Image.Image, np.ndarray]:
    """Every latent dimension traversed around the centre image's code, in order of KL, labelled; returns the
    picture and the images."""
    z, dims = traversal_latents(decoder, decoder.info.latent_dim, steps, by_kl(report), report.centre)
    images = decode_all(decoder, z)
    labels = row_labels(dims, report)
    return generate_picture(images, decoder.info.value_range, 0, steps, labels, around(report)), images
