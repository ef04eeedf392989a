//! The tokio client's session in a redb store across a restart: a publisher with a store sends
//! QoS 1 and QoS 2 messages while the broker's answers are lost (they stay in flight) and while
//! the broker is unreachable (they stay queued), and stops without completing them. A new
//! client on the same directory and identifier resumes them (`connect_with_store` reports
//! them): a persistent subscriber receives every QoS 2 message exactly once and every QoS 1
//! message at least once, and the store is empty once they are complete. A clean session is
//! refused before connecting, and a failed first connection lets the store go before it is
//! returned. Broker and proxy on 127.0.0.1, stopped by the test.
#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use surgemq_core::client::{Backoff, RestoreError};
use surgemq_core::codec::{PubAckReason, QoS, SubscriptionOptions};
use surgemq_core::store::StoreSetup;
use surgemq_core::store::redb::{self, CommitPolicy, RedbStore};
use surgemq_core::string::MqttString;
use surgemq_core::topic::{TopicFilter, TopicName};
use surgemq_tokio::{AsyncClientError, Client, ClientConfig, ClientOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Proxy modes: everything passes; the client's bytes pass but the broker's are dropped;
/// new connections are closed at once.
const PASS: u8 = 0;
const ONE_WAY: u8 = 1;
const REFUSE: u8 = 2;

/// A TCP proxy in front of the broker whose mode the test switches and whose links it cuts.
struct Proxy {
    address: SocketAddr,
    mode: Arc<AtomicU8>,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
    acceptor: JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let mode = Arc::new(AtomicU8::new(PASS));
        let links: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (link_mode, registry) = (Arc::clone(&mode), Arc::clone(&links));
        let acceptor = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if link_mode.load(Ordering::SeqCst) == REFUSE {
                    continue;
                }
                let mode = Arc::clone(&link_mode);
                let link = tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (mut client_read, mut client_write) = inbound.into_split();
                    let (mut broker_read, mut broker_write) = outbound.into_split();
                    let up = async {
                        let _ = tokio::io::copy(&mut client_read, &mut broker_write).await;
                    };
                    let down = async {
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            match broker_read.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => {
                                    if mode.load(Ordering::SeqCst) == PASS
                                        && client_write.write_all(&buf[..n]).await.is_err()
                                    {
                                        return;
                                    }
                                }
                            }
                        }
                    };
                    tokio::select! {
                        () = up => {}
                        () = down => {}
                    }
                });
                registry.lock().unwrap().push(link);
            }
        });
        Self {
            address,
            mode,
            links,
            acceptor,
        }
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }

    /// Drops every live connection in both directions (like a network reset).
    fn cut(&self) {
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    fn stop(self) {
        self.acceptor.abort();
        self.cut();
    }
}

fn config(id: &str) -> ClientConfig {
    let mut c = ClientConfig::new(MqttString::new(id).unwrap());
    c.clean_start = false;
    c.keep_alive = 30;
    c.reconnect = Some(Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(200),
    });
    c
}

fn topic() -> TopicName {
    TopicName::parse("st/x").unwrap()
}

/// `name-qN`: the payload says its QoS.
fn payload(name: &str, qos: QoS) -> String {
    format!("{name}-q{}", qos.as_u8())
}

fn qos_of(i: usize) -> QoS {
    if i.is_multiple_of(2) {
        QoS::AtLeastOnce
    } else {
        QoS::ExactlyOnce
    }
}

