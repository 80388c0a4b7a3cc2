//! Backend choice: cargo features decide which backends are compiled in,
//! `--device` picks one of them at run time.

use std::str::FromStr;

use anyhow::{Result, bail};
use burn::tensor::backend::AutodiffBackend;

/// Where to run, as given by `--device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
    Vulkan(usize),
    Wgpu(usize),
    /// wgpu on a CPU adapter (Mesa's lavapipe): the GPU code path without a GPU.
    WgpuCpu,
}

/// `LOCAL_RANK` of a process started by `alignkit launch` (or torchrun-style
/// schedulers).
fn local_rank() -> Option<usize> {
    std::env::var(alignkit_train::dist::ENV_LOCAL_RANK)
        .ok()?
        .parse()
        .ok()
}

impl FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "wgpu:cpu" {
            return Ok(DeviceSpec::WgpuCpu);
        }
        let (kind, index) = match s.split_once(':') {
            Some((k, i)) => (
                k,
                i.parse::<usize>()
                    .map_err(|_| format!("bad device index in `{s}`"))?,
            ),
            // Under `alignkit launch` (torchrun's convention), plain `cuda`
            // is the rank's own GPU: cuda:LOCAL_RANK.
            None => (s, local_rank().unwrap_or(0)),
        };
        match kind {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(index)),
            "vulkan" => Ok(DeviceSpec::Vulkan(index)),
            "wgpu" => Ok(DeviceSpec::Wgpu(index)),
            _ => Err(format!(
                "unknown device `{s}` (expected cpu, cuda:N, vulkan:N, wgpu:N or wgpu:cpu)"
            )),
        }
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(i) => write!(f, "cuda:{i}"),
            DeviceSpec::Vulkan(i) => write!(f, "vulkan:{i}"),
            DeviceSpec::Wgpu(i) => write!(f, "wgpu:{i}"),
            DeviceSpec::WgpuCpu => f.write_str("wgpu:cpu"),
        }
    }
}

impl DeviceSpec {
    /// Whether `train.dtype = "bf16"` trains in bf16 here: on CUDA only. The
    /// CPU backend keeps f32 (no bf16 arithmetic units: bf16 would be
    /// converted on every op, slower and less accurate), and WGSL has no bf16.
    pub fn trains_bf16(self) -> bool {
        matches!(self, DeviceSpec::Cuda(_))
    }

    /// Whether bf16 tensors can be computed with here at all (`parity
    /// --dtype bf16`): on the CPU (converted per op) and CUDA. The wgpu and
    /// Vulkan shader compilers have no bf16 type: cubecl panics in its
    /// runtime thread.
    pub fn computes_bf16(self) -> bool {
        matches!(self, DeviceSpec::Cpu | DeviceSpec::Cuda(_))
    }
}

/// The devices of one process's local peers (`--devices`): parsed, at least
/// one, all of one backend (an error names the list, the caller its flag).
pub fn peer_devices(list: &[String]) -> Result<Vec<DeviceSpec>> {
    let joined = list.join(",");
    let specs = list
        .iter()
        .map(|d| d.parse::<DeviceSpec>())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("{joined}: {e}"))?;
    let kind = |s: &DeviceSpec| std::mem::discriminant(s);
    if specs.is_empty() || specs.iter().any(|s| kind(s) != kind(&specs[0])) {
        bail!(
            "{joined}: the local peers of one process run on one backend (all cpu, or all cuda:N, ...)"
        );
    }
    Ok(specs)
}

/// Whether the NVIDIA driver library (`libcuda.so.1` or `libcuda.so`) can be
/// loaded, as cudarc will try to.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub fn cuda_driver_present() -> bool {
    [c"libcuda.so.1", c"libcuda.so"].iter().any(|name| {
        // SAFETY: dlopen with a valid NUL-terminated name; the handle is
        // closed at once and nothing from the library is called.
        unsafe {
            let handle = libc::dlopen(name.as_ptr(), libc::RTLD_LAZY | libc::RTLD_LOCAL);
            if handle.is_null() {
                false
            } else {
                libc::dlclose(handle);
                true
            }
        }
    })
}

/// A one-line error unless the NVIDIA driver is present.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub fn require_cuda_driver() -> Result<()> {
    if cuda_driver_present() {
        Ok(())
    } else {
        bail!("CUDA requested but no NVIDIA driver (libcuda.so) was found")
    }
}

/// How many discrete GPUs wgpu sees (any graphics API).
#[cfg(any(feature = "wgpu", feature = "vulkan"))]
fn discrete_gpus() -> usize {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: wgpu::Backends::all(),
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    let mut adapters = std::pin::pin!(instance.enumerate_adapters(wgpu::Backends::all()));
    let mut cx = Context::from_waker(Waker::noop());
    // Ready at once on native platforms.
    loop {
        if let Poll::Ready(adapters) = adapters.as_mut().poll(&mut cx) {
            return adapters
                .iter()
                .filter(|a| a.get_info().device_type == wgpu::DeviceType::DiscreteGpu)
                .count();
        }
        std::thread::yield_now();
    }
}

