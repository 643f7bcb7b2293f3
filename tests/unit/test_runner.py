"""The entry wrapper: TF environment defaults and human error output."""

from __future__ import annotations

import logging
import os

import pytest

from ferops.errors import DataError
from ferops.runner import cap_onednn_isa, run, tf_environment


def test_tf_environment_sets_defaults_but_keeps_user_values(monkeypatch):
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    tf_environment()
    assert os.environ["TF_ENABLE_ONEDNN_OPTS"] == "1"  # oneDNN on AVX2 CPUs too (TF's default is off there)
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"  # the user's choice wins
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    tf_environment()
    assert os.environ["TF_ENABLE_ONEDNN_OPTS"] == "0"


def test_onednn_isa_cap_comes_from_the_model_config_and_the_user_wins(monkeypatch):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "recorded")  # so monkeypatch restores the original state afterwards
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    cap_onednn_isa({"arch": "resnet"})
    assert "ONEDNN_MAX_CPU_ISA" not in os.environ  # no key: oneDNN picks the best kernels
    cap_onednn_isa({"arch": "mini_xception", "onednn_max_isa": "avx2"})
    assert os.environ["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE")
    cap_onednn_isa({"onednn_max_isa": "avx2"})
    assert os.environ["ONEDNN_MAX_CPU_ISA"] == "AVX512_CORE"


def test_run_prints_expected_failures_without_traceback(capsys, monkeypatch):
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "1")  # run() sets TF defaults; keep them test-local

    def main():
        raise DataError("data/raw/x.csv row 3: expected 2304 pixel values, found 7")

    with pytest.raises(SystemExit) as exc:
        run(main)
    assert exc.value.code != 0
    err = capsys.readouterr().err
    assert err.startswith("error: data/raw/x.csv row 3") and "Traceback" not in err


def test_filtered_native_stderr_drops_tf_startup_chatter_only(capfd):
    from ferops.runner import filtered_native_stderr

    with filtered_native_stderr():
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
        os.write(2, b"I0000 00:00:1796337800.455796   21114 port.cc:153] oneDNN custom operations are on.\n")
        os.write(2, b"E0000 00:00:1796337809.047528   21114 cuda_platform.cc:52] failed call to cuInit: INTERNAL\n")
        os.write(2, b"E0000 00:00:1796337809.047528   21114 some_op.cc:7] a real error\n")
        os.write(2, b"plain C++ output\n")
    err = capfd.readouterr().err
    assert err == "E0000 00:00:1796337809.047528   21114 some_op.cc:7] a real error\nplain C++ output\n"


def test_start_tensorflow_leaves_other_backends_alone(monkeypatch):
    import sys

    from ferops import runner

    monkeypatch.setenv("KERAS_BACKEND", "jax")
    monkeypatch.delitem(sys.modules, "tensorflow", raising=False)  # restored afterwards by monkeypatch
    monkeypatch.setattr(runner, "filtered_native_stderr", lambda: (_ for _ in ()).throw(AssertionError("imported")))
    runner.start_tensorflow()  # a JAX-only machine has no TensorFlow to import
    assert "tensorflow" not in sys.modules


def test_keras_retracing_hint_is_dropped_other_tensorflow_warnings_kept(caplog):
    from ferops.runner import setup_logging

    setup_logging()
    setup_logging()  # a second call adds no second filter
    tf_log = logging.getLogger("tensorflow")
    assert sum(type(f).__name__ == "_RetracingFilter" for f in tf_log.filters) == 1
    with caplog.at_level(logging.WARNING):
        tf_log.warning("5 out of the last 9 calls to <function f at 0x1> triggered tf.function retracing. Tracing is…")
        tf_log.warning("a warning worth reading")
    assert [r.getMessage() for r in caplog.records] == ["a warning worth reading"]


def test_a_reader_that_leaves_early_is_not_an_error():
    """`ferops registry | head`: the pipe closes; the command stops quietly, exit 0, no BrokenPipeError traceback."""
    import subprocess
    import sys

    code = ("from ferops.runner import run\n"
            "def main():\n"
            "    for i in range(100000):\n"
            "        print('line', i)\n"
            "run(main)\n")
    r = subprocess.run(f"{sys.executable} -c \"{code}\" | head -1", shell=True, capture_output=True, text=True,
                       timeout=120, executable="/bin/bash")
    assert r.stdout == "line 0\n" and "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr, r.stderr


