"""The figures of a pipeline report: the paper's Figures 1-4 and the priors' learning curves.

Figures 1-4 show the first seed; the learning curves show every seed.
"""

from __future__ import annotations

from pathlib import Path

import torch

from geovq.aposteriori import grid_to_rows
from geovq.artifacts import load_artifact, load_code_grids
from geovq.metrics.codebook import code_counts
from geovq.models.decoding import code_decoder
from geovq.models.inference import map_images
from geovq.models.io import load_model
from geovq.report import prior_histories
from geovq.study import Study
from geovq.viz.images import image_rows_figure, save_figure
from geovq.viz.study import (
    learning_curves_figure,
    sample_panels_figure,
    tsne_figure,
    usage_figure,
)


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
    if figure1.get("vae") in study.steps:
        vae, _ = load_model(results[f"{seed}/{figure1['vae']}"].output, "grid_vae")
    if vae is not None and all(figure1.get(k) in study.steps for k in ("geodesic", "kmeans")):
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

    # Figure 4: samples.
    samples = {m.title: load_artifact(results[f"{seed}/sample_{name}"].output).payload["images"].float() / 255
               for name, m in study.methods.items()}
    save(sample_panels_figure(samples), "fig4_samples.png")

    # The priors' validation NLL per epoch, every seed.
    curves = {m.title: prior_histories(pipe, name, seeds) for name, m in study.methods.items()}
    save(learning_curves_figure(curves, "validation NLL (nats/token)", capped), "fig5_prior_val_nll.png")
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
