"""Data modules: images (MNIST, Fashion-MNIST), code grids, and images with their code grids."""

# The splits every data module holds, and every code-grid file.
SPLITS = ("train", "val", "test")
