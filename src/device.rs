//! Devices: what a node asks for ([`DeviceReq`], [`GpuCount`]), and the slots of the CPU pool
//! and CUDA devices the scheduler leases to nodes ([`DevicePool`], [`Lease`]).
//!
//! A leaf module: the spec reads requests into it, node kinds run on its leases, the scheduler
//! hands them out.
//!
//! CPU nodes take one of `jobs` CPU slots. Nodes with `device: cuda` take whole GPUs: one by
//! default, or the `gpus: N | all` a data-parallel kind asks for; `auto` takes GPUs when the pool
//! has them and falls back to a CPU slot otherwise. [`DevicePool::check`] runs before anything
//! starts: a `cuda` node with no GPU in the pool, or a node asking for more GPUs than the pool
//! has, is an error then, not halfway through a run.
//!
//! # Multi-GPU leases
//! A node asking for N GPUs gets all N in one [`DevicePool::try_lease`] or none of them: the
//! pool never hands out part of a request, so two multi-GPU nodes can never each hold half of
//! what the other waits for (no deadlock, and no GPU sits idle in a half-filled lease). A node
//! asking for more GPUs than are free waits until enough are released together; meanwhile
//! smaller requests that fit go ahead (the scheduler offers slots in topological order), so a
//! wide node can wait behind a stream of narrow ones. [`DevicePool::check`] guarantees the
//! request fits the pool, so it does run once the others finish.

/// Where a node wants to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceReq {
    /// Always on the CPU pool.
    Cpu,
    /// Needs a CUDA device slot; an error before anything runs when none exists.
    Cuda,
    /// A CUDA slot when one exists, else the CPU (with a warning).
    Auto,
}

/// How many GPUs a node asks for (`gpus:`); one unless a data-parallel kind says otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuCount {
    /// Exactly this many (at least one); more than the pool has is an error before anything runs.
    Count(usize),
    /// Every GPU of the run (`--gpus`, `CUDA_VISIBLE_DEVICES`); the CPU under `auto` without one.
    All,
}

impl std::fmt::Display for GpuCount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GpuCount::Count(n) => write!(f, "{n}"),
            GpuCount::All => write!(f, "all"),
        }
    }
}

/// A set of CUDA ordinals (0 to 63, the most [`DevicePool::discover_gpus`] probes), `Copy` so a
/// [`Lease`] stays a plain value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GpuSet(u64);

impl GpuSet {
    /// The set of one ordinal.
    pub fn one(ordinal: usize) -> GpuSet {
        GpuSet::default().with(ordinal)
    }

    /// The set plus `ordinal`.
    pub fn with(self, ordinal: usize) -> GpuSet {
        assert!(ordinal < 64, "CUDA ordinal {ordinal} out of range");
        GpuSet(self.0 | 1 << ordinal)
    }

    /// Ordinals in increasing order; rank `r` of a data-parallel node runs on the `r`-th.
    pub fn iter(self) -> impl Iterator<Item = usize> {
        (0..64).filter(move |i| self.0 & (1 << i) != 0)
    }

    /// Number of devices.
    pub fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    /// True when empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// What a running node holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    /// One CPU slot.
    Cpu,
    /// These CUDA devices (one unless the node asked for `gpus:`).
    Cuda(GpuSet),
}

impl Lease {
    /// The candle device for this lease: the CPU, or the first (rank 0's) GPU.
    pub fn candle_device(&self) -> candle_core::Result<candle_core::Device> {
        match self {
            Lease::Cpu => Ok(candle_core::Device::Cpu),
            Lease::Cuda(set) => candle_core::Device::new_cuda(set.iter().next().expect("a CUDA lease has a device")),
        }
    }

    /// The CUDA ordinals held, in rank order (empty for the CPU).
    pub fn gpus(&self) -> Vec<usize> {
        match self {
            Lease::Cpu => Vec::new(),
            Lease::Cuda(set) => set.iter().collect(),
        }
    }

    /// The number of data-parallel ranks this lease runs: one per GPU, one on the CPU.
    pub fn world_size(&self) -> usize {
        match self {
            Lease::Cpu => 1,
            Lease::Cuda(set) => set.len(),
        }
    }
}

impl std::fmt::Display for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Lease::Cpu => write!(f, "cpu"),
            Lease::Cuda(set) => {
                let ids: Vec<String> = set.iter().map(|i| i.to_string()).collect();
                write!(f, "cuda:{}", ids.join(","))
            }
        }
    }
}

