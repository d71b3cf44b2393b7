//! The component-update transaction (docs/spec.md §4): the apply with its crash recovery and
//! the rollback of a failed apply ([`apply`]), `qx-update rollback` ([`rollback`]), the
//! on-disk journal ([`journal`]), the safe archive extractor ([`extract`]) and service restarts with effect verification ([`service`]). Every step is
//! written to the update log (`qx_core::UpdateLog`).

pub(crate) mod apply;
pub(crate) mod delta;
pub mod extract;
pub(crate) mod journal;
pub(crate) mod rollback;
pub(crate) mod service;

pub use apply::{
    lock, lock_holder, ApplyLock, ApplyOptions, ApplyReport, LockHolder, RecoveryReport,
};
pub use delta::DeltaUse;
pub use rollback::{RollbackOptions, RollbackPlan, RollbackStep};
