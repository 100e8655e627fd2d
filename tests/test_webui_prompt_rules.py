"""The web UI's prompt rules, each table worked out from AUTOMATIC1111's code (v1.10):

- prompt schedules: `get_learned_conditioning_prompt_schedules` (modules/prompt_parser.py);
- which entry a model call uses: `reconstruct_cond_batch` (prompt_parser.py) with `CFGDenoiser.step`
  (modules/sd_samplers_cfg_denoiser.py) and `SamplerData.total_steps` (modules/sd_samplers_common.py);
- long prompts: `FrozenCLIPEmbedderWithCustomWordsBase.tokenize_line` (modules/sd_hijack_clip.py);
- clip skip: `encode_with_transformers` (sd_hijack_clip.py), option `CLIP_stop_at_last_layers`;
- emphasis: `parse_prompt_attention` (prompt_parser.py), its doctests.
"""

import time

import pytest
import torch

from diffusion_notes.foundations.grids import make_grid
from diffusion_notes.practice.webui import infotext
from diffusion_notes.practice.webui.conditioning import (
    COMMA_ID,
    Conditioning,
    PromptEncoder,
    WebUIDenoiser,
    chunk_tokens,
    stack_conds,
    total_steps,
    webui_counter,
)
from diffusion_notes.practice.webui.generate import Settings
from diffusion_notes.practice.webui.prompts import (
    MAX_NESTING,
    old_rule_matters,
    parse_prompt_attention,
    prompt_schedule,
    text_at_step,
)
from diffusion_notes.stable_diffusion.ldm import ldm_schedule

ALTERNATE = [(k, "a" if k % 2 else "(b:1.1)") for k in range(1, 11)]
FEMALE = [(k, "female" if k % 2 else "male") for k in range(1, 11)]
FEMALE4 = [(k, "female" if k % 4 == 1 else "male") for k in range(1, 11)]
# (prompt, steps, hires_steps, old rule, schedule)
SCHEDULES = [
    # get_learned_conditioning_prompt_schedules's doctests, 10 steps
    ("test", 10, None, False, [(10, "test")]),
    ("a [b:3]", 10, None, False, [(3, "a "), (10, "a b")]),
    ("a [b: 3]", 10, None, False, [(3, "a "), (10, "a b")]),
    ("a [[[b]]:2]", 10, None, False, [(2, "a "), (10, "a [[b]]")]),
    ("[(a:2):3]", 10, None, False, [(3, ""), (10, "(a:2)")]),
    ("a [b : c : 1] d", 10, None, False, [(1, "a b  d"), (10, "a  c  d")]),
    ("a[b:[c:d:2]:1]e", 10, None, False, [(1, "abe"), (2, "ace"), (10, "ade")]),
    ("a [unbalanced", 10, None, False, [(10, "a [unbalanced")]),
    ("a [b:.5] c", 10, None, False, [(5, "a  c"), (10, "a b c")]),
    ("((a][:b:c [d:3]", 10, None, False, [(3, "((a][:b:c "), (10, "((a][:b:c d")]),
    ("[a|(b:1.1)]", 10, None, False, ALTERNATE),
    ("[fe|]male", 10, None, False, FEMALE),
    ("[fe|||]male", 10, None, False, FEMALE4),
    ("a [b:.5] c", 10, 10, False, [(10, "a b c")]),
    ("a [b:1.5] c", 10, 10, False, [(5, "a  c"), (10, "a b c")]),
    # The doctest 'a [{b|d{:.5] c' expects editing, but its own comment says "not handling this right now":
    # the code (lark 1.1.2, A1111's pin, and 1.3.1) finds no parse, so the prompt is used as it is.
    ("a [{b|d{:.5] c", 10, None, False, [(10, "a [{b|d{:.5] c")]),
    # worked out from the code: "." in the number -> v * steps, else v; min(steps, int(v)); kept if >= 1
    ("a [b:c:1.0] d", 10, None, False, [(10, "a b d")]),  # a decimal point: the end
    ("a [b:c:1.0] d", 10, None, True, [(1, "a b d"), (10, "a c d")]),  # old: 1.0 >= 1 is step 1
    ("[b:c:0.25]", 10, None, False, [(2, "b"), (10, "c")]),  # int(2.5)
    ("[b:c:0]", 10, None, False, [(10, "c")]),  # 0 < 1: no entry, and no count is <= 0
    ("[b:c:1e1]", 10, None, False, [(10, "b")]),  # no decimal point: step 10
    ("[b:c:0.29]", 100, None, False, [(28, "b"), (100, "c")]),  # 0.29 * 100 = 28.999999999999996
    ("[b:c:12]", 10, None, False, [(10, "b")]),  # min(steps, 12)
    ("[b:c:-3]", 10, None, False, [(10, "c")]),
    ("[b:c:15]", 10, 20, False, [(5, "b"), (20, "c")]),  # hires: a step counts on from the first pass
    ("[b:c:1.25]", 10, 20, False, [(5, "b"), (20, "c")]),  # hires: a fraction counts from 1.0
    ("[b:c:0.5]", 10, 20, False, [(20, "c")]),
    ("[b:c:0.5]", 10, 20, True, [(5, "b"), (10, "c")]),  # the old rule ignores the hires steps
    ("[a|[b:c:2]]", 4, None, False, [(1, "a"), (2, "b"), (3, "a"), (4, "c")]),
    ("[a|b|c]", 4, None, False, [(1, "a"), (2, "b"), (3, "c"), (4, "a")]),
    ("a | b [c:3]", 10, None, False, [(10, "a | b [c:3]")]),  # '|' outside [...]: no parse
    ("a [b:3] \\", 10, None, False, [(10, "a [b:3] \\")]),  # a backslash escaping nothing: no parse
    ("\\[a:b:3\\]", 10, None, False, [(10, "\\[a:b:3\\]")]),  # escapes are kept as written
    ("[a:b:c:3]", 10, None, False, [(10, "[a:b:c:3]")]),  # three colons: stray characters
    ("(a:[b:c:3])", 10, None, False, [(3, "(a:b)"), (10, "(a:c)")]),
    ("[[a:b:3]:c:5]", 10, None, False, [(3, "a"), (5, "b"), (10, "c")]),
    ("[[c:d:1]:b:2]", 10, None, False, [(1, "c"), (2, "d"), (10, "b")]),  # entries repeat, as the web UI's do
    ("[a:b:3] [c:d:3]", 10, None, False, [(3, "a c"), (10, "b d")]),
    ("[a:b:3", 10, None, False, [(10, "[a:b:3")]),
    ("[a: b :  0.5 ]", 10, None, False, [(5, "a"), (10, " b ")]),
    ("a [b:c:0.5] AND d [e:f:2]", 10, None, False, [(2, "a b AND d e"), (5, "a b AND d f"), (10, "a c AND d f")]),
    ("x [a:b:0.5] y", 1, None, False, [(1, "x b y")]),  # int(0.5) = 0
]


