"""Save/load round trips, and the `params` / `prune` commands as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from tests.arith import expected_params, pruned_widths
from vggprune import prune
from vggprune.checkpoint import load_model, save_model
from vggprune.cli import main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vggprune", *args], capture_output=True, text=True,
                          timeout=300)


def test_save_load_round_trip_gives_identical_outputs(small_model, tmp_path):
    pruned = prune(small_model, 0.3, method="torch-pruning", scope="all")
    path = save_model(pruned, tmp_path / "m.pt", extra={"rate": 0.3})
    loaded, extra = load_model(path)
    x = torch.randn(4, 3, 32, 32)
    with torch.inference_mode():
        assert torch.equal(pruned(x), loaded(x))
    assert loaded.spec == pruned.spec and extra == {"rate": 0.3}
    # A plain weights_only load sees only tensors and plain containers: no pickled modules.
    payload = torch.load(path, weights_only=True)
    assert set(payload) == {"format", "spec", "state_dict", "extra"}


def test_load_needs_no_torch_pruning(small_model, tmp_path):
    path = save_model(prune(small_model, 0.5, method="torch-pruning"), tmp_path / "m.pt")
    code = ("import sys; sys.modules['torch_pruning'] = None\n"  # any import of it now fails
            "from vggprune.checkpoint import load_model\n"
            f"m, _ = load_model({str(path)!r}); print(m.spec.fc_widths)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "(256, 256)"


def test_truncated_file_is_a_clear_error(small_model, tmp_path):
    path = save_model(small_model, tmp_path / "m.pt")
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match="cannot read model file"):
        load_model(path)


def test_params_json_matches_arithmetic():
    out = run_cli("params", "--model", "small", "--num-classes", "10", "--method", "by-hand",
                  "--scope", "all", "--rates", "0,0.25,0.5", "--json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [r["rate"] for r in rows] == [0.0, 0.25, 0.5]
    for row in rows:
        assert {"model", "method", "scope", "rate", "params", "macs", "widths"} <= row.keys()
        assert row["params"] == expected_params("small", 10, row["rate"], "all")
        conv, fc = pruned_widths("small", row["rate"], "all")
        assert row["widths"] == {"conv": list(conv), "fc": list(fc)}
    assert rows[0]["macs"] > rows[1]["macs"] > rows[2]["macs"]


@pytest.mark.slow  # builds the 133M-parameter seed model
def test_params_table_for_the_seed_model():
    out = run_cli("params", "--model", "seed", "--num-classes", "102", "--method", "by-hand",
                  "--scope", "fc", "--rates", "0,0.5")
    assert out.returncode == 0, out.stderr
    assert f"{expected_params('seed', 102, 0, 'fc'):,}" in out.stdout  # 132,970,942
    assert f"{expected_params('seed', 102, 0.5, 'fc'):,}" in out.stdout
    assert "2048-2048-500" in out.stdout


def test_prune_writes_a_loadable_file(tmp_path):
    out_path = tmp_path / "pruned.pt"
    out = run_cli("prune", "--model", "small", "--num-classes", "10", "--method", "torch-pruning",
                  "--rate", "0.3", "--out", str(out_path))
    assert out.returncode == 0, out.stderr
    model, extra = load_model(out_path)
    assert model.spec.fc_widths == pruned_widths("small", 0.3, "fc")[1]
    assert extra["method"] == "torch-pruning" and extra["rate"] == 0.3


@pytest.mark.parametrize("args, message", [
    (["params", "--rates", "0,1.2"], "rate must be a number in [0, 1), got 1.2"),
    (["params", "--rates", "0,abc"], "rate must be a number in [0, 1), got 'abc'"),
    (["params", "--method", "nni"], "unknown method 'nni'; allowed: torch-pruning, by-hand"),
    (["params", "--scope", "x"], "unknown scope 'x'; allowed: fc, conv, all"),
    (["params", "--model", "vgg16"], "unknown model 'vgg16'; allowed: seed, torchvision, small"),
    (["prune", "--rate", "nan", "--out", "x.pt"], "rate must be a number in [0, 1), got nan"),
    (["prune", "--rate", "0.1", "--input", "/no/such.pt", "--out", "x.pt"], "model file not found"),
    (["prune", "--rate", "0.1"], "the following arguments are required: --out"),
])
def test_cli_bad_input_is_one_line_and_exit_2(args, message, capsys):
    try:
        code = main(args)
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1


def test_cli_process_reports_bad_input_without_traceback():
    out = run_cli("params", "--rates", "-0.5")
    assert out.returncode == 2
    assert out.stderr.strip() == "vggprune params: error: rate must be a number in [0, 1), got -0.5"
