"""dge-explain methods: the explainers there are, from the one registry."""
from __future__ import annotations

from . import common


def add_parser(commands):
    parser = common.subcommand(
        commands, "methods", "list the explainers (names, titles, cost)",
        """
        Every method `--methods` accepts, with its title in tables, what it costs per batch
        and what it computes. Gating methods take layers: gating:4,8.""",
        """
        dge-explain methods
        dge-explain methods --names --baselines --exclude scorecam""")
    parser.add_argument("--names", action="store_true", help="print the names only, one line (for scripts)")
    parser.add_argument("--baselines", action="store_true",
                        help="only the field's explainers (every method but the gating maps)")
    parser.add_argument("--exclude", nargs="+", default=[], metavar="METHOD", help="leave these out")
    return parser


def run(args) -> int:
    from dge_explain.console import format_table
    from dge_explain.methods import parse_method, registry

    excluded = {parse_method(name)[0] for name in args.exclude}
    chosen = {name: method for name, method in registry().items()
              if name not in excluded and (method.baseline or not args.baselines)}
    if args.names:
        print(" ".join(chosen))
        return 0
    print(format_table(["method", "title", "passes", "what"],
                       [[name + ("[:LAYERS]" if m.takes_layers else ""), m.title, m.passes, m.help]
                        for name, m in chosen.items()]))
    return 0