/// Why a node cannot run with this pool; [`DevicePool::check`]'s error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolProblem {
    /// `device: cuda` and no GPU at all.
    NoGpu,
    /// `gpus: N` with fewer than N GPUs in the pool.
    TooFewGpus {
        /// GPUs asked for.
        wanted: usize,
        /// GPUs in the pool.
        available: usize,
    },
}

impl PoolProblem {
    /// One sentence naming the node.
    pub fn message(&self, node: &str) -> String {
        match self {
            PoolProblem::NoGpu => format!(
                "node `{node}` has `device: cuda`, but no CUDA device is available to this build of pipe; use `device: auto` to fall back to the CPU"
            ),
            PoolProblem::TooFewGpus { wanted, available: 0 } => format!(
                "node `{node}` asks for {wanted} GPUs (`gpus: {wanted}`), but no CUDA device is available to this build of pipe"
            ),
            PoolProblem::TooFewGpus { wanted, available } => format!(
                "node `{node}` asks for {wanted} GPUs (`gpus: {wanted}`), but only {available} {} available to this run",
                if *available == 1 { "is" } else { "are" }
            ),
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

    /// How many devices (data-parallel ranks) a node with this request runs on in this pool:
    /// its `gpus` when it resolves to CUDA (`all`: every GPU in the pool), else one CPU slot.
    pub fn world_size(&self, req: DeviceReq, gpus: GpuCount) -> usize {
        if !self.resolves_to_cuda(req) {
            return 1;
        }
        match gpus {
            GpuCount::Count(n) => n,
            GpuCount::All => self.gpus.len().max(1),
        }
    }

    /// Fails when a node needs GPUs the pool does not have.
    pub fn check(&self, req: DeviceReq, gpus: GpuCount) -> Result<(), PoolProblem> {
        if req == DeviceReq::Cuda && self.gpus.is_empty() && !matches!(gpus, GpuCount::Count(n) if n > 1) {
            return Err(PoolProblem::NoGpu);
        }
        // An explicit count is a requirement even under `auto`: `gpus: 2` never quietly runs on one.
        if let GpuCount::Count(n) = gpus {
            if n > 1 && n > self.gpus.len() {
                return Err(PoolProblem::TooFewGpus { wanted: n, available: self.gpus.len() });
            }
        }
        Ok(())
    }

    /// True when `auto` would fall back to the CPU.
    pub fn has_gpus(&self) -> bool {
        !self.gpus.is_empty()
    }

    /// Takes the slots for `req` (with `gpus` of them when it resolves to CUDA) if they are all
    /// free; takes nothing otherwise.
    pub fn try_lease(&mut self, req: DeviceReq, gpus: GpuCount) -> Option<Lease> {
        if self.resolves_to_cuda(req) {
            let n = self.world_size(req, gpus);
            let free: Vec<usize> = self.gpus.iter().enumerate().filter(|(_, s)| s.1).map(|(k, _)| k).take(n).collect();
            if free.len() < n || n == 0 {
                return None;
            }
            let mut set = GpuSet::default();
            for k in free {
                self.gpus[k].1 = false;
                set = set.with(self.gpus[k].0);
            }
            Some(Lease::Cuda(set))
        } else if self.cpu_free > 0 {
            self.cpu_free -= 1;
            Some(Lease::Cpu)
        } else {
            None
        }
    }

    /// Returns every slot of a lease.
    pub fn release(&mut self, lease: Lease) {
        match lease {
            Lease::Cpu => self.cpu_free += 1,
            Lease::Cuda(set) => {
                for i in set.iter() {
                    if let Some(slot) = self.gpus.iter_mut().find(|(g, _)| *g == i) {
                        slot.1 = true;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: GpuCount = GpuCount::Count(1);

    fn cuda(ids: &[usize]) -> Lease {
        Lease::Cuda(ids.iter().fold(GpuSet::default(), |s, &i| s.with(i)))
    }

    #[test]
    fn gpu_nodes_get_one_device_each_and_cpu_nodes_share_the_pool() {
        let mut pool = DevicePool::new(2, &[0, 1]);
        let a = pool.try_lease(DeviceReq::Cuda, ONE).unwrap();
        let b = pool.try_lease(DeviceReq::Auto, ONE).unwrap();
        assert_eq!((a, b), (cuda(&[0]), cuda(&[1])));
        assert_eq!(pool.try_lease(DeviceReq::Cuda, ONE), None, "one GPU node per device");
        assert_eq!(pool.try_lease(DeviceReq::Cpu, ONE), Some(Lease::Cpu));
        assert_eq!(pool.try_lease(DeviceReq::Cpu, ONE), Some(Lease::Cpu));
        assert_eq!(pool.try_lease(DeviceReq::Cpu, ONE), None);
        pool.release(a);
        assert_eq!(pool.try_lease(DeviceReq::Cuda, ONE), Some(cuda(&[0])));
    }

    #[test]
    fn auto_falls_back_to_cpu_and_cuda_without_gpus_is_an_error() {
        let mut pool = DevicePool::new(1, &[]);
        assert!(pool.check(DeviceReq::Cuda, ONE).unwrap_err().message("train").contains("device: auto"));
        assert!(pool.check(DeviceReq::Auto, ONE).is_ok());
        assert!(pool.check(DeviceReq::Auto, GpuCount::All).is_ok(), "`all` of no GPUs under auto is the CPU");
        assert_eq!(pool.world_size(DeviceReq::Auto, GpuCount::All), 1);
        assert_eq!(pool.try_lease(DeviceReq::Auto, GpuCount::All), Some(Lease::Cpu));
    }

    #[test]
    fn a_multi_gpu_lease_takes_all_its_devices_at_once_or_none() {
        // Fake ordinals, as `--gpus 1,3,4` would give.
        let mut pool = DevicePool::new(1, &[1, 3, 4]);
        let one = pool.try_lease(DeviceReq::Cuda, ONE).unwrap();
        assert_eq!(one, cuda(&[1]));
        let two = pool.try_lease(DeviceReq::Cuda, GpuCount::Count(2)).unwrap();
        assert_eq!(two, cuda(&[3, 4]));
        assert_eq!(two.gpus(), vec![3, 4]);
        assert_eq!(two.world_size(), 2);
        assert_eq!(two.to_string(), "cuda:3,4");
        // A second 2-GPU node finds one free GPU after `one` finishes: it takes nothing.
        pool.release(one);
        assert_eq!(pool.try_lease(DeviceReq::Cuda, GpuCount::Count(2)), None);
        assert_eq!(pool.try_lease(DeviceReq::Cuda, ONE), Some(cuda(&[1])), "the free GPU was not held back");
        pool.release(cuda(&[1]));
        pool.release(two);
        assert_eq!(pool.try_lease(DeviceReq::Cuda, GpuCount::All), Some(cuda(&[1, 3, 4])));
        assert_eq!(pool.try_lease(DeviceReq::Cuda, ONE), None);
    }

    #[test]
    fn two_multi_gpu_nodes_alternate_without_deadlock() {
        // Two 2-GPU nodes on a 3-GPU pool: whatever order they ask in, one holds two GPUs and
        // the other holds none until the first releases.
        let mut pool = DevicePool::new(1, &[0, 1, 2]);
        let two = GpuCount::Count(2);
        let a = pool.try_lease(DeviceReq::Cuda, two).unwrap();
        assert_eq!(pool.try_lease(DeviceReq::Cuda, two), None);
        pool.release(a);
        let b = pool.try_lease(DeviceReq::Cuda, two).unwrap();
        assert_eq!(b.world_size(), 2);
        pool.release(b);
        assert_eq!(pool.try_lease(DeviceReq::Cuda, GpuCount::Count(3)).map(|l| l.world_size()), Some(3));
    }

    #[test]
    fn asking_for_more_gpus_than_the_pool_has_is_an_error_before_anything_runs() {
        let pool = DevicePool::new(1, &[0, 1]);
        let err = pool.check(DeviceReq::Cuda, GpuCount::Count(3)).unwrap_err();
        assert_eq!(err, PoolProblem::TooFewGpus { wanted: 3, available: 2 });
        assert!(err.message("train").contains("only 2 are available"), "{}", err.message("train"));
        // Under `auto` too: an explicit count is a requirement.
        assert!(DevicePool::new(1, &[]).check(DeviceReq::Auto, GpuCount::Count(2)).is_err());
        assert!(pool.check(DeviceReq::Cuda, GpuCount::Count(2)).is_ok());
        assert!(pool.check(DeviceReq::Cuda, GpuCount::All).is_ok());
        assert_eq!(pool.world_size(DeviceReq::Cuda, GpuCount::All), 2);
        assert_eq!(pool.world_size(DeviceReq::Cpu, GpuCount::All), 1);
    }
}
