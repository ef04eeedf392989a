//! The redb store: every operation kind stored and read back as `MemoryStore` holds it (fixed and
//! random sequences), `DeleteSession` scoped to its session, the group-commit worker, unclean
//! shutdowns recovered, and damaged, foreign and corrupted files reported, checked and repaired.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use surgemq_core::codec::{
    PacketId, Properties, Property, QoS, RetainHandling, SubscriptionOptions,
};
use surgemq_core::store::redb::{
    CommitPolicy, FILE_NAME, LoadError, OpenError, RedbStore, StoreDone, StoreWorker,
};
use surgemq_core::store::{
    DeliveryState, MemoryStore, StoreOp, StoreSnapshot, StoredDelivery, StoredMessage,
    StoredSession,
};
use surgemq_core::string::MqttString;
use surgemq_core::topic::{TopicFilter, TopicName};

fn s(text: &str) -> MqttString {
    MqttString::new(text).unwrap()
}

fn pid(id: u16) -> PacketId {
    PacketId::new(id).unwrap()
}

fn message(topic: &str, qos: QoS, payload: &str, properties: Properties) -> StoredMessage {
    StoredMessage {
        topic: TopicName::parse(topic).unwrap(),
        qos,
        properties,
        payload: Bytes::copy_from_slice(payload.as_bytes()),
    }
}

fn rich_properties() -> Properties {
    Properties::new()
        .with(Property::PayloadFormatIndicator(1))
        .with(Property::MessageExpiryInterval(3600))
        .with(Property::ContentType(s("text/plain")))
        .with(Property::ResponseTopic(
            TopicName::parse("reply/here").unwrap(),
        ))
        .with(Property::CorrelationData(Bytes::from_static(
            b"\x00\x01\xff",
        )))
        .with(Property::SubscriptionIdentifier(7))
        .with(Property::UserProperty(s("k"), s("v")))
        .with(Property::UserProperty(s("k"), s("w")))
}

fn session(client: &str, filters: &[(&str, SubscriptionOptions)]) -> StoredSession {
    StoredSession {
        client_id: s(client),
        subscriptions: filters
            .iter()
            .map(|(f, o)| (TopicFilter::parse(f).unwrap(), *o))
            .collect(),
    }
}

fn delivery(client: &str, seq: u64, message: u64, state: DeliveryState) -> StoredDelivery {
    StoredDelivery {
        client_id: s(client),
        seq,
        message,
        qos: QoS::ExactlyOnce,
        retain: seq.is_multiple_of(2),
        state,
    }
}

