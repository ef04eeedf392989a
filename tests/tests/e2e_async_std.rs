//! End to end on async-std: the `surgemq` binary built with the async-std runtime, against
//! mosquitto_pub/sub, Paho C, Paho Python and raw sockets on 127.0.0.1. The scenarios are in
//! `surgemq_tests::e2e`; a missing client skips its test, or fails it with
//! `SURGEMQ_REQUIRE_INTEROP=1`.

use surgemq_tests::e2e::MqttVersion::{V31, V311};
use surgemq_tests::e2e::*;

const RUNTIME: Runtime = Runtime::AsyncStd;

#[test]
fn async_std_mosquitto_qos0_round_trip_v31() {
    mosquitto_round_trip(RUNTIME, 0, V31);
}

#[test]
fn async_std_mosquitto_qos0_round_trip_v311() {
    mosquitto_round_trip(RUNTIME, 0, V311);
}

#[test]
fn async_std_mosquitto_qos1_round_trip_v31() {
    mosquitto_round_trip(RUNTIME, 1, V31);
}

#[test]
fn async_std_mosquitto_qos1_round_trip_v311() {
    mosquitto_round_trip(RUNTIME, 1, V311);
}

#[test]
fn async_std_mosquitto_qos2_round_trip_v31() {
    mosquitto_round_trip(RUNTIME, 2, V31);
}

#[test]
fn async_std_mosquitto_qos2_round_trip_v311() {
    mosquitto_round_trip(RUNTIME, 2, V311);
}

#[test]
fn async_std_mosquitto_retained_set_and_clear() {
    mosquitto_retained_set_and_clear(RUNTIME);
}

#[test]
fn async_std_mosquitto_wildcards() {
    mosquitto_wildcards(RUNTIME);
}

#[test]
fn async_std_mosquitto_will_on_kill() {
    mosquitto_will_on_kill(RUNTIME);
}

#[test]
fn async_std_mosquitto_no_will_on_clean_disconnect() {
    mosquitto_no_will_on_clean_disconnect(RUNTIME);
}

#[test]
fn async_std_mosquitto_persistent_session() {
    mosquitto_persistent_session(RUNTIME);
}

#[test]
fn async_std_mosquitto_persistent_session_after_kill() {
    mosquitto_persistent_session_after_kill(RUNTIME);
}

#[test]
fn async_std_paho_c_qos0_round_trip() {
    paho_c_round_trip(RUNTIME, 0);
}

#[test]
fn async_std_paho_c_qos1_round_trip() {
    paho_c_round_trip(RUNTIME, 1);
}

#[test]
fn async_std_paho_c_qos2_round_trip() {
    paho_c_round_trip(RUNTIME, 2);
}

#[test]
fn async_std_paho_python_qos0_round_trip() {
    paho_python_round_trip(RUNTIME, 0);
}

#[test]
fn async_std_paho_python_qos1_round_trip() {
    paho_python_round_trip(RUNTIME, 1);
}

#[test]
fn async_std_paho_python_qos2_round_trip() {
    paho_python_round_trip(RUNTIME, 2);
}

#[test]
fn async_std_tls_server_certificate() {
    tls_server_certificate(RUNTIME);
}

#[test]
fn async_std_tls_client_certificate() {
    tls_client_certificate(RUNTIME);
}

#[test]
fn async_std_tls_wrong_ca_is_refused() {
    tls_wrong_ca_is_refused(RUNTIME);
}

#[test]
fn async_std_password_file_right_password() {
    password_file_right_password(RUNTIME);
}

#[test]
fn async_std_password_file_wrong_password() {
    password_file_wrong_password(RUNTIME);
}

#[test]
fn async_std_bad_input_garbage() {
    bad_input_garbage(RUNTIME);
}

#[test]
fn async_std_bad_input_oversize_remaining_length() {
    bad_input_oversize_remaining_length(RUNTIME);
}

#[test]
fn async_std_bad_input_connect_byte_by_byte() {
    bad_input_connect_byte_by_byte(RUNTIME);
}

#[test]
fn async_std_bad_input_connect_timeout() {
    bad_input_connect_timeout(RUNTIME);
}

#[test]
fn async_std_mosquitto_session_survives_restart() {
    mosquitto_session_survives_restart(RUNTIME);
}

#[test]
fn async_std_retained_survives_restart() {
    retained_survives_restart(RUNTIME);
}

#[test]
fn async_std_damaged_store_is_refused_with_advice() {
    damaged_store_is_refused_with_advice(RUNTIME);
}

#[test]
fn async_std_memory_mode_keeps_nothing() {
    memory_mode_keeps_nothing(RUNTIME);
}
