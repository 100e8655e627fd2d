"""From a web-UI prompt to what the UNet attends to, and the guided model the sampler calls.

`PromptEncoder(clip)` turns one text into token states (77 k, D): its emphasis pieces are tokenized
one by one, cut into chunks of 75 tokens (each chunk framed by start and end tokens, as the web UI
does for long prompts; `BREAK` starts a new chunk), each chunk encoded by CLIP's text encoder, the
states multiplied by their tokens' weights and rescaled so that their mean is what it was.

`WebUIDenoiser` is the `model(x, t) -> eps` the sampler's loop calls. At each step it picks every
image's conditioning for that step (prompt editing), makes all predictions in one UNet call, and
combines them as composable diffusion does:

    eps = eps(x, "") + sum_k  w_k s (eps(x, c_k) - eps(x, ""))       (s the CFG scale, w_k the AND weights)

With one sub-prompt of weight 1 that is classifier-free guidance, computed with the same tensor
operations as `guidance.CFGDenoiser`, so plain prompts give the pipeline's pixels exactly.
"""

from __future__ import annotations

import torch

from diffusion_notes.data.tokenizer import CONTEXT_LENGTH, END_ID, PAD_ID, START_ID, tokenize
from diffusion_notes.practice.webui.prompts import parse_prompt_attention, prompt_schedule, split_and

CHUNK = CONTEXT_LENGTH - 2  # 75 tokens between start and end


class PromptEncoder:
    """Text -> token states (77 k, D) with the web UI's emphasis; results are cached per text."""

    def __init__(self, clip):
        self.clip = clip
        self.cache: dict[str, torch.Tensor] = {}
        self.token_counts: dict[str, int] = {}

    def _ids(self, fragment: str) -> list[int]:
        """open_clip ids of a fragment of any length: CLIP's BPE reads word by word, so words are tokenized
        in one batch (each row within 77 tokens) and their ids joined."""
        words = fragment.split()
        if not words:
            return []
        rows = tokenize(words, allow_empty=True).tolist()
        return [i for row in rows for i in row[1:row.index(END_ID)]]

    def tokens(self, text: str) -> list[list[tuple[int, float]]]:
        """The chunks of (token id, weight) of a text: 75 at most each, at least one chunk."""
        chunks, current = [], []
        for fragment, weight in parse_prompt_attention(text):
            if weight == -1:  # BREAK
                chunks.append(current)
                current = []
                continue
            for token in self._ids(fragment):
                if len(current) == CHUNK:
                    chunks.append(current)
                    current = []
                current.append((token, float(weight)))
        chunks.append(current)
        return chunks

    @torch.no_grad()
    def __call__(self, text: str) -> torch.Tensor:
        if text in self.cache:
            return self.cache[text]
        chunks = self.tokens(text)
        device = next(self.clip.parameters()).device
        ids = torch.full((len(chunks), CONTEXT_LENGTH), PAD_ID, dtype=torch.long)  # (k, 77)
        weights = torch.ones(len(chunks), CONTEXT_LENGTH)  # (k, 77)
        for c, chunk in enumerate(chunks):
            row = [START_ID, *(t for t, _ in chunk), END_ID]
            ids[c, :len(row)] = torch.tensor(row)
            weights[c, 1:len(chunk) + 1] = torch.tensor([w for _, w in chunk])
        z = self.clip.encode_text(ids.to(device)).token_states  # (k, 77, D)
        if (weights != 1).any():  # the web UI: scale the states, then restore their mean
            mean = z.mean()
            z = z * weights.to(z)[..., None]
            z = z * (mean / z.mean())
        states = z.reshape(-1, z.shape[-1])  # (77 k, D)
        self.cache[text] = states
        self.token_counts[text] = sum(len(chunk) for chunk in chunks)
        return states


class Conditioning:
    """One image's conditioning over the steps: [(last step, [(states (M, D), AND weight), ...]), ...]."""

    def __init__(self, encoder: PromptEncoder, prompt: str, steps: int, split: bool = True):
        self.schedule = []
        for last, text in prompt_schedule(prompt, steps):
            parts = split_and(text) if split else [(text, 1.0)]
            self.schedule.append((last, [(encoder(part), weight) for part, weight in parts]))

    def at(self, step: int) -> list[tuple[torch.Tensor, float]]:
        for last, parts in self.schedule:
            if step <= last:
                return parts
        return self.schedule[-1][1]


def _pad(states: list[torch.Tensor], null: torch.Tensor) -> torch.Tensor:
    """Stack (M_i, D) states into (N, M, D), padding the short ones with the empty prompt's chunk."""
    M = max(s.shape[0] for s in states)
    rows = [s if s.shape[0] == M else torch.cat([s, null.repeat((M - s.shape[0]) // len(null), 1)])
            for s in states]
    return torch.stack(rows)  # (N, M, D)


class WebUIDenoiser:
    """model(x, t) -> eps for a batch of images, each with its own (scheduled, composed) conditioning.

    The sampling loop hands it the sampler's step index k (0-based, `takes_step`); prompt editing
    counts in the 1-based step k + 1. The step is passed, never counted from calls, so a sampler that
    calls the model twice per step schedules its prompts as one that calls it once.
    """

    takes_step = True  # samplers.loop calls it as model(x, t, step=k)

    def __init__(self, unet, conds: list[Conditioning], unconds: list[Conditioning], cfg_scale: float,
                 null: torch.Tensor):
        self.unet, self.conds, self.unconds = unet, conds, unconds
        self.s, self.null = float(cfg_scale), null

    def __call__(self, x: torch.Tensor, t: torch.Tensor, step: int) -> torch.Tensor:
        step = step + 1
        parts = [cond.at(step) for cond in self.conds]  # B x [(states, weight), ...]
        B, s = x.shape[0], self.s
        plain = all(len(p) == 1 and p[0][1] == 1.0 for p in parts)
        if plain and s == 1.0:
            return self.unet(x, t, _pad([p[0][0] for p in parts], self.null))
        uncond = [u.at(step)[0][0] for u in self.unconds]
        if plain:  # classifier-free guidance, as guidance.CFGDenoiser computes it
            context = _pad([p[0][0] for p in parts] + uncond, self.null)  # (2B, M, D)
            eps = self.unet(torch.cat([x, x]), torch.cat([t, t]), context)  # (2B, C, h, w)
            eps_cond, eps_uncond = eps.chunk(2)
            return eps_uncond + s * (eps_cond - eps_uncond)
        rows = [b for b, p in enumerate(parts) for _ in p] + list(range(B))  # image of each row
        context = _pad([states for p in parts for states, _ in p] + uncond, self.null)  # (K + B, M, D)
        eps = self.unet(x[rows], t[rows], context)  # (K + B, C, h, w)
        eps_uncond = eps[-B:]
        out, k = eps_uncond.clone(), 0
        for b, p in enumerate(parts):
            for _, weight in p:
                out[b] += weight * s * (eps[k] - eps_uncond[b])
                k += 1
        return out