/// Every operation kind, with deletes of present and absent records.
fn every_op_kind() -> Vec<Vec<StoreOp>> {
    let all_options = SubscriptionOptions {
        qos: QoS::ExactlyOnce,
        no_local: true,
        retain_as_published: true,
        retain_handling: RetainHandling::DoNotSend,
    };
    vec![
        vec![
            StoreOp::PutSession(session(
                "alice",
                &[
                    ("sensors/+/temp", all_options),
                    (
                        "$share/g/jobs/#",
                        SubscriptionOptions::qos(QoS::AtLeastOnce),
                    ),
                ],
            )),
            StoreOp::PutSession(session("bob", &[])),
            StoreOp::PutSession(session("ünïcode", &[("#", SubscriptionOptions::default())])),
            StoreOp::PutMessage {
                id: 1,
                message: message(
                    "sensors/1/temp",
                    QoS::AtLeastOnce,
                    "21.5",
                    rich_properties(),
                ),
            },
            StoreOp::PutMessage {
                id: 2,
                message: message("jobs/x", QoS::ExactlyOnce, "", Properties::new()),
            },
            StoreOp::PutMessage {
                id: u64::MAX,
                message: message(
                    "big",
                    QoS::AtMostOnce,
                    &"x".repeat(100_000),
                    Properties::new(),
                ),
            },
        ],
        vec![
            StoreOp::PutDelivery(delivery("alice", 0, 1, DeliveryState::Queued)),
            StoreOp::PutDelivery(delivery("alice", 1, 2, DeliveryState::AwaitingAck(pid(1)))),
            StoreOp::PutDelivery(delivery(
                "alice",
                u64::MAX,
                2,
                DeliveryState::AwaitingComp(pid(u16::MAX)),
            )),
            StoreOp::PutDelivery(delivery("bob", 5, 1, DeliveryState::Queued)),
            StoreOp::PutReleaseId {
                client_id: s("alice"),
                packet_id: pid(9),
            },
            StoreOp::PutReleaseId {
                client_id: s("bob"),
                packet_id: pid(u16::MAX),
            },
            StoreOp::PutRetained(message(
                "sensors/1/temp",
                QoS::AtLeastOnce,
                "21.5",
                rich_properties(),
            )),
            StoreOp::PutRetained(message(
                "$SYS-not/really",
                QoS::AtMostOnce,
                "r",
                Properties::new(),
            )),
            StoreOp::PutRetained(message("gone", QoS::AtMostOnce, "r", Properties::new())),
        ],
        vec![
            // Replace, delete, and delete what is absent.
            StoreOp::PutSession(session(
                "bob",
                &[("a/b", SubscriptionOptions::qos(QoS::ExactlyOnce))],
            )),
            StoreOp::PutDelivery(delivery("alice", 0, 1, DeliveryState::AwaitingAck(pid(2)))),
            StoreOp::DeleteDelivery {
                client_id: s("alice"),
                seq: 1,
            },
            StoreOp::DeleteDelivery {
                client_id: s("nobody"),
                seq: 1,
            },
            StoreOp::DeleteMessage { id: 2 },
            StoreOp::DeleteMessage { id: 77 },
            StoreOp::DeleteReleaseId {
                client_id: s("alice"),
                packet_id: pid(9),
            },
            StoreOp::DeleteReleaseId {
                client_id: s("alice"),
                packet_id: pid(10),
            },
            StoreOp::DeleteRetained {
                topic: TopicName::parse("gone").unwrap(),
            },
            StoreOp::DeleteRetained {
                topic: TopicName::parse("never").unwrap(),
            },
            StoreOp::PutReleaseId {
                client_id: s("ünïcode"),
                packet_id: pid(3),
            },
            StoreOp::PutDelivery(delivery("ünïcode", 3, 1, DeliveryState::Queued)),
            StoreOp::DeleteSession {
                client_id: s("ünïcode"),
            },
            StoreOp::DeleteSession {
                client_id: s("nobody"),
            },
        ],
    ]
}

fn memory_of<'a>(batches: impl IntoIterator<Item = &'a [StoreOp]>) -> MemoryStore {
    let mut memory = MemoryStore::new();
    for batch in batches {
        for op in batch {
            memory.apply(op);
        }
    }
    memory
}

fn reopen_and_load(dir: &Path) -> StoreSnapshot {
    let store = RedbStore::open(dir).unwrap();
    let snapshot = store.load().unwrap();
    store.close().unwrap();
    snapshot
}

#[test]
fn every_op_kind_reads_back_as_the_memory_store_holds_it() {
    let dir = tempfile::tempdir().unwrap();
    let batches = every_op_kind();
    let mut store = RedbStore::open(dir.path()).unwrap();
    assert_eq!(store.path(), dir.path().join(FILE_NAME));
    assert!(store.load().unwrap().is_empty());
    for batch in &batches {
        store.apply(batch).unwrap();
    }
    drop(store);
    let expected = memory_of(batches.iter().map(Vec::as_slice)).snapshot();
    let loaded = reopen_and_load(dir.path());
    assert_eq!(loaded, expected);
    // Every kind is represented, so nothing compared equal by being empty.
    assert!(!loaded.sessions.is_empty());
    assert!(!loaded.messages.is_empty());
    assert!(!loaded.deliveries.is_empty());
    assert!(!loaded.release_ids.is_empty());
    assert!(!loaded.retained.is_empty());
}

