"""Fixtures shared by the unit tests."""

from __future__ import annotations

import pytest
import torch


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every weight and BN statistic O(1) random values, so outputs are large and a slicing
    mistake anywhere shows up as a big difference (fresh init leaves FC outputs near zero)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * (2 / fan_in) ** 0.5)
                module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.1)
            elif isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(1 + 0.2 * torch.randn(n, generator=gen))
                module.bias.copy_(0.2 * torch.randn(n, generator=gen))
                module.running_mean.copy_(0.2 * torch.randn(n, generator=gen))
                module.running_var.copy_(0.5 + torch.rand(n, generator=gen))
    return model.eval()


@pytest.fixture(scope="session")
def seed_model():
    """The 133M-parameter seed model, built once per session (random weights)."""
    from vggprune import build_vgg11

    return randomize_(build_vgg11("seed", num_classes=102))


@pytest.fixture(scope="session")
def small_model():
    from vggprune import build_vgg11

    return randomize_(build_vgg11("small", num_classes=10))


@pytest.fixture
def full_disk(tmp_path):
    """A 256 KB tmpfs: a real "no space left on device" (needs root; skipped elsewhere, where the fake
    writers raising ENOSPC stand in)."""
    import os
    import subprocess

    where = tmp_path / "full"
    where.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(where)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


def fill(directory) -> None:
    """Fill the file system holding ``directory`` to the last byte."""
    import errno
    from pathlib import Path

    with open(Path(directory) / "filler", "wb", buffering=0) as f:  # unbuffered: nothing left to flush
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
