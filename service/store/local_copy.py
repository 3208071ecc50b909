"""A bounded in-process copy of what the Redis store read and wrote: per prompt, its registered
reference ids (registration order) and their scores per model version. Used only while Redis
cannot answer, so that registered references are still served where this replica has seen
them.

What it holds is never wrong, at worst behind: registration is append-only, so a stale list is
a prefix of the true one (references registered elsewhere during an outage are missing until
Redis is back), and a score is keyed by model version, so it is never used with another model.
A prompt it only saw with no registered references is not kept: "none registered" may no
longer be true, and telling a client so (a 422) would be wrong; it gets the 503 instead.

Bounded by prompts, least recently used out first. Reference texts are not kept (their size is
the client's to choose); a registered reference with no score under the active version cannot
be scored while Redis is down.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from service.store.base import PromptReferences, ReferenceScore

MAX_VERSIONS = 4  # model versions whose scores an entry keeps (the latest ones)


@dataclass
class _Entry:
    registered: tuple[str, ...] = ()
    scores: dict[str, dict[str, ReferenceScore]] = field(default_factory=dict)  # version -> id

    def add_scores(self, model_version: str, scores: Mapping[str, ReferenceScore]) -> None:
        by_id = self.scores.pop(model_version, {})  # re-inserted last: the newest version
        by_id.update(scores)
        self.scores[model_version] = by_id
        while len(self.scores) > MAX_VERSIONS:
            del self.scores[next(iter(self.scores))]


class LocalCopy:
    def __init__(self, max_prompts: int) -> None:
        self.max_prompts = max_prompts
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self.served = 0  # lookups answered from the copy

    def __len__(self) -> int:
        return len(self._entries)

    # -- written through --------------------------------------------------------------------
    def saw_lookup(self, model_version: str, found: Mapping[str, PromptReferences]) -> None:
        for pk, refs in found.items():
            if refs.registered:
                entry = self._entry(pk)
                entry.registered = refs.registered
                if refs.scores:
                    entry.add_scores(model_version, refs.scores)

    def saw_registration(self, prompt_key: str, ref_ids: Sequence[str]) -> None:
        """References registered here (ids in order); appended to what is known."""
        if not ref_ids:
            return
        entry = self._entry(prompt_key)
        known = set(entry.registered)
        entry.registered += tuple(rid for rid in dict.fromkeys(ref_ids) if rid not in known)

    def saw_scores(
        self, model_version: str, scores: Mapping[str, Mapping[str, ReferenceScore]]
    ) -> None:
        """Scores of references of prompts already kept (a score alone serves nothing)."""
        for pk, by_ref in scores.items():
            entry = self._entries.get(pk)
            if entry is not None and by_ref:
                entry.add_scores(model_version, by_ref)

    # -- read while Redis is down -------------------------------------------------------------
    def lookup(self, model_version: str, prompt_keys: Sequence[str]) -> dict[str, PromptReferences]:
        """What is known of these prompts: only those with registered references."""
        out: dict[str, PromptReferences] = {}
        for pk in prompt_keys:
            entry = self._entries.get(pk)
            if entry is None:
                continue
            self._entries.move_to_end(pk)
            out[pk] = PromptReferences(
                registered=entry.registered, scores=dict(entry.scores.get(model_version, {}))
            )
        if out:
            self.served += 1
        return out

    # -- internals ------------------------------------------------------------------------------
    def _entry(self, prompt_key: str) -> _Entry:
        entry = self._entries.get(prompt_key)
        if entry is None:
            entry = self._entries[prompt_key] = _Entry()
            while len(self._entries) > self.max_prompts:
                self._entries.popitem(last=False)
        else:
            self._entries.move_to_end(prompt_key)
        return entry
