"""Training: the embedding cache, a cell, its loop, a job of cells, and a cell's metrics (embeddings and train stages)."""
