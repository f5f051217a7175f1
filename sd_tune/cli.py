"""The ``sd-tune`` command.

Subcommands:
  rates    show the per-block drop rates that surgery gives a model
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from sd_tune import apply_stochastic_depth, build_model, expected_depth, stochastic_blocks
from sd_tune.stochastic_depth import DISTRIBUTIONS, METHODS, SAMPLE_IMPLS


class UsageError(Exception):
    """An error the user can fix; the CLI prints it as one line and exits 2."""


def _rates(args: argparse.Namespace) -> int:
    try:
        model = build_model(args.arch, num_classes=10)
        apply_stochastic_depth(model, args.target, args.method, args.drop_rate,
                               args.distribution, sample_impl=args.sample_impl)
    except ValueError as err:
        raise UsageError(str(err)) from err
    names = {id(m): n for n, m in model.named_modules()}
    print(f"{'#':>3}  {'block':<12} {'kind':<16} {'drop_rate':>9}")
    for i, block in enumerate(stochastic_blocks(model)):
        print(f"{i:>3}  {names[id(block)]:<12} {block.block_class.__name__:<16} "
              f"{block.drop_rate:>9.4f}")
    blocks = stochastic_blocks(model)
    print(f"{len(blocks)} blocks, expected depth {expected_depth(model):.2f} of {len(blocks)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sd-tune", description="Find how much stochastic depth a ResNet should get.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    rates = sub.add_parser("rates", help="show the per-block drop rates surgery gives a model",
                           description="Apply stochastic depth to a model and print the "
                                       "per-block drop rates in forward order.")
    rates.add_argument("--arch", default="resnet50",
                       help="resnet18/34/50/101/152, wide_resnet50_2, resnext50_32x4d or "
                            "cifar_resnet<6n+2> (default: resnet50)")
    rates.add_argument("--drop-rate", type=float, default=0.1, help="default: 0.1")
    rates.add_argument("--distribution", choices=DISTRIBUTIONS, default="linear")
    rates.add_argument("--method", choices=METHODS, default="sample")
    rates.add_argument("--sample-impl", choices=SAMPLE_IMPLS, default="mask")
    rates.add_argument("--target", default="auto", help="block class name or 'auto'")
    rates.set_defaults(func=_rates)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; user errors print one line and return 2.

    >>> main(["rates", "--arch", "cifar_resnet20", "--drop-rate", "0.5"])  # doctest: +ELLIPSIS
      #  block        kind             drop_rate
    ...
    9 blocks, expected depth 6.50 of 9
    0
    """
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UsageError as err:
        print(f"sd-tune {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
