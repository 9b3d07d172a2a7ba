"""Build the shipped text set of ``builtin:minilm-l6``: ``python -m harness.builtin.make_minilm_data``.

Sentences are the first sentences of the docstrings (module, class, function, method) of a fixed
list of Python standard library modules: varied English that ships with every Python, so nothing
is downloaded. They are cleaned, kept at 6..40 words, deduplicated, shuffled with a fixed seed and
cut into three disjoint splits, in this order of the shuffled pool: calibration (64, sets the
quantization ranges), validation (400, ``eval.npz``: what the search optimises) and test (400,
``test.npz``: what is reported, never seen by the search). The test split was added after the other
two; it is the slice of the pool right after them, so calibration and validation kept their bytes.
The package's own tokenizer turns them into token ids padded to 64, so every sample has the same
shape. Written to ``harness/builtin/minilm_l6/``:

- ``sentences.json``: the text of each split (``calib``, ``eval``, ``test``) with the docstring it came from;
- ``calib.npz`` / ``eval.npz`` / ``test.npz``: ``input_ids``, ``attention_mask``, ``token_type_ids``,
  int64 ``[N, 64]`` (no labels: quality is agreement with the FP32 model);
- ``meta.json``: what the workload is and how to score it (``"metric": "embedding"``).

A rebuild into a folder that already holds ``calib.npz``/``eval.npz``/``test.npz`` refuses to change
their arrays (a different Python's docstrings would): ``--force`` overrides.

Docstrings change between Python versions, so the shipped files, not this script, are the data
set; the script records the Python version it ran on and is deterministic for a given one.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import random
import re
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from harness.core.atomic import atomic_path, atomic_write_text

OUT_DIR = Path(__file__).resolve().parent / "minilm_l6"
SEED = 20241127
N_CALIB = 64
N_EVAL = 400
N_TEST = 400
MIN_WORDS, MAX_WORDS = 6, 40

#: A fixed list, in this order; a module that fails to import on some platform is skipped.
_MODULE_NAMES = (
    "abc argparse ast asyncio.base_events asyncio.locks asyncio.queues asyncio.tasks base64 bisect "
    "calendar cmd codecs collections colorsys compileall concurrent.futures configparser contextlib copy "
    "csv dataclasses datetime decimal difflib dis doctest email.message email.utils enum filecmp "
    "fileinput fnmatch fractions ftplib functools getopt gettext glob graphlib gzip heapq hmac "
    "html.parser http.client http.cookiejar http.cookies http.server imaplib importlib inspect io "
    "ipaddress json.decoder json.encoder linecache locale logging logging.handlers lzma mailbox "
    "mimetypes modulefinder multiprocessing.pool netrc numbers operator optparse os pathlib pdb "
    "pickle pkgutil platform plistlib poplib pprint profile pstats py_compile pydoc queue quopri "
    "random re reprlib runpy sched secrets selectors shelve shlex shutil smtplib socket socketserver "
    "sqlite3 ssl statistics string subprocess sysconfig tabnanny tarfile tempfile textwrap threading "
    "timeit tokenize trace traceback types typing unittest.case unittest.mock urllib.parse "
    "urllib.request urllib.robotparser uuid warnings wave weakref webbrowser wsgiref.simple_server "
    "xml.dom.minidom xml.etree.ElementTree xmlrpc.client zipfile zipimport zoneinfo"
)
MODULES = tuple(_MODULE_NAMES.split())

_SENTENCE_END = re.compile(r"(?<=[a-z0-9)\"'][.!?])\s+(?=[A-Z])")
_CODE_LIKE = re.compile(r"[=<>{}\[\]|\\$@#*_`~^]|::|\.\.|\w\(\)|\w\.\w")


def first_sentence(doc: str) -> str | None:
    """The first sentence of a docstring's first paragraph, on one line; None if it is not prose."""
    para = inspect.cleandoc(doc).split("\n\n", 1)[0]
    text = " ".join(para.split())
    text = _SENTENCE_END.split(text, 1)[0]
    words = text.split()
    if not (MIN_WORDS <= len(words) <= MAX_WORDS) or not text.endswith("."):
        return None
    if not text[0].isupper() or not text.isascii() or _CODE_LIKE.search(text):
        return None  # signatures, doctest lines, reST markup and dotted names are not English
    return text


