"""Realistic English text without a download: paragraphs of the Python standard library's docstrings."""

from __future__ import annotations

import importlib
import pkgutil
import re
import sysconfig
import warnings

_SKIP = ("test", "idlelib", "tkinter", "turtledemo", "lib2to3", "ensurepip", "antigravity", "this", "__")


def _docstrings() -> list[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _collect()


def _collect() -> list[str]:
    docs: list[str] = []
    # The standard library's own folder only: sys.path also holds the current and the script's folder, whose
    # modules (a stray script, the project itself) must not be imported, let alone run.
    stdlib = sysconfig.get_paths()["stdlib"]
    for info in sorted(pkgutil.iter_modules([stdlib]), key=lambda m: m.name):
        if info.name.startswith(_SKIP):
            continue
        try:
            module = importlib.import_module(info.name)
        except Exception:  # a module that cannot import here has no text for us
            continue
        for obj in [module, *vars(module).values()]:
            doc = getattr(obj, "__doc__", None)
            if isinstance(doc, str) and getattr(obj, "__module__", info.name) == info.name:
                docs.append(doc)
    return docs


def realistic_texts(n: int) -> list[str]:
    """Return n distinct paragraphs of real prose (1 to ~300 words), in a fixed order."""
    seen: set[str] = set()
    out: list[str] = []
    for doc in _docstrings():
        for para in re.split(r"\n\s*\n", doc):
            text = " ".join(para.split())
            if len(text) >= 20 and text not in seen and not text.startswith((">>>", "..")):
                seen.add(text)
                out.append(text)
    # More than the stdlib holds: join pairs of paragraphs, a different pairing each round.
    unique, shift = len(out), 0
    while len(out) < n and unique > 1:
        shift += 1
        out += [f"{out[i]} {out[(i * 7 + shift) % unique]}" for i in range(min(unique, n - len(out)))]
    return out[:n]


if __name__ == "__main__":
    texts = realistic_texts(5000)
    lengths = sorted(len(t.split()) for t in texts)
    print(f"{len(texts)} texts; words p50={lengths[len(lengths) // 2]} p95={lengths[int(len(lengths) * 0.95)]}")
