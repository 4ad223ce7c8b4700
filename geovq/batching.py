"""How many images or code grids one inference batch holds (evaluation, features, decoding).

250, not 1000: glibc serves an allocation above 32 MiB with a fresh mmap, so at 1000 images every
batch's activations (a prior's 1000 x 49 x 256 MLP hidden, a classifier's 1000 x 32 x 28 x 28
maps) are new pages that the kernel must fault in and zero, and unmap afterwards. On the 2-core
VM this was most of the time: on one thread, the prior's NLL over 10k grids took 8.3 s at batch
1000 (3 s of it system time) and 5.7 s at 250; the classifier's features of 5k images 4.8 s
against 2.7 s. Smaller batches stay in the allocator's reused memory; results change at most in
the last digits of float sums.
"""

INFERENCE_BATCH = 250
