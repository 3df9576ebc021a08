"""Figure: dataset precision-recall curves of every method of an evaluation run."""
import sys
from pathlib import Path

import numpy as np
from _common import parser

from dge_explain.viz.figures import pr_figure, save


def main(argv=None):
    p = parser(__doc__.splitlines()[0], "figs/pr_curves")
    p.add_argument("--run", required=True, help="output folder of `dge-explain evaluate`")
    args = p.parse_args(argv)
    with np.load(Path(args.run) / "pr_histograms.npz") as data:
        histograms = {k: data[k] for k in data.files}
    for path in save(pr_figure(histograms), args.out, args.dpi):
        print(path)


if __name__ == "__main__":
    sys.exit(main())