@pytest.mark.parametrize("prompt, steps, hires, old, expected", SCHEDULES)
def test_prompt_schedule_table(prompt, steps, hires, old, expected):
    """get_learned_conditioning_prompt_schedules (prompt_parser.py): its doctests and cases from its code."""
    assert prompt_schedule(prompt, steps, hires, old) == expected


def test_the_entry_used_is_the_first_with_count_at_most_its_end():
    """reconstruct_cond_batch (prompt_parser.py): the first entry with current_step <= end_at_step, else
    entry 0; CFGDenoiser.step counts from 0, so [a:b:4] draws a at counts 0-4 (A1111 issue #7279)."""
    schedule = prompt_schedule("[a:b:4]", 10)
    assert [text_at_step(schedule, count) for count in range(10)] == ["a"] * 5 + ["b"] * 5
    assert text_at_step(schedule, 11) == "a"  # past every end: entry 0, as the web UI falls back


@pytest.mark.parametrize("sampler, calls, total", [
    ("euler", list(range(10)), 10),
    ("dpmpp_2m", list(range(10)), 10),
    ("heun", list(range(19)), 20),
    ("dpm2", list(range(19)), 20),
    ("dpm2_a", list(range(19)), 20),
])
def test_the_count_is_the_web_uis_count_of_model_calls(sampler, calls, total):
    """CFGDenoiser.step (sd_samplers_cfg_denoiser.py) adds 1 per model call, from 0; SamplerData.total_steps
    (sd_samplers_common.py) is 2 n for the second-order samplers (Heun, DPM2, DPM2 a), n otherwise."""
    grid = make_grid(sampler, 10, ldm_schedule())
    count = webui_counter(grid)
    steps = range(len(grid.timesteps)) if grid.step_index is None else grid.step_index.tolist()
    assert [count(k, grid.timesteps[i:i + 1].float()) for i, k in enumerate(steps)] == calls
    assert total_steps(grid, 10) == total


