# Embedding cache: a frozen backbone's features of every image, once per (dataset, model).
# Frozen-backbone strategies (grid.CACHEABLE_KINDS) train all their folds and few-shot draws from it.


def embedding_store(w):
    return f"results/data/{w.dataset}/images_{grid.model_img_size(config, w.model)}.npy"


rule embeddings:
    input:
        store=embedding_store,
    output:
        "results/embeddings/{dataset}/{model}.npy",
    params:
        model=lambda w: to_json(grid.model_settings(config, w.model)),
        version=EMBEDDING_VERSION,
    threads: config["training"]["threads"]
    conda:
        "../../envs/ftbench.yaml"
    log:
        "results/logs/embeddings/{dataset}/{model}.log",
    shell:
        "{FTBENCH} embed --model {params.model:q} --store {input.store} --threads {threads} --out {output} 2> {log}"
