//! The deploy stage: a new Cloud Run revision of the built image, with the
//! request's runtime settings, and the invoker binding.

use std::collections::BTreeMap;

use super::cloud::{Rollout, ServiceSpec};
use super::error::StageError;
use super::event::{Reporter, Stage};
use super::{Deployment, Pipeline};

impl Pipeline {
    pub(crate) async fn stage_deploy(
        &self,
        d: &mut Deployment,
        events: &Reporter,
    ) -> Result<(), StageError> {
        let target = d.request.target.clone();
        let cloud_err = |what: String| {
            move |source| StageError::Cloud {
                what,
                attempts: 1,
                source,
            }
        };
        let image = d
            .build
            .as_ref()
            .map(|b| b.image.clone())
            .unwrap_or_default();
        let existing = self
            .cloud
            .run_service(&target)
            .await
            .map_err(cloud_err(format!(
                "reading Cloud Run service {}",
                target.service
            )))?;
        d.previous_revision = existing.as_ref().and_then(|s| s.serving_revision());
        match &d.previous_revision {
            Some(prev) => {
                events
                    .progress(
                        Stage::Deploy,
                        format!("updating {} (serving {prev})", target.service),
                    )
                    .await
            }
            None => {
                events
                    .progress(Stage::Deploy, format!("creating {}", target.service))
                    .await
            }
        }
        let spec = ServiceSpec {
            target: target.clone(),
            image,
            runtime: d.request.runtime.clone(),
            labels: BTreeMap::from([("managed-by".to_string(), "deployd".to_string())]),
        };
        let rollout = self
            .cloud
            .deploy_service(&spec, existing.is_some())
            .await
            .map_err(cloud_err(format!(
                "deploying Cloud Run service {} in {}/{}",
                target.service, target.project, target.region
            )))?;
        let service = match rollout {
            Rollout::Ready(s) => s,
            Rollout::Failed { message, service } => {
                let revision = service
                    .as_ref()
                    .and_then(|s| s.latest_created_revision.clone())
                    .unwrap_or_else(|| "(new)".into());
                d.revision = Some(revision.clone());
                return Err(StageError::RevisionNotReady {
                    service: target.service,
                    revision,
                    message,
                });
            }
        };
        d.revision = service.latest_ready_revision.clone();
        d.url = Some(service.uri.clone());
        self.cloud
            .set_public_invoker(&target, d.request.runtime.allow_unauthenticated)
            .await
            .map_err(cloud_err(format!(
                "setting the invoker policy of {}",
                target.service
            )))?;
        events
            .progress(
                Stage::Deploy,
                format!(
                    "revision {} is ready at {}",
                    d.revision.as_deref().unwrap_or("?"),
                    service.uri
                ),
            )
            .await;
        Ok(())
    }
}
