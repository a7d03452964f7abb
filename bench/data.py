"""SA-Med2D-20M data path: the compact index against today's reader, and v1 PNGs against v2 shards.

    python bench/data.py [--images 370000] [--tree-images 600] [--workers 0 2 4] [--json out.json]

Writes (in --dir, default a temporary folder) a synthetic `SAMed2D_v1.json` with the real layout
(names `<modality>_<sub>--<dataset>--<case>--<axis>_<slice>`, ~4.5 masks per image: 370,000
images and ~1.67 M mask paths are a tenth of SA-Med2D-20M) and measures, each in a fresh forked
process: today's `get_samed2d_records` (time, RSS), the index's first build and cached open (time,
RSS), and the growth of a forked worker after 10,000 random record look-ups (RSS, and the pages
it wrote: a DataLoader worker's copy-on-write cost) for both. Then a tree of real-sized PNGs (ICBM152 T1 slices resized
to 256/512/1024 px, brain / white-matter / ellipse masks), converted to v2 shards, gives samples/s
at batch 7 for 0/2/4 workers for the v1 folder reader and the shards, and what keeps one GPU
step of 150 ms fed: workers per GPU and disk MB/s. Targets (issue 15, at 370,000 images): index
build <= 10 s, cached <= 1 s, <= 150 MB RSS, worker growth <= 50 MB.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from common import get_environment, load_icbm152, write_report

#: (modality_sub, share) of the synthetic JSON, roughly SA-Med2D-20M's mix (CT and MR dominate).
MODALITIES = (("ct_00", .45), ("mr_t1", .12), ("mr_t2", .1), ("mr_flair", .08), ("pet_00", .04),
              ("ultrasound_00", .05), ("x_ray", .06), ("endoscopy_00", .04), ("dermoscopy_00", .03),
              ("fundus_photography", .03))
DATASETS = ("AbdomenCT1K", "BraTS2021", "AMOS2022", "Totalsegmentator_dataset", "ACDC", "KiTS2021", "ISLES2022")
SIZES = ((256, .2), (512, .6), (1024, .2))  # image sides of the PNG tree
GPU_STEP_S, BATCH = 0.150, 7


def get_rss_mib() -> float:
    with open("/proc/self/statm") as file:
        return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def get_private_dirty_mib() -> float:
    """Pages this process wrote (copied on write, or its own heap): a worker's real cost. RSS also counts
    the pages of the memory-mapped index it read, which the page cache shares among all processes."""
    with open("/proc/self/smaps_rollup") as file:
        return sum(int(line.split()[1]) for line in file if line.startswith("Private_Dirty")) / 1024


def write_samed2d_json(path: Path, n_images: int, seed: int = 0) -> int:
    """A JSON with SA-Med2D's layout and n_images entries, written entry by entry; the mask count."""
    rng = np.random.default_rng(seed)
    names = [name for name, _ in MODALITIES]
    modalities = rng.choice(len(names), size=n_images, p=[share for _, share in MODALITIES])
    counts = rng.poisson(3.5, n_images) + 1
    with open(path, "w") as file:
        file.write("{")
        for i in range(n_images):
            stem = f"{names[modalities[i]]}--{DATASETS[i % len(DATASETS)]}--Case_{i // 200:05d}--x_{i % 200:04d}"
            masks = [f"masks/{stem}--{c:04d}_000.png" for c in range(counts[i])]
            file.write(("" if i == 0 else ", ") + json.dumps(f"images/{stem}.png") + ": " + json.dumps(masks))
        file.write("}")
    return int(counts.sum())


def in_child(fn, *args):
    """fn(*args) in a forked process (a clean RSS baseline); its return value."""
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    process = context.Process(target=lambda: queue.put(fn(*args)))
    process.start()
    result = queue.get()
    process.join()
    return result


