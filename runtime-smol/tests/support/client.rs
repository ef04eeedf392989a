//! Client scenarios, generic over the runtime: the driver's async client against the same
//! runtime's server on 127.0.0.1 — round trips at every QoS, no deadlock when an application
//! publishes to its own subscription without reading, TLS with a client certificate, and the
//! first connection's failure reported. (The tokio client's `tests/client_server.rs`, on
//! futures-io runtimes.)

use std::net::SocketAddr;

use futures_rustls::rustls::pki_types::ServerName;
use surgemq_core::broker::{AuthMode, BrokerConfig};
use surgemq_core::client::{ClientConfig, ConfigError};
use surgemq_core::codec::{PubAckReason, QoS, SubAckReason, SubscriptionOptions};
use surgemq_core::string::MqttString;
use surgemq_core::topic::{TopicFilter, TopicName};
use surgemq_smol::driver::{AsyncClientError, Client, ClientOptions, Listener, Server, TcpRuntime};

use super::{Running, any_port, bounded, client_tls, self_signed, server_tls};

fn broker_config() -> BrokerConfig {
    BrokerConfig {
        auth: AuthMode::LoopbackOnly,
        sys_interval: None,
        ..BrokerConfig::default()
    }
}

async fn start<R: TcpRuntime + Default>(listener: Listener) -> Running {
    let runtime = R::default();
    let server = Server::with_runtime(runtime.clone(), broker_config(), vec![listener]);
    Running::start(server, &runtime).await
}

fn options(address: SocketAddr, id: &str) -> ClientOptions {
    ClientOptions::new(
        address.to_string(),
        ClientConfig::new(MqttString::new(id).unwrap()),
    )
}

fn sub(filter: &str, qos: QoS) -> Vec<(TopicFilter, SubscriptionOptions)> {
    vec![(
        TopicFilter::parse(filter).unwrap(),
        SubscriptionOptions::qos(qos),
    )]
}

/// The handle goes anywhere, and so do its calls' futures (a spawned task needs `Send`).
fn usable_from_any_task<R: TcpRuntime>(client: &Client<R>) {
    fn clone_send_sync<T: Clone + Send + Sync>(_: &T) {}
    fn send<T: Send>(_: T) {}
    clone_send_sync(client);
    send(client.publish(TopicName::parse("t/x").unwrap(), "", QoS::AtMostOnce, false));
    send(client.subscribe(sub("t/#", QoS::AtMostOnce)));
    send(client.unsubscribe(vec![TopicFilter::parse("t/#").unwrap()]));
    send(client.disconnect());
}

/// A subscriber at QoS 2 and a publisher: one message at each QoS arrives, in order; each
/// publish resolves with success.
async fn exchange_at_every_qos<R: TcpRuntime + Default>(
    subscriber: ClientOptions,
    publisher: ClientOptions,
) {
    let (subscriber, mut messages) = Client::<R>::connect(subscriber).await.unwrap();
    let granted = subscriber
        .subscribe(sub("t/#", QoS::ExactlyOnce))
        .await
        .unwrap();
    assert_eq!(granted, [SubAckReason::GrantedQoS2]);
    let (publisher, _) = Client::<R>::connect(publisher).await.unwrap();
    usable_from_any_task(&publisher);
    for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        let reason = publisher
            .publish(TopicName::parse("t/x").unwrap(), vec![i as u8], qos, false)
            .await
            .unwrap();
        assert_eq!(reason, PubAckReason::Success);
    }
    for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        let m = messages.recv().await.unwrap();
        assert_eq!(&m.publish.payload[..], &[i as u8]);
        assert_eq!(m.publish.topic.as_str(), "t/x");
        assert_eq!(m.publish.qos, qos);
    }
    publisher.disconnect().await;
    subscriber.disconnect().await;
    assert!(
        messages.recv().await.is_none(),
        "the stream ends after disconnect"
    );
}

pub(crate) async fn round_trip_at_every_qos<R: TcpRuntime + Default>() {
    bounded::<R>("client round trip", async {
        let running = start::<R>(Listener::tcp(any_port())).await;
        let address = running.addr;
        exchange_at_every_qos::<R>(options(address, "sub"), options(address, "pub")).await;
        running.stop().await;
    })
    .await;
}

pub(crate) async fn publishing_to_an_unread_own_subscription_never_deadlocks<
    R: TcpRuntime + Default,
>() {
    bounded::<R>("500 QoS 1 to an unread own subscription", async {
        let running = start::<R>(Listener::tcp(any_port())).await;
        let mut opts = options(running.addr, "self");
        opts.message_buffer = 8;
        let (client, mut messages) = Client::<R>::connect(opts).await.unwrap();
        client
            .subscribe(sub("loop", QoS::AtLeastOnce))
            .await
            .unwrap();
        // 500 messages come back to us while nobody reads them: our own publishes must still
        // complete (flow control holds back the broker, not our acknowledgement reading).
        for i in 0..500u32 {
            client
                .publish(
                    TopicName::parse("loop").unwrap(),
                    i.to_be_bytes().to_vec(),
                    QoS::AtLeastOnce,
                    false,
                )
                .await
                .unwrap();
        }
        // Then every one of them arrives, in order.
        for i in 0..500u32 {
            let m = messages.recv().await.unwrap();
            assert_eq!(&m.publish.payload[..], &i.to_be_bytes());
        }
        client.disconnect().await;
        running.stop().await;
    })
    .await;
}

pub(crate) async fn tls_round_trip_with_client_certificate<R: TcpRuntime + Default>() {
    bounded::<R>("client TLS round trip", async {
        let (server_cert, server_key) = self_signed("localhost");
        let (client_cert, client_key) = self_signed("alice");
        // The server requires a client certificate signed by `client_cert`.
        let tls = server_tls(server_cert.clone(), server_key, Some(client_cert.clone()));
        let running = start::<R>(Listener::tls(any_port(), tls)).await;
        let client_config = client_tls(server_cert, Some((client_cert, client_key)));
        let name = ServerName::try_from("localhost").unwrap();
        let tls_options =
            |id| options(running.addr, id).with_tls(client_config.clone(), name.clone());
        exchange_at_every_qos::<R>(tls_options("sub"), tls_options("pub")).await;
        running.stop().await;
    })
    .await;
}

/// A loopback address nobody listens on any more.
fn nobody_listens() -> SocketAddr {
    std::net::TcpListener::bind(any_port())
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A configuration the client could not connect with (MQTT 3.1.1, empty client identifier,
/// no clean session: 3.1.1 [MQTT-3.1.3-7]) is refused before any connection is tried: the
/// error is the configuration's, not the I/O error of the port nobody listens on.
pub(crate) async fn a_configuration_that_cannot_connect_is_refused_first<
    R: TcpRuntime + Default,
>() {
    bounded::<R>("invalid configuration", async {
        let mut opts = options(nobody_listens(), "");
        opts.config.clean_start = false;
        opts.config.reconnect = None;
        match Client::<R>::connect(opts).await {
            Err(AsyncClientError::Config(ConfigError::EmptyClientIdNeedsCleanSession)) => {}
            other => panic!("expected a configuration error, got {other:?}"),
        }
    })
    .await;
}

pub(crate) async fn first_connection_failure_is_returned_without_reconnect<
    R: TcpRuntime + Default,
>() {
    bounded::<R>("connection refused", async {
        let mut opts = options(nobody_listens(), "lonely");
        opts.config.reconnect = None;
        match Client::<R>::connect(opts).await {
            Err(AsyncClientError::Io(_)) => {}
            other => panic!("expected an I/O error, got {other:?}"),
        }
    })
    .await;
}