#[test]
fn an_empty_apply_and_compaction_keep_everything() {
    let dir = tempfile::tempdir().unwrap();
    let batches = every_op_kind();
    let mut store = RedbStore::open(dir.path()).unwrap();
    for batch in &batches {
        store.apply(batch).unwrap();
    }
    store.apply(&[]).unwrap();
    store.close().unwrap();
    let mut store = RedbStore::open(dir.path()).unwrap();
    store.compact().unwrap();
    store.close().unwrap();
    let expected = memory_of(batches.iter().map(Vec::as_slice)).snapshot();
    assert_eq!(reopen_and_load(dir.path()), expected);
}

#[test]
fn a_message_that_cannot_be_encoded_fails_the_whole_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = RedbStore::open(dir.path()).unwrap();
    let bad = StoredMessage {
        // Session Expiry Interval is not allowed on PUBLISH.
        properties: Properties::new().with(Property::SessionExpiryInterval(5)),
        ..message("t", QoS::AtLeastOnce, "p", Properties::new())
    };
    let err = store
        .apply(&[
            StoreOp::PutSession(session("a", &[])),
            StoreOp::PutMessage {
                id: 1,
                message: bad,
            },
        ])
        .unwrap_err();
    assert!(err.to_string().contains("messages"), "{err}");
    assert!(store.load().unwrap().is_empty());
}

#[test]
fn delete_session_removes_only_that_sessions_deliveries_and_release_ids() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = RedbStore::open(dir.path()).unwrap();
    // "a" sorts right before "a\u{1}" and "ab": a prefix-based range would catch them.
    let mut ops = vec![StoreOp::PutMessage {
        id: 1,
        message: message("t", QoS::AtLeastOnce, "p", Properties::new()),
    }];
    for client in ["a", "a\u{1}", "ab", "b"] {
        ops.push(StoreOp::PutSession(session(
            client,
            &[("t", SubscriptionOptions::default())],
        )));
        for seq in [0, 1, u64::MAX] {
            ops.push(StoreOp::PutDelivery(delivery(
                client,
                seq,
                1,
                DeliveryState::Queued,
            )));
        }
        for id in [1, 2, u16::MAX] {
            ops.push(StoreOp::PutReleaseId {
                client_id: s(client),
                packet_id: pid(id),
            });
        }
    }
    store.apply(&ops).unwrap();
    store
        .apply(&[StoreOp::DeleteSession { client_id: s("a") }])
        .unwrap();
    drop(store);
    let loaded = reopen_and_load(dir.path());
    let clients = |ids: Vec<&MqttString>| {
        ids.iter()
            .map(|c| c.as_str().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        clients(loaded.sessions.iter().map(|s| &s.client_id).collect()),
        ["a\u{1}", "ab", "b"]
    );
    assert_eq!(loaded.deliveries.len(), 9);
    assert!(
        loaded
            .deliveries
            .iter()
            .all(|d| d.client_id.as_str() != "a")
    );
    assert_eq!(loaded.release_ids.len(), 9);
    assert!(loaded.release_ids.iter().all(|(c, _)| c.as_str() != "a"));
    assert_eq!(
        loaded.messages.len(),
        1,
        "messages are deleted by their own operations"
    );
}

// ---------------------------------------------------------------------------------------------
// Random sequences
// ---------------------------------------------------------------------------------------------

fn arb_client() -> impl Strategy<Value = MqttString> {
    select(vec!["a", "b", "ab", "ü"]).prop_map(s)
}

fn arb_topic() -> impl Strategy<Value = TopicName> {
    select(vec!["t", "t/1", "u", "$SYS/x"]).prop_map(|t| TopicName::parse(t).unwrap())
}

fn arb_qos() -> impl Strategy<Value = QoS> {
    select(vec![QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce])
}

fn arb_pid() -> impl Strategy<Value = PacketId> {
    prop_oneof![1u16..4, Just(u16::MAX)].prop_map(pid)
}

fn arb_message() -> impl Strategy<Value = StoredMessage> {
    let properties = prop_oneof![
        Just(Properties::new()),
        Just(rich_properties()),
        (1u32..100).prop_map(|i| Properties::new().with(Property::MessageExpiryInterval(i))),
    ];
    (arb_topic(), arb_qos(), properties, vec(any::<u8>(), 0..40)).prop_map(
        |(topic, qos, properties, payload)| StoredMessage {
            topic,
            qos,
            properties,
            payload: Bytes::from(payload),
        },
    )
}