/// The store in `dir`; retried while the previous client still holds it (its driver closes it
/// once it has seen every handle dropped).
async fn open_store(dir: &Path) -> StoreSetup {
    for _ in 0..200 {
        if let Ok(setup) = redb::setup(dir, CommitPolicy::Group, Box::new(|_, _| {})) {
            return setup;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the store in {} stayed locked", dir.display());
}

/// Hands a publish to the client without waiting for its completion: polled once, the
/// command is queued to the driver, which goes on with it after the future is dropped.
async fn fire(client: &Client, name: &str, qos: QoS) {
    let publish = client.publish(topic(), payload(name, qos), qos, false);
    tokio::pin!(publish);
    tokio::select! {
        biased;
        _ = &mut publish => {}
        () = tokio::task::yield_now() => {}
    }
}

type Received = Arc<Mutex<BTreeMap<String, u32>>>;

/// Waits (bounded) until every payload of `want` was received.
async fn wait_for(received: &Received, want: &[String]) {
    for _ in 0..400 {
        if want
            .iter()
            .all(|p| received.lock().unwrap().contains_key(p))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let got = received.lock().unwrap().clone();
    panic!("not all received: want {want:?}, got {got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_publishes_survive_a_restart_and_qos2_arrives_once() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let (broker_address, shutdown, server) = common::loopback_broker().await;
        let proxy = Proxy::start(broker_address).await;
        let dir = tempfile::tempdir().unwrap();

        let (subscriber, mut messages) = Client::connect(ClientOptions::new(
            broker_address.to_string(),
            config("st-sub"),
        ))
        .await
        .unwrap();
        subscriber
            .subscribe(vec![(
                TopicFilter::parse("st/#").unwrap(),
                SubscriptionOptions::qos(QoS::ExactlyOnce),
            )])
            .await
            .unwrap();
        let received: Received = Arc::default();
        let sink = Arc::clone(&received);
        let collector = tokio::spawn(async move {
            while let Some(m) = messages.recv().await {
                let text = String::from_utf8(m.publish.payload.to_vec()).unwrap();
                *sink.lock().unwrap().entry(text).or_default() += 1;
            }
        });

        let options = ClientOptions::new(proxy.address.to_string(), config("st-pub"));
        let (publisher, _, report) =
            Client::connect_with_store(options.clone(), open_store(dir.path()).await)
                .await
                .unwrap();
        assert!(report.publishes.is_empty(), "a new store: {report}");

        // Completed normally.
        let mut sent = Vec::new();
        for (i, name) in ["a0", "a1"].into_iter().enumerate() {
            let qos = qos_of(i);
            let reason = publisher
                .publish(topic(), payload(name, qos), qos, false)
                .await;
            assert_eq!(reason.unwrap(), PubAckReason::Success);
            sent.push(payload(name, qos));
        }
        // In flight: the broker has them (the subscriber too), its answers are lost.
        proxy.set(ONE_WAY);
        let in_flight: Vec<String> = (0..4)
            .map(|i| payload(&format!("b{i}"), qos_of(i)))
            .collect();
        for i in 0..4 {
            fire(&publisher, &format!("b{i}"), qos_of(i)).await;
        }
        wait_for(&received, &in_flight).await;
        // Queued: the broker is unreachable.
        proxy.set(REFUSE);
        proxy.cut();
        let queued: Vec<String> = (0..4)
            .map(|i| payload(&format!("c{i}"), qos_of(i)))
            .collect();
        for i in 0..4 {
            fire(&publisher, &format!("c{i}"), qos_of(i)).await;
        }
        // Stopped without completing: the last handle goes.
        drop(publisher);

        let store = open_store(dir.path()).await;
        assert_eq!(store.snapshot.deliveries.len(), 8, "what the store kept");
        proxy.set(PASS);
        let (publisher, _, report) = Client::connect_with_store(options, store).await.unwrap();
        eprintln!("restored: {report}");
        let restored: Vec<QoS> = report.publishes.iter().map(|(_, _, qos)| *qos).collect();
        assert_eq!(restored, (0..8).map(qos_of).collect::<Vec<_>>(), "{report}");
        assert!(report.publishes.iter().all(|(_, t, _)| *t == topic()));
        // The b's at least (the c's too if they went out on a connection the proxy closed).
        assert!((4..=8).contains(&report.in_flight), "{report}");

        sent.extend(in_flight);
        sent.extend(queued);
        wait_for(&received, &sent).await;
        // After the restored publishes on the same connection: once it completes, they have.
        let reason = publisher
            .publish(
                topic(),
                payload("d0", QoS::ExactlyOnce),
                QoS::ExactlyOnce,
                false,
            )
            .await;
        assert_eq!(reason.unwrap(), PubAckReason::Success);
        sent.push(payload("d0", QoS::ExactlyOnce));
        wait_for(&received, &sent).await;
        publisher.disconnect().await;

        let got = received.lock().unwrap().clone();
        for p in &sent {
            let n = got[p];
            if p.ends_with("-q2") {
                assert_eq!(n, 1, "QoS 2 {p} delivered {n} times: {got:?}");
            } else {
                assert!(n >= 1);
            }
        }
        // Every publish complete: nothing left in the store (closed by `disconnect`).
        let left = RedbStore::open(dir.path()).unwrap().load().unwrap();
        assert!(
            left.deliveries.is_empty() && left.messages.is_empty(),
            "left in the store: {} deliveries, {} messages",
            left.deliveries.len(),
            left.messages.len()
        );

        subscriber.disconnect().await;
        collector.abort();
        proxy.stop();
        shutdown.shutdown();
        server.await.unwrap().unwrap();
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_clean_session_with_a_store_is_refused_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let mut config = config("st-clean");
    config.clean_start = true;
    let options = ClientOptions::new(listener.local_addr().unwrap().to_string(), config);
    let store = open_store(dir.path()).await;
    match Client::connect_with_store(options, store).await {
        Err(AsyncClientError::Restore(RestoreError::NotPersistent)) => {}
        other => panic!("expected a restore error, got {:?}", other.map(|_| ())),
    }
    // No connection was attempted, and the store was let go: it opens again at once.
    assert_eq!(
        listener.accept().map_err(|e| e.kind()).err(),
        Some(std::io::ErrorKind::WouldBlock)
    );
    redb::setup(dir.path(), CommitPolicy::Group, Box::new(|_, _| {})).unwrap();
}

#[tokio::test]
async fn a_failed_first_connection_closes_the_store_before_returning() {
    let dir = tempfile::tempdir().unwrap();
    // A port nobody listens on any more.
    let address = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut config = config("st-lonely");
    config.reconnect = None;
    let options = ClientOptions::new(address.to_string(), config);
    let store = redb::setup(dir.path(), CommitPolicy::Group, Box::new(|_, _| {})).unwrap();
    match Client::connect_with_store(options, store).await {
        Err(AsyncClientError::Io(_)) => {}
        other => panic!("expected an I/O error, got {:?}", other.map(|_| ())),
    }
    // Closed already: it opens again at once.
    redb::setup(dir.path(), CommitPolicy::Group, Box::new(|_, _| {})).unwrap();
}

/// A store whose commits wait for the test: it records what it is given and reports the last
/// operation committed only when [`Gate::release`] is called.
#[derive(Clone, Default)]
struct Gate {
    ops: Arc<Mutex<Vec<(u64, surgemq_core::store::StoreOp)>>>,
    done: Arc<Mutex<Option<surgemq_core::store::DoneFn>>>,
}

struct GatedSink(Gate);

impl surgemq_core::store::StoreSink for GatedSink {
    fn submit(&mut self, ops: Vec<(u64, surgemq_core::store::StoreOp)>) {
        self.0.ops.lock().unwrap().extend(ops);
    }

    fn close(self: Box<Self>) {}
}

impl Gate {
    fn setup(&self) -> StoreSetup {
        let gate = self.clone();
        StoreSetup {
            snapshot: surgemq_core::store::StoreSnapshot::default(),
            start: Box::new(move |done| {
                *gate.done.lock().unwrap() = Some(done);
                Box::new(GatedSink(gate))
            }),
        }
    }

    /// Commits everything submitted so far.
    fn release(&self) {
        let last = self.ops.lock().unwrap().last().map(|(seq, _)| *seq);
        if let (Some(seq), Some(done)) = (last, self.done.lock().unwrap().as_ref()) {
            done(seq, Ok(()));
        }
    }

    fn has(&self, want: impl Fn(&surgemq_core::store::StoreOp) -> bool) -> bool {
        self.ops.lock().unwrap().iter().any(|(_, op)| want(op))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_received_qos2_message_reaches_the_application_once_its_ack_is_committed() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let (broker_address, shutdown, server) = common::loopback_broker().await;
        let gate = Gate::default();
        let options = ClientOptions::new(broker_address.to_string(), config("gated-sub"));
        let (subscriber, mut messages, _) = Client::connect_with_store(options, gate.setup())
            .await
            .unwrap();
        {
            let subscribe = subscriber.subscribe(vec![(
                TopicFilter::parse("st/#").unwrap(),
                SubscriptionOptions::qos(QoS::ExactlyOnce),
            )]);
            tokio::pin!(subscribe);
            // The SUBACK is stored (the subscription) before anything else goes out.
            loop {
                tokio::select! {
                    r = &mut subscribe => { r.unwrap(); break; }
                    () = tokio::time::sleep(Duration::from_millis(10)) => gate.release(),
                }
            }
        }
        // The subscription is stored and committed: nothing is pending any more.
        for _ in 0..400 {
            if gate.has(|op| matches!(op, surgemq_core::store::StoreOp::PutSession(_))) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        gate.release();

        let (publisher, _) = Client::connect(ClientOptions::new(
            broker_address.to_string(),
            ClientConfig::new(MqttString::new("gated-pub").unwrap()),
        ))
        .await
        .unwrap();
        publisher
            .publish(topic(), "first-q2", QoS::ExactlyOnce, false)
            .await
            .unwrap();
        publisher
            .publish(topic(), "second-q1", QoS::AtLeastOnce, false)
            .await
            .unwrap();
        // The subscriber acknowledged the QoS 2 message: its identifier waits for the commit.
        for _ in 0..400 {
            if gate.has(|op| matches!(op, surgemq_core::store::StoreOp::PutReleaseId { .. })) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(gate.has(|op| matches!(op, surgemq_core::store::StoreOp::PutReleaseId { .. })));
        // Not before the commit (a crash now must not have shown it to the application), and
        // nothing overtakes it.
        let early = tokio::time::timeout(Duration::from_millis(300), messages.recv()).await;
        assert!(
            early.is_err(),
            "delivered before its acknowledgement was committed"
        );
        gate.release();
        let first = messages.recv().await.unwrap();
        assert_eq!(&first.publish.payload[..], b"first-q2");
        gate.release();
        let second = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                gate.release();
                tokio::select! {
                    m = messages.recv() => return m.unwrap(),
                    () = tokio::time::sleep(Duration::from_millis(10)) => {}
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(&second.publish.payload[..], b"second-q1");

        publisher.disconnect().await;
        drop(subscriber);
        shutdown.shutdown();
        server.await.unwrap().unwrap();
    })
    .await
    .unwrap();
}
