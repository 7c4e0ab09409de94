"""Bayesian hierarchical comparison of two strategies across cohorts (Corani, Benavoli, Demšar, Mangili, Zaffalon:
Statistical comparison of classifiers through Bayesian hierarchical modelling, Machine Learning 106, 2017).

The model is baycomp's ``HierarchicalTest`` (its Stan program ``hierarchical-t-test.stan``, the same data scaling
and hyper-priors), written in numpyro: baycomp runs it through pystan, which compiles the Stan program with the
system's C++ compiler (90 s here), needs ``pkg_resources`` (gone from setuptools 81) and samples one pair at a
time (4 s a pair), too slow for the ~1,000 pairs of a default-sized grid (docs/performance.md). Here the pairs of
a batch are independent blocks of one joint model, sampled together by NUTS; tests/test_stats.py checks the
probabilities against baycomp's on a fixed example.

For each cohort i the fold-level differences x_i (strategy b - a, scaled by their mean within-cohort SD) are
multivariate normal with mean delta_i and covariance sigma_i^2 M, M having 1 on the diagonal and rho = 1/n_i
elsewhere (folds share training patients, Nadeau and Bengio's correlation); delta_i ~ Student t(nu, delta_0,
std_0), with uniform priors on delta_0, std_0, sigma_i and a gamma prior on nu - 1. The result is the posterior
probability that the difference on a new cohort is below -rope (a better), within the rope, or above (b better):
for each posterior draw the t(nu, delta_0, std_0) masses of the three regions, and the share of draws in which
each region has the most mass, as baycomp's ``Posterior.probs``. Unlike baycomp, cohorts may have different
numbers of folds (each its own rho).
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats as ss

# ours: sampler settings (baycomp's default is 4 chains of 50,000 draws): 2 x 400 draws after 200 warm-up steps
# and trees of at most 2^7 steps keep the stage within its 2 minutes on a default-sized grid (docs/performance.md);
# the Monte Carlo error of a probability is then about 0.03 (tests/test_stats.py: within 0.05 of baycomp's)
CHAINS, WARMUP, DRAWS, TREE_DEPTH = 2, 200, 400, 7
BATCH = 64  # pairs sampled together (one compiled model per batch shape: pairs, cohorts, folds)
# baycomp's HierarchicalTest defaults: Gamma(alpha, beta) prior on nu - 1 with alpha in [1, 2], beta in [0.01, 0.1];
# the SDs' uniform priors reach 1,000 times the data's SD
ALPHA, BETA, UPPER_SIGMA = (1.0, 2.0), (0.01, 0.1), 1000.0
TOLERANCE = 1e-12  # ours: smaller differences are rounding noise (ftbench.analysis.stats.TOLERANCE)


def compilation_cache() -> str | None:
    """Where JAX keeps the sampler's compiled code between runs: ``FTBENCH_JAX_CACHE`` (empty: nowhere), else
    ``$XDG_CACHE_HOME/ftbench/jax/<this CPU>`` (``~/.cache``). Compiling is about a third of a stats run on the
    demo; the cached code is the same code, so the draws are the same. One folder per kind of CPU (its instruction
    sets): a home shared by a cluster's nodes never hands one node's machine code to another."""
    if "FTBENCH_JAX_CACHE" in os.environ:
        return os.environ["FTBENCH_JAX_CACHE"] or None
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ftbench" / "jax"
    return str(root / _cpu_kind())


@functools.cache
def _cpu_kind() -> str:
    """A short digest of the machine's architecture and CPU flags (Linux's /proc/cpuinfo; elsewhere the platform)."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        flags = platform.processor()
    return hashlib.sha256(f"{platform.machine()} {flags}".encode()).hexdigest()[:12]


@dataclass
class Prepared:
    """One pair's data as the model reads it: scaled differences (cohorts x folds, NaN-padded), the scaled rope,
    and the bounds of the uniform priors (|delta_0| <= max |x|, std_0 <= std_among x 1000, sigma <= std_within
    x 1000)."""

    diff: np.ndarray
    rope: float
    bounds: tuple[float, float, float]


def prepare(x: list[np.ndarray], y: list[np.ndarray], rope: float, seed: int = 0) -> Prepared | str:
    """baycomp's scaling of one pair: the differences y - x of each cohort's fold scores over the mean of the
    cohorts' SDs. A cohort whose differences do not vary (below :data:`TOLERANCE`) would give the model no
    scale: baycomp replaces them with symmetric noise within the rope around 0; here around their mean, so a
    constant difference keeps its size (ours). Returns a note instead when nothing varies anywhere."""
    diffs = [np.asarray(b, float) - np.asarray(a, float) for a, b in zip(x, y)]
    sd = float(np.mean([d.std() for d in diffs]))
    if sd < TOLERANCE:
        return "the same difference in every fold of every cohort: no variance to model"
    rope, diffs = rope / sd, [d / sd for d in diffs]
    rng = np.random.default_rng(seed)
    for d in diffs:
        if d.std() < TOLERANCE:
            half = len(d) // 2
            noise = rng.uniform(-rope, rope, half)
            d[:] = d.mean()
            d[:half] += noise
            d[half : 2 * half] -= noise
    within = float(np.mean([d.std() for d in diffs]))
    among = float(np.std([d.mean() for d in diffs])) if len(diffs) > 1 else within
    among = among if among > TOLERANCE else within  # equal cohort means would leave std_0 no room (ours)
    width = max(len(d) for d in diffs)
    padded = np.full((len(diffs), width), np.nan)
    for row, d in zip(padded, diffs):
        row[: len(d)] = d
    peak = float(np.nanmax(np.abs(padded)))
    return Prepared(padded, rope, (peak, among * UPPER_SIGMA, within * UPPER_SIGMA))


