//! .NET: a csproj published to one assembly.

use super::*;

pub(super) fn dotnet(s: &mut Src) -> Result<BuildPlan, AnalyzeError> {
    let proj = s
        .files_with_ext("", ".csproj")
        .into_iter()
        .next()
        .unwrap_or_default();
    let text = s.read(&proj).unwrap_or_default();
    let version = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("<TargetFramework>net"))
        .and_then(|v| version_from(v, 2))
        .unwrap_or_else(|| "8.0".into());
    let assembly = text
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("<AssemblyName>")
                .and_then(|v| v.strip_suffix("</AssemblyName>"))
                .map(str::to_string)
        })
        .unwrap_or_else(|| proj.trim_end_matches(".csproj").to_string());
    let assembly = safe_name(&proj, &assembly)?;
    let proj = safe_name("project file", &proj)?;
    s.note(&proj, None, format!(".NET {version}, assembly {assembly}"));
    let web = text.contains("Microsoft.NET.Sdk.Web");
    Ok(BuildPlan {
        version: Some(version),
        framework: web.then(|| "aspnetcore".into()),
        package_manager: Some("nuget".into()),
        install: vec![format!("dotnet restore {proj}")],
        build: vec![format!(
            "dotnet publish {proj} -c Release -o /out --no-restore"
        )],
        start: format!("dotnet /app/{assembly}.dll"),
        dependency_files: vec![proj],
        artifact: Some(assembly),
        ..BuildPlan::new(Language::Dotnet)
    })
}
