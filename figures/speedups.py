"""Figure (appendix Tables 7-8): DGE's measured speed-up per backbone and input
size beside the paper's CPU speed-up, from the JSON of `dge-explain bench
--preset ... --json` and of `python -m dge_explain.bench.detector --json`
(several files are merged)."""
import json
import sys

from _common import parser

from dge_explain.viz.figures import save, speedup_figure


def main(argv=None):
    p = parser(__doc__.splitlines()[0], "figs/speedups")
    p.add_argument("bench", nargs="+", help="preset or detector JSON file(s)")
    args = p.parse_args(argv)
    cases = [case for file in args.bench for case in json.loads(open(file).read())["cases"]]
    for path in save(speedup_figure(cases), args.out, args.dpi):
        print(path)


if __name__ == "__main__":
    sys.exit(main())
