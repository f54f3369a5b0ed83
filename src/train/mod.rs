//! Training machinery that is not model math: AdamW and schedules ([`optim`]), f16 loss scaling
//! ([`scaler`]), atomic checkpoints ([`checkpoint`]) and the deterministic, resumable loop
//! ([`trainer`]).

pub mod checkpoint;
pub mod optim;
pub mod scaler;
pub mod trainer;
