"""A user's own images through the harness: the README's laptop command learns on folders that are not
digits (letters rendered from the machine's fonts, and simple shapes), and a folder whose labels say
nothing about its images fails the "it learned" gate with one line, its timing cases not timed."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest

from tests.helpers_data import OWN_SPLITS, make_own_folder

REPO = Path(__file__).resolve().parent.parent
# Fewer cases than the README's full sweep (the recipe is what is under test, not the sweep).
FEW_CASES = ["--rates", "0,0.5", "--methods", "by-hand", "--scopes", "fc", "--batch-sizes", "1",
             "--runtimes", "eager", "--latency-rounds", "2", "--latency-warmup", "0", "--devices", "cpu",
             "--threads", "1", "-p", "no:cacheprovider"]
SMALL = {"train": 30, "val": 6, "test": 12}  # images per class and split (the own-data measurement's: OWN_SPLITS)


def readme_command(folder: Path) -> list[str]:
    """The own-data command exactly as the README gives it, pointed at ``folder``."""
    text = " ".join((REPO / "README.md").read_text().split())
    commands = re.findall(r"`(pytest bench/ --profile imagefolder [^`]*)`", text)
    assert commands, "the README's own-data section lost its command"
    args = shlex.split(commands[0])[2:]  # after `pytest bench/`
    return [f"--data-root={folder}" if a.startswith("--data-root") else a
            for a in args if not a.startswith("~") and not a.startswith("<")]


@pytest.fixture
def bench(pytester: pytest.Pytester, tmp_path, monkeypatch) -> pytest.Pytester:
    shutil.copy(REPO / "conftest.py", pytester.path / "conftest.py")
    shutil.copytree(REPO / "bench", pytester.path / "bench", ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setenv("VGGPRUNE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the subprocess runs elsewhere: import this checkout's vggprune
    return pytester


def test_the_readme_command_is_the_from_scratch_recipe_on_32_px():
    args = readme_command(Path("/data"))
    assert args[:2] == ["--profile", "imagefolder"] and "--data-root=/data" in args
    assert "--model" in args and args[args.index("--model") + 1] == "small"


# From scratch, learning takes the recipe's ~400 steps whatever the folder's size: tens of seconds.
@pytest.mark.slow
@pytest.mark.parametrize("kind, per_split", [pytest.param("glyphs", SMALL, id="glyphs"),
                                             pytest.param("shapes", OWN_SPLITS, id="shapes")])
def test_the_readme_command_learns_on_folders_that_are_not_digits(bench, tmp_path, kind, per_split):
    folder = make_own_folder(tmp_path / kind, kind, per_split, seed=1)
    out = tmp_path / "run.json"
    result = bench.runpytest_subprocess("bench", *readme_command(folder), *FEW_CASES, f"--benchmark-json={out}")
    result.assert_outcomes(passed=4)  # base and pruned: accuracy gate (learned / pruning cost) and timing
    infos = {b["extra_info"]["method"]: b["extra_info"] for b in json.loads(out.read_text())["benchmarks"]}
    base = infos["base"]
    assert base["base_learned"] is True and base["dataset"] == "imagefolder" and base["image_size"] == 32
    classes = len({p.name for p in (folder / "test").iterdir()})
    assert base["accuracy"] > 2 / classes  # twice chance at least (1/classes: balanced folders)


def test_shuffled_labels_fail_the_learned_gate_in_one_line_and_nothing_is_timed(bench, tmp_path):
    folder = make_own_folder(tmp_path / "shuffled", "glyphs", SMALL, seed=2, shuffle_labels=True)
    # two epochs are enough to show the gate (the full recipe learns nothing here either, only slower)
    result = bench.runpytest_subprocess("bench", *readme_command(folder), *FEW_CASES, "--epochs", "2")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(failed=4)  # the base's gate, the pruned case's, and both timing cases
    out = result.stdout.str()
    message = re.findall(r"AssertionError: (imagefolder base-r0\.00: the base did not learn: .*)", out)
    assert message and len(set(message)) == 1  # one line, the same wherever it is repeated
    assert re.fullmatch(r"imagefolder base-r0\.00: the base did not learn: top-1 \d+\.\d % \(95 % CI "
                        r"[\d.]+–[\d.]+ %, \d+/120\) does not beat chance 10\.0 % \(the largest class's share "
                        r"of the test split; one-sided binomial p=[\d.e-]+, needs < 0\.01\); try more --epochs, "
                        r"another --augment or a different --lr", message[0]), message[0]
    # both timing cases, counted in their tracebacks (the short summary repeats them, in full when CI is set)
    not_timed = [line for line in result.stdout.lines
                 if line.startswith("E ") and "AssertionError: not timed: imagefolder base-r0.00: the base did not "
                 "learn" in line]
    assert len(not_timed) == 2
    # nothing was built from the useless base: only its checkpoint is in the cache
    cached = [p.name for p in (tmp_path / "cache").rglob("*.pt")]
    assert len(cached) == 1 and "base" in cached[0]