def _model(x, mask, n, bounds):
    """The hierarchical model of a batch of independent pairs: x, mask (pairs x cohorts x folds), n (pairs x
    cohorts) and bounds (pairs x 3); the likelihood is the multivariate normal in closed form (as the Stan
    program's: M's inverse and determinant are known), which allows cohorts with different fold counts."""
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    pairs, cohorts = n.shape
    rho = 1.0 / n
    with numpyro.plate("pairs", pairs, dim=-2):
        delta0 = numpyro.sample("delta0", dist.Uniform(-bounds[:, :1], bounds[:, :1]))
        std0 = numpyro.sample("std0", dist.Uniform(0.0, bounds[:, 1:2]))
        alpha = numpyro.sample("alpha", dist.Uniform(*ALPHA))
        beta = numpyro.sample("beta", dist.Uniform(*BETA))
        nu = numpyro.sample("nu_minus_one", dist.Gamma(alpha, beta)) + 1.0
        with numpyro.plate("cohorts", cohorts, dim=-1):
            delta = numpyro.sample("delta", dist.StudentT(nu, delta0, std0))
            sigma = numpyro.sample("sigma", dist.Uniform(0.0, bounds[:, 2:3]))
    residual = jnp.where(mask, x - delta[..., None], 0.0)
    total, squares = residual.sum(-1), (residual**2).sum(-1)
    quad = (squares - rho / (1 + (n - 1) * rho) * total**2) / ((1 - rho) * sigma**2)
    log_det = 2 * n * jnp.log(sigma) + (n - 1) * jnp.log1p(-rho) + jnp.log1p((n - 1) * rho)
    numpyro.factor("folds", jnp.sum(-0.5 * (log_det + quad)))
    numpyro.deterministic("nu", nu)


@functools.cache
def _sampler(shape: tuple[int, int, int]):
    """One NUTS sampler per batch shape (pairs, cohorts, folds): numpyro compiles it on its first run and reuses
    it for every later batch of that shape (``jit_model_args``)."""
    import jax
    import numpyro
    from numpyro.infer import MCMC, NUTS
    from numpyro.infer.reparam import LocScaleReparam

    jax.config.update("jax_enable_x64", True)
    if cache := compilation_cache():
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    # the non-centred form of delta (the same posterior; NUTS explores it without the funnel of few cohorts)
    model = numpyro.handlers.reparam(_model, config={"delta": LocScaleReparam(0, shape_params=["df"])})
    return MCMC(
        NUTS(model, max_tree_depth=TREE_DEPTH),
        num_warmup=WARMUP,
        num_samples=DRAWS,
        num_chains=CHAINS,
        chain_method="vectorized",
        progress_bar=False,
        jit_model_args=True,
    )


def _sample(batch: list[Prepared], seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Posterior draws (draws x pairs) of delta_0, std_0 and nu for a batch of pairs with the same shape."""
    import jax

    x = np.stack([p.diff for p in batch])
    mask = ~np.isnan(x)
    n = mask.sum(-1).astype(float)
    bounds = np.array([p.bounds for p in batch])
    mcmc = _sampler(x.shape)
    mcmc.run(jax.random.PRNGKey(seed), np.nan_to_num(x), mask, n, bounds)
    draws = mcmc.get_samples()
    return tuple(np.asarray(draws[name])[:, :, 0] for name in ("delta0", "std0", "nu"))


def probabilities(delta0: np.ndarray, std0: np.ndarray, nu: np.ndarray, rope: float) -> tuple[float, float, float]:
    """P(a better), P(within the rope), P(b better) from posterior draws, as baycomp's ``Posterior.probs``: the
    share of draws in which each region holds the most of the next cohort's t(nu, delta_0, std_0)."""
    left = ss.t.cdf(-rope, nu, delta0, std0)
    right = ss.t.sf(rope, nu, delta0, std0)
    regions = np.stack([left, 1 - left - right, right], axis=1)
    counts = np.bincount(regions.argmax(axis=1), minlength=3) / len(regions)
    return tuple(float(c) for c in counts)


def compare_pairs(prepared: list[Prepared], seed: int = 0) -> list[tuple[float, float, float]]:
    """The three probabilities of every prepared pair, sampling pairs of the same shape together in equal batches
    of at most :data:`BATCH` (the last filled with copies of its first pair), so that each shape compiles once."""
    out: list[tuple[float, float, float] | None] = [None] * len(prepared)
    by_shape: dict[tuple[int, int], list[int]] = {}
    for i, p in enumerate(prepared):
        by_shape.setdefault(p.diff.shape, []).append(i)
    for _, indices in sorted(by_shape.items()):
        size = math.ceil(len(indices) / math.ceil(len(indices) / BATCH))
        for start in range(0, len(indices), size):
            chunk = indices[start : start + size]
            batch = [prepared[i] for i in chunk]
            delta0, std0, nu = _sample(batch + [batch[0]] * (size - len(batch)), seed + start)
            for j, i in enumerate(chunk):
                out[i] = probabilities(delta0[:, j], std0[:, j], nu[:, j], prepared[i].rope)
    return out
