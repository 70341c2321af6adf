"""`fusedclip demo`: each experiment in a tiny configuration (seconds): its
files, and the qualitative result it claims at that scale."""
import csv
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from fusedclip.demos import adaptive, charlm, cliff, rnn, temporal


# ---------------------------------------------------------------- the trainer
@pytest.mark.parametrize("act", ["sigmoid", "tanh"])
def test_bptt_gradient_matches_finite_differences(act):
    """The vectorised BPTT against central differences of the loss, in float64."""
    rng = np.random.default_rng(0)
    net = rnn.RNN(5, 7, 3, act, seed=1, rec_scale=1.5)
    for k in net.params:  # float64, so that the differences are accurate
        net.params[k] = net.params[k].astype(np.float64) + 0.1 * rng.standard_normal(net.params[k].shape)
        net.grads[k] = np.zeros_like(net.params[k])
    T, B = 6, 4
    U = rnn.one_hot(rng.integers(0, 5, (T, B)), 5).astype(np.float64)
    tg = rng.integers(0, 3, (T, B))
    mask = np.array([0, 1, 0, 0, 1, 1], bool)
    net.loss_and_grads(U, tg, mask)
    for k, p in net.params.items():
        want = np.empty_like(p)
        for i in np.ndindex(p.shape):
            old = p[i]
            p[i] = old + 1e-6
            lp = net.loss_and_grads(U, tg, mask)
            p[i] = old - 1e-6
            lm = net.loss_and_grads(U, tg, mask)
            p[i] = old
            want[i] = (lp - lm) / 2e-6
        net.loss_and_grads(U, tg, mask)
        np.testing.assert_allclose(net.grads[k], want, rtol=1e-5, atol=1e-8, err_msg=k)


def test_the_clipper_clips_the_trainers_gradients_in_place():
    net = rnn.RNN(4, 6, 2, seed=0)
    c = net.clipper(1e-6)
    for g in net.grad_list:
        g[...] = 1.0
    st = c()
    assert st.clipped
    total = math.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in net.grad_list))
    assert abs(total - 1e-6) <= 1e-12


# ---------------------------------------------------------------- cliff
def test_cliff_unclipped_steps_jump_and_clipped_ones_stay(tmp_path):
    doc = cliff.run(str(tmp_path / "cliff"), grid=41)
    assert (tmp_path / "cliff.png").stat().st_size > 10_000
    on_disk = json.loads((tmp_path / "cliff.json").read_text())
    assert on_disk["summary"] == doc["summary"]
    wall, controls = doc["summary"][:6], doc["summary"][6:]
    for s in wall:  # the wall: a jump of several units unclipped; <= lr * threshold clipped
        assert s["largest_step"]["plain"] > 2.0, s
        assert s["largest_step"]["clipped"] <= 0.1 * 1.0 + 1e-12, s
    assert sum(s["final_loss"]["clipped"] < s["final_loss"]["plain"] for s in wall) >= 5
    for s in controls:  # far from the wall clipping never acts: the same path
        assert s["largest_step"]["plain"] == s["largest_step"]["clipped"]
    assert "largest step" in cliff.report(doc)


def test_cliff_gradient_is_exact():
    w, b = np.array([4.7, 2.0]), np.array([-2.4, -1.0])
    _, gw, gb = cliff.loss_and_grad(w, b)
    h = 1e-7
    fw = (cliff.loss_and_grad(w + h, b)[0] - cliff.loss_and_grad(w - h, b)[0]) / (2 * h)
    fb = (cliff.loss_and_grad(w, b + h)[0] - cliff.loss_and_grad(w, b - h)[0]) / (2 * h)
    np.testing.assert_allclose(gw, fw, rtol=1e-5)
    np.testing.assert_allclose(gb, fb, rtol=1e-5)


