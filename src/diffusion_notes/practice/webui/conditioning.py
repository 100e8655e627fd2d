"""From a web-UI prompt to what the UNet attends to, and the guided model the sampler calls.

`PromptEncoder(clip)` turns one text into token states (77 k, D): its emphasis pieces are tokenized
one by one and cut into chunks of 75 tokens as the web UI cuts long prompts (a chunk that would
split a phrase ends after its last comma instead, if that comma is at most 20 tokens back; `BREAK`
starts a new chunk), each chunk framed by start and end tokens and encoded by CLIP's text encoder,
the states multiplied by their tokens' weights and rescaled so that their mean is what it was. The
texts of one prompt schedule are weighted together, chunk by chunk, as the web UI encodes them.
With clip skip n > 1 the states are the hidden state n - 1 layers below the top, after the final
LayerNorm, as the web UI reads SD 1.x's text encoder.

`WebUIDenoiser` is the `model(x, t) -> eps` the sampler's loop calls. At each model call it picks
every image's conditioning (prompt editing), makes all predictions in one UNet call, and combines
them as composable diffusion does:

    eps = eps(x, "") + sum_k  w_k s (eps(x, c_k) - eps(x, ""))       (s the CFG scale, w_k the AND weights)

With one sub-prompt of weight 1 that is classifier-free guidance, computed with the same tensor
operations as `guidance.CFGDenoiser`, so plain prompts give the pipeline's pixels exactly.
"""

from __future__ import annotations

import torch

from diffusion_notes.data.tokenizer import CONTEXT_LENGTH, END_ID, PAD_ID, START_ID, tokenize
from diffusion_notes.practice.webui.prompts import parse_prompt_attention, prompt_schedule, split_and

CHUNK = CONTEXT_LENGTH - 2  # 75 tokens between start and end
COMMA_ID = 267  # open_clip's id of ",</w>"
COMMA_BACKTRACK = 20  # the web UI's comma_padding_backtrack


def chunk_tokens(pieces: list[tuple[list[int], float]], backtrack: int = COMMA_BACKTRACK) -> list[list[tuple]]:
    """[(token ids, weight), ...] of the emphasis pieces -> chunks of at most 75 (id, weight) pairs.

    The web UI's `tokenize_line`: when a chunk is full and the next token is not a comma, the tokens
    after the chunk's last comma move to the next chunk if that comma is at most `backtrack` tokens
    from the end (0 turns this off). A piece of weight -1 (`BREAK`) closes the chunk, even an empty
    one; a last chunk is kept if it holds tokens or is the only one.
    """
    chunks: list[list[tuple[int, float]]] = []
    chunk: list[tuple[int, float]] = []
    last_comma = -1
    for ids, weight in pieces:
        if weight == -1:  # BREAK
            chunks.append(chunk)
            chunk, last_comma = [], -1
            continue
        for token in ids:
            if token == COMMA_ID:
                last_comma = len(chunk)
            elif backtrack and len(chunk) == CHUNK and last_comma != -1 and len(chunk) - last_comma <= backtrack:
                chunks.append(chunk[:last_comma + 1])
                chunk, last_comma = chunk[last_comma + 1:], -1
            if len(chunk) == CHUNK:
                chunks.append(chunk)
                chunk, last_comma = [], -1
            chunk.append((token, weight))
    if chunk or not chunks:
        chunks.append(chunk)
    return chunks


