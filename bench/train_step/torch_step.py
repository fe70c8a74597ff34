"""The same training step as models/benches/train_step.rs, in PyTorch on the CPU: U-Net
(segmentation_models_pytorch's layout) on a ResNet-34 encoder, batch 4, 256², BCE, AdamW.
Written out in plain torch so that neither smp nor torchvision is needed."""

import argparse
import statistics
import time

import torch
from torch import nn
import torch.nn.functional as F


class Basic(nn.Module):
    def __init__(self, cin, width, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.down = None
        if stride != 1 or cin != width:
            self.down = nn.Sequential(nn.Conv2d(cin, width, 1, stride, bias=False), nn.BatchNorm2d(width))

    def forward(self, x):
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(y + (self.down(x) if self.down is not None else x))


class ResNet34(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        layers, cin = [], 64
        for stage, n in enumerate([3, 4, 6, 3]):
            width = 64 << stage
            blocks = []
            for i in range(n):
                blocks.append(Basic(cin, width, 2 if stage > 0 and i == 0 else 1))
                cin = width
            layers.append(nn.Sequential(*blocks))
        self.layers = nn.ModuleList(layers)

    def forward(self, x):
        stem = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(stem, 3, 2, 1)
        feats = [stem]
        for layer in self.layers:
            x = layer(x)
            feats.append(x)
        return feats


def conv_bn_relu(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class Unet(nn.Module):
    def __init__(self, widths=(256, 128, 64, 32, 16)):
        super().__init__()
        self.encoder = ResNet34()
        skips = [256, 128, 64, 64, 0]
        blocks, cin = [], 512
        for w, s in zip(widths, skips):
            blocks.append(nn.Sequential(conv_bn_relu(cin + s, w), conv_bn_relu(w, w)))
            cin = w
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Conv2d(cin, 1, 3, 1, 1)

    def forward(self, x):
        feats = self.encoder(x)
        x = feats[-1]
        skips = feats[:-1][::-1] + [None]
        for block, skip in zip(self.blocks, skips):
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            if skip is not None:
                x = torch.cat([x, skip], 1)
            x = block(x)
        return self.head(x)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--size", type=int, default=256)
    a = p.parse_args()
    torch.manual_seed(0)
    model = Unet().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    image = torch.randn(a.batch, 3, a.size, a.size)
    mask = (image.mean(1, keepdim=True) > 0).float()
    times = []
    for step in range(a.steps + 1):
        start = time.perf_counter()
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(model(image), mask)
        loss.backward()
        opt.step()
        ms = (time.perf_counter() - start) * 1e3
        if step > 0:
            times.append(ms)
    median = statistics.median(times)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"torch {torch.__version__} unet-resnet34 batch {a.batch} {a.size}²: median {median:.0f} ms/step "
          f"({params:.1f} M parameters, {torch.get_num_threads()} threads)")
    print(f"TORCH_MS {median:.1f}")


if __name__ == "__main__":
    main()
