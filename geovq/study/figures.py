"""The figures of a study's report: the paper's Figures 1-4 (t-SNE of two clusterings, codebook
usage, reconstructions, samples), the priors' learning curves and every seed's figures of merit.

Figures 1-4 show the first seed; the learning curves and the per-seed figure show every seed.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torchvision.utils import make_grid  # noqa: E402

from geovq.aposteriori import grid_to_rows  # noqa: E402
from geovq.artifacts import load_artifact, load_code_grids  # noqa: E402
from geovq.metrics.codebook import code_counts  # noqa: E402
from geovq.models.decoding import code_decoder  # noqa: E402
from geovq.models.inference import map_images  # noqa: E402
from geovq.models.io import load_model  # noqa: E402
from geovq.study.results import prior_histories, spread  # noqa: E402
from geovq.study.spec import Study  # noqa: E402
from geovq.viz.images import image_rows_figure, save_figure  # noqa: E402


@torch.no_grad()
def write_figures(pipe, study: Study, seeds: list[int], out_dir: Path, options: dict, images, runs, capped: set[str]) -> list[str]:
    results = pipe.results
    seed = f"seed_{seeds[0]}"
    train_images, test_images = images
    files = []

    def save(fig, name: str) -> None:
        save_figure(fig, out_dir / name)
        files.append(name)

    # Figure 1: the same latent vectors under the two clusterings the study names.
    figure1 = options.get("figure1") or {}
    vae = None
    ran = study.steps_run
    if figure1.get("vae") in ran:
        vae, _ = load_model(results[f"{seed}/{figure1['vae']}"].output, "grid_vae")
    if vae is not None and all(figure1.get(k) in ran for k in ("geodesic", "kmeans")):
        save(clusterings_figure(vae, train_images, {
            "geodesic K-Medoids": results[f"{seed}/{figure1['geodesic']}"].output,
            "Euclidean K-Means": results[f"{seed}/{figure1['kmeans']}"].output,
        }, options.get("tsne_points", 10000)), "fig1_tsne_clusters.png")

    # Figure 2: codebook usage; Figure 3: reconstructions of the same test images.
    usage, decoded = {}, {"test images": test_images[:12]}
    if vae is not None:
        decoded["GridVAE (continuous)"] = vae.reconstruct(test_images[:12])
    for name, method in study.methods.items():
        codes = load_code_grids(results[f"{seed}/{method.codes}"].output)
        usage[method.title] = code_counts(codes.payload["splits"]["train"], codes.payload["n_codes"])
        decoded[method.title] = torch.sigmoid(code_decoder(codes)[0](codes.payload["splits"]["test"][:12]))
    save(usage_figure(usage), "fig2_codebook_usage.png")
    save(image_rows_figure(decoded), "fig3_reconstructions.png")

    if study.priors:
        # Figure 4: samples.
        samples = {m.title: load_artifact(results[f"{seed}/{study.derived_step(name, 'sample')}"].output).payload["images"].float() / 255
                   for name, m in study.methods.items()}
        save(sample_panels_figure(samples), "fig4_samples.png")

        # The priors' validation NLL per epoch, every seed.
        curves = {m.title: prior_histories(pipe, study, name, seeds) for name, m in study.methods.items()}
        save(learning_curves_figure(curves, "validation NLL (nats/token)", capped), "fig5_prior_val_nll.png")

    # Every seed's test MSE (and FD) per method: the gaps between methods against the seeds' spread.
    panels = per_seed_panels(study, runs)
    if panels:
        save(per_seed_figure(panels), "fig6_per_seed.png")
    return files


def clusterings_figure(vae, train_images, code_files: dict[str, Path], points: int):
    """t-SNE of a random sample of training latent vectors, coloured by each clustering."""
    labelings_full = {title: load_code_grids(path).payload["splits"]["train"] for title, path in code_files.items()}
    reference = next(iter(labelings_full.values()))
    cells = reference[0].numel()
    generator = torch.Generator().manual_seed(0)
    picked = torch.randperm(reference.numel(), generator=generator)[: min(points, reference.numel())]
    image_ids, cell_ids = picked // cells, picked % cells
    unique_images, inverse = torch.unique(image_ids, return_inverse=True)
    mu = map_images(vae, train_images[unique_images], lambda x: vae.encode(x)[0])
    vectors = grid_to_rows(mu).reshape(len(unique_images), cells, -1)[inverse.numpy(), cell_ids.numpy()]
    labelings = {title: grids.reshape(-1)[picked].numpy() for title, grids in labelings_full.items()}
    return tsne_figure(vectors, labelings)


def tsne_figure(vectors: np.ndarray, labelings: dict[str, np.ndarray], seed: int = 0):
    """One t-SNE embedding of ``vectors``, coloured by each labeling side by side (Figure 1)."""
    from sklearn.manifold import TSNE

    # n_jobs=-1: the exact neighbour search on every core (the same neighbours, the same embedding).
    embedding = TSNE(n_components=2, init="pca", perplexity=30, random_state=seed, n_jobs=-1).fit_transform(vectors)
    fig, axes = plt.subplots(1, len(labelings), figsize=(6 * len(labelings), 6), squeeze=False)
    for ax, (title, labels) in zip(axes[0], labelings.items()):
        ax.scatter(embedding[:, 0], embedding[:, 1], c=labels % 20, cmap="tab20", s=2, linewidths=0)
        ax.set_title(f"{title} ({len(np.unique(labels))} clusters)")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"t-SNE of {len(vectors)} GridVAE latent vectors")
    return fig


def usage_figure(counts: dict[str, np.ndarray]):
    """Per-code usage of each codebook, codes sorted by use (Figure 2)."""
    fig, axes = plt.subplots(1, len(counts), figsize=(5 * len(counts), 3.2), squeeze=False)
    for ax, (title, c) in zip(axes[0], counts.items()):
        c = np.sort(np.asarray(c))[::-1]
        share = c / max(c.sum(), 1)
        ax.bar(np.arange(len(c)), share, width=1.0, color="tab:blue")
        ax.set_title(f"{title}: {(c > 0).sum()}/{len(c)} codes used", fontsize=10)
        ax.set_xlabel("code (sorted by use)")
        ax.set_ylabel("share of training vectors")
        ax.set_yscale("log")
    fig.tight_layout()
    return fig


def sample_panels_figure(samples: dict[str, torch.Tensor], n: int = 64):
    """An 8x8 grid of samples for each method, side by side (Figure 4)."""
    fig, axes = plt.subplots(1, len(samples), figsize=(4.2 * len(samples), 4.6), squeeze=False)
    per_row = int(math.sqrt(n))
    for ax, (title, images) in zip(axes[0], samples.items()):
        grid = make_grid(images[:n].float(), nrow=per_row, padding=2, pad_value=0.5)
        ax.imshow(grid.permute(1, 2, 0).numpy(), vmin=0, vmax=1)
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    fig.tight_layout()
    return fig


def learning_curves_figure(curves: dict[str, list[list[float]]], ylabel: str, marked: set[str] = frozenset()):
    """One line per run (several per method: one per seed) of a value per epoch; methods in
    ``marked`` (e.g. priors that hit the epoch cap) are drawn dashed and say so."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (title, runs) in enumerate(curves.items()):
        style = "--" if title in marked else "-"
        for j, values in enumerate(runs):
            label = (f"{title} (hit the epoch cap)" if title in marked else title) if j == 0 else None
            ax.plot(range(1, len(values) + 1), values, style, marker="o", ms=3, color=colors[i % len(colors)], label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


# The per-seed figure's panels: (label, evaluation key). A key's 95% bootstrap interval, where the
# evaluation has one, is f"{key}_ci_low" / f"{key}_ci_high" (the FD's).
PER_SEED_PANELS = [("test MSE (all test images)", "recon/test_mse"), ("FD, samples vs test images [95% bootstrap]", "fidelity/fid")]


def per_seed_panels(study: Study, runs: dict[str, dict[int, dict]]) -> dict[str, dict[str, list[tuple]]]:
    """Per panel and method title: (seed, value, interval low, interval high) for each seed whose
    value is a finite number (no FD without priors: its panel is left out, as is one of NaNs only)."""
    panels = {}
    for label, key in PER_SEED_PANELS:
        points = {m.title: [(seed, run[key], run.get(f"{key}_ci_low"), run.get(f"{key}_ci_high"))
                            for seed, run in runs[name].items() if finite(run.get(key))]
                  for name, m in study.methods.items()}
        if any(points.values()):
            panels[label] = points
    return panels


def finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def per_seed_figure(panels: dict[str, dict[str, list[tuple]]]):
    """One panel per figure of merit, a row per method: a marker per seed (the same marker and
    colour for a seed in every row, its interval as a bar where it has one) and the mean over seeds
    as a black tick, with its n where a method lacks some seeds. Read a seed across the rows: the
    report's findings compare methods seed by seed (paired), so a gap that every seed shows can be
    separable even where the seeds of the two rows overlap."""
    titles = list(next(iter(panels.values())))
    seeds = sorted({point[0] for rows in panels.values() for points in rows.values() for point in points})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    markers = "osD^vP*Xh<>p"
    style = {seed: {"marker": markers[k % len(markers)], "color": colors[k % len(colors)]} for k, seed in enumerate(seeds)}
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 0.55 * len(titles) + 1.4), sharey=True, squeeze=False)
    for ax, (label, rows) in zip(axes[0], panels.items()):
        for row, title in enumerate(titles):
            points = rows.get(title, [])
            for seed, value, low, high in points:
                offset = (seeds.index(seed) - (len(seeds) - 1) / 2) * min(0.15, 0.6 / len(seeds))
                xerr = None if low is None or high is None else [[value - low], [high - value]]
                ax.errorbar(value, row + offset, xerr=xerr, fmt=style[seed]["marker"], color=style[seed]["color"], ms=5, capsize=2)
            if points:
                mean = spread([point[1] for point in points])[0]  # the report's mean over seeds
                ax.plot([mean, mean], [row - 0.3, row + 0.3], color="black", lw=1.5)
                if len(points) < len(seeds):
                    ax.annotate(f"n = {len(points)}", (mean, row - 0.3), fontsize=7, ha="center", va="bottom")
        ax.set_title(label, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
        ax.ticklabel_format(axis="x", style="sci", scilimits=(-2, 4))  # MSEs as x 1e-3, not 0.0025 0.0050 ...
    axes[0][0].set_yticks(range(len(titles)), titles, fontsize=9)
    axes[0][0].invert_yaxis()
    fig.suptitle(f"every seed (n = {len(seeds)}), the mean over seeds as a black tick", fontsize=10)
    fig.tight_layout()
    # Below the panels, where it covers neither a point nor the title (save_figure keeps it: bbox "tight").
    handles = [Line2D([], [], linestyle="none", ms=5, **style[seed]) for seed in seeds]
    fig.legend(handles, [f"seed {seed}" for seed in seeds], fontsize=8, loc="upper center", bbox_to_anchor=(0.5, 0.0),
               ncol=min(len(seeds), 10), frameon=False)
    return fig
