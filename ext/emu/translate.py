"""The mechanical rewrite that turns ext/cuda's sources into host C++ for the
CUDA emulation: launches ``kernel<<<grid, block[, bytes[, stream]]>>>(args)``
become ``::emu::launch_kernel(kernel, "kernel", grid, block, bytes, stream)(args)``
and ``extern __shared__ T name[];`` becomes a pointer to the block's dynamic
shared memory.  Nothing else changes; CUDA's keywords, built-ins and runtime
calls come from cuda_runtime_emu.h, included first in every translated file
(tests/emulation.py builds the result).
"""
from __future__ import annotations

import re

_SHARED = re.compile(r"extern\s+__shared__\s+(?:__align__\(\s*\d+\s*\)\s+)?([\w:\s]+?)\s+(\w+)\s*\[\s*\]\s*;")
_LAUNCH = re.compile(r"([A-Za-z_][\w:]*(?:<[^<>;]*>)?)\s*<<<")


def _split_top_level(text: str) -> list[str]:
    """Split at the commas outside brackets (not angle brackets: `a < b` may appear)."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    parts.append(text[start:].strip())
    return parts


def rewrite_launches(source: str) -> str:
    out, position = [], 0
    for match in _LAUNCH.finditer(source):
        if match.start() < position:
            continue
        close = source.index(">>>", match.end())
        config = _split_top_level(source[match.end():close])
        if not 2 <= len(config) <= 4:
            raise ValueError(f"a launch with {len(config)} configuration values: {source[match.start():close + 3]}")
        if len(config) == 2:
            config.append("0")
        kernel = match.group(1)
        out.append(source[position:match.start()])
        out.append(f'::emu::launch_kernel({kernel}, "{kernel}", {", ".join(config)})')
        position = close + 3
    out.append(source[position:])
    return "".join(out)


def rewrite_shared(source: str) -> str:
    return _SHARED.sub(lambda m: f"{m.group(1)}* {m.group(2)} = static_cast<{m.group(1)}*>(::emu::dynamic_shared());",
                       source)


def translate(source: str) -> str:
    return "#include \"cuda_runtime_emu.h\"\n" + rewrite_shared(rewrite_launches(source))
