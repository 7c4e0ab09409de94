# Weights stage: each selected pretrained model's weights, fetched once into resources/weights/<model>/ by a
# localrule (it runs where Snakemake runs: the login node, which has internet; compute nodes often have none).
# Training cells depend on the manifest it writes and load only local files, with the hubs forced offline.
# A model with `weights:` in its config uses that file or folder instead (no download); `pretrained: false`
# needs none. Pre-fetch everything:  snakemake --until weights   (or the target rule: snakemake all_weights)
from ftbench.models.zoo import resolve


localrules:
    weights,
    all_weights,


rule weights:
    output:
        "resources/weights/{model}/weights.json",
    log:
        "results/logs/weights/{model}.log",
    conda:
        "../../envs/ftbench.yaml"
    params:
        arch=lambda w: config["models"][w.model]["arch"],
        source=lambda w: resolve(config["models"][w.model]["arch"], pretrained=True).source,  # a new source refetches
    shell:
        "python -m ftbench weights --model {wildcards.model} --arch {params.arch:q} --out {output} 2> {log}"


rule all_weights:
    input:
        [path for model in config["benchmark"]["models"] if (path := grid.model_weights(config, model))],
