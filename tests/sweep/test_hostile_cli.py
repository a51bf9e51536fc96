"""scripts/depth_sweep.py arguments attacked as a hostile user: values that used to be accepted
and then crashed mid-sweep or trained the wrong thing silently are usage errors naming what
was expected (before any run); the held-out sets say what they are."""
import json
import os
import re
import sys

import numpy as np
import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import depth_sweep  # noqa: E402

from mhc_core.experiments.data import DIGITS_TEST, make_stream  # noqa: E402
from mhc_core.experiments.tasks import TaskStream  # noqa: E402

TINY = ["--depths", "1", "--steps", "3", "--dim", "8", "--heads", "2", "--seq-len", "4", "--batch", "2",
        "--vocab", "5", "--n", "2", "--no-progress", "--no-plots"]

TASK_FREE = [a for i, a in enumerate(TINY)  # without --seq-len / --vocab: digits and text fix them
             if a not in ("--seq-len", "--vocab") and TINY[i - 1] not in ("--seq-len", "--vocab")]


@pytest.mark.parametrize("bad, says", [
    # a repeated depth or variant trained the same run dir twice and counted it twice in the summary
    (["--depths", "1", "1"], "--depths must not repeat a value, got 1 1"),
    (["--variants", "mhc", "mhc"], "--variants must not repeat a value, got mhc mhc"),
    # --metric-rows 0 crashed at the first measured step (KeyError 'layer_inputs')
    # the task's fixed vocab / sequence length silently replaced a different value given
    (["--task", "digits", "--vocab", "50"], "--vocab is fixed by --task digits to 10, got 50"),
    (["--task", "digits", "--seq-len", "4", "--patch", "2"], "--seq-len is fixed by --task digits to 16 (--patch 2), got 4"),
    (["--task", "text", "--vocab", "5"], "--vocab is fixed by --task text to 256, got 5"),
    # two rates that print alike trained into the same folder, the second over the first
    (["--lrs", "0.001", "0.0010000001"], "--lrs must differ in their first 6 significant digits"),
    (["--metric-rows", "0"], "--metric-rows must be an integer >= 1, got 0"),
    (["--metric-rows", "3"], "--metric-rows must be at most --batch (2), got 3"),
    # recompute of the history variant raised ValueError inside the run, after the others trained
    (["--variants", "mhc", "history", "--recompute", "2"], "--recompute 2 is not implemented for the history variant"),
    # digits' held-out set has 450 images: a larger --eval-size was cut to 450 silently
    (["--task", "digits", "--eval-size", str(DIGITS_TEST + 1)],
     f"eval_size must be at most the {DIGITS_TEST} held-out digits images"),
    (["--task", "text", "--eval-size", "100000", "--seq-len", "4"], "distinct held-out text windows of seq_len 4"),
])
def test_bad_arguments_are_usage_errors_before_any_run(tmp_path, capsys, bad, says):
    out = tmp_path / "never"
    with pytest.raises(SystemExit) as exc:
        depth_sweep.main(["--out", str(out), *TASK_FREE, *bad])
    assert exc.value.code == 2
    assert says in capsys.readouterr().err
    assert not out.exists()


def test_edge_values_that_are_valid_still_parse():
    base = TASK_FREE
    args = depth_sweep.parse_args([*base, "--metric-rows", "2", "--task", "digits", "--eval-size", str(DIGITS_TEST)])
    assert args.metric_rows == 2 and args.eval_size == DIGITS_TEST and (args.vocab, args.seq_len) == (10, 16)
    # the values a digits run's own rerun line repeats are accepted
    args = depth_sweep.parse_args([*base, "--task", "digits", "--vocab", "10", "--seq-len", "1", "--patch", "8"])
    assert (args.vocab, args.seq_len) == (10, 1)
    assert depth_sweep.parse_args([*base, "--task", "text", "--vocab", "256", "--seq-len", "4"]).seq_len == 4


def test_text_eval_windows_are_distinct_and_inside_the_held_out_bytes():
    s = make_stream("text", vocab=256, seq_len=8, batch_size=2, seed=0, eval_size=0)
    assert len(s.eval_set()[0]) == 256
    test = s._arrays["test"]
    with pytest.raises(ValueError, match="distinct held-out text windows"):
        make_stream("text", vocab=256, seq_len=8, batch_size=2, seed=0, eval_size=len(test) - 8 + 1)
    biggest = make_stream("text", vocab=256, seq_len=8, batch_size=2, seed=0, eval_size=len(test) - 8)
    inputs, targets, _ = biggest.eval_set()
    windows = np.concatenate([inputs, targets[:, -1:]], 1)  # every start once, in order, to the last byte
    np.testing.assert_array_equal(windows, np.stack([test[i:i + 9] for i in range(len(test) - 8)]))


