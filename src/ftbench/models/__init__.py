"""Models and strategies: the zoo, backbones, weights, adapters and how a cell's model is assembled (weights stage)."""