@pytest.mark.parametrize("sampler, first_call", [("euler", 4), ("heun", 8)])
def test_img2img_counts_from_zero_where_it_starts(sampler, first_call):
    """KDiffusionSampler.sample_img2img runs t_enc + 1 steps and initialize() sets CFGDenoiser.step = 0."""
    grid = make_grid(sampler, 10, ldm_schedule())
    count = webui_counter(grid, first_call)
    steps = range(len(grid.timesteps)) if grid.step_index is None else grid.step_index.tolist()
    counts = [count(k, grid.timesteps[i:i + 1].float()) for i, k in enumerate(steps) if i >= first_call]
    assert counts == list(range(len(grid.timesteps) - first_call))


def test_conditioning_at_a_count_follows_the_web_ui():
    """get_multicond_learned_conditioning splits AND first and schedules each part over total_steps (here
    20, Heun's); reconstruct_multicond_batch picks each part's first entry with count <= end_at_step."""
    encoder = lambda text: torch.full((77, 1), float(len(text)))  # noqa: E731 - a text -> states stand-in
    cond = Conditioning(encoder, "[aa:b:0.5] AND [ccc:0.2] :0.5", 20)
    assert [(w, [end for end, _ in entries]) for w, entries in cond.parts] == [(1.0, [10, 20]), (0.5, [4, 20])]
    lengths = [[(float(states[0, 0]), w) for states, w in cond.at(k)] for k in (0, 4, 5, 10, 11, 18)]
    assert lengths == [[(2.0, 1.0), (0.0, 0.5)]] * 2 + [[(2.0, 1.0), (3.0, 0.5)]] * 2 + [[(1.0, 1.0), (3.0, 0.5)]] * 2
    # AND is split before editing: "[a AND b:c:3]" is two unbalanced parts, so nothing is edited
    split_first = Conditioning(encoder, "[a AND b:c:3]", 10)
    assert [[end for end, _ in entries] for _, entries in split_first.parts] == [[10], [10]]


class ShapeUNet:
    """Records the context length of every call; predicts the context's first value in every pixel."""

    def __init__(self):
        self.lengths = []

    def __call__(self, x, t, context):
        self.lengths.append(context.shape[1])
        return context[:, :1, :1, None].expand_as(x).clone()


