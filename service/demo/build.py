"""The demo reward model: a tiny Llama RM trained here, in about a minute on two CPU cores, on a
synthetic preference task, so the service has a meaningful model to serve with no download.

The task (`preference_pairs`): prompts from five families, each with a preferred (`chosen`) and
a dispreferred (`rejected`) response drawn from the *same* length distribution, so length is
not the signal:
- `fruit`: "Name a red fruit." -> a red fruit vs a fruit of another colour (knowledge lookup
  conditioned on the prompt);
- `topic`: "Tell me about trains." -> sentences about trains vs about another topic (the same
  response is chosen for one prompt and rejected for another, so the RM must read the prompt);
- `polite`: "Reply politely to: ..." -> a polite vs a rude reply around the same content;
- `repeat`: "Repeat the word 'lantern'." -> that word vs another word;
- `degenerate`: any prompt -> a proper answer vs repetitive filler.
Responses run from a few tokens to ~100. Training uses the Bradley-Terry loss
`-log sigmoid(r_chosen - r_rejected)` on pairs encoded exactly as the service encodes them
(`PairEncoder`), so the model reads at serving time what it was trained on.

`ensure_demo_model(cache_dir)` builds once into `cache_dir/demo-rm-<recipe hash>` (atomically,
under a file lock so concurrent processes do not clash) and returns the cached directory on
every later call.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import os
import random
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, LlamaForSequenceClassification

from service.demo.factory import llama_config, save_seqcls_rm, train_tokenizer
from service.models.encoding import PairEncoder

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the built model (bump `version` for code changes to the task or
    the training loop). Its hash names the cache directory, so a stale build is never served
    under a new recipe."""

    version: int = 2
    families: tuple[str, ...] = ("fruit", "topic", "polite", "repeat", "degenerate")
    vocab_size: int = 1024
    tokenizer_corpus_seed: int = 11
    hidden_size: int = 128
    layers: int = 3
    heads: int = 4
    intermediate: int = 384
    max_tokens: int = 256
    train_pairs: int = 6000
    train_seed: int = 1
    eval_pairs: int = 600
    eval_seed: int = 2
    init_seed: int = 0
    # 4x transformers' default: the gated MLP's bilinear terms (what detects a prompt-response
    # match) start larger, and the model leaves the initial plateau in far fewer steps.
    init_std: float = 0.08
    batch_pairs: int = 16
    steps: int = 700
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 30

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


RECIPE = Recipe()
METRICS_FILE = "demo_metrics.json"


# --- the synthetic preference task ------------------------------------------------------------


@dataclass(frozen=True)
class PreferencePair:
    """One comparison: `chosen` is the better response to `prompt`."""

    family: str
    prompt: str
    chosen: str
    rejected: str


_FRUITS = {
    "red": ("strawberry", "cherry", "raspberry"),
    "yellow": ("banana", "lemon", "pineapple"),
    "green": ("lime", "kiwi", "avocado"),
    "orange": ("orange", "apricot", "tangerine"),
    "purple": ("grape", "plum", "fig"),
}
_FRUIT_PROMPTS = (
    "Name a {c} fruit.",
    "Which fruit is {c}?",
    "Give me an example of a {c} fruit.",
    "I need a fruit that is {c}. Any idea?",
)
_FRUIT_DETAILS = (
    "The {f} is sweet.",
    "Many people eat the {f} in summer.",
    "You can buy a {f} at most markets.",
    "A ripe {f} tastes best.",
)
_FRUIT_ANSWERS = (
    "A {f}.",
    "How about a {f}?",
    "One example is the {f}.",
    "You could try a {f}, it is easy to find.",
    "The {f} is a good choice.",
)

