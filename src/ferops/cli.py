"""The `ferops` command: predict on photos, list the registry, promote a version, serve the champion, open the
Optuna dashboard."""

from __future__ import annotations

import argparse
import sys

from ferops.constants import FACE_MODES, TTA_VIEW_MODES
from ferops.runner import run


PARAMS_HELP = ("params file naming the registered model (its register: section); default: the params.yaml of the "
               "project the current folder is in")


def _versions() -> str:
    """`ferops 0.1.0 (mlflow …, tensorflow …, keras …, …)` from the installed metadata (no imports: instant)."""
    from importlib.metadata import PackageNotFoundError, version

    def ver(pkg: str) -> str:
        try:
            return version(pkg)
        except PackageNotFoundError:
            return "not installed"

    libs = ", ".join(f"{pkg} {ver(pkg)}" for pkg in ("mlflow", "tensorflow", "keras", "optuna", "dvc", "scikit-learn"))
    return f"ferops {ver('ferops')} ({libs}; Python {sys.version.split()[0]})"


class _Version(argparse.Action):
    """argparse's own version action wraps the line at the terminal width; this prints it whole."""

    def __call__(self, parser: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        print(_versions())
        parser.exit()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ferops", description="Facial-expression recognition MLOps tools.")
    p.add_argument("--version", action=_Version, nargs=0,
                   help="ferops' version and those of the libraries its models depend on (for bug reports)")
    sub = p.add_subparsers(dest="command", required=True)

    pr = sub.add_parser("predict", help="classify the expression of each face in photos (or folders of them) "
                                        "with the champion")
    pr.add_argument("photos", nargs="+", help="image files (jpg/png/...) or folders (every image under them)")
    pr.add_argument("--model", default=None,
                    help="model URI, .keras file or model folder (default: models:/<register.model_name>@<register.champion_alias>)")
    pr.add_argument("--faces", default="auto", choices=FACE_MODES,
                    help="detect: find faces (OpenCV Haar cascade) and classify each; whole: the image is one face "
                         "crop; auto (default): whole for small near-square images (<= 128 px, e.g. FER2013's "
                         "48-px files), detect otherwise")
    pr.add_argument("--out-dir", default="predictions", help="where annotated copies are written as <name>_pred.<ext> (default: predictions)")
    pr.add_argument("--no-annotate", action="store_true", help="write no annotated copies")
    pr.add_argument("--csv", default=None, metavar="PATH", help="also write the results as a table, one row per face")
    pr.add_argument("--params", default=None, help=PARAMS_HELP)
    pr.add_argument("--tta", default="auto", choices=("auto", *TTA_VIEW_MODES),
                    help="test-time augmentation: none | flip | tencrop | shift | auto (default: the mode recorded with "
                         "the registered model — the one evaluate chose on val, or evaluate.tta's; none for a .keras "
                         "file)")

    rg = sub.add_parser("registry", help="list registered versions, aliases and metrics")
    rg.add_argument("--name", default=None, help="registered model name (default: register.model_name)")
    rg.add_argument("--params", default=None, help=PARAMS_HELP)
    rg.add_argument("--card", nargs="?", const="", default=None, metavar="VERSION|ALIAS",
                    help="print one version's model card instead (default: register.champion_alias's version)")

    pm = sub.add_parser("promote", help="point an alias (default champion) at a version, deliberately")
    pm.add_argument("--version", required=True, help="model version number (see `ferops registry`)")
    pm.add_argument("--alias", default=None,
                    help="the alias to move (default: register.champion_alias, champion; e.g. challenger)")
    pm.add_argument("--new-alias", action="store_true",
                    help="create --alias if the model has no such alias yet (without it, only the model's aliases "
                         "and register's champion/challenger aliases move: a typo is refused, not created)")
    pm.add_argument("--name", default=None, help="registered model name (default: register.model_name)")
    pm.add_argument("--reason", default="manual promotion", help="why, recorded in the version's tags")
    pm.add_argument("--params", default=None, help=PARAMS_HELP)

    sv = sub.add_parser("serve", help="serve the champion over REST (mlflow models serve; POST /invocations)")
    sv.add_argument("--model", default=None,
                    help="model URI (default: models:/<register.model_name>@<register.champion_alias>)")
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    sv.add_argument("--port", type=int, default=5001, help="port (default 5001)")
    sv.add_argument("--params", default=None, help=PARAMS_HELP)

    db = sub.add_parser("dashboard", help="optuna-dashboard on the tune stage's study storage")
    db.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    db.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    db.add_argument("--params", default=None, help="params file whose tune: section names the storage; default: "
                                                   "the project's params.yaml")
    return p


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `ferops` console script."""
    args = _parser().parse_args(argv)

    def dispatch() -> None:
        if args.command == "predict":
            from ferops.inference import cli_predict

            cli_predict(args)
        elif args.command == "registry":
            from ferops.registry import cli_registry

            cli_registry(args)
        elif args.command == "promote":
            from ferops.registry import cli_promote

            cli_promote(args)
        elif args.command == "serve":
            from ferops.inference import cli_serve

            cli_serve(args)
        elif args.command == "dashboard":
            from ferops.tuning import cli_dashboard

            cli_dashboard(args)

    run(dispatch)


if __name__ == "__main__":
    main(sys.argv[1:])
