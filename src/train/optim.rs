//! The reference's optimiser step as one burn [`Optimizer`]: global gradient-norm clipping
//! (`torch.nn.utils.clip_grad_norm_`) followed by transformers 2.3.0 `AdamW` (spec §5,
//! fixtures README "Scores and training loss").
//!
//! burn's own pieces differ in two ways that change the numbers: `GradientClipping::Norm` clips
//! each tensor by its own norm (not the global norm), and burn's `AdamW` adds `eps` after the
//! bias correction. The transformers 2.3.0 update is
//!
//! ```text
//! m = b1·m + (1-b1)·g;  v = b2·v + (1-b2)·g²
//! p -= lr · sqrt(1-b2^t)/(1-b1^t) · m / (sqrt(v) + eps);  p -= lr·wd·p (wd = 0 here)
//! ```
//!
//! with `t` counted per parameter ([`HfAdamW::uniter`] is the same update with pre-training's
//! betas, eps and name-based weight decay); parameters without a gradient (poolers, `mask_embedding`)
//! are left untouched and keep no state. When the model holds half-precision weights, the
//! moments and an f32 master copy of every parameter live here (apex O2's arrangement).
//!
//! The state sits behind a shared handle: burn-train's `Learner` owns its optimizer and has no
//! accessor for it, and the epoch loop must snapshot the moments itself to commit them together
//! with the weights (burn-train's own checkpointer writes each file in place from a background
//! thread, which a `kill -9` can leave half-written).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::{GradientsParams, LearningRate, MultiGradientsParams, Optimizer};
use burn::prelude::*;
use burn::record::Record;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{DType, FloatDType};

use crate::tensor_io::{HostTensor, TensorFile};

/// Adam state of one parameter, flattened to `[numel]`.
#[derive(Clone)]
struct Moments<B: Backend> {
    exp_avg: Tensor<B, 1>,
    exp_avg_sq: Tensor<B, 1>,
    step: usize,
    /// f32 copy of a half-precision parameter (`None` when the parameter is f32).
    master: Option<Tensor<B, 1>>,
}

/// Serialised [`Moments`] of one parameter (`id` = its [`ParamId`]).
#[derive(Record, Clone)]
pub struct MomentsRecord<B: Backend> {
    pub id: u64,
    pub exp_avg: Tensor<B, 1>,
    pub exp_avg_sq: Tensor<B, 1>,
    pub step: usize,
    pub master: Option<Tensor<B, 1>>,
}

struct AdamState<B: Backend> {
    moments: HashMap<ParamId, Moments<B>>,
    last_grad_norm: Option<f64>,
}

/// Host tensors and metadata of [`HfAdamW::state_tensors`].
pub use crate::run::output::OptimizerState;

/// Global-norm clipping + transformers 2.3.0 AdamW. Clones share their state (see the module
/// doc); training uses one optimizer.
#[derive(Clone)]
pub struct HfAdamW<B: AutodiffBackend> {
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    /// 0 disables clipping (the reference's `max_grad_norm <= 0`).
    max_grad_norm: f64,
    /// Parameters exempt from weight decay (UNITER's name-based groups).
    no_decay: Arc<HashSet<ParamId>>,
    state: Arc<Mutex<AdamState<B::InnerBackend>>>,
}

