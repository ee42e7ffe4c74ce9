//! `rollcall-loadgen`: see the library documentation.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match rollcall_loadgen::run(std::env::args().collect()).await {
        Ok(output) => {
            println!("{output}");
            std::process::ExitCode::SUCCESS
        }
        Err(error) => {
            if let Some(error) = error.downcast_ref::<clap::Error>() {
                error.exit();
            }
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
