//! The `pdsup` binary: parse the command line, run, turn the outcome into an exit code.

fn main() -> std::process::ExitCode {
    pdsup::cli::main()
}
