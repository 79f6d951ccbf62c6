"""Benchmark: the intrinsic dimension of one site's sample (`tasks.analysis.intrinsic`), against the site task's
main cost on the same sample.

    .venv/bin/python bench/intrinsic.py [--n 2000] [--d 384 1600] [--boot 100]

Per width: the neighbour search (scikit-learn, exact, float64), one fit of both estimators (TwoNN and GRIDE from
scikit-dimension), the document bootstrap of both (`--boot` replicates, default the task's MAX_BOOT; 6 tokens per
document); the peer, measured
in the same run on the same states, is the sample's exact pairwise-cosine histogram (`cosine_histogram`, 200 bins,
tile 1024), the step every site task runs. Also the one-off import of scikit-dimension and scikit-learn, which each
Ray worker process pays once.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--d", type=int, nargs="+", default=[384, 1600])
    p.add_argument("--boot", type=int, default=100)
    args = p.parse_args()
    t0 = time.perf_counter()
    import skdim  # noqa: F401
    import sklearn.neighbors  # noqa: F401
    print(f"# intrinsic.py {time.strftime('%Y-%m-%d')}: n={args.n}, {args.boot} bootstrap replicates; "
          f"import of skdim + sklearn: {time.perf_counter() - t0:.2f} s")

    from tasks.analysis.distances import document_bootstrap
    from tasks.analysis.intrinsic import estimates, intrinsic_dimension, neighbour_distances
    from tasks.analysis.similarity import cosine_histogram, unit_rows

    rng = np.random.default_rng(0)
    docs = np.arange(args.n) // 6
    for d in args.d:
        x = (rng.standard_normal((args.n, d)) @ rng.standard_normal((d, d))).astype(np.float32)
        intrinsic_dimension(x[:200], docs[:200], 5)  # warm-up
        t = time.perf_counter()
        dists = neighbour_distances(x, 4)
        search = time.perf_counter() - t
        t = time.perf_counter()
        estimates(dists)
        fit = time.perf_counter() - t
        t = time.perf_counter()
        document_bootstrap(lambda rows: estimates(dists[rows]), docs, n_boot=args.boot, seed=0)
        boot = time.perf_counter() - t
        t = time.perf_counter()
        cosine_histogram(unit_rows(x), 200, 1024)
        hist = time.perf_counter() - t
        print(f"  d={d:5d}: neighbour search {search:.2f} s, one fit of both {fit * 1e3:.1f} ms, bootstrap {boot:.2f} s;"
              f" total {search + boot:.2f} s against the cosine histogram's {hist:.2f} s")


if __name__ == "__main__":
    main()
