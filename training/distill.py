"""distill: the static embedding model (model2vec) distilled from the fine-tuned backbone.

``python -m training.distill`` passes every token of the backbone's vocabulary through the
LoRA-tuned encoder (``models/classifier/merged``, or the untuned base model with
``distill.source: base``), reduces the token vectors with PCA to ``pca_dims`` and weights them by
token frequency (model2vec's recipe), and writes ``models/static/`` -- ``model.safetensors``
(the ``embeddings`` table), ``tokenizer.json`` and ``config.json``: what
:class:`router.classifier.StaticEncoder` reads (no model2vec needed at serve time).

Why: on this CPU a request's MiniLM pass costs 15-30 ms, which caps the router well below
LiteLLM's proxy under load; a static embedding costs ~0.2 ms and, distilled from the tuned
backbone, carried the same routing signal on the seed data (study and ``metrics/calibrate.json``).
The backbone's tuning reaches the static model through its token vectors.

Writes ``metrics/distill.json`` (vocabulary size, dimensions, seconds).
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from training.params import DistillParams, ParamsError, load_params
from training.paths import MERGED, STATIC, metrics_file

logger = logging.getLogger(__name__)

METRICS = metrics_file("distill")


class DistillError(ValueError):
    """The backbone cannot be distilled (not an encoder with a fast tokenizer, no weights...)."""


def distill(source: Path | str, out: Path, params: DistillParams) -> dict[str, Any]:
    """Distil ``source`` (a Hugging Face model directory) into ``out``; returns the metrics.

    The sequence-classification head of a merged classifier is ignored: only the encoder's
    token vectors are distilled (``AutoModel`` loads the backbone without the head)."""
    from model2vec.distill import distill_from_model
    from transformers import AutoModel, AutoTokenizer

    started = time.perf_counter()
    try:
        model = AutoModel.from_pretrained(str(source), local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(str(source), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise DistillError(f"{source}: cannot load the backbone: {exc}") from exc
    if not getattr(tokenizer, "is_fast", False):
        raise DistillError(f"{source}: model2vec needs a fast (tokenizers) tokenizer")
    logger.info("distilling %s: %d tokens through the encoder (progress below)", source,
                len(tokenizer))
    static = distill_from_model(model, tokenizer, pca_dims=params.pca_dims,
                                sif_coefficient=params.sif_coefficient, device="cpu")
    if out.exists():
        shutil.rmtree(out)
    static.save_pretrained(str(out))
    vectors = static.embedding
    return {"source": str(source), "vocabulary": int(vectors.shape[0]),
            "dims": int(vectors.shape[1]), "pca_dims": params.pca_dims,
            "sif_coefficient": params.sif_coefficient,
            "seconds": round(time.perf_counter() - started, 1)}


def main() -> None:
    """The DVC stage: models/classifier/merged -> models/static/, metrics/distill.json."""
    from training.train import resolve_base_model

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        params = load_params()
        source = MERGED if params.distill.source == "trained" else Path(
            resolve_base_model(params.train.base_model))
        metrics = distill(source, STATIC, params.distill)
    except (ParamsError, DistillError, OSError) as exc:
        logger.error("distill: %s", exc)
        sys.exit(1)
    METRICS.parent.mkdir(parents=True, exist_ok=True)
    METRICS.write_text(json.dumps(metrics, indent=2) + "\n")
    logger.info("distill: %s", metrics)


if __name__ == "__main__":
    main()