# ---------------------------------------------------------------- temporal order
def test_temporal_order_batches_follow_task_6a():
    U, tg, cls = temporal.batch(20, 500, np.random.default_rng(0))
    seq = U.argmax(axis=-1)
    assert (seq[0] == 6).all() and (seq[-1] == 7).all()                     # E ... B
    rel = np.argwhere((seq == 4) | (seq == 5))                               # X or Y
    assert len(rel) == 2 * 500
    first = np.array([np.flatnonzero((seq[:, j] == 4) | (seq[:, j] == 5)) for j in range(500)])
    assert ((first[:, 0] >= 2) & (first[:, 0] <= 4)).all() and ((first[:, 1] >= 10) & (first[:, 1] <= 12)).all()
    want = 2 * (seq[first[:, 0], np.arange(500)] - 4) + (seq[first[:, 1], np.arange(500)] - 4)
    assert (cls == want).all() and (tg[-1] == cls).all() and set(cls) == {0, 1, 2, 3}


@pytest.mark.parametrize("T", [6, 7, 9, 13, 50])
def test_every_length_from_the_minimum_has_both_slots_in_range(T):
    U, tg, cls = temporal.batch(T, 300, np.random.default_rng(T))
    seq = U.argmax(axis=-1)
    assert (seq[0] == 6).all() and (seq[-1] == 7).all()
    assert (((seq == 4) | (seq == 5)).sum(axis=0) == 2).all()
    with pytest.raises(ValueError, match="T >= 6"):
        temporal.batch(5, 3, np.random.default_rng(0))


def test_temporal_order_tiny_run(tmp_path):
    """T = 6: both methods learn it in a few hundred steps, from the same seed;
    the CSV has a row per run and the JSON the success rates."""
    doc = temporal.run(str(tmp_path / "t"), lengths=(6,), seeds=1, steps=600, batch=100, lr=3.0)
    rows = list(csv.DictReader(open(tmp_path / "t.csv")))
    assert [r["method"] for r in rows] == ["plain", "clipped"]
    assert doc["success_rate"] == {"plain": {6: 1.0}, "clipped": {6: 1.0}}
    assert (tmp_path / "t.png").stat().st_size > 10_000
    assert "50 seeds" not in doc["scale"] and "1 seeds x 600 steps" in doc["scale"]


def test_progress_bar_reaches_the_end():
    import io

    s = io.StringIO()
    p = temporal.Progress(10, stream=s)
    for _ in range(10):
        p.add()
    assert "100.0%" in s.getvalue() and s.getvalue().endswith("\n")


# ---------------------------------------------------------------- learning rate
def test_lr_sweep_clipping_survives_where_plain_diverges(tmp_path):
    # lr 1 is on the edge for plain SGD (one spike decides, and the BLAS thread
    # count can tip it): the test uses a safe lr and a clearly unstable one
    doc = charlm.run(str(tmp_path / "lr"), lrs=(0.3, 2.0), steps=120)
    by = {(r["lr"], r["clip"] is not None): r for r in doc["runs"]}
    assert by[(0.3, False)]["diverged_at"] is None and by[(0.3, True)]["diverged_at"] is None
    assert by[(2.0, False)]["diverged_at"] is not None         # plain SGD blows up at lr 2 ...
    assert by[(2.0, True)]["diverged_at"] is None              # ... clipped SGD trains
    assert by[(2.0, True)]["final_loss"] < math.log(doc["text"]["vocabulary"])
    assert (tmp_path / "lr.png").stat().st_size > 10_000
    assert "best lr" in charlm.report(doc)


def test_corpus_ships_with_python_and_does_not_depend_on_what_was_imported():
    text = charlm.corpus()
    assert len(text) > 100_000 and all(32 <= ord(c) < 127 or c == "\n" for c in text[:5000])
    import collections.abc  # noqa: F401  submodules become attributes of their package
    import json.tool  # noqa: F401
    import logging.handlers  # noqa: F401
    import unittest.mock  # noqa: F401

    assert charlm.corpus() == text  # (once, the test run's imports changed the lr results)


