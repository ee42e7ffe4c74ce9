//! The `rollcall` command: the embedded server and its command-line client.

fn main() -> std::process::ExitCode {
    rollcall_cli::main()
}
