"""The Makefile, through make itself: its variables (`--eval` adds a target that prints one) and its recipes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _make_var(name: str, *args: str) -> str:
    out = subprocess.run(["make", "-s", "--no-print-directory", "-C", str(ROOT), f"--eval=_print_var: ; @echo $({name})",
                          *args, "_print_var"], capture_output=True, text=True, timeout=30, check=True)
    return out.stdout.strip()


def _stand_in(venv: Path, tool: str, script: str) -> Path:
    """An executable `<venv>/bin/<tool>` that runs the bash `script`: a stand-in for the real tool."""
    (venv / "bin").mkdir(parents=True, exist_ok=True)
    path = venv / "bin" / tool
    path.write_text(f"#!/bin/bash\n{script}\n")
    path.chmod(0o755)
    return path


def _project(tmp_path: Path) -> Path:
    """A project folder holding this Makefile and a params.yaml, its VENV marked installed (`setup` does nothing)."""
    proj = tmp_path / "p"
    proj.mkdir()
    shutil.copy(ROOT / "Makefile", proj)
    (proj / "pyproject.toml").write_text("")
    (proj / "params.yaml").write_text("mine: true\n")
    (tmp_path / "venv" / ".installed").touch()
    return proj


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_an_absolute_venv_is_put_on_the_path_as_given(tmp_path):
    # `make run VENV=/abs/venv` put $(CURDIR)//abs/venv/bin on the PATH: dvc, mlflow and ruff were then not found
    venv = tmp_path / "venv"
    assert _make_var("PATH", f"VENV={venv}").split(":")[0] == f"{venv}/bin"
    assert _make_var("PATH").split(":")[0] == f"{ROOT}/.venv/bin"


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_exp_restores_each_projects_own_params_when_they_share_a_venv(tmp_path):
    # the copy of params.yaml was kept in $(VENV): project B's `make exp` during A's overwrote A's copy, and A's
    # params.yaml was then "restored" to B's. A stand-in dvc edits params.yaml as `dvc exp run -S` does, and in A
    # runs B's experiment meanwhile.
    venv = tmp_path / "venv"
    _stand_in(venv, "dvc", 'echo "changed: by dvc exp run" >> params.yaml\n'
                           'if [ -n "$OTHER" ]; then OTHER= make -s -C "$OTHER" exp PROFILE=p.yaml; fi')
    _stand_in(venv, "python", '[ "$1" = -c ] || echo -S x=1')  # `python -m ferops.profiles` prints the overrides
    projects = []
    for name in ("a", "b"):
        p = tmp_path / name
        p.mkdir()
        shutil.copy(ROOT / "Makefile", p)
        (p / "pyproject.toml").write_text("")
        (p / "params.yaml").write_text(f"project: {name}\n")
        projects.append(p)
    (venv / ".installed").touch()  # newer than pyproject.toml: `setup` installs nothing
    a, b = projects
    subprocess.run(["make", "-s", "-C", str(a), "exp", "PROFILE=p.yaml", f"VENV={venv}"], check=True, timeout=60,
                   capture_output=True,
                   env={"PATH": f"{Path(str(shutil.which('make'))).parent}:/usr/bin:/bin", "OTHER": str(b)})  # OTHER in the
    # environment, not on make's command line: make would pass it on to the nested make too
    assert (a / "params.yaml").read_text() == "project: a\n"
    assert (b / "params.yaml").read_text() == "project: b\n"


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_demo_runs_in_dvcs_copy_and_leaves_the_workspace_alone(tmp_path):
    # `make demo` ran in the workspace: its outputs and dvc.lock replaced a real-data run's, and going back with
    # `make run` re-trained every model (DVC's run cache skips stages with uncached outputs). In DVC's copy
    # (--temp), params.yaml needs no restoring either (a real `dvc exp run --temp` leaving the workspace as it was is
    # checked in tests/integration/test_dvc_data.py).
    venv = tmp_path / "venv"
    _stand_in(venv, "dvc", 'echo "$@" > dvc-args')
    proj = _project(tmp_path)
    subprocess.run(["make", "-s", "-C", str(proj), "demo", f"VENV={venv}"], check=True, timeout=60,
                   capture_output=True, env={"PATH": f"{Path(str(shutil.which('make'))).parent}:/usr/bin:/bin"})
    assert (proj / "dvc-args").read_text() == "exp run --temp -S ingest.source=synthetic\n"


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_ctrl_c_during_make_exp_restores_params(tmp_path):
    # the copy was restored only after dvc returned: a Ctrl-C (SIGINT to the whole foreground group) left the
    # `-S` overrides in params.yaml, and the next `make run` trained on the demo set / the profile silently
    venv = tmp_path / "venv"
    _stand_in(venv, "dvc", 'echo "changed: by dvc exp run" >> params.yaml; touch dvc-started; sleep 30')
    # `python -m ferops.profiles` prints the overrides; `python -c` (where setup's ferops is) prints nothing
    _stand_in(venv, "python", '[ "$1" = -c ] || echo -S x=1')
    proj = _project(tmp_path)
    make = subprocess.Popen(["make", "-s", "-C", str(proj), "exp", f"VENV={venv}", "PROFILE=p.yaml"],
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            # a terminal's default SIGINT: an xdist worker ignores it, and children inherit that
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
                            env={"PATH": f"{Path(str(shutil.which('make'))).parent}:/usr/bin:/bin"})
    deadline = time.monotonic() + 30
    while not (proj / "dvc-started").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (proj / "params.yaml").read_text() != "mine: true\n"
    os.killpg(make.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
    assert make.wait(timeout=30) != 0
    assert (proj / "params.yaml").read_text() == "mine: true\n"


def _locked() -> dict[str, str]:
    from packaging.utils import canonicalize_name

    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not name==version"
            pins[canonicalize_name(name)] = version.strip()
    return pins


def test_the_lock_pins_every_dependency_within_pyproject_ranges():
    """A pin outside a pyproject.toml range makes `make setup` fail in pip; a dependency without a pin installs
    whatever was released since the suite last passed."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    pins = _locked()
    for spec in [*project["dependencies"], *extras["dev"], *extras["dashboard"]]:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not pinned in constraints.txt (make lock)"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} is outside {req.specifier}"


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_setup_installs_within_the_lock_unless_lifted():
    def install_line(*args: str) -> str:
        out = subprocess.run(["make", "-n", "-s", "--no-print-directory", "-C", str(ROOT), "-W", "pyproject.toml",
                              *args, "setup"], capture_output=True, text=True, timeout=30, check=True).stdout
        return next(line for line in out.splitlines() if "pip install" in line and "-e" in line)

    assert "--constraint constraints.txt" in install_line()
    assert "--constraint" not in install_line("LOCK=")


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_servers_take_another_port_from_port():
    """`make serve` had 5001 written into its recipe (as ui 5000, dashboard 8080): a busy port left `ferops serve
    --port` as the only way."""
    def command(target: str, *args: str) -> str:
        out = subprocess.run(["make", "-n", "-s", "--no-print-directory", "-C", str(ROOT), *args, target],
                             capture_output=True, text=True, timeout=30, check=True).stdout
        return next(line for line in out.splitlines() if "--port" in line)

    for target, default in (("serve", 5001), ("ui", 5000), ("dashboard", 8080)):
        assert f"--port {default}" in command(target) and "--port 5123" in command(target, "PORT=5123")


