//! Device slots: the CPU pool and CUDA devices, leased to nodes one at a time.
//!
//! CPU nodes take one of `jobs` CPU slots. Nodes with `device: cuda` take a whole GPU (one GPU
//! node per device); `auto` takes a GPU when the pool has one and falls back to a CPU slot
//! otherwise. [`DevicePool::check`] runs before anything starts: a `cuda` node with no GPU in the
//! pool is an error then, not halfway through a run.

use crate::nodes::DeviceReq;

/// What a running node holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    /// One CPU slot.
    Cpu,
    /// The CUDA device with this ordinal.
    Cuda(usize),
}

impl Lease {
    /// The candle device for this lease.
    pub fn candle_device(&self) -> candle_core::Result<candle_core::Device> {
        match self {
            Lease::Cpu => Ok(candle_core::Device::Cpu),
            Lease::Cuda(i) => candle_core::Device::new_cuda(*i),
        }
    }
}

impl std::fmt::Display for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Lease::Cpu => write!(f, "cpu"),
            Lease::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// Free slots.
#[derive(Debug)]
pub struct DevicePool {
    cpu_free: usize,
    gpus: Vec<(usize, bool)>,
}

impl DevicePool {
    /// A pool of `cpu_slots` CPU slots and the given CUDA ordinals.
    pub fn new(cpu_slots: usize, gpus: &[usize]) -> DevicePool {
        DevicePool { cpu_free: cpu_slots.max(1), gpus: gpus.iter().map(|&g| (g, true)).collect() }
    }

    /// CUDA devices this build and machine offer (`CUDA_VISIBLE_DEVICES` applies, as the driver
    /// reads it): none in a build without the `cuda` feature.
    pub fn discover_gpus() -> Vec<usize> {
        #[cfg(feature = "cuda")]
        {
            (0..64).take_while(|&i| candle_core::Device::new_cuda(i).is_ok()).collect()
        }
        #[cfg(not(feature = "cuda"))]
        {
            Vec::new()
        }
    }

    /// The device type a request resolves to in this pool (`auto` is CUDA when a GPU exists).
    pub fn resolves_to_cuda(&self, req: DeviceReq) -> bool {
        match req {
            DeviceReq::Cpu => false,
            DeviceReq::Cuda => true,
            DeviceReq::Auto => !self.gpus.is_empty(),
        }
    }

    /// Fails when a node needs a GPU the pool does not have.
    pub fn check(&self, node: &str, req: DeviceReq) -> Result<(), String> {
        if req == DeviceReq::Cuda && self.gpus.is_empty() {
            return Err(format!(
                "node `{node}` has `device: cuda`, but no CUDA device is available to this build of pipe; use `device: auto` to fall back to the CPU"
            ));
        }
        Ok(())
    }

    /// True when `auto` would fall back to the CPU.
    pub fn has_gpus(&self) -> bool {
        !self.gpus.is_empty()
    }

    /// Takes a slot for `req` if one is free.
    pub fn try_lease(&mut self, req: DeviceReq) -> Option<Lease> {
        let wants_gpu = self.resolves_to_cuda(req);
        if wants_gpu {
            let slot = self.gpus.iter_mut().find(|(_, free)| *free)?;
            slot.1 = false;
            Some(Lease::Cuda(slot.0))
        } else if self.cpu_free > 0 {
            self.cpu_free -= 1;
            Some(Lease::Cpu)
        } else {
            None
        }
    }

    /// Returns a slot.
    pub fn release(&mut self, lease: Lease) {
        match lease {
            Lease::Cpu => self.cpu_free += 1,
            Lease::Cuda(i) => {
                if let Some(slot) = self.gpus.iter_mut().find(|(g, _)| *g == i) {
                    slot.1 = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_nodes_get_one_device_each_and_cpu_nodes_share_the_pool() {
        let mut pool = DevicePool::new(2, &[0, 1]);
        let a = pool.try_lease(DeviceReq::Cuda).unwrap();
        let b = pool.try_lease(DeviceReq::Auto).unwrap();
        assert_eq!((a, b), (Lease::Cuda(0), Lease::Cuda(1)));
        assert_eq!(pool.try_lease(DeviceReq::Cuda), None, "one GPU node per device");
        assert_eq!(pool.try_lease(DeviceReq::Cpu), Some(Lease::Cpu));
        assert_eq!(pool.try_lease(DeviceReq::Cpu), Some(Lease::Cpu));
        assert_eq!(pool.try_lease(DeviceReq::Cpu), None);
        pool.release(a);
        assert_eq!(pool.try_lease(DeviceReq::Cuda), Some(Lease::Cuda(0)));
    }

    #[test]
    fn auto_falls_back_to_cpu_and_cuda_without_gpus_is_an_error() {
        let mut pool = DevicePool::new(1, &[]);
        assert!(pool.check("train", DeviceReq::Cuda).unwrap_err().contains("device: auto"));
        assert!(pool.check("train", DeviceReq::Auto).is_ok());
        assert_eq!(pool.try_lease(DeviceReq::Auto), Some(Lease::Cpu));
    }
}
