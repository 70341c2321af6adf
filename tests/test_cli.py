"""The fusedclip command."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

import fusedclip
from fusedclip import cli
from fusedclip.kernels import cpu


def fusedclip_cmd():
    exe = Path(sys.executable).parent / "fusedclip"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "fusedclip.cli"]


def test_info_reports_build_and_runtime():
    out = subprocess.run(fusedclip_cmd() + ["info"], capture_output=True, text=True, check=True).stdout
    assert fusedclip.__version__ in out
    for key in ("compiler flags", "-fopenmp", "SIMD selected", "OpenMP threads", "CUDA"):
        assert key in out, key


def test_console_script_is_installed():
    assert (Path(sys.executable).parent / "fusedclip").exists()


def test_unknown_command_fails():
    r = subprocess.run(fusedclip_cmd() + ["frobnicate"], capture_output=True, text=True)
    assert r.returncode == 2 and "invalid choice" in r.stderr


# one small, fast selection: if a check were missing, the run would go ahead
QUICK = ["bench", "--workload", "small", "--dtype", "float32", "--mode", "not-triggered", "--reps", "1"]


def usage_error(argv, capsys):
    """Run cli.main(argv); it must exit with code 2 before any work. Returns stderr."""
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert "making data" not in err  # nothing ran
    return err


@pytest.mark.parametrize("value", ["0", "-3", "x", "1.5"])
def test_reps_must_be_a_positive_integer(value, capsys, tmp_path):
    err = usage_error(QUICK[:-2] + ["--reps", value, "--json", str(tmp_path / "r.json")], capsys)
    assert "--reps" in err and value in err
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("value", ["0", "-1", str(cpu.MAX_THREADS + 1), "20000", str(2**63), "two"])
def test_threads_must_be_in_range(value, capsys, tmp_path):
    err = usage_error(QUICK + ["--threads", value, "--json", str(tmp_path / "t.json")], capsys)
    assert "--threads" in err and value in err
    assert not (tmp_path / "t.json").exists()


def test_reps_zero_is_not_silently_21(tmp_path):
    """The original code turned --reps 0 into the default 21; as a console command it is exit 2."""
    r = subprocess.run(fusedclip_cmd() + QUICK[:-2] + ["--reps", "0", "--json", str(tmp_path / "z.json")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "--reps" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "z.json").exists()


def test_unwritable_json_is_refused_before_the_run(capsys, tmp_path):
    path = tmp_path / "no-such-dir" / "out.json"
    err = usage_error(QUICK + ["--json", str(path)], capsys)
    assert "--json" in err and str(path) in err


def test_json_path_that_is_a_directory_is_refused(capsys, tmp_path):
    err = usage_error(QUICK + ["--json", str(tmp_path)], capsys)
    assert "--json" in err and "directory" in err


def test_unwritable_markdown_is_refused_before_the_run(capsys, tmp_path):
    md = tmp_path / "no-such-dir" / "out.md"
    err = usage_error(QUICK + ["--json", str(tmp_path / "m.json"), "--markdown", str(md)], capsys)
    assert "--markdown" in err and str(md) in err
    assert not (tmp_path / "m.json").exists()


def test_plot_without_matplotlib_is_refused_before_the_run(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    out = tmp_path / "p.json"
    err = usage_error(QUICK + ["--json", str(out), "--plot"], capsys)
    assert "--plot" in err and "matplotlib" in err
    assert not out.exists()  # the results were not computed and then lost


def test_version():
    r = subprocess.run(fusedclip_cmd() + ["--version"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"fusedclip {fusedclip.__version__}"


def test_help_is_plain_text():
    r = subprocess.run(fusedclip_cmd() + ["--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "``" not in r.stdout and "info" in r.stdout and "bench" in r.stdout and "--version" in r.stdout


def test_bench_help_exits_0():
    r = subprocess.run(fusedclip_cmd() + ["bench", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "``" not in r.stdout
    for opt in ("--reps", "--threads", "--json", "--plot"):
        assert opt in r.stdout


def test_bench_device_cuda_without_a_gpu_is_a_clear_error(capsys, tmp_path):
    """This machine has no GPU: --device cuda says so (exit 2), writes nothing."""
    from fusedclip import bench_gpu

    if bench_gpu.backend() is not None:
        pytest.skip("a CUDA GPU is usable here")
    rc = cli.main(["bench", "--device", "cuda", "--quick", "--json", str(tmp_path / "b.json")])
    err = capsys.readouterr().err
    assert rc == 2 and "no CUDA GPU is usable here" in err
    assert not (tmp_path / "b.json").exists()


@pytest.mark.parametrize("flag", [["--plot"], ["--threads", "2"]], ids=["plot", "threads"])
def test_bench_device_cuda_refuses_cpu_only_options(flag, capsys):
    err = usage_error(["bench", "--device", "cuda", "--quick"] + flag, capsys)
    assert "applies to the CPU bench only" in err


# ---------------------------------------------------------------- output paths checked before a run (bench and demos)
# Every file a command writes is checked before the run: the benchmark and
# the demos write their results last, so a path that cannot be written used
# to cost the whole run and then exit 1 with a traceback.
def listing(d):
    return sorted(p.relative_to(d).as_posix() for p in Path(d).rglob("*"))


@pytest.mark.parametrize("flag", ["--json", "--markdown"])
@pytest.mark.parametrize("case", ["empty", "new-dir-slash", "dir-slash", "parent-is-a-file",
                                  "parent-missing", "not-writable"])
def test_bench_output_paths_are_checked_before_the_run(flag, case, capsys, tmp_path, monkeypatch):
    (tmp_path / "d").mkdir()
    (tmp_path / "file.txt").write_text("x")
    path, words = {
        "empty": ("", "empty"),
        "new-dir-slash": (str(tmp_path / "newdir") + "/", "directory"),
        "dir-slash": (str(tmp_path / "d") + "/", "directory"),
        "parent-is-a-file": (str(tmp_path / "file.txt" / "out"), "not a directory"),
        "parent-missing": (str(tmp_path / "no" / "such" / "out"), "does not exist"),
        "not-writable": (str(tmp_path / "d" / "out"), "not writable"),
    }[case]
    if case == "not-writable":  # (tests run as root here, for whom every mode is writable)
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, m, *a, **k: False if str(p).startswith(
            str(tmp_path / "d")) and m & os.W_OK else real(p, m, *a, **k))
    before = listing(tmp_path)
    other = ["--json", str(tmp_path / "ok.json")] if flag == "--markdown" else []
    err = usage_error(QUICK + other + [flag, path], capsys)
    assert flag in err and words in err and "Traceback" not in err, err
    assert "usage:" in err  # argparse's form
    assert listing(tmp_path) == before  # nothing written, no directory made


def test_plot_png_that_is_a_directory_is_refused(capsys, tmp_path):
    (tmp_path / "r.png").mkdir()
    err = usage_error(QUICK + ["--json", str(tmp_path / "r.json"), "--plot"], capsys)
    assert "--plot" in err and str(tmp_path / "r.png") in err and "directory" in err
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("json_arg", ["", "newdir/"])
def test_bench_bad_json_is_exit_2_without_a_traceback(json_arg, tmp_path):
    """The reported cases, as a console command, from a fresh directory."""
    r = subprocess.run(fusedclip_cmd() + QUICK + ["--json", json_arg], capture_output=True, text=True,
                       timeout=300, cwd=tmp_path)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and "usage:" in r.stderr and "--json" in r.stderr
    assert "making data" not in r.stderr and listing(tmp_path) == []


# the demos, each made as quick as its options allow (if a check were
# missing, the run would go ahead and fail at its end)
DEMOS = {
    "cliff": (["--steps", "3"], ["cliff.json", "cliff.png"]),
    "temporal-order": (["--lengths", "6", "--seeds", "1", "--steps", "2"],
                       ["temporal-order.csv", "temporal-order.json", "temporal-order.png"]),
    "lr": (["--lrs", "0.3", "--steps", "2"], ["lr.json", "lr.png"]),
    "thresholds": (["--steps", "3"], ["thresholds.json", "thresholds.png"]),
}


@pytest.mark.parametrize("name,target", [(n, f) for n, (_, files) in DEMOS.items() for f in files])
def test_demo_output_that_is_a_directory_is_refused_before_the_run(name, target, capsys, tmp_path):
    (tmp_path / target).mkdir()
    before = listing(tmp_path)
    err = usage_error(["demo", name, "--out", str(tmp_path)] + DEMOS[name][0], capsys)
    assert "--out" in err and str(tmp_path / target) in err and "directory" in err, err
    assert "Traceback" not in err and "usage:" in err
    assert listing(tmp_path) == before


def test_demo_png_is_not_checked_with_no_plot(tmp_path, capsys):
    """--no-plot writes no PNG: a directory in its place is no obstacle."""
    (tmp_path / "cliff.png").mkdir()
    assert cli.main(["demo", "cliff", "--no-plot", "--out", str(tmp_path), "--steps", "3"]) == 0
    assert (tmp_path / "cliff.json").is_file()


def test_demo_unwritable_output_file_is_refused(tmp_path, capsys, monkeypatch):
    (tmp_path / "cliff.json").write_text("{}")
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, m, *a, **k: False if str(p) == str(
        tmp_path / "cliff.json") and m & os.W_OK else real(p, m, *a, **k))
    err = usage_error(["demo", "cliff", "--out", str(tmp_path), "--steps", "3"], capsys)
    assert str(tmp_path / "cliff.json") in err and "not writable" in err
    assert (tmp_path / "cliff.json").read_text() == "{}"


def test_demo_output_directory_is_exit_2_without_a_traceback(tmp_path):
    (tmp_path / "cliff.json").mkdir()
    r = subprocess.run([sys.executable, "-m", "fusedclip.cli", "demo", "cliff", "--steps", "3",
                        "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and "usage:" in r.stderr and "cliff.json" in r.stderr
    assert listing(tmp_path) == ["cliff.json"]


# ---------------------------------------------------------------- bench and CLI entry points
def test_bench_quick_writes_complete_json(tmp_path, capsys):
    out = tmp_path / "q.json"
    rc = cli.main(["bench", "--quick", "--workload", "small", "--mode", "triggered",
                   "--reps", "2", "--threads", "1", "--json", str(out)])
    assert rc == 0
    assert "x floor" in capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert {"date", "machine", "config", "workloads", "results"} <= set(doc)
    assert doc["config"]["quick"] is True and doc["config"]["modes"] == ["triggered"]
    assert set(doc["workloads"]) == {"small/float32"}
    assert doc["workloads"]["small/float32"]["buffers"] == 10_000
    keys = {"workload", "dtype", "mode", "impl", "median_s", "times_s", "bytes_moved", "gbps",
            "floor_s", "x_floor", "norm", "rel_err", "speedup"}
    impls = set()
    for r in doc["results"]:
        assert keys <= set(r), set(r) ^ keys
        impls.add(r["impl"])
        for k in ("median_s", "gbps", "floor_s", "x_floor"):
            assert math.isfinite(r[k]) and r[k] > 0, (k, r[k])
        assert all(math.isfinite(v) and v > 0 for v in r["speedup"].values()), r["speedup"]
        if r["impl"].startswith("fusedclip"):
            assert r["rel_err"] <= 1e-12 and "naive-numpy" in r["speedup"]
    assert {"floor", "fusedclip", "fusedclip-plan", "naive-numpy"} <= impls


def test_bench_help_and_top_level_help():
    exe = [sys.executable, "-m", "fusedclip.cli"]
    r = subprocess.run(exe + ["bench", "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    for opt in ("--quick", "--workload", "--dtype", "--mode", "--threads", "--reps", "--json",
                "--plot", "--markdown"):
        assert opt in r.stdout, opt
    r = subprocess.run(exe + ["--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "info" in r.stdout and "bench" in r.stdout
    r = subprocess.run(exe, capture_output=True, text=True)
    assert r.returncode == 2  # a command is required


def test_info_reports_the_real_constants(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"{cpu.CHUNK} elements; one thread below {cpu.PARALLEL_MIN} elements" in out
    assert f"{cpu.max_threads()} (OMP_NUM_THREADS=" in out
    assert cpu.info()["simd_selected"] in out