fn arb_options() -> impl Strategy<Value = SubscriptionOptions> {
    let handling = select(vec![
        RetainHandling::SendAtSubscribe,
        RetainHandling::SendIfNew,
        RetainHandling::DoNotSend,
    ]);
    (arb_qos(), any::<bool>(), any::<bool>(), handling).prop_map(
        |(qos, no_local, retain_as_published, retain_handling)| SubscriptionOptions {
            qos,
            no_local,
            retain_as_published,
            retain_handling,
        },
    )
}

fn arb_state() -> impl Strategy<Value = DeliveryState> {
    prop_oneof![
        Just(DeliveryState::Queued),
        arb_pid().prop_map(DeliveryState::AwaitingAck),
        arb_pid().prop_map(DeliveryState::AwaitingComp),
    ]
}

fn arb_op() -> impl Strategy<Value = StoreOp> {
    let seq = prop_oneof![0u64..4, Just(u64::MAX)];
    let id = 0u64..4;
    let filter =
        select(vec!["t", "t/+", "#", "$share/g/t"]).prop_map(|f| TopicFilter::parse(f).unwrap());
    prop_oneof![
        (arb_client(), vec((filter, arb_options()), 0..3)).prop_map(
            |(client_id, subscriptions)| {
                StoreOp::PutSession(StoredSession {
                    client_id,
                    subscriptions,
                })
            }
        ),
        arb_client().prop_map(|client_id| StoreOp::DeleteSession { client_id }),
        (id.clone(), arb_message()).prop_map(|(id, message)| StoreOp::PutMessage { id, message }),
        id.clone().prop_map(|id| StoreOp::DeleteMessage { id }),
        (
            arb_client(),
            seq.clone(),
            id,
            arb_qos(),
            any::<bool>(),
            arb_state()
        )
            .prop_map(|(client_id, seq, message, qos, retain, state)| {
                StoreOp::PutDelivery(StoredDelivery {
                    client_id,
                    seq,
                    message,
                    qos,
                    retain,
                    state,
                })
            }),
        (arb_client(), seq).prop_map(|(client_id, seq)| StoreOp::DeleteDelivery { client_id, seq }),
        (arb_client(), arb_pid()).prop_map(|(client_id, packet_id)| StoreOp::PutReleaseId {
            client_id,
            packet_id
        }),
        (arb_client(), arb_pid()).prop_map(|(client_id, packet_id)| StoreOp::DeleteReleaseId {
            client_id,
            packet_id
        }),
        arb_message().prop_map(StoreOp::PutRetained),
        arb_topic().prop_map(|topic| StoreOp::DeleteRetained { topic }),
        Just(StoreOp::Clear),
    ]
}

