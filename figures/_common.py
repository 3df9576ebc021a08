"""Shared argument handling of the figure scripts (run them from the repo root)."""
import argparse
import os


def parser(description: str, default_out: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", default=default_out, help="output stem: writes STEM.png and STEM.pdf")
    p.add_argument("--dpi", type=int, default=150, help="resolution of the PNG")
    p.add_argument("--home", default=os.environ.get("DGE_EXPLAIN_HOME"),
                   help="data home (default $DGE_EXPLAIN_HOME)")
    return p
