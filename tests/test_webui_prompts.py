"""The web UI's prompt syntax: emphasis, prompt editing, alternation, AND, and what they do to the conditioning."""

import pytest
import torch

from diffusion_notes.foundations.grids import make_grid
from diffusion_notes.foundations.samplers import loop, prepare_step
from diffusion_notes.practice.webui.conditioning import (
    CHUNK,
    Conditioning,
    PromptEncoder,
    WebUIDenoiser,
    total_steps,
    webui_counter,
)
from diffusion_notes.practice.webui.prompts import parse_prompt_attention, prompt_schedule, split_and
from diffusion_notes.practice.webui.seeds import ImageRNG
from diffusion_notes.stable_diffusion.ldm import ldm_schedule

A, S = 1.1, 1 / 1.1
# From the web UI's documented behaviour (its wiki's "Attention/emphasis" section and its parser's examples).
CASES = [
    ("normal text", [["normal text", 1.0]]),
    ("an (important) word", [["an ", 1.0], ["important", A], [" word", 1.0]]),
    ("(unbalanced", [["unbalanced", A]]),
    ("[unbalanced", [["unbalanced", S]]),
    (r"\(literal\]", [["(literal]", 1.0]]),
    ("(unnecessary)(parens)", [["unnecessaryparens", A]]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [["a ", 1.0], ["house", 1.3 * A * A], [" ", A], ["on", 1.0], [" a ", A], ["hill", 0.5 * A],
      [", sun, ", A], ["sky", A ** 4], [".", A]]),
    ("(word:1.5)", [["word", 1.5]]),
    ("(word: 0.25 )", [["word", 0.25]]),
    ("((word))", [["word", A * A]]),
    ("[[word]]", [["word", S * S]]),
    ("([word])", [["word", 1.0]]),
    ("(a [b] c)", [["a ", A], ["b", 1.0], [" c", A]]),
    ("word:1.5", [["word:1.5", 1.0]]),  # a weight needs its bracket
    ("word)", [["word)", 1.0]]),  # a stray closer is text
    ("a]b", [["a]b", 1.0]]),
    (r"\\", [["\\", 1.0]]),
    ("", [["", 1.0]]),
    ("a BREAK b", [["a", 1.0], ["BREAK", -1], ["b", 1.0]]),
    ("(a:2) (b:2)", [["a", 2.0], [" ", 1.0], ["b", 2.0]]),
]


@pytest.mark.parametrize("text, expected", CASES)
def test_parse_prompt_attention_table(text, expected):
    got = parse_prompt_attention(text)
    assert [t for t, _ in got] == [t for t, _ in expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in expected])


@pytest.mark.parametrize("text", ["(word:1.2.3)", "(word:.)", "(word:50)", "(word:-11)"])
def test_malformed_emphasis_is_a_clear_error(text):
    with pytest.raises(ValueError, match="emphasis"):
        parse_prompt_attention(text)


def test_prompt_schedules():
    assert prompt_schedule("a [red:blue:5] circle", 10) == [(5, "a red circle"), (10, "a blue circle")]
    assert prompt_schedule("a [red:blue:0.3] circle", 10) == [(3, "a red circle"), (10, "a blue circle")]
    assert prompt_schedule("a [red:4] circle", 10) == [(4, "a  circle"), (10, "a red circle")]
    assert prompt_schedule("a [red::4] circle", 10) == [(4, "a red circle"), (10, "a  circle")]
    assert prompt_schedule("a [red|blue] circle", 4) == [(1, "a red circle"), (2, "a blue circle"),
                                                         (3, "a red circle"), (4, "a blue circle")]
    assert prompt_schedule("[(red:1.2):blue:2]", 3) == [(2, "(red:1.2)"), (3, "blue")]
    assert prompt_schedule("[a:b:[c:d:1]]", 3) == [(1, "[a:b:c]"), (3, "[a:b:d]")]  # a when is a number, not editing
    assert prompt_schedule("(word:1.2) [x]", 5) == [(5, "(word:1.2) [x]")]
    assert prompt_schedule("a [b:c", 5) == [(5, "a [b:c")]  # unreadable: used as it is


def test_split_and():
    assert split_and("a red circle AND a star :0.5") == [("a red circle", 1.0), ("a star", 0.5)]
    assert split_and("one") == [("one", 1.0)]
    assert split_and("candy AND") == [("candy", 1.0), ("", 1.0)]


class FakeEncoder:
    """A text -> states function: each text gets its own constant (77, 4) tensor, recorded by value."""

    def __init__(self):
        self.ids = {}

    def __call__(self, text):
        index = self.ids.setdefault(text, len(self.ids) + 1)
        return torch.full((77, 4), float(index))


