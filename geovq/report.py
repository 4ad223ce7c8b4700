"""report.md, report.json and Figures 1-4 of a pipeline run (stage=pipeline).

Every figure is measured on held-out data and says so: reconstruction MSE over the whole test
split, prior NLL on the test code grids, Fréchet distances against the test images. The paper's
Table 1 is printed alongside; its MSE came from a single test batch and its perplexity from
training data.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from geovq.aposteriori import grid_to_rows
from geovq.artifacts import atomic_write_text, load_artifact, load_code_grids
from geovq.metrics.codebook import code_counts
from geovq.models.decoding import code_decoder
from geovq.models.inference import map_images
from geovq.models.io import load_model
from geovq.viz.images import image_rows_figure, save_figure
from geovq.viz.study import sample_panels_figure, tsne_figure, usage_figure

# Table 1 of the paper (MSE on one test batch; perplexity on training data).
PAPER_TABLE = {
    "A_geodesic": {"recon_mse": 0.016125, "utilization": 1.0, "prior_perplexity": 4.9448},
    "B_vqvae": {"recon_mse": 0.011385, "utilization": 0.117, "prior_perplexity": 4.2686},
}
TITLES = {"A_geodesic": "A: GridVAE + geodesic K-Medoids", "B_vqvae": "B: VQ-VAE (paper config)", "B_vqvae_ema": "B: VQ-VAE + EMA/init/restarts"}

COLUMNS = [
    ("recon MSE (test)", "recon/test_mse", "{:.5f}"),
    ("codes used", "codes/codes_used", "{:.0f}"),
    ("utilization", "codes/utilization", "{:.1%}"),
    ("code perplexity", "codes/perplexity", "{:.1f}"),
    ("prior NLL (test, nats/token)", "prior/test_nll", "{:.4f}"),
    ("prior perplexity (test)", "prior/test_perplexity", "{:.3f}"),
    ("unigram perplexity", "prior/unigram_perplexity", "{:.3f}"),
    ("bits/image (test)", "prior/test_bits_per_image", "{:.1f}"),
    ("FD (samples vs test)", "fidelity/fid", "{:.2f}"),
    ("classifier confidence", "fidelity/confidence", "{:.3f}"),
    ("digit entropy (nats)", "fidelity/class_entropy", "{:.3f}"),
]


def _fmt(template: str, value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return template.format(0.0 if abs(value) < 1e-9 else value)  # no "-0.000"


def write_report(pipe, methods: dict[str, str], out_dir: Path, figures: bool = True, tsne_points: int = 10000, images=None) -> dict:
    results = pipe.results
    evaluations = {m: json.loads(results[f"evaluate_{m}"].output.read_text()) for m in methods}
    times = {name: round(r.seconds, 1) for name, r in results.items()}
    fidelity_floor = next((e.get("fidelity/fid_floor") for e in evaluations.values() if "fidelity/fid_floor" in e), None)
    continuous = evaluations.get("A_geodesic", {}).get("recon/continuous_test_mse")
    classifier_accuracy = results["classifier"].metrics.get("test/accuracy")

    lines = [
        "# geovq report: a posteriori geodesic quantization vs end-to-end VQ-VAE",
        "",
        "All figures on held-out data: reconstruction MSE per pixel over the whole test split "
        f"({_n_test(results)} images); prior NLL on the test code grids; Fréchet distance (FD) of "
        "the project's MNIST classifier features between the samples and the test images.",
        "",
        "| method | " + " | ".join(title for title, _, _ in COLUMNS) + " |",
        "|---|" + "---|" * len(COLUMNS),
    ]
    for method, evaluation in evaluations.items():
        cells = [_fmt(fmt, evaluation.get(key)) for _, key, fmt in COLUMNS]
        lines.append(f"| {TITLES.get(method, method)} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"References: continuous GridVAE (posterior mean) test MSE {_fmt('{:.5f}', continuous)}; FD floor (training "
        f"vs test images) {_fmt('{:.2f}', fidelity_floor)}; classifier test accuracy {_fmt('{:.2%}', classifier_accuracy)}.",
        "",
        "The paper's Table 1 (MSE on a single test batch, perplexity on training data):",
        "",
        "| method | recon MSE | utilization | Transformer perplexity |",
        "|---|---|---|---|",
    ]
    for method, paper in PAPER_TABLE.items():
        lines.append(f"| {TITLES[method]} | {paper['recon_mse']} | {paper['utilization']:.1%} | {paper['prior_perplexity']} |")
    lines += ["", "Time of each step (seconds; reused steps show the time of the run that made them):", ""]
    lines += [f"- {name}: {seconds}" + (" (reused)" if results[name].reused else "") for name, seconds in times.items()]

    figure_files = []
    if figures:
        figure_files = write_figures(pipe, methods, out_dir, tsne_points, images)
        lines += ["", "Figures:", ""] + [f"![{name}]({name})" for name in figure_files]

    atomic_write_text(out_dir / "report.md", "\n".join(lines) + "\n")
    summary = {f"{method}/{key}": value for method, e in evaluations.items() for key, value in e.items() if isinstance(value, (int, float))}
    report = {"methods": evaluations, "paper_table_1": PAPER_TABLE, "step_seconds": times, "figures": figure_files,
              "references": {"continuous_test_mse": continuous, "fid_floor": fidelity_floor, "classifier_test_accuracy": classifier_accuracy},
              "summary": summary}
    atomic_write_text(out_dir / "report.json", json.dumps(report, indent=2) + "\n")
    return report


def _n_test(results) -> int:
    return len(load_code_grids(results["vqvae"].output).payload["splits"]["test"])


@torch.no_grad()
def write_figures(pipe, methods: dict[str, str], out_dir: Path, tsne_points: int, images) -> list[str]:
    results = pipe.results
    train_images, test_images = images
    files = []

    # Figure 1: the same latent vectors under geodesic K-Medoids and Euclidean K-Means.
    vae, _ = load_model(results["vae"].output, "grid_vae")
    geodesic = load_code_grids(results["quantize_geodesic"].output).payload["splits"]["train"]
    kmeans = load_code_grids(results["quantize_kmeans"].output).payload["splits"]["train"]
    cells = geodesic[0].numel()
    generator = torch.Generator().manual_seed(0)
    picked = torch.randperm(geodesic.numel(), generator=generator)[: min(tsne_points, geodesic.numel())]
    image_ids, cell_ids = picked // cells, picked % cells
    unique_images, inverse = torch.unique(image_ids, return_inverse=True)
    mu = map_images(vae, train_images[unique_images], lambda x: vae.encode(x)[0])
    vectors = grid_to_rows(mu).reshape(len(unique_images), cells, -1)[inverse.numpy(), cell_ids.numpy()]
    labelings = {"geodesic K-Medoids": geodesic.reshape(-1)[picked].numpy(), "Euclidean K-Means": kmeans.reshape(-1)[picked].numpy()}
    save_figure(tsne_figure(vectors, labelings), out_dir / "fig1_tsne_clusters.png")
    files.append("fig1_tsne_clusters.png")

    # Figure 2: codebook usage.
    usage = {}
    decoders = {}
    for method, codes_step in methods.items():
        codes = load_code_grids(results[codes_step].output)
        usage[TITLES[method]] = code_counts(codes.payload["splits"]["train"], codes.payload["n_codes"])
        decoders[method] = (code_decoder(codes)[0], codes.payload["splits"]["test"])
    save_figure(usage_figure(usage), out_dir / "fig2_codebook_usage.png")
    files.append("fig2_codebook_usage.png")

    # Figure 3: reconstructions of the same test images.
    n = 12
    rows = {"test images": test_images[:n], "GridVAE (continuous)": vae.reconstruct(test_images[:n])}
    for method, (decode, test_codes) in decoders.items():
        rows[TITLES[method]] = torch.sigmoid(decode(test_codes[:n]))
    save_figure(image_rows_figure(rows), out_dir / "fig3_reconstructions.png")
    files.append("fig3_reconstructions.png")

    # Figure 4: samples.
    samples = {TITLES[m]: load_artifact(results[f"sample_{m}"].output).payload["images"].float() / 255 for m in methods}
    save_figure(sample_panels_figure(samples), out_dir / "fig4_samples.png")
    files.append("fig4_samples.png")
    return files