def _stand_in_project(folder: Path, python: str, lock: str) -> Path:
    """The Makefile in `folder` with an empty pyproject.toml, constraints.txt holding `lock`, and a venv whose
    `python` is the bash line `python` (what each test needs pip to answer); returns the venv."""
    venv = folder / "venv"
    _stand_in(venv, "python", python)
    shutil.copy(ROOT / "Makefile", folder)
    (folder / "pyproject.toml").write_text("")
    (folder / "constraints.txt").write_text(lock)
    return venv


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_setup_says_how_to_lift_the_lock_when_pip_cannot_install_within_it(tmp_path):
    # pip alone ends on "ResolutionImpossible" or "No matching distribution" for a pin with no wheel for this Python
    # or platform; a stand-in venv python fails the install as pip would
    venv = _stand_in_project(tmp_path, '[[ " $* " == *" -e "* ]] && { echo "ERROR: ResolutionImpossible" >&2; exit 1; }; '
                                       'exit 0', lock="a==1\n")
    out = subprocess.run(["make", "-s", "setup", f"VENV={venv}"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode != 0 and "ResolutionImpossible" in out.stderr
    assert "could not install within constraints.txt" in out.stderr and "`make setup LOCK=`" in out.stderr
    assert not (venv / ".installed").exists()  # the next `make setup` tries again


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_setup_without_the_lock_upgrades_an_installed_venv(tmp_path):
    """`make setup LOCK=` on a set-up .venv did nothing (the stamp was newer than pyproject.toml and the lock), and
    pip install alone keeps every installed version that satisfies a range: `make lock` then recorded the old ones."""
    for f in ("Makefile", "pyproject.toml", "constraints.txt"):
        shutil.copy(ROOT / f, tmp_path / f)
    (tmp_path / ".venv").mkdir()
    stamp = tmp_path / ".venv" / ".installed"
    stamp.touch()
    later = time.time() + 60
    os.utime(stamp, (later, later))  # installed after the lock and pyproject.toml were written

    def dry(*args: str) -> str:
        return subprocess.run(["make", "-n", "-s", "--no-print-directory", "-C", str(tmp_path), *args, "setup"],
                              capture_output=True, text=True, timeout=30, check=True).stdout

    assert '-e ".[dev]"' not in dry()  # within the lock and up to date: nothing to do
    line = next(ln for ln in dry("LOCK=").splitlines() if "pip install" in ln and '-e ".[dev]"' in ln)
    assert "--upgrade --upgrade-strategy eager" in line and "--constraint" not in line


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_lock_writes_the_lock_it_was_given_and_keeps_its_comments(tmp_path):
    # it always wrote constraints.txt, also under `LOCK=other.txt`; a stand-in venv python answers `pip freeze`
    venv = _stand_in_project(tmp_path, '[ "$1 $2 $3" = "-m pip freeze" ] && printf "a==1\\nb==2\\n"',
                             lock="# ours\nold==0\n")
    (tmp_path / "other.txt").write_text("# theirs\nold==0\n")
    time.sleep(0.05)
    (venv / ".installed").touch()  # newer than both: `setup` installs nothing
    run = {"check": True, "timeout": 60, "capture_output": True, "cwd": tmp_path}
    subprocess.run(["make", "-s", "lock", f"VENV={venv}", "LOCK=other.txt"], **run)
    assert (tmp_path / "other.txt").read_text() == "# theirs\na==1\nb==2\n"
    assert (tmp_path / "constraints.txt").read_text() == "# ours\nold==0\n"
    subprocess.run(["make", "-s", "lock", f"VENV={venv}"], **run)
    assert (tmp_path / "constraints.txt").read_text() == "# ours\na==1\nb==2\n"


@pytest.mark.skipif(shutil.which("make") is None or shutil.which("git") is None, reason="make or git is not installed")
def test_clean_keeps_the_reports_git_tracks(tmp_path):
    """The README has users commit reports/metrics.json (the baseline `dvc exp show` compares against); `make clean`
    removed all of reports/, leaving a deleted tracked file (a user audit). It keeps what git tracks there, and a
    project that tracks nothing in reports/ loses the folder as before."""
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    for tracked in (True, False):
        p = tmp_path / f"tracked_{tracked}"
        (p / "reports" / "evaluation" / "resnet").mkdir(parents=True)
        (p / "models").mkdir()
        shutil.copy(ROOT / "Makefile", p)
        (p / "reports" / "metrics.json").write_text("{}\n")
        (p / "reports" / "register.json").write_text("{}\n")
        (p / "reports" / "evaluation" / "resnet" / "confusion test.png").write_bytes(b"png")
        subprocess.run(["git", "init", "-q"], cwd=p, check=True, env=env)
        if tracked:
            subprocess.run(["git", "add", "reports/metrics.json"], cwd=p, check=True, env=env)
        subprocess.run(["make", "-s", "clean"], cwd=p, check=True, timeout=60, capture_output=True, env=env)
        left = sorted(str(f.relative_to(p)) for f in p.rglob("*") if ".git" not in f.parts)
        assert left == (["Makefile", "reports", "reports/metrics.json"] if tracked else ["Makefile"]), left


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_setup_repoints_a_shared_venv_at_this_project(tmp_path):
    """ferops is installed editable, so a VENV shared by two clones ran the code of the clone that installed it last
    while DVC hashed this one's src/ (a user audit). `make setup` re-installs it from this project when it points at
    another, and says so; when it points here, it installs nothing. A stand-in python answers where ferops is."""
    project = tmp_path / "a"
    (project / "src").mkdir(parents=True)
    shutil.copy(ROOT / "Makefile", project)
    (project / "pyproject.toml").write_text("")
    venv = tmp_path / "venv"
    _stand_in(venv, "python", 'if [ "$1" = -c ]; then cat "$(dirname "$0")/owner"; exit 0; fi\n'
                              'echo "$@" >> "$(dirname "$0")/calls"')
    (venv / ".installed").touch()  # newer than pyproject.toml: the install rule itself does not run
    env = {"PATH": f"{Path(str(shutil.which('make'))).parent}:/usr/bin:/bin"}
    (venv / "bin" / "owner").write_text(f"{tmp_path / 'b' / 'src'}\n")
    r = subprocess.run(["make", "-s", "-C", str(project), "setup", f"VENV={venv}"], capture_output=True, text=True,
                       timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    assert f"ran ferops from {tmp_path / 'b' / 'src'}; installing this project's ({project}) instead" in r.stderr
    assert (venv / "bin" / "calls").read_text() == "-m pip install --quiet --no-deps -e .\n"
    (venv / "bin" / "calls").unlink()
    (venv / "bin" / "owner").write_text(f"{project / 'src'}\n")
    r = subprocess.run(["make", "-s", "-C", str(project), "setup", f"VENV={venv}"], capture_output=True, text=True,
                       timeout=60, env=env)
    assert r.returncode == 0 and r.stderr == "" and not (venv / "bin" / "calls").exists(), r.stderr
