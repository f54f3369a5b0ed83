//! NCCL all-reduce for data-parallel ranks that are threads of one process, one per GPU.
//!
//! `libnccl.so.2` is opened with `dlopen` the first time a multi-GPU node runs, not linked:
//! a CUDA build of pipe starts, and trains on one GPU, on machines without NCCL. (cudarc's own
//! NCCL module would link `-lnccl` under the `dynamic-linking` feature candle turns on, making
//! NCCL a requirement of every CUDA binary, so the handful of entry points used here are bound
//! by hand.) The library is looked for at `PIPE_NCCL_LIB` if set, else by the dynamic loader's
//! search (`LD_LIBRARY_PATH`, the system paths). PyTorch's `nvidia-nccl-cu12`/`-cu13` wheel
//! ships it: `$(python3 -c 'import nvidia.nccl, os; print(os.path.dirname(nvidia.nccl.__file__))')/lib`.
//!
//! Communicators come from `ncclCommInitAll` over the lease's ordinals (rank `r` on the `r`-th);
//! each rank then reduces on its candle device's stream, so the sum is ordered after the
//! gradient kernels that stream ran and before anything it runs next. NVLink SHARP multicast
//! (NVLS) is turned off (`NCCL_NVLS_ENABLE=0`) unless the environment already says otherwise:
//! the LoRA gradients are small, and NVLS reserves memory and can fail to set up on shared hosts.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::{Arc, OnceLock};

use candle_core::cuda_backend::cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut};
use candle_core::{DType, Device, Storage, Tensor};

use super::{GradReduce, ReduceError, World};

type NcclResult = c_int;
type Comm = *mut c_void;

const NCCL_FLOAT32: c_int = 7;
const NCCL_FLOAT64: c_int = 8;
const NCCL_SUM: c_int = 0;

/// The entry points used, resolved once.
struct Lib {
    _lib: libloading::Library,
    init_all: unsafe extern "C" fn(*mut Comm, c_int, *const c_int) -> NcclResult,
    all_reduce: unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, c_int, Comm, *mut c_void) -> NcclResult,
    destroy: unsafe extern "C" fn(Comm) -> NcclResult,
    error_string: unsafe extern "C" fn(NcclResult) -> *const c_char,
    version: unsafe extern "C" fn(*mut c_int) -> NcclResult,
}

fn lib() -> Result<&'static Lib, ReduceError> {
    static LIB: OnceLock<Result<Lib, String>> = OnceLock::new();
    LIB.get_or_init(|| {
        let names: Vec<String> = match std::env::var("PIPE_NCCL_LIB") {
            Ok(p) if !p.is_empty() => vec![p],
            _ => vec!["libnccl.so.2".into(), "libnccl.so".into()],
        };
        let mut errors = Vec::new();
        for name in &names {
            // SAFETY: loading NCCL runs its initialisers, which have no preconditions.
            match unsafe { libloading::Library::new(name) } {
                Ok(lib) => return bind(lib).map_err(|e| format!("{name}: {e}")),
                Err(e) => errors.push(format!("{name}: {e}")),
            }
        }
        Err(format!(
            "cannot load NCCL ({}); multi-GPU training needs libnccl.so.2: put its folder on LD_LIBRARY_PATH or set PIPE_NCCL_LIB (PyTorch's nvidia-nccl wheel ships it)",
            errors.join("; ")
        ))
    })
    .as_ref()
    .map_err(|e| ReduceError::Nccl(e.clone()))
}

fn bind(lib: libloading::Library) -> Result<Lib, libloading::Error> {
    // SAFETY: the signatures are NCCL's (nccl.h, stable since 2.0).
    unsafe {
        Ok(Lib {
            init_all: *lib.get(b"ncclCommInitAll\0")?,
            all_reduce: *lib.get(b"ncclAllReduce\0")?,
            destroy: *lib.get(b"ncclCommDestroy\0")?,
            error_string: *lib.get(b"ncclGetErrorString\0")?,
            version: *lib.get(b"ncclGetVersion\0")?,
            _lib: lib,
        })
    }
}

fn check(lib: &Lib, what: &str, r: NcclResult) -> Result<(), ReduceError> {
    if r == 0 {
        return Ok(());
    }
    // SAFETY: ncclGetErrorString returns a static C string for any result code.
    let msg = unsafe { CStr::from_ptr((lib.error_string)(r)) }.to_string_lossy().into_owned();
    Err(ReduceError::Nccl(format!("{what}: {msg} (code {r})")))
}

/// Turns NVLink multicast off for this process unless the user set it.
fn nvls_off() {
    if std::env::var_os("NCCL_NVLS_ENABLE").is_none() {
        // NCCL reads it when a communicator is created, which is after this (pipe sets no
        // other environment concurrently: the scheduler's threads do not touch it).
        std::env::set_var("NCCL_NVLS_ENABLE", "0");
    }
}

/// The NCCL version as `major.minor.patch`.
pub fn version() -> Result<String, ReduceError> {
    let lib = lib()?;
    let mut v = 0;
    // SAFETY: writes one int.
    check(lib, "ncclGetVersion", unsafe { (lib.version)(&mut v) })?;
    // Since 2.9 the code is major * 10000 + minor * 100 + patch.
    Ok(format!("{}.{}.{}", v / 10000, (v / 100) % 100, v % 100))
}

