//! `surgemq-client`: `pub`, `sub` and `bench`. Everything lives in the library
//! (`surgemq_client::app`), so tests can reach it.

fn main() -> std::process::ExitCode {
    surgemq_client::app::main()
}
