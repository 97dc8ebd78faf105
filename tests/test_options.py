"""Options defined once for pytest and argparse, the profile split (training defines checkpoints, the
axes select cases), gate files from the caller, and options that must be refused in one line."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import math
from pathlib import Path

import pytest

from vggprune import gates
from vggprune.env import env_flag
from vggprune.errors import UserError
from vggprune.gates import AccuracyRule, ExpectedParams, Thresholds, check_accuracy, check_params
from vggprune.options import HARNESS, OPTIONS, TRAINING, add_options, read_options
from vggprune.profiles import FIELD_PART, BaseTraining, FineTuning, SweepAxes, get_profile
from vggprune.pruning import model_key  # noqa: E402
from vggprune.settings import resolve_profile, resolve_settings

BENCH = Path(__file__).resolve().parent.parent / "bench"


def parse(argv: list[str], names=HARNESS) -> tuple[dict, list[str]]:
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_options(parser.add_argument, names)
    ns = parser.parse_args(argv)
    return read_options(lambda dest: getattr(ns, dest, None), names)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for opt in OPTIONS.values():
        monkeypatch.delenv(opt.env, raising=False)
    monkeypatch.delenv("VGGPRUNE_SCOPE", raising=False)


# --- one definition, shaped the same for pytest and argparse ---

def test_list_options_are_plural_and_single_value_options_refuse_lists():
    assert all(o.flag.endswith("s") for o in OPTIONS.values() if o.kind == "list")
    with pytest.raises(UserError, match="--criterion: takes one value, got the list 'l2,l1'"):
        parse(["--criterion", "l2,l1"])
    for flag in ("--round-to", "--latency-rounds", "--threads", "--profile"):
        with pytest.raises(UserError, match="takes one value"):
            parse([flag, "8,16"])


def test_explicitly_empty_value_is_refused_not_the_default_sweep():
    with pytest.raises(UserError, match="--rates: empty value"):
        parse(["--rates", ""])
    with pytest.raises(UserError, match="--rates"):
        resolve_settings({"rates": ","}, False)  # no rate at all is not "the default"


def test_an_option_given_twice_keeps_the_last_like_any_override():
    assert parse(["--profile", "quick", "--profile", "seed"])[0]["profile"] == "seed"


def test_old_scope_spelling_works_with_a_deprecation_note(monkeypatch):
    raw, notes = parse(["--scope", "conv"])
    assert raw["scopes"] == "conv" and notes == [
        "--scope is deprecated and will be removed in the next release; use --scopes"]
    assert resolve_settings(raw, False).profile.scopes == ("conv",)
    monkeypatch.setenv("VGGPRUNE_SCOPE", "all")
    raw, notes = parse([])
    assert raw["scopes"] == "all" and "VGGPRUNE_SCOPE is deprecated" in notes[0]


def test_environment_fills_gaps_and_true_has_one_meaning(monkeypatch):
    monkeypatch.setenv("VGGPRUNE_RATES", "0,0.3")
    monkeypatch.setenv("VGGPRUNE_NO_CACHE", "On")
    monkeypatch.setenv("VGGPRUNE_BATCH_SIZES", "")  # empty = unset
    raw, _ = parse(["--rates", "0,0.5"])
    assert raw["rates"] == "0,0.5" and raw["no_cache"] is True and raw["batch_sizes"] is None
    for value, meaning in [("1", True), ("yes", True), ("0", False), ("off", False), ("", False)]:
        monkeypatch.setenv("VGGPRUNE_DOWNLOAD", value)
        assert env_flag("VGGPRUNE_DOWNLOAD") is meaning
    monkeypatch.setenv("VGGPRUNE_DOWNLOAD", "maybe")
    with pytest.raises(UserError, match="VGGPRUNE_DOWNLOAD='maybe' is neither true"):
        env_flag("VGGPRUNE_DOWNLOAD")


def test_cli_training_options_are_the_harness_definitions():
    from vggprune.cli import build_parser

    train = build_parser()._subparsers._group_actions[0].choices["train"]  # type: ignore[union-attr]
    helps = {a.option_strings[0]: a.help for a in train._actions if a.option_strings}
    for name in TRAINING:
        opt = OPTIONS[name]
        assert opt.help in helps[opt.flag] and opt.env in helps[opt.flag], opt.flag


# --- sizes bounded at parse time -------------------------------------------------------------------

@pytest.mark.parametrize("raw, message", [
    ({"threads": "100000"}, "--threads: 100,000 is out of range (allowed 1.."),
    ({"seed": str(2**40)}, "--seed: 1,099,511,627,776 is out of range (allowed 0..4,294,967,295)"),
    ({"batch_sizes": "1,100000"}, "--batch-sizes: 100,000 is out of range"),
    ({"round_to": "99999"}, "--round-to: 99,999 is out of range"),
    ({"latency_rounds": "10000000"}, "--latency-rounds: 10,000,000 is out of range"),
    ({"epochs": "0"}, "--epochs: '0' is not a positive integer"),
])
def test_sizes_have_upper_bounds(raw, message):
    with pytest.raises(UserError) as info:
        resolve_settings(raw, False)
    assert message in str(info.value)


def test_a_batch_that_cannot_fit_in_memory_is_refused_with_the_estimate(monkeypatch):
    monkeypatch.setattr("vggprune.limits.available_memory", lambda: 8 * 2**30)
    with pytest.raises(UserError, match=r"--batch-sizes: a batch of 8,192 224-px images for the seed model "
                                        r"needs about [\d,.]+ GiB but this machine has 8.0 GiB available"):
        resolve_settings({"profile": "seed", "batch_sizes": "1,8192"}, False)
    assert resolve_settings({"profile": "seed", "batch_sizes": "8"}, False).profile.batch_sizes == (8,)


def test_cli_prune_bounds_sizes_before_building(tmp_path, capsys):
    from vggprune.cli import main

    for args, message in [(["--num-classes", "10000000"], "--num-classes: 10,000,000 is out of range"),
                          (["--seed=-1"], "--seed: '-1' is not a non-negative integer")]:
        assert main(["prune", "--model", "small", "--rate", "0.1", "--out", str(tmp_path / "m.pt"), *args]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "m.pt").exists()


# --- the explicit --data-root and the imagefolder options --------------------------------------------

def test_explicit_data_root_must_exist_be_a_directory_and_not_be_empty(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "empty").mkdir()
    for path, why in [(tmp_path / "typo", "does not exist"), (tmp_path / "file", "is not a directory"),
                      (tmp_path / "empty", "is empty")]:
        with pytest.raises(UserError, match=f"--data-root: .* {why}"):
            resolve_settings({"data_root": str(path)}, False)
    assert resolve_settings({}, False).data_root is None  # not given: the accuracy gate may skip


def test_imagefolder_takes_model_image_size_and_epochs_others_refuse_them():
    p = resolve_profile({"profile": "imagefolder", "model": "small", "image_size": "48", "epochs": "3"})
    assert (p.model, p.image_size, p.base_epochs) == ("small", 48, 3)
    with pytest.raises(UserError, match="--model: only the imagefolder profile takes it"):
        resolve_profile({"model": "seed"})
    with pytest.raises(UserError, match=r"--image-size: '16' is not an integer >= 32 \(allowed 32..1,024\)"):
        resolve_profile({"profile": "imagefolder", "image_size": "16"})
    with pytest.raises(UserError, match="--model: unknown value resnet"):
        resolve_profile({"profile": "imagefolder", "model": "resnet"})


# --- the training config defines checkpoints, the axes only select cases ---

def _perturbed(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, tuple):
        return value[:1]
    if value is None:
        return 7
    return f"{value}-x"


def test_field_names_are_unique_across_the_parts():
    names = [f.name for cls in (BaseTraining, FineTuning, SweepAxes) for f in dataclasses.fields(cls)]
    assert len(names) == len(set(names)) == len(FIELD_PART)


def test_every_training_field_changes_the_cache_key_and_no_axis_does(monkeypatch):
    from vggprune.pipeline import Pipeline

    quick = get_profile("quick")
    base = Pipeline(quick, use_cache=False, device="cpu")
    base_key, case_key = base.base_key(), base.case_key(model_key("by-hand", "fc", 0.3))
    training = quick.training
    for f in dataclasses.fields(BaseTraining):
        changed = dataclasses.replace(training, base=dataclasses.replace(
            training.base, **{f.name: _perturbed(getattr(training.base, f.name))}))
        assert changed.base_key() != training.base_key() and changed.key() != training.key(), f.name
    for f in dataclasses.fields(FineTuning):
        changed = dataclasses.replace(quick, **{f.name: _perturbed(getattr(quick, f.name))})
        pipe = Pipeline(changed, use_cache=False, device="cpu")
        assert pipe.base_key() == base_key, f"{f.name} must not retrain the base"
        assert pipe.case_key(model_key("by-hand", "fc", 0.3)) != case_key, f.name
    for f in dataclasses.fields(SweepAxes):
        changed = dataclasses.replace(quick, **{f.name: _perturbed(getattr(quick, f.name))})
        pipe = Pipeline(changed, use_cache=False, device="cpu")
        assert (pipe.base_key(), pipe.case_key(model_key("by-hand", "fc", 0.3))) == (base_key, case_key), f.name


def test_settings_expose_training_and_axes_and_replace_routes_flat_fields():
    s = resolve_settings({"rates": "0,0.5", "seed": "3"}, False)
    assert s.axes.rates == (0.0, 0.5) and s.training.base.seed == 3 and s.profile.seed == 3
    p = dataclasses.replace(get_profile("quick"), finetune_epochs=0, batch_sizes=(2,))
    assert p.training.finetune.finetune_epochs == 0 and p.axes.batch_sizes == (2,)
    with pytest.raises(TypeError, match="no field colour"):
        dataclasses.replace(p, colour="red")


# --- gate files come from the caller and are checked whole ---

def test_gates_do_not_locate_bench_themselves():
    source = inspect.getsource(gates)
    assert "__file__" not in source and "bench" not in source.split('"""', 2)[-1]
    with pytest.raises(TypeError):
        Thresholds.load()  # type: ignore[call-arg]


