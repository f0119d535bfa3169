"""Writes the diffusers reference fixtures used by Tests/MillraceCoreTests/DiffusersParityTests.swift.

Run once by hand (needs torch, diffusers and safetensors from PyPI; the tests themselves need none):
    python3 tools/make_diffusers_fixtures.py Tests/MillraceTestSupport/Fixtures

For each tiny config it saves the folder that `UNet2DModel.save_pretrained` writes, plus
`io.safetensors` with an input batch, its timesteps and labels, diffusers' output, and the
gradients of sum(output * probe) with respect to the input and every parameter.
"""
import os
import sys

import torch
from diffusers import UNet2DModel
from safetensors.torch import save_file

CONFIGS = {
    "unet-tiny-a": dict(
        sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16),
        layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4, attention_head_dim=4,
        num_class_embeds=3,
    ),
    "unet-tiny-b": dict(
        sample_size=8, in_channels=2, out_channels=1, block_out_channels=(8, 8, 16),
        layers_per_block=2, down_block_types=("AttnDownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "AttnUpBlock2D"), norm_num_groups=2,
        attention_head_dim=None, downsample_padding=0, freq_shift=1, flip_sin_to_cos=False,
        mid_block_scale_factor=1.5, time_embedding_dim=24, norm_eps=1e-6,
    ),
}


def main(out_dir):
    torch.manual_seed(0)
    for name, cfg in CONFIGS.items():
        model = UNet2DModel(**cfg)
        # Non-trivial norms and biases, so that the test exercises every affine parameter.
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        folder = os.path.join(out_dir, name)
        model.save_pretrained(folder, safe_serialization=True)
        batch = 2
        x = torch.randn(batch, cfg["in_channels"], 8, 8, requires_grad=True)
        t = torch.tensor([3.0, 517.25])
        labels = torch.tensor([0, 2]) if cfg.get("num_class_embeds") else None
        out = model(x, t, class_labels=labels).sample
        probe = torch.randn_like(out)
        (out * probe).sum().backward()
        tensors = {"input": x.detach(), "timesteps": t, "output": out.detach(), "probe": probe,
                   "grad.input": x.grad.detach()}
        if labels is not None:
            tensors["labels"] = labels.float()
        for pname, p in model.named_parameters():
            tensors["grad." + pname] = p.grad.detach()
        save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(folder, "io.safetensors"))
        print(name, sum(p.numel() for p in model.parameters()), "parameters")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "Tests/MillraceTestSupport/Fixtures")
