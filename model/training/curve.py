"""The training curve PNG written beside each exported version."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from model.training.metrics import EpochRecord


def write_curve(history: Sequence[EpochRecord], best_epoch: int, path: Path) -> None:
    """AUC (train, valid) and loss (train, valid logloss) per epoch, the best epoch marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r.epoch for r in history]
    fig, (ax_auc, ax_loss) = plt.subplots(1, 2, figsize=(10, 4))
    ax_auc.plot(epochs, [r.train_auc for r in history], "o-", label="train AUC")
    ax_auc.plot(epochs, [r.valid_auc for r in history], "o-", label="validation AUC")
    ax_loss.plot(epochs, [r.train_loss for r in history], "o-", label="train loss")
    ax_loss.plot(epochs, [r.valid_logloss for r in history], "o-", label="validation logloss")
    for ax, title in ((ax_auc, "AUC"), (ax_loss, "binary cross-entropy")):
        ax.axvline(best_epoch, color="grey", linestyle=":", label=f"best epoch {best_epoch}")
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
