# Embedding cache: a frozen backbone's features of every image, once per (dataset, model).
# Frozen-backbone strategies (grid.CACHEABLE_KINDS) train all their folds and few-shot draws from it.


def embedding_inputs(w):
    inputs = {"store": f"results/data/{w.dataset}/images_{grid.model_img_size(config, w.model)}.npy"}
    if weights := model_weights(w.model):
        inputs["weights"] = weights
    return inputs


rule embeddings:
    input:
        unpack(embedding_inputs),
    output:
        "results/embeddings/{dataset}/{model}.npy",
    params:
        model=lambda w: to_json(grid.model_settings(config, w.model)),
        weights=optional("weights", "weights"),
        version=EMBEDDING_VERSION,
    threads: config["training"]["threads"]
    conda:
        "../../envs/ftbench.yaml"
    log:
        "results/logs/embeddings/{dataset}/{model}.log",
    shell:
        "HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 "
        "{FTBENCH} embed --model {params.model:q} --store {input.store} {params.weights} --threads {threads} "
        "--out {output} 2> {log}"
