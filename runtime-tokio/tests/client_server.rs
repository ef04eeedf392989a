//! The tokio client against the tokio server on 127.0.0.1: round trips at every QoS, and no
//! deadlock when an application publishes to its own subscription without reading messages.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::Duration;

use surgemq_core::codec::{PubAckReason, QoS, SubAckReason, SubscriptionOptions};
use surgemq_core::string::MqttString;
use surgemq_core::topic::{TopicFilter, TopicName};
use surgemq_tokio::{AsyncClientError, Client, ClientConfig, ClientOptions, ConfigError};

fn options(address: &str, id: &str) -> ClientOptions {
    ClientOptions::new(address, ClientConfig::new(MqttString::new(id).unwrap()))
}

fn sub(filter: &str, qos: QoS) -> Vec<(TopicFilter, SubscriptionOptions)> {
    vec![(
        TopicFilter::parse(filter).unwrap(),
        SubscriptionOptions::qos(qos),
    )]
}

#[tokio::test]
async fn round_trip_at_every_qos() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let (address, shutdown, server) = common::loopback_broker().await;
        let address = address.to_string();
        let (subscriber, mut messages) = Client::connect(options(&address, "sub")).await.unwrap();
        let granted = subscriber
            .subscribe(sub("t/#", QoS::ExactlyOnce))
            .await
            .unwrap();
        assert_eq!(granted, [SubAckReason::GrantedQoS2]);
        let (publisher, _) = Client::connect(options(&address, "pub")).await.unwrap();
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
        for i in 0..3u8 {
            let m = messages.recv().await.unwrap();
            assert_eq!(&m.publish.payload[..], &[i]);
            assert_eq!(m.publish.topic.as_str(), "t/x");
        }
        publisher.disconnect().await;
        subscriber.disconnect().await;
        shutdown.shutdown();
        server.await.unwrap().unwrap();
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn publishing_to_an_unread_own_subscription_never_deadlocks() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let (address, shutdown, server) = common::loopback_broker().await;
        let address = address.to_string();
        let mut opts = options(&address, "self");
        opts.message_buffer = 8;
        let (client, mut messages) = Client::connect(opts).await.unwrap();
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
        shutdown.shutdown();
        server.await.unwrap().unwrap();
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn connect_fails_instead_of_hanging_when_the_first_attempt_fails() {
    tokio::time::timeout(Duration::from_secs(20), async {
        // Nothing listens on this port.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let result = Client::connect(options(&format!("127.0.0.1:{port}"), "nobody")).await;
        assert!(result.is_err());
        // A listener that closes every connection before CONNACK.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                drop(socket);
            }
        });
        let result = Client::connect(options(&address, "closed")).await;
        assert!(result.is_err());
    })
    .await
    .unwrap();
}

/// A configuration the client could not connect with (MQTT 3.1.1, empty client identifier, no
/// clean session: 3.1.1 [MQTT-3.1.3-7]) is refused before any connection is tried: the error is
/// the configuration's, not the I/O error of the port nobody listens on.
#[tokio::test]
async fn a_configuration_that_cannot_connect_is_refused_first() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut opts = options(&format!("127.0.0.1:{port}"), "");
    opts.config.clean_start = false;
    opts.config.reconnect = None;
    match Client::connect(opts).await {
        Err(AsyncClientError::Config(ConfigError::EmptyClientIdNeedsCleanSession)) => {}
        other => panic!("expected a configuration error, got {:?}", other.err()),
    }
}
