//! `surgemq`, the SurgeMQ broker. Everything lives in the library (`surgemq_broker::app`), so
//! tests can reach it.

fn main() -> std::process::ExitCode {
    surgemq_broker::app::main()
}
