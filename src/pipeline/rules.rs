//! The syntax each request value must have, checked before anything runs.
//!
//! Google's own rules where it documents them (project ids, service-account
//! emails, Cloud Run's env and resource limits), git's for refs. A value that
//! passes here contains nothing that could reach a URL path, a command line
//! or a shell as anything but data; the places that use it still encode
//! (`gcp::http::segment`) or quote (`shell::quote`) it.

/// How much of a rejected value an error message repeats.
const SHOWN_MAX: usize = 64;

/// A value as an error shows it: escaped, and cut after [`SHOWN_MAX`]
/// characters so a huge value cannot inflate the reply.
pub fn shown(s: &str) -> String {
    let mut out: String = s.chars().take(SHOWN_MAX).collect();
    let cut = out.len() < s.len();
    out = format!("{out:?}");
    if cut {
        out.push_str(&format!("... ({} bytes)", s.len()));
    }
    out
}

/// Cuts `s` to at most `max` bytes, on a character boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn lower_alnum_dash(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A DNS label of lowercase letters, digits and inner hyphens.
fn dns_label(s: &str) -> bool {
    (1..=63).contains(&s.len()) && lower_alnum_dash(s) && !s.starts_with('-') && !s.ends_with('-')
}

/// Project ids: 6-30 characters, lowercase letters, digits and hyphens,
/// starting with a letter and not ending with a hyphen.
pub fn project_id(id: &str) -> bool {
    (6..=30).contains(&id.len())
        && id.starts_with(|c: char| c.is_ascii_lowercase())
        && !id.ends_with('-')
        && lower_alnum_dash(id)
}

/// A project id, or a domain-scoped one (`example.com:my-project`).
pub fn project(s: &str) -> bool {
    match s.split_once(':') {
        None => project_id(s),
        Some((domain, id)) => {
            domain.len() <= 253
                && domain.contains('.')
                && domain.split('.').all(dns_label)
                && project_id(id)
        }
    }
}

/// Service-account emails: `NAME@DOMAIN` where the domain is Google's
/// (`PROJECT.iam.gserviceaccount.com`, `developer.gserviceaccount.com`,
/// `appspot.gserviceaccount.com`, the `gcp-sa-*` service agents...).
pub fn service_account_email(s: &str) -> Result<(), String> {
    let Some((local, domain)) = s.split_once('@') else {
        return Err(format!("{} is not an email address", shown(s)));
    };
    let local_ok = (1..=64).contains(&local.len())
        && lower_alnum_dash(local)
        && !local.starts_with('-')
        && !local.ends_with('-');
    let domain_ok = domain.len() <= 253
        && domain.ends_with(".gserviceaccount.com")
        && domain.split('.').all(dns_label);
    if local_ok && domain_ok {
        Ok(())
    } else {
        Err(format!(
            "{} is not a service account email (NAME@PROJECT.iam.gserviceaccount.com)",
            shown(s)
        ))
    }
}

/// Cloud Run's limits on environment variables.
pub const MAX_ENV_VARS: usize = 1000;
pub const MAX_ENV_VALUE_BYTES: usize = 32 * 1024;
const MAX_ENV_NAME_BYTES: usize = 256;
/// Set by Cloud Run inside every container.
pub const RESERVED_ENV: &[&str] = &["PORT", "K_SERVICE", "K_REVISION", "K_CONFIGURATION"];

/// Environment variable names as Cloud Run (Knative) accepts them:
/// letters, digits, `_`, `.` and `-`, not starting with a digit; not
/// reserved, not `X_GOOGLE_*`.
pub fn env_name(name: &str) -> Result<(), String> {
    let ok = (1..=MAX_ENV_NAME_BYTES).contains(&name.len())
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if !ok {
        return Err(format!(
            "{} is not an environment variable name (letters, digits, '_', '.', '-', not starting with a digit)",
            shown(name)
        ));
    }
    if RESERVED_ENV.contains(&name) {
        return Err(format!("{name} is reserved: Cloud Run sets it"));
    }
    if name.starts_with("X_GOOGLE_") {
        return Err(format!("{name}: the X_GOOGLE_ prefix is reserved"));
    }
    Ok(())
}

