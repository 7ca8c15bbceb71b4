//! ResNet C4 backbone in the Caffe / MSRA layout (behaviour 4 of the fixture README): 7x7/2
//! stem without bias, frozen BatchNorm, the Caffe max pool (3x3/2, pad 0, ceil mode), bottleneck
//! blocks with the stride in the first 1x1. Also the res5 blocks the ROI head reuses.

use burn::module::Param;
use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Initializer, Relu};
use burn::prelude::*;
use burn::tensor::module::max_pool2d;

use super::config::DetectorConfig;

/// BatchNorm eps of the reference (`nn.BatchNorm2d` default).
const BN_EPS: f32 = 1e-5;

/// Eval-mode BatchNorm: `(x - running_mean) / sqrt(running_var + eps) * weight + bias` per
/// channel. Parameter names are PyTorch's so the checkpoint maps onto them one to one.
#[derive(Module, Debug)]
pub struct FrozenBatchNorm<B: Backend> {
    pub weight: Param<Tensor<B, 1>>,
    pub bias: Param<Tensor<B, 1>>,
    pub running_mean: Param<Tensor<B, 1>>,
    pub running_var: Param<Tensor<B, 1>>,
}

impl<B: Backend> FrozenBatchNorm<B> {
    fn new(channels: usize, device: &B::Device) -> Self {
        let p = |v: f32| Param::from_tensor(Tensor::full([channels], v, device));
        Self {
            weight: p(1.0),
            bias: p(0.0),
            running_mean: p(0.0),
            running_var: p(1.0),
        }
    }

    /// `[N, C, H, W]` → same shape.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let c = self.weight.dims()[0];
        // PyTorch's CPU inference kernel folds the statistics the same way: x * alpha + beta.
        let alpha = self.weight.val() / (self.running_var.val() + BN_EPS).sqrt();
        let beta = self.bias.val() - self.running_mean.val() * alpha.clone();
        x * alpha.reshape([1, c, 1, 1]) + beta.reshape([1, c, 1, 1])
    }
}

/// The reference's `Conv2d` with a `norm`: a bias-free convolution followed by frozen BN
/// (checkpoint keys `X.weight`, `X.norm.*`).
#[derive(Module, Debug)]
pub struct ConvBn<B: Backend> {
    pub conv: Conv2d<B>,
    pub norm: FrozenBatchNorm<B>,
}

/// Shape of one convolution: `[in, out]` channels, kernel, stride, padding, dilation.
#[derive(Debug, Clone, Copy)]
pub(super) struct ConvShape {
    pub channels: [usize; 2],
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    pub dilation: usize,
    pub groups: usize,
}

impl ConvShape {
    pub fn new(channels: [usize; 2], kernel: usize) -> Self {
        Self {
            channels,
            kernel,
            stride: 1,
            padding: 0,
            dilation: 1,
            groups: 1,
        }
    }

    /// A burn convolution of this shape; weights start at zero (they are always loaded).
    pub fn init<B: Backend>(self, bias: bool, device: &B::Device) -> Conv2d<B> {
        let p = self.padding;
        Conv2dConfig::new(self.channels, [self.kernel; 2])
            .with_stride([self.stride; 2])
            .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
            .with_dilation([self.dilation; 2])
            .with_groups(self.groups)
            .with_bias(bias)
            .with_initializer(Initializer::Zeros)
            .init(device)
    }
}

impl<B: Backend> ConvBn<B> {
    fn new(shape: ConvShape, device: &B::Device) -> Self {
        Self {
            conv: shape.init(false, device),
            norm: FrozenBatchNorm::new(shape.channels[1], device),
        }
    }

    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.norm.forward(self.conv.forward(x))
    }
}

/// Bottleneck block: 1x1 → 3x3 → 1x1, ReLU after each BN but the last, `relu(branch +
/// shortcut)`; a projection shortcut when the channel count changes.
#[derive(Module, Debug)]
pub struct Bottleneck<B: Backend> {
    pub conv1: ConvBn<B>,
    pub conv2: ConvBn<B>,
    pub conv3: ConvBn<B>,
    pub shortcut: Option<ConvBn<B>>,
}

/// Sizes of one bottleneck block.
#[derive(Debug, Clone, Copy)]
pub(super) struct BlockShape {
    pub in_channels: usize,
    pub bottleneck: usize,
    pub out_channels: usize,
    pub stride: usize,
    pub dilation: usize,
    pub groups: usize,
    pub stride_in_1x1: bool,
}

