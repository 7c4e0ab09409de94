"""ftbench: benchmark fine-tuning strategies of pretrained image models for prognosis from chest X-rays."""

__version__ = "0.1.0"

# Bump a constant when a change alters results, so Snakemake reruns exactly the outputs it feeds
# (rule params carry it). Refactors that keep results bit-identical leave them alone: nothing reruns.
DATA_VERSION = 2  # dataset tables and image stores (2: DICOM decoding, rejects.csv gains "kind")
SPLIT_VERSION = 2  # folds and few-shot draws (2: validation schemes; validation part carved per class)
EMBEDDING_VERSION = 1  # embedding caches of frozen backbones
TRAINING_VERSION = 2  # training cells (2: ViT adapters on block linears only, not the patch embedding)
REPORT_VERSION = 3  # summary tables, statistics and the report (2: cells table gains sizes, epochs, time split;
#   3: tests across tasks use one block per task, never folds; within a task, corrected and Bayesian correlated t)
