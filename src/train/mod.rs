//! Training machinery that is not model math: AdamW and schedules ([`optim`]), f16 loss scaling
//! ([`scaler`]), atomic checkpoints ([`checkpoint`]), the deterministic, resumable loop
//! ([`trainer`]) and data-parallel training over several devices ([`parallel`]).

pub mod checkpoint;
pub mod optim;
pub mod parallel;
pub mod scaler;
pub mod trainer;