def measure_worker(records, accesses: int) -> dict:
    """RSS and private growth of a forked worker doing `accesses` random look-ups in `records`."""
    def look_up():
        rss, private = get_rss_mib(), get_private_dirty_mib()
        rng = np.random.default_rng(0)
        for i in rng.integers(0, len(records), accesses):
            record = records[int(i)]
            assert record.labels
        return {"rss_growth_mib": get_rss_mib() - rss, "private_dirty_growth_mib": get_private_dirty_mib() - private}
    return in_child(look_up)


def measure_todays_reader(root: Path, accesses: int) -> dict:
    from medicosam_training.records import get_samed2d_records

    rss, start = get_rss_mib(), time.perf_counter()
    records = get_samed2d_records(root)
    report = {"build_s": time.perf_counter() - start, "rss_mib": get_rss_mib() - rss}
    report["worker"] = measure_worker(records, accesses)
    return report


def measure_index(root: Path, accesses: int) -> dict:
    from medicosam_training.samed2d.index import INDEX_SUFFIX, load_samed2d_index

    (root / ("SAMed2D_v1.json" + INDEX_SUFFIX)).unlink(missing_ok=True)

    def open_index():
        rss, start = get_rss_mib(), time.perf_counter()
        index = load_samed2d_index(root)
        opened = {"s": time.perf_counter() - start, "rss_mib": get_rss_mib() - rss, "records": len(index),
                  "masks": index.n_masks}
        for i in range(0, len(index), 97):  # touch every page of the file: the worst case
            index[i]
        opened["rss_all_touched_mib"] = get_rss_mib() - rss
        return opened

    first, cached = in_child(open_index), in_child(open_index)

    def worker():
        return measure_worker(load_samed2d_index(root), accesses)

    report = {"first_build": first, "cached": cached, "worker": in_child(worker),
              "file_mib": (root / ("SAMed2D_v1.json" + INDEX_SUFFIX)).stat().st_size / 2**20}
    return report


def write_tree(root: Path, n_images: int, seed: int = 0) -> None:
    """An SA-Med2D v1 tree of PNGs at real sizes: ICBM152 T1 slices with brain, WM and ellipse masks."""
    import SimpleITK as sitk
    from skimage.transform import resize

    from medicosam.preprocessing import get_resized_shape

    rng = np.random.default_rng(seed)
    volume = load_icbm152()
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    mapping = {}
    for i in range(n_images):
        k = int(rng.integers(60, 140))
        size = int(rng.choice([s for s, _ in SIZES], p=[p for _, p in SIZES]))
        shape = get_resized_shape(volume["t1"].shape[1:], size)
        t1 = resize(volume["t1"][k], shape, preserve_range=True).astype(np.uint8)
        wm = resize(volume["wm"][k], shape, order=0, anti_aliasing=False).astype(bool)
        rows, cols = np.mgrid[:shape[0], :shape[1]]
        masks = [t1 > 10, wm]
        for _ in range(int(rng.poisson(2.5))):
            cy, cx, ry, rx = rng.uniform(0.2, 0.8) * shape[0], rng.uniform(0.2, 0.8) * shape[1], *rng.uniform(5, 40, 2)
            masks.append(((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2 <= 1)
        stem = f"{MODALITIES[i % 3][0]}--{DATASETS[i % 2]}--Case_{i:05d}--x_{k:04d}"
        sitk.WriteImage(sitk.GetImageFromArray(t1), str(root / "images" / f"{stem}.png"))
        names = []
        for n, mask in enumerate(masks):
            names.append(f"masks/{stem}--{n:04d}_000.png")
            sitk.WriteImage(sitk.GetImageFromArray(mask.astype(np.uint8) * 255), str(root / names[-1]))
        mapping[f"images/{stem}.png"] = names
    (root / "SAMed2D_v1.json").write_text(json.dumps(mapping))


def get_samples_per_s(dataset, workers: int, batches: int) -> float:
    import torch

    from medicosam_training.dataset import collate_objects

    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0)).tolist()
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, sampler=order, num_workers=workers,
                                         collate_fn=collate_objects)
    iterator = iter(loader)
    next(iterator)  # workers started, first batch
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * BATCH / (time.perf_counter() - start)


