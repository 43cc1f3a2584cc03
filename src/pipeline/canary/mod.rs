//! Progressive delivery: the candidate takes traffic step by step, each
//! step held for its bake time while the candidate is judged against
//! absolute limits and against the stable revision; a failed (or, by
//! policy, inconclusive) step aborts the rollout.

pub(crate) mod run;
pub mod spec;
pub mod verdict;

pub use run::{CanaryProgress, StepAction, StepResult, STABLE_TAG};
