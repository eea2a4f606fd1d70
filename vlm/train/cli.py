"""`vlm train CONFIG [--set key=value ...] [--resume]`, also as `python -m vlm.train` (under torchrun too)."""

import argparse
import sys

from vlm.config import ConfigError
from vlm.data import DataError
from vlm.train.checkpoint import CheckpointError
from vlm.train.config import load_train_config
from vlm.train.trainer import TooManyBadSteps, train

INTERRUPTED = 130  # the shell's code for a SIGINT


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="vlm train", description="Train the adapters of a vision-language model from a YAML recipe."
    )
    parser.add_argument("config", help="the recipe, e.g. configs/tiny.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override one setting, e.g. --set optim.lr=3e-4 --set run.steps=200 (repeatable)")
    parser.add_argument(
        "--resume", action="store_true", help="continue from the newest intact checkpoint in run.output_dir"
    )
    args = parser.parse_args(argv)
    try:
        config = load_train_config(args.config, args.overrides)
        result = train(config, resume=args.resume)
    except ConfigError as e:
        print(f"vlm train: config error: {e}", file=sys.stderr)
        return 2
    except (DataError, CheckpointError, TooManyBadSteps) as e:
        print(f"vlm train: {e}", file=sys.stderr)
        return 1
    return INTERRUPTED if result.interrupted else 0
