#[tokio::main]
async fn main() -> std::process::ExitCode {
    match deployd::cli::main().await {
        Ok(code) => std::process::ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("deployd: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
