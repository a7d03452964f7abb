"""`medicosam serve` against in-process prediction: click overhead, 8-client throughput, upload time.

Starts a real server (uvicorn subprocess on 127.0.0.1) with a tiny SAM, so the numbers are the
protocol's cost (HTTP, JSON, deflate), not the model's: a click on a slice whose embedding is cached,
in process and over loopback (the overhead is their difference; target <= 15 ms), requests per second
with 8 clients clicking on their own volumes, and uploading a 512 x 512 x 200 int16 volume.

    python bench/serve.py [--clicks 50] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests
import torch

from medicosam.client import RemotePredictor, ServerClient
from medicosam.models.checkpoint import export_sam, load_sam
from medicosam.models.config import build_sam, get_tiny_config
from medicosam.predictor import VolumePredictor
from medicosam.prompts import Prompts

TOKEN = "bench-token-0123456789"


def _start(checkpoint: Path, port: int) -> subprocess.Popen:
    root = Path(__file__).resolve().parents[1]
    paths = [str(root / "MedicoSAMSlicer"), str(root / "MedicoSAMTraining")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    process = subprocess.Popen([sys.executable, "-m", "medicosam.cli", "serve", "--checkpoint", str(checkpoint),
                                "--allow-custom", "--device", "cpu", "--port", str(port), "--token", TOKEN], env=env)
    for _ in range(600):
        try:
            if requests.get(f"http://127.0.0.1:{port}/v1/health", timeout=1).ok:
                return process
        except requests.ConnectionError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit("the server did not start")


def _median_ms(call, n: int) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clicks", type=int, default=50)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = Path(folder) / "tiny.pt"
        export_sam(build_sam(get_tiny_config()), checkpoint)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        process = _start(checkpoint, port)
        try:
            report = _measure(checkpoint, f"http://127.0.0.1:{port}", args.clicks)
        finally:
            process.kill()
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


def _measure(checkpoint: Path, url: str, clicks: int) -> dict:
    rng = np.random.default_rng(0)
    volume = rng.integers(0, 255, (8, 256, 256), dtype=np.uint8)
    prompts = Prompts([[128.0, 128.0]], [1])
    local = VolumePredictor.from_loaded(load_sam(str(checkpoint), device="cpu", allow_custom=True), volume)
    remote = RemotePredictor(ServerClient(url, TOKEN), volume)
    local.predict(0, 4, prompts), remote.predict(0, 4, prompts)  # embeddings cached on both sides
    in_process = _median_ms(lambda: local.predict(0, 4, prompts), clicks)
    over_http = _median_ms(lambda: remote.predict(0, 4, prompts), clicks)

    clients = [RemotePredictor(ServerClient(url, TOKEN), np.roll(volume, n, axis=2)) for n in range(8)]
    for client in clients:
        client.predict(0, 4, prompts)
    start = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda c: [c.predict(0, 4, prompts) for _ in range(clicks)], clients))
    per_second = 8 * clicks / (time.perf_counter() - start)

    k = np.arange(200)[:, None, None]
    j, i = np.arange(512)[None, :, None], np.arange(512)[None, None, :]
    big = (1000 * np.sin(k / 20.0) * np.cos(j / 40.0) + i + rng.normal(0, 20, (200, 512, 512))).astype(np.int16)
    start = time.perf_counter()
    ServerClient(url, TOKEN).upload(big)
    upload_s = time.perf_counter() - start
    start = time.perf_counter()
    ServerClient(url, TOKEN).upload(big)  # known digest: "already have it"
    known_s = time.perf_counter() - start
    return {"click_in_process_ms": round(in_process, 2), "click_over_loopback_ms": round(over_http, 2),
            "overhead_ms": round(over_http - in_process, 2), "overhead_ratio": round(over_http / in_process, 2),
            "requests_per_s_8_clients": round(per_second, 1), "requests_per_s_1_client": round(1000 / over_http, 1),
            "upload_512x512x200_int16_s": round(upload_s, 2), "upload_known_volume_s": round(known_s, 3),
            "torch_threads": torch.get_num_threads()}


if __name__ == "__main__":
    main()
