"""Steps every training recipe (``models/<task>/train.py``) shares around its own
training loop: the command line, logging and progress display, loading the data or
reporting it missing, the fp32 + int8 export, the torch-vs-onnxruntime parity check,
and the variants, baseline and files of the artifact directory.

Torch-free (``export_onnx`` imports torch itself); it displays with rich, so serving
code does not import it.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from models.datasets import DatasetMissing, add_data_dir_argument
from models.export import Latency, export_onnx, latency, quantize_int8
from models.manifest import MANIFEST_FILE, Manifest, Variant, sha256_file, shipped_models_dir

MODEL_CARD_FILE = "MODEL_CARD.md"

T = TypeVar("T")


# --- Command line, logging, progress ---------------------------------------------------


@dataclass(frozen=True)
class PathOption:
    """A path argument a recipe adds to the common ones (where its figure goes)."""

    flag: str
    default: Path
    help: str


def recipe_parser(
    doc: str | None, name: str, epochs: int, *extra: PathOption
) -> argparse.ArgumentParser:
    """``--out`` (the shipped ``models/artifacts/<name>``), ``--epochs``, ``--seed``, the
    recipe's ``extra`` paths, then ``--data-dir``; described by ``doc``'s first line."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)
    parser.add_argument("--out", type=Path, default=shipped_models_dir() / name)
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--seed", type=int, default=0)
    for option in extra:
        parser.add_argument(option.flag, type=Path, default=option.default, help=option.help)
    add_data_dir_argument(parser)
    return parser


def rich_logging(level: int = logging.INFO, *, drop_from: str | None = None) -> None:
    """Root logging to one rich handler at ``level``; records logged from a source file
    whose path contains ``drop_from`` are dropped."""
    handler = RichHandler(show_path=False)
    if drop_from is not None:
        handler.addFilter(lambda r: drop_from not in r.pathname)
    logging.basicConfig(level=level, format="%(message)s", handlers=[handler])


def training_progress(label: str, stats: str, console: Console | None = None) -> Progress:
    """A progress display of training epochs: ``label``, bar, ``n/total``, ``stats``
    (a format of the task's fields), elapsed time."""
    return Progress(
        TextColumn(f"[bold]{label}[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(stats),
        TimeElapsedColumn(),
        console=console,
    )


def load_or_report(
    load: Callable[[], T], error_prefix: str, console: Console | None = None
) -> T | None:
    """``load()``, or None once ``error_prefix`` and the reason are printed (to
    ``console``, else stderr) when the data set is not on this machine."""
    try:
        return load()
    except DatasetMissing as e:
        (console or Console(stderr=True)).print(f"{error_prefix} {e}")
        return None


# --- Export and checks -----------------------------------------------------------------


@contextmanager
def _root_logging_at(level: int) -> Iterator[None]:
    root = logging.getLogger()
    before = root.level
    root.setLevel(level)
    try:
        yield
    finally:
        root.setLevel(before)


def export_fp32_int8(
    model: Any,
    example: Any,
    fp32: Path,
    int8: Path,
    *,
    input_name: str,
    output_name: str,
    doc: str,
    quiet_quantizer: bool = False,
) -> None:
    """Export ``model`` to ``fp32`` (:func:`models.export.export_onnx`), then its int8
    quantization to ``int8``; ``quiet_quantizer`` keeps the quantizer's INFO and WARNING
    records (through the root logger) out of the log."""
    export_onnx(model, example, fp32, input_name=input_name, output_name=output_name, doc=doc)
    if quiet_quantizer:
        with _root_logging_at(logging.ERROR):
            quantize_int8(fp32, int8)
    else:
        quantize_int8(fp32, int8)


def check_parity(
    onnx_out: npt.NDArray[Any], torch_out: npt.NDArray[Any], tolerance: float, *, relative: bool
) -> float:
    """The largest difference between the onnxruntime and torch outputs (absolute, or
    relative to ``max(1, |torch|)``); raises RuntimeError at or above ``tolerance``."""
    diff = np.abs(onnx_out - torch_out)
    if relative:
        kind, parity = "rel", float(np.max(diff / np.maximum(1.0, np.abs(torch_out))))
    else:
        kind, parity = "abs", float(np.max(diff))
    if parity >= tolerance:
        raise RuntimeError(f"torch vs onnxruntime max {kind} diff {parity:.2e} >= {tolerance}")
    return parity


def latencies(
    model_dir: Path, files: Mapping[str, str], row: npt.NDArray[np.float32], input_name: str
) -> dict[str, Latency]:
    """One-row session.run latency of each variant, in ``files`` order."""
    return {v: latency(model_dir / f, row, input_name) for v, f in files.items()}


# --- The artifact directory ------------------------------------------------------------


def file_sizes(model_dir: Path, files: Mapping[str, str]) -> dict[str, int]:
    return {v: (model_dir / f).stat().st_size for v, f in files.items()}


def variants(model_dir: Path, files: Mapping[str, str]) -> dict[str, Variant]:
    """The manifest's variants: each file with its content hash and size."""
    sizes = file_sizes(model_dir, files)
    return {
        v: Variant(file=f, sha256=sha256_file(model_dir / f), size_bytes=sizes[v])
        for v, f in files.items()
    }


def feature_baseline(x: npt.NDArray[np.float32], decimals: int = 6) -> tuple[float, ...]:
    """The manifest's baseline: the training mean of every input value, flattened."""
    return tuple(round(float(v), decimals) for v in x.mean(axis=0, dtype=np.float64).ravel())


def write_artifacts(model_dir: Path, manifest: Manifest, card: str) -> None:
    """Write ``manifest.json`` and the model card beside it."""
    (model_dir / MANIFEST_FILE).write_text(manifest.to_json())
    (model_dir / MODEL_CARD_FILE).write_text(card)
