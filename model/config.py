"""Frozen run configurations, built by the CLI and recorded verbatim in metadata.json."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, get_args

Dataset = Literal["ml-1m", "ml-100k", "synthetic"]
Protocol = Literal["next-item", "rating"]
FieldSet = Literal["seed", "all", "history"]  # contract.FIELD_SETS
DATASETS: tuple[str, ...] = get_args(Dataset)
PROTOCOLS: tuple[str, ...] = get_args(Protocol)

SYNTHETIC_DEFAULTS = {"users": 2000, "movies": 1000, "ratings": 100_000, "seed": 42}
"""The one source of the synthetic dataset's size: ``afm-ctr synth``'s defaults, what
``--dataset synthetic`` generates without --data-dir, and compose's unless SYNTH_* say else."""


@dataclass(frozen=True)
class DataConfig:
    dataset: Dataset | None = None  # None with seed row files
    data_dir: Path | None = None  # extracted folder or archive; None: cache (download/synthesize)
    cache_dir: Path = Path.home() / ".cache" / "afm-ctr"
    protocol: Protocol = "next-item"
    negatives: int = 10
    seed: int = 42
    train_file: Path | None = None  # seed row files, the article's format
    valid_file: Path | None = None
    test_file: Path | None = None
    holdout_movies: float = 0.0  # share of movies kept out of training (cold-start check)


def as_record(config: DataConfig) -> dict[str, Any]:
    """``config`` as metadata.json and manifest.json record it: a JSON-able dict, paths as text."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()}


DEFAULT_OOV_RATE: dict[str, float] = {"seed": 0.0, "all": 0.05, "history": 0.05}
"""Measured on ML-100K next-item (docs/training.md#cold-start): with all fields, 0.05 brings
unknown users' mean score to the base rate (1.07x, from 1.96x) for -0.002 test AUC; seed-row
models, which know nothing of a new movie but its id, keep the plain recipe."""


@dataclass(frozen=True)
class AFMConfig:
    fields: FieldSet = (
        "all"  # "seed": six seed-row fields; "all": + year, genres; "history": + watched
    )
    embedding_dim: int = 16  # k
    attention_factor: int = 8  # t
    dropout: float = 0.0  # on the pooled vector; 0.2 and 0.5 measured worse (docs/training.md)
    l2_attention: float = 1e-4  # L2 on W only; 1e-2 and up leave no per-example attention
    l2_embedding: float = 0.0  # L2 on the embedding tables (DeepCTR's l2_reg_embedding)
    use_attention: bool = True  # False: the FM ablation, every pair weighs 1
    fm_init: bool = True  # h = 0 and the pooled vector scaled by P: the AFM starts as the FM
    pair_bias: bool = True  # c_ij: a learned score offset per pair (global pair importance)
    l2_pair_bias: float = 0.0  # L2 on c only
    oov_rate: float = 0.05  # share of rows per id group trained as out-of-vocabulary (afm.py)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 20
    batch_size: int = 4096
    learning_rate: float = 5e-3  # mean over seeds, both splits: the AFM's best (docs/training.md)
    patience: int = 2  # epochs without a better validation AUC before stopping
    seed: int = 42
