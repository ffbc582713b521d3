"""Batched chat generation with a local transformers model, shared by ask, eval, backends and serve.

Two engines, one API. Greedy decoding (the evaluation protocol) uses *continuous batching*: each prompt is
prefilled alone (no padding), up to ``batch_size`` rows decode together, and a finished row is replaced
by the next waiting prompt, so a batch never idles waiting for its longest member; each step also checks
a few tokens guessed from n-grams the row has already seen (prompt-lookup decoding). Sampling, logits
processors and models whose KV cache is not a plain ``DynamicCache`` use one ``model.generate`` call per
left-padded batch (``continuous=False`` forces that engine). On CPU this is the difference between
minutes and hours; both engines give the same greedy tokens up to float rounding.
"""

from __future__ import annotations

import inspect
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from carelab.memory import kept_heap, trim_heap
from carelab.ngram_draft import Drafter, NgramIndex
from carelab.onednn import onednn_linears


@dataclass
class GenerationSettings:
    """Decoding settings; greedy by default (the evaluation protocol)."""

    max_new_tokens: int = 256
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    #: Rows decoded together (continuous engine: rows in flight; padded engine: prompts per generate call).
    batch_size: int = 8
    seed: int = 0
    #: Greedy only: refill finished rows with waiting prompts instead of one ``generate`` call per batch.
    continuous: bool = True
    #: Continuous engine: tokens guessed per row and step from n-grams of its prompt and of finished answers,
    #: checked in the same forward pass (prompt-lookup decoding). Same tokens, fewer steps; 0 turns it off.
    draft_tokens: int = 4


def chat_prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of a chat prompt with the generation prompt appended."""
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                              return_dict=False))


def generate_from_ids(model, tokenizer, prompts: Sequence[list[int]], settings: GenerationSettings,
                      logits_processor=None, progress: Callable[[int], None] | None = None,
                      on_result: Callable[[int, str], None] | None = None) -> list[str]:
    """Generate one completion per prompt (token ids); returns decoded texts in the prompts' order.

    Special tokens are kept out of the text; the caller strips nothing else. ``on_result(i, text)`` is
    called as soon as prompt ``i`` is finished (so callers can save work before the whole list ends);
    ``progress(k)`` counts finished prompts.
    """
    import torch

    if not prompts:
        return []
    with torch.inference_mode():
        if settings.continuous and not settings.do_sample and logits_processor is None:
            try:
                return _ContinuousGreedy(model, tokenizer, prompts, settings, progress, on_result).run()
            except _Unsupported:
                pass  # nothing was reported yet: the padded engine does the whole list
        return _generate_padded(model, tokenizer, prompts, settings, logits_processor, progress, on_result)


def generate_chat(model, tokenizer, conversations: Sequence[list[dict]], settings: GenerationSettings | None = None,
                  progress: Callable[[int], None] | None = None) -> list[str]:
    """Generate a reply for each chat conversation (list of role/content messages)."""
    settings = settings or GenerationSettings()
    prompts = [chat_prompt_ids(tokenizer, msgs) for msgs in conversations]
    return generate_from_ids(model, tokenizer, prompts, settings, progress=progress)


def merge_adapters(model):
    """Fold LoRA weights into the base weights of a PEFT model that is only used for inference.

    Why: an unmerged LoRA adds two small matmuls and Python overhead to every projection (about 20 % of
    CPU decoding time for SmolLM2). Same outputs up to float rounding. Returns ``model`` unchanged when it
    has no adapter or PEFT cannot merge it; never call it on a model that is still being trained.
    """
    import warnings

    if not hasattr(model, "merge_and_unload"):
        return model
    try:
        with warnings.catch_warnings():  # PEFT trips transformers' own deprecation notices while merging
            warnings.simplefilter("ignore", FutureWarning)
            return model.merge_and_unload()
    except (ValueError, NotImplementedError, AttributeError, TypeError):
        return model


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _device(model):
    return next(model.parameters()).device


def _generate_padded(model, tokenizer, prompts: Sequence[list[int]], settings: GenerationSettings,
                     logits_processor, progress: Callable[[int], None] | None,
                     on_result: Callable[[int, str], None] | None) -> list[str]:
    """One ``model.generate`` call per left-padded batch (sampling, logits processors, any cache type)."""
    import torch

    pad_id = _pad_id(tokenizer)
    results: list[str] = [""] * len(prompts)
    # Sort by length so each batch pads little; restore the order at the end.
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    device = _device(model)
    if settings.do_sample:
        torch.manual_seed(settings.seed)
    for start in range(0, len(order), settings.batch_size):
        idx = order[start:start + settings.batch_size]
        width = max(len(prompts[i]) for i in idx)
        input_ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            ids = prompts[i]
            input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
            attention[row, width - len(ids):] = 1
        kwargs: dict[str, Any] = dict(max_new_tokens=settings.max_new_tokens, do_sample=settings.do_sample,
                                      pad_token_id=pad_id)
        if settings.do_sample:
            kwargs.update(temperature=settings.temperature, top_p=settings.top_p)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if logits_processor is not None:
            kwargs["logits_processor"] = logits_processor
        out = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device), **kwargs)
        for row, i in enumerate(idx):
            results[i] = tokenizer.decode(out[row, width:], skip_special_tokens=True)
            if on_result is not None:
                on_result(i, results[i])
        if progress is not None:
            progress(len(idx))
    return results


class _Unsupported(Exception):
    """The model's forward or cache does not fit the continuous engine; use the padded one."""


