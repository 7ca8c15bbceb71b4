//! `lightningdot`: the command-line entry point. Thin: parsing lives in `cli`, work in the library.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