proptest! {
    // Every transaction syncs to disk: few cases, several transactions each.
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn random_operations_read_back_as_the_memory_store_holds_them(
        batches in vec(vec(arb_op(), 0..25), 1..5),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = RedbStore::open(dir.path()).unwrap();
        for batch in &batches {
            store.apply(batch).unwrap();
        }
        store.close().unwrap();
        let expected = memory_of(batches.iter().map(Vec::as_slice)).snapshot();
        prop_assert_eq!(reopen_and_load(dir.path()), expected);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// The worker skips puts that a later operation of the same transaction overrides; what
    /// it leaves on disk must still be exactly what applying every operation gives.
    #[test]
    fn a_grouped_commit_that_skips_overridden_puts_leaves_the_same_state(
        before in vec(arb_op(), 0..25),
        ops in vec(arb_op(), 1..60),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = RedbStore::open(dir.path()).unwrap();
        store.apply(&before).unwrap();
        // One commit for everything: the interval outlasts the test, close() commits.
        let worker = StoreWorker::spawn(store, CommitPolicy::Every(std::time::Duration::from_secs(3600)), |_| {});
        worker.submit_batch(ops.iter().cloned().enumerate().map(|(i, op)| (i as u64 + 1, op)));
        worker.close().unwrap();
        let expected = memory_of([before.as_slice(), ops.as_slice()]).snapshot();
        prop_assert_eq!(reopen_and_load(dir.path()), expected);
    }
}

// ---------------------------------------------------------------------------------------------
// The worker
// ---------------------------------------------------------------------------------------------

fn worker_op(seq: u64) -> StoreOp {
    let client = ["a", "b", "c"][(seq % 3) as usize];
    match seq % 5 {
        0 => StoreOp::PutMessage {
            id: seq,
            message: message("w/t", QoS::AtLeastOnce, &seq.to_string(), Properties::new()),
        },
        1 => StoreOp::PutDelivery(delivery(client, seq, seq - 1, DeliveryState::Queued)),
        2 => StoreOp::PutSession(session(
            client,
            &[("w/#", SubscriptionOptions::qos(QoS::AtLeastOnce))],
        )),
        3 => StoreOp::DeleteDelivery {
            client_id: s(client),
            seq: seq - 2,
        },
        _ => StoreOp::PutRetained(message(
            &format!("r/{}", seq % 7),
            QoS::AtMostOnce,
            &seq.to_string(),
            Properties::new(),
        )),
    }
}

#[test]
fn the_worker_commits_in_groups_reports_in_order_and_stores_everything() {
    const OPS: u64 = 10_000;
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path()).unwrap();
    let done: Arc<Mutex<Vec<StoreDone>>> = Arc::default();
    let sink = Arc::clone(&done);
    let worker = StoreWorker::spawn(store, CommitPolicy::Group, move |d| {
        sink.lock().unwrap().push(d);
    });
    std::thread::scope(|scope| {
        scope.spawn(|| {
            for seq in 1..=OPS / 2 {
                worker.submit(seq, worker_op(seq));
            }
            worker.submit_batch((OPS / 2 + 1..=OPS).map(|seq| (seq, worker_op(seq))));
        });
    });
    // Wait for the last report before closing, so that close() has nothing left to flush.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while done.lock().unwrap().last().map(|d| d.seq) != Some(OPS) {
        assert!(
            std::time::Instant::now() < deadline,
            "the worker never reported {OPS}"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let stats = worker.stats();
    worker.close().unwrap();

    let done = done.lock().unwrap();
    assert!(done.iter().all(|d| d.result.is_ok()));
    assert!(
        done.windows(2).all(|w| w[0].seq < w[1].seq),
        "reports in order"
    );
    assert_eq!(done.last().unwrap().seq, OPS);
    assert_eq!(stats.ops, OPS);
    assert_eq!(stats.commits, done.len() as u64);
    assert!(stats.commits < stats.ops, "grouped: {stats:?}");

    let ops: Vec<StoreOp> = (1..=OPS).map(worker_op).collect();
    assert_eq!(
        reopen_and_load(dir.path()),
        memory_of([ops.as_slice()]).snapshot()
    );
}

#[test]
fn closing_the_worker_commits_what_is_pending() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path()).unwrap();
    let done: Arc<Mutex<Vec<u64>>> = Arc::default();
    let sink = Arc::clone(&done);
    // A timer far away: only close() can commit.
    let worker = StoreWorker::spawn(
        store,
        CommitPolicy::Every(std::time::Duration::from_secs(3600)),
        move |d| {
            d.result.unwrap();
            sink.lock().unwrap().push(d.seq);
        },
    );
    worker.submit_batch((1..=100).map(|seq| (seq, worker_op(seq))));
    worker.close().unwrap();
    assert_eq!(*done.lock().unwrap(), [100]);
    let ops: Vec<StoreOp> = (1..=100).map(worker_op).collect();
    assert_eq!(
        reopen_and_load(dir.path()),
        memory_of([ops.as_slice()]).snapshot()
    );

    // Dropping does the same.
    let store = RedbStore::open(dir.path()).unwrap();
    let worker = StoreWorker::spawn(
        store,
        CommitPolicy::Every(std::time::Duration::from_millis(1)),
        |_| {},
    );
    worker.submit(101, worker_op(101));
    drop(worker);
    let ops: Vec<StoreOp> = (1..=101).map(worker_op).collect();
    assert_eq!(
        reopen_and_load(dir.path()),
        memory_of([ops.as_slice()]).snapshot()
    );
}