pub fn env_value(name: &str, value: &str) -> Result<(), String> {
    if value.len() > MAX_ENV_VALUE_BYTES {
        return Err(format!(
            "the value of {name} is {} bytes; Cloud Run allows {MAX_ENV_VALUE_BYTES}",
            value.len()
        ));
    }
    if value.contains('\0') {
        return Err(format!("the value of {name} contains a NUL byte"));
    }
    Ok(())
}

/// Secret Manager secret ids (`[A-Za-z0-9_-]{1,255}`), or the full
/// `projects/PROJECT/secrets/ID` name.
pub fn secret(s: &str) -> Result<(), String> {
    let id_ok = |id: &str| {
        (1..=255).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    let ok = match s.split('/').collect::<Vec<_>>().as_slice() {
        [id] => id_ok(id),
        ["projects", p, "secrets", id] => {
            (project(p) || (!p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))) && id_ok(id)
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{} is not a secret id (letters, digits, '_', '-') or projects/PROJECT/secrets/ID",
            shown(s)
        ))
    }
}

/// `latest`, or a version number.
pub fn secret_version(v: &str) -> Result<(), String> {
    let ok = v.is_empty()
        || v == "latest"
        || (v.len() <= 10 && !v.starts_with('0') && v.bytes().all(|b| b.is_ascii_digit()));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{} is not \"latest\" or a version number",
            shown(v)
        ))
    }
}

/// CPU limits Cloud Run accepts: 1, 2, 4, 6 or 8 whole CPUs, or a fraction
/// below one (`0.5`, `500m`) of at least 0.08.
pub fn cpu(s: &str) -> Result<(), String> {
    let millis = if let Some(m) = s.strip_suffix('m') {
        m.parse::<u32>()
            .ok()
            .filter(|_| m.bytes().all(|b| b.is_ascii_digit()))
    } else if s.bytes().all(|b| b.is_ascii_digit() || b == b'.') && s.len() <= 8 {
        s.parse::<f64>().ok().map(|f| (f * 1000.0).round() as u32)
    } else {
        None
    };
    let ok = match millis {
        Some(m) if m < 1000 => m >= 80,
        Some(m) => [1000, 2000, 4000, 6000, 8000].contains(&m),
        None => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{} is not a Cloud Run CPU limit (1, 2, 4, 6, 8, or a fraction such as 0.5 or 500m)",
            shown(s)
        ))
    }
}

/// Memory limits: a quantity with a binary or decimal suffix, from 128Mi
/// to 32Gi, as Cloud Run allows.
pub fn memory(s: &str) -> Result<(), String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let scale: Option<u64> = match unit {
        "Ki" => Some(1 << 10),
        "Mi" => Some(1 << 20),
        "Gi" => Some(1 << 30),
        "k" => Some(1_000),
        "M" => Some(1_000_000),
        "G" => Some(1_000_000_000),
        "" => Some(1),
        _ => None,
    };
    let bytes = match (digits.parse::<u64>(), scale) {
        (Ok(n), Some(k)) if digits.len() <= 12 => n.checked_mul(k),
        _ => None,
    };
    match bytes {
        Some(b) if (128 << 20..=32 << 30).contains(&b) => Ok(()),
        Some(_) => Err(format!(
            "{} is outside Cloud Run's memory range (128Mi to 32Gi)",
            shown(s)
        )),
        None => Err(format!(
            "{} is not a memory quantity such as 512Mi or 2Gi",
            shown(s)
        )),
    }
}

/// Serverless VPC Access connectors: a short name (lowercase letters,
/// digits and hyphens, at most 25, starting with a letter) or
/// `projects/P/locations/R/connectors/NAME`.
pub fn vpc_connector(s: &str) -> Result<(), String> {
    let name_ok = |n: &str| {
        (1..=25).contains(&n.len())
            && n.starts_with(|c: char| c.is_ascii_lowercase())
            && !n.ends_with('-')
            && lower_alnum_dash(n)
    };
    let ok = match s.split('/').collect::<Vec<_>>().as_slice() {
        [name] => name_ok(name),
        ["projects", p, "locations", r, "connectors", name] => {
            project(p) && dns_label(r) && name_ok(name)
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{} is not a VPC connector name or projects/P/locations/R/connectors/NAME",
            shown(s)
        ))
    }
}