@pytest.mark.parametrize("content, message", [
    ({"quick": {"base_min_top1": float("nan")}}, "quick.base_min_top1 = nan is not a number in [0, 1]"),
    ({"quick": {}}, "quick must be a non-empty object"),
    ({"quick": {"scopes": {"fc": {}}}}, "quick.scopes.fc needs a min_top1"),
    ({"quick": {"scopes": {"fc": {"min_top1": 95}}}}, "min_top1 = 95 is not a number in [0, 1]"),
    ({"quick": {"scopes": {"fc": {"min_top1": 0.9, "max_drop": "1"}}}}, "max_drop = '1' is not a number"),
    ({"quick": {"scopes": {"head": {"min_top1": 0.9}}}}, "unknown scope 'head'"),
    ({"quick": {"base_min_top1": 0.9, "bsae": 1}}, "unknown keys bsae"),
])
def test_thresholds_schema_and_ranges_are_checked_on_load(tmp_path, content, message):
    path = tmp_path / "t.json"
    path.write_text(json.dumps(content))
    with pytest.raises(UserError) as info:
        Thresholds.load(path)
    assert message in str(info.value)


@pytest.mark.parametrize("counts, message", [
    ({"small-10": {}}, "counts.small-10 must be a non-empty object"),
    ({"small-10": {"fc": {"0.30": -5}}}, "counts.small-10.fc.0.30 = -5 is not a positive integer"),
    ({"small-10": {"fc": {"0.30": "757647"}}}, "is not a positive integer"),
    ({"small-10": {"fc": {"0.3": 1}}}, "rate key '0.3' is not like '0.30'"),
])
def test_expected_params_schema_is_checked_on_load(tmp_path, counts, message):
    path = tmp_path / "e.json"
    path.write_text(json.dumps({"counts": counts}))
    with pytest.raises(UserError) as info:
        ExpectedParams.load(path)
    assert message in str(info.value)


