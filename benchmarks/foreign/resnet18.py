"""A CIFAR-10 ResNet-18 written independently of cifarlens, as a user's own training script would have it:
its own module names (``conv_in``, ``stages``, ``fc_out``), functional ReLUs and a shortcut built by hand.
``benchmarks/import_any_model.py`` trains it with a plain PyTorch loop and imports it into cifarlens."""

import torch.nn as nn
import torch.nn.functional as F


class Residual(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.a = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.a_bn = nn.BatchNorm2d(cout)
        self.b = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b_bn = nn.BatchNorm2d(cout)
        self.skip = nn.Sequential()
        if stride != 1 or cin != cout:
            self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.a_bn(self.a(x)))
        return F.relu(self.b_bn(self.b(out)) + self.skip(x))


class ResNet18(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.conv_in = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn_in = nn.BatchNorm2d(64)
        widths, stages, cin = (64, 128, 256, 512), [], 64
        for i, width in enumerate(widths):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(Residual(cin, width, stride), Residual(width, width, 1)))
            cin = width
        self.stages = nn.Sequential(*stages)
        self.fc_out = nn.Linear(512, classes)

    def forward(self, x):
        x = self.stages(F.relu(self.bn_in(self.conv_in(x))))
        return self.fc_out(F.adaptive_avg_pool2d(x, 1).flatten(1))


def make(classes=10):
    return ResNet18(classes)