/// A one-line error unless wgpu sees discrete GPU `index` (cubecl panics in
/// its runtime thread otherwise).
#[cfg(any(feature = "wgpu", feature = "vulkan"))]
fn require_discrete_gpu(spec: &str, index: usize) -> Result<()> {
    let found = discrete_gpus();
    if index >= found {
        bail!(
            "--device {spec}:{index}: wgpu sees {found} discrete GPU(s); --device wgpu:cpu runs on a CPU Vulkan device (Mesa's lavapipe)"
        );
    }
    Ok(())
}

/// The memory a GPU backend's allocator holds on `device` (its pool's
/// reserved pages, what other users of the GPU cannot have), in MB; `None`
/// on the CPU. Pages stay reserved once used until
/// [`burn::tensor::backend::Backend::memory_cleanup`], so read after a step it
/// is the step's peak reservation.
#[allow(unused_variables)]
pub fn device_memory_mb<D: 'static>(device: &D) -> Option<f64> {
    #[cfg(any(feature = "cuda", feature = "wgpu", feature = "vulkan"))]
    {
        use burn_cubecl::cubecl::Runtime;
        fn reserved<R: Runtime>(device: &R::Device) -> Option<f64> {
            let usage = R::client(device).memory_usage().ok()?;
            Some(usage.bytes_reserved as f64 / (1024.0 * 1024.0))
        }
        let any = device as &dyn std::any::Any;
        #[cfg(feature = "cuda")]
        if let Some(d) = any.downcast_ref::<burn::backend::cuda::CudaDevice>() {
            return reserved::<burn_cubecl::cubecl::cuda::CudaRuntime>(d);
        }
        #[cfg(any(feature = "wgpu", feature = "vulkan"))]
        if let Some(d) = any.downcast_ref::<burn::backend::wgpu::WgpuDevice>() {
            return reserved::<burn::backend::wgpu::WgpuRuntime>(d);
        }
    }
    None
}

/// Work that runs on whichever backend `--device` selects. Inference code uses
/// `B::InnerBackend`; training uses `B` itself.
pub trait Task {
    type Output;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<Self::Output>;
}

/// Run `task` on the backend named by `spec`.
#[allow(unreachable_code, unused_variables)]
pub fn dispatch<T: Task>(spec: DeviceSpec, task: T) -> Result<T::Output> {
    use burn::backend::Autodiff;
    match spec {
        DeviceSpec::Cpu => {
            #[cfg(feature = "flex")]
            return task.run::<Autodiff<burn::backend::Flex>>(Default::default());
            #[cfg(feature = "ndarray")]
            return task.run::<Autodiff<burn::backend::NdArray>>(Default::default());
            bail!("this alignkit was built without a CPU backend (features `flex` or `ndarray`)")
        }
        DeviceSpec::Cuda(index) => {
            #[cfg(feature = "cuda")]
            {
                // cudarc panics (twice, with backtraces) when it cannot load
                // the driver: look for it first and say so in one line.
                require_cuda_driver()?;
                return task.run::<Autodiff<burn::backend::Cuda>>(
                    burn::backend::cuda::CudaDevice::new(index),
                );
            }
            bail!("this alignkit was built without CUDA; rebuild with `--features cuda`")
        }
        DeviceSpec::Vulkan(index) => {
            #[cfg(feature = "vulkan")]
            {
                require_discrete_gpu("vulkan", index)?;
                return task.run::<Autodiff<burn::backend::Vulkan>>(
                    burn::backend::wgpu::WgpuDevice::DiscreteGpu(index),
                );
            }
            bail!("this alignkit was built without Vulkan; rebuild with `--features vulkan`")
        }
        DeviceSpec::Wgpu(index) => {
            #[cfg(feature = "wgpu")]
            {
                require_discrete_gpu("wgpu", index)?;
                return task.run::<Autodiff<burn::backend::Wgpu>>(
                    burn::backend::wgpu::WgpuDevice::DiscreteGpu(index),
                );
            }
            bail!("this alignkit was built without wgpu; rebuild with `--features wgpu`")
        }
        DeviceSpec::WgpuCpu => {
            #[cfg(feature = "wgpu")]
            return task.run::<Autodiff<burn::backend::Wgpu>>(burn::backend::wgpu::WgpuDevice::Cpu);
            bail!("this alignkit was built without wgpu; rebuild with `--features wgpu`")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without a driver (CI, this machine) the probe fails in one line; with
    /// one it passes. Either way it never panics.
    #[test]
    fn the_cuda_probe_is_one_line_and_matches_the_library() {
        let found = std::path::Path::new("/usr/lib/x86_64-linux-gnu/libcuda.so.1").exists()
            || std::path::Path::new("/usr/lib64/libcuda.so.1").exists();
        match require_cuda_driver() {
            Ok(()) => assert!(cuda_driver_present()),
            Err(e) => {
                assert!(!found, "libcuda.so.1 is installed but did not load: {e}");
                assert_eq!(
                    e.to_string(),
                    "CUDA requested but no NVIDIA driver (libcuda.so) was found"
                );
            }
        }
    }
}
