"""Planning: the config, the grid of cells, what a job asks of a cluster, the generated reference and the cost on paper. Torch-free: the Snakefile imports it."""