_TOPICS = {
    "dogs": ("puppies", "barking", "leashes", "a loyal pet", "dog parks", "playing fetch"),
    "the ocean": ("waves", "salt water", "coral reefs", "whales", "tides", "deep currents"),
    "cooking": ("recipes", "a hot pan", "fresh herbs", "baking bread", "spices", "the oven"),
    "football": ("goals", "the referee", "a penalty kick", "the stadium", "strikers", "the league"),
    "space": ("planets", "rockets", "the moon", "astronauts", "distant stars", "orbits"),
    "music": ("melodies", "the guitar", "a choir", "drums", "concerts", "rhythm"),
    "trains": (
        "railway tracks",
        "the station",
        "steam engines",
        "timetables",
        "carriages",
        "the conductor",
    ),
    "gardening": ("seeds", "watering cans", "tomato plants", "compost", "weeds", "flower beds"),
}
_TOPIC_PROMPTS = (
    "Tell me about {t}.",
    "Write a few sentences about {t}.",
    "What do you know about {t}?",
    "I am curious about {t}. Explain it to me.",
)
_TOPIC_SENTENCES = (
    "People often talk about {k}.",
    "It is worth thinking about {k} and {k2}.",
    "Many books describe {k} in detail.",
    "There is a lot to learn about {k}.",
    "Some people love {k}, others prefer {k2}.",
    "A good start is to look at {k}.",
)

_REQUESTS = (
    "Can you help me move on Saturday?",
    "Where is the nearest station?",
    "I think there is a mistake in my bill.",
    "Could you send me the report again?",
    "Why is my order late?",
    "Can we meet tomorrow instead?",
    "My package arrived broken.",
    "How do I reset my password?",
)
_POLITE = (
    "Thank you for asking.",
    "I would be happy to help.",
    "Sorry for the trouble.",
    "Please let me know if there is anything else.",
    "Thanks for your patience.",
    "That is a very good question.",
)
_RUDE = (
    "That is a silly question.",
    "Figure it out yourself.",
    "I do not care about this.",
    "Stop bothering me.",
    "Why would you even ask that?",
    "This is not my problem.",
)
_CONTENT = (
    "The details are in the message I sent earlier.",
    "It should take about ten minutes.",
    "The office opens at nine in the morning.",
    "You can find the form on the website.",
    "The next step is to check the account settings.",
    "It depends on the weather and the traffic.",
)

_WORDS = (
    "lantern",
    "pebble",
    "orbit",
    "meadow",
    "violin",
    "anchor",
    "saddle",
    "tunnel",
    "harbor",
    "candle",
    "falcon",
    "marble",
    "ribbon",
    "garden",
    "silver",
    "thunder",
    "window",
    "basket",
)
_REPEAT_PROMPTS = ("Repeat the word '{w}'.", "Say '{w}' back to me.", "Echo this word: {w}")
_REPEAT_ANSWERS = ("{w}.", "Sure: {w}.", "Here it is: {w}.", "{w}. Done.")

# Neutral sentences appended to either response with the same probability, so response length
# varies independently of which response is preferred. Most of the length variation comes from
# informative content instead (topic sentences, fruit details, polite or rude content).
_NEUTRAL = (
    "I hope this helps.",
    "Let me know if you want more detail.",
    "This is a short answer, but it covers the main point.",
    "There are other ways to look at it as well.",
    "Feel free to ask a follow-up question.",
    "I tried to keep it simple.",
    "Some of this depends on where you live.",
)
_FILLER = ("the the", "ok", "I think", "yes yes", "um", "and then", "so so")


def _padding(rng: random.Random) -> str:
    # Mostly none: filler dilutes what the last token attends to, and with much of it a tiny
    # model did not learn the prompt-response interactions within the build budget at all.
    count = rng.choice((0, 0, 0, 0, 0, 1, 1, 2))
    return " ".join(rng.choice(_NEUTRAL) for _ in range(count))


def _join(*parts: str) -> str:
    return " ".join(p for p in parts if p)


