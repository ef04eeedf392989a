//! The futures-io driver's client with its session in a redb store, generic over the runtime
//! (`surgemq-async-std`'s `tests/client_store.rs` includes this file too; the tokio client's
//! `tests/client_store.rs` is the same story).
//!
//! A publisher with a store sends QoS 1 and QoS 2 messages while the broker's answers are lost
//! (they stay in flight) and while the broker is unreachable (they stay queued), and stops
//! without completing them. A new client on the same directory and identifier resumes them
//! (`connect_with_store` reports them): a persistent subscriber receives every QoS 2 message
//! exactly once and every QoS 1 message at least once, and the store is empty once they are
//! complete. A clean session is refused before connecting, and a failed first connection lets
//! the store go before it is returned. Broker and proxy on 127.0.0.1, stopped by the test.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt, future};
use surgemq_core::broker::{AuthMode, BrokerConfig};
use surgemq_core::client::{Backoff, ClientConfig, RestoreError};
use surgemq_core::codec::{PubAckReason, QoS, SubscriptionOptions};
use surgemq_core::store::redb::{self, CommitPolicy, RedbStore};
use surgemq_core::store::{DoneFn, StoreOp, StoreSetup, StoreSink, StoreSnapshot};
use surgemq_core::string::MqttString;
use surgemq_core::topic::{TopicFilter, TopicName};
use surgemq_smol::driver::{
    AsyncClientError, Client, ClientOptions, Listener, Server, ShutdownHandle, TcpRuntime,
};

/// Proxy modes: everything passes; the client's bytes pass but the broker's are dropped;
/// new connections are closed at once.
const PASS: u8 = 0;
const ONE_WAY: u8 = 1;
const REFUSE: u8 = 2;

/// How long a whole scenario may take.
const SCENARIO_LIMIT: Duration = Duration::from_secs(60);

async fn sleep<R: TcpRuntime + Default>(duration: Duration) {
    R::default().sleep_until(Instant::now() + duration).await;
}

/// Runs `scenario`, failing it after [`SCENARIO_LIMIT`].
async fn bounded<R: TcpRuntime + Default>(what: &str, scenario: impl Future<Output = ()>) {
    let limit = async {
        sleep::<R>(SCENARIO_LIMIT).await;
        false
    };
    let done = async {
        scenario.await;
        true
    };
    assert!(future::or(done, limit).await, "timed out: {what}");
}

/// A TCP proxy in front of the broker whose mode the test switches and whose links it cuts.
struct Proxy {
    address: SocketAddr,
    mode: Arc<AtomicU8>,
    /// Closing this channel cuts the links opened since it was made (each waits on a
    /// receiver; nothing is ever sent).
    cut: Arc<Mutex<(async_channel::Sender<()>, async_channel::Receiver<()>)>>,
    stop: ShutdownHandle,
}