def test_committed_gate_files_pass_their_own_checks():
    assert Thresholds.load(BENCH / "thresholds.json").rule("quick", "fc") == AccuracyRule(0.95, 0.02)
    assert ExpectedParams.load(BENCH / "expected_params.json").lookup("seed", 102, "none", 0.0, 1) == 132_970_942


@pytest.mark.parametrize("top1", [math.nan, None, 99.0])
def test_a_gate_that_cannot_be_evaluated_never_passes(top1):
    assert check_accuracy(AccuracyRule(0.5, 0.05), top1) is not None  # type: ignore[arg-type]
    assert check_params(None, 10) is not None  # type: ignore[arg-type]


# --- the training recipe follows the model's starting point; options override it -------------------

def test_imagefolder_recipe_follows_the_starting_point():
    pretrained = resolve_profile({"profile": "imagefolder"})  # torchvision at 224 px: ImageNet fine-tuning
    assert (pretrained.augment, pretrained.lr, pretrained.schedule, pretrained.train_batch_size) == (
        "imagenet", 0.01, "cosine", 32)
    scratch = resolve_profile({"profile": "imagefolder", "model": "small", "image_size": "32"})
    assert (scratch.augment, scratch.lr, scratch.schedule, scratch.train_batch_size, scratch.base_epochs) == (
        "crop", 0.05, "onecycle", None, 20)  # the quick profile's from-scratch recipe, batch sized to the data
    small_images = resolve_profile({"profile": "imagefolder", "image_size": "64"})
    assert small_images.augment == "crop" and small_images.lr == 0.01  # ImageNet weights, too small to crop
    given = resolve_profile({"profile": "imagefolder", "model": "small", "image_size": "32", "augment": "crop+flip",
                             "lr": "0.02", "train_batch_size": "16", "schedule": "cosine", "epochs": "7"})
    assert (given.augment, given.lr, given.train_batch_size, given.schedule, given.base_epochs) == (
        "crop+flip", 0.02, 16, "cosine", 7)
    # the fixed profiles keep their own recipes unless told otherwise
    assert resolve_profile({}).augment == "crop" and resolve_profile({"profile": "seed"}).augment == "imagenet+flip"
    assert resolve_profile({"augment": "none", "lr": "0.1"}).lr == 0.1


