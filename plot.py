"""The loss curves of training runs, from their out_dir/train_log.csv, as a PNG picture.

    python plot.py out-shakespeare-char                  # one run's curves, into out-shakespeare-char/loss.png
    python plot.py out-a out-b                           # both runs on the same axes, into ./loss-compare.png
    python plot.py out-a out-b --out ab.png              # the same, into ab.png

train.py writes train_log.csv and, with matplotlib, redraws out_dir/loss.png at each eval; this draws the same
picture afterwards, or several runs' curves overlaid (nanogpt_plus/training_log.py).
"""

import argparse
import os
import sys

from nanogpt_plus.errors import cannot_write, reason
from nanogpt_plus.training_log import draw, read_log

COMPARE_PNG = "loss-compare.png"  # several runs' picture belongs to none of them: it goes where plot.py runs


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Draw the train and val loss of a run, or of several runs on the same axes to compare them."
    )
    parser.add_argument("out_dirs", nargs="+", help="the out_dir of each run (it holds train_log.csv)")
    parser.add_argument(
        "--out",
        help=f"the picture to write (default: OUT_DIR/loss.png for one run, ./{COMPARE_PNG} for several)",
    )
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = os.path.join(args.out_dirs[0], "loss.png") if len(args.out_dirs) == 1 else COMPARE_PNG
    for out_dir in args.out_dirs:
        path = os.path.join(out_dir, "train_log.csv")
        if not os.path.isfile(path):
            sys.exit(f"error: {path} not found: give the out_dir of a training run")
        try:
            read_log(path)
        except OSError as e:
            sys.exit(f"error: cannot read {path} ({reason(e)})")
        except ValueError as e:
            sys.exit(f"error: {e}")
    folder = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(folder):
        sys.exit(f"error: cannot write {args.out}: there is no folder {folder}; create it or give another --out")
    if os.path.isdir(args.out):
        sys.exit(f"error: --out {args.out} is a folder: give the picture's file name, e.g. --out {args.out}/loss.png")
    if not args.out.lower().endswith(".png"):  # (a loss.pdf holding a PNG would be a surprise)
        sys.exit(f"error: --out {args.out}: plot.py draws PNG pictures; give a file name ending in .png")
    try:
        fig = draw(args.out_dirs, args.out)
    except OSError as e:
        sys.exit(f"error: {cannot_write(args.out, e, '--out')}")
    if fig is None:
        sys.exit("error: plot.py needs matplotlib: pip install matplotlib")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
