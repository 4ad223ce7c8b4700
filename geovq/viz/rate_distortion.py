"""The rate-distortion figure of a sweep of GridVAEs (experiment=rate_distortion): what each beta
costs in reconstruction, continuous and after each a posteriori quantizer, against the rate its
latents carry and the ln K a codebook can hold."""

from __future__ import annotations

import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# quantized/test_mse (callbacks=quantize) or quantized_<name>/test_mse (callbacks=quantize_both)
QUANTIZED_MSE = re.compile(r"quantized(?:_(\w+))?/test_mse")


def rate_distortion_figure(values: list[float], metrics: list[dict], axis: str):
    """Three panels against the swept value ``values`` (one run's ``metrics`` each, same order):
    test MSE of the continuous GridVAE and of every quantizer found; KL per grid position with a
    line at ln K; active latent dimensions out of all."""
    fig, (mse_ax, kl_ax, dims_ax) = plt.subplots(1, 3, figsize=(13, 3.6))
    mse_ax.plot(values, column(metrics, "test/mse"), marker="o", color="black", label="continuous")
    for key in sorted({k for m in metrics for k in m if QUANTIZED_MSE.fullmatch(k)}):
        label = QUANTIZED_MSE.fullmatch(key).group(1) or "quantized"
        mse_ax.plot(values, column(metrics, key), marker="o", label=label)
    mse_ax.set_ylabel("test MSE per pixel")
    mse_ax.set_title("distortion", fontsize=10)
    mse_ax.legend(fontsize=8)

    kl_ax.plot(values, column(metrics, "rate/kl_per_position"), marker="o", label="KL per position")
    ln_k = [m["rate/ln_codebook_size"] for m in metrics if "rate/ln_codebook_size" in m]
    if ln_k:  # the most one code of the codebook carries: above it, quantization must lose information
        kl_ax.axhline(ln_k[0], color="tab:red", linestyle="--", label=f"ln K = {ln_k[0]:.2f}")
    kl_ax.set_ylabel("nats per grid position")
    kl_ax.set_title("rate", fontsize=10)
    kl_ax.legend(fontsize=8)

    dims_ax.plot(values, column(metrics, "rate/active_dims"), marker="o")
    total = [m["rate/latent_dims"] for m in metrics if "rate/latent_dims" in m]
    dims_ax.set_title(f"active latent dims (of {int(total[0])})" if total else "active latent dims", fontsize=10)
    dims_ax.set_ylim(bottom=0)

    for ax in (mse_ax, kl_ax, dims_ax):
        ax.set_xlabel(axis)
        if all(v > 0 for v in values):
            ax.set_xscale("log")
        # the swept values themselves as ticks (0.03, 0.1, 0.3, 1), not powers of ten
        ax.set_xticks(values, [f"{v:g}" for v in values], minor=False)
        ax.minorticks_off()
        ax.grid(alpha=0.3)
    mse_ax.ticklabel_format(axis="y", useOffset=False)
    fig.tight_layout()
    return fig


def column(metrics: list[dict], key: str) -> list[float]:
    """One metric of every run, NaN (a gap in the line) where a run lacks it."""
    return [m.get(key, float("nan")) for m in metrics]