class PromptEncoder:
    """Text -> token states (77 k, D) with the web UI's emphasis and clip skip; results are cached per text."""

    def __init__(self, clip, clip_skip: int = 1, comma_backtrack: int = COMMA_BACKTRACK):
        if isinstance(clip_skip, bool) or not isinstance(clip_skip, int) or clip_skip < 1:
            raise ValueError(f"clip_skip must be an int >= 1 (1 = the last layer), got {clip_skip!r}")
        if clip_skip > 1:
            layers = len(getattr(getattr(getattr(clip, "text", None), "transformer", None), "blocks", ()))
            if not layers or clip_skip > layers + 1:
                raise ValueError(f"clip_skip must be between 1 and {layers + 1} for this text encoder "
                                 f"({layers} layers), got {clip_skip}")
        self.clip, self.clip_skip, self.comma_backtrack = clip, clip_skip, comma_backtrack
        self.cache: dict[tuple, list[torch.Tensor]] = {}
        self.raw: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
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
        """The chunks of (token id, weight) of a text: 75 at most each, at least one chunk (`chunk_tokens`)."""
        pieces = [([], -1) if weight == -1 else (self._ids(fragment), float(weight))
                  for fragment, weight in parse_prompt_attention(text)]
        return chunk_tokens(pieces, self.comma_backtrack)

    def _states(self, ids: torch.Tensor) -> torch.Tensor:
        """(k, 77) ids -> (k, 77, D) token states, `clip_skip` layers from the top."""
        if self.clip_skip == 1:
            return self.clip.encode_text(ids).token_states
        return self.clip.text.hidden_states(ids, self.clip_skip)

    @torch.no_grad()
    def _raw(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The text's unweighted chunk states (k, 77, D) and its tokens' weights (k, 77), cached."""
        if text not in self.raw:
            chunks = self.tokens(text)
            device = next(self.clip.parameters()).device
            ids = torch.full((len(chunks), CONTEXT_LENGTH), PAD_ID, dtype=torch.long)  # (k, 77)
            weights = torch.ones(len(chunks), CONTEXT_LENGTH)  # (k, 77)
            for c, chunk in enumerate(chunks):
                row = [START_ID, *(t for t, _ in chunk), END_ID]
                ids[c, :len(row)] = torch.tensor(row)
                weights[c, 1:len(chunk) + 1] = torch.tensor([w for _, w in chunk])
            self.raw[text] = self._states(ids.to(device)), weights  # (k, 77, D), (k, 77)
            self.token_counts[text] = sum(len(chunk) for chunk in chunks)
        return self.raw[text]

    @torch.no_grad()
    def batch(self, texts: list[str]) -> list[torch.Tensor]:
        """The states (77 k, D) of texts encoded together, as the web UI encodes one prompt's schedule.

        Every text has k chunks, the most any has (the others get empty chunks), and emphasis works
        on chunk c of all texts at once: scale the states by their weights, then restore their mean.
        """
        key = tuple(texts)
        if key not in self.cache:
            raws = [self._raw(text) for text in texts]
            empty = self._raw("")
            k = max(len(z) for z, _ in raws)
            z = torch.stack([torch.cat([z, *[empty[0]] * (k - len(z))]) for z, _ in raws])  # (N, k, 77, D)
            weights = torch.stack([torch.cat([w, *[empty[1]] * (k - len(w))]) for _, w in raws]).to(z)  # (N, k, 77)
            for c in range(k):  # the web UI's EmphasisOriginal, chunk by chunk
                if (weights[:, c] != 1).any():
                    mean = z[:, c].mean()
                    scaled = z[:, c] * weights[:, c, :, None]  # (N, 77, D)
                    z[:, c] = scaled * (mean / scaled.mean())
            self.cache[key] = list(z.reshape(len(texts), -1, z.shape[-1]).unbind(0))  # N x (77 k, D)
        return self.cache[key]

    def __call__(self, text: str) -> torch.Tensor:
        """The states (77 k, D) of one text (a batch of one)."""
        return self.batch([text])[0]


class Conditioning:
    """One image's conditioning over a run: its AND parts [(weight, [(end_at_step, states (M, D)), ...]), ...].

    As the web UI's `get_multicond_learned_conditioning`: the prompt is split at AND first (not for
    the negative prompt, `split=False`), then each part gets its own `prompt_schedule` over `steps`
    (`total_steps`), with `hires_steps` and `old` ("Use old prompt editing timelines").
    """

    def __init__(self, encoder: PromptEncoder, prompt: str, steps: int, split: bool = True,
                 hires_steps: int | None = None, old: bool = False):
        self.parts = []
        for part, weight in split_and(prompt) if split else [(prompt, 1.0)]:
            schedule = prompt_schedule(part, steps, hires_steps, old)
            texts = [text for _, text in schedule]
            states = encoder.batch(texts) if hasattr(encoder, "batch") else [encoder(text) for text in texts]
            self.parts.append((weight, [(end, z) for (end, _), z in zip(schedule, states)]))

    def at(self, count: int) -> list[tuple[torch.Tensor, float]]:
        """[(states, weight), ...] at the denoiser's count (0 first), each part's entry as the web UI's
        `reconstruct_multicond_batch` picks it: the first with count <= end_at_step, else the first."""
        return [(next((states for end, states in entries if count <= end), entries[0][1]), weight)
                for weight, entries in self.parts]


def total_steps(grid, steps: int) -> int:
    """The count a prompt schedule runs over: the web UI's `SamplerData.total_steps` doubles the steps
    of its second-order samplers (Heun, DPM2, DPM2 a, ...), whose denoiser counts both calls of a step.
    Ours are the samplers whose grid visits two points a step (`Grid.step_index`)."""
    return steps if grid.step_index is None else 2 * steps


def webui_counter(grid, first_call: int = 0):
    """count(step, t) -> the web UI's `CFGDenoiser.step` at a model call of `samplers.loop`.

    The web UI counts the model calls of a run from 0: a sampler that calls the model twice a step
    counts both, and img2img starts at 0 where it starts (`first_call`, the grid point it starts
    at). The count is worked out from the step the loop passes and the call's t (which of the
    step's grid points), never from counting calls, so a denoiser can be called again safely.
    """
    if grid.step_index is None:
        return lambda step, t: step - first_call
    points: dict[int, list[tuple[float, int]]] = {}
    for i, (step, t) in enumerate(zip(grid.step_index.tolist(), grid.timesteps.tolist())):
        points.setdefault(step, []).append((float(t), i))

    def count(step: int, t: torch.Tensor) -> int:
        t0 = float(t.reshape(-1)[0])
        return min(points[step], key=lambda point: abs(point[0] - t0))[1] - first_call

    return count


def stack_conds(states: list[torch.Tensor]) -> torch.Tensor:
    """(M_i, D) states -> (N, M, D): the short ones padded with their last row repeated (the web UI's
    `stack_conds`, for AND parts and images whose prompts have different numbers of chunks)."""
    M = max(z.shape[0] for z in states)
    return torch.stack([z if z.shape[0] == M else torch.cat([z, z[-1:].repeat(M - z.shape[0], 1)]) for z in states])


class WebUIDenoiser:
    """model(x, t) -> eps for a batch of images, each with its own (scheduled, composed) conditioning.

    The sampling loop hands it the sampler's step index k (0-based, `takes_step`). Prompt editing
    follows the web UI's count of model calls, `counter(k, t)` (`webui_counter`); without a counter
    the count is k, which is the web UI's for a txt2img run of a sampler that calls the model once a
    step.
    """

    takes_step = True  # samplers.loop calls it as model(x, t, step=k)

    def __init__(self, unet, conds: list[Conditioning], unconds: list[Conditioning], cfg_scale: float,
                 null: torch.Tensor | None = None, counter=None):
        self.unet, self.conds, self.unconds = unet, conds, unconds
        self.s, self.counter = float(cfg_scale), counter
        self.null = null  # the empty prompt's states; the web UI pads nothing with them by default

    def __call__(self, x: torch.Tensor, t: torch.Tensor, step: int) -> torch.Tensor:
        count = step if self.counter is None else self.counter(step, t)
        parts = [cond.at(count) for cond in self.conds]  # B x [(states, weight), ...]
        B, s = x.shape[0], self.s
        plain = all(len(p) == 1 and p[0][1] == 1.0 for p in parts)
        rows = list(range(B)) if plain else [b for b, p in enumerate(parts) for _ in p]  # the image of each row
        cond = stack_conds([states for p in parts for states, _ in p])  # (K, M, D)
        x_rows, t_rows = (x, t) if plain else (x[rows], t[rows])  # (K, C, h, w), (K,)
        if plain and s == 1.0:
            return self.unet(x, t, cond)
        uncond = torch.stack([u.at(count)[0][0] for u in self.unconds])  # (B, M', D)
        if cond.shape[1] == uncond.shape[1]:  # one UNet call on K + B rows
            eps = self.unet(torch.cat([x_rows, x]), torch.cat([t_rows, t]), torch.cat([cond, uncond]))
            eps_cond, eps_uncond = eps[:len(rows)], eps[len(rows):]  # (K, C, h, w), (B, C, h, w)
        else:  # the web UI calls the UNet on each length rather than pad (its pad_cond_uncond is off)
            eps_cond, eps_uncond = self.unet(x_rows, t_rows, cond), self.unet(x, t, uncond)
        if plain:  # classifier-free guidance, as guidance.CFGDenoiser computes it
            return eps_uncond + s * (eps_cond - eps_uncond)
        out = eps_uncond.clone()  # composable diffusion, as the web UI's combine_denoised
        weights = [weight for p in parts for _, weight in p]
        for k, (b, weight) in enumerate(zip(rows, weights)):
            out[b] += weight * s * (eps_cond[k] - eps_uncond[b])
        return out
