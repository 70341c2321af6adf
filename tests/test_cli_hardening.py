"""Issue 7 (item 10): the command line's rough edges.

Bad numbers are argparse errors (exit code 2, a message naming the option),
and what would fail at the end of a long benchmark (an unwritable output
path, ``--plot`` without matplotlib) is refused before it starts.
"""
import subprocess
import sys
from pathlib import Path

import pytest

import fusedclip
from fusedclip import cli
from fusedclip.kernels import cpu

# one small, fast selection: if a check were missing, the run would go ahead
QUICK = ["bench", "--workload", "small", "--dtype", "float32", "--mode", "not-triggered", "--reps", "1"]


def fusedclip_cmd():
    exe = Path(sys.executable).parent / "fusedclip"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "fusedclip.cli"]


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
