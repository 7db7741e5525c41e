"""Shared fixtures for the isae test suite. Sizes are tiny so the whole suite runs in well under a minute."""

from __future__ import annotations

import os

import pytest
import torch

from isae.core.models import SAE, SAEConfig
from isae.data.synthetic import SyntheticConfig, SyntheticStream


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """With ISAE_REQUIRE_ASSETS=1 (``make test`` after ``make assets``) a test skipped for a missing asset fails."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("ISAE_REQUIRE_ASSETS") == "1" and report.skipped and call.excinfo is not None:
        reason = str(call.excinfo.value)
        if "make assets" in reason or "make setup" in reason:
            report.outcome, report.longrepr = "failed", f"an asset is required here but missing: {reason}"


torch.set_num_threads(1)  # tiny tensors: threads only add contention with other processes

D_IN = 16
D_SAE = 48
K = 4


def unit_rows(a: torch.Tensor) -> torch.Tensor:
    return a / a.norm(dim=1, keepdim=True)


def make_sae(architecture: str, d_in: int = D_IN, d_sae: int = D_SAE, k: int = K, seed: int = 0, **kw) -> SAE:
    """A tiny SAE of the given architecture (extra SAEConfig fields through ``kw``)."""
    return SAE(SAEConfig(d_in=d_in, d_sae=d_sae, k=k, architecture=architecture, **kw), seed=seed)


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


@pytest.fixture
def x_unit(gen) -> torch.Tensor:
    """A batch of 64 unit-norm inputs of dimension D_IN (float32)."""
    return unit_rows(torch.randn(64, D_IN, generator=gen))


@pytest.fixture
def tiny_stream() -> SyntheticStream:
    """Synthetic stream: d_in=16, 32 ground-truth atoms, 3-sparse codes, batches of 64."""
    return SyntheticStream(SyntheticConfig(d_in=D_IN, n_atoms=32, k=3, seed=0), batch_size=64, seed=0)