def test_a_server_port_is_checked_before_the_server_starts():
    import socket

    from ferops.errors import ConfigError
    from ferops.runner import ensure_port_free

    for port in (0, 70000):
        with pytest.raises(ConfigError, match=f"--port {port}: not a port number"):
            ensure_port_free("127.0.0.1", port, "x")
    with pytest.raises(ConfigError, match="--host no.such.host.invalid: "):
        ensure_port_free("no.such.host.invalid", 5001, "x")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError, match=f"x cannot listen on 127.0.0.1:{port}: .* pick another port with --port"):
            ensure_port_free("127.0.0.1", port, "x")
    ensure_port_free("127.0.0.1", port, "x")  # free again once closed


def test_an_unknown_log_level_is_info_with_a_warning_not_a_traceback():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", "from ferops.runner import run; run(lambda: print('ran'))"],
                          capture_output=True, text=True, env={**os.environ, "FEROPS_LOG_LEVEL": "loud"}, timeout=60)
    assert proc.returncode == 0 and proc.stdout == "ran\n"  # the old code: ValueError: Unknown level: 'LOUD'
    assert "FEROPS_LOG_LEVEL=LOUD is not a log level" in proc.stderr and "Traceback" not in proc.stderr


PROBE = """
from ferops.runner import run


def main():
    import sys

    import ferops
    print(ferops.__file__)
    print(sys.argv, *sys.warnoptions)


run(main)
"""


def test_a_stage_in_a_dvc_copy_runs_the_copys_code_not_the_workspaces(tmp_path):
    """`dvc exp run --temp` / `dvc queue` run stages in <repo>/.dvc/tmp/exps/…/, but the editable install put the
    installed src/ first: the experiment ran whatever code the workspace held when each stage started (edits made
    after queueing, another branch checked out), while its dvc.lock hashed the queued code."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    import ferops

    installed = Path(ferops.__file__).resolve()
    copy = tmp_path / "project" / ".dvc" / "tmp" / "exps" / "standalone" / "tmpab12"
    shutil.copytree(installed.parent, copy / "src" / "ferops", ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "stages").mkdir()
    (copy / "stages" / "probe.py").write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "FEROPS_COPY_CODE")}
    r = subprocess.run([sys.executable, "-W", "error::UserWarning", "stages/probe.py", "an arg"], cwd=copy, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and Path(r.stdout.splitlines()[0]) == copy / "src" / "ferops" / "__init__.py", r.stdout
    assert r.stdout.splitlines()[1:] == ["['stages/probe.py', 'an arg'] error::UserWarning"]  # arguments and options
    workspace = tmp_path / "project"  # not a copy: the installed code, as always
    shutil.copytree(copy / "stages", workspace / "stages")
    r = subprocess.run([sys.executable, "stages/probe.py"], cwd=workspace, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and Path(r.stdout.splitlines()[0]) == installed, r.stdout + r.stderr


def test_sigterm_ends_the_stages_mlflow_run_and_exits_as_terminated(tmp_path):
    """`kill`, `timeout`, a batch scheduler's time limit, `docker stop`: SIGTERM killed a stage on the spot, its MLflow
    run left RUNNING for ever. Now it stops as Ctrl-C does: the run ends, one line, exit 143, no traceback."""
    import signal
    import subprocess
    import sys
    import time

    import mlflow

    ready = tmp_path / "ready"
    code = ("import sys, time\n"
            "from pathlib import Path\n"
            "from ferops.runner import run\n"
            "from ferops.tracking import init_tracking, model_run\n"
            "def main():\n"
            "    init_tracking()\n"
            "    with model_run('train_deep', 'cnn', {'epochs': 1}, {}, run_dir=Path(sys.argv[1])):\n"
            "        Path(sys.argv[2]).touch()\n"
            "        while True:\n"
            "            time.sleep(0.05)\n"
            "run(main)\n")
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": store}
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "run"), str(ready)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists(), proc.communicate(timeout=10)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143 and err.strip().endswith("terminated (SIGTERM)") and "Traceback" not in err, err
    run_id = (tmp_path / "run" / "mlflow_run_id.txt").read_text().strip()
    assert mlflow.MlflowClient(tracking_uri=store).get_run(run_id).info.status == "FAILED"  # not RUNNING


def test_run_gives_the_callers_sigterm_handler_back():
    import signal

    from ferops import runner

    def mine(signum, frame):
        pass

    during = []
    before = signal.signal(signal.SIGTERM, mine)
    try:
        run(lambda: during.append(signal.getsignal(signal.SIGTERM)))
        assert during == [runner._on_sigterm] and signal.getsignal(signal.SIGTERM) is mine
        with pytest.raises(SystemExit):  # an expected failure's exit gives it back too
            run(lambda: (_ for _ in ()).throw(DataError("bad")))
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, before)
