//! Device selection: one path from `--device cpu|cuda[:N]` to a burn backend.
//!
//! CPU is burn-flex (pure Rust). CUDA needs the `cuda` feature; asking for it otherwise, or on
//! a machine without a usable GPU, is an error — never a silent CPU fallback.

use std::fmt;
use std::str::FromStr;

use burn::prelude::Backend;
use burn::tensor::backend::AutodiffBackend;

/// The CPU backend.
pub type CpuBackend = burn::backend::Flex;
/// The CUDA backend.
#[cfg(feature = "cuda")]
pub type CudaBackend = burn::backend::Cuda;

/// A parsed `--device` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    #[default]
    Cpu,
    /// CUDA device ordinal.
    Cuda(usize),
}

/// Why a device cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("unknown device {0:?}: expected cpu, cuda or cuda:N")]
    Parse(String),
    #[error(
        "device {0} requested, but this build has no CUDA support (rebuild with `--features cuda`)"
    )]
    NoCudaFeature(DeviceSpec),
    #[error("device {spec} is not available: {reason}")]
    Unavailable { spec: DeviceSpec, reason: String },
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl FromStr for DeviceSpec {
    type Err = DeviceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        match lower.as_str() {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" | "gpu" => Ok(DeviceSpec::Cuda(0)),
            _ => lower
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| DeviceError::Parse(s.to_string())),
        }
    }
}

/// Work that can run on any backend; [`run_on`] picks the backend from a [`DeviceSpec`].
pub trait BackendTask {
    type Output;
    fn run<B: Backend>(self, device: B::Device) -> Self::Output;
}

/// Runs `task` on the backend and device named by `spec`.
pub fn run_on<T: BackendTask>(spec: DeviceSpec, task: T) -> Result<T::Output, DeviceError> {
    match spec {
        DeviceSpec::Cpu => Ok(task.run::<CpuBackend>(Default::default())),
        DeviceSpec::Cuda(index) => run_cuda(spec, index, task),
    }
}

/// Work that needs gradients (training): [`run_train_on`] runs it on `Autodiff<Flex>` or
/// `Autodiff<Cuda>`.
pub trait TrainTask {
    type Output;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output;
}

/// Runs `task` on the autodiff version of the backend named by `spec`.
pub fn run_train_on<T: TrainTask>(spec: DeviceSpec, task: T) -> Result<T::Output, DeviceError> {
    match spec {
        DeviceSpec::Cpu => Ok(task.run::<burn::backend::Autodiff<CpuBackend>>(Default::default())),
        DeviceSpec::Cuda(index) => run_train_cuda(spec, index, task),
    }
}

#[cfg(not(feature = "cuda"))]
fn run_train_cuda<T: TrainTask>(
    spec: DeviceSpec,
    _index: usize,
    _task: T,
) -> Result<T::Output, DeviceError> {
    Err(DeviceError::NoCudaFeature(spec))
}

#[cfg(feature = "cuda")]
fn run_train_cuda<T: TrainTask>(
    spec: DeviceSpec,
    index: usize,
    task: T,
) -> Result<T::Output, DeviceError> {
    let device = cuda_device(spec, index)?;
    Ok(task.run::<burn::backend::Autodiff<CudaBackend>>(device))
}

#[cfg(not(feature = "cuda"))]
fn run_cuda<T: BackendTask>(
    spec: DeviceSpec,
    _index: usize,
    _task: T,
) -> Result<T::Output, DeviceError> {
    Err(DeviceError::NoCudaFeature(spec))
}

#[cfg(feature = "cuda")]
fn run_cuda<T: BackendTask>(
    spec: DeviceSpec,
    index: usize,
    task: T,
) -> Result<T::Output, DeviceError> {
    let device = cuda_device(spec, index)?;
    Ok(task.run::<CudaBackend>(device))
}

/// CUDA device `index` after checking that the driver loads and the device exists.
#[cfg(feature = "cuda")]
fn cuda_device(
    spec: DeviceSpec,
    index: usize,
) -> Result<burn::backend::cuda::CudaDevice, DeviceError> {
    let count = cuda_device_count().map_err(|reason| DeviceError::Unavailable { spec, reason })?;
    if index >= count {
        return Err(DeviceError::Unavailable {
            spec,
            reason: format!("{count} CUDA device(s) found"),
        });
    }
    Ok(burn::backend::cuda::CudaDevice::new(index))
}

/// Number of CUDA devices, or why the driver cannot be used. burn-cuda panics when libcuda is
/// missing, so the driver is probed first (cudarc also panics when it cannot load the library).
#[cfg(feature = "cuda")]
pub fn cuda_device_count() -> Result<usize, String> {
    // The default hook would print cudarc's panic before our one-line error.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let probe = std::panic::catch_unwind(|| {
        cudarc::driver::result::init().map_err(|e| format!("CUDA driver init failed: {e:?}"))?;
        cudarc::driver::result::device::get_count()
            .map(|n| n as usize)
            .map_err(|e| format!("cannot count CUDA devices: {e:?}"))
    });
    std::panic::set_hook(hook);
    match probe {
        Ok(r) => r,
        Err(_) => Err("the CUDA driver library (libcuda.so) could not be loaded".into()),
    }
}

/// Memory held on the device named by `spec`, in bytes, where it can be read. CPU: the peak
/// resident memory of this process so far (`VmHWM`, Linux). CUDA: the device's total minus
/// free memory as the driver reports it — burn's memory pool keeps what it reserved, so read
/// after a workload this is that workload's peak (other processes on the GPU count too).
pub fn memory_in_use(spec: DeviceSpec) -> Option<u64> {
    match spec {
        DeviceSpec::Cpu => std::fs::read_to_string("/proc/self/status")
            .ok()?
            .lines()
            .find(|l| l.starts_with("VmHWM:"))?
            .split_whitespace()
            .nth(1)?
            .parse::<u64>()
            .ok()
            .map(|kb| kb * 1024),
        DeviceSpec::Cuda(index) => cuda_memory_in_use(index),
    }
}

#[cfg(feature = "cuda")]
fn cuda_memory_in_use(index: usize) -> Option<u64> {
    let ctx = cudarc::driver::CudaContext::new(index).ok()?;
    let (free, total) = ctx.mem_get_info().ok()?;
    Some(total.saturating_sub(free) as u64)
}

#[cfg(not(feature = "cuda"))]
fn cuda_memory_in_use(_index: usize) -> Option<u64> {
    None
}

/// The name of the GPU `spec` names (e.g. "NVIDIA H100 80GB HBM3"), when it can be read.
pub fn cuda_name(spec: DeviceSpec) -> Option<String> {
    match spec {
        DeviceSpec::Cpu => None,
        DeviceSpec::Cuda(index) => cuda_device_name(index),
    }
}

#[cfg(feature = "cuda")]
fn cuda_device_name(index: usize) -> Option<String> {
    cudarc::driver::CudaContext::new(index).ok()?.name().ok()
}

#[cfg(not(feature = "cuda"))]
fn cuda_device_name(_index: usize) -> Option<String> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices() {
        assert_eq!("cpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert_eq!("cuda:3".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(3));
        assert!("tpu".parse::<DeviceSpec>().is_err());
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
    }
}