/// A git ref as `git check-ref-format` accepts it (a branch, tag or full
/// ref name), or a commit id of 40 or 64 hex digits. Never anything that
/// git could read as an option.
/// An idempotency key: at most 128 of `[A-Za-z0-9._:-]` (a UUID fits).
pub fn request_id(v: &str) -> Result<(), String> {
    if v.len() > 128 {
        return Err(format!("{} is longer than 128 characters", shown(v)));
    }
    if !v
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'))
    {
        return Err(format!(
            "{} may contain only letters, digits and ._:-",
            shown(v)
        ));
    }
    Ok(())
}

/// A deployment id as deployd makes them (a UUID).
pub fn deployment_id(v: &str) -> Result<(), String> {
    if v.is_empty() {
        return Err("is required".into());
    }
    if v.len() > 64 || !v.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        return Err(format!("{} is not a deployment id", shown(v)));
    }
    Ok(())
}

pub fn git_ref(r: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("{} is not a git ref: {why}", shown(r)));
    if r.is_empty() || r.len() > 255 {
        return bad("a ref has 1 to 255 characters");
    }
    if r.starts_with('-') {
        return bad("it starts with '-'");
    }
    let hex = r.bytes().all(|b| b.is_ascii_hexdigit());
    if hex && (r.len() == 40 || r.len() == 64) {
        return Ok(());
    }
    if r == "@" {
        return bad("'@' alone is not a ref");
    }
    if let Some(c) = r
        .chars()
        .find(|c| c.is_control() || " ~^:?*[\\".contains(*c))
    {
        return bad(&format!("it contains {c:?}"));
    }
    if r.contains("..") || r.contains("@{") || r.contains("//") {
        return bad("it contains '..', '@{' or '//'");
    }
    if r.starts_with('/') || r.ends_with('/') || r.ends_with('.') {
        return bad("it starts or ends with '/', or ends with '.'");
    }
    if r.split('/')
        .any(|c| c.starts_with('.') || c.ends_with(".lock"))
    {
        return bad("a component starts with '.' or ends with '.lock'");
    }
    Ok(())
}

/// Headers a probe may not choose: the connection's own and the host.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
];
pub const MAX_HEADERS: usize = 32;
pub const MAX_HEADER_VALUE_BYTES: usize = 8 * 1024;

