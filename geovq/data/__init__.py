"""Data modules: images (torchvision data sets, folders of images), code grids, and images with their code grids."""

# The splits every data module holds, and every code-grid file.
SPLITS = ("train", "val", "test")
