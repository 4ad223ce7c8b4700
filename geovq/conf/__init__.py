# Makes the configs importable as the package geovq.conf: Hydra finds them through it when geovq is installed.