// ---------------------------------------------------------------------------------------------
// Crashes, damage, check and repair
// ---------------------------------------------------------------------------------------------

/// A store with records of every kind; returns what it holds.
fn filled_store(dir: &Path) -> StoreSnapshot {
    let batches = every_op_kind();
    let mut store = RedbStore::open(dir).unwrap();
    for batch in &batches {
        store.apply(batch).unwrap();
    }
    store.close().unwrap();
    memory_of(batches.iter().map(Vec::as_slice)).snapshot()
}

#[test]
fn a_file_not_closed_cleanly_is_recovered_to_its_last_commit() {
    let dir = tempfile::tempdir().unwrap();
    let crashed = tempfile::tempdir().unwrap();
    let batches = every_op_kind();
    let mut store = RedbStore::open(dir.path()).unwrap();
    for batch in &batches {
        store.apply(batch).unwrap();
    }
    // The file as a kill -9 leaves it: open, committed, never closed.
    std::fs::copy(dir.path().join(FILE_NAME), crashed.path().join(FILE_NAME)).unwrap();
    drop(store);

    let report = RedbStore::check(crashed.path()).unwrap();
    assert!(report.needs_recovery, "{report}");
    assert!(report.is_healthy(), "{report}");
    let expected = memory_of(batches.iter().map(Vec::as_slice)).snapshot();
    assert_eq!(reopen_and_load(crashed.path()), expected);
    assert!(!RedbStore::check(crashed.path()).unwrap().needs_recovery);
}

fn assert_names_file_and_repair(err: &OpenError, path: &Path) {
    let text = err.to_string();
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(text.contains("surgemq store repair"), "{text}");
    assert_eq!(err.path(), path);
}

#[test]
fn a_truncated_file_is_damaged() {
    let dir = tempfile::tempdir().unwrap();
    filled_store(dir.path());
    let path = dir.path().join(FILE_NAME);
    let len = std::fs::metadata(&path).unwrap().len();
    let before = std::fs::read(&path).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let truncated = std::fs::read(&path).unwrap();
    assert_eq!(&before[..truncated.len()], truncated.as_slice());

    let err = RedbStore::open(dir.path()).unwrap_err();
    assert!(matches!(err, OpenError::Damaged { .. }), "{err:?}");
    assert_names_file_and_repair(&err, &path);
    assert!(err.to_string().contains("surgemq store check"), "{err}");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        truncated,
        "nothing was changed"
    );
}

#[test]
fn a_file_of_garbage_is_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(FILE_NAME);
    let garbage: Vec<u8> = (0..100_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&path, &garbage).unwrap();
    let err = RedbStore::open(dir.path()).unwrap_err();
    assert!(matches!(err, OpenError::Damaged { .. }), "{err:?}");
    assert_names_file_and_repair(&err, &path);
    assert_eq!(
        std::fs::read(&path).unwrap(),
        garbage,
        "nothing was changed"
    );

    let report = RedbStore::check(dir.path()).unwrap();
    assert!(!report.opened && !report.is_healthy(), "{report}");
    assert!(
        report.to_string().contains("surgemq store repair"),
        "{report}"
    );

    let repaired = RedbStore::repair(dir.path()).unwrap();
    assert!(!repaired.opened);
    assert_eq!(repaired.kept.total(), 0);
    assert_eq!(std::fs::read(&repaired.moved_aside).unwrap(), garbage);
    assert!(
        repaired.to_string().contains("nothing could be recovered"),
        "{repaired}"
    );
    assert!(reopen_and_load(dir.path()).is_empty());
}

