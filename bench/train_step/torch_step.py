"""The same training step as trainer/benches/train_step.rs, in PyTorch (CPU, or CUDA with
--device cuda): batch 4, 256², BCE, AdamW, for unet-resnet34 (segmentation_models_pytorch's
U-Net layout), unet-efficientnet_b0 (timm's EfficientNet-B0, drop path 0.2) and segformer-mit_b0
(Hugging Face's MiT-b0 and all-MLP head, drop path 0.1, dropout 0.1). Written out in plain torch
so that neither smp, timm, transformers nor torchvision is needed; the parameter counts printed
match ftu's for the same architecture. Other architectures (e.g. upernet-swin_tiny_patch4_window7)
come from segmentation_models_pytorch and timm when they are installed. --profile prints
torch.profiler's CPU table."""

import argparse
import resource
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


class DropPath(nn.Module):
    def __init__(self, p):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        keep = (torch.rand(x.shape[0], *([1] * (x.dim() - 1)), device=x.device) >= self.p).to(x.dtype)
        return x * keep / (1.0 - self.p)


def conv_bn_act(cin, cout, k, stride=1, groups=1, act=nn.SiLU):
    return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), act()]


class SqueezeExcite(nn.Module):
    def __init__(self, ch, reduced):
        super().__init__()
        self.conv_reduce = nn.Conv2d(ch, reduced, 1)
        self.conv_expand = nn.Conv2d(reduced, ch, 1)

    def forward(self, x):
        g = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.conv_expand(F.silu(self.conv_reduce(g))))


class MBConv(nn.Module):
    def __init__(self, cin, cout, k, stride, expand, drop):
        super().__init__()
        mid = cin * expand
        layers = conv_bn_act(cin, mid, 1) if expand != 1 else []
        layers += conv_bn_act(mid, mid, k, stride, groups=mid)
        layers += [SqueezeExcite(mid, round(cin * 0.25)), nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.body = nn.Sequential(*layers)
        self.skip = stride == 1 and cin == cout
        self.drop = DropPath(drop)

    def forward(self, x):
        y = self.body(x)
        return x + self.drop(y) if self.skip else y


class EfficientNetB0(nn.Module):
    # (expand, channels, repeats, stride, kernel), as timm's efficientnet_b0.
    STAGES = [(1, 16, 1, 1, 3), (6, 24, 2, 2, 3), (6, 40, 2, 2, 5), (6, 80, 3, 2, 3),
              (6, 112, 3, 1, 5), (6, 192, 4, 2, 5), (6, 320, 1, 1, 3)]
    LEVELS = [0, 1, 2, 4, 6]
    channels = [16, 24, 40, 112, 320]

    def __init__(self, drop_path=0.2):
        super().__init__()
        self.stem = nn.Sequential(*conv_bn_act(3, 32, 3, 2))
        total = sum(r for _, _, r, _, _ in self.STAGES)
        stages, cin, index = [], 32, 0
        for expand, ch, repeats, stride, k in self.STAGES:
            blocks = []
            for i in range(repeats):
                blocks.append(MBConv(cin, ch, k, stride if i == 0 else 1, expand, drop_path * index / (total - 1)))
                cin, index = ch, index + 1
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)

    def forward(self, x):
        x, feats = self.stem(x), []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.LEVELS:
                feats.append(x)
        return feats


