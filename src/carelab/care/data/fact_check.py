"""Measuring which facts of the table a model knows, closed-book and over long counterfactual contexts.

``carelab data check-facts`` runs this; its ``--write-known`` output is ``src/carelab/data/facts_smollm2.json``.
Kept apart from the table so that synthesis (which reads the table) and this check (which builds synthetic
CofCA items) do not import each other.
"""

from __future__ import annotations

from dataclasses import dataclass

from carelab.care.data.facts import Fact, candidate_facts

CLOSED_BOOK_SYSTEM = "Answer the question in a few words."
WITH_CONTEXT_SYSTEM = "Answer the question using the context. Give only the short answer."


@dataclass
class CheckFactsConfig:
    """Settings of one fact-table check (saved beside its results)."""

    model: str = "smollm2-135m-instruct"
    adapter: str | None = None
    context_words: int = 450
    seed: int = 0
    batch_size: int = 16
    max_new_tokens: int = 24
    limit: int | None = None
    #: With-context questions are asked for a seeded sample of this many known facts (0 = all of them):
    #: long prompts are what costs time on a CPU.
    context_sample: int = 48


def check_facts(model, tokenizer, config: CheckFactsConfig, progress=None) -> tuple[list[dict], dict]:
    """Closed-book accuracy on every candidate fact, then with-context accuracy on (a sample of) the known ones.

    With context, each known fact is asked twice over a long CofCA-format context (fictional distractor
    passages, the fact stated once): with the altered fact (gold = altered answer; the number CARE must
    beat) and with the true fact (control), and once with a one-sentence counterfactual context.
    Returns per-fact rows and a summary dict.
    """
    import random

    from carelab.care.data.synth import cofca_item
    from carelab.care.eval.metrics import qa_f1_score
    from carelab.care.format import user_content
    from carelab.generation import GenerationSettings, generate_chat

    facts = list(candidate_facts())[: config.limit] if config.limit else list(candidate_facts())
    settings = GenerationSettings(max_new_tokens=config.max_new_tokens, batch_size=config.batch_size)
    closed = generate_chat(model, tokenizer, [[{"role": "system", "content": CLOSED_BOOK_SYSTEM},
                                               {"role": "user", "content": f.question}] for f in facts],
                           settings, progress=progress)
    rows = [{"id": f.id, "category": f.category, "question": f.question, "answer": f.answer, "altered": f.altered,
             "closed_book": p.strip(), "known": f.accepts(p)} for f, p in zip(facts, closed, strict=True)]
    known = [(f, r) for f, r in zip(facts, rows, strict=True) if r["known"]]

    def ask(contexts: list[str], items: list[Fact]) -> list[str]:
        convs = [[{"role": "system", "content": WITH_CONTEXT_SYSTEM},
                  {"role": "user", "content": user_content(c, f.question)}] for c, f in zip(contexts, items,
                                                                                             strict=True)]
        return generate_chat(model, tokenizer, convs, settings, progress=progress)

    if config.context_sample and len(known) > config.context_sample:
        known = random.Random(f"sample|{config.seed}").sample(known, config.context_sample)
    kf = [f for f, _ in known]
    ctx_cf, ctx_fact = [], []
    for f in kf:
        for cf, bucket in ((True, ctx_cf), (False, ctx_fact)):
            item = cofca_item(f, cf, random.Random(f"check|{config.seed}|{f.id}"), "test",
                              context_words=config.context_words)
            bucket.append("\n\n".join(f"{p['title']}: {' '.join(p['sentences'])}" for p in item["passages"]))
    one_sentence = [f.altered_sentence for f in kf]
    out_cf, out_fact, out_one = ask(ctx_cf, kf), ask(ctx_fact, kf), ask(one_sentence, kf)
    for (f, r), pc, pf, po in zip(known, out_cf, out_fact, out_one, strict=True):
        r.update({
            "cf_prediction": pc.strip(), "cf_follows_context": f.accepts(pc, counterfactual=True),
            "cf_says_original": f.accepts(pc), "cf_f1": qa_f1_score(pc, f.altered),
            "factual_prediction": pf.strip(), "factual_correct": f.accepts(pf), "factual_f1": qa_f1_score(pf, f.answer),
            "one_sentence_prediction": po.strip(), "one_sentence_follows": f.accepts(po, counterfactual=True),
        })
    n, k = len(rows), len(known)
    n_known = sum(r["known"] for r in rows)

    def mean(key: str) -> float:
        return round(100.0 * sum(float(r[key]) for _, r in known) / k, 2) if k else 0.0

    summary = {
        "candidates": n, "known": n_known, "closed_book_accuracy": round(100.0 * n_known / n, 2) if n else 0.0,
        "with_context_sample": k,
        "counterfactual_long_context_accuracy": mean("cf_follows_context"),
        "counterfactual_long_context_f1": mean("cf_f1"),
        "counterfactual_long_context_says_original": mean("cf_says_original"),
        "factual_long_context_accuracy": mean("factual_correct"),
        "factual_long_context_f1": mean("factual_f1"),
        "counterfactual_one_sentence_accuracy": mean("one_sentence_follows"),
        "mean_context_words": round(sum(len(c.split()) for c in ctx_cf) / k, 1) if k else 0.0,
    }
    return rows, summary
