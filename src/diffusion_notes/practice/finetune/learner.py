"""Teaching the shipped Stable Diffusion a new concept: textual inversion, LoRA and DreamBooth.

All three minimise the same latent-diffusion loss on the six instance pictures
(`stable_diffusion.ldm.ldm_loss` without caption dropout); they differ in what may change:

* **textual inversion** (Gal et al. 2022): one new row of the text encoder's embedding table,
  the vector that the word "heart" now stands for. Nothing else moves: the whole table gets
  gradients, and every other row is put back after each step (`restore_rows`).
* **LoRA** (Hu et al. 2021): rank-r updates of the UNet's attention projections.
* **DreamBooth** (Ruiz et al. 2023): the whole UNet (or, "dreambooth_lora", its LoRA), with a
  rare word bound to the subject. With prior preservation the loss adds the same objective on
  pictures the *base* model drew for ordinary captions, so the fine-tuned model keeps drawing
  them:  L = L(instance) + lambda L(class).

Our text encoder knows only the words of the Shapes captions, so "heart" (like any rare word)
reaches the UNet as the one <unk> row: for LoRA and DreamBooth it is a rare token; textual
inversion gives it a row of its own.

Notation: B pictures per step, D text width, V + 1 rows in the embedding table.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from diffusion_notes.data.shapes import ShapesDataset
from diffusion_notes.data.tokenizer import caption_vocabulary, tokenize
from diffusion_notes.foundations.diffusion import noise_prediction_loss
from diffusion_notes.nn.unet import UNet
from diffusion_notes.practice.finetune.concept import CONCEPT, N_INSTANCE, instance_images
from diffusion_notes.practice.finetune.lora import inject_lora, lora_state
from diffusion_notes.practice.finetune.lora_files import LoRANetwork, network_from_state
from diffusion_notes.stable_diffusion.ldm import encode_latents, ldm_schedule
from diffusion_notes.stable_diffusion.pipeline import LatentDiffusionPipeline

METHODS = ("textual_inversion", "lora", "dreambooth", "dreambooth_lora")


@dataclass(frozen=True)
class FineTuneConfig:
    method: str = "lora"
    rank: int = 4  # LoRA's r (lora, dreambooth_lora)
    alpha: float = 4.0  # LoRA's alpha: the update is (alpha / r) B A
    prior_preservation: bool = False  # DreamBooth's class-prior term
    prior_weight: float = 1.0  # its lambda
    token: str = CONCEPT  # the word the concept is bound to (textual inversion's recipe: "valentine")
    init_token: str = "circle"  # textual inversion starts the new row from this word's row
    n_instance: int = N_INSTANCE

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.prior_preservation and not self.method.startswith("dreambooth"):
            raise ValueError("prior_preservation is DreamBooth's; use method='dreambooth' or 'dreambooth_lora'")


def token_id(word: str) -> int:
    """The open_clip id of a one-token word ("heart" -> 2653); a ValueError if the BPE splits it."""
    ids = tokenize([word])[0]
    pieces = ids[1:int((ids != 0).sum()) - 1]
    if len(pieces) != 1:
        raise ValueError(f"{word!r} is {len(pieces)} tokens; a new concept needs a one-token word")
    return int(pieces[0])


@torch.no_grad()
def add_token(text_encoder, word: str, vector: torch.Tensor | None = None, init_word: str | None = None) -> int:
    """Give `word` its own row of the text encoder's embedding table (in place); return the row.

    The vocabulary stays sorted: the new open_clip id is inserted where it belongs and the
    table gets a row there, so every other word still reads the row it read before. The row is
    `vector` (D,), or a copy of `init_word`'s row, or of <unk>'s.

    Paper: Gal et al. 2022, "An Image is Worth One Word", section 3 (a new pseudo-word's embedding)
    """
    new_id = token_id(word)
    vocab, table = text_encoder.vocabulary, text_encoder.token_embedding.weight  # (V,), (V + 1, D)
    if (vocab == new_id).any():
        raise ValueError(f"{word!r} already has a row in the text encoder's table")
    row = int(torch.searchsorted(vocab, torch.tensor(new_id)))
    if vector is None:
        source = len(vocab) if init_word is None else int((vocab == token_id(init_word)).nonzero())
        vector = table[source]
    if vector.shape != (table.shape[1],):
        raise ValueError(f"the embedding must have shape ({table.shape[1]},), got {tuple(vector.shape)}")
    text_encoder.vocabulary = torch.cat([vocab[:row], vocab.new_tensor([new_id]), vocab[row:]])
    weight = torch.cat([table[:row], vector.to(table)[None], table[row:]])  # (V + 2, D)
    text_encoder.token_embedding = nn.Embedding.from_pretrained(weight, freeze=False)
    return row


def new_row(vocabulary: torch.Tensor, word: str) -> int:
    """The row `add_token` gives `word` in a table built on `vocabulary` (sorted open_clip ids)."""
    return int(torch.searchsorted(vocabulary, torch.tensor(token_id(word))))


def token_row(text_encoder, word: str) -> int:
    """The row of the table that `word` reads (a ValueError if it reads <unk>)."""
    hits = (text_encoder.vocabulary == token_id(word)).nonzero()
    if len(hits) == 0:
        raise ValueError(f"{word!r} has no row of its own in this text encoder")
    return int(hits[0])


class ConceptLearner(nn.Module):
    """A copy of the UNet and the text encoder, with only the method's parameters trainable.

    `unet`, `text_encoder`, `vae` and `scale_factor` are the shipped model's parts (copied:
    the originals stay untouched); the VAE only encodes pictures and stays frozen.
    """

    def __init__(self, config: FineTuneConfig, *, unet, text_encoder, vae, scale_factor: float):
        super().__init__()
        self.config = config
        self.unet = copy.deepcopy(unet).requires_grad_(False)
        self.text = copy.deepcopy(text_encoder).requires_grad_(False)
        self.vae = vae  # frozen, shared
        self.scale_factor = float(scale_factor)
        self.row = None
        if config.method == "textual_inversion":
            self.row = add_token(self.text, config.token, init_word=config.init_token)
            self.text.token_embedding.weight.requires_grad_(True)
            self.register_buffer("frozen_rows", self.text.token_embedding.weight.detach().clone(), persistent=False)
        elif config.method in ("lora", "dreambooth_lora"):
            inject_lora(self.unet, config.rank, config.alpha)
        else:  # dreambooth: the whole UNet
            self.unet.requires_grad_(True)

    def encode(self, ids: torch.Tensor) -> torch.Tensor:
        """Token states (B, 77, D) of (B, 77) open_clip ids; with gradients only for textual inversion."""
        with torch.set_grad_enabled(self.row is not None and torch.is_grad_enabled()):
            return self.text(ids)[1]  # (B, 77, D)

    @torch.no_grad()
    def restore_rows(self) -> None:
        """Put back every row of the embedding table but the new word's (textual inversion, after each step)."""
        if self.row is None:
            return
        weight = self.text.token_embedding.weight
        keep = torch.ones(len(weight), dtype=torch.bool, device=weight.device)
        keep[self.row] = False
        weight[keep] = self.frozen_rows[keep]

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """What a run saves, as state-dict entries: the table with the new row, the LoRA factors, or the whole UNet."""
        if self.row is not None:
            return {"text.token_embedding.weight": self.text.token_embedding.weight.detach().clone()}  # (V + 2, D)
        if self.config.method in ("lora", "dreambooth_lora"):
            return {f"unet.{k}": v for k, v in lora_state(self.unet).items()}
        return {f"unet.{k}": v.detach().clone() for k, v in self.unet.state_dict().items()}