class CountingUNet:
    """Records which conditioning (as its encoder id) every call sees, row by row; predicts zeros."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, t, context):
        self.calls.append(context[:, 0, 0].tolist())
        return torch.zeros_like(x)


@pytest.mark.parametrize("sampler", ["DPM++ 2M", "Euler a"])
def test_prompt_editing_switches_at_the_right_step(sampler):
    """The web UI's CFGDenoiser (sd_samplers_cfg_denoiser.py) counts from 0 and reconstruct_cond_batch
    (prompt_parser.py) takes the first entry with count <= end_at_step: [red:blue:4] is red for 0..4."""
    steps, encoder, unet = 10, FakeEncoder(), CountingUNet()
    cond = Conditioning(encoder, "a [red:blue:4] circle", steps)
    uncond = Conditioning(encoder, "", steps, split=False)
    schedule = ldm_schedule()
    name, karras = ("dpmpp_2m", False) if sampler == "DPM++ 2M" else ("euler_a", False)
    grid = make_grid(name, steps, schedule, None, 0, karras)
    model = WebUIDenoiser(unet, [cond], [uncond], 4.0, encoder(""))
    loop(model, torch.zeros(1, 4, 8, 8), grid, prepare_step(name, grid, schedule),
         noise=ImageRNG((4, 8, 8), [0]).next)
    red, blue, empty = (encoder.ids[t] for t in ("a red circle", "a blue circle", ""))
    assert len(unet.calls) == steps
    assert unet.calls == [[red, empty]] * 5 + [[blue, empty]] * 5  # counts 0-4 red, 5-9 blue


@pytest.mark.parametrize("sampler", ["heun", "dpm2_a"])
def test_prompt_editing_with_two_model_calls_a_step_counts_calls_over_twice_the_steps(sampler):
    """Heun and DPM2 a are second-order samplers: SamplerData.total_steps (sd_samplers_common.py) doubles
    the steps the schedule runs over, and CFGDenoiser.step counts both calls of a step."""
    steps, encoder, unet = 10, FakeEncoder(), CountingUNet()
    schedule = ldm_schedule()
    grid = make_grid(sampler, steps, schedule)
    assert total_steps(grid, steps) == 20
    cond = Conditioning(encoder, "a [red:blue:4] circle", total_steps(grid, steps))
    uncond = Conditioning(encoder, "", total_steps(grid, steps), split=False)
    model = WebUIDenoiser(unet, [cond], [uncond], 4.0, encoder(""), counter=webui_counter(grid))
    loop(model, torch.zeros(1, 4, 8, 8), grid, prepare_step(sampler, grid, schedule),
         noise=ImageRNG((4, 8, 8), [0]).next)
    red, blue, empty = (encoder.ids[t] for t in ("a red circle", "a blue circle", ""))
    assert len(unet.calls) == 2 * steps - 1  # steps 1-9 twice, the last once
    assert unet.calls == [[red, empty]] * 5 + [[blue, empty]] * 14  # calls 0-4 red (steps 1, 2 and half of 3)


def test_prompt_editing_in_img2img_counts_from_where_it_starts():
    """The web UI's img2img schedules over all the steps (setup_conds, processing.py) but its CFGDenoiser
    counts from 0 at the first step it runs: of 10 steps starting at step 3, counts 0-5 are <= 5."""
    steps, encoder, unet = 10, FakeEncoder(), CountingUNet()
    schedule = ldm_schedule()
    grid = make_grid("ddim", steps, schedule, None, 0, False)
    model = WebUIDenoiser(unet, [Conditioning(encoder, "[red:blue:0.5]", steps)],
                          [Conditioning(encoder, "", steps)], 1.0, encoder(""), counter=webui_counter(grid, 3))
    loop(model, torch.zeros(1, 4, 8, 8), grid, prepare_step("ddim", grid, schedule),
         noise=ImageRNG((4, 8, 8), [0]).next, start_step=3)
    assert [c[0] for c in unet.calls] == [encoder.ids["red"]] * 6 + [encoder.ids["blue"]] * 1


def test_and_composes_guided_differences():
    encoder = FakeEncoder()
    cond = Conditioning(encoder, "a AND b :0.5", 5)
    model = WebUIDenoiser(lambda x, t, c: c[:, :4, :1].reshape(-1, 1, 2, 2).expand(-1, 4, 2, 2) * 1.0,
                          [cond], [Conditioning(encoder, "", 5)], 3.0, encoder(""))
    eps = model(torch.zeros(1, 4, 2, 2), torch.zeros(1, dtype=torch.long), step=0)
    a, b, u = (encoder.ids[t] for t in ("a", "b", ""))
    assert torch.allclose(eps, torch.full_like(eps, u + 3.0 * (a - u) + 0.5 * 3.0 * (b - u)))


@pytest.fixture(scope="module")
def clip():
    from diffusion_notes import pretrained

    return pretrained.load("clip", device="cpu")


def test_emphasis_scales_token_states_and_restores_their_mean(clip):
    encoder = PromptEncoder(clip)
    plain, strong = encoder("a red circle"), encoder("a (red:1.5) circle")
    assert plain.shape == strong.shape == (77, clip.config.text_width)
    assert torch.allclose(strong.mean(), plain.mean(), atol=1e-6)
    changed = (strong - plain).abs().amax(-1) > 1e-5  # (77,) which positions moved
    assert changed.any()
    assert torch.equal(encoder("a (red:1) circle"), plain)  # weight 1 is no emphasis at all


def test_long_prompts_are_chunks_of_75_tokens(clip):
    encoder = PromptEncoder(clip)
    long = " ".join(["red circle"] * 50)  # 100 tokens
    assert encoder(long).shape[0] == 2 * 77
    assert [len(c) for c in encoder.tokens(long)] == [CHUNK, 100 - CHUNK]
    assert encoder("a BREAK b").shape[0] == 2 * 77