#[test]
fn a_redb_file_of_another_program_is_foreign() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(FILE_NAME);
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut table = txn
                .open_table(redb::TableDefinition::<&str, &str>::new("settings"))
                .unwrap();
            table.insert("colour", "blue").unwrap();
        }
        txn.commit().unwrap();
    }
    let before = std::fs::read(&path).unwrap();
    let err = RedbStore::open(dir.path()).unwrap_err();
    assert!(matches!(err, OpenError::Foreign { .. }), "{err:?}");
    assert_names_file_and_repair(&err, &path);
    assert_eq!(std::fs::read(&path).unwrap(), before, "nothing was changed");
    assert!(matches!(
        RedbStore::check(dir.path()),
        Err(OpenError::Foreign { .. })
    ));
}

#[test]
fn a_store_from_a_newer_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    filled_store(dir.path());
    let path = dir.path().join(FILE_NAME);
    {
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(redb::TableDefinition::<&str, u64>::new("meta"))
            .unwrap()
            .insert("format", 2)
            .unwrap();
        txn.commit().unwrap();
    }
    let err = RedbStore::open(dir.path()).unwrap_err();
    assert!(
        matches!(
            err,
            OpenError::UnsupportedFormat {
                found: 2,
                supported: 1,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains(&path.display().to_string()));
    assert!(matches!(
        RedbStore::repair(dir.path()),
        Err(OpenError::UnsupportedFormat { .. })
    ));
    assert!(path.exists());
}

#[test]
fn a_store_in_use_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path()).unwrap();
    assert!(matches!(
        RedbStore::open(dir.path()),
        Err(OpenError::Locked { .. })
    ));
    assert!(matches!(
        RedbStore::check(dir.path()),
        Err(OpenError::Locked { .. })
    ));
    assert!(matches!(
        RedbStore::repair(dir.path()),
        Err(OpenError::Locked { .. })
    ));
    drop(store);
}

#[test]
fn a_corrupted_record_is_reported_checked_and_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let mut expected = filled_store(dir.path());
    let path = dir.path().join(FILE_NAME);
    assert!(RedbStore::check(dir.path()).unwrap().is_healthy());

    // A message whose QoS byte is 7, and a delivery of it.
    {
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(redb::TableDefinition::<u64, &[u8]>::new("messages"))
            .unwrap()
            .insert(99, b"\x01\x07\x00\x01t\x00".as_slice())
            .unwrap();
        txn.commit().unwrap();
    }
    {
        let mut store = RedbStore::open(dir.path()).unwrap();
        store
            .apply(&[StoreOp::PutDelivery(delivery(
                "bob",
                9,
                99,
                DeliveryState::Queued,
            ))])
            .unwrap();
    }

    let err = RedbStore::open(dir.path()).unwrap().load().unwrap_err();
    match &err {
        LoadError::BadRecord { table, key, .. } => {
            assert_eq!((*table, key.as_str()), ("messages", "99"));
        }
        other => panic!("{other:?}"),
    }
    let text = err.to_string();
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(text.contains("messages") && text.contains("99"), "{text}");
    assert!(text.contains("surgemq store repair"), "{text}");

    let report = RedbStore::check(dir.path()).unwrap();
    assert!(!report.is_healthy(), "{report}");
    assert!(report.opened);
    assert_eq!(report.format, Some(1));
    assert_eq!(report.bad_records.len(), 1, "{report}");
    assert_eq!(report.bad_records[0].table, "messages");
    assert_eq!(report.bad_records[0].key, "99");
    assert!(report.bad_records[0].detail.contains("QoS"), "{report}");
    assert_eq!(report.records.messages, expected.messages.len() as u64);
    assert_eq!(
        report.records.deliveries,
        expected.deliveries.len() as u64 + 1
    );
    assert!(
        report.to_string().contains("surgemq store repair"),
        "{report}"
    );

    let before = std::fs::read(&path).unwrap();
    let repaired = RedbStore::repair(dir.path()).unwrap();
    assert!(repaired.opened, "{repaired}");
    assert_eq!(repaired.path, path);
    let dropped: Vec<_> = repaired
        .dropped
        .iter()
        .map(|b| (b.table, b.key.as_str()))
        .collect();
    assert_eq!(dropped, [("messages", "99"), ("deliveries", "\"bob\"/9")]);
    assert_eq!(repaired.kept.total(), expected.len() as u64);
    let aside_name = repaired.moved_aside.file_name().unwrap().to_str().unwrap();
    assert!(
        aside_name.starts_with("surgemq.redb.damaged-"),
        "{aside_name}"
    );
    assert_eq!(
        std::fs::read(&repaired.moved_aside).unwrap(),
        before,
        "kept as it was"
    );
    assert!(!dir.path().join("surgemq.redb.new").exists());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != FILE_NAME && !n.starts_with("surgemq.redb.damaged-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    expected
        .deliveries
        .sort_by(|a, b| (&a.client_id, a.seq).cmp(&(&b.client_id, b.seq)));
    assert_eq!(reopen_and_load(dir.path()), expected);
    assert!(RedbStore::check(dir.path()).unwrap().is_healthy());
}

