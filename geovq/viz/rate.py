"""The rate figure of a GridVAE: mean KL per latent dimension, against the activity threshold
and the capacity of the codebook it will feed."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def kl_per_dimension_figure(mean_kl, rate: dict, threshold: float):
    """Bars of each dimension's mean KL per position (sorted, log scale), a line at ``threshold``;
    the title reads the KL per position against ln K (``rate``: geovq.metrics.rate.rate_summary)."""
    kl = np.sort(np.asarray(mean_kl, dtype=np.float64))[::-1]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.08 * len(kl) + 2), 3.4))
    # A dimension at the prior has a KL of ~1e-6: floor it so the log scale shows a stub, not nothing.
    ax.bar(np.arange(len(kl)), np.maximum(kl, 1e-6), width=0.9, color="tab:blue")
    ax.axhline(threshold, color="tab:red", linestyle="--", linewidth=1, label=f"active: > {threshold} nats")
    ax.set_yscale("log")
    ax.set_xlabel("latent dimension (sorted by KL)")
    ax.set_ylabel("mean KL per position (nats)")
    ax.legend(loc="upper right", fontsize=8)
    ln_k = rate.get("ln_codebook_size")
    capacity = f" vs ln K = ln {round(math.exp(ln_k))} = {ln_k:.2f}" if ln_k is not None else ""
    ax.set_title(
        f"KL/position {rate['kl_per_position']:.2f} nats{capacity}; "
        f"{rate['active_dims']}/{rate['latent_dims']} dims active",
        fontsize=10,
    )
    fig.tight_layout()
    return fig
