//! One deploy at a time per Cloud Run service: two concurrent rollouts of
//! one service would race on its traffic and on what "previous revision"
//! means for a rollback. The lock is taken before a Deploy is accepted and
//! released when its run ends, however it ends.
//!
//! It is held in this process. When several daemons share the work, the
//! same `try_acquire` contract is to be met by the shared store (a lease row
//! or an advisory lock keyed by [`ServiceKey`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::model::Target;

/// The service a deploy changes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    pub project: String,
    pub region: String,
    pub service: String,
}

impl From<&Target> for ServiceKey {
    fn from(t: &Target) -> Self {
        Self {
            project: t.project.clone(),
            region: t.region.clone(),
            service: t.service.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a deploy of {service} in {project}/{region} is already running (deployment {holder}); deploy again once it has finished", service = .key.service, project = .key.project, region = .key.region)]
pub struct Busy {
    pub key: ServiceKey,
    /// The deployment holding the lock.
    pub holder: String,
}

/// Which services have a deploy running, and which deployment it is.
#[derive(Debug, Default)]
pub struct DeployLocks {
    held: Mutex<HashMap<ServiceKey, String>>,
}

/// Held while a deploy runs; dropping it releases the service.
#[derive(Debug)]
pub struct DeployLock {
    locks: Arc<DeployLocks>,
    key: ServiceKey,
}

impl DeployLocks {
    pub fn try_acquire(
        self: &Arc<Self>,
        target: &Target,
        deployment_id: &str,
    ) -> Result<DeployLock, Busy> {
        let key = ServiceKey::from(target);
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(holder) = held.get(&key) {
            return Err(Busy {
                key,
                holder: holder.clone(),
            });
        }
        held.insert(key.clone(), deployment_id.to_string());
        Ok(DeployLock {
            locks: self.clone(),
            key,
        })
    }
}

impl Drop for DeployLock {
    fn drop(&mut self) {
        let mut held = self.locks.held.lock().unwrap_or_else(|p| p.into_inner());
        held.remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(service: &str) -> Target {
        Target {
            project: "p".into(),
            region: "us-central1".into(),
            service: service.into(),
        }
    }

    #[test]
    fn one_deploy_per_service_until_released() {
        let locks = Arc::new(DeployLocks::default());
        let first = locks.try_acquire(&target("api"), "d1").expect("free");
        let busy = locks.try_acquire(&target("api"), "d2").expect_err("held");
        assert_eq!(busy.holder, "d1");
        assert!(busy.to_string().contains("api in p/us-central1"), "{busy}");
        // Another service is independent.
        let _other = locks.try_acquire(&target("web"), "d3").expect("free");
        drop(first);
        locks.try_acquire(&target("api"), "d4").expect("released");
    }
}