#[test]
fn pages_changed_from_outside_fail_their_checksums() {
    let dir = tempfile::tempdir().unwrap();
    filled_store(dir.path());
    let path = dir.path().join(FILE_NAME);
    // One flipped byte in every page after the file header.
    let mut bytes = std::fs::read(&path).unwrap();
    for byte in bytes.iter_mut().skip(4096).step_by(4096) {
        *byte ^= 0x55;
    }
    std::fs::write(&path, &bytes).unwrap();

    let err = RedbStore::open(dir.path()).unwrap_err();
    assert!(matches!(err, OpenError::Damaged { .. }), "{err:?}");
    assert_names_file_and_repair(&err, &path);
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "nothing was changed");

    let report = RedbStore::check(dir.path()).unwrap();
    assert!(!report.opened && !report.is_healthy(), "{report}");
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "nothing was changed");

    let repaired = RedbStore::repair(dir.path()).unwrap();
    assert!(!repaired.opened, "{repaired}");
    assert_eq!(std::fs::read(&repaired.moved_aside).unwrap(), bytes);
    assert!(reopen_and_load(dir.path()).is_empty());
}

/// After a failed commit the worker commits nothing until the broker's rewrite (starting with
/// `StoreOp::Clear`) arrives, then commits it together with what came in between: operations
/// that followed failed ones, committed alone, would leave a state the broker never had.
#[test]
fn after_a_failed_commit_nothing_is_committed_until_the_rewrite() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path()).unwrap();
    let done: Arc<Mutex<Vec<StoreDone>>> = Arc::default();
    let reports = Arc::clone(&done);
    let worker = StoreWorker::spawn(store, CommitPolicy::Group, move |d| {
        reports.lock().unwrap().push(d)
    });
    let wait_for = |n: usize| {
        for _ in 0..1000 {
            if done.lock().unwrap().len() >= n {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        panic!("no commit report");
    };
    let bad = StoredMessage {
        // Session Expiry Interval is not allowed on PUBLISH: the transaction fails.
        properties: Properties::new().with(Property::SessionExpiryInterval(5)),
        ..message("t", QoS::AtLeastOnce, "p", Properties::new())
    };
    worker.submit_batch([
        (1, StoreOp::PutSession(session("a", &[]))),
        (
            2,
            StoreOp::PutMessage {
                id: 1,
                message: bad,
            },
        ),
    ]);
    wait_for(1);
    assert!(done.lock().unwrap()[0].result.is_err());
    // Emitted after the failed operations, before the broker heard of the failure.
    worker.submit(3, StoreOp::PutSession(session("b", &[])));
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(
        done.lock().unwrap().len(),
        1,
        "committed before the rewrite"
    );
    // The rewrite.
    worker.submit_batch([
        (4, StoreOp::Clear),
        (5, StoreOp::PutSession(session("a", &[]))),
        (6, StoreOp::PutSession(session("b", &[]))),
    ]);
    wait_for(2);
    let second = done.lock().unwrap()[1].clone();
    assert_eq!(second.seq, 6);
    assert!(second.result.is_ok());
    worker.close().unwrap();
    let sessions: Vec<String> = reopen_and_load(dir.path())
        .sessions
        .iter()
        .map(|s| s.client_id.as_str().to_owned())
        .collect();
    assert_eq!(sessions, ["a", "b"]);
}