impl<B: AutodiffBackend> HfAdamW<B> {
    /// The reference's settings: betas (0.9, 0.999), eps 1e-8, no weight decay.
    pub fn new(max_grad_norm: f64) -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            max_grad_norm,
            no_decay: Arc::default(),
            state: Arc::new(Mutex::new(AdamState {
                moments: HashMap::new(),
                last_grad_norm: None,
            })),
        }
    }

    /// UNITER's `AdamW` of pretrain.py (spec §6.5): betas `(beta1, beta2)` (0.9/0.98 in the
    /// config), eps 1e-6, decoupled `weight_decay` applied after the Adam update, skipped for
    /// `no_decay` (the parameters whose PyTorch name contains `bias` or `LayerNorm.weight`).
    pub fn uniter(
        max_grad_norm: f64,
        betas: (f64, f64),
        weight_decay: f64,
        no_decay: HashSet<ParamId>,
    ) -> Self {
        Self {
            beta1: betas.0,
            beta2: betas.1,
            eps: 1e-6,
            weight_decay,
            no_decay: Arc::new(no_decay),
            ..Self::new(max_grad_norm)
        }
    }

    fn lock(&self) -> MutexGuard<'_, AdamState<B::InnerBackend>> {
        // A panic mid-step leaves the moments as they were before that parameter: still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Global gradient L2 norm (before clipping) seen by the last step.
    pub fn last_grad_norm(&self) -> Option<f64> {
        self.lock().last_grad_norm
    }

    /// Number of parameters with Adam state.
    pub fn num_states(&self) -> usize {
        self.lock().moments.len()
    }

    /// Host copy of the state for a checkpoint: `{id}.exp_avg`, `{id}.exp_avg_sq` and (half
    /// precision models) `{id}.master`, each `[numel]` f32, plus metadata `steps` (JSON
    /// `{id: t}`). Stored outside burn's records so that loading never passes the moments
    /// through the device's default float type (bf16 would round them).
    pub fn state_tensors(&self) -> OptimizerState {
        let state = self.lock();
        let mut ids: Vec<&ParamId> = state.moments.keys().collect();
        ids.sort_by_key(|id| id.val());
        let host = |t: &Tensor<B::InnerBackend, 1>| HostTensor {
            shape: t.dims().to_vec(),
            values: t
                .clone()
                .into_data()
                .convert::<f32>()
                .into_vec::<f32>()
                .unwrap_or_default(),
        };
        let mut tensors = Vec::with_capacity(3 * ids.len());
        let mut steps = serde_json::Map::new();
        for id in ids {
            let m = &state.moments[id];
            let key = id.val();
            tensors.push((format!("{key}.exp_avg"), host(&m.exp_avg)));
            tensors.push((format!("{key}.exp_avg_sq"), host(&m.exp_avg_sq)));
            if let Some(master) = &m.master {
                tensors.push((format!("{key}.master"), host(master)));
            }
            steps.insert(key.to_string(), serde_json::json!(m.step));
        }
        let meta = HashMap::from([(
            "steps".to_string(),
            serde_json::Value::Object(steps).to_string(),
        )]);
        (tensors, meta)
    }

    /// Restores what [`state_tensors`](Self::state_tensors) saved.
    pub fn load_state(&self, file: &TensorFile, device: &B::Device) -> Result<(), String> {
        let steps: HashMap<String, usize> = file
            .metadata()
            .get("steps")
            .ok_or("no `steps` metadata")
            .and_then(|t| serde_json::from_str(t).map_err(|_| "bad `steps` metadata"))?;
        let f32_tensor = |name: String| -> Result<Tensor<B::InnerBackend, 1>, String> {
            let t = file.f32(&name).map_err(|e| e.to_string())?;
            let n = t.values.len();
            Ok(Tensor::from_data(
                TensorData::new(t.values, [n]),
                (device, DType::F32),
            ))
        };
        let mut moments = HashMap::with_capacity(steps.len());
        for (key, step) in steps {
            let id: u64 = key
                .parse()
                .map_err(|_| format!("bad parameter id {key:?}"))?;
            let master_name = format!("{key}.master");
            moments.insert(
                ParamId::from(id),
                Moments {
                    exp_avg: f32_tensor(format!("{key}.exp_avg"))?,
                    exp_avg_sq: f32_tensor(format!("{key}.exp_avg_sq"))?,
                    step,
                    master: if file.contains(&master_name) {
                        Some(f32_tensor(master_name)?)
                    } else {
                        None
                    },
                },
            );
        }
        self.lock().moments = moments;
        Ok(())
    }
}

/// `sqrt(Σ ‖g‖²)` over the module's parameters that have a gradient in `grads` (what
/// `clip_grad_norm_` computes over parameters whose `.grad` is not None).
pub fn global_grad_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &GradientsParams,
) -> f64 {
    struct SumSquares<'a, B: AutodiffBackend> {
        grads: &'a GradientsParams,
        total: Option<Tensor<B::InnerBackend, 1>>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for SumSquares<'_, B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
                let s = g.cast(FloatDType::F32).square().sum();
                self.total = Some(match self.total.take() {
                    Some(t) => t + s,
                    None => s,
                });
            }
        }
    }
    let mut visitor = SumSquares::<B> { grads, total: None };
    module.visit(&mut visitor);
    visitor
        .total
        .map(|t| t.sqrt().into_scalar().elem::<f64>())
        .unwrap_or(0.0)
}

struct AdamMapper<'a, B: AutodiffBackend> {
    settings: [f64; 4],
    no_decay: &'a HashSet<ParamId>,
    state: &'a mut AdamState<B::InnerBackend>,
    grads: &'a mut GradientsParams,
    lr: f64,
    clip: f64,
}