impl<B: Backend> Bottleneck<B> {
    pub(super) fn new(s: BlockShape, device: &B::Device) -> Self {
        let (stride_1x1, stride_3x3) = if s.stride_in_1x1 {
            (s.stride, 1)
        } else {
            (1, s.stride)
        };
        let shortcut = (s.in_channels != s.out_channels).then(|| {
            let mut c = ConvShape::new([s.in_channels, s.out_channels], 1);
            c.stride = s.stride;
            ConvBn::new(c, device)
        });
        let mut c1 = ConvShape::new([s.in_channels, s.bottleneck], 1);
        c1.stride = stride_1x1;
        let mut c2 = ConvShape::new([s.bottleneck, s.bottleneck], 3);
        c2.stride = stride_3x3;
        c2.padding = s.dilation;
        c2.dilation = s.dilation;
        c2.groups = s.groups;
        Self {
            conv1: ConvBn::new(c1, device),
            conv2: ConvBn::new(c2, device),
            conv3: ConvBn::new(ConvShape::new([s.bottleneck, s.out_channels], 1), device),
            shortcut,
        }
    }

    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let relu = Relu::new();
        let out = relu.forward(self.conv1.forward(x.clone()));
        let out = relu.forward(self.conv2.forward(out));
        let out = self.conv3.forward(out);
        let shortcut = match &self.shortcut {
            Some(s) => s.forward(x),
            None => x,
        };
        relu.forward(out + shortcut)
    }
}

/// A stage of `n` blocks; only the first changes stride and channels.
pub(super) fn make_stage<B: Backend>(
    n: usize,
    first: BlockShape,
    device: &B::Device,
) -> Vec<Bottleneck<B>> {
    (0..n)
        .map(|i| {
            let mut s = first;
            if i > 0 {
                s.in_channels = s.out_channels;
                s.stride = 1;
            }
            Bottleneck::new(s, device)
        })
        .collect()
}

/// Stem: conv1 (7x7/2, pad 3, no bias) + BN + ReLU + max pool.
#[derive(Module, Debug)]
pub struct Stem<B: Backend> {
    pub conv1: ConvBn<B>,
    /// Caffe pool (pad 0, ceil mode) instead of detectron2's pad 1.
    pub caffe_max_pool: bool,
}

impl<B: Backend> Stem<B> {
    /// `[N, 3, h, w]` → `[N, stem_out, h/4, w/4]` (rounded as the pool rounds).
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let x = Relu::new().forward(self.conv1.forward(x));
        if self.caffe_max_pool {
            max_pool2d(x, [3, 3], [2, 2], [0, 0], [1, 1], true)
        } else {
            max_pool2d(x, [3, 3], [2, 2], [1, 1], [1, 1], false)
        }
    }
}

/// ResNet up to res4 (stride 16): the backbone the RPN and RoIPool read.
#[derive(Module, Debug)]
pub struct ResNetC4<B: Backend> {
    pub stem: Stem<B>,
    pub res2: Vec<Bottleneck<B>>,
    pub res3: Vec<Bottleneck<B>>,
    pub res4: Vec<Bottleneck<B>>,
}

impl<B: Backend> ResNetC4<B> {
    pub(super) fn new(cfg: &DetectorConfig, device: &B::Device) -> Self {
        // Validated when the config was parsed.
        let blocks = cfg.stage_blocks().unwrap_or([3, 4, 6]);
        let mut stem = ConvShape::new([3, cfg.stem_out_channels], 7);
        stem.stride = 2;
        stem.padding = 3;
        let width = cfg.num_groups * cfg.width_per_group;
        let mut stages = Vec::new();
        let mut in_channels = cfg.stem_out_channels;
        for (i, &n) in blocks.iter().enumerate() {
            let out_channels = cfg.res2_out_channels << i;
            let shape = BlockShape {
                in_channels,
                bottleneck: width << i,
                out_channels,
                stride: if i == 0 { 1 } else { 2 },
                dilation: 1,
                groups: cfg.num_groups,
                stride_in_1x1: cfg.stride_in_1x1,
            };
            stages.push(make_stage(n, shape, device));
            in_channels = out_channels;
        }
        let res4 = stages.pop().unwrap_or_default();
        let res3 = stages.pop().unwrap_or_default();
        let res2 = stages.pop().unwrap_or_default();
        Self {
            stem: Stem {
                conv1: ConvBn::new(stem, device),
                caffe_max_pool: cfg.caffe_max_pool,
            },
            res2,
            res3,
            res4,
        }
    }

    /// `[N, 3, h, w]` normalized image → res4 `[N, C4, H4, W4]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut x = self.stem.forward(x);
        for block in self.res2.iter().chain(&self.res3).chain(&self.res4) {
            x = block.forward(x);
        }
        x
    }
}
