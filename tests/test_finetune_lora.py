"""LoRA: the layer, merging, the kohya and diffusers files, peft, and files that do not fit."""

import copy

import pytest
import torch
from safetensors.torch import save_file

from diffusion_notes.nn.unet import UNet, UNetConfig
from diffusion_notes.practice.finetune.lora import (
    LoRALinear,
    count_parameters,
    inject_lora,
    merge_lora,
    remove_lora,
    set_multiplier,
    unmerge_lora,
)
from diffusion_notes.practice.finetune.lora_files import (
    LoRAFileError,
    LoRANetwork,
    applied,
    diffusers_to_kohya,
    from_diffusers,
    from_kohya,
    kohya_to_diffusers,
    network_from_model,
    read_lora,
    save_lora,
    to_diffusers,
    to_kohya,
)
from diffusion_notes.practice.finetune.peft_interop import copy_network_to_peft, network_from_peft, peft_unet

SMALL = UNetConfig(channels=(32, 64), norm_groups=8, context_dim=16, heads=2)


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 4, 8, 8, generator=g), torch.tensor([10, 700]), torch.randn(2, 5, 16, generator=g)


@pytest.fixture
def base():
    torch.manual_seed(0)
    return UNet(SMALL).eval()


@pytest.fixture
def trained(base):
    """A copy of `base` with rank-2 LoRA layers whose B is not zero (as after training), alpha 3."""
    model = copy.deepcopy(base)
    layers = inject_lora(model, rank=2, alpha=3.0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in layers.values():
            layer.lora_B.weight.copy_(0.1 * torch.randn(layer.lora_B.weight.shape, generator=g))
    return model


def test_injected_lora_starts_as_the_base_model_and_trains_only_its_factors(base):
    model = copy.deepcopy(base)
    layers = inject_lora(model, rank=4)
    assert set(n.rsplit(".", 1)[-1] for n in layers) == {"to_q", "to_k", "to_v", "to_out"}
    assert torch.equal(model(*_inputs()), base(*_inputs()))  # B = 0
    assert count_parameters(model) == sum(4 * (m.in_features + m.out_features) for m in layers.values())
    assert all(p.requires_grad == (".lora_" in n) for n, p in model.named_parameters())


def test_scale_zero_is_the_base_model_exactly(base, trained):
    set_multiplier(trained, 0.0)
    assert torch.equal(trained(*_inputs()), base(*_inputs()))
    set_multiplier(trained, 1.0)
    assert not torch.allclose(trained(*_inputs()), base(*_inputs()), atol=1e-3)


def test_merged_equals_unmerged_and_unmerging_restores_w0_bit_for_bit(base, trained):
    before = {n: p.clone() for n, p in trained.named_parameters()}
    unmerged = trained(*_inputs())
    merge_lora(trained)
    merged = trained(*_inputs())
    assert (merged - unmerged).abs().max() < 1e-5
    unmerge_lora(trained)
    assert all(torch.equal(p, before[n]) for n, p in trained.named_parameters())


def test_removed_lora_is_the_base_model(base, trained):
    assert torch.equal(remove_lora(trained)(*_inputs()), base(*_inputs()))


def test_lora_layer_checks_its_rank():
    with pytest.raises(ValueError, match="rank must be an int in"):
        LoRALinear(torch.nn.Linear(8, 4), rank=5)


def test_applied_at_a_weight_equals_the_lora_layers_and_restores_the_weights(base, trained):
    network = network_from_model(trained)
    reference = trained(*_inputs())
    plain = copy.deepcopy(base)
    before = {k: v.clone() for k, v in plain.state_dict().items()}
    with applied(plain, [(network, 1.0)]):
        assert (plain(*_inputs()) - reference).abs().max() < 1e-5
    assert all(torch.equal(v, before[k]) for k, v in plain.state_dict().items())
    with applied(plain, [(network, 0.0)]):
        assert torch.equal(plain(*_inputs()), base(*_inputs()))
    set_multiplier(trained, 0.5)
    with applied(plain, [(network, 0.5)]):
        assert (plain(*_inputs()) - trained(*_inputs())).abs().max() < 1e-5


def test_kohya_and_diffusers_files_round_trip(base, trained, tmp_path):
    network = network_from_model(trained)
    kohya = to_kohya(network, base)
    key = next(k for k in kohya if k.endswith("attn1.to_q.lora_down.weight") or k.endswith("attn1_to_q.lora_down.weight"))
    assert key.startswith("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q")
    assert any(k.endswith("to_out_0.alpha") for k in kohya)
    # kohya -> diffusers folds alpha / r into B; back again, the update (alpha / r) B A is the same
    d_tensors, d_config = kohya_to_diffusers(kohya, base)
    assert d_config["lora_alpha"] == d_config["r"] == 2
    again = from_kohya(diffusers_to_kohya(d_tensors, base, d_config), base)
    for name in network.layers:
        assert (again.delta(name) - network.delta(name)).abs().max() < 1e-6
    # diffusers -> kohya -> diffusers gives the same tensors
    back, _ = kohya_to_diffusers(diffusers_to_kohya(d_tensors, base, d_config), base)
    assert set(back) == set(d_tensors) and all(torch.allclose(back[k], d_tensors[k], atol=1e-7) for k in back)
    # and both file formats read back to the same update
    for fmt in ("kohya", "diffusers"):
        read = read_lora(save_lora(network, base, tmp_path / f"{fmt}.safetensors", fmt), base)
        for name in network.layers:
            assert (read.delta(name) - network.delta(name)).abs().max() < 1e-6, fmt


def test_a_kohya_file_without_alpha_means_scale_one(base, trained):
    kohya = {k: v for k, v in to_kohya(network_from_model(trained), base).items() if not k.endswith(".alpha")}
    network = from_kohya(kohya, base)
    assert all(alpha == A.shape[0] for A, _, alpha in network.layers.values())


def test_peft_lora_config_on_our_unet_gives_the_same_outputs(base, trained):
    network = network_from_model(trained)
    model = peft_unet(base, rank=2, alpha=3.0)
    assert torch.equal(model(*_inputs()), base(*_inputs()))  # peft's B starts at zero too
    copy_network_to_peft(network, model)
    assert (model(*_inputs()) - trained(*_inputs())).abs().max() < 1e-5
    back = network_from_peft(model)
    assert all((back.delta(n) - network.delta(n)).abs().max() < 1e-6 for n in network.layers)


def test_a_lora_for_another_model_names_the_first_tensor_that_does_not_fit(base, trained, tmp_path):
    network = network_from_model(trained)
    wider = UNet(UNetConfig(channels=(48, 64), norm_groups=8, context_dim=16, heads=2))
    with pytest.raises(LoRAFileError, match=r"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k"
                                            r"\.lora_down\.weight has shape \(2, 32\).*48 x 48"):
        from_kohya(to_kohya(network, base), wider)
    kohya = to_kohya(network, base)
    kohya["lora_unet_down_blocks_7_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight"] = torch.zeros(2, 32)
    with pytest.raises(LoRAFileError, match="the UNet has no layer 'down_blocks_7_attentions"):
        from_kohya(kohya, base)
    bad = dict(to_kohya(network, base))
    first = sorted(k for k in bad if k.endswith("lora_up.weight"))[0]
    bad[first] = torch.zeros(3, 2)
    with pytest.raises(LoRAFileError, match=first.split(".")[0]):
        from_kohya(bad, base)
    save_file({"model.diffusion_model.foo": torch.zeros(1)}, str(tmp_path / "checkpoint.safetensors"))
    with pytest.raises(LoRAFileError, match="is not a kohya LoRA tensor"):
        read_lora(tmp_path / "checkpoint.safetensors", base)
    tensors, config = to_diffusers(network, base)
    with pytest.raises(LoRAFileError, match="is this LoRA for another model"):
        from_diffusers({k.replace("down_blocks.0", "down_blocks.9"): v for k, v in tensors.items()}, base, config)


def test_network_counts_its_parameters(trained):
    network = network_from_model(trained)
    assert isinstance(network, LoRANetwork) and network.rank == 2
    assert network.num_parameters() == count_parameters(trained)
