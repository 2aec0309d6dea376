"""The prompts of a job: extra-network tags, AND parts, prompt-editing schedules -> conditioning per step."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from webui.core import prompt_parser
from webui.engine import conditioning


@dataclass
class ExtraNetworks:
    items: list = field(default_factory=list)     # (LoraInfo, te weight, unet weight)
    used: list = field(default_factory=list)      # (name as written, LoraInfo)
    hypernets: list = field(default_factory=list)  # (Hypernetwork, multiplier)
    warnings: list[str] = field(default_factory=list)


class JobPrompts:
    """The prompts of one pass: extra-network tags removed, AND parts with weights, prompt-editing schedules;
    gives the sampling loop its conditioning per step (each distinct text encoded once)."""

    def __init__(self, encoder: conditioning.PromptEncoder, prompts: list[str], negatives: list[str], steps: int,
                 hires_steps: int | None = None):
        self.encoder = encoder
        clean = [prompt_parser.parse_extra_networks(p)[0] for p in prompts]
        self.parts = [prompt_parser.split_and(p) for p in clean]
        sched = prompt_parser.get_learned_conditioning_prompt_schedules
        self.pos = [[(sched([t], steps, hires_steps)[0], w) for t, w in parts] for parts in self.parts]
        # as A1111, extra-network tags are read from the prompts only: in a negative prompt they are plain text
        self.neg = sched(list(negatives), steps, hires_steps)

    def texts(self) -> set[str]:
        return self.positive_texts() | self.negative_texts()

    def positive_texts(self) -> set[str]:
        return {text for parts in self.pos for s, _ in parts for _, text in s}

    def negative_texts(self) -> set[str]:
        return {text for s in self.neg for _, text in s}

    def chunk_counts(self) -> tuple[int, int]:
        """(chunks of the longest prompt, of the longest negative prompt) over every step's text."""
        return (self.encoder.chunk_count(sorted(self.positive_texts())),
                self.encoder.chunk_count(sorted(self.negative_texts())))

    def conditioning(self, sl: slice, n_chunks: tuple[int, int]):
        """Per step: the prompts padded to n_chunks[0] chunks, the negative prompts to n_chunks[1]. As A1111 (its
        setting pad_cond_uncond off), the two sides are not padded to each other: the sampler runs them apart
        when their lengths differ."""
        pos, neg = self.pos[sl], self.neg[sl]
        # Each prompt keeps its own AND parts and weights (a batch may mix them, e.g. a prompt matrix): a prompt
        # with fewer parts is padded with its first part at weight 0, which adds nothing to the guidance.
        n_parts = max(len(p) for p in pos)
        pos = [[*p, *[(p[0][0], 0.0)] * (n_parts - len(p))] for p in pos]
        weights = []
        for j in range(n_parts):
            ws = [p[j][1] for p in pos]
            weights.append(ws[0] if len(set(ws)) == 1 else torch.tensor(ws).view(-1, 1, 1, 1))
        memo: dict = {}

        def at(step: int):
            key = (tuple(tuple(prompt_parser.schedule_for_step(s, step) for s, _ in parts) for parts in pos),
                   tuple(prompt_parser.schedule_for_step(s, step) for s in neg))
            if key not in memo:
                part_texts, neg_texts = key
                conds = [(self.encoder.encode([texts[j] for texts in part_texts], n_chunks[0]), weights[j])
                         for j in range(n_parts)]
                memo.clear()   # schedules move forward: keep only the current step's tensors
                memo[key] = (conds, self.encoder.encode(list(neg_texts), n_chunks[1]))
            return memo[key]
        return at