def _docstrings(module_name: str) -> list[tuple[str, str]]:
    """(qualified name, docstring) of a module, its public classes and functions and their methods."""
    try:
        module = importlib.import_module(module_name)
    except Exception:  # a module missing on this platform (e.g. no _ssl) is skipped
        return []
    out = [(module_name, module.__doc__ or "")]
    for name, obj in sorted(vars(module).items()):
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isclass(obj):
            out.append((f"{module_name}.{name}", obj.__doc__ or ""))
            for attr, member in sorted(vars(obj).items()):
                if not attr.startswith("_") and inspect.isfunction(member):
                    out.append((f"{module_name}.{name}.{attr}", member.__doc__ or ""))
        elif inspect.isfunction(obj):
            out.append((f"{module_name}.{name}", obj.__doc__ or ""))
    return out


def collect() -> list[dict[str, str]]:
    """Every usable sentence once (first source wins), in module-list order."""
    seen: set[str] = set()
    found = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated aliases (typing.io) warn when their docs are read
        pairs = [pair for module_name in MODULES for pair in _docstrings(module_name)]
    for source, doc in pairs:
        text = first_sentence(doc) if doc else None
        if text is None or text.lower() in seen:
            continue
        seen.add(text.lower())
        found.append({"text": text, "source": source})
    return found


#: Every sentence of a docstring paragraph, not only the first (training text; see ``training_sentences``).
_ANY_SENTENCE = re.compile(r"(?<=[a-z0-9)\"'][.!?])\s+(?=[A-Z])")
#: Standard-library folders whose files are not read for training text (tests, IDLE, vendored code).
_SKIP_DIRS = {"test", "tests", "idlelib", "site-packages", "lib2to3", "ensurepip", "turtledemo", "__pycache__"}


def _prose(text: str) -> str | None:
    """``text`` on one line if it passes ``first_sentence``'s prose rule, else None."""
    text = " ".join(text.split())
    words = text.split()
    if not (MIN_WORDS <= len(words) <= MAX_WORDS) or not text.endswith("."):
        return None
    if not text[0].isupper() or not text.isascii() or _CODE_LIKE.search(text):
        return None
    return text


def training_sentences(limit: int | None = None) -> list[str]:
    """Prose sentences from every docstring of this Python's standard library source files, read
    with ``ast`` (nothing is imported, so nothing runs), every sentence of every paragraph, in sorted
    file order, deduplicated case-insensitively, under ``first_sentence``'s prose rule: training text
    for a fine-tune by distillation. A caller must drop the sentences of the shipped splits (the
    splits' sentences are among these)."""
    import ast
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    seen: set[str] = set()
    out: list[str] = []
    for path in sorted(root.rglob("*.py")):
        if _SKIP_DIRS & set(path.relative_to(root).parts[:-1]) or path.name.startswith("test_"):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError, ValueError):
            continue
        nodes = [tree, *(n for n in ast.walk(tree)
                         if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)))]
        for node in nodes:
            doc = ast.get_docstring(node)
            if not doc:
                continue
            for para in inspect.cleandoc(doc).split("\n\n"):
                for piece in _ANY_SENTENCE.split(" ".join(para.split())):
                    text = _prose(piece)
                    if text is None or text.lower() in seen:
                        continue
                    seen.add(text.lower())
                    out.append(text)
                    if limit is not None and len(out) >= limit:
                        return out
    return out