impl<B: AutodiffBackend> ModuleMapper<B> for AdamMapper<'_, B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let Some(grad) = self.grads.remove::<B::InnerBackend, D>(id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let require_grad = tensor.is_require_grad();
        let value = tensor.inner();
        let shape = value.shape();
        let dtype = value.dtype();
        let n = shape.num_elements();
        let [beta1, beta2, eps, mut weight_decay] = self.settings;
        if self.no_decay.contains(&id) {
            weight_decay = 0.0;
        }

        let mut g = grad.reshape([n]).cast(FloatDType::F32);
        if self.clip < 1.0 {
            g = g.mul_scalar(self.clip);
        }
        let state = self.state.moments.remove(&id).unwrap_or_else(|| Moments {
            // f32 like `g`, whatever the device's default float type.
            exp_avg: g.zeros_like(),
            exp_avg_sq: g.zeros_like(),
            step: 0,
            master: (dtype != DType::F32).then(|| value.clone().reshape([n]).cast(FloatDType::F32)),
        });
        let step = state.step + 1;
        let exp_avg = state
            .exp_avg
            .mul_scalar(beta1)
            .add(g.clone().mul_scalar(1.0 - beta1));
        let exp_avg_sq = state
            .exp_avg_sq
            .mul_scalar(beta2)
            .add(g.clone().mul(g).mul_scalar(1.0 - beta2));
        let denom = exp_avg_sq.clone().sqrt().add_scalar(eps);
        // Computed in f64 like the Python scalar of the reference, applied in f32.
        let step_size =
            self.lr * (1.0 - beta2.powi(step as i32)).sqrt() / (1.0 - beta1.powi(step as i32));
        let current = match &state.master {
            Some(m) => m.clone(),
            None => value.reshape([n]),
        };
        let mut updated = current - exp_avg.clone().div(denom).mul_scalar(step_size);
        if weight_decay > 0.0 {
            updated = updated.clone() - updated.mul_scalar(self.lr * weight_decay);
        }
        let master = state.master.as_ref().map(|_| updated.clone());
        let new_value = match master {
            Some(_) => updated.clone().cast(dtype_as_float(dtype)),
            None => updated,
        }
        .reshape(shape);
        self.state.moments.insert(
            id,
            Moments {
                exp_avg,
                exp_avg_sq,
                step,
                master,
            },
        );
        let mut out = Tensor::<B, D>::from_inner(new_value);
        if require_grad {
            out = out.require_grad();
        }
        Param::from_mapped_value(id, out, mapper)
    }
}

fn dtype_as_float(dtype: DType) -> FloatDType {
    match dtype {
        DType::BF16 => FloatDType::BF16,
        DType::F16 => FloatDType::F16,
        DType::F64 => FloatDType::F64,
        _ => FloatDType::F32,
    }
}

impl<B: AutodiffBackend, M: AutodiffModule<B>> Optimizer<M, B> for HfAdamW<B> {
    type Record = Vec<MomentsRecord<B>>;

    fn step(&mut self, lr: LearningRate, module: M, mut grads: GradientsParams) -> M {
        let norm = global_grad_norm(&module, &grads);
        let clip = if self.max_grad_norm > 0.0 {
            (self.max_grad_norm / (norm + 1e-6)).min(1.0)
        } else {
            1.0
        };
        let settings = [self.beta1, self.beta2, self.eps, self.weight_decay];
        let mut state = self.lock();
        state.last_grad_norm = Some(norm);
        let no_decay = self.no_decay.clone();
        let mut mapper = AdamMapper {
            settings,
            no_decay: &no_decay,
            state: &mut state,
            grads: &mut grads,
            lr,
            clip,
        };
        module.map(&mut mapper)
    }

    fn step_multi(&mut self, lr: LearningRate, module: M, grads: MultiGradientsParams) -> M {
        // Single-device training only: fold every device's gradients into one set.
        let mut merged = GradientsParams::new();
        struct Merge<'a, B: AutodiffBackend> {
            grads: &'a mut MultiGradientsParams,
            out: &'a mut GradientsParams,
            _b: std::marker::PhantomData<B>,
        }
        impl<B: AutodiffBackend> ModuleVisitor<B> for Merge<'_, B> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
                if let Some((g, _)) = self.grads.remove::<B::InnerBackend, D>(param.id) {
                    self.out.register::<B::InnerBackend, D>(param.id, g);
                }
            }
        }
        let mut grads = grads;
        module.visit(&mut Merge::<B> {
            grads: &mut grads,
            out: &mut merged,
            _b: std::marker::PhantomData,
        });
        Optimizer::<M, B>::step(self, lr, module, merged)
    }

    fn to_record(&self) -> Self::Record {
        let mut out: Vec<MomentsRecord<B>> = self
            .lock()
            .moments
            .iter()
            .map(|(id, m)| MomentsRecord {
                id: id.val(),
                exp_avg: Tensor::from_inner(m.exp_avg.clone()),
                exp_avg_sq: Tensor::from_inner(m.exp_avg_sq.clone()),
                step: m.step,
                master: m.master.clone().map(Tensor::from_inner),
            })
            .collect();
        out.sort_by_key(|r| r.id);
        out
    }

    fn load_record(self, record: Self::Record) -> Self {
        self.lock().moments = record
            .into_iter()
            .map(|r| {
                (
                    ParamId::from(r.id),
                    // Records load in the device's default float type; the state is f32.
                    Moments {
                        exp_avg: r.exp_avg.inner().cast(FloatDType::F32),
                        exp_avg_sq: r.exp_avg_sq.inner().cast(FloatDType::F32),
                        step: r.step,
                        master: r.master.map(|t| t.inner().cast(FloatDType::F32)),
                    },
                )
            })
            .collect();
        self
    }
}
