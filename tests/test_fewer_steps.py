"""Part V's library: the consistency function, the distillation loss, the students, the flow pipeline,
and the measurements of Chapter 18's table."""

import pytest
import torch

from diffusion_notes.fewer_steps.consistency import (
    consistency_distillation_loss,
    consistency_function,
    consistency_pairs,
    teacher_step,
    update_target,
)
from diffusion_notes.fewer_steps.flow import flow_loss, linear_path
from diffusion_notes.fewer_steps.students import ConsistencyStudent, LCMLoRA, LCMLoRAConfig
from diffusion_notes.nn.unet import UNet, UNetConfig
from diffusion_notes.stable_diffusion.ldm import ldm_schedule

torch.set_num_threads(1)
SCHEDULE = ldm_schedule()
SMALL = UNetConfig(channels=(32, 32), attention=(True, False), context_dim=16, heads=2, sample_size=8)


class Oracle(torch.nn.Module):
    """eps(z, t) for a single data point x0*: the exact noise that z_t = sqrt(a) x0* + sqrt(1 - a) eps holds."""

    def __init__(self, x0):
        super().__init__()
        self.x0 = x0[:1]  # (1, 4, 8, 8): one data point, for any batch
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, z, t, context=None):
        a = SCHEDULE.alphas_cumprod.float()[t].reshape(-1, 1, 1, 1)
        return (z - a.sqrt() * self.x0) / (1 - a).sqrt() + 0 * self.dummy


def test_the_consistency_function_is_the_identity_at_t_0():
    unet = UNet(SMALL).eval()
    z, context = torch.randn(3, 4, 8, 8), torch.randn(3, 77, 16)
    with torch.no_grad():
        f = consistency_function(unet, z, torch.zeros(3, dtype=torch.long), context, SCHEDULE)
    assert torch.equal(f, z)  # c_skip(0) = 1, c_out(0) = 0: the boundary condition holds by construction


def test_an_exact_teacher_steps_along_its_own_trajectory_and_the_loss_vanishes():
    x0 = torch.randn(1, 4, 8, 8).expand(4, -1, -1, -1)
    oracle = Oracle(x0)
    eps = torch.randn(4, 4, 8, 8)
    t, t_prev = torch.tensor([999, 519, 39, 19]), torch.tensor([979, 499, 19, 0])
    a, a_prev = (SCHEDULE.alphas_cumprod.float()[v].reshape(-1, 1, 1, 1) for v in (t, t_prev))
    z = a.sqrt() * x0 + (1 - a).sqrt() * eps
    context, null = torch.randn(4, 77, 16), torch.randn(77, 16)
    stepped = teacher_step(oracle, z, t, t_prev, context, null, SCHEDULE)
    torch.testing.assert_close(stepped, a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps, atol=2e-4, rtol=0)
    g = torch.Generator().manual_seed(0)
    loss = consistency_distillation_loss(oracle, oracle, oracle, x0, context, null, SCHEDULE, g)
    assert float(loss.detach()) < 1e-6  # every point of the trajectory maps to x0*: self-consistent
    wrong = Oracle(x0 + 0.3)
    assert float(consistency_distillation_loss(wrong, oracle, oracle, x0, context, null, SCHEDULE, g).detach()) > 1e-3


def test_consistency_pairs_lie_on_the_50_step_grid_20_apart():
    t, t_prev = consistency_pairs(500, torch.Generator().manual_seed(0))
    assert set(((t + 1) % 20).tolist()) == {0} and t.min() >= 19 and t.max() <= 999
    assert torch.equal(t_prev, (t - 20).clamp(min=0))
    assert {19, 999} <= set(t.tolist())


def test_the_student_ships_without_its_target_and_the_target_follows_slowly():
    teacher = UNet(SMALL)
    student = ConsistencyStudent(SMALL)
    student.start_from(teacher)
    state = student.student_state()
    assert not any(k.startswith("target.") for k in state)
    plain = UNet(SMALL)
    plain.load_state_dict(state)  # strict: exactly a UNet's weights
    for p, q in zip(plain.parameters(), teacher.parameters()):
        assert torch.equal(p, q)
    assert not any(p.requires_grad for p in student.target.parameters())
    with torch.no_grad():
        for p in student.parameters():
            if p.requires_grad:
                p.add_(1.0)
    before = [p.clone() for p in student.target.parameters()]
    update_target(student.target, student, 0.95)
    for b, after in zip(before, student.target.parameters()):
        torch.testing.assert_close(after, b + 0.05)


