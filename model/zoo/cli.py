"""`python -m model.zoo list | path NAME | fetch NAME [--force]`."""

from __future__ import annotations

import argparse
import sys

from model.zoo.catalog import DEFAULT_MODEL, MODELS, ZooError, model_path
from model.zoo.folder import fetch, is_ready


def main(argv: list[str] | None = None) -> int:
    """Command line: `list`, `path NAME`, `fetch NAME [--force]`; exit code 2 with one `error:` line."""
    description = "The model zoo: prepares ready-to-load Hugging Face style folders for the models this course uses."
    parser = argparse.ArgumentParser(prog="python -m model.zoo", description=description)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the models the zoo knows, and whether each is built")
    for command, text in [("fetch", "build the model's folder if missing"), ("path", "print the folder's path")]:
        p = sub.add_parser(command, help=text)
        p.add_argument("name", help=f"model name, e.g. {DEFAULT_MODEL}")
        if command == "fetch":
            p.add_argument("--force", action="store_true", help="rebuild even if the folder is complete")
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            for name, model in MODELS.items():
                state = "ready" if is_ready(name) else "not fetched"
                print(f"{name}\t{state}\t{model.description}")
        elif args.command == "path":
            print(model_path(args.name))
        else:
            print(fetch(args.name, force=args.force))
    except (ValueError, ZooError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
