"""Figure (appendix Fig. 6 layout): latency against resolution, dense vs DGE,
CPU and GPU panels, from the JSON of `dge-explain bench --json` (several files
are merged, e.g. one from a CPU run and one from a GPU run)."""
import json
import sys

from _common import parser

from dge_explain.viz.figures import runtime_figure, save


def main(argv=None):
    p = parser(__doc__.splitlines()[0], "figs/runtime")
    p.add_argument("bench", nargs="+", help="bench JSON file(s)")
    args = p.parse_args(argv)
    merged = {"cases": [], "environment": {}}
    for file in args.bench:
        data = json.loads(open(file).read())
        merged["cases"] += data["cases"]
        merged["environment"].update(data.get("environment", {}))
    for path in save(runtime_figure(merged), args.out, args.dpi):
        print(path)


if __name__ == "__main__":
    sys.exit(main())