@torch.no_grad()
def instance_batch(vae, scale_factor: float, n: int, generator: torch.Generator, word: str = CONCEPT) -> dict:
    """{"z0": (n, 4, 8, 8), "ids": (n, 77)}: the instance pictures' latents (a fresh sample of q(z|x)) and captions."""
    images, captions = instance_images(n, word)
    device = next(vae.parameters()).device
    z0 = encode_latents(vae, images.to(device), scale_factor, generator)
    return {"z0": z0, "ids": tokenize(captions)}


@torch.no_grad()
def class_latents(pipe, n: int, seed: int = 0, steps: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """DreamBooth's class pictures: the base model's own latents (n, 4, 8, 8) for n ordinary training captions.

    The captions come from the training split (seed 2, items the UNet never trained on in this order);
    the latents are what the base pipeline draws for them, so the prior term asks the fine-tuned
    model to keep drawing what it drew before.
    """
    dataset = ShapesDataset("train", length=n, seed=2)
    captions = [dataset.caption(i) for i in range(n)]
    z = pipe(captions, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed),
             output_type="latent").latents  # (n, 4, 8, 8)
    return z.cpu(), tokenize(captions)


def concept_loss(model: ConceptLearner, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
    r"""L(instance) + lambda L(class): the LDM loss on the instance pictures, plus the prior term if the batch has one.

    $$L = \mathbb E\,\|\epsilon - \epsilon_\theta(z_t, t, \tau(y))\|^2
          + \lambda\, \mathbb E\,\|\epsilon' - \epsilon_\theta(z'_{t'}, t', \tau(y_{pr}))\|^2$$

    Book: eq-dreambooth-loss
    Paper: Ruiz et al. 2023, "DreamBooth", eq. 2 (the class-specific prior-preservation loss)
    """
    device = next(model.unet.parameters()).device
    schedule = ldm_schedule()
    loss = noise_prediction_loss(model.unet, batch["z0"].to(device), schedule, generator=generator,
                                 cond=model.encode(batch["ids"].to(device)))
    if "prior_z0" in batch:
        prior = noise_prediction_loss(model.unet, batch["prior_z0"].to(device), schedule, generator=generator,
                                      cond=model.encode(batch["prior_ids"].to(device)))
        loss = loss + model.config.prior_weight * prior
    return loss


def learner_pipeline(learner: ConceptLearner, clip):
    """A pipeline that draws with the learner's UNet and text encoder (`clip` is copied, its text tower replaced)."""
    clip = copy.copy(clip)
    clip._modules = dict(clip._modules)  # the shallow copy gets its own table of submodules
    clip.text = learner.text
    return LatentDiffusionPipeline(learner.unet, learner.vae, clip, learner.scale_factor)


@dataclass
class TokenEmbedding:
    """A textual-inversion result: the word and its row (D,) of the text encoder's table."""

    word: str
    vector: torch.Tensor

    def apply_to(self, clip):
        """A copy of `clip` whose text encoder gives `word` this row (the original is untouched)."""
        return with_embeddings(clip, [self])


def with_embeddings(clip, embeddings: list[TokenEmbedding]):
    """A deep copy of `clip` with each embedding's word added to its text encoder (`add_token`)."""
    clip = copy.deepcopy(clip)
    for embedding in embeddings:
        add_token(clip.text, embedding.word, embedding.vector)
    return clip


def shipped_result(config: FineTuneConfig, tensors: dict[str, torch.Tensor], *, name: str,
                   base_config: Callable[[str], object], device="cpu") -> TokenEmbedding | LoRANetwork | UNet:
    """What a fine-tuning run adds, from the tensors its `trainable_state` saved: the inverse of that method.

    textual inversion: a TokenEmbedding (the new word's row of the table); LoRA and DreamBooth-LoRA: a
    LoRANetwork called `name` (apply it with `lora_files.applied`); DreamBooth: the whole fine-tuned UNet,
    float32 in eval mode, of the base model's config (`base_config("ldm_unet")`, the shipped one's). On `device`.
    """
    if config.method == "textual_inversion":
        row = new_row(torch.tensor(caption_vocabulary()), config.token)
        return TokenEmbedding(config.token, tensors["text.token_embedding.weight"][row].float().to(device))
    if config.method == "dreambooth":  # the whole UNet
        unet = UNet(base_config("ldm_unet"))
        unet.load_state_dict({k[len("unet."):]: v for k, v in tensors.items()})
        return unet.float().to(device).eval()
    metadata = {"name": name, "base_model": "ldm_unet", "trigger": config.token, "rank": config.rank,
                "alpha": config.alpha}
    return network_from_state(tensors, config.alpha, metadata, device=device)
