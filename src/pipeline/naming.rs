//! Names deployd gives the resources it creates, in one place so preflight
//! checks exactly what build and deploy will use.

use super::model::Target;

/// `example.com:proj` is written `example.com/proj` in image paths.
pub fn project_path(project: &str) -> String {
    project.replace(':', "/")
}

/// One bucket per project and region for source archives and build logs.
/// Bucket names are global, at most 63 characters, and may not contain
/// "google".
pub fn source_bucket(project: &str, region: &str) -> String {
    let p = project.replace([':', '.'], "-").replace("google", "elgoog");
    let mut name = format!("deployd-{p}-{region}");
    name.truncate(63);
    name.trim_end_matches('-').to_string()
}

/// The image repository path, without tag.
pub fn image(target: &Target, repository: &str) -> String {
    format!(
        "{}-docker.pkg.dev/{}/{}/{}",
        target.region,
        project_path(&target.project),
        repository,
        target.service
    )
}

/// Content-addressed: an unchanged source maps to the same object.
pub fn source_object(service: &str, sha256: &str) -> String {
    format!("sources/{service}/{sha256}.tgz")
}

pub const LOGS_PREFIX: &str = "logs";

/// The Cloud Build log object for a build whose logsBucket is
/// `gs://{bucket}/{LOGS_PREFIX}`.
pub fn log_object(build_id: &str) -> String {
    format!("{LOGS_PREFIX}/log-{build_id}.txt")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_names_are_valid() {
        assert_eq!(
            source_bucket("acme-prod", "us-central1"),
            "deployd-acme-prod-us-central1"
        );
        assert_eq!(
            source_bucket("example.com:google-prod", "europe-west4"),
            "deployd-example-com-elgoog-prod-europe-west4"
        );
        let long = source_bucket(&"a".repeat(30), "northamerica-northeast2");
        assert!(long.len() <= 63 && !long.ends_with('-'));
    }
}
