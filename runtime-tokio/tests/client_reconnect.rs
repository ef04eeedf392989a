//! Reconnect under fire: the tokio client talks to a broker through a TCP proxy that the test
//! cuts mid-stream, repeatedly, while a publisher sends QoS 1 and QoS 2 messages to a
//! persistent subscriber. Afterwards every message the publisher saw acknowledged has reached
//! the subscriber's application, and no QoS 2 message arrived twice. Run against our broker
//! (in process) and against a real Mosquitto (required when SURGEMQ_REQUIRE_INTEROP=1).
#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use surgemq_core::client::Backoff;
use surgemq_core::codec::{QoS, SubscriptionOptions};
use surgemq_core::string::MqttString;
use surgemq_core::topic::{TopicFilter, TopicName};
use surgemq_tokio::{Client, ClientConfig, ClientOptions};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A proxy whose live connections can all be cut at once.
struct Proxy {
    address: SocketAddr,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let links: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let registry = Arc::clone(&links);
        let accepted: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
        let counter = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let link = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                registry.lock().unwrap().push(link);
            }
        });
        Self {
            address,
            links,
            accepted,
        }
    }

    /// Drops every live connection in both directions (like a network reset).
    fn cut(&self) {
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }
}

fn config(id: &str, qos_max_inflight: u16) -> ClientConfig {
    let mut c = ClientConfig::new(MqttString::new(id).unwrap());
    c.clean_start = false;
    c.keep_alive = 5;
    c.max_inflight = qos_max_inflight;
    c.reconnect = Some(Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(200),
    });
    c
}

async fn scenario(broker: SocketAddr, label: &str) {
    let proxy = Proxy::start(broker).await;
    let address = proxy.address.to_string();
    let (subscriber, mut messages) = Client::connect(ClientOptions::new(
        &address,
        config(&format!("{label}-sub"), 20),
    ))
    .await
    .unwrap();
    subscriber
        .subscribe(vec![(
            TopicFilter::parse("rc/#").unwrap(),
            SubscriptionOptions::qos(QoS::ExactlyOnce),
        )])
        .await
        .unwrap();
    let (publisher, _) = Client::connect(ClientOptions::new(
        &address,
        config(&format!("{label}-pub"), 10),
    ))
    .await
    .unwrap();

    // Received payloads, counted, gathered concurrently with the publishing.
    let received: Arc<Mutex<BTreeMap<Vec<u8>, u32>>> = Arc::default();
    let sink = Arc::clone(&received);
    let collector = tokio::spawn(async move {
        while let Some(m) = messages.recv().await {
            *sink
                .lock()
                .unwrap()
                .entry(m.publish.payload.to_vec())
                .or_default() += 1;
        }
    });

    const MESSAGES: u32 = 600;
    let mut acknowledged = Vec::new();
    let publishing = async {
        let mut tasks = Vec::new();
        for i in 0..MESSAGES {
            let qos = if i % 2 == 0 {
                QoS::AtLeastOnce
            } else {
                QoS::ExactlyOnce
            };
            let publisher = publisher.clone();
            tasks.push(tokio::spawn(async move {
                let payload = format!("m{i:04}-q{}", qos.as_u8()).into_bytes();
                let topic = TopicName::parse("rc/x").unwrap();
                publisher
                    .publish(topic, payload.clone(), qos, false)
                    .await
                    .map(|_| payload)
            }));
            // Spread the publishing over the whole cutting window.
            if i % 10 == 0 {
                tokio::time::sleep(Duration::from_millis(8)).await;
            }
        }
        for task in tasks {
            if let Ok(payload) = task.await.unwrap() {
                acknowledged.push(payload);
            }
        }
    };
    let cutting = async {
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_millis(40)).await;
            proxy.cut();
        }
    };
    tokio::join!(publishing, cutting);
    assert_eq!(
        acknowledged.len(),
        MESSAGES as usize,
        "{label}: every publish completes"
    );
    // Both clients really reconnected, several times, while messages were in flight.
    let connections = proxy.accepted.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        connections >= 8,
        "{label}: only {connections} connections: the cuts missed"
    );

    // Let redeliveries settle, then check.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let done = {
            let got = received.lock().unwrap();
            acknowledged.iter().all(|p| got.contains_key(p))
        };
        if done || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = received.lock().unwrap().clone();
    let lost: Vec<_> = acknowledged
        .iter()
        .filter(|p| !got.contains_key(*p))
        .collect();
    assert!(
        lost.is_empty(),
        "{label}: {} acknowledged messages lost, e.g. {:?}",
        lost.len(),
        String::from_utf8_lossy(lost[0])
    );
    let qos2_duplicates: Vec<_> = got
        .iter()
        .filter(|(p, n)| p.ends_with(b"-q2") && **n > 1)
        .collect();
    assert!(
        qos2_duplicates.is_empty(),
        "{label}: QoS 2 delivered twice: {qos2_duplicates:?}"
    );
    publisher.disconnect().await;
    subscriber.disconnect().await;
    collector.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_lose_nothing_acknowledged_and_never_duplicate_qos2_with_surgemq() {
    tokio::time::timeout(Duration::from_secs(90), async {
        let (address, shutdown, server) = common::loopback_broker().await;
        scenario(address, "surgemq").await;
        shutdown.shutdown();
        server.await.unwrap().unwrap();
    })
    .await
    .unwrap();
}

/// Kills the child on drop.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_lose_nothing_acknowledged_and_never_duplicate_qos2_with_mosquitto() {
    let Some(mosquitto) = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
    else {
        assert!(
            std::env::var("SURGEMQ_REQUIRE_INTEROP").as_deref() != Ok("1"),
            "mosquitto is required (SURGEMQ_REQUIRE_INTEROP=1) but not installed"
        );
        eprintln!("SKIPPED: mosquitto not installed");
        return;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = std::env::temp_dir().join(format!("surgemq-reconnect-{port}"));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\n"),
    )
    .unwrap();
    let _broker = Guard(
        Command::new(mosquitto)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let address: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    tokio::time::timeout(Duration::from_secs(90), async {
        for _ in 0..100 {
            if TcpStream::connect(address).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        scenario(address, "mosquitto").await;
    })
    .await
    .unwrap();
}