impl Proxy {
    async fn start<R: TcpRuntime + Default>(upstream: SocketAddr) -> Self {
        let runtime = R::default();
        let listener = runtime.bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let address = R::local_addr(&listener).unwrap();
        let mode = Arc::new(AtomicU8::new(PASS));
        let cut = Arc::new(Mutex::new(async_channel::bounded::<()>(1)));
        let stop = ShutdownHandle::new();
        let (link_mode, links_cut, stopped) = (Arc::clone(&mode), Arc::clone(&cut), stop.clone());
        let spawner = runtime.clone();
        runtime.spawn(async move {
            let accepting = async {
                while let Ok((inbound, _)) = R::accept(&listener).await {
                    if link_mode.load(Ordering::SeqCst) == REFUSE {
                        continue;
                    }
                    let cut = links_cut.lock().unwrap().1.clone();
                    let mode = Arc::clone(&link_mode);
                    let runtime = spawner.clone();
                    spawner.spawn(async move {
                        let Ok(outbound) = runtime.connect(&upstream.to_string()).await else {
                            return;
                        };
                        let (mut client_read, mut client_write) = futures_lite::io::split(inbound);
                        let (mut broker_read, mut broker_write) = futures_lite::io::split(outbound);
                        let up = async {
                            let _ =
                                futures_lite::io::copy(&mut client_read, &mut broker_write).await;
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
                        let cut = async {
                            let _ = cut.recv().await;
                        };
                        future::or(future::or(up, down), cut).await;
                    });
                }
            };
            future::or(accepting, stopped.wait()).await;
        });
        Self {
            address,
            mode,
            cut,
            stop,
        }
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }

    /// Drops every live connection in both directions (like a network reset).
    fn cut(&self) {
        let fresh = async_channel::bounded(1);
        std::mem::replace(&mut *self.cut.lock().unwrap(), fresh)
            .0
            .close();
    }

    fn stop(self) {
        self.stop.shutdown();
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

fn setup(dir: &Path) -> Result<StoreSetup, redb::SetupError> {
    redb::setup(dir, CommitPolicy::Group, Box::new(|_, _| {}))
}

/// The store in `dir`; retried while the previous client still holds it (its task closes it
/// once it has seen every handle dropped).
async fn open_store<R: TcpRuntime + Default>(dir: &Path) -> StoreSetup {
    for _ in 0..200 {
        if let Ok(store) = setup(dir) {
            return store;
        }
        sleep::<R>(Duration::from_millis(25)).await;
    }
    panic!("the store in {} stayed locked", dir.display());
}

/// Hands a publish to the client without waiting for its completion: polled once, the
/// command is queued to the task, which goes on with it after the future is dropped.
async fn fire<R: TcpRuntime>(client: &Client<R>, name: &str, qos: QoS) {
    let publish = async {
        let _ = client
            .publish(topic(), payload(name, qos), qos, false)
            .await;
    };
    future::or(publish, future::yield_now()).await;
}

type Received = Arc<Mutex<BTreeMap<String, u32>>>;

/// Waits (bounded) until every payload of `want` was received.
async fn wait_for<R: TcpRuntime + Default>(received: &Received, want: &[String]) {
    for _ in 0..400 {
        if want
            .iter()
            .all(|p| received.lock().unwrap().contains_key(p))
        {
            return;
        }
        sleep::<R>(Duration::from_millis(25)).await;
    }
    let got = received.lock().unwrap().clone();
    panic!("not all received: want {want:?}, got {got:?}");
}

/// Our broker on `R`; returns its address and how to stop it.
async fn broker<R: TcpRuntime + Default>()
-> (SocketAddr, ShutdownHandle, async_channel::Receiver<()>) {
    let runtime = R::default();
    let config = BrokerConfig {
        auth: AuthMode::LoopbackOnly,
        sys_interval: None,
        ..BrokerConfig::default()
    };
    let listener = Listener::tcp("127.0.0.1:0".parse().unwrap());
    let bound = Server::with_runtime(runtime.clone(), config, vec![listener])
        .bind()
        .await
        .unwrap();
    let address = bound.local_addrs()[0];
    let shutdown = bound.shutdown_handle();
    let (done_tx, done) = async_channel::bounded(1);
    runtime.spawn(async move {
        bound.run().await.unwrap();
        let _ = done_tx.send(()).await;
    });
    (address, shutdown, done)
}

pub(crate) async fn unfinished_publishes_survive_a_restart_and_qos2_arrives_once<
    R: TcpRuntime + Default,
>() {
    bounded::<R>("restart with a store", async {
        let (broker_address, shutdown, broker_done) = broker::<R>().await;
        let proxy = Proxy::start::<R>(broker_address).await;
        let dir = tempfile::tempdir().unwrap();

        let (subscriber, mut messages) = Client::<R>::connect(ClientOptions::new(
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
        R::default().spawn(async move {
            while let Some(m) = messages.recv().await {
                let text = String::from_utf8(m.publish.payload.to_vec()).unwrap();
                *sink.lock().unwrap().entry(text).or_default() += 1;
            }
        });

        let options = ClientOptions::new(proxy.address.to_string(), config("st-pub"));
        let (publisher, _, report) =
            Client::<R>::connect_with_store(options.clone(), open_store::<R>(dir.path()).await)
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
        wait_for::<R>(&received, &in_flight).await;
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

        let store = open_store::<R>(dir.path()).await;
        assert_eq!(store.snapshot.deliveries.len(), 8, "what the store kept");
        proxy.set(PASS);
        let (publisher, _, report) = Client::<R>::connect_with_store(options, store)
            .await
            .unwrap();
        eprintln!("restored: {report}");
        let restored: Vec<QoS> = report.publishes.iter().map(|(_, _, qos)| *qos).collect();
        assert_eq!(restored, (0..8).map(qos_of).collect::<Vec<_>>(), "{report}");
        assert!(report.publishes.iter().all(|(_, t, _)| *t == topic()));
        // The b's at least (the c's too if they went out on a connection the proxy closed).
        assert!((4..=8).contains(&report.in_flight), "{report}");

        sent.extend(in_flight);
        sent.extend(queued);
        wait_for::<R>(&received, &sent).await;
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
        wait_for::<R>(&received, &sent).await;
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
        proxy.stop();
        shutdown.shutdown();
        broker_done.recv().await.unwrap();
    })
    .await;
}

pub(crate) async fn a_clean_session_with_a_store_is_refused_before_connecting<
    R: TcpRuntime + Default,
>() {
    bounded::<R>("clean session with a store", async {
        let dir = tempfile::tempdir().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let mut config = config("st-clean");
        config.clean_start = true;
        let options = ClientOptions::new(listener.local_addr().unwrap().to_string(), config);
        match Client::<R>::connect_with_store(options, setup(dir.path()).unwrap()).await {
            Err(AsyncClientError::Restore(RestoreError::NotPersistent)) => {}
            other => panic!("expected a restore error, got {:?}", other.map(|_| ())),
        }
        // No connection was attempted, and the store was let go: it opens again at once.
        assert_eq!(
            listener.accept().map_err(|e| e.kind()).err(),
            Some(std::io::ErrorKind::WouldBlock)
        );
        setup(dir.path()).unwrap();
    })
    .await;
}

pub(crate) async fn a_failed_first_connection_closes_the_store_before_returning<
    R: TcpRuntime + Default,
>() {
    bounded::<R>("failed first connection with a store", async {
        let dir = tempfile::tempdir().unwrap();
        // A port nobody listens on any more.
        let address = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut config = config("st-lonely");
        config.reconnect = None;
        let options = ClientOptions::new(address.to_string(), config);
        match Client::<R>::connect_with_store(options, setup(dir.path()).unwrap()).await {
            Err(AsyncClientError::Io(_)) => {}
            other => panic!("expected an I/O error, got {:?}", other.map(|_| ())),
        }
        // Closed already: it opens again at once.
        setup(dir.path()).unwrap();
    })
    .await;
}

/// A store whose commits wait for the test: it records what it is given and reports the last
/// operation committed only when [`Gate::release`] is called.
#[derive(Clone, Default)]
struct Gate {
    ops: Arc<Mutex<Vec<(u64, StoreOp)>>>,
    done: Arc<Mutex<Option<DoneFn>>>,
}

struct GatedSink(Gate);

impl StoreSink for GatedSink {
    fn submit(&mut self, ops: Vec<(u64, StoreOp)>) {
        self.0.ops.lock().unwrap().extend(ops);
    }

    fn close(self: Box<Self>) {}
}

impl Gate {
    fn setup(&self) -> StoreSetup {
        let gate = self.clone();
        StoreSetup {
            snapshot: StoreSnapshot::default(),
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

    fn has(&self, want: impl Fn(&StoreOp) -> bool) -> bool {
        self.ops.lock().unwrap().iter().any(|(_, op)| want(op))
    }

    /// Waits (bounded) until an operation like `want` was submitted.
    async fn wait_for<R: TcpRuntime + Default>(&self, want: impl Fn(&StoreOp) -> bool) {
        for _ in 0..400 {
            if self.has(&want) {
                return;
            }
            sleep::<R>(Duration::from_millis(10)).await;
        }
        panic!("the operation never came");
    }
}

pub(crate) async fn a_received_qos2_message_reaches_the_application_once_its_ack_is_committed<
    R: TcpRuntime + Default,
>() {
    bounded::<R>("QoS 2 delivered after its commit", async {
        let (broker_address, shutdown, broker_done) = broker::<R>().await;
        let gate = Gate::default();
        let options = ClientOptions::new(broker_address.to_string(), config("gated-sub"));
        let (subscriber, mut messages, _) = Client::<R>::connect_with_store(options, gate.setup())
            .await
            .unwrap();
        {
            let subscribe = subscriber.subscribe(vec![(
                TopicFilter::parse("st/#").unwrap(),
                SubscriptionOptions::qos(QoS::ExactlyOnce),
            )]);
            let release = async {
                loop {
                    sleep::<R>(Duration::from_millis(10)).await;
                    gate.release();
                }
            };
            future::or(async { subscribe.await.unwrap() }, release).await;
        }
        // The subscription is stored and committed: nothing is pending any more.
        gate.wait_for::<R>(|op| matches!(op, StoreOp::PutSession(_)))
            .await;
        gate.release();

        let (publisher, _) = Client::<R>::connect(ClientOptions::new(
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
        gate.wait_for::<R>(|op| matches!(op, StoreOp::PutReleaseId { .. }))
            .await;
        // Not before the commit (a crash now must not have shown it to the application), and
        // nothing overtakes it.
        let early = future::or(async { Some(messages.recv().await) }, async {
            sleep::<R>(Duration::from_millis(300)).await;
            None
        })
        .await;
        assert!(
            early.is_none(),
            "delivered before its acknowledgement was committed"
        );
        let mut got = Vec::new();
        while got.len() < 2 {
            gate.release();
            let next = future::or(async { Some(messages.recv().await) }, async {
                sleep::<R>(Duration::from_millis(10)).await;
                None
            })
            .await;
            if let Some(m) = next {
                got.push(m.unwrap().publish.payload);
            }
        }
        assert_eq!(got, [&b"first-q2"[..], &b"second-q1"[..]]);

        publisher.disconnect().await;
        drop(subscriber);
        shutdown.shutdown();
        let _ = broker_done.recv().await;
    })
    .await;
}
