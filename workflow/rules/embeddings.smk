# Embedding cache: a frozen backbone's features of every image, once per (dataset, model).
# Frozen-backbone strategies (strategy kinds of mode cached or fitted) train every fold and draw from it,
# LP-FT and gradual unfreezing their frozen-backbone epochs.


rule embeddings:
    input:
        unpack(embedding_inputs),
    output:
        "results/embeddings/{dataset}/{model}.npy",
    log:
        "results/logs/embeddings/{dataset}/{model}.log",
    conda:
        "../../envs/ftbench.yaml"
    threads: config["training"]["threads"]
    params:
        model=lambda w: to_json(grid.model_settings(config, w.model)),
        args=lambda w: cli_args({"weights": grid.model_weights(config, w.model)}),
        version=EMBEDDING_VERSION,
    shell:
        "HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 "
        "python -m ftbench embed --model {params.model:q} --store {input.store} {params.args} --threads {threads} "
        "--out {output} 2> {log}"