def measure_throughput(root: Path, out: Path, workers, batches: int, image_size: int) -> dict:
    from medicosam_training.dataset import SAMed2DDataset, SAMed2DShardDataset
    from medicosam_training.samed2d.convert import convert_samed2d
    from medicosam_training.samed2d.index import load_samed2d_index

    start = time.perf_counter()
    summary = convert_samed2d(root, out)
    convert_s = time.perf_counter() - start
    v1 = SAMed2DDataset(root, image_size=image_size)
    v1.records = load_samed2d_index(root)  # what SAMed2DDataset holds once wired to the index
    shards = SAMed2DShardDataset(out, image_size=image_size)
    v1_bytes = sum(path.stat().st_size for folder in ("images", "masks") for path in (root / folder).iterdir())
    shard_bytes = sum(path.stat().st_size for path in out.glob("*.h5"))
    bytes_per_sample = {"v1": v1_bytes / len(v1), "shards": shard_bytes / len(shards)}
    report = {"image_size": image_size, "convert_s": convert_s, "images": summary.images_written,
              "bytes_per_sample": bytes_per_sample}
    need = BATCH / GPU_STEP_S  # samples per second one GPU consumes
    for name, dataset in (("v1", v1), ("shards", shards)):
        rates = {str(w): get_samples_per_s(dataset, w, batches) for w in workers}
        per_process = rates.get("0") or max(rates.values()) / max(workers)  # the loading speed of one core
        report[name] = {"samples_per_s": rates, "workers_per_gpu": math.ceil(need / per_process),
                        "disk_mb_s_per_gpu": need * bytes_per_sample[name] / 1e6}
    report["samples_per_s_per_gpu_needed"] = need
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=370_000, help="entries of the synthetic JSON")
    parser.add_argument("--tree-images", type=int, default=600, help="PNG images of the throughput tree")
    parser.add_argument("--accesses", type=int, default=10_000, help="random look-ups per worker")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2, 4])
    parser.add_argument("--batches", type=int, default=20, help="timed batches of 7 per loader")
    parser.add_argument("--image-size", type=int, default=1024, help="model input side")
    parser.add_argument("--dir", default=None, help="where to write the data (default: a temporary folder)")
    parser.add_argument("--json", default=None, help="also write the report here")
    args = parser.parse_args()

    import torch

    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        folder = Path(folder)
        (folder / "index").mkdir()
        start = time.perf_counter()
        n_masks = write_samed2d_json(folder / "index" / "SAMed2D_v1.json", args.images)
        report = {"environment": get_environment(torch.device("cpu")), "images": args.images, "masks": n_masks,
                  "json_mib": (folder / "index" / "SAMed2D_v1.json").stat().st_size / 2**20,
                  "json_write_s": time.perf_counter() - start}
        report["index"] = measure_index(folder / "index", args.accesses)
        report["todays_reader"] = in_child(measure_todays_reader, folder / "index", args.accesses)
        today, index = report["todays_reader"], report["index"]
        report["ratios"] = {"build_first": index["first_build"]["s"] / today["build_s"],
                            "build_cached": index["cached"]["s"] / today["build_s"],
                            "rss": index["cached"]["rss_all_touched_mib"] / today["rss_mib"],
                            "worker_private_dirty_growth": index["worker"]["private_dirty_growth_mib"]
                            / max(today["worker"]["private_dirty_growth_mib"], 1e-9)}
        write_tree(folder / "v1", args.tree_images)
        report["throughput"] = measure_throughput(folder / "v1", folder / "shards", args.workers, args.batches,
                                                  args.image_size)
    write_report(report, args.json)


if __name__ == "__main__":
    main()