def test_the_lcm_lora_starts_as_the_teacher_and_trains_only_its_factors():
    teacher = UNet(SMALL).eval()
    lora = LCMLoRA(LCMLoRAConfig(rank=2, alpha=2.0), teacher)
    z, t, context = torch.randn(2, 4, 8, 8), torch.tensor([10, 900]), torch.randn(2, 77, 16)
    with torch.no_grad():
        torch.testing.assert_close(lora(z, t, context), teacher(z, t, context))
    names = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert names and all(".lora_A." in n or ".lora_B." in n for n in names)
    assert any("temb_proj" in n for n in names) and any("to_q" in n for n in names)
    assert set(lora.lora_tensors()) == {f"{n}" for n in names}


def test_flow_loss_drops_captions_and_regresses_the_velocity():
    x0, x1 = torch.randn(6, 4, 8, 8), torch.randn(6, 4, 8, 8)
    torch.testing.assert_close(linear_path(x0, x1, torch.full((6,), 0.25)), 0.75 * x0 + 0.25 * x1)
    seen = []

    class Velocity(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x, t, context):
            seen.append(context.clone())
            return x1 - x0 + self.w

    batch = {"z0": x0, "context": torch.ones(6, 77, 16), "x1": x1}
    loss = flow_loss(Velocity(), batch, torch.Generator().manual_seed(0), null=torch.zeros(77, 16), p_uncond=0.5)
    assert float(loss) == 0.0
    dropped = (seen[0].abs().sum((1, 2)) == 0)
    assert 0 < int(dropped.sum()) < 6  # some captions were replaced by the null states


@pytest.mark.slow
def test_the_flow_pipeline_starts_from_the_base_pipelines_noise():
    from diffusion_notes import pretrained
    from diffusion_notes.fewer_steps.pipeline import FlowPipeline

    base = pretrained.stable_diffusion("cpu")
    flow = FlowPipeline(base.unet, base.vae, base.clip, base.scale_factor)
    seen = {}
    flow("a red circle", num_inference_steps=1, guidance_scale=1.0, generator=torch.Generator().manual_seed(3),
         callback=lambda i, sigma, x: seen.setdefault("x1", x.clone()))
    expected = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(seen["x1"], expected)
    with pytest.raises(ValueError, match="Euler only"):
        flow("a red circle", num_inference_steps=1, sampler="ddim")


@pytest.mark.slow
def test_the_table_reads_real_pictures_as_right_and_n_steps_of_n_as_no_distance():
    from diffusion_notes import pretrained
    from diffusion_notes.data.shapes import ShapesDataset
    from diffusion_notes.evaluation.metrics import classifier_features
    from diffusion_notes.fewer_steps.evaluate import distance_to_many_steps, quality_with_intervals
    from diffusion_notes.stable_diffusion.ldm import eval_prompts

    classifier = pretrained.load("shapes_classifier")
    _, attributes = eval_prompts("train", 32)
    real = ShapesDataset("train", 32, seed=1).images()  # the pictures those captions describe
    images = real.repeat_interleave(2, 0)  # two per caption
    out = quality_with_intervals(images, [a for a in attributes for _ in range(2)], 2,
                                 classifier_features(classifier, ShapesDataset("train", 64, seed=3).images()),
                                 classifier, n_resamples=50)
    value, lo, hi = out["fidelity"]
    assert value >= 0.95 and lo <= value <= hi
    assert out["diversity"][0] == 0.0  # two copies of one picture
    fd, lo, hi = out["frechet_distance"]
    assert lo <= fd <= hi
    pipe = pretrained.stable_diffusion("cpu")
    far = distance_to_many_steps(pipe, (2, 4), 4, n_prompts=4, sampler="ddim", guidance_scale=4.0)
    assert far[4][0] == 0.0 and far[2][0] > 0.0
