"""The files one http(s):// source names: curl's URL globbing, since a web server has no listing.

``{a,b,c}`` is each of the comma-separated texts and ``[0-41]`` each number of the range, zero-padded to the
first number's width when it starts with 0 (``[00000-00041]``: 00000 ... 00041), so a dataset published as
``train-00000-of-00042.parquet`` ... ``train-00041-of-00042.parquet`` is one source:
``https://host/train-[00000-00041]-of-00042.parquet``. Patterns combine (each with each) and apply to the
path and query, never the host (``[::1]`` is an address). The count is checked before any URL is built.
"""

from __future__ import annotations

import itertools
import math
import re
from urllib.parse import urlsplit

_GROUP = re.compile(r"\{([^{}]*)\}|\[(\d+)-(\d+)\]")


class UrlPatternError(ValueError):
    """A pattern that names no file, or more than the limit."""


def expand(url: str, limit: int) -> list[str]:
    """Return the URLs ``url``'s patterns name, in order; UrlPatternError past ``limit`` or for a backward range."""
    parts = urlsplit(url)
    head = f"{parts.scheme}://{parts.netloc}"
    tail = url[len(head) :]
    pieces: list[list[str]] = []
    position = 0
    for match in _GROUP.finditer(tail):
        pieces.append([tail[position : match.start()]])
        texts, first, last = match.groups()
        if texts is not None:
            pieces.append(texts.split(","))
        else:
            if int(last) < int(first):
                raise UrlPatternError(f"the range [{first}-{last}] counts backwards: write [{last}-{first}]")
            width = len(first) if first.startswith("0") else 0
            count = int(last) - int(first) + 1
            if count > limit:
                raise UrlPatternError(f"the range [{first}-{last}] names {count} files, more than {limit}")
            pieces.append([str(n).zfill(width) for n in range(int(first), int(last) + 1)])
        position = match.end()
    pieces.append([tail[position:]])
    total = math.prod(len(p) for p in pieces)
    if total > limit:
        raise UrlPatternError(f"the URL's patterns name {total} files, more than {limit}")
    return [head + "".join(combination) for combination in itertools.product(*pieces)]