struct Owned {
    lib: &'static Lib,
    comm: Comm,
}

impl Drop for Owned {
    fn drop(&mut self) {
        // SAFETY: the communicator is owned here and no longer used.
        unsafe { (self.lib.destroy)(self.comm) };
    }
}

// SAFETY: a communicator may be used from any thread, one thread at a time; each is owned by one
// rank's handle.
unsafe impl Send for Owned {}

/// One rank's NCCL communicator and its device's stream.
pub struct NcclReduce {
    comm: Owned,
    stream: Arc<CudaStream>,
    world: World,
}

/// Communicators for `devices` (CUDA devices, rank `r` on `devices[r]`; pass the devices the
/// models live on, so the reductions run on their streams).
pub fn group(devices: &[Device]) -> Result<Vec<NcclReduce>, ReduceError> {
    nvls_off();
    let lib = lib()?;
    let mut ordinals = Vec::new();
    let mut streams = Vec::new();
    for d in devices {
        let Device::Cuda(c) = d else {
            return Err(ReduceError::Nccl(format!("NCCL needs CUDA devices, got {d:?}")));
        };
        let candle_core::DeviceLocation::Cuda { gpu_id } = d.location() else {
            return Err(ReduceError::Nccl(format!("NCCL needs CUDA devices, got {d:?}")));
        };
        ordinals.push(gpu_id as c_int);
        streams.push(c.cuda_stream());
    }
    let mut comms: Vec<Comm> = vec![std::ptr::null_mut(); devices.len()];
    // SAFETY: `comms` has room for one communicator per ordinal.
    check(lib, "ncclCommInitAll", unsafe { (lib.init_all)(comms.as_mut_ptr(), ordinals.len() as c_int, ordinals.as_ptr()) })?;
    let size = devices.len();
    Ok(comms
        .into_iter()
        .zip(streams)
        .enumerate()
        .map(|(rank, (comm, stream))| NcclReduce { comm: Owned { lib, comm }, stream, world: World { rank, size } })
        .collect())
}

impl NcclReduce {
    /// In-place sum of `n` elements at device address `ptr` on this rank's stream.
    fn all_reduce(&self, ptr: u64, n: usize, dtype: c_int) -> Result<(), ReduceError> {
        self.stream.context().bind_to_thread().map_err(|e| ReduceError::Nccl(format!("binding the CUDA context: {e}")))?;
        let p = ptr as *mut c_void;
        let (lib, comm, s) = (self.comm.lib, self.comm.comm, self.stream.cu_stream() as *mut c_void);
        // SAFETY: `ptr` addresses `n` elements of `dtype` on this rank's device, alive until the
        // caller synchronises the stream.
        check(lib, "ncclAllReduce", unsafe { (lib.all_reduce)(p, p, n, dtype, NCCL_SUM, comm, s) })
    }

    fn cuda(e: impl std::fmt::Display) -> ReduceError {
        ReduceError::Nccl(format!("CUDA: {e}"))
    }
}

impl GradReduce for NcclReduce {
    fn world(&self) -> World {
        self.world
    }

    fn sum_f32(&mut self, buf: &mut [f32]) -> Result<(), ReduceError> {
        let mut d = self.stream.clone_htod(&*buf).map_err(Self::cuda)?;
        {
            let (p, _g) = d.device_ptr_mut(&self.stream);
            self.all_reduce(p, buf.len(), NCCL_FLOAT32)?;
        }
        self.stream.memcpy_dtoh(&d, buf).map_err(Self::cuda)?;
        self.stream.synchronize().map_err(Self::cuda)
    }

    fn sum_f64(&mut self, buf: &mut [f64]) -> Result<(), ReduceError> {
        let mut d = self.stream.clone_htod(&*buf).map_err(Self::cuda)?;
        {
            let (p, _g) = d.device_ptr_mut(&self.stream);
            self.all_reduce(p, buf.len(), NCCL_FLOAT64)?;
        }
        self.stream.memcpy_dtoh(&d, buf).map_err(Self::cuda)?;
        self.stream.synchronize().map_err(Self::cuda)
    }

    fn sum_tensor(&mut self, t: &Tensor) -> candle_core::Result<Tensor> {
        // A fresh contiguous f32 copy, summed in place on the device: no host round trip.
        let out = t.to_dtype(DType::F32)?.flatten_all()?.copy()?;
        {
            let (storage, layout) = out.storage_and_layout();
            let Storage::Cuda(s) = &*storage else { candle_core::bail!("sum_tensor: expected a CUDA tensor") };
            let slice = s.as_cuda_slice::<f32>()?;
            let (p, _g) = slice.device_ptr(&self.stream);
            let p = p + (layout.start_offset() * std::mem::size_of::<f32>()) as u64;
            self.all_reduce(p, out.elem_count(), NCCL_FLOAT32).map_err(candle_core::Error::wrap)?;
        }
        out.reshape(t.shape())
    }
}
