"""What the image fingerprint of a local dataset costs at each planning, against a content hash.

    python bench/fingerprint.py [--path <Cohen checkout>]   # default: ../shared/data/cohen-sample

ftbench fingerprints a local copy's images by path, size and modification time (ftbench.data.sources), taken
whenever Snakemake plans; this measures that, split into reading the table (a fixed cost) and statting the images,
and a SHA-256 of every image's bytes (warm page cache, so a lower bound), in CPU time (best of several runs: the
machine is shared), and projects the per-image figures to NY-SBU's ~14,000 files.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

from record import ROOT, record

sys.path.insert(0, str(ROOT / "src"))
from ftbench.data import sources  # noqa: E402

NYSBU_FILES = 14_000


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--path", default=str(ROOT.parent / "shared" / "data" / "cohen-sample"))
    args = parser.parse_args()
    spec = {"adapter": "cohen", "path": args.path}
    files = sorted({Path(f) for f in sources.local(spec).images("cohen", spec) if Path(f).is_file()})
    size = sum(f.stat().st_size for f in files)
    listing = best(lambda: list(sources.local(spec).images("cohen", spec)), 10)
    total = best(lambda: sources.fingerprint("cohen", spec), 10)
    content = best(lambda: [hashlib.sha256(f.read_bytes()).digest() for f in files], 5)
    per_image = max(total - listing, 0) / len(files)
    figures = {
        "images": len(files),
        "megabytes": round(size / 1e6, 1),
        "table_ms": round(listing * 1e3, 1),
        "fingerprint_ms": round(total * 1e3, 1),
        "stat_us_per_image": round(per_image * 1e6, 1),
        "content_sha256_ms": round(content * 1e3, 1),
        "content_ms_per_image": round(content / len(files) * 1e3, 2),
        "nysbu_stat_s": round(per_image * NYSBU_FILES, 2),
        "nysbu_content_s_per_10MB_image": round(content / size * 10e6 * NYSBU_FILES),
    }
    print(
        f"{len(files)} images, {figures['megabytes']} MB. Fingerprint {figures['fingerprint_ms']} ms CPU: reading "
        f"the table {figures['table_ms']} ms + {figures['stat_us_per_image']} us per image. Content SHA-256 "
        f"{figures['content_sha256_ms']} ms ({figures['content_ms_per_image']} ms per image, from the page cache). "
        f"For {NYSBU_FILES:,} files: ~{figures['nysbu_stat_s']} s statting; hashing at 10 MB an image "
        f"~{figures['nysbu_content_s_per_10MB_image']} s CPU, before any disk reads"
    )
    record("fingerprint", figures)


if __name__ == "__main__":
    main()