# ---------------------------------------------------------------- the command
def test_cli_demo_cliff_writes_its_files(tmp_path):
    r = subprocess.run([sys.executable, "-m", "fusedclip.cli", "demo", "cliff", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "largest step" in r.stdout and (tmp_path / "cliff.png").exists() and (tmp_path / "cliff.json").exists()


@pytest.mark.parametrize("argv,words", [
    (["demo", "cliff", "--out", "/nonexistent-fc-dir"], "not a directory"),
    (["demo", "temporal-order", "--seeds", "0"], "--seeds must be >= 1"),
    (["demo", "temporal-order", "--lengths", "5,x"], "comma-separated"),
    (["demo", "lr", "--lrs", "-1"], "finite and > 0"),
    (["demo", "temporal-order", "--lengths", "8,4"], "must be >= 6"),
    (["demo", "temporal-order", "--lr", "0"], "--lr must be finite and > 0"),
    (["demo", "nope"], "invalid choice"),
    (["demo", "lr", "--lrs", "nan"], "finite and > 0"),
    (["demo", "lr", "--lrs", "1,inf"], "finite and > 0"),
    (["demo", "temporal-order", "--lr", "nan"], "finite and > 0"),
    (["demo", "cliff", "--lengths", "8"], "--lengths applies to the temporal-order demo only"),
    (["demo", "lr", "--seeds", "2"], "--seeds applies to the temporal-order demo only"),
    (["demo", "cliff", "--lrs", "1"], "--lrs applies to the lr demo only"),
    (["demo", "lr", "--full"], "--full applies to the temporal-order demo only"),
    (["demo", "cliff", "--lr", "1"], "--lr applies to the temporal-order and thresholds demos only"),
])
def test_cli_demo_usage_errors(argv, words, capsys):
    """Bad values, non-finite numbers and options that do not apply: exit 2, before any work."""
    from fusedclip import cli

    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2 and words in capsys.readouterr().err


def test_json_is_strict_even_for_a_diverged_run(tmp_path):
    from fusedclip.demos import _out

    _out.save({"losses": [1.0, float("inf"), float("nan")], "x": {"y": (float("-inf"),)}},
              str(tmp_path / "d"), None, plot=False)
    text = (tmp_path / "d.json").read_text()
    assert json.loads(text) == {"losses": [1.0, None, None], "x": {"y": [None]}}
    assert "NaN" not in text and "Infinity" not in text


def test_cli_demo_cliff_takes_steps(tmp_path):
    from fusedclip import cli

    assert cli.main(["demo", "cliff", "--steps", "5", "--no-plot", "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "cliff.json").read_text())
    assert doc["config"]["steps"] == 5 and len(doc["runs"][0]["plain"]["path"]) == 6


def test_thresholds_demo_records_each_clippers_history(tmp_path):
    doc = adaptive.run(str(tmp_path / "thr"), steps=40, plot=True)
    runs = {r["threshold"]: r for r in doc["runs"]}
    assert set(runs) == {"plain", "fixed", "percentile", "zscore"}
    assert runs["plain"]["clipped_steps"] == 0 and runs["fixed"]["clipped_steps"] > 0
    h = runs["percentile"]["history"]
    assert len(h["norm"]) == len(runs["percentile"]["losses"]) and h["step"][0] == 0
    # AutoClip: this step's threshold is the 10th percentile of the norms so far
    norms = [x for x in h["norm"]]
    assert h["threshold"][9] == pytest.approx(float(np.percentile(norms[:10], 10)), rel=1e-12)
    assert all(t == float("inf") or t is None for t in runs["zscore"]["history"]["threshold"][:25])
    assert (tmp_path / "thr.json").exists() and (tmp_path / "thr.png").stat().st_size > 10_000
    assert "percentile" in adaptive.report(doc)