pub fn header(name: &str, value: &str) -> Result<(), String> {
    let name_ok = (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
    if !name_ok {
        return Err(format!("{} is not a header name", shown(name)));
    }
    if HOP_BY_HOP.iter().any(|h| h.eq_ignore_ascii_case(name)) {
        return Err(format!(
            "{name} is a connection header, which deployd sets itself"
        ));
    }
    if value.len() > MAX_HEADER_VALUE_BYTES {
        return Err(format!(
            "the value of {name} is {} bytes; at most {MAX_HEADER_VALUE_BYTES}",
            value.len()
        ));
    }
    if value.bytes().any(|b| b == 0 || b == b'\r' || b == b'\n') {
        return Err(format!(
            "the value of {name} contains a NUL, CR or LF character"
        ));
    }
    Ok(())
}

/// A URL path: starts with '/', printable ASCII without spaces or '#'.
pub fn url_path(p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!("{} must start with '/'", shown(p)));
    }
    if p.len() > 2048 {
        return Err(format!("{} is over 2048 bytes", shown(p)));
    }
    if p.bytes().any(|b| !(0x21..0x7f).contains(&b) || b == b'#') {
        return Err(format!(
            "{} must be printable ASCII without spaces or '#' (percent-encode others)",
            shown(p)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projects() {
        for ok in ["my-project", "example.com:my-project", "abcdef"] {
            assert!(project(ok), "{ok}");
        }
        for bad in [
            "x/../my-project",
            "a/b:my-project",
            "ex?ample.com:my-project",
            "example.com:my-project:x",
            "My-project",
            "1project",
            "proj",
            "project-",
            ":my-project",
            "example:my-project",
        ] {
            assert!(!project(bad), "{bad}");
        }
    }

    #[test]
    fn service_accounts() {
        for ok in [
            "runner@my-project.iam.gserviceaccount.com",
            "123456789012-compute@developer.gserviceaccount.com",
            "my-project@appspot.gserviceaccount.com",
            "service-123@gcp-sa-cloudbuild.iam.gserviceaccount.com",
        ] {
            assert!(service_account_email(ok).is_ok(), "{ok}");
        }
        for bad in [
            "a/b@my-project.iam.gserviceaccount.com",
            "runner@evil.com",
            "runner@x/../iam.gserviceaccount.com",
            "runner",
            "Runner@my-project.iam.gserviceaccount.com",
            "runner@my-project.iam.gserviceaccount.com?x=1",
        ] {
            assert!(service_account_email(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn refs_follow_check_ref_format() {
        for ok in [
            "main",
            "release/v1.2",
            "v1.2.0",
            "refs/heads/main",
            "feature-x_y",
            &"a".repeat(40),
            &"0123456789abcdef".repeat(4),
        ] {
            assert!(git_ref(ok).is_ok(), "{ok}");
        }
        for bad in [
            "--upload-pack=touch /tmp/x",
            "-x",
            "a..b",
            "a b",
            "a~1",
            "a^",
            "a:b",
            "a?",
            "a*",
            "a[",
            "a\\b",
            "/a",
            "a/",
            "a.",
            "a/.b",
            "a.lock",
            "a@{1}",
            "@",
            "a//b",
            "a\nb",
            "",
        ] {
            assert!(git_ref(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cloud_run_resources() {
        for ok in ["1", "2", "4", "8", "0.5", "500m", "1000m", "0.08"] {
            assert!(cpu(ok).is_ok(), "{ok}");
        }
        for bad in ["abc", "1000", "3", "0.01", "-1", "1.5", "", "1e3"] {
            assert!(cpu(bad).is_err(), "{bad}");
        }
        for ok in ["512Mi", "2Gi", "128Mi", "32Gi", "1G"] {
            assert!(memory(ok).is_ok(), "{ok}");
        }
        for bad in [
            "lots",
            "64Mi",
            "33Gi",
            "",
            "1Ti",
            "5 Gi",
            "99999999999999999Gi",
        ] {
            assert!(memory(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn env_names() {
        for ok in ["APP_ENV", "_x", "a.b-c"] {
            assert!(env_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "1BAD",
            "A B",
            "A\0B",
            "CAFÉ",
            "",
            "A=B",
            "PORT",
            "K_SERVICE",
            "X_GOOGLE_Y",
        ] {
            assert!(env_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn echoed_values_are_bounded() {
        let huge = "x".repeat(1 << 20);
        let s = shown(&huge);
        assert!(s.len() < 100, "{s}");
        assert!(s.ends_with("(1048576 bytes)"));
        assert_eq!(shown("a\nb"), "\"a\\nb\"");
        assert_eq!(truncate("héllo", 2), "h");
    }
}

/// A container image reference as Docker reads one:
/// `[HOST[:PORT]/]PATH[:TAG][@sha256:DIGEST]`, lowercase path components.
/// It reaches Cloud Run's API and remediation commands, never a shell
/// unquoted.
pub fn image_ref(image: &str) -> Result<(), String> {
    static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let re = RE.get_or_init(|| {
        let component = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*";
        regex::Regex::new(&format!(
            r"^(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?(?::[0-9]+)?/)?{component}(?:/{component})*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})?(?:@sha256:[0-9a-f]{{64}})?$"
        ))
        .expect("a valid pattern")
    });
    if image.len() > 1024 || !re.is_match(image) {
        return Err(format!(
            "{} is not an image reference (HOST/PATH[:TAG][@sha256:DIGEST], e.g. us-docker.pkg.dev/my-project/repo/app:v1)",
            shown(image)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod image_ref_tests {
    use super::image_ref;

    #[test]
    fn image_references() {
        for ok in [
            "us-central1-docker.pkg.dev/demo-project/deployd/hello:v1",
            "us-central1-docker.pkg.dev/demo-project/deployd/hello@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "gcr.io/my-project/app",
            "nginx",
            "library/nginx:1.27-alpine",
            "localhost:5000/a/b_c:latest",
        ] {
            assert!(image_ref(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-oops",
            "Upper/Case",
            "a b",
            "x:tag:again",
            "repo/app@sha256:short",
            "$(reboot)",
            "gcr.io/p/app\n",
        ] {
            assert!(image_ref(bad).is_err(), "{bad:?}");
        }
    }
}
