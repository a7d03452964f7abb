"""Device choices: the precision rule of inference and training; CPU threads (container CPU quotas, the
explicit and environment overrides, the CLI option)."""

from __future__ import annotations

import pytest
import torch

from medicosam.cli import main
from medicosam.device import (
    THREADS_ENV,
    configure_threads,
    get_autocast_dtype,
    get_cgroup_cpu_limit,
    get_cpu_budget,
    has_fast_cpu_bf16,
)
from medicosam.errors import InputError, MedicoSAMError


@pytest.fixture(autouse=True)
def restore_threads(monkeypatch):
    before = torch.get_num_threads()
    for name in (THREADS_ENV, "OMP_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    yield
    torch.set_num_threads(before)


def test_one_precision_rule_for_inference_and_training(monkeypatch):
    cpu_auto = torch.bfloat16 if has_fast_cpu_bf16() else None  # bf16 only where the CPU runs it natively
    for training in (False, True):
        assert get_autocast_dtype("cpu", "auto", training=training) == cpu_auto
        assert get_autocast_dtype("mps", "auto", training=training) is None
        assert get_autocast_dtype("cpu", "bfloat16", training=training) is torch.bfloat16
        assert get_autocast_dtype("cuda", "none", training=training) is None
    assert get_autocast_dtype("cpu", "float16") is torch.float16
    with pytest.raises(InputError, match="loss scaling"):
        get_autocast_dtype("cpu", "float16", training=True)
    with pytest.raises(InputError, match="unknown autocast"):
        get_autocast_dtype("cpu", "fp8")
    # The one difference, on a CUDA GPU without bf16 (none here to run on): fp16 for inference only.
    for supported, inference, training in ((True, torch.bfloat16, torch.bfloat16), (False, torch.float16, None)):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda supported=supported: supported)
        assert get_autocast_dtype("cuda") is inference
        assert get_autocast_dtype("cuda", training=True) is training


@pytest.mark.parametrize("files, expected", [
    ({"cpu.max": "200000 100000\n"}, 2),
    ({"cpu.max": "150000 100000\n"}, 2),  # 1.5 CPUs: two threads, each busy part of the time
    ({"cpu.max": "max 100000\n"}, None),
    ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3),
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ({"cpu.max": "garbage"}, None),
    ({}, None),
])
def test_cgroup_cpu_limit_v1_and_v2(tmp_path, files, expected):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert get_cgroup_cpu_limit(tmp_path) == expected


def test_default_threads_never_exceed_the_cpus_this_process_may_use():
    torch.set_num_threads(64)  # what torch picks on a 64-core host, whatever the container allows
    assert configure_threads() == min(64, get_cpu_budget()) == torch.get_num_threads()


def test_explicit_threads_win_then_the_environment(monkeypatch):
    assert configure_threads(1) == torch.get_num_threads() == 1
    monkeypatch.setenv(THREADS_ENV, "3")
    assert configure_threads() == 3
    assert configure_threads(2) == 2
    monkeypatch.setenv(THREADS_ENV, "many")
    with pytest.raises(MedicoSAMError, match="MEDICOSAM_NUM_THREADS='many' is not a thread count"):
        configure_threads()


def test_user_omp_setting_is_left_alone(monkeypatch):
    torch.set_num_threads(5)
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    assert configure_threads() == 5


def test_cli_threads_option(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("MEDICOSAM_CACHE_DIR", str(tmp_path))
    assert main(["--threads", "1", "models", "list"]) == 0  # `models` needs no torch: it leaves threads alone
    assert main(["--threads", "0", "models", "list"]) == 2
    assert "--threads 0: use 1 or more" in capsys.readouterr().err


def test_load_aware_default_leaves_busy_cpus_and_says_why(monkeypatch):
    import os

    from medicosam.device import describe_threads

    budget = get_cpu_budget()
    monkeypatch.setattr(os, "cpu_count", lambda: budget)
    monkeypatch.setattr(os, "getloadavg", lambda: (budget + 3.0, 0.0, 0.0))  # every CPU busy
    torch.set_num_threads(budget)
    assert configure_threads(load_aware=True) == 1
    assert describe_threads() == f"1 CPU thread ({budget} usable CPUs, {budget} busy with other work)"
    monkeypatch.setattr(os, "getloadavg", lambda: (0.2, 0.0, 0.0))  # idle
    torch.set_num_threads(budget)
    assert configure_threads(load_aware=True) == budget
    assert configure_threads(load_aware=True, default=1) == 1  # a command's own default (the demo)
    assert describe_threads() == "1 CPU thread (the command's default)"
    assert configure_threads(2, load_aware=True, default=1) == 2  # the user's choice still wins
    assert describe_threads() == "2 CPU threads (--threads)"
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert configure_threads(load_aware=True, default=1) == 2  # left alone
    torch.set_num_threads(1)
    assert describe_threads() == "1 CPU thread"  # changed since: no stale reason
