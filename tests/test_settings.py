"""Option resolution and case expansion (the harness's pytester tests cover the pytest side)."""

from __future__ import annotations

import pytest

from vggprune.errors import UserError
from vggprune.settings import resolve_settings


def settings(cuda: bool = False, **raw):
    return resolve_settings(raw, cuda_available=cuda)


def test_quick_defaults_expand_to_one_base_and_every_pruned_case():
    s = settings()
    p = s.profile
    assert (p.name, p.model, p.dataset) == ("quick", "small", "digits")
    keys = s.model_keys()
    assert keys[0].is_base and len(keys) == 1 + 5 * len(p.methods) * len(p.scopes)
    ids = [c.id for c in s.cases()]
    assert ids[0] == "quick-base-r0.00-cpu-b1"
    assert "quick-torch-pruning-fc-r0.30-cpu-b64" in ids and "quick-by-hand-conv-r0.50-cpu-b1" in ids
    # eager for every model; fused, onnxruntime and openvino for the base and each scope's 50 % models
    deploy = 1 + len(p.methods) * len(p.scopes)
    assert p.runtimes == ("eager", "fused", "onnxruntime", "openvino")
    assert len(ids) == len(set(ids)) == (len(keys) + 3 * deploy) * len(p.batch_sizes)
    assert "quick-by-hand-conv-r0.50-openvino-cpu-b64" in ids and "quick-by-hand-conv-r0.30-fused-cpu-b64" not in ids


def test_seed_profile_defaults_match_the_study():
    p = settings(profile="seed").profile
    assert p.rates == (0.0, 0.1, 0.2, 0.3, 0.4, 0.5) and p.batch_sizes == (1, 8)
    assert p.scopes == ("fc",) and p.image_size == 224 and p.model == "seed"


def test_overrides_and_non_default_axes_show_in_ids():
    s = settings(rates="0.5,0.25,0.5", methods="by-hand", scopes="all", criterion="l1", round_to="8",
                 batch_sizes="4", devices="cpu", threads="1", runtimes="eager")
    assert s.profile.rates == (0.25, 0.5) and s.threads == 1
    assert [c.id for c in s.cases()] == ["quick-base-r0.00-cpu-b4", "quick-by-hand-all-r0.25-l1-x8-cpu-b4",
                                         "quick-by-hand-all-r0.50-l1-x8-cpu-b4"]


def test_run_spread_defaults_to_the_calibrated_value_and_zero_means_within_run():
    assert settings().run_spread == 0.05
    assert settings(run_spread="0").run_spread == 0.0 and settings(run_spread="0.1").run_spread == 0.1


def test_auto_devices_follow_cuda_availability():
    assert settings(devices="auto").devices == ("cpu",)
    assert settings(cuda=True, devices="auto").devices == ("cpu", "cuda")
    assert settings(cuda=True, devices="cuda,cpu").devices == ("cpu", "cuda")


@pytest.mark.parametrize("raw, message", [
    ({"profile": "imagenet"}, "--profile: unknown value 'imagenet'; allowed: quick, seed, imagefolder"),
    ({"rates": "0,1.5"}, "--rates: rate must be a number in [0, 1), got 1.5"),
    ({"rates": "0,x"}, "--rates: rate must be a number in [0, 1), got 'x'"),
    ({"methods": "by-hand,nni"}, "--methods: unknown value nni; allowed: torch-pruning, by-hand"),
    ({"scopes": "head"}, "--scopes: unknown value head; allowed: fc, conv, all"),
    ({"devices": "tpu"}, "--devices: unknown value 'tpu'; allowed: auto, cpu, cuda, cpu,cuda"),
    ({"devices": "cuda"}, "--devices: CUDA was asked for but torch.cuda.is_available() is False"),
    ({"batch_sizes": "1,0"}, "--batch-sizes: '0' is not a positive integer"),
    ({"latency_rounds": "many"}, "--latency-rounds: 'many' is not a positive integer"),
    ({"memory_format": "nhwc"}, "--memory-format: unknown value nhwc; allowed: channels_last, contiguous"),
    ({"weights": "/no/such/file.pth"}, "--weights: /no/such/file.pth does not exist"),
    ({"run_spread": "-0.01"}, "--run-spread: '-0.01' is not a number in 0..1"),
    ({"run_spread": "nan"}, "--run-spread: 'nan' is not a number in 0..1"),
    ({"run_spread": "wide"}, "--run-spread: 'wide' is not a number in 0..1"),
])
def test_bad_values_name_the_value_and_what_is_allowed(raw, message):
    with pytest.raises(UserError) as info:
        settings(**raw)
    assert message in str(info.value)
