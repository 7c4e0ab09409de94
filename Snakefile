# ftbench: benchmark of fine-tuning strategies for prognosis from chest X-rays.
# Cheap to parse on purpose (no torch import): every Slurm job re-parses this file.
from pathlib import Path

from snakemake.utils import min_version

min_version("9.0")


configfile: str(Path(workflow.basedir) / "config.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/splits.smk"
include: "workflow/rules/weights.smk"
include: "workflow/rules/embeddings.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/external.smk"


rule all:
    input:
        "results/report/index.html",