def _fruit_pair(rng: random.Random) -> tuple[str, str, str]:
    colour = rng.choice(list(_FRUITS))
    other = rng.choice([c for c in _FRUITS if c != colour])
    prompt = rng.choice(_FRUIT_PROMPTS).format(c=colour)

    def answer(fruit: str) -> str:
        details = [d.format(f=fruit) for d in rng.sample(_FRUIT_DETAILS, rng.randint(0, 3))]
        return _join(rng.choice(_FRUIT_ANSWERS).format(f=fruit), *details, _padding(rng))

    return prompt, answer(rng.choice(_FRUITS[colour])), answer(rng.choice(_FRUITS[other]))


def _topic_text(rng: random.Random, keywords: tuple[str, ...]) -> str:
    sentences = []
    for _ in range(rng.randint(1, 7)):
        k, k2 = rng.sample(keywords, 2)
        sentence = rng.choice(_TOPIC_SENTENCES).format(k=k, k2=k2)
        sentences.append(sentence[0].upper() + sentence[1:])
    return " ".join(sentences)


def _topic_pair(rng: random.Random) -> tuple[str, str, str]:
    topic = rng.choice(list(_TOPICS))
    other = rng.choice([t for t in _TOPICS if t != topic])
    prompt = rng.choice(_TOPIC_PROMPTS).format(t=topic)
    good = _topic_text(rng, _TOPICS[topic])
    bad = _topic_text(rng, _TOPICS[other])
    return prompt, _join(good, _padding(rng)), _join(bad, _padding(rng))


def _polite_pair(rng: random.Random) -> tuple[str, str, str]:
    prompt = f"Reply politely to: {rng.choice(_REQUESTS)}"

    def reply(tone: tuple[str, ...]) -> str:
        opener = rng.choice(tone)
        body = " ".join(rng.sample(_CONTENT, rng.randint(0, 3)))
        closer = rng.choice(tone) if rng.random() < 0.5 else ""
        return _join(opener, body, closer, _padding(rng))

    return prompt, reply(_POLITE), reply(_RUDE)


def _repeat_pair(rng: random.Random) -> tuple[str, str, str]:
    word, other = rng.sample(_WORDS, 2)
    prompt = rng.choice(_REPEAT_PROMPTS).format(w=word)
    good = rng.choice(_REPEAT_ANSWERS).format(w=word)
    bad = rng.choice(_REPEAT_ANSWERS).format(w=other)
    return prompt, _join(good, _padding(rng)), _join(bad, _padding(rng))


_FAMILIES = {
    "fruit": _fruit_pair,
    "topic": _topic_pair,
    "polite": _polite_pair,
    "repeat": _repeat_pair,
}


def _degenerate_pair(rng: random.Random) -> tuple[str, str, str]:
    prompt, good, _ = rng.choice(list(_FAMILIES.values()))(rng)
    # About as many filler tokens as the good answer has (+-30%), so length does not give the
    # degenerate answer away. Filler words are one token each; the answer's tokens are roughly
    # its words and punctuation marks.
    answer_tokens = len(re.findall(r"\w+|[^\w\s]", good))
    words = max(2, round(answer_tokens * rng.uniform(0.7, 1.3)))
    filler = rng.choice(_FILLER).split()
    bad = " ".join((filler * words)[:words])
    return prompt, good, bad


def preference_pairs(
    n: int, *, seed: int, families: tuple[str, ...] | None = None
) -> list[PreferencePair]:
    """`n` pairs of the demo task (families in equal shares, default: the recipe's),
    deterministic for `seed`. Training and held-out sets come from different seeds."""
    rng = random.Random(seed)
    makers = {**_FAMILIES, "degenerate": _degenerate_pair}
    names = list(families or RECIPE.families)
    pairs = []
    for i in range(n):
        family = names[i % len(names)]
        prompt, chosen, rejected = makers[family](rng)
        pairs.append(PreferencePair(family, prompt, chosen, rejected))
    rng.shuffle(pairs)
    return pairs