def _eos_ids(model, tokenizer) -> set[int]:
    """The token ids that end a row: the generation config's eos (as ``generate`` uses), else the tokenizer's."""
    cfg = getattr(model, "generation_config", None)
    eos = getattr(cfg, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]) if e is not None}


@dataclass
class _Row:
    index: int
    tokens: list[int] = field(default_factory=list)
    #: the prompt and the tokens so far, as a draft source (only when drafting)
    seen: NgramIndex | None = None

    def add(self, new: list[int], eos: set[int], limit: int) -> None:
        """Append ``new`` up to the first end-of-sequence token or the token limit (what a step kept may run past)."""
        kept = 0
        for token in new:
            if self.tokens and (self.tokens[-1] in eos or len(self.tokens) >= limit):
                break
            self.tokens.append(token)
            kept += 1
        if self.seen is not None:
            self.seen.extend(new[:kept])


class _ContinuousGreedy:
    """Greedy decoding with continuous batching over a left-padded ``DynamicCache``.

    Why: with ``generate`` a batch decodes until its longest member ends, so most row-steps of a batch
    of CARE answers (50–224 tokens) are wasted. Here a finished row leaves the cache at once and waiting
    prompts are prefilled alone (no padding, the fast causal attention path) and joined in groups of at
    least a quarter of the batch, keeping the cache copies that joining costs rare. Positions and the
    attention mask follow ``generate``'s left-padding convention, so the tokens are the same.

    With ``draft_tokens`` each step also feeds every row's guessed next tokens (:mod:`carelab.ngram_draft`)
    and keeps the longest guessed prefix the model itself picks, plus the model's next token; the cache
    columns of rejected guesses stay as masked holes (positions count only unmasked columns), so each kept
    token sees exactly the context it would see one step at a time.
    """

    def __init__(self, model, tokenizer, prompts: Sequence[list[int]], settings: GenerationSettings,
                 progress: Callable[[int], None] | None, on_result: Callable[[int, str], None] | None) -> None:
        self.model, self.tok, self.prompts, self.settings = model, tokenizer, prompts, settings
        self.progress, self.on_result = progress, on_result
        self.eos = _eos_ids(model, tokenizer)
        self.device = _device(model)
        self.results: list[str | None] = [None] * len(prompts)
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        params = inspect.signature(base.forward).parameters
        if "logits_to_keep" not in params or not ({"cache", "past_key_values"} & set(params)):
            raise _Unsupported
        self.cache_arg = "cache" if "cache" in params else "past_key_values"
        self.prefix = _shared_prefix(prompts)
        self.prefix_kv: list | None = None
        self.drafter = Drafter(settings.draft_tokens) if settings.draft_tokens > 0 else None
        self.filler = _pad_id(tokenizer)
        self.attention = _packed_gqa_attention(model)

    # ------------------------------------------------------------------ model calls
    def _forward(self, input_ids, cache=None, keep: int = 1, **kwargs):
        """Logits of the last ``keep`` positions (rows, ``keep``, vocabulary) and the updated cache."""
        out = self.model(input_ids=input_ids, use_cache=True, logits_to_keep=keep,
                         **({self.cache_arg: cache} if cache is not None else {}), **kwargs)
        new_cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        return out.logits[:, -keep:, :], new_cache

    def _layers(self, cache) -> list:
        """The cache's per-layer key/value holders; only plain ``DynamicLayer`` (and ours) is supported."""
        from transformers.cache_utils import DynamicLayer

        layers = getattr(cache, "layers", None)
        if not layers or any(type(layer) not in (DynamicLayer, _slack_layer_class()) for layer in layers):
            raise _Unsupported
        return layers

    def _prefill(self, ids: list[int]):
        """Logits after ``ids`` and its cache; the prompts' shared prefix (e.g. the system prompt) is computed once."""
        import torch
        from transformers import DynamicCache

        n = len(self.prefix)
        if not n:
            return self._forward(torch.tensor([ids], dtype=torch.long, device=self.device))
        if self.prefix_kv is None:
            _, cache = self._forward(torch.tensor([self.prefix], dtype=torch.long, device=self.device))
            self.prefix_kv = [(layer.keys, layer.values) for layer in self._layers(cache)]
        suffix = torch.tensor([ids[n:]], dtype=torch.long, device=self.device)
        # one row, no padding: our attention can run the causal kernel instead of transformers' explicit mask
        flag = {PREFILL_AFTER_PREFIX: True} if self.attention.active else {}
        return self._forward(suffix, DynamicCache(self.prefix_kv), **flag)

    # ------------------------------------------------------------------ bookkeeping
    def _finish(self, row: _Row) -> None:
        if self.drafter is not None:
            self.drafter.finished(row.tokens)
        text = self.tok.decode(row.tokens, skip_special_tokens=True)
        self.results[row.index] = text
        if self.on_result is not None:
            self.on_result(row.index, text)
        if self.progress is not None:
            self.progress(1)

    def _done(self, row: _Row) -> bool:
        return row.tokens[-1] in self.eos or len(row.tokens) >= self.settings.max_new_tokens

    # ------------------------------------------------------------------ main loop
    def run(self) -> list[str]:
        with self.attention, onednn_linears(self.model), kept_heap():
            return self._run()

    def _run(self) -> list[str]:
        import torch

        batch = max(1, self.settings.batch_size)
        queue = deque(sorted(range(len(self.prompts)), key=lambda i: len(self.prompts[i])))
        rows: list[_Row] = []
        cache = None
        mask = torch.zeros((0, 0), dtype=torch.long, device=self.device)
        while queue or rows:
            free = batch - len(rows)
            if queue and free and (not rows or free >= max(1, batch // 4) or free >= len(queue)):
                joined: list[tuple[_Row, list]] = []
                for _ in range(min(free, len(queue))):
                    i = queue.popleft()
                    logits, new = self._prefill(self.prompts[i])
                    kv = [(layer.keys, layer.values) for layer in self._layers(new)]  # checked before any result
                    row = _Row(i, [int(logits[0, -1].argmax())])
                    if self.drafter is not None:
                        row.seen = NgramIndex(list(self.prompts[i]) + row.tokens)
                    if self._done(row):
                        self._finish(row)
                        continue
                    joined.append((row, kv))
                if joined:
                    # buffer rows for every row that can still be in flight at once, so later rows join in place
                    capacity = min(batch, len(rows) + len(joined) + len(queue))
                    cache, mask = self._join(cache, mask, joined, capacity)
                    rows += [row for row, _ in joined]
                    # the prefill caches and any replaced buffers are free now: give their pages back
                    trim_heap()
                continue
            # One decode step for every row in flight: feed each row's last token and its guessed next ones.
            drafts = [self.drafter.draft(r.seen) for r in rows] if self.drafter is not None else [[] for _ in rows]
            width = 1 + _columns_worth_checking(drafts)
            drafts = [d[:width - 1] for d in drafts]
            fed = [[r.tokens[-1], *d] + [self.filler] * (width - 1 - len(d)) for r, d in zip(rows, drafts, strict=True)]
            positions = mask.sum(dim=1, keepdim=True) + torch.arange(width, device=self.device)
            mask = torch.cat([mask, mask.new_ones((len(rows), width))], dim=1)
            logits, cache = self._forward(torch.tensor(fed, dtype=torch.long, device=self.device), cache, keep=width,
                                          attention_mask=mask, position_ids=positions)
            for k, (r, d, picks) in enumerate(zip(rows, drafts, logits.argmax(dim=-1).tolist(), strict=True)):
                agreed = 0
                while agreed < len(d) and d[agreed] == picks[agreed]:
                    agreed += 1
                r.add(d[:agreed] + [picks[agreed]], self.eos, self.settings.max_new_tokens)
                if agreed + 1 < width:  # the columns of rejected guesses and fillers become masked holes
                    mask[k, mask.shape[1] - width + agreed + 1:] = 0
            keep = [k for k, r in enumerate(rows) if not self._done(r)]
            if len(keep) < len(rows):
                for k, r in enumerate(rows):
                    if k not in keep:
                        self._finish(r)
                rows = [rows[k] for k in keep]
                if rows:
                    index = torch.tensor(keep, dtype=torch.long, device=self.device)
                    mask = self._select(cache, mask, index)
                else:
                    cache, mask = None, mask[:0, :0]
        return [r or "" for r in self.results]

    def _select(self, cache, mask, index):
        """Keep the rows in ``index`` and drop leading columns that are padding in every remaining row.

        Done in place in each layer's buffers (no new cache): a row ends every few steps, and re-allocating
        the whole cache each time copied all of it and churned the heap.
        """
        mask = mask.index_select(0, index)
        first = int(mask.any(dim=0).nonzero()[0]) if mask.numel() else 0
        keep = index.tolist()
        for layer in self._layers(cache):
            layer.keep_rows(keep, first)
        return mask[:, first:]

    def _join(self, cache, mask, joined: list, capacity: int) -> tuple[Any, Any]:
        """Add the new rows' prefill caches to the running cache, all left-padded to one width.

        Where the running cache's buffers have free rows and enough columns, the rows are copied into them;
        otherwise a new cache with buffer rows for ``capacity`` rows is built layer by layer, each old layer
        released as soon as it is copied, so joining never holds more than one extra layer (peak ≈ one cache).
        """
        import torch
        import torch.nn.functional as F
        from transformers import DynamicCache

        width = max([mask.shape[1]] + [kv[0][0].shape[2] for _, kv in joined])
        masks = [F.pad(mask, (width - mask.shape[1], 0))] if cache is not None else []
        masks += [F.pad(mask.new_ones((1, kv[0][0].shape[2])), (width - kv[0][0].shape[2], 0)) for _, kv in joined]
        old = self._layers(cache) if cache is not None else []
        in_place = bool(old) and old[0].can_join(len(joined), width)
        layers = []
        for li in range(len(joined[0][1])):
            parts = [kv[li] for _, kv in joined]
            if in_place:
                old[li].join_rows(parts, width)
            else:
                if old:
                    parts.insert(0, (old[li].keys, old[li].values))
                layers.append(_slack_layer_class().stacked(parts, width, capacity))
                if old:
                    old[li].release()
            for _, kv in joined:
                kv[li] = None
        if in_place:
            return cache, torch.cat(masks, dim=0)
        new_cache = DynamicCache()
        new_cache.layers = layers
        return new_cache, torch.cat(masks, dim=0)


def _columns_worth_checking(drafts: list[list[int]]) -> int:
    """Draft tokens to check this step: as many as at least half the rows have.

    Why: every row is fed the same number of tokens (fillers where its draft is shorter), and on CPU each fed
    token costs its share of the matmuls; checking a long draft of one row would make all the others pay.

    >>> _columns_worth_checking([[1, 2, 3], [4], [], [5, 6]])  # two of the four rows have 2 or more
    2
    """
    lengths = sorted((len(d) for d in drafts), reverse=True)
    return lengths[(len(lengths) - 1) // 2] if lengths else 0


#: A prefix shared by every prompt is prefilled once when it is at least this long (tokens).
MIN_SHARED_PREFIX = 32


def _shared_prefix(prompts: Sequence[list[int]]) -> list[int]:
    """The token prefix all prompts share (a chat template + system prompt), leaving each ≥ 1 token of its own.

    >>> _shared_prefix([[1] * 40 + [2, 3], [1] * 40 + [4]]) == [1] * 40
    True
    """
    if len(prompts) < 2:
        return []
    first, n = prompts[0], min(len(p) for p in prompts) - 1
    for p in prompts[1:]:
        k = 0
        while k < n and p[k] == first[k]:
            k += 1
        n = k
    return list(first[:n]) if n >= MIN_SHARED_PREFIX else []


_SLACK_LAYER: type | None = None


def _slack_layer_class() -> type:
    """``DynamicLayer`` that appends into preallocated room: one copy of the cache per 128 tokens, not per token.

    Why: ``DynamicLayer.update`` concatenates, copying every row's whole KV history at every step — on CPU,
    with 10 rows of ~900 tokens, that copy costs as much as the step's matmuls. Built lazily so importing
    this module does not import transformers.
    """
    global _SLACK_LAYER
    if _SLACK_LAYER is not None:
        return _SLACK_LAYER
    from transformers.cache_utils import DynamicLayer

    class SlackLayer(DynamicLayer):
        """Keys/values live in ``_kbuf``/``_vbuf`` (row capacity, heads, column capacity, head dim); the cache is
        the view ``[:rows, :, start:start + length]``, so dropping rows or leading columns copies no buffer."""

        room = 128

        @classmethod
        def stacked(cls, parts: list, width: int, rows_capacity: int = 0) -> SlackLayer:
            """One layer holding ``parts`` ((keys, values) of several rows each) stacked on the batch axis,
            each left-padded with zeros to ``width`` tokens (padding is masked; zeros keep it finite), with
            buffer rows for at least ``rows_capacity`` rows so that later rows can join in place."""
            keys0, values0 = parts[0]
            layer = cls()
            layer.dtype, layer.device, layer.is_initialized = keys0.dtype, keys0.device, True
            rows, heads = sum(k.shape[0] for k, _ in parts), keys0.shape[1]
            capacity = max(rows, rows_capacity)
            layer._kbuf = keys0.new_zeros((capacity, heads, width + cls.room, keys0.shape[-1]))
            layer._vbuf = values0.new_zeros((capacity, heads, width + cls.room, values0.shape[-1]))
            r = 0
            for k, v in parts:
                layer._kbuf[r:r + k.shape[0], :, width - k.shape[2]:width] = k
                layer._vbuf[r:r + v.shape[0], :, width - v.shape[2]:width] = v
                r += k.shape[0]
            layer._show(rows, 0, width)
            return layer

        def _show(self, rows: int, start: int, length: int) -> None:
            self._start = start
            self.keys = self._kbuf[:rows, :, start:start + length]
            self.values = self._vbuf[:rows, :, start:start + length]

        def release(self) -> None:
            """Drop this layer's tensors (it has been copied into a new cache)."""
            self._kbuf = self._vbuf = self.keys = self.values = None

        def keep_rows(self, index: list[int], drop: int) -> None:
            """Keep the rows ``index`` (ascending) in this order, without the first ``drop`` columns; in place."""
            s, n = self._start, self.keys.shape[-2]
            for j, i in enumerate(index):  # j <= i: each row moves up into a slot already vacated
                if i != j:
                    self._kbuf[j, :, s + drop:s + n].copy_(self._kbuf[i, :, s + drop:s + n])
                    self._vbuf[j, :, s + drop:s + n].copy_(self._vbuf[i, :, s + drop:s + n])
            self._show(len(index), s + drop, n - drop)

        def can_join(self, new_rows: int, width: int) -> bool:
            """Whether ``new_rows`` rows fit in the free buffer rows with the cache widened to ``width``."""
            rows, n = self.keys.shape[0], self.keys.shape[-2]
            return rows + new_rows <= self._kbuf.shape[0] and width - n <= self._start

        def join_rows(self, parts: list, width: int) -> None:
            """Append ``parts`` ((keys, values) of new rows) below the rows held, everything left-padded with
            zeros to ``width`` columns; the caller has checked :meth:`can_join`."""
            r, n = self.keys.shape[0], self.keys.shape[-2]
            s = self._start - (width - n)
            self._kbuf[:r, :, s:self._start] = 0
            self._vbuf[:r, :, s:self._start] = 0
            for k, v in parts:
                m, pad = k.shape[0], width - k.shape[2]
                self._kbuf[r:r + m, :, s:s + pad] = 0
                self._vbuf[r:r + m, :, s:s + pad] = 0
                self._kbuf[r:r + m, :, s + pad:s + width] = k
                self._vbuf[r:r + m, :, s + pad:s + width] = v
                r += m
            self._show(r, s, width)

        def reset_to(self, keys, values, room: int | None = None) -> None:
            """Hold exactly ``keys``/``values`` (copied) from column 0, with room for more tokens after them."""
            b, h, n, d = keys.shape
            extra = self.room if room is None else room
            capacity = max(b, self._kbuf.shape[0] if getattr(self, "_kbuf", None) is not None else 0)
            kbuf = keys.new_empty((capacity, h, n + extra, d))
            vbuf = values.new_empty((capacity, h, n + extra, values.shape[-1]))
            kbuf[:b, :, :n] = keys
            vbuf[:b, :, :n] = values
            self._kbuf, self._vbuf = kbuf, vbuf
            self._show(b, 0, n)

        def update(self, key_states, value_states, *args, **kwargs):
            rows, n, k = self.keys.shape[0], self.keys.shape[-2], key_states.shape[-2]
            if self._start + n + k > self._kbuf.shape[-2]:
                self.reset_to(self.keys, self.values, k + self.room)
            end = self._start + n
            self._kbuf[:rows, :, end:end + k] = key_states
            self._vbuf[:rows, :, end:end + k] = value_states
            self._show(rows, self._start, n + k)
            return self.keys, self.values

    _SLACK_LAYER = SlackLayer
    return SlackLayer


#: The attention implementation the continuous engine swaps in for ``sdpa`` while it runs (registered once).
PACKED_GQA_ATTENTION = "carelab_sdpa_packed_gqa"
#: Keyword the engine's prompt prefill passes down to that attention: one row without padding after a cached prefix.
PREFILL_AFTER_PREFIX = "carelab_prefill_after_prefix"


def _packed_gqa_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                     is_causal=None, position_bias=None, **kwargs):
    """transformers' SDPA attention, except that several query tokens of a grouped-query model attend without
    copying the keys and values once per query head.

    Why: transformers packs the query heads of a key/value head together only for one query token; for more
    (a step that checks drafted tokens) it repeats every row's cached keys and values for each query head,
    which on CPU took longer than the step's matmuls. Here the query heads sharing a key/value head become extra
    query rows of that head, and the mask is repeated to match: the same attention, no cache copy.
    A prompt's prefill after the cached shared prefix (``PREFILL_AFTER_PREFIX``) runs the causal kernel instead.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    plain_causal = not (dropout or position_bias is not None or kwargs.get("softcap") or kwargs.get("sliding_window")
                        or getattr(module, "sliding_window", None))
    if kwargs.pop(PREFILL_AFTER_PREFIX, False) and plain_causal:
        return _causal_after_prefix_sdpa(query, key, value, scaling)
    groups = getattr(module, "num_key_value_groups", 1)
    batch, heads, length, dim = query.shape
    if (groups == 1 or length == 1 or attention_mask is None or attention_mask.dim() != 4
            or attention_mask.shape[1] != 1 or position_bias is not None or dropout or kwargs.get("softcap")):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, position_bias=position_bias, **kwargs)
    import torch

    packed = query.reshape(batch, heads // groups, groups * length, dim)
    rows, width = attention_mask.shape[0], attention_mask.shape[-1]
    mask = attention_mask[:, :, None].expand(rows, 1, groups, length, width).reshape(rows, 1, groups * length, width)
    out = torch.nn.functional.scaled_dot_product_attention(packed, key, value, attn_mask=mask, scale=scaling)
    return out.reshape(batch, heads, length, value.shape[-1]).transpose(1, 2).contiguous(), None


def _causal_after_prefix_sdpa(query, key, value, scaling):
    """Attention of one unpadded row's new tokens over a cached prefix and themselves, by the causal kernel.

    Why: with fewer queries than keys transformers passes an explicit mask, and CPU SDPA then scores every
    query-key block (and converts the mask per layer); a prompt's prefill after the shared prefix spent a quarter
    of its time there. Prepending one zero query per prefix token makes queries and keys square, so the causal
    kernel applies and skips the blocks above the diagonal; the dummy rows (prefix² / 2 scores) are dropped.
    The scores each kept row sees are the same, and so were the logits, bit for bit, in our checks.
    """
    import torch

    batch, heads, length, dim = query.shape
    prefix = key.shape[2] - length
    padded = torch.cat([query.new_zeros(batch, heads, prefix, dim), query], dim=2) if prefix else query
    out = torch.nn.functional.scaled_dot_product_attention(padded, key, value, is_causal=True, scale=scaling,
                                                           enable_gqa=heads != key.shape[1])
    return out[:, :, prefix:].transpose(1, 2).contiguous(), None


class _packed_gqa_attention:  # noqa: N801 - used as a context manager, like a function
    """Within the block, a model configured for ``sdpa`` uses :func:`_packed_gqa_sdpa` (restored afterwards)."""

    _registered = False

    def __init__(self, model) -> None:
        self.config = getattr(model, "config", None)
        self.saved: str | None = None

    @property
    def active(self) -> bool:
        """Whether the model runs :func:`_packed_gqa_sdpa` now (only it reads ``PREFILL_AFTER_PREFIX``)."""
        return self.saved is not None

    def __enter__(self):
        if getattr(self.config, "_attn_implementation", None) != "sdpa":
            return self
        if not _packed_gqa_attention._registered:
            from transformers import AttentionInterface
            from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

            AttentionInterface.register(PACKED_GQA_ATTENTION, _packed_gqa_sdpa)
            AttentionMaskInterface.register(PACKED_GQA_ATTENTION, sdpa_mask)
            _packed_gqa_attention._registered = True
        self.saved = self.config._attn_implementation
        self.config._attn_implementation = PACKED_GQA_ATTENTION
        return self

    def __exit__(self, *exc) -> None:
        if self.saved is not None:
            self.config._attn_implementation, self.saved = self.saved, None
