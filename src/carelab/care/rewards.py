"""CARE reward functions, TRL-compatible, with the official semantics as the default.

Each function takes the completions (plain strings or conversational message lists) and dataset
columns as keyword lists, and returns one value per completion: a float, or ``None`` when the completion
cannot be scored (not text, no gold answer, no context). TRL's GRPOTrainer leaves ``None`` out of that
function's mean and, when every function says ``None``, out of the group baseline (advantage 0), where a
silent 0.0 would bias the advantages; each such case is counted (:func:`unscored_counts`) and logged.
A dataset column of the wrong length is a ``ValueError``, never padded. Defaults reproduce the public
CARE reward exactly (see docs/care.md); options (off by default) add LongBench-normalised F1, exact-only
quotes and an anti-copy guard. Quotes are labelled by the one matcher, :mod:`carelab.care.quotes`.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from carelab.care import format as care_format
from carelab.care.eval.metrics import normalize_answer, token_f1
from carelab.care.quotes import FUZZY_THRESHOLD, quote_match

NO_QUOTE_RETRIEVAL_REWARD = 0.2
DEFAULT_WEIGHTS = (0.7, 0.1, 0.2)  # accuracy, format, retrieval

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- unscorable completions
#: How many completions each reward could not score, by ``"reward: reason"`` (since import or the last reset).
UNSCORED: Counter[str] = Counter()


def _unscored(reward: str, reason: str) -> None:
    """Count one completion a reward could not score; log the 1st, 2nd, 4th, 8th … so logs stay short."""
    key = f"{reward}: {reason}"
    UNSCORED[key] += 1
    n = UNSCORED[key]
    if n & (n - 1) == 0:
        log.warning("%s reward cannot score a completion (%s); returning None so TRL leaves it out "
                    "(%d so far)", reward, reason, n)


def unscored_counts(reset: bool = False) -> dict[str, int]:
    """Completions that got ``None`` instead of a score, by reward and reason (``reset`` clears the counts)."""
    counts = dict(UNSCORED)
    if reset:
        UNSCORED.clear()
    return counts


# --------------------------------------------------------------------------- completion handling
def _message_content(msg: Any) -> str | None:
    """The text of one chat message (or bare string); None when it has no text content."""
    if isinstance(msg, str):
        return msg
    if isinstance(msg, dict) and isinstance(msg.get("content"), str):
        return msg["content"]
    return None


def text_of(completion: Any) -> str | None:
    """Text of one completion, or None when it has none: a string, a message, or a message list (the last
    assistant message; else all messages' text joined). Never recurses, so a cyclic list cannot hang it."""
    if isinstance(completion, (str, dict)):
        return _message_content(completion)
    if not isinstance(completion, (list, tuple)):
        return None
    for msg in reversed(completion):
        if isinstance(msg, dict) and msg.get("role", "assistant") == "assistant":
            content = _message_content(msg)
            if content is not None:
                return content
    parts = [t for t in (_message_content(m) for m in completion) if t is not None]
    return " ".join(parts) if parts else None


def completion_text(completion: Any) -> str:
    """Text of one completion, '' when it has none (see :func:`text_of`, which tells the two apart)."""
    text = text_of(completion)
    return "" if text is None else text


def _completions(completions: Any) -> list:
    """The batch as a list: ``None`` is no completions, one string or message is one completion."""
    if completions is None:
        return []
    if isinstance(completions, (str, dict)):
        return [completions]
    if isinstance(completions, (list, tuple)):
        return list(completions)
    if isinstance(completions, Iterable):
        return list(completions)
    return [completions]  # e.g. an int: one completion, which cannot be scored


def _column(values: Any, n: int, name: str) -> list:
    """A dataset column with one value per completion (a scalar is broadcast); any other length is an error."""
    if isinstance(values, (list, tuple)):
        if len(values) != n:
            raise ValueError(f"column {name!r} has {len(values)} values for {n} completions; "
                             "rewards need one value per completion")
        return list(values)
    return [values] * n


def _first_gold(answer: Any) -> str:
    """Gold answer as a string; a list of golds contributes its first entry (as the official data does)."""
    if isinstance(answer, (list, tuple)):
        return str(answer[0]) if answer else ""
    return "" if answer is None else str(answer)


def _has_gold(answer: Any) -> bool:
    """Whether there is a gold answer to score against (None, '' and [] are missing data, not a wrong answer)."""
    golds = answer if isinstance(answer, (list, tuple)) else [answer]
    return any(g is not None and str(g).strip() for g in golds)


def _score_each(reward: str, completions: list, values: list, score: Callable[[str, Any], float],
                present: Callable[[Any], bool] = lambda v: True, missing: str = "") -> list[float | None]:
    """``score(text, value)`` per completion and column value; None (counted, logged) where either is missing."""
    out: list[float | None] = []
    for c, v in zip(completions, values, strict=True):
        text = text_of(c)
        reason = "completion is not text" if text is None else None if present(v) else missing
        if reason is None:
            out.append(score(text, v))
        else:
            _unscored(reward, reason)
            out.append(None)
    return out


# --------------------------------------------------------------------------- accuracy
def set_f1(prediction: str, gold: str) -> float:
    """Official accuracy: F1 between the SETS of whitespace tokens, no normalisation; empty -> 0."""
    pred, ref = set(prediction.split()), set(gold.split())
    common = pred & ref
    if not pred or not ref or not common:
        return 0.0
    p, r = len(common) / len(pred), len(common) / len(ref)
    return 2 * p * r / (p + r)


def answer_score(text: str, gold: str | Sequence[str], normalized: bool = False) -> float:
    """Accuracy of one raw completion against the gold (official by default; LongBench F1 if normalized)."""
    clean = care_format.strip_stop(text)
    if normalized:
        pred = care_format.parse(clean).answer
        golds = [gold] if isinstance(gold, str) else [str(g) for g in gold]
        return max((token_f1(normalize_answer(pred).split(), normalize_answer(g).split()) for g in golds),
                   default=0.0)
    return set_f1(care_format.official_answer(clean), _first_gold(gold))


def accuracy_reward(completions: list, answer: list | str | None = None, normalized: bool = False,
                    **kwargs: Any) -> list[float | None]:
    """Answer F1 against the ``answer`` column (official set-F1; ``normalized=True`` -> LongBench F1).

    ``None`` for a completion that is not text or a row without a gold answer.

    >>> accuracy_reward(["<think>x</think> Answer: Paris<|im_end|>"], answer=["Paris"])
    [1.0]
    """
    items = _completions(completions)
    golds = _column(answer if answer is not None else kwargs.get("answers"), len(items), "answer")
    return _score_each("accuracy", items, golds,
                       lambda text, g: answer_score(text, g if isinstance(g, (list, tuple)) else str(g), normalized),
                       _has_gold, "no gold answer")


# --------------------------------------------------------------------------- format
def format_score(text: str) -> float:
    """1.0 when the stop-stripped text follows the official format rule, else 0.0 (linear time)."""
    return 1.0 if care_format.is_well_formed(care_format.strip_stop(text)) else 0.0


def format_reward(completions: list, **kwargs: Any) -> list[float | None]:
    """Official format reward: ``<think>…</think>…Answer:…`` with ≥ 1 quote in the first think block.

    >>> format_reward(["<think><retrieval>a</retrieval></think>Answer: b", "Answer: b"])
    [1.0, 0.0]
    """
    items = _completions(completions)
    return _score_each("format", items, [None] * len(items), lambda text, _: format_score(text))


# --------------------------------------------------------------------------- retrieval
@dataclass(frozen=True)
class RetrievalOptions:
    """Retrieval-reward options; the defaults are the official rule."""

    exact_only: bool = False
    max_context_share: float | None = None  # anti-copy guard: a longer span earns nothing
    threshold: float = FUZZY_THRESHOLD
    no_quote_reward: float = NO_QUOTE_RETRIEVAL_REWARD


_QUOTE_CREDIT = {"exact": 1.0, "fuzzy": 0.5, "none": 0.0}


def retrieval_score(text: str, context: str, options: RetrievalOptions = RetrievalOptions()) -> float:
    """Official retrieval reward of one completion: mean of 1 / 0.5 / 0 per quote, 0.2 when none, capped at 1.

    Repeated quotes are labelled once, so quote spam costs one scan per distinct quote.
    """
    spans = care_format.quotes(care_format.strip_stop(text))
    if not spans:
        return options.no_quote_reward
    context = "" if context is None else str(context)
    labels: dict[str, str] = {}
    found = 0.0
    for span in spans:
        if options.max_context_share is not None and len(span) > options.max_context_share * max(len(context), 1):
            continue
        label = labels.get(span)
        if label is None:
            label = quote_match(span, context, options.threshold) if not options.exact_only else (
                "exact" if span in context else "none")
            labels[span] = label
        found += _QUOTE_CREDIT[label]
    return min(1.0, found / len(spans))


def retrieval_reward(completions: list, context: list | str | None = None, exact_only: bool = False,
                     max_context_share: float | None = None, prompts: list | None = None,
                     **kwargs: Any) -> list[float | None]:
    """Whether the quotes really occur in the context (official: the whole user prompt is the context).

    When no ``context`` column is given, the prompt text is used, as the official code does. ``None`` for
    a completion that is not text or a row without a context.

    >>> retrieval_reward(["<retrieval>sky is blue</retrieval>", "no quotes"], context=["The sky is blue."] * 2)
    [1.0, 0.2]
    """
    items = _completions(completions)
    if context is not None:
        ctxs = _column(context, len(items), "context")
    elif prompts is not None:
        ctxs = [text_of(p) for p in _column(prompts, len(items), "prompts")]
    else:
        ctxs = [None] * len(items)
    opts = RetrievalOptions(exact_only=exact_only, max_context_share=max_context_share)
    return _score_each("retrieval", items, ctxs, lambda text, x: retrieval_score(text, str(x), opts),
                       lambda x: x is not None, "no context")


# --------------------------------------------------------------------------- combination
def care_reward_breakdown(completion: Any, answer: Any, context: str,
                          weights: tuple[float, float, float] = DEFAULT_WEIGHTS, normalized: bool = False,
                          retrieval_options: RetrievalOptions = RetrievalOptions()) -> dict[str, float]:
    """All three components and the weighted total for one completion (for ask/demo/eval displays)."""
    text = completion_text(completion)
    acc = answer_score(text, answer if isinstance(answer, (list, tuple)) else _first_gold(answer), normalized)
    fmt = format_score(text)
    ret = retrieval_score(text, context, retrieval_options)
    wa, wf, wr = weights
    return {"accuracy": acc, "format": fmt, "retrieval": ret, "total": wa * acc + wf * fmt + wr * ret}


def combined_reward(weights: tuple[float, float, float] = DEFAULT_WEIGHTS, **options: Any) -> Callable[..., list]:
    """One TRL reward function computing ``w_acc·R_acc + w_fmt·R_fmt + w_ret·R_ret`` (default 0.7/0.1/0.2).

    A completion that any component cannot score gets ``None`` (a partial sum would bias its group).
    """
    wa, wf, wr = weights
    normalized = bool(options.get("normalized", False))
    ret_opts = {k: options[k] for k in ("exact_only", "max_context_share") if k in options}

    def care_reward(completions: list, **kwargs: Any) -> list[float | None]:
        acc = accuracy_reward(completions, normalized=normalized, **kwargs)
        fmt = format_reward(completions)
        ret = retrieval_reward(completions, **{**kwargs, **ret_opts})
        return [None if None in (a, f, r) else wa * a + wf * f + wr * r
                for a, f, r in zip(acc, fmt, ret, strict=True)]

    return care_reward


def reward_functions(accuracy_normalized: bool = False, exact_only: bool = False,
                     max_context_share: float | None = None, retrieval: bool = True) -> list[Callable[..., list]]:
    """The separate reward functions for TRL's ``reward_funcs`` (weights passed as ``reward_weights``).

    Separate functions give per-component logs (``rewards/accuracy/mean`` …). With ``retrieval=False``
    (the no-retrieval-reward ablation) only accuracy and format remain.
    """

    def accuracy(completions: list, **kw: Any) -> list[float | None]:
        return accuracy_reward(completions, normalized=accuracy_normalized, **kw)

    def format(completions: list, **kw: Any) -> list[float | None]:  # noqa: A001 - the logged name
        return format_reward(completions, **kw)

    def retrieval_fn(completions: list, **kw: Any) -> list[float | None]:
        return retrieval_reward(completions, exact_only=exact_only, max_context_share=max_context_share, **kw)

    retrieval_fn.__name__ = "retrieval"
    funcs: list[Callable[..., list]] = [accuracy, format]
    if retrieval:
        funcs.append(retrieval_fn)
    return funcs