def _tokenizer_corpus(seed: int) -> Iterator[str]:
    # Every family, whatever the recipe trains on: the tokenizer covers all the demo's text.
    for pair in preference_pairs(3000, seed=seed, families=(*_FAMILIES, "degenerate")):
        yield pair.prompt
        yield pair.chosen
        yield pair.rejected


# --- training ---------------------------------------------------------------------------------


def _rewards(model: LlamaForSequenceClassification, sequences: list[list[int]]) -> torch.Tensor:
    """Rewards the way `HFRunner` computes them (right padding, last real token, `score`),
    with gradients."""
    lengths = [len(s) for s in sequences]
    width = max(lengths)
    pad = model.config.pad_token_id or 0
    ids = torch.tensor([s + [pad] * (width - len(s)) for s in sequences])
    mask = torch.tensor([[1] * n + [0] * (width - n) for n in lengths])
    hidden = model.model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    last = hidden[torch.arange(len(sequences)), torch.tensor(lengths) - 1]
    return model.score(last).squeeze(-1)


def _encode_pairs(
    encoder: PairEncoder, pairs: list[PreferencePair]
) -> list[tuple[list[int], list[int]]]:
    encoded = []
    for pair in pairs:
        chosen = encoder.encode(prompt=pair.prompt, response=pair.chosen).input_ids
        rejected = encoder.encode(prompt=pair.prompt, response=pair.rejected).input_ids
        encoded.append((chosen, rejected))
    return encoded


def _batches(
    encoded: list[tuple[list[int], list[int]]],
    batch_pairs: int,
    rng: random.Random,
    *,
    shuffle: bool,
) -> list[list[int]]:
    """Pair indices in batches of similar length (little padding, so little wasted compute).
    Unshuffled, batches run from the shortest pairs to the longest: the first epoch is a
    short-to-long curriculum, which lets the tiny model find the prompt-response interactions
    on short pairs before it meets long ones. Later epochs shuffle the batch order."""
    order = sorted(
        range(len(encoded)), key=lambda i: (max(len(encoded[i][0]), len(encoded[i][1])), i)
    )
    batches = [order[i : i + batch_pairs] for i in range(0, len(order), batch_pairs)]
    if shuffle:
        rng.shuffle(batches)
    return batches


def _schedule(
    optimizer: torch.optim.Optimizer, *, warmup: int, steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup, then cosine decay to 10% of the peak rate."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: (
            min(1.0, (step + 1) / warmup)
            * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps)))
        ),
    )


def pairwise_accuracy(
    score: Callable[[list[list[int]]], list[float]], encoded: list[tuple[list[int], list[int]]]
) -> float:
    """Share of pairs where `score(sequences) -> list[float]` ranks chosen above rejected."""
    correct = 0
    for start in range(0, len(encoded), 64):
        chunk = encoded[start : start + 64]
        rewards = score([s for pair in chunk for s in pair])
        correct += sum(rewards[2 * i] > rewards[2 * i + 1] for i in range(len(chunk)))
    return correct / len(encoded)