def test_text_held_out_windows_found_in_training_bytes_are_counted():
    """The text split is by position; windows of repeated code also occur in the training
    bytes: describe() counts them (checked by a naive search over the training text)."""
    s = make_stream("text", vocab=256, seq_len=12, batch_size=2, seed=0, eval_size=64)
    inputs, targets, _ = s.eval_set()
    train = bytes(s._arrays["train"])
    naive = sum(bytes(list(row) + [int(t[-1])]) in train for row, t in zip(inputs, targets))
    assert s.describe()["eval_windows_in_train"] == naive


def test_incrementing_held_out_rows_are_training_rows_and_say_so():
    """A held-out seed gives no held-out data for incrementing: every held-out row also comes
    out of the training stream (counted here directly), and config.json's data record says so."""
    s = make_stream("incrementing", vocab=7, seq_len=5, batch_size=8, seed=1, eval_size=16)
    held = {row.tobytes() for row in s.eval_set()[0]}
    train = TaskStream("incrementing", vocab=7, seq_len=5, batch_size=8, seed=1)
    seen = {row.tobytes() for i in range(50) for row in train.batch(i)[0]}
    assert held <= seen
    d = s.describe()
    assert d["distinct_sequences"] == 7 and d["heldout_disjoint"].startswith("no")
    copy = make_stream("copy", vocab=7, seq_len=5, batch_size=8, seed=1).describe()
    assert copy["distinct_sequences"] == 7 ** 3  # rows of 6 = 3 tokens twice


@pytest.mark.parametrize("bad, says", [
    # the list used to win silently: --seed 3 --seeds 0 1 ran seeds 0 and 1
    (["--seed", "3", "--seeds", "0", "1"], "--seed and --seeds both given (--seed 3, --seeds 0 1); give one of them"),
    (["--lr", "0.01", "--lrs", "0.001", "0.1"], "--lr and --lrs both given (--lr 0.01, --lrs 0.001 0.1)"),
])
def test_a_single_value_and_its_list_together_are_refused(bad, says, capsys):
    with pytest.raises(SystemExit) as exc:
        depth_sweep.parse_args([*TINY, *bad])
    assert exc.value.code == 2 and says in capsys.readouterr().err


def test_single_values_and_defaults_still_apply():
    assert (depth_sweep.parse_args(TINY).lrs, depth_sweep.parse_args(TINY).seeds) == ([1e-3], [0])
    args = depth_sweep.parse_args([*TINY, "--lr", "0.01", "--seed", "3"])
    assert (args.lr, args.lrs, args.seed, args.seeds) == (0.01, [0.01], 3, [3])


@pytest.mark.parametrize("bad, says", [
    (["--checkpoint-every", "-1"], "--checkpoint-every must be an integer >= 0 (0 = off), got -1"),
    (["--keep-checkpoints", "0"], "--keep-checkpoints must be an integer >= 1, got 0"),
    (["--recompute", "-2"], "--recompute must be 0, auto or a positive integer, got '-2'"),
])
def test_bad_scale_flags_name_the_value_before_any_run(tmp_path, bad, says):
    out = tmp_path / "never"
    with pytest.raises(SystemExit, match=re.escape(says)):
        depth_sweep.main(["--out", str(out), *TINY, *bad])
    assert not out.exists()


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc (a filesystem no one can write)")
def test_out_on_a_filesystem_nobody_can_write_is_a_usage_error(capsys):
    """os.access says yes to root on /proc; the sweep then failed in makedirs after loading
    the backend. A trial file in the nearest existing folder decides."""
    with pytest.raises(SystemExit) as exc:
        depth_sweep.parse_args(["--out", "/proc/mhc-sweep/out"])
    assert exc.value.code == 2
    assert "--out expected a sweep folder (existing, or one to create), got '/proc/mhc-sweep/out', but '/proc' " \
           "is not writable" in capsys.readouterr().err


def test_committed_reference_commands_still_parse(tmp_path):
    """The stricter checks above refuse nothing a committed reference run was made with: every
    runs/reference sweep command and every run's rerun line parses (digits / text reruns repeat
    the vocab and seq_len the task fixes)."""
    import glob
    import shlex

    lines = [shlex.split(json.load(open(p))["command"])[1:]
             for p in glob.glob(os.path.join(ROOT, "runs", "reference", "*", "summary.json"))]
    lines += [shlex.split(json.load(open(p))["rerun"])[2:]
              for p in glob.glob(os.path.join(ROOT, "runs", "reference", "*", "*", "config.json"))]
    if not lines:
        pytest.skip("no runs/reference in this checkout")
    for argv in lines:
        argv[argv.index("--out") + 1] = str(tmp_path / "out")
        if "--task" in argv and argv[argv.index("--task") + 1] == "digits":
            pytest.importorskip("sklearn")
        depth_sweep.parse_args(argv)
