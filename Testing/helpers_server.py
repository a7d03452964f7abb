"""`medicosam serve` as a real subprocess on 127.0.0.1, for the tests that use it over HTTP."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

TOKEN = "test-token-0123456789"
OTHER_TOKEN = "other-token-9876543210"  # a second group of annotators on the same server
ROOT = Path(__file__).resolve().parents[1]
CACHE_MB = 1  # 16 tiny-SAM slice embeddings (64 KiB each): the 8-client test overflows it


def get_free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`medicosam serve` in a subprocess; `start` waits until /v1/health answers."""

    def __init__(self, checkpoint, port=None, *extra, log=None):
        self.checkpoint, self.port, self.extra = checkpoint, port or get_free_port(), extra
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = None
        self.log = log  # a file for the server's stderr (default: the test's)

    def start(self) -> Server:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "MedicoSAMSlicer"),
                                                            str(ROOT / "MedicoSAMTraining")]),
               "OMP_NUM_THREADS": "1"}
        env.pop("MEDICOSAM_TOKEN", None)
        with contextlib.ExitStack() as stack:
            log = None if self.log is None else stack.enter_context(open(self.log, "ab"))
            self.process = subprocess.Popen(
                [sys.executable, "-m", "medicosam.cli", "--threads", "1", "serve", "--checkpoint",
                 str(self.checkpoint), "--allow-custom", "--device", "cpu", "--port", str(self.port),
                 "--token", f"{TOKEN},{OTHER_TOKEN}", "--cache-mb", str(CACHE_MB), "--max-upload-mb", "2",
                 *self.extra], env=env, stderr=log)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.process.poll() is None, "the server exited at start"
            try:
                if requests.get(self.url + "/v1/health", timeout=1).ok:
                    return self
            except requests.ConnectionError:
                time.sleep(0.2)
        raise AssertionError("the server did not start in 120 s")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