def conv_bn_relu(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class Unet(nn.Module):
    """smp's U-Net decoder over an encoder of 5 levels at strides 2…32 with `channels`."""

    def __init__(self, encoder, channels, widths=(256, 128, 64, 32, 16)):
        super().__init__()
        self.encoder = encoder
        skips = list(channels[:-1][::-1]) + [0]
        blocks, cin = [], channels[-1]
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


class EfficientAttention(nn.Module):
    def __init__(self, c, heads, sr):
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value, self.dense = (nn.Linear(c, c) for _ in range(4))
        self.sr = nn.Sequential(nn.Conv2d(c, c, sr, sr)) if sr > 1 else None
        self.norm = nn.LayerNorm(c) if sr > 1 else None

    def forward(self, x, h, w):
        n, l, c = x.shape
        kv = x
        if self.sr is not None:
            kv = self.norm(self.sr(x.transpose(1, 2).reshape(n, c, h, w)).flatten(2).transpose(1, 2))
        split = lambda t: t.reshape(n, -1, self.heads, c // self.heads).transpose(1, 2)
        q, k, v = split(self.query(x)), split(self.key(kv)), split(self.value(kv))
        probs = torch.softmax(q @ k.transpose(-1, -2) / (c // self.heads) ** 0.5, -1)
        return self.dense((probs @ v).transpose(1, 2).reshape(n, l, c))


class MixFfn(nn.Module):
    def __init__(self, c, hidden):
        super().__init__()
        self.dense1, self.dense2 = nn.Linear(c, hidden), nn.Linear(hidden, c)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden)

    def forward(self, x, h, w):
        x = self.dense1(x)
        n, l, c = x.shape
        x = self.dwconv(x.transpose(1, 2).reshape(n, c, h, w)).flatten(2).transpose(1, 2)
        return self.dense2(F.gelu(x))


class MitBlock(nn.Module):
    def __init__(self, c, heads, sr, drop):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(c), nn.LayerNorm(c)
        self.attention, self.mlp = EfficientAttention(c, heads, sr), MixFfn(c, 4 * c)
        self.drop = DropPath(drop)

    def forward(self, x, h, w):
        x = x + self.drop(self.attention(self.norm1(x), h, w))
        return x + self.drop(self.mlp(self.norm2(x), h, w))


class MitB0(nn.Module):
    channels = [32, 64, 160, 256]

    def __init__(self, drop_path=0.1):
        super().__init__()
        depths, heads, srs = [2, 2, 2, 2], [1, 2, 5, 8], [8, 4, 2, 1]
        total, index, cin = sum(depths), 0, 3
        self.embeds, self.embed_norms, self.stages, self.norms = (nn.ModuleList() for _ in range(4))
        for i, c in enumerate(self.channels):
            k, s = (7, 4) if i == 0 else (3, 2)
            self.embeds.append(nn.Conv2d(cin, c, k, s, k // 2))
            self.embed_norms.append(nn.LayerNorm(c))
            blocks = []
            for _ in range(depths[i]):
                blocks.append(MitBlock(c, heads[i], srs[i], drop_path * index / (total - 1)))
                index += 1
            self.stages.append(nn.ModuleList(blocks))
            self.norms.append(nn.LayerNorm(c))
            cin = c

    def forward(self, x):
        feats = []
        for embed, embed_norm, blocks, norm in zip(self.embeds, self.embed_norms, self.stages, self.norms):
            x = embed(x)
            n, c, h, w = x.shape
            t = embed_norm(x.flatten(2).transpose(1, 2))
            for block in blocks:
                t = block(t, h, w)
            x = norm(t).transpose(1, 2).reshape(n, c, h, w)
            feats.append(x)
        return feats


class Segformer(nn.Module):
    def __init__(self, encoder, channels, width=256):
        super().__init__()
        self.encoder = encoder
        self.proj = nn.ModuleList(nn.Conv2d(c, width, 1) for c in channels)
        self.fuse = nn.Sequential(nn.Conv2d(4 * width, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.Dropout(0.1), nn.Conv2d(width, 1, 1))

    def forward(self, x):
        feats = self.encoder(x)
        size = feats[0].shape[-2:]
        ups = [F.interpolate(p(f), size=size, mode="bilinear", align_corners=False)
               for p, f in zip(self.proj, feats)]
        y = self.fuse(torch.cat(ups[::-1], 1))
        return F.interpolate(y, scale_factor=4, mode="bilinear", align_corners=False)


def build(arch):
    if arch == "unet-resnet34":
        return Unet(ResNet34(), [64, 64, 128, 256, 512])
    if arch == "unet-efficientnet_b0":
        return Unet(EfficientNetB0(), EfficientNetB0.channels)
    if arch == "segformer-mit_b0":
        return Segformer(MitB0(), MitB0.channels)
    return smp_model(arch)


def smp_model(arch):
    """Any other ftu architecture as segmentation_models_pytorch builds it, timm encoders through
    smp's `tu-` prefix (both must be installed): the decoder's smp class, the encoder's timm name;
    Swin with always_partition and strict_img_size=False, as ftu's runs."""
    try:
        import segmentation_models_pytorch as smp
    except ImportError:
        raise SystemExit(f"--arch {arch} needs segmentation-models-pytorch and timm (pip install segmentation-models-pytorch timm)")
    decoder, encoder = arch.split("-", 1)
    classes = {"unet": smp.Unet, "unetpp": smp.UnetPlusPlus, "fpn": smp.FPN, "upernet": smp.UPerNet, "segformer": smp.Segformer}
    if decoder not in classes:
        raise SystemExit(f"unknown decoder in --arch {arch}: {', '.join(classes)}")
    kwargs = {}
    if encoder.startswith("swin_"):
        encoder = f"tu-{encoder}_224"
        kwargs = {"always_partition": True, "strict_img_size": False}
    elif encoder.startswith(("convnext_", "efficientnetv2_", "efficientnet_")):
        encoder = "tu-" + encoder.replace("efficientnetv2_", "tf_efficientnetv2_")
    return classes[decoder](encoder, encoder_weights=None, classes=1, **kwargs)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--arch", default="unet-resnet34")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="f32", choices=["f32", "bf16", "f16"],
                   help="autocast dtype for the forward (f16 with a GradScaler), as ftu-train's --precision")
    p.add_argument("--profile", action="store_true")
    a = p.parse_args()
    torch.manual_seed(0)
    dev = torch.device(a.device)
    model = build(a.arch).to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    image = torch.randn(a.batch, 3, a.size, a.size, device=dev)
    mask = (image.mean(1, keepdim=True) > 0).float()

    low = {"f32": None, "bf16": torch.bfloat16, "f16": torch.float16}[a.precision]
    scaler = torch.amp.GradScaler(dev.type, enabled=a.precision == "f16")

    def step():
        opt.zero_grad()
        with torch.autocast(dev.type, dtype=low or torch.float32, enabled=low is not None):
            loss = F.binary_cross_entropy_with_logits(model(image).float(), mask)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        if dev.type == "cuda":
            torch.cuda.synchronize()

    times = []
    for i in range(a.steps + 1):
        start = time.perf_counter()
        step()
        ms = (time.perf_counter() - start) * 1e3
        if i > 0:
            times.append(ms)
    median = statistics.median(times)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    peak = f", peak {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB allocated" if dev.type == "cuda" else ""
    print(f"torch {torch.__version__} {a.arch} {a.precision} batch {a.batch} {a.size}²: median {median:.0f} ms/step "
          f"({params:.1f} M parameters, {torch.get_num_threads()} threads{peak})")
    print(f"TORCH_MS {median:.1f}")
    # ru_maxrss is in KiB on Linux: the process's peak resident memory, PyTorch's libraries included.
    print(f"TORCH_PEAK_RSS_MIB {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}")
    if a.profile:
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