@pytest.mark.parametrize("raw, message", [
    ({"augment": "mixup"}, "--augment: unknown value mixup; allowed: imagenet, imagenet+flip, crop, crop+flip, none"),
    ({"lr": "fast"}, "--lr: 'fast' is not a number in 0..10"),
    ({"lr": "0"}, "--lr: '0' is not a number in (0, 10]"),
    ({"lr": "50"}, "--lr: '50' is not a number in 0..10"),
    ({"schedule": "step"}, "--schedule: unknown value step; allowed: cosine, onecycle"),
    ({"train_batch_size": "1"}, "--train-batch-size: '1' is not an integer >= 2"),
    ({"max_accuracy_drop": "5"}, "--max-accuracy-drop: '5' is not a number in 0..1"),
])
def test_bad_recipe_and_gate_options_are_one_line_errors(raw, message):
    with pytest.raises(UserError) as info:
        resolve_settings(raw, False)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_recipe_options_reach_settings_cli_and_help_with_their_defaults():
    raw, _ = parse(["--augment", "none", "--lr", "0.2", "--train-batch-size", "8", "--schedule", "cosine",
                    "--max-accuracy-drop", "0.1"])
    s = resolve_settings(raw, False)
    assert (s.profile.augment, s.profile.lr, s.profile.train_batch_size, s.profile.schedule) == (
        "none", 0.2, 8, "cosine")
    assert s.max_accuracy_drop == 0.1 and resolve_settings({}, False).max_accuracy_drop is None
    assert {"augment", "lr", "train_batch_size", "schedule"} <= set(TRAINING)  # `vggprune train` takes them too
    parser = argparse.ArgumentParser()
    add_options(parser.add_argument, HARNESS)
    text = " ".join(parser.format_help().split())
    for shown in ("--augment", "default: imagenet from pretrained weights at >= 224 px, crop on smaller",
                  "--lr", "default: 0.05 from scratch", "--train-batch-size",
                  "default: from scratch 64, or fewer so an epoch has 20 steps",
                  "--schedule", "default: onecycle from scratch", "--max-accuracy-drop", "else 0.05"):
        assert shown in text, shown


def test_from_scratch_the_batch_gives_every_folder_the_quick_profiles_step_count(tmp_path):
    from tests.helpers_data import make_imagefolder
    from vggprune.pipeline import Pipeline
    from vggprune.profiles import scratch_batch_size

    assert [scratch_batch_size(n) for n in (None, 100, 300, 600, 1257, 50_000)] == [64, 8, 15, 30, 62, 64]
    folder = make_imagefolder(tmp_path / "imgs", classes=("a", "b", "c", "d"), per_class=75)  # 300 per split
    profile = resolve_profile({"profile": "imagefolder", "model": "small", "image_size": "32"})
    pipe = Pipeline(profile, data_root=folder, use_cache=False, device="cpu")
    assert pipe.profile.train_batch_size == 15 and pipe.base_key()["training"]["train_batch_size"] == 15
    given = resolve_profile({"profile": "imagefolder", "model": "small", "image_size": "32", "train_batch_size": "64"})
    assert Pipeline(given, data_root=folder, use_cache=False, device="cpu").profile.train_batch_size == 64
