"""Pipeline and CLI end to end on tiny profiles: caching, determinism, missing data, bad input."""

from __future__ import annotations

import dataclasses
import hashlib
import struct

import pytest
import torch

from tests.helpers_data import accept_miniature_flowers, make_flowers102, make_imagefolder, tiny_profile
from vggprune import build_vgg11
from vggprune.cache import CACHE_LAYOUT, CacheWarning
from vggprune.checkpoint import load_model, save_model
from vggprune.cli import main
from vggprune.data import labels_fingerprint, split_labels
from vggprune.errors import UserError
from vggprune.pipeline import CaseResult, Pipeline
from vggprune.profiles import PROFILES, get_profile
from vggprune.pruning import model_key, prune
from vggprune.stats import wilson_interval
from vggprune.train import evaluate_images


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    """The pipeline reads VGGPRUNE_* variables; a developer's own settings must not leak in."""
    for name in ("VGGPRUNE_DATA_ROOT", "VGGPRUNE_DOWNLOAD", "VGGPRUNE_WEIGHTS", "VGGPRUNE_CACHE_DIR",
                 "VGGPRUNE_NO_CACHE"):
        monkeypatch.delenv(name, raising=False)


def _weights_equal(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def warm_cache(tmp_path_factory):
    """One tiny-profile base and one pruned case, trained once for the module."""
    root = tmp_path_factory.mktemp("cache")
    pipe = Pipeline(tiny_profile(), cache_dir=root, progress=False)
    return root, pipe.base(), pipe.case(model_key("by-hand", "conv", 0.3))


def test_base_and_case_are_trained_then_served_from_the_cache(warm_cache):
    root, base, case = warm_cache
    assert isinstance(base, CaseResult) and not base.from_cache and base.reason is None
    assert 0.0 <= base.top1 <= base.top5 <= 1.0 and base.checkpoint.parent == root / "models"
    assert case.model.spec.conv_widths[0] < base.model.spec.conv_widths[0]  # really pruned
    assert case.info["epochs"] == 1 and case.info["rate"] == 0.3

    again = Pipeline(tiny_profile(), cache_dir=root, progress=False)
    warm_base, warm_case = again.base(), again.case(model_key("by-hand", "conv", 0.3))
    assert warm_base.from_cache and warm_case.from_cache
    assert (warm_base.top1, warm_case.top1, warm_case.top5) == (base.top1, case.top1, case.top5)
    assert _weights_equal(warm_case.model, case.model) and warm_case.checkpoint == case.checkpoint
    assert not warm_case.model.training and next(warm_case.model.parameters()).device.type == "cpu"
    for fresh, warm in ((base, warm_base), (case, warm_case)):  # per-image evidence survives the cache
        assert (warm.correct, warm.correct_before_finetune, warm.test_fingerprint) == (
            fresh.correct, fresh.correct_before_finetune, fresh.test_fingerprint)
    assert set(warm_case.info) == set(case.info)  # results are fields, not leftovers in info


def test_results_are_kept_per_test_image_with_the_test_sets_fingerprint(warm_cache):
    root, base, case = warm_cache
    pipe = Pipeline(tiny_profile(), cache_dir=root, progress=False)
    labels = pipe.data().test.dataset.tensors[1].tolist()
    assert len(case.correct) == len(base.correct) == len(labels) == 360 and set(case.correct) <= {"0", "1"}
    assert case.top1 == case.correct.count("1") / 360 and base.top1 == base.correct.count("1") / 360
    assert case.top1_ci == wilson_interval(case.correct.count("1"), 360)
    # the same images in order: re-scoring the returned model reproduces the string exactly
    assert evaluate_images(case.model, pipe.data().test).correct == case.correct
    expected = hashlib.sha256(f"{len(labels)}:".encode() + struct.pack(f"<{len(labels)}q", *labels))
    assert case.test_fingerprint == base.test_fingerprint == pipe.test_fingerprint == expected.hexdigest()[:16]


def test_damage_before_fine_tuning_is_the_pruned_base_scored_on_test(warm_cache):
    root, base, case = warm_cache
    assert base.correct_before_finetune is None and base.top1_before_finetune is None
    pipe = Pipeline(tiny_profile(), cache_dir=root, progress=False)
    one_shot = prune(base.model, 0.3, method="by-hand", scope="conv", seed=pipe.profile.seed)
    assert evaluate_images(one_shot, pipe.data().test).correct == case.correct_before_finetune
    assert case.top1_before_finetune == case.correct_before_finetune.count("1") / 360
    assert case.top1_before_finetune_ci[0] <= case.top1_before_finetune <= case.top1_before_finetune_ci[1]


def test_fingerprint_tells_test_sets_apart():
    assert labels_fingerprint([2, 0, 1]) == hashlib.sha256(b"3:" + struct.pack("<3q", 2, 0, 1)).hexdigest()[:16]
    prints = {labels_fingerprint(v) for v in ([2, 0, 1], [0, 1, 2], [2, 0], [2, 0, 1, 1])}
    assert len(prints) == 4  # order and size both count
    assert split_labels(torch.utils.data.TensorDataset(torch.zeros(3), torch.tensor([2, 0, 1]))) == [2, 0, 1]


def test_an_entry_without_per_image_results_is_rebuilt_not_trusted(warm_cache, tmp_path):
    root, _, case = warm_cache
    pipe = Pipeline(tiny_profile(), cache_dir=tmp_path, progress=False)
    pipe._base = dataclasses.replace(case, model=warm_cache[1].model)  # reuse the trained base: no retraining
    key, label = pipe.cache_entry(model_key("by-hand", "conv", 0.3))
    assert key["base"]["cache_layout"] == CACHE_LAYOUT  # entries from an older layout are another file
    old_style = {"top1": 0.5, "top5": 1.0, "epochs": 1}  # what a layout-1 entry held
    pipe.cache.store(key, label, case.model, old_style)
    with pytest.warns(CacheWarning, match="lacks valid per-image results"):
        rebuilt = pipe.case(model_key("by-hand", "conv", 0.3))
    assert not rebuilt.from_cache and len(rebuilt.correct) == 360 and rebuilt.correct_before_finetune
    again = Pipeline(tiny_profile(), cache_dir=tmp_path, progress=False)
    assert again.cached(model_key("by-hand", "conv", 0.3)).from_cache


def test_rate_zero_is_the_base_and_each_call_gets_its_own_copy(warm_cache):
    root, base, _ = warm_cache
    pipe = Pipeline(tiny_profile(), cache_dir=root, progress=False)
    zero = pipe.case(model_key("torch-pruning", "fc", 0.0))
    assert zero.top1 == base.top1 and _weights_equal(zero.model, base.model)
    with torch.no_grad():
        zero.model.features[0].weight.zero_()  # the caller's copy: the pipeline's base is unharmed
    assert _weights_equal(pipe.base().model, base.model)


def test_a_different_setting_is_a_miss(warm_cache):
    root, _, case = warm_cache
    pipe = Pipeline(tiny_profile(finetune_epochs=0), cache_dir=root, progress=False)
    one_shot = pipe.case(model_key("by-hand", "conv", 0.3))
    assert pipe.base().from_cache  # fine-tuning settings do not retrain the base…
    assert not one_shot.from_cache and one_shot.checkpoint != case.checkpoint  # …but are a new case
    assert one_shot.info["epochs"] == 0 and one_shot.info["best_epoch"] == 0
    assert one_shot.correct == one_shot.correct_before_finetune == case.correct_before_finetune


def test_corrupt_cache_file_is_reported_and_rebuilt(tmp_path):
    pipe = Pipeline(tiny_profile(), cache_dir=tmp_path, progress=False)
    first = pipe.case(model_key("torch-pruning", "fc", 0.5))
    first.checkpoint.write_bytes(first.checkpoint.read_bytes()[:1000])  # truncated, as by a crash or full disk
    again = Pipeline(tiny_profile(), cache_dir=tmp_path, progress=False)
    with pytest.warns(CacheWarning, match="unreadable"):
        rebuilt = again.case(model_key("torch-pruning", "fc", 0.5))
    assert not rebuilt.from_cache and rebuilt.top1 == first.top1 and _weights_equal(rebuilt.model, first.model)
    assert load_model(rebuilt.checkpoint)[0].spec == first.model.spec  # whole again


def test_no_cache_option_and_env_write_nothing(tmp_path, monkeypatch):
    res = Pipeline(tiny_profile(base_epochs=0), cache_dir=tmp_path / "a", use_cache=False, progress=False).base()
    assert res.checkpoint is None and not res.from_cache and res.top1 is not None
    monkeypatch.setenv("VGGPRUNE_NO_CACHE", "1")
    Pipeline(tiny_profile(base_epochs=0), cache_dir=tmp_path / "b", progress=False).base()
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_same_seed_same_accuracy_whatever_ran_before(tmp_path):
    """Two cold runs with one seed agree exactly, even when one computes another case first."""
    p = tiny_profile(seed=7)
    alone = Pipeline(p, use_cache=False, progress=False).case(model_key("by-hand", "fc", 0.4))
    busy = Pipeline(p, use_cache=False, progress=False)
    busy.case(model_key("by-hand", "fc", 0.2))
    after = busy.case(model_key("by-hand", "fc", 0.4))
    assert (alone.top1, alone.top5) == (after.top1, after.top5)
    assert _weights_equal(alone.model, after.model)


def test_missing_data_still_gives_models_with_the_reason(tmp_path):
    profile = dataclasses.replace(get_profile("seed"), model="small", image_size=32)  # no 133M model here
    pipe = Pipeline(profile, data_root=tmp_path, cache_dir=tmp_path / "cache", progress=False)
    reason = pipe.data_missing_reason
    assert reason and "Flowers102 not found" in reason and "--download" in reason
    assert pipe.num_classes == 102
    base = pipe.base()
    assert (base.top1, base.top5, base.reason) == (None, None, reason)
    assert (base.correct, base.top1_ci, pipe.test_fingerprint) == (None, None, None)
    assert base.info["init"] == "random" and base.model.spec.num_classes == 102
    case = pipe.case(model_key("torch-pruning", "fc", 0.5))
    assert case.top1 is None and case.reason == reason and case.checkpoint is None
    assert (case.correct_before_finetune, case.top1_before_finetune, case.test_fingerprint) == (None, None, None)
    assert case.model.spec.fc_widths == tuple(w - w // 2 for w in base.model.spec.fc_widths)
    assert not (tmp_path / "cache").exists()  # untrained models are not cached


def test_flowers102_miniature_through_the_pipeline(tmp_path, monkeypatch):
    make_flowers102(tmp_path / "data", classes=3, per_split=2)
    accept_miniature_flowers(monkeypatch, tmp_path / "data")
    profile = tiny_profile(dataset="flowers102", num_classes=102, finetune_epochs=0, train_batch_size=2,
                           eval_batch_size=4)
    pipe = Pipeline(profile, data_root=tmp_path / "data", cache_dir=tmp_path / "cache", progress=False)
    assert pipe.data_missing_reason is None
    case = pipe.case(model_key("by-hand", "fc", 0.5))  # one-shot: pruned, evaluated, not fine-tuned
    assert 0.0 <= case.top1 <= case.top5 <= 1.0 and case.info["epochs"] == 0 and case.checkpoint.is_file()
    labels = split_labels(pipe.data().datasets["test"])  # Flowers102's own labels, no image decoded
    assert len(case.correct) == len(labels) == 6 and case.test_fingerprint == labels_fingerprint(labels)


def test_imagefolder_through_the_pipeline_takes_its_class_count(tmp_path):
    make_imagefolder(tmp_path / "data", classes=("a", "b", "c", "d"), per_class=2)
    profile = dataclasses.replace(get_profile("imagefolder"), model="small", image_size=32, base_epochs=1,
                                  train_batch_size=4, eval_batch_size=4)
    pipe = Pipeline(profile, data_root=tmp_path / "data", use_cache=False, progress=False)
    assert pipe.num_classes == 4
    base = pipe.base()
    assert base.model.spec.num_classes == 4 and base.top1 is not None


def test_class_count_that_does_not_match_the_model_is_refused(tmp_path):
    with pytest.raises(UserError, match="dataset digits has 10 classes but profile quick's model expects 7"):
        Pipeline(tiny_profile(num_classes=7), cache_dir=tmp_path)


def test_unknown_dataset_is_refused(tmp_path):
    with pytest.raises(UserError, match="unknown dataset 'mnist'"):
        Pipeline(tiny_profile(dataset="mnist"), cache_dir=tmp_path)


def test_weights_file_sets_the_starting_point_and_enters_the_key(tmp_path):
    torch.manual_seed(9)
    start = save_model(build_vgg11("small", 10), tmp_path / "start.pt")
    pipe = Pipeline(tiny_profile(base_epochs=0), weights=start, cache_dir=tmp_path / "c", progress=False)
    base = pipe.base()
    assert _weights_equal(base.model, load_model(start)[0]) and base.info["init"] == "file"
    plain = Pipeline(tiny_profile(base_epochs=0), cache_dir=tmp_path / "c", progress=False)
    assert plain.base_key()["init"] != pipe.base_key()["init"]


def test_weights_file_that_does_not_fit_is_refused(tmp_path):
    bad = save_model(build_vgg11("small", 3), tmp_path / "three.pt")
    pipe = Pipeline(tiny_profile(), weights=bad, use_cache=False, progress=False)
    with pytest.raises(UserError, match=r"does not fit the small model \(10 classes\).*classifier.6.weight"):
        pipe.base()


# --- CLI ------------------------------------------------------------------------------------------

@pytest.fixture
def cli_env(tmp_path, monkeypatch):
    """The CLI looks profiles up by name: make `quick` tiny for these tests."""
    monkeypatch.setitem(PROFILES, "quick", tiny_profile())
    monkeypatch.setenv("VGGPRUNE_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


def test_cli_train_then_evaluate(cli_env, capsys):
    assert main(["train", "--method", "by-hand", "--scope", "fc", "--rate", "0.3", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "quick, by-hand fc l2 rate 0.3: test top-1 " in out and f"checkpoint: {cli_env / 'cache'}" in out
    train_top1 = out.split("top-1 ")[1].split(",")[0]
    assert "/360; 95% CI 0." in train_top1 and "\nbefore fine-tuning: test top-1 0." in out
    fingerprint = out.split("test set: 360 images, fingerprint ")[1].split()[0]
    assert main(["evaluate", "--method", "by-hand", "--scope", "fc", "--rate", "0.3", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"test top-1 {train_top1}," in out  # evaluating the cached checkpoint reproduces the figure
    assert f"fingerprint {fingerprint}" in out
    assert main(["train", "--method", "by-hand", "--scope", "fc", "--rate", "0.3"]) == 0
    assert "loaded from cache" in capsys.readouterr().out


def _one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    return err


def test_cli_bad_input_is_one_line_exit_2(cli_env, capsys, monkeypatch):
    assert "no trained checkpoint" in _one_line_error(capsys, ["evaluate", "--rate", "0.2"])
    (cli_env / "none").mkdir()  # an explicit --data-root must exist and not be empty
    (cli_env / "none" / "notes.txt").write_text("no splits here")
    assert "image folder" in _one_line_error(capsys, ["train", "--profile", "imagefolder", "--data-root",
                                                       str(cli_env / "none")])
    make_flowers102(cli_env / "flowers")
    (cli_env / "flowers" / "flowers-102" / "setid.mat").unlink()
    err = _one_line_error(capsys, ["train", "--profile", "seed", "--data-root", str(cli_env / "flowers")])
    assert "missing flowers-102/setid.mat" in err
    bad = save_model(build_vgg11("small", 4), cli_env / "four.pt")
    assert "does not fit" in _one_line_error(capsys, ["train", "--weights", str(bad)])
    assert "4 outputs but dataset digits has 10" in _one_line_error(capsys, ["evaluate", "--checkpoint", str(bad)])
    monkeypatch.setitem(PROFILES, "quick", tiny_profile(dataset="mnist"))
    assert "unknown dataset 'mnist'" in _one_line_error(capsys, ["train"])
    monkeypatch.setitem(PROFILES, "quick", tiny_profile(num_classes=5))
    assert "has 10 classes but profile quick's model expects 5" in _one_line_error(capsys, ["train"])