def test_cond_and_uncond_of_different_lengths_are_not_padded():
    """CFGDenoiser.forward (sd_samplers_cfg_denoiser.py) with the default pad_cond_uncond off: when the prompt
    and the negative prompt differ in length, the UNet is called on each; stack_conds (prompt_parser.py)
    pads AND parts of different lengths with their last vector repeated."""
    encoder = lambda text: torch.arange(77 * (1 + len(text) // 10), dtype=torch.float)[:, None] + len(text)  # noqa: E731
    short, long = "a" * 3, "b" * 12  # 77 and 154 rows
    unet = ShapeUNet()
    model = WebUIDenoiser(unet, [Conditioning(encoder, long, 4)], [Conditioning(encoder, short, 4, split=False)], 3.0)
    model(torch.zeros(1, 4, 2, 2), torch.zeros(1, dtype=torch.long), step=0)
    assert unet.lengths == [154, 77]
    unet = ShapeUNet()
    model = WebUIDenoiser(unet, [Conditioning(encoder, f"{short} AND {long} :0.5", 4)],
                          [Conditioning(encoder, "c" * 13, 4, split=False)], 3.0)
    model(torch.zeros(1, 4, 2, 2), torch.zeros(1, dtype=torch.long), step=0)
    assert unet.lengths == [154]  # both parts padded to 154, the uncond is 154 long: one call
    padded = stack_conds([encoder(short), encoder(long)])
    assert torch.equal(padded[0, 77:], encoder(short)[-1:].repeat(77, 1))


# ---------------------------------------------------------------------------
# Long prompts: tokenize_line's chunks, with comma_padding_backtrack = 20.

W = 320  # any token that is not a comma


def ids(*runs):
    """A token list from (count, token) runs."""
    return [token for count, token in runs for _ in range(count)]


def lengths(pieces, backtrack=20):
    return [len(chunk) for chunk in chunk_tokens(pieces, backtrack)]


CHUNKS = [
    ([(ids((80, W)), 1.0)], 20, [75, 5]),  # no comma: cut at 75
    ([(ids((55, W), (1, COMMA_ID), (30, W)), 1.0)], 20, [56, 30]),  # comma at 55: 75 - 55 = 20 <= 20, back off
    ([(ids((54, W), (1, COMMA_ID), (30, W)), 1.0)], 20, [75, 10]),  # comma at 54: 21 back, too far
    ([(ids((55, W), (1, COMMA_ID), (30, W)), 1.0)], 0, [75, 11]),  # backtrack 0: off
    ([(ids((75, W), (1, COMMA_ID), (3, W)), 1.0)], 20, [75, 4]),  # a comma as token 76 opens chunk 2
    ([(ids((74, W), (1, COMMA_ID), (3, W)), 1.0)], 20, [75, 3]),  # a comma as token 75: nothing moves
    ([(ids((75, W)), 1.0)], 20, [75]),  # exactly full: one chunk
    ([], 20, [0]),  # nothing: one empty chunk
    ([(ids((3, W)), 1.0), ([], -1), (ids((2, W)), 1.0)], 20, [3, 2]),  # BREAK
    ([(ids((3, W)), 1.0), ([], -1)], 20, [3]),  # BREAK at the end: no empty last chunk
    ([([], -1), (ids((2, W)), 1.0)], 20, [0, 2]),  # BREAK first: an empty first chunk
    ([(ids((70, W), (1, COMMA_ID), (4, W)), 1.0), (ids((10, W)), 1.5)], 20, [71, 14]),
]


@pytest.mark.parametrize("pieces, backtrack, expected", CHUNKS)
def test_chunk_table(pieces, backtrack, expected):
    """tokenize_line (sd_hijack_clip.py): 75-token chunks, the back-off to the last comma, BREAK."""
    assert lengths(pieces, backtrack) == expected


def test_relocated_tokens_keep_their_weights():
    """tokenize_line moves chunk.multipliers with chunk.tokens."""
    pieces = [(ids((70, W), (1, COMMA_ID)), 1.0), (ids((4, W)), 1.5), (ids((10, W)), 0.5)]
    first, second = chunk_tokens(pieces)
    assert [w for _, w in first] == [1.0] * 71
    assert [w for _, w in second] == [1.5] * 4 + [0.5] * 10


def test_the_chapters_long_prompt_is_cut_after_its_last_comma():
    """tokenize_line on 'a small red circle on the left, ' x 12: 8 tokens a repeat, the comma at 71, so
    chunks of 72 and 24 (not 75 and 21)."""
    encoder = PromptEncoder(clip=None)  # tokens() needs only the tokenizer
    chunks = encoder.tokens("a small red circle on the left, " * 12)
    assert [len(c) for c in chunks] == [72, 24]
    assert chunks[0][-1][0] == COMMA_ID
    assert [len(c) for c in encoder.tokens("a BREAK b")] == [1, 1]
    assert [len(c) for c in encoder.tokens("a BREAK")] == [1]
    assert [len(c) for c in encoder.tokens("(a BREAK b)")] == [3]  # BREAK inside brackets weighs -1.1: a word


# ---------------------------------------------------------------------------
# Clip skip: hidden_states[-n], then final_layer_norm.


@pytest.fixture(scope="module")
def clip():
    from diffusion_notes import pretrained

    return pretrained.load("clip", device="cpu")


def _chunk_ids(chunks) -> torch.Tensor:
    """(k, 77) open_clip ids: start, the chunk's tokens, end, then zeros."""
    ids = torch.zeros(len(chunks), 77, dtype=torch.long)
    for c, chunk in enumerate(chunks):
        ids[c, :len(chunk) + 2] = torch.tensor([49406, *[t for t, _ in chunk], 49407])
    return ids


def _layer_outputs(clip, ids):
    """Every hidden state of the text encoder, from forward hooks: the embeddings, then each block's output."""
    outputs = []
    hooks = [block.register_forward_hook(lambda m, i, o: outputs.append(o)) for block in clip.text.transformer.blocks]
    try:
        first = clip.text.transformer.blocks[0]
        pre = first.register_forward_pre_hook(lambda m, i: outputs.insert(0, i[0]))
        clip.text(ids)
        pre.remove()
    finally:
        for hook in hooks:
            hook.remove()
    return outputs  # layers + 1 tensors (B, 77, D)


def test_clip_skip_is_the_hidden_state_minus_n_then_the_final_layer_norm(clip):
    """encode_with_transformers (sd_hijack_clip.py): z = hidden_states[-n], then final_layer_norm, for n > 1."""
    ids = _chunk_ids(PromptEncoder(clip).tokens("a small red circle"))
    hidden = _layer_outputs(clip, ids)
    layers = len(clip.text.transformer.blocks)
    assert len(hidden) == layers + 1
    with torch.no_grad():
        for n in range(1, layers + 2):
            expected = clip.text.ln_final(hidden[-n])
            torch.testing.assert_close(clip.text.hidden_states(ids, n), expected, rtol=0, atol=0)
            assert torch.equal(PromptEncoder(clip, clip_skip=n)("a small red circle"), expected[0])
        assert torch.equal(clip.text.hidden_states(ids, 1), clip.encode_text(ids).token_states)


def test_clip_skip_1_is_todays_conditioning(clip):
    """CLIP_stop_at_last_layers = 1 uses last_hidden_state: the encoder's usual output, bit for bit."""
    for text in ["a small red circle", "a (red:1.3) circle BREAK on the left", "a, b, " * 40]:
        ids = _chunk_ids(PromptEncoder(clip).tokens(text))
        plain = PromptEncoder(clip, clip_skip=1)(text)
        if "(" not in text:
            assert torch.equal(plain, clip.encode_text(ids).token_states.reshape(-1, plain.shape[-1]))
        assert torch.equal(plain, PromptEncoder(clip)(text))


def test_a_schedules_texts_are_weighted_together_chunk_by_chunk(clip):
    """FrozenCLIPEmbedderWithCustomWordsBase.forward (sd_hijack_clip.py): chunk i of all the texts of one
    get_learned_conditioning call (one prompt's schedule) goes through EmphasisOriginal (sd_emphasis.py)
    together, z * w then z * (mean before / mean after); a text with fewer chunks gets empty chunks."""
    encoder = PromptEncoder(clip)
    texts = ["a (red:1.5) circle", "a blue circle, " * 20]  # 3 tokens + 1; 80 tokens: two chunks
    first, second = encoder.batch(texts)
    raw = [clip.encode_text(_chunk_ids(encoder.tokens(text))).token_states for text in texts]  # (k, 77, D)
    empty = clip.encode_text(_chunk_ids(encoder.tokens(""))).token_states
    assert first.shape == second.shape == (2 * 77, raw[0].shape[-1])
    torch.testing.assert_close(torch.stack([first[:77], second[:77]]).mean(),
                               torch.stack([raw[0][0], raw[1][0]]).mean())  # chunk 0's mean, over both texts
    assert not torch.allclose(second[:77], raw[1][0])  # unweighted, but rescaled with its batch-mate
    torch.testing.assert_close(second[77:], raw[1][1], rtol=0, atol=0)  # chunk 1 has no weights: untouched
    torch.testing.assert_close(first[77:], empty[0], rtol=0, atol=0)  # the empty chunk a shorter text gets
    assert not torch.equal(encoder(texts[0]), first[:77])  # alone, it is weighted on its own


@pytest.mark.parametrize("skip", [0, -1, 5, True, 1.5])
def test_a_clip_skip_the_encoder_cannot_do_is_a_clear_error(clip, skip):
    with pytest.raises(ValueError, match="clip_skip"):
        PromptEncoder(clip, clip_skip=skip)


# ---------------------------------------------------------------------------
# Emphasis, depth and time.

DOCTESTS = [  # parse_prompt_attention's doctests, compared with ==: the web UI's floats to the last bit
    ("normal text", [["normal text", 1.0]]),
    ("an (important) word", [["an ", 1.0], ["important", 1.1], [" word", 1.0]]),
    ("(unbalanced", [["unbalanced", 1.1]]),
    ("\\(literal\\]", [["(literal]", 1.0]]),
    ("(unnecessary)(parens)", [["unnecessaryparens", 1.1]]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [["a ", 1.0], ["house", 1.5730000000000004], [" ", 1.1], ["on", 1.0], [" a ", 1.1], ["hill", 0.55],
      [", sun, ", 1.1], ["sky", 1.4641000000000006], [".", 1.1]]),
    # from the code: a lone backslash is dropped; BREAK inside brackets is multiplied, so it is a word
    ("a\\b", [["ab", 1.0]]),
    ("(a BREAK b)", [["a", 1.1], ["BREAK", -1.1], ["b", 1.1]]),
    ("(a [b) c]", [["a ", 1.1], ["b", 1.0], [" c", 1 / 1.1]]),  # crossed brackets: each closes its own kind
]


@pytest.mark.parametrize("text, expected", DOCTESTS)
def test_emphasis_doctests_exactly(text, expected):
    """parse_prompt_attention (prompt_parser.py), its doctest values compared exactly."""
    assert parse_prompt_attention(text) == expected


def test_nesting_up_to_the_limit_multiplies_in_the_web_uis_order():
    """parse_prompt_attention: each ')' multiplies by 1.1 as it closes, innermost first."""
    weight = 1.0
    for _ in range(MAX_NESTING):
        weight *= 1.1
    assert parse_prompt_attention("(" * MAX_NESTING + "a" + ")" * MAX_NESTING) == [["a", weight]]
    assert prompt_schedule("[" * (MAX_NESTING - 1) + "[a:b:2]" + "]" * (MAX_NESTING - 1), 4)[0][0] == 2


@pytest.mark.parametrize("prompt", [
    "(" * 1000 + "a" + ")" * 1000, "[" * 1000 + "a" + "]" * 1000, "[" * 5000, "(a " * 16000,
    "[a:" * 2000 + "b" + ":1]" * 2000, "([" * 60 + "x",
])
def test_deep_nesting_is_a_value_error_naming_the_limit(prompt):
    """The web UI sets no limit (deep prompts exhaust Python's recursion there and here before); here
    brackets open more than MAX_NESTING deep are a ValueError, never a RecursionError."""
    for parse in (parse_prompt_attention, lambda p: prompt_schedule(p, 20)):
        with pytest.raises(ValueError, match=f"at most {MAX_NESTING} brackets"):
            parse(prompt)


def _seconds(parse, prompt) -> float:
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        parse(prompt)
        best = min(best, time.perf_counter() - start)
    return best


@pytest.mark.parametrize("unit", ["(a) ", "[a:b:3] ", "a, ", "[a|b] ", "((a:1.2) [b]) "])
def test_parsing_time_grows_linearly_with_the_prompt(unit):
    """Eight times the prompt takes about eight times as long (a quadratic parser takes 64; the bound of 20
    leaves room for a busy machine)."""
    for parse in (parse_prompt_attention, lambda p: prompt_schedule(p, 4)):
        small, large = (_seconds(parse, unit * n) for n in (1000, 8000))
        assert large < 20 * small + 0.02, (unit, small, large)


# ---------------------------------------------------------------------------
# The infotext keys.


def test_infotext_writes_and_reads_clip_skip_and_the_old_timelines():
    """create_infotext (processing.py) writes "Clip skip" when it is above 1 and "Old prompt editing
    timelines" when that option is on and changes a schedule (get_conds_with_caching); a missing
    "Clip skip" reads as 1, and an infotext before v1.6.0 with '[' in its prompt turns the old rule on."""
    settings = Settings(prompt="a [red:blue:1.0] circle", steps=10, seed=1, clip_skip=2, old_prompt_editing=True)
    text = infotext.create(settings, 1, 1)
    assert "Clip skip: 2" in text and "Old prompt editing timelines: True" in text
    back = infotext.to_settings(infotext.parse(text))
    assert back["clip_skip"] == 2 and back["old_prompt_editing"] is True
    plain = infotext.create(Settings(prompt="a [red:blue:5] circle", steps=10, seed=1, old_prompt_editing=True), 1, 1)
    assert "Clip skip" not in plain and "Old prompt editing" not in plain  # 5 is step 5 under both rules
    assert infotext.to_settings(infotext.parse(plain))["clip_skip"] == 1
    assert not old_rule_matters(["a [b:c:5]", "[x|y]"], 10) and old_rule_matters(["[b:c:2.0]"], 10)
    old = infotext.to_settings(infotext.parse("a [b:c:1.0]\nSteps: 10, Seed: 1, Version: v1.5.2"))
    assert old["old_prompt_editing"] is True
    with pytest.raises(ValueError, match="Old prompt editing timelines"):
        infotext.to_settings(infotext.parse("a\nSteps: 10, Seed: 1, Old prompt editing timelines: yes"))
