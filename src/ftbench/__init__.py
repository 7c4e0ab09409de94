"""ftbench: benchmark fine-tuning strategies of pretrained image models for prognosis from chest X-rays."""

__version__ = "0.1.0"

# Bump a constant when a change alters results, so Snakemake reruns exactly the outputs it feeds
# (rule params carry it). Refactors that keep results bit-identical leave them alone: nothing reruns.
# DATA_VERSION: dataset tables, image stores and task tables (2: DICOM decoding, rejects.csv gains "kind"; 3: duplicate
# images, placeholder patient ids and oversized images rejected, times read as numbers or ISO dates (time_kind),
# labels declared unknown, the data report's new counts; TCIA series read as their md5hashes.csv lists them;
# 4: time_source column, synthetic images on shuffled days, task rejects.csv, each patient's admission image by default;
# near-identical copies, NaN pixels and multi-page TIFFs rejected, labels only from declared values, copy_values)
DATA_VERSION = 4
SPLIT_VERSION = 3  # folds and few-shot draws (3: few-shot draws of K validation patients per class too;
#   2: validation schemes; validation part carved per class)
EMBEDDING_VERSION = 1  # embedding caches of frozen backbones
TRAINING_VERSION = 4  # training cells (4: metrics, threshold, early stopping and candidates on one prediction per
#   patient, image-level metrics as image_*; 3: IA3 on keys/values/MLP activation and CNN inputs, SSF after norms on
#   BatchNorm CNNs, CLIP ViT-L/14 as transformers tower, frozen-backbone epochs un-augmented, few-shot validation
#   on K labels, exact thresholds, AdaLoRA at its budget; 2: ViT adapters on block linears only)
REPORT_VERSION = 4  # summary tables, statistics and the report (2: cells table gains sizes, epochs, time split;
#   3: tests across tasks use one block per task, never folds; within a task, corrected and Bayesian correlated t;
#   4: bootstrap CIs, ROC, PR and calibration on one prediction per patient, image_* columns; one block per
#   cohort, Iman-Davenport's F, the reachable p, report.control, the hierarchical model, ties below 1e-12)
