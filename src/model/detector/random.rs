//! A detector with random weights of a config's sizes: benchmarks (the real weights are a user
//! download) and tests that need region features of a size the fixture model does not make
//! (e.g. 2048-d for the image tower).

use burn::module::{ModuleMapper, Param};
use burn::prelude::*;
use burn::tensor::Distribution;

use super::{Detector, DetectorConfig, DetectorModel};

/// Draws every convolution / Linear / embedding weight uniformly with variance `1 / fan_in`
/// (LeCun; the box regressors 10x smaller): with the identity BatchNorms of [`DetectorModel::new`] the residual stages neither
/// explode nor vanish, so the RPN and the box head see varied inputs. Biases, BatchNorm
/// statistics and the config's cell anchors keep their values.
struct LecunUniform {
    path: Vec<String>,
}

impl<B: Backend> ModuleMapper<B> for LecunUniform {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let dims = tensor.dims();
        let anchors = self.path.iter().any(|p| p == "anchor_generator");
        if D < 2 || anchors {
            return Param::from_mapped_value(id, tensor, mapper);
        }
        // burn's Linear weight is [in, out], a convolution's [out, in, k, k] (the one embedding,
        // [classes, dim], is drawn like a Linear from its rows).
        let fan_in = match D {
            2 => dims[0].max(1),
            _ => dims[1..].iter().product::<usize>().max(1),
        };
        // Box regressors 10x smaller: unit-variance deltas would make every box span the image
        // (exp of the clamped scale deltas), and NMS would keep only a handful.
        let regressor = self
            .path
            .iter()
            .any(|p| p == "anchor_deltas" || p == "bbox_pred");
        let scale = if regressor { 0.1 } else { 1.0 };
        let a = scale * (3.0 / fan_in as f64).sqrt();
        let random = Tensor::<B, D>::random(dims, Distribution::Uniform(-a, a), &tensor.device());
        Param::from_mapped_value(id, random, mapper)
    }
}

impl<B: Backend> Detector<B> {
    /// A detector of `config`'s sizes with random weights drawn from `seed` (burn's backend
    /// RNG, so the same seed gives the same weights on the same backend).
    pub fn random(config: DetectorConfig, seed: u64, device: &B::Device) -> Self {
        B::seed(device, seed);
        let model =
            DetectorModel::<B>::new(&config, device).map(&mut LecunUniform { path: Vec::new() });
        Self {
            model,
            config,
            device: device.clone(),
        }
    }
}