def tokenize(tokenizer: Any, texts: list[str], max_length: int) -> dict[str, np.ndarray]:
    enc = tokenizer(texts, padding="max_length", max_length=max_length, truncation=True, return_tensors="np")
    return {k: np.ascontiguousarray(enc[k], dtype=np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}


def _changed(path: Path, arrays: dict[str, np.ndarray]) -> bool:
    """True when ``path`` exists and holds other arrays than ``arrays``."""
    if not path.is_file():
        return False
    with np.load(path) as old:
        return sorted(old.files) != sorted(arrays) or any(not np.array_equal(old[k], v) for k, v in arrays.items())


def build(out_dir: Path = OUT_DIR, seed: int = SEED, force: bool = False) -> dict[str, Any]:
    """Collect, select, tokenize and write the data set; returns the meta written.

    Raises ``SystemExit`` without writing anything when a split already in ``out_dir`` would change,
    unless ``force``: the shipped splits are the data set, and results were scored on them.
    """
    from importlib.metadata import version

    from harness.builtin import minilm

    tokenizer = minilm.load_tokenizer()
    pool = collect()
    # Sentences the tokenizer would cut are dropped, so every sample is a whole sentence.
    pool = [s for s in pool if len(tokenizer(s["text"])["input_ids"]) <= minilm.MAX_LENGTH]
    need = N_CALIB + N_EVAL
    if len(pool) < need + N_TEST:
        raise SystemExit(f"only {len(pool)} usable sentences, {need + N_TEST} needed: extend MODULES")
    random.Random(seed).shuffle(pool)
    # Test is the slice right after calibration and validation, so adding it changed neither of those.
    splits = {"calib": pool[:N_CALIB], "eval": pool[N_CALIB:need], "test": pool[need : need + N_TEST]}
    tokens = {kind: tokenize(tokenizer, [r["text"] for r in rows], minilm.MAX_LENGTH) for kind, rows in splits.items()}
    changed = [kind for kind, arrays in tokens.items() if _changed(out_dir / f"{kind}.npz", arrays)]
    if changed and not force:
        raise SystemExit(
            f"{', '.join(changed)}.npz in {out_dir} would change (another Python's docstrings?): "
            "nothing written; pass --force to replace them"
        )
    for kind, arrays in tokens.items():
        with atomic_path(out_dir / f"{kind}.npz") as tmp, open(tmp, "wb") as f:
            # Compressed: token ids are mostly padding, so 400 x 64 int64 shrinks from 200 kB to ~14 kB.
            np.savez_compressed(
                f,
                input_ids=arrays["input_ids"],
                attention_mask=arrays["attention_mask"],
                token_type_ids=arrays["token_type_ids"],
            )
    source = {
        "python": sys.version.split()[0],
        "modules": MODULES,
        "rule": f"first sentence of module/class/function/method docstrings, {MIN_WORDS}..{MAX_WORDS} words, "
        "ASCII prose only, deduplicated case-insensitively",
        "seed": seed,
        "candidates": len(pool),
    }
    atomic_write_text(
        out_dir / "sentences.json", json.dumps({"source": source, **splits}, indent=1, ensure_ascii=True) + "\n"
    )
    meta = {
        "name": f"builtin:{minilm.NAME}",
        "task": "sentence embeddings (all-MiniLM-L6-v2), quality = agreement with the FP32 model",
        "metric": "embedding",
        "metric_detail": "mean-pooled (attention_mask) last_hidden_state; accuracy = top-1 retrieval "
        "agreement (nearest other sentence of the scored split by cosine, quantized vs FP32); "
        "mean_cosine = pooled mean cosine",
        "input_shapes": {name: [1, minilm.MAX_LENGTH] for name in minilm.INPUTS},
        "max_length": minilm.MAX_LENGTH,
        # eval = validation (what the search optimises), test = what is reported; disjoint sentences.
        "splits": {"calib": N_CALIB, "eval": N_EVAL, "test": N_TEST},
        "tokenizer": f"{minilm.DISTRIBUTION} {version(minilm.DISTRIBUTION)} (transformers {version('transformers')})",
        "rebuild": "python -m harness.builtin.make_minilm_data",
    }
    atomic_write_text(out_dir / "meta.json", json.dumps(meta, indent=1) + "\n")
    for name in ("calib.npz", "eval.npz", "test.npz", "sentences.json", "meta.json"):
        (out_dir / name).chmod(0o644)  # atomic writes create 0600 files; package data must be world-readable
    return meta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="output folder")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--force", action="store_true", help="replace splits whose arrays would change")
    args = parser.parse_args(argv)
    meta = build(args.out, args.seed, args.force)
    print(f"wrote {args.out}: {meta['splits']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
