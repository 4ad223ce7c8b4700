"""How many images or code grids one inference batch holds (evaluation, features, decoding).

250, not 1000: glibc serves an allocation above 32 MiB with a fresh mmap, so at 1000 images every
batch's activations are new pages that the kernel must fault in and zero, and unmap afterwards
(measured: docs/design.md). Smaller batches stay in the allocator's reused memory; results change
at most in the last digits of float sums.
"""

INFERENCE_BATCH = 250