def train_demo_model(out_dir: Path, recipe: Recipe = RECIPE) -> dict[str, object]:
    """Build the demo RM into `out_dir` (tokenizer, trained weights, metrics); returns the
    metrics. Deterministic for `recipe`."""
    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer_dir = out_dir / "_tokenizer"
    train_tokenizer(
        tokenizer_dir,
        _tokenizer_corpus(recipe.tokenizer_corpus_seed),
        vocab_size=recipe.vocab_size,
    )
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    encoder = PairEncoder(tokenizer, max_tokens=recipe.max_tokens)
    train = _encode_pairs(
        encoder,
        preference_pairs(recipe.train_pairs, seed=recipe.train_seed, families=recipe.families),
    )
    held_out_pairs = preference_pairs(
        recipe.eval_pairs, seed=recipe.eval_seed, families=recipe.families
    )
    held_out = _encode_pairs(encoder, held_out_pairs)

    config = llama_config(
        tokenizer_dir,
        hidden_size=recipe.hidden_size,
        layers=recipe.layers,
        heads=recipe.heads,
        intermediate=recipe.intermediate,
    )
    config.initializer_range = recipe.init_std
    torch.manual_seed(recipe.init_seed)
    model = LlamaForSequenceClassification(config)
    model.train()
    steps = recipe.steps
    warmup = recipe.warmup_steps
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=recipe.lr,
        weight_decay=recipe.weight_decay,
    )
    schedule = _schedule(optimizer, warmup=warmup, steps=steps)
    rng = random.Random(recipe.train_seed)
    step, epoch, losses = 0, 0, []
    while step < steps:
        for batch in _batches(train, recipe.batch_pairs, rng, shuffle=epoch > 0):
            if step >= steps:
                break
            sequences = [s for i in batch for s in train[i]]
            rewards = _rewards(model, sequences)
            loss = -F.logsigmoid(rewards[0::2] - rewards[1::2]).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            step += 1
            if step % 50 == 0:
                logger.info("demo RM step %d/%d loss %.4f", step, steps, sum(losses[-50:]) / 50)
        epoch += 1
    train_seconds = time.perf_counter() - started

    model.eval()
    with torch.inference_mode():

        def score(seqs: list[list[int]]) -> list[float]:
            return _rewards(model, seqs).tolist()

        accuracy = pairwise_accuracy(score, held_out)
        by_family = {}
        for family in sorted({p.family for p in held_out_pairs}):
            subset = [
                e for e, p in zip(held_out, held_out_pairs, strict=True) if p.family == family
            ]
            by_family[family] = pairwise_accuracy(score, subset)
    longer_wins = sum(len(c) > len(r) for c, r in held_out) / len(held_out)

    save_seqcls_rm(model, out_dir, tokenizer_dir)
    shutil.rmtree(tokenizer_dir)
    metrics: dict[str, object] = {
        "held_out_pairwise_accuracy": accuracy,
        "held_out_accuracy_by_family": by_family,
        "held_out_pairs": len(held_out),
        "longer_response_is_chosen": longer_wins,
        "final_train_loss": sum(losses[-50:]) / min(50, len(losses)),
        "train_seconds": round(train_seconds, 2),
        "train_steps": steps,
        "parameters": sum(p.numel() for p in model.parameters()),
        "recipe": asdict(recipe),
        "recipe_hash": recipe.digest(),
    }
    (out_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
    return metrics


# --- the cache --------------------------------------------------------------------------------


def demo_model_dir(cache_dir: Path) -> Path:
    """Where the demo RM of the current recipe lives (built or not)."""
    return Path(cache_dir) / f"demo-rm-{RECIPE.digest()}"


def ensure_demo_model(cache_dir: Path) -> Path:
    """The demo RM's directory, building it first if this recipe was never built here.

    Safe across processes: builders serialise on an `fcntl` lock beside the target, build in
    a temp dir in the same filesystem and `os.rename` it into place, so readers see either no
    directory or a complete one.
    """
    target = demo_model_dir(cache_dir)
    if (target / METRICS_FILE).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.parent / f"{target.name}.lock"
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            # Another process may have finished the build while this one waited.
            if (target / METRICS_FILE).is_file():
                return target
            if target.exists():
                # A directory without metrics is not ours to trust (a foreign or broken copy).
                shutil.rmtree(target)
            # Temp dirs of builders that were killed (SIGKILL skips the cleanup below). Safe to
            # remove: only the lock holder builds this target, and that is this process now.
            for stale in target.parent.glob(f".{target.name}-*"):
                shutil.rmtree(stale, ignore_errors=True)
            logger.info("building the demo RM into %s (about a minute on CPU)", target)
            tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
            try:
                metrics = train_demo_model(tmp)
                os.rename(tmp, target)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            logger.info(
                "demo RM built in %.1fs, held-out pairwise accuracy %.3f",
                metrics["train_seconds"],
                metrics["held_out_pairwise_accuracy"],
            )
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return target
