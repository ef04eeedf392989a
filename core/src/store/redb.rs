//! The crash-safe file store: one [redb](https://docs.rs/redb) database, `surgemq.redb`
//! ([`FILE_NAME`]) in the broker's data directory, and the group-commit thread
//! ([`StoreWorker`]) every async runtime adapter shares.
//!
//! # What is stored where
//!
//! | table         | key                               | value                                  |
//! |---------------|-----------------------------------|----------------------------------------|
//! | `meta`        | `"format"`, `"magic"`             | the store format number, SurgeMQ's tag |
//! | `sessions`    | client identifier                 | the session's subscriptions            |
//! | `messages`    | message number (`u64`)            | a message                              |
//! | `deliveries`  | (client identifier, `seq`)        | message number, QoS, RETAIN, state     |
//! | `release_ids` | (client identifier, packet id)    | nothing                                |
//! | `retained`    | topic                             | a message                              |
//!
//! Every value starts with a format byte (1). A message is its QoS byte followed by the body of
//! an MQTT 5.0 QoS 0 PUBLISH: topic (`u16` length and bytes), property list (Variable Byte
//! Integer length and properties), payload (the rest). A session is a `u32` count of
//! subscriptions, each a filter (`u16` length and bytes) and the MQTT 5.0 subscription options
//! byte. A delivery is the message number (`u64`), QoS, RETAIN (0 or 1), a state tag (0 queued,
//! 1 awaiting PUBACK / PUBREC, 2 awaiting PUBCOMP) and the packet identifier (`u16`, 0 when
//! queued). Integers are big-endian. Reading a record checks all of it (strings, topics,
//! filters, QoS, options, packet identifiers, properties allowed on PUBLISH, no trailing bytes);
//! a record that fails is reported by table and key, never trusted and never a panic.
//!
//! The file format number is [`FORMAT`]. A file with a larger number, written by a newer SurgeMQ,
//! is refused ([`OpenError::UnsupportedFormat`]) and left as it is; so is a redb file that is not
//! a SurgeMQ store ([`OpenError::Foreign`]).
//!
//! # Crash safety
//!
//! Every commit is [`Durability::Immediate`]: it returns once the data is on disk. redb commits
//! copy-on-write (a transaction never overwrites a page the last committed one uses) and
//! checksums every page, so a crash at any moment (`kill -9`, power loss) leaves the last
//! committed transaction intact; a transaction that was being written is rolled back when the
//! file is next opened, which redb does on its own at [`RedbStore::open`]. Opening also verifies
//! every page checksum, so damage done to the file from outside is reported
//! ([`OpenError::Damaged`]) rather than read. The broker only treats an operation as stored once
//! [`StoreDone`] reported it committed.
//!
//! Pages freed by a commit are reused by later ones, so the file stays bounded by the peak of
//! live data rather than growing with the number of operations; [`RedbStore::compact`], run at
//! start-up, returns the space of a past peak to the file system.
//!
//! # Group commit
//!
//! An fsync takes about as long for one operation as for thousands, so [`StoreWorker`] commits
//! in groups: its thread takes every operation submitted so far, applies them in one
//! transaction, and reports the sequence number of the last one; operations submitted while
//! that transaction syncs wait for the next, which takes them all. Under load a commit carries
//! many operations; when idle, one operation is committed at once
//! ([`CommitPolicy::Group`]). [`CommitPolicy::Every`] commits on a timer instead.
//!
//! # Check and repair
//!
//! Both refuse a file a running broker has open, and neither changes the store file: they work
//! on a scratch copy next to it (removed afterwards), whose opening verifies every page checksum
//! and recovers the copy if the broker was killed.
//!
//! [`RedbStore::check`] (`surgemq store check`) decodes every record and reports the counts and
//! the records that could not be read ([`CheckReport`]). [`RedbStore::repair`] (`surgemq store
//! repair`) writes every readable record to a fresh file, syncs it, moves the old file aside as
//! `surgemq.redb.damaged-<unix seconds>` (never deleting it) and puts the fresh one in its place
//! ([`RepairReport`]); a file that cannot be opened at all is moved aside the same way and an
//! empty store takes its place.

use alloc::borrow::ToOwned;
use alloc::boxed::Box;
use alloc::collections::BTreeSet;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};
use core::time::Duration;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use bytes::Bytes;
use redb::{
    Builder, Database, DatabaseError, Durability, Key, ReadTransaction, ReadableDatabase,
    ReadableTable, TableDefinition, TableError, Value,
};

use super::{
    DeliveryState, DoneFn, StoreOp, StoreSetup, StoreSink, StoreSnapshot, StoredDelivery,
    StoredMessage, StoredSession,
};
use crate::broker::StoreFailure;
use crate::codec::{
    FixedHeader, Packet, PacketId, PacketType, Properties, PropertyContext, ProtocolVersion, QoS,
    RetainHandling, SubscriptionOptions, decode_body,
};
use crate::string::MqttString;
use crate::topic::TopicFilter;

/// The store's file name inside the data directory.
pub const FILE_NAME: &str = "surgemq.redb";

/// The store format this version writes and reads (the `format` record of the `meta` table).
pub const FORMAT: u64 = 1;

/// The `magic` record of the `meta` table: "SurgeMQ" and a format-independent tag byte. A redb
/// file without it is not a SurgeMQ store.
const MAGIC: u64 = u64::from_be_bytes(*b"SurgeMQ\x1a");

/// The first byte of every value.
const RECORD_FORMAT: u8 = 1;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const SESSIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("sessions");
const MESSAGES: TableDefinition<u64, &[u8]> = TableDefinition::new("messages");
const DELIVERIES: TableDefinition<(&[u8], u64), &[u8]> = TableDefinition::new("deliveries");
const RELEASE_IDS: TableDefinition<(&[u8], u16), ()> = TableDefinition::new("release_ids");
const RETAINED: TableDefinition<&[u8], &[u8]> = TableDefinition::new("retained");

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Why the store file could not be opened (or checked, or repaired).
#[derive(Debug)]
#[non_exhaustive]
pub enum OpenError {
    /// The directory or file could not be created, read or renamed.
    Io {
        /// The file (or directory) concerned.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Another process has the file open (a running broker).
    Locked {
        /// The file.
        path: PathBuf,
    },
    /// A redb database that is not a SurgeMQ store (no SurgeMQ `meta` records).
    Foreign {
        /// The file.
        path: PathBuf,
    },
    /// redb cannot open the file: not a database, a damaged header, truncated, a checksum that
    /// does not match.
    Damaged {
        /// The file.
        path: PathBuf,
        /// What redb found.
        detail: String,
    },
    /// Written by a newer SurgeMQ, in a store format this version does not know.
    UnsupportedFormat {
        /// The file.
        path: PathBuf,
        /// The format number in the file.
        found: u64,
        /// The format this version reads ([`FORMAT`]).
        supported: u64,
    },
}

impl OpenError {
    /// The file (or directory) the error is about.
    pub fn path(&self) -> &Path {
        match self {
            Self::Io { path, .. }
            | Self::Locked { path }
            | Self::Foreign { path }
            | Self::Damaged { path, .. }
            | Self::UnsupportedFormat { path, .. } => path,
        }
    }
}

/// The data directory of a store file, for the advice in messages.
fn data_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// The advice every "the file is damaged" message ends with.
fn write_repair_advice(f: &mut fmt::Formatter<'_>, path: &Path) -> fmt::Result {
    let dir = data_dir(path).display();
    write!(
        f,
        "Run `surgemq store check --data-dir {dir}` for details, and `surgemq store repair \
         --data-dir {dir}` to keep every readable record and move the damaged file aside."
    )
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io { path, source } => write!(f, "cannot open {}: {source}", path.display()),
            Self::Locked { path } => write!(
                f,
                "{} is in use by another process (is a broker already running with --data-dir \
                 {}?). Nothing was changed. Stop that process first.",
                path.display(),
                data_dir(path).display()
            ),
            Self::Foreign { path } => write!(
                f,
                "{} is a redb database but not a SurgeMQ store (it has no SurgeMQ format \
                 record). Nothing was changed. Move it elsewhere or choose another --data-dir; \
                 `surgemq store repair --data-dir {}` moves it aside and starts an empty store.",
                path.display(),
                data_dir(path).display()
            ),
            Self::Damaged { path, detail } => {
                write!(
                    f,
                    "{} is damaged ({detail}). Nothing was changed. ",
                    path.display()
                )?;
                write_repair_advice(f, path)
            }
            Self::UnsupportedFormat {
                path,
                found,
                supported,
            } => write!(
                f,
                "{} was written by a newer SurgeMQ (store format {found}; this version reads \
                 format {supported}). Nothing was changed. Run a SurgeMQ version that reads \
                 format {found}, or choose another --data-dir.",
                path.display()
            ),
        }
    }
}

impl std::error::Error for OpenError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Why [`RedbStore::load`] could not read the store.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LoadError {
    /// A record that does not decode (or a table that cannot be read).
    BadRecord {
        /// The store file.
        path: PathBuf,
        /// The table.
        table: &'static str,
        /// The record's key, readable.
        key: String,
        /// What is wrong with it.
        detail: String,
    },
    /// redb failed to read the file.
    Storage {
        /// The store file.
        path: PathBuf,
        /// What redb reported.
        detail: String,
    },
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadRecord {
                path,
                table,
                key,
                detail,
            } => write!(
                f,
                "{} is damaged: record {key} of table `{table}` cannot be read ({detail}). \
                 Nothing was changed. ",
                path.display()
            )?,
            Self::Storage { path, detail } => write!(
                f,
                "{} cannot be read ({detail}). Nothing was changed. ",
                path.display()
            )?,
        }
        let (Self::BadRecord { path, .. } | Self::Storage { path, .. }) = self;
        write_repair_advice(f, path)
    }
}

impl std::error::Error for LoadError {}

/// Why operations could not be stored. Nothing of the failed transaction was committed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreError {
    /// A record cannot be represented in the store (a message with properties not allowed on
    /// PUBLISH, an empty topic).
    Encode {
        /// The table it was for.
        table: &'static str,
        /// What is wrong with it.
        detail: String,
    },
    /// redb failed: an I/O error (a full disk), or damage found while writing.
    Storage {
        /// The store file.
        path: PathBuf,
        /// What redb reported.
        detail: String,
    },
    /// The store worker's thread stopped (its completion callback panicked).
    WorkerStopped,
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Encode { table, detail } => {
                write!(f, "cannot store a record of table `{table}`: {detail}")
            }
            Self::Storage { path, detail } => {
                write!(f, "writing {} failed: {detail}", path.display())
            }
            Self::WorkerStopped => f.write_str("the store worker thread stopped"),
        }
    }
}

impl std::error::Error for StoreError {}

/// Why one stored record does not decode.
#[derive(Debug)]
enum RecordError {
    Truncated,
    TrailingBytes(usize),
    UnknownRecordFormat(u8),
    InvalidQoS(u8),
    InvalidBool(u8),
    InvalidString(crate::string::StringError),
    InvalidTopic(crate::topic::TopicError),
    InvalidFilter(crate::topic::TopicError),
    InvalidOptions(u8),
    InvalidState(u8),
    ZeroPacketId,
    PacketIdWhenQueued(u16),
    Publish(crate::codec::DecodeError),
    NotPublish,
    TopicMismatch,
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated => f.write_str("record is truncated"),
            Self::TrailingBytes(n) => write!(f, "{n} bytes after the end of the record"),
            Self::UnknownRecordFormat(b) => write!(f, "unknown record format {b}"),
            Self::InvalidQoS(b) => write!(f, "invalid QoS {b}"),
            Self::InvalidBool(b) => write!(f, "invalid flag byte {b}"),
            Self::InvalidString(e) => write!(f, "invalid client identifier: {e}"),
            Self::InvalidTopic(e) => write!(f, "invalid topic: {e}"),
            Self::InvalidFilter(e) => write!(f, "invalid topic filter: {e}"),
            Self::InvalidOptions(b) => write!(f, "invalid subscription options {b:#04x}"),
            Self::InvalidState(b) => write!(f, "invalid delivery state {b}"),
            Self::ZeroPacketId => f.write_str("packet identifier 0"),
            Self::PacketIdWhenQueued(id) => {
                write!(f, "queued delivery with packet identifier {id}")
            }
            Self::Publish(e) => write!(f, "invalid message: {e}"),
            Self::NotPublish => f.write_str("invalid message"),
            Self::TopicMismatch => f.write_str("the message's topic is not its key"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Record encoding
// ---------------------------------------------------------------------------------------------

fn encode_error(table: &'static str, detail: impl fmt::Display) -> StoreError {
    StoreError::Encode {
        table,
        detail: detail.to_string(),
    }
}

fn put_short(out: &mut Vec<u8>, bytes: &[u8], table: &'static str) -> Result<(), StoreError> {
    let len = u16::try_from(bytes.len())
        .map_err(|_| encode_error(table, "a string longer than 65535 bytes"))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

fn encode_message(message: &StoredMessage, table: &'static str) -> Result<Vec<u8>, StoreError> {
    if message.topic.is_empty() {
        return Err(encode_error(table, "a message without a topic"));
    }
    let body_len = message
        .properties
        .checked_body_len(PropertyContext::Publish)
        .map_err(|e| encode_error(table, e))?;
    let topic = message.topic.as_str().as_bytes();
    let mut out = Vec::with_capacity(
        2 + 2 + topic.len() + Properties::wire_len(body_len) + message.payload.len(),
    );
    out.push(RECORD_FORMAT);
    out.push(message.qos.as_u8());
    put_short(&mut out, topic, table)?;
    message.properties.write(body_len, &mut out);
    out.extend_from_slice(&message.payload);
    Ok(out)
}

const fn options_byte(options: SubscriptionOptions) -> u8 {
    options.qos.as_u8()
        | ((options.no_local as u8) << 2)
        | ((options.retain_as_published as u8) << 3)
        | ((options.retain_handling as u8) << 4)
}

fn encode_session(session: &StoredSession) -> Result<Vec<u8>, StoreError> {
    let count = u32::try_from(session.subscriptions.len())
        .map_err(|_| encode_error("sessions", "too many subscriptions"))?;
    let mut out = Vec::with_capacity(
        5 + session
            .subscriptions
            .iter()
            .map(|(filter, _)| 3 + filter.as_str().len())
            .sum::<usize>(),
    );
    out.push(RECORD_FORMAT);
    out.extend_from_slice(&count.to_be_bytes());
    for (filter, options) in &session.subscriptions {
        put_short(&mut out, filter.as_str().as_bytes(), "sessions")?;
        out.push(options_byte(*options));
    }
    Ok(out)
}

fn encode_delivery(delivery: &StoredDelivery) -> [u8; 14] {
    let (tag, packet_id) = match delivery.state {
        DeliveryState::Queued => (0u8, 0u16),
        DeliveryState::AwaitingAck(id) => (1, id.get()),
        DeliveryState::AwaitingComp(id) => (2, id.get()),
    };
    let mut out = [0u8; 14];
    let [format, message @ .., qos, retain, state, id_hi, id_lo] = &mut out;
    *format = RECORD_FORMAT;
    *message = delivery.message.to_be_bytes();
    *qos = delivery.qos.as_u8();
    *retain = u8::from(delivery.retain);
    *state = tag;
    [*id_hi, *id_lo] = packet_id.to_be_bytes();
    out
}

/// Reads a record from the front, checking every length.
struct Input<'a> {
    rest: &'a [u8],
}

impl<'a> Input<'a> {
    /// Starts a record: checks the format byte.
    fn record(value: &'a [u8]) -> Result<Self, RecordError> {
        let mut input = Self { rest: value };
        match input.u8()? {
            RECORD_FORMAT => Ok(input),
            other => Err(RecordError::UnknownRecordFormat(other)),
        }
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], RecordError> {
        let (head, rest) = self
            .rest
            .split_at_checked(len)
            .ok_or(RecordError::Truncated)?;
        self.rest = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], RecordError> {
        let (head, rest) = self
            .rest
            .split_first_chunk::<N>()
            .ok_or(RecordError::Truncated)?;
        self.rest = rest;
        Ok(*head)
    }

    fn u8(&mut self) -> Result<u8, RecordError> {
        self.array::<1>().map(|[b]| b)
    }

    fn u16(&mut self) -> Result<u16, RecordError> {
        self.array().map(u16::from_be_bytes)
    }

    fn u32(&mut self) -> Result<u32, RecordError> {
        self.array().map(u32::from_be_bytes)
    }

    fn u64(&mut self) -> Result<u64, RecordError> {
        self.array().map(u64::from_be_bytes)
    }

    fn qos(&mut self) -> Result<QoS, RecordError> {
        let b = self.u8()?;
        QoS::from_u8(b).ok_or(RecordError::InvalidQoS(b))
    }

    fn short(&mut self) -> Result<&'a [u8], RecordError> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }

    fn finish(&self) -> Result<(), RecordError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(RecordError::TrailingBytes(self.rest.len()))
        }
    }
}

fn client_id(bytes: &[u8]) -> Result<MqttString, RecordError> {
    MqttString::from_bytes(Bytes::copy_from_slice(bytes)).map_err(RecordError::InvalidString)
}

fn decode_message(value: &[u8]) -> Result<StoredMessage, RecordError> {
    let mut input = Input::record(value)?;
    let qos = input.qos()?;
    // The rest is the body of a 5.0 QoS 0 PUBLISH: let the codec check topic and properties.
    let body = Bytes::copy_from_slice(input.rest);
    let header = FixedHeader {
        packet_type: PacketType::Publish,
        flags: 0,
        remaining_length: u32::try_from(body.len()).unwrap_or(u32::MAX),
        header_len: 0,
    };
    let publish = match decode_body(&header, body, ProtocolVersion::V5) {
        Ok(Packet::Publish(publish)) => publish,
        Ok(_) => return Err(RecordError::NotPublish),
        Err(crate::codec::DecodeError::InvalidTopicName(e)) => {
            return Err(RecordError::InvalidTopic(e));
        }
        Err(e) => return Err(RecordError::Publish(e)),
    };
    if publish.topic.is_empty() {
        // Only a Topic Alias lets a PUBLISH go without a topic; a stored message may not.
        return Err(RecordError::InvalidTopic(crate::topic::TopicError::Empty));
    }
    Ok(StoredMessage {
        topic: publish.topic,
        qos,
        properties: publish.properties,
        payload: publish.payload,
    })
}

fn decode_options(byte: u8) -> Result<SubscriptionOptions, RecordError> {
    if byte & 0b1100_0000 != 0 {
        return Err(RecordError::InvalidOptions(byte));
    }
    let qos = QoS::from_u8(byte & 0b11).ok_or(RecordError::InvalidOptions(byte))?;
    let retain_handling = match (byte >> 4) & 0b11 {
        0 => RetainHandling::SendAtSubscribe,
        1 => RetainHandling::SendIfNew,
        2 => RetainHandling::DoNotSend,
        _ => return Err(RecordError::InvalidOptions(byte)),
    };
    Ok(SubscriptionOptions {
        qos,
        no_local: byte & 0b0100 != 0,
        retain_as_published: byte & 0b1000 != 0,
        retain_handling,
    })
}

fn decode_session(key: &[u8], value: &[u8]) -> Result<StoredSession, RecordError> {
    let client_id = client_id(key)?;
    let mut input = Input::record(value)?;
    let count = input.u32()?;
    // Each subscription takes at least three bytes: never reserve more than the record holds.
    let mut subscriptions = Vec::with_capacity((count as usize).min(input.rest.len() / 3));
    for _ in 0..count {
        let raw = input.short()?;
        let filter = MqttString::from_bytes(Bytes::copy_from_slice(raw))
            .map_err(|e| RecordError::InvalidFilter(e.into()))?;
        let filter = TopicFilter::new(filter).map_err(RecordError::InvalidFilter)?;
        let options = decode_options(input.u8()?)?;
        subscriptions.push((filter, options));
    }
    input.finish()?;
    Ok(StoredSession {
        client_id,
        subscriptions,
    })
}

fn decode_delivery(key: (&[u8], u64), value: &[u8]) -> Result<StoredDelivery, RecordError> {
    let client_id = client_id(key.0)?;
    let mut input = Input::record(value)?;
    let message = input.u64()?;
    let qos = input.qos()?;
    let retain = match input.u8()? {
        0 => false,
        1 => true,
        other => return Err(RecordError::InvalidBool(other)),
    };
    let tag = input.u8()?;
    let packet_id = input.u16()?;
    input.finish()?;
    let id = || PacketId::new(packet_id).ok_or(RecordError::ZeroPacketId);
    let state = match tag {
        0 if packet_id == 0 => DeliveryState::Queued,
        0 => return Err(RecordError::PacketIdWhenQueued(packet_id)),
        1 => DeliveryState::AwaitingAck(id()?),
        2 => DeliveryState::AwaitingComp(id()?),
        other => return Err(RecordError::InvalidState(other)),
    };
    Ok(StoredDelivery {
        client_id,
        seq: key.1,
        message,
        qos,
        retain,
        state,
    })
}

fn decode_release_id(key: (&[u8], u16)) -> Result<(MqttString, PacketId), RecordError> {
    let client_id = client_id(key.0)?;
    let packet_id = PacketId::new(key.1).ok_or(RecordError::ZeroPacketId)?;
    Ok((client_id, packet_id))
}

fn decode_retained(key: &[u8], value: &[u8]) -> Result<StoredMessage, RecordError> {
    let message = decode_message(value)?;
    if message.topic.as_str().as_bytes() != key {
        return Err(RecordError::TopicMismatch);
    }
    Ok(message)
}

/// A key for messages: a quoted string when it is UTF-8, hexadecimal otherwise.
fn show_bytes(bytes: &[u8]) -> String {
    match core::str::from_utf8(bytes) {
        Ok(s) => format!("{s:?}"),
        Err(_) => {
            let mut out = String::from("0x");
            for b in bytes {
                out.push_str(&format!("{b:02x}"));
            }
            out
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reading every table
// ---------------------------------------------------------------------------------------------

/// A record that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRecord {
    /// The table.
    pub table: &'static str,
    /// The record's key, readable (or a note when a whole table could not be read).
    pub key: String,
    /// What is wrong with it.
    pub detail: String,
}

impl fmt::Display for BadRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.table, self.key, self.detail)
    }
}

/// What a scan of every table found.
#[derive(Default)]
struct Scan {
    snapshot: StoreSnapshot,
    bad: Vec<BadRecord>,
}

/// Visits every record of a table; a table that does not exist is empty. A record (or the
/// table) that cannot be read is added to `bad`; reading the table stops at a storage error.
fn each_record<K: Key + 'static, V: Value + 'static>(
    txn: &ReadTransaction,
    (table_name, table): (&'static str, TableDefinition<K, V>),
    bad: &mut Vec<BadRecord>,
    mut visit: impl FnMut(K::SelfType<'_>, V::SelfType<'_>) -> Result<(), (String, RecordError)>,
) {
    let whole_table = |detail: String| BadRecord {
        table: table_name,
        key: "(the whole table)".to_owned(),
        detail,
    };
    let opened = match txn.open_table(table) {
        Ok(opened) => opened,
        Err(TableError::TableDoesNotExist(_)) => return,
        Err(e) => return bad.push(whole_table(e.to_string())),
    };
    let iter = match opened.iter() {
        Ok(iter) => iter,
        Err(e) => return bad.push(whole_table(e.to_string())),
    };
    let mut last_key: Option<String> = None;
    for entry in iter {
        match entry {
            Ok((key, value)) => {
                if let Err((key, e)) = visit(key.value(), value.value()) {
                    bad.push(BadRecord {
                        table: table_name,
                        key: key.clone(),
                        detail: e.to_string(),
                    });
                    last_key = Some(key);
                }
            }
            Err(e) => {
                bad.push(BadRecord {
                    table: table_name,
                    key: match last_key {
                        Some(key) => format!("(the records after {key})"),
                        None => "(the table's records)".to_owned(),
                    },
                    detail: e.to_string(),
                });
                return;
            }
        }
    }
}

/// Reads and decodes every record.
fn scan(txn: &ReadTransaction) -> Scan {
    let mut scan = Scan::default();
    let Scan { snapshot, bad } = &mut scan;
    each_record(txn, ("sessions", SESSIONS), bad, |key, value| {
        let session = decode_session(key, value).map_err(|e| (show_bytes(key), e))?;
        snapshot.sessions.push(session);
        Ok(())
    });
    each_record(txn, ("messages", MESSAGES), bad, |key, value| {
        let message = decode_message(value).map_err(|e| (key.to_string(), e))?;
        snapshot.messages.push((key, message));
        Ok(())
    });
    each_record(txn, ("deliveries", DELIVERIES), bad, |key, value| {
        let delivery = decode_delivery(key, value)
            .map_err(|e| (format!("{}/{}", show_bytes(key.0), key.1), e))?;
        snapshot.deliveries.push(delivery);
        Ok(())
    });
    each_record(txn, ("release_ids", RELEASE_IDS), bad, |key, ()| {
        let id =
            decode_release_id(key).map_err(|e| (format!("{}/{}", show_bytes(key.0), key.1), e))?;
        snapshot.release_ids.push(id);
        Ok(())
    });
    each_record(txn, ("retained", RETAINED), bad, |key, value| {
        let message = decode_retained(key, value).map_err(|e| (show_bytes(key), e))?;
        snapshot.retained.push(message);
        Ok(())
    });
    scan
}

/// What the `meta` table says about a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Meta {
    /// No tables at all: a file redb created and nothing committed to yet.
    Empty,
    /// A SurgeMQ store of this format.
    Ours { format: u64 },
    /// Not a SurgeMQ store.
    Foreign,
    /// SurgeMQ's magic, but no usable format number.
    NoFormat,
}

fn read_meta(txn: &ReadTransaction) -> Result<Meta, String> {
    let table = match txn.open_table(META) {
        Ok(table) => table,
        Err(TableError::TableDoesNotExist(_)) => {
            let no_tables = txn
                .list_tables()
                .map_err(|e| e.to_string())?
                .next()
                .is_none();
            let no_multimap = txn
                .list_multimap_tables()
                .map_err(|e| e.to_string())?
                .next()
                .is_none();
            return Ok(if no_tables && no_multimap {
                Meta::Empty
            } else {
                Meta::Foreign
            });
        }
        Err(TableError::TableTypeMismatch { .. } | TableError::TableIsMultimap(_)) => {
            return Ok(Meta::Foreign);
        }
        Err(e) => return Err(e.to_string()),
    };
    let magic = table.get("magic").map_err(|e| e.to_string())?;
    if magic.map(|m| m.value()) != Some(MAGIC) {
        return Ok(Meta::Foreign);
    }
    match table.get("format").map_err(|e| e.to_string())? {
        Some(format) if format.value() >= 1 => Ok(Meta::Ours {
            format: format.value(),
        }),
        _ => Ok(Meta::NoFormat),
    }
}

/// Runs `f`, turning a panic (redb asserting on a file damaged outside it) into an error.
fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown".to_owned());
        format!("redb panicked: {message}")
    })
}

/// What an error from opening a file means for the user.
fn open_error(path: &Path, e: DatabaseError) -> OpenError {
    let path = path.to_path_buf();
    match e {
        DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch => {
            OpenError::Locked { path }
        }
        // redb's own format before version 3: never written by SurgeMQ.
        DatabaseError::UpgradeRequired(_) => OpenError::Foreign { path },
        DatabaseError::Storage(redb::StorageError::Io(source))
            if !matches!(
                source.kind(),
                io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
            ) =>
        {
            OpenError::Io { path, source }
        }
        e => OpenError::Damaged {
            path,
            detail: e.to_string(),
        },
    }
}

/// Checks the `meta` records of an open file against this version.
fn check_meta(path: &Path, meta: Meta) -> Result<(), OpenError> {
    match meta {
        Meta::Empty => Ok(()),
        Meta::Ours { format } if format <= FORMAT => Ok(()),
        Meta::Ours { format } => Err(OpenError::UnsupportedFormat {
            path: path.to_path_buf(),
            found: format,
            supported: FORMAT,
        }),
        Meta::Foreign => Err(OpenError::Foreign {
            path: path.to_path_buf(),
        }),
        Meta::NoFormat => Err(OpenError::Damaged {
            path: path.to_path_buf(),
            detail: "the format record is missing".to_owned(),
        }),
    }
}

fn io_error(path: &Path, source: io::Error) -> OpenError {
    OpenError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Opens a file for writing, verifying every checksum (and recovering a file that was not closed
/// cleanly), with panics turned into [`OpenError::Damaged`].
fn open_writable(path: &Path, create: bool) -> Result<Database, OpenError> {
    let result = guarded(|| {
        let mut builder = Builder::new();
        builder.set_check_integrity_on_open(true);
        if create {
            builder.create(path)
        } else {
            builder.open(path)
        }
    });
    match result {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(e)) => Err(open_error(path, e)),
        Err(detail) => Err(OpenError::Damaged {
            path: path.to_path_buf(),
            detail,
        }),
    }
}

fn read_meta_of(db: &Database, path: &Path) -> Result<Meta, OpenError> {
    let damaged = |detail: String| OpenError::Damaged {
        path: path.to_path_buf(),
        detail,
    };
    guarded(|| {
        let txn = db.begin_read().map_err(|e| e.to_string())?;
        read_meta(&txn)
    })
    .map_err(damaged)?
    .map_err(damaged)
}

/// The result of a read-only look at a file before opening it for writing.
enum Probe {
    /// Opened; its `meta` records.
    Meta(Meta),
    /// Not closed cleanly: only a writable open (which recovers it) can read it.
    NeedsRecovery,
}

/// Opens a file read-only: never changes it. Refuses a file another process has open.
fn probe(path: &Path) -> Result<Probe, OpenError> {
    let result = guarded(|| {
        let db = match Builder::new().open_read_only(path) {
            Ok(db) => db,
            Err(DatabaseError::RepairAborted) => return Ok(Ok(Probe::NeedsRecovery)),
            Err(e) => return Err(e),
        };
        let meta = db
            .begin_read()
            .map_err(|e| e.to_string())
            .and_then(|txn| read_meta(&txn));
        Ok(meta.map(Probe::Meta))
    });
    match result {
        Ok(Ok(Ok(probe))) => Ok(probe),
        Ok(Ok(Err(detail))) | Err(detail) => Err(OpenError::Damaged {
            path: path.to_path_buf(),
            detail,
        }),
        Ok(Err(e)) => Err(open_error(path, e)),
    }
}

/// A scratch file removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A scratch copy opened (with its `meta` records), or why it could not be.
type OpenedCopy = Result<(Database, Meta), String>;

/// A scratch copy of the store.
struct Copy {
    /// Removes the copy when dropped.
    scratch: Scratch,
    /// The store was not closed cleanly (the copy was recovered).
    needs_recovery: bool,
    /// The copy, opened.
    opened: OpenedCopy,
}

/// Copies the store to a scratch file next to it and opens the copy for writing (which verifies
/// every checksum and recovers an unclean shutdown), leaving the store itself untouched. `Ok(Err)`
/// is a file that cannot be opened at all.
fn open_copy(path: &Path, scratch_name: &str) -> Result<Copy, OpenError> {
    std::fs::metadata(path).map_err(|e| io_error(path, e))?;
    // A read-only open takes the file's shared lock: no broker writes while it is copied.
    let probe = guarded(|| Builder::new().open_read_only(path));
    let needs_recovery = match &probe {
        Ok(Err(DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch)) => {
            return Err(OpenError::Locked {
                path: path.to_path_buf(),
            });
        }
        Ok(Err(DatabaseError::RepairAborted)) => true,
        _ => false,
    };
    let scratch = Scratch(data_dir(path).join(scratch_name));
    std::fs::copy(path, &scratch.0).map_err(|e| io_error(&scratch.0, e))?;
    drop(probe);
    let opened = match open_writable(&scratch.0, true) {
        Ok(db) => match read_meta_of(&db, path) {
            Ok(meta) => Ok((db, meta)),
            Err(OpenError::Damaged { detail, .. }) => Err(detail),
            Err(e) => return Err(e),
        },
        Err(OpenError::Damaged { detail, .. }) => Err(detail),
        Err(OpenError::Foreign { .. }) => {
            return Err(OpenError::Foreign {
                path: path.to_path_buf(),
            });
        }
        Err(OpenError::Io { source, .. }) => return Err(io_error(path, source)),
        Err(e) => return Err(e),
    };
    Ok(Copy {
        scratch,
        needs_recovery,
        opened,
    })
}

fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Flushes a directory's entries (renames) to disk, where the platform can.
fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        std::fs::File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The store
// ---------------------------------------------------------------------------------------------

/// Record counts by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecordCounts {
    /// Persistent sessions.
    pub sessions: u64,
    /// Messages referenced by deliveries.
    pub messages: u64,
    /// Deliveries to sessions.
    pub deliveries: u64,
    /// QoS 2 packet identifiers awaiting PUBREL.
    pub release_ids: u64,
    /// Retained messages.
    pub retained: u64,
}

impl RecordCounts {
    /// The counts of a snapshot.
    pub fn of(snapshot: &StoreSnapshot) -> Self {
        let n = |len: usize| u64::try_from(len).unwrap_or(u64::MAX);
        Self {
            sessions: n(snapshot.sessions.len()),
            messages: n(snapshot.messages.len()),
            deliveries: n(snapshot.deliveries.len()),
            release_ids: n(snapshot.release_ids.len()),
            retained: n(snapshot.retained.len()),
        }
    }

    /// Records of every kind.
    pub fn total(&self) -> u64 {
        self.sessions
            .saturating_add(self.messages)
            .saturating_add(self.deliveries)
            .saturating_add(self.release_ids)
            .saturating_add(self.retained)
    }
}

impl fmt::Display for RecordCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} sessions, {} messages, {} deliveries, {} QoS 2 identifiers awaiting PUBREL, {} \
             retained messages",
            self.sessions, self.messages, self.deliveries, self.release_ids, self.retained
        )
    }
}

/// What [`RedbStore::check`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    /// The store file.
    pub path: PathBuf,
    /// Whether redb could open the file (every page checksum verified).
    pub opened: bool,
    /// Why it could not, when it could not.
    pub damage: Option<String>,
    /// The file was not closed cleanly (the broker was killed): the next open recovers it, which
    /// is normal and loses nothing that was committed.
    pub needs_recovery: bool,
    /// The store format in the file (`None` for a file nothing was stored in yet, or one that
    /// could not be opened).
    pub format: Option<u64>,
    /// The records that decode, by kind.
    pub records: RecordCounts,
    /// The records that do not.
    pub bad_records: Vec<BadRecord>,
}

impl CheckReport {
    /// The file opens and every record decodes.
    pub fn is_healthy(&self) -> bool {
        self.opened && self.damage.is_none() && self.bad_records.is_empty()
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.path.display();
        let dir = data_dir(&self.path).display();
        if !self.opened {
            writeln!(
                f,
                "{path} cannot be opened: {}",
                self.damage.as_deref().unwrap_or("unknown damage")
            )?;
            writeln!(f, "None of its records can be read.")?;
            return write!(
                f,
                "Run `surgemq store repair --data-dir {dir}` to move it aside and start an empty \
                 store."
            );
        }
        if self.is_healthy() {
            write!(f, "{path} is healthy")?;
        } else if let Some(damage) = &self.damage {
            write!(f, "{path} cannot be read to the end ({damage})")?;
        } else {
            let n = self.bad_records.len();
            let records = if n == 1 { "record" } else { "records" };
            write!(f, "{path} has {n} unreadable {records}")?;
        }
        match self.format {
            Some(format) => writeln!(f, " (store format {format}).")?,
            None => writeln!(f, " (nothing stored yet).")?,
        }
        write!(f, "Readable: {}.", self.records)?;
        if self.needs_recovery {
            write!(
                f,
                "\nIt was not closed cleanly; the next start recovers it automatically, keeping \
                 every committed transaction."
            )?;
        }
        if !self.bad_records.is_empty() {
            write!(f, "\nUnreadable:")?;
            for bad in &self.bad_records {
                write!(f, "\n  {bad}")?;
            }
        }
        if !self.is_healthy() {
            write!(
                f,
                "\nRun `surgemq store repair --data-dir {dir}` to keep every readable record and \
                 move the damaged file aside."
            )?;
        }
        Ok(())
    }
}

/// What [`RedbStore::repair`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairReport {
    /// The store file (now the repaired one).
    pub path: PathBuf,
    /// Where the old file was moved (`surgemq.redb.damaged-<unix seconds>`). Never deleted.
    pub moved_aside: PathBuf,
    /// Whether the old file could be opened at all (if not, nothing could be recovered).
    pub opened: bool,
    /// Why it could not be opened, when it could not.
    pub damage: Option<String>,
    /// The records copied into the repaired file.
    pub kept: RecordCounts,
    /// The records left behind: unreadable, or deliveries of a message that was.
    pub dropped: Vec<BadRecord>,
}

impl fmt::Display for RepairReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.path.display();
        if self.opened {
            writeln!(f, "Repaired {path}.")?;
            if let Some(damage) = &self.damage {
                writeln!(f, "The old file could not be read to the end: {damage}")?;
            }
            writeln!(f, "Kept: {}.", self.kept)?;
            if self.dropped.is_empty() {
                writeln!(f, "Dropped: nothing.")?;
            } else {
                let n = self.dropped.len();
                let records = if n == 1 { "record" } else { "records" };
                writeln!(f, "Dropped {n} {records}:")?;
                for bad in &self.dropped {
                    writeln!(f, "  {bad}")?;
                }
            }
        } else {
            writeln!(
                f,
                "{path} could not be opened ({}); nothing could be recovered from it. An empty \
                 store takes its place.",
                self.damage.as_deref().unwrap_or("unknown damage")
            )?;
        }
        write!(
            f,
            "The old file was moved to {}; delete it once you no longer need it.",
            self.moved_aside.display()
        )
    }
}

/// The tables of one write transaction.
struct WriteTables<'txn> {
    sessions: redb::Table<'txn, &'static [u8], &'static [u8]>,
    messages: redb::Table<'txn, u64, &'static [u8]>,
    deliveries: redb::Table<'txn, (&'static [u8], u64), &'static [u8]>,
    release_ids: redb::Table<'txn, (&'static [u8], u16), ()>,
    retained: redb::Table<'txn, &'static [u8], &'static [u8]>,
}

impl WriteTables<'_> {
    fn apply(&mut self, op: &StoreOp) -> Result<(), Step> {
        match op {
            StoreOp::Clear => {
                self.sessions.retain(|_, _| false)?;
                self.messages.retain(|_, _| false)?;
                self.deliveries.retain(|_, _| false)?;
                self.release_ids.retain(|_, _| false)?;
                self.retained.retain(|_, _| false)?;
            }
            StoreOp::PutSession(session) => {
                let value = encode_session(session)?;
                self.sessions
                    .insert(session.client_id.as_bytes(), value.as_slice())?;
            }
            StoreOp::DeleteSession { client_id } => {
                let id = client_id.as_bytes();
                self.sessions.remove(id)?;
                self.deliveries
                    .retain_in((id, 0u64)..=(id, u64::MAX), |_, _| false)?;
                self.release_ids
                    .retain_in((id, 0u16)..=(id, u16::MAX), |_, ()| false)?;
            }
            StoreOp::PutMessage { id, message } => {
                let value = encode_message(message, "messages")?;
                self.messages.insert(*id, value.as_slice())?;
            }
            StoreOp::DeleteMessage { id } => {
                self.messages.remove(*id)?;
            }
            StoreOp::PutDelivery(delivery) => {
                let value = encode_delivery(delivery);
                self.deliveries.insert(
                    (delivery.client_id.as_bytes(), delivery.seq),
                    value.as_slice(),
                )?;
            }
            StoreOp::DeleteDelivery { client_id, seq } => {
                self.deliveries.remove((client_id.as_bytes(), *seq))?;
            }
            StoreOp::PutReleaseId {
                client_id,
                packet_id,
            } => {
                self.release_ids
                    .insert((client_id.as_bytes(), packet_id.get()), ())?;
            }
            StoreOp::DeleteReleaseId {
                client_id,
                packet_id,
            } => {
                self.release_ids
                    .remove((client_id.as_bytes(), packet_id.get()))?;
            }
            StoreOp::PutRetained(message) => {
                let value = encode_message(message, "retained")?;
                self.retained
                    .insert(message.topic.as_str().as_bytes(), value.as_slice())?;
            }
            StoreOp::DeleteRetained { topic } => {
                self.retained.remove(topic.as_str().as_bytes())?;
            }
        }
        Ok(())
    }
}

/// A failed step of a write transaction, before it is given the file's path.
enum Step {
    Encode(StoreError),
    Storage(String),
}

impl From<StoreError> for Step {
    fn from(e: StoreError) -> Self {
        Self::Encode(e)
    }
}

impl From<redb::StorageError> for Step {
    fn from(e: redb::StorageError) -> Self {
        Self::Storage(e.to_string())
    }
}

impl From<TableError> for Step {
    fn from(e: TableError) -> Self {
        Self::Storage(e.to_string())
    }
}

impl From<redb::TransactionError> for Step {
    fn from(e: redb::TransactionError) -> Self {
        Self::Storage(e.to_string())
    }
}

impl From<redb::CommitError> for Step {
    fn from(e: redb::CommitError) -> Self {
        Self::Storage(e.to_string())
    }
}

impl From<redb::SetDurabilityError> for Step {
    fn from(e: redb::SetDurabilityError) -> Self {
        Self::Storage(e.to_string())
    }
}

/// Applies `ops` in one durable write transaction, with the `meta` records when `init`.
fn write_ops<'a>(
    db: &Database,
    init: bool,
    ops: impl IntoIterator<Item = &'a StoreOp>,
) -> Result<u64, Step> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    let mut count = 0u64;
    {
        if init {
            let mut meta = txn.open_table(META)?;
            meta.insert("magic", MAGIC)?;
            meta.insert("format", FORMAT)?;
        }
        let mut tables = WriteTables {
            sessions: txn.open_table(SESSIONS)?,
            messages: txn.open_table(MESSAGES)?,
            deliveries: txn.open_table(DELIVERIES)?,
            release_ids: txn.open_table(RELEASE_IDS)?,
            retained: txn.open_table(RETAINED)?,
        };
        for op in ops {
            tables.apply(op)?;
            count += 1;
        }
    }
    txn.commit()?;
    Ok(count)
}

/// The operations that recreate a snapshot.
fn snapshot_ops(snapshot: StoreSnapshot) -> Vec<StoreOp> {
    let StoreSnapshot {
        sessions,
        messages,
        deliveries,
        release_ids,
        retained,
    } = snapshot;
    let mut ops = Vec::with_capacity(
        sessions.len() + messages.len() + deliveries.len() + release_ids.len() + retained.len(),
    );
    ops.extend(sessions.into_iter().map(StoreOp::PutSession));
    ops.extend(
        messages
            .into_iter()
            .map(|(id, message)| StoreOp::PutMessage { id, message }),
    );
    ops.extend(deliveries.into_iter().map(StoreOp::PutDelivery));
    ops.extend(
        release_ids
            .into_iter()
            .map(|(client_id, packet_id)| StoreOp::PutReleaseId {
                client_id,
                packet_id,
            }),
    );
    ops.extend(retained.into_iter().map(StoreOp::PutRetained));
    ops
}

/// The crash-safe file store: `surgemq.redb` in a data directory. See the
/// [module documentation](self) for the layout and the guarantees.
pub struct RedbStore {
    db: Database,
    path: PathBuf,
}

impl fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl RedbStore {
    /// Opens the store in `dir`, creating the directory and the file if missing.
    ///
    /// A file that was not closed cleanly (the broker was killed, the power failed) is recovered
    /// to its last committed transaction; that is normal. Every page checksum is verified.
    /// A file that is not a SurgeMQ store, is damaged, or was written by a newer version is
    /// refused with an [`OpenError`] saying what to do, and left unchanged.
    pub fn open(dir: &Path) -> Result<Self, OpenError> {
        std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
        let path = dir.join(FILE_NAME);
        let is_new = match std::fs::metadata(&path) {
            Ok(meta) => meta.len() == 0,
            Err(e) if e.kind() == io::ErrorKind::NotFound => true,
            Err(e) => return Err(io_error(&path, e)),
        };
        if !is_new {
            // Look before opening for writing, which would commit a recovery to someone else's
            // file, or to one from a newer version.
            match probe(&path) {
                Ok(Probe::Meta(meta)) => check_meta(&path, meta)?,
                Ok(Probe::NeedsRecovery) => {}
                // Unverified reads of a damaged file fail in unhelpful ways: the verified open
                // below says what is wrong (and changes nothing when it fails).
                Err(OpenError::Damaged { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let db = open_writable(&path, is_new)?;
        let meta = read_meta_of(&db, &path)?;
        check_meta(&path, meta)?;
        let store = Self { db, path };
        if meta == Meta::Empty {
            write_ops(&store.db, true, []).map_err(|e| OpenError::Io {
                path: store.path.clone(),
                source: io::Error::other(store.step_error(e).to_string()),
            })?;
        }
        Ok(store)
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn step_error(&self, step: Step) -> StoreError {
        match step {
            Step::Encode(e) => e,
            Step::Storage(detail) => self.storage_error(detail),
        }
    }

    fn storage_error(&self, detail: impl fmt::Display) -> StoreError {
        StoreError::Storage {
            path: self.path.clone(),
            detail: detail.to_string(),
        }
    }

    /// Reads every record back, for [`Broker::restore`](crate::broker::Broker::restore).
    /// Records come in key order: sessions and retained messages by client identifier and
    /// topic bytes, messages by number, deliveries and release identifiers by client identifier
    /// then number (the order of [`MemoryStore::snapshot`](super::MemoryStore::snapshot)).
    pub fn load(&self) -> Result<StoreSnapshot, LoadError> {
        let storage = |detail: String| LoadError::Storage {
            path: self.path.clone(),
            detail,
        };
        let scan = guarded(|| {
            let txn = self.db.begin_read().map_err(|e| e.to_string())?;
            Ok::<_, String>(scan(&txn))
        })
        .map_err(storage)?
        .map_err(storage)?;
        match scan.bad.into_iter().next() {
            None => Ok(scan.snapshot),
            Some(BadRecord { table, key, detail }) => Err(LoadError::BadRecord {
                path: self.path.clone(),
                table,
                key,
                detail,
            }),
        }
    }

    /// Applies `ops`, in order, in one write transaction, and returns once it is on disk. On an
    /// error nothing of it is stored.
    pub fn apply(&mut self, ops: &[StoreOp]) -> Result<(), StoreError> {
        self.apply_all(ops).map(|_| ())
    }

    fn apply_all<'a>(
        &mut self,
        ops: impl IntoIterator<Item = &'a StoreOp>,
    ) -> Result<u64, StoreError> {
        write_ops(&self.db, false, ops).map_err(|e| self.step_error(e))
    }

    /// Compacts the file: moves pages so that the free space at its end can be returned to the
    /// file system. Returns whether anything was moved. Run at start-up, before any other use.
    pub fn compact(&mut self) -> Result<bool, StoreError> {
        self.db.compact().map_err(|e| self.storage_error(e))
    }

    /// Closes the file, reporting an error dropping would ignore.
    pub fn close(self) -> Result<(), StoreError> {
        let Self { db, path } = self;
        db.close().map_err(|e| StoreError::Storage {
            path,
            detail: e.to_string(),
        })
    }

    /// Checks the store in `dir` without changing it: verifies every page checksum (on a scratch
    /// copy next to the file, removed afterwards) and decodes every record. Refuses a file a
    /// running broker has open ([`OpenError::Locked`]), one that is not a SurgeMQ store, and
    /// one from a newer version; a file redb cannot open is reported, not an error.
    pub fn check(dir: &Path) -> Result<CheckReport, OpenError> {
        let path = dir.join(FILE_NAME);
        let Copy {
            scratch: _scratch,
            needs_recovery,
            opened,
        } = open_copy(&path, &format!(".{FILE_NAME}.check-{}", std::process::id()))?;
        let mut report = CheckReport {
            path: path.clone(),
            opened: false,
            damage: None,
            needs_recovery,
            format: None,
            records: RecordCounts::default(),
            bad_records: Vec::new(),
        };
        let (db, meta) = match opened {
            Ok(opened) => opened,
            Err(detail) => {
                report.damage = Some(detail);
                return Ok(report);
            }
        };
        check_meta(&path, meta)?;
        report.opened = true;
        if let Meta::Ours { format } = meta {
            report.format = Some(format);
        }
        match guarded(|| db.begin_read().map(|txn| scan(&txn))) {
            Ok(Ok(scan)) => {
                report.records = RecordCounts::of(&scan.snapshot);
                report.bad_records = scan.bad;
            }
            Ok(Err(e)) => report.damage = Some(e.to_string()),
            Err(detail) => report.damage = Some(detail),
        }
        Ok(report)
    }

    /// Repairs the store in `dir`: copies every readable record into a fresh file
    /// (`surgemq.redb.new`, synced to disk), moves the old file aside as
    /// `surgemq.redb.damaged-<unix seconds>` and puts the fresh one in its place. Deliveries of a
    /// message that could not be read are dropped with it. A file that cannot be opened at all is
    /// moved aside the same way and an empty store takes its place. The old file is never
    /// deleted, nor changed. Refuses a file a running broker has open and one from a newer
    /// version.
    pub fn repair(dir: &Path) -> Result<RepairReport, OpenError> {
        let path = dir.join(FILE_NAME);
        let (scratch, opened) = match open_copy(
            &path,
            &format!(".{FILE_NAME}.repair-{}", std::process::id()),
        ) {
            // Nothing of a foreign file is ours to keep: it is moved aside like a damaged one.
            Err(OpenError::Foreign { .. }) => (None, Err("not a SurgeMQ store".to_owned())),
            Err(e) => return Err(e),
            Ok(Copy {
                scratch, opened, ..
            }) => (Some(scratch), opened),
        };
        let mut report = RepairReport {
            path: path.clone(),
            moved_aside: PathBuf::new(),
            opened: false,
            damage: None,
            kept: RecordCounts::default(),
            dropped: Vec::new(),
        };
        let mut snapshot = StoreSnapshot::default();
        match opened {
            Ok((db, meta)) => {
                check_meta(&path, meta).or_else(|e| match e {
                    OpenError::Foreign { .. } | OpenError::Damaged { .. } => Ok(()),
                    e => Err(e),
                })?;
                report.opened = true;
                match guarded(|| db.begin_read().map(|txn| scan(&txn))) {
                    Ok(Ok(scan)) => {
                        snapshot = scan.snapshot;
                        report.dropped = scan.bad;
                    }
                    Ok(Err(e)) => report.damage = Some(e.to_string()),
                    Err(detail) => report.damage = Some(detail),
                }
                drop(db);
            }
            Err(detail) => report.damage = Some(detail),
        }
        drop(scratch);

        // Deliveries of a message that was dropped cannot be delivered.
        let dropped_messages: BTreeSet<u64> = report
            .dropped
            .iter()
            .filter(|bad| bad.table == "messages")
            .filter_map(|bad| bad.key.parse().ok())
            .collect();
        if !dropped_messages.is_empty() {
            let mut dropped = Vec::new();
            snapshot.deliveries.retain(|d| {
                let keep = !dropped_messages.contains(&d.message);
                if !keep {
                    dropped.push(BadRecord {
                        table: "deliveries",
                        key: format!("{}/{}", show_bytes(d.client_id.as_bytes()), d.seq),
                        detail: format!("its message {} was unreadable", d.message),
                    });
                }
                keep
            });
            report.dropped.extend(dropped);
        }
        report.kept = RecordCounts::of(&snapshot);

        // Write the fresh file, and sync it, before the old one is moved.
        let new_path = dir.join(format!("{FILE_NAME}.new"));
        match std::fs::remove_file(&new_path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(&new_path, e)),
        }
        let written = {
            let db = open_writable(&new_path, true)?;
            let ops = snapshot_ops(snapshot);
            write_ops(&db, true, &ops)
                .map_err(|e| match e {
                    Step::Encode(e) => e.to_string(),
                    Step::Storage(detail) => detail,
                })
                .and_then(|_| db.close().map_err(|e| e.to_string()))
        };
        if let Err(detail) = written {
            return Err(io_error(&new_path, io::Error::other(detail)));
        }
        std::fs::File::open(&new_path)
            .and_then(|f| f.sync_all())
            .map_err(|e| io_error(&new_path, e))?;

        let seconds = unix_seconds();
        let mut aside = dir.join(format!("{FILE_NAME}.damaged-{seconds}"));
        let mut n = 1u32;
        while aside.exists() {
            n += 1;
            aside = dir.join(format!("{FILE_NAME}.damaged-{seconds}-{n}"));
        }
        std::fs::rename(&path, &aside).map_err(|e| io_error(&path, e))?;
        std::fs::rename(&new_path, &path).map_err(|e| io_error(&new_path, e))?;
        sync_dir(dir).map_err(|e| io_error(dir, e))?;
        report.moved_aside = aside;
        Ok(report)
    }
}

// ---------------------------------------------------------------------------------------------
// The group-commit worker
// ---------------------------------------------------------------------------------------------

/// When [`StoreWorker`] commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CommitPolicy {
    /// As soon as operations are pending, all of them in one transaction; operations submitted
    /// while it syncs go into the next. Nothing is acknowledged before it is on disk.
    #[default]
    Group,
    /// Every interval, whatever is pending, in one transaction (a zero interval is
    /// [`Group`](Self::Group)).
    Every(Duration),
}

/// A commit's outcome, passed to the worker's callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreDone {
    /// The sequence number of the last operation of the transaction: it and every operation
    /// submitted before it are committed (or, on an error, were not).
    pub seq: u64,
    /// The commit's result.
    pub result: Result<(), StoreError>,
}

/// The worker's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerStats {
    /// Transactions committed.
    pub commits: u64,
    /// Operations committed, in all.
    pub ops: u64,
}

struct Pending {
    ops: Vec<(u64, StoreOp)>,
    closing: bool,
}

struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
    commits: AtomicU64,
    ops: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The group-commit thread ("surgemq-store") every runtime adapter uses: operations are
/// [submitted](Self::submit) from any thread without waiting, committed in groups (see
/// [`CommitPolicy`]), and each commit is reported to a callback with the sequence number of its
/// last operation.
pub struct StoreWorker {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<Result<(), StoreError>>>,
}

impl fmt::Debug for StoreWorker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreWorker")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl StoreWorker {
    /// Starts the thread, which owns `store` until [`close`](Self::close). `on_done` runs on
    /// that thread after each commit; it should only hand the result on (to the broker's
    /// input), not block.
    ///
    /// # Panics
    ///
    /// If the operating system cannot start a thread.
    pub fn spawn(
        store: RedbStore,
        policy: CommitPolicy,
        on_done: impl Fn(StoreDone) + Send + 'static,
    ) -> Self {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending {
                ops: Vec::new(),
                closing: false,
            }),
            wake: Condvar::new(),
            commits: AtomicU64::new(0),
            ops: AtomicU64::new(0),
        });
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("surgemq-store".to_owned())
            .spawn(move || run(store, policy, &thread_shared, on_done))
            .expect("failed to start the surgemq-store thread");
        Self {
            shared,
            thread: Some(thread),
        }
    }

    /// Queues one operation; `seq` must be larger than every one submitted before.
    pub fn submit(&self, seq: u64, op: StoreOp) {
        self.shared.lock().ops.push((seq, op));
        self.shared.wake.notify_one();
    }

    /// Queues operations (increasing sequence numbers), taking the lock once.
    pub fn submit_batch(&self, ops: impl IntoIterator<Item = (u64, StoreOp)>) {
        self.shared.lock().ops.extend(ops);
        self.shared.wake.notify_one();
    }

    /// Commits and operations so far.
    pub fn stats(&self) -> WorkerStats {
        WorkerStats {
            commits: self.shared.commits.load(Ordering::Relaxed),
            ops: self.shared.ops.load(Ordering::Relaxed),
        }
    }

    /// Commits what is pending, stops the thread, waits for it and closes the file. Returns the
    /// error of the last commit or of closing the file, if any.
    pub fn close(mut self) -> Result<(), StoreError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), StoreError> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        self.shared.lock().closing = true;
        self.shared.wake.notify_one();
        thread.join().unwrap_or(Err(StoreError::WorkerStopped))
    }
}

impl Drop for StoreWorker {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// What [`setup`] calls once the worker has stopped: its counters and how its last commit (or
/// closing the file) went. Adapters log it.
pub type OnClose = Box<dyn FnOnce(WorkerStats, Result<(), StoreError>) + Send>;

/// Why [`setup`] failed; the messages name the file and what to do.
#[derive(Debug)]
#[non_exhaustive]
pub enum SetupError {
    /// The file could not be opened.
    Open(OpenError),
    /// The file opened but its records could not be read.
    Load(LoadError),
}

impl fmt::Display for SetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Open(e) => write!(f, "{e}"),
            Self::Load(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for SetupError {}

/// Opens the store in `dir` (creating it), compacts it, reads it, and returns what an adapter
/// needs to run a broker or a client on it: the snapshot to restore, and the start of a
/// [`StoreWorker`] with `policy` as the adapter's [`StoreSink`]. A failed compaction is not an
/// error (the store stays uncompacted); `on_close` hears how the worker ended.
pub fn setup(
    dir: &Path,
    policy: CommitPolicy,
    on_close: OnClose,
) -> Result<StoreSetup, SetupError> {
    let mut store = RedbStore::open(dir).map_err(SetupError::Open)?;
    // Compaction only returns space to the file system: failing it loses nothing.
    let _ = store.compact();
    let snapshot = store.load().map_err(SetupError::Load)?;
    let start = move |done: DoneFn| -> Box<dyn StoreSink> {
        let worker = StoreWorker::spawn(store, policy, move |report| {
            let result = report.result.map_err(|e| StoreFailure(e.to_string()));
            done(report.seq, result);
        });
        Box::new(WorkerSink {
            worker: Some(worker),
            on_close: Some(on_close),
        })
    };
    Ok(StoreSetup {
        snapshot,
        start: Box::new(start),
    })
}

/// A [`StoreWorker`] as an adapter's [`StoreSink`].
struct WorkerSink {
    worker: Option<StoreWorker>,
    on_close: Option<OnClose>,
}

impl StoreSink for WorkerSink {
    fn submit(&mut self, ops: Vec<(u64, StoreOp)>) {
        if let Some(worker) = &self.worker {
            worker.submit_batch(ops);
        }
    }

    fn close(mut self: Box<Self>) {
        if let Some(worker) = self.worker.take() {
            let stats = worker.stats();
            let result = worker.close();
            if let Some(on_close) = self.on_close.take() {
                on_close(stats, result);
            }
        }
    }
}

/// The record a put or delete is about.
#[derive(PartialEq, Eq, Hash)]
enum RecordKey<'a> {
    Session(&'a MqttString),
    Message(u64),
    Delivery(&'a MqttString, u64),
    ReleaseId(&'a MqttString, u16),
    Retained(&'a str),
}

/// Which operations of one transaction to apply: a put followed, in the same transaction, by
/// another put or a delete of the same record (or by the deletion of its session) changes
/// nothing the transaction leaves behind, so it is skipped. Deletes are always applied (the
/// record may predate the transaction). The common case this serves: a message stored and
/// acknowledged while the previous commit was syncing costs two lookups instead of two inserts
/// and two deletes.
fn superseded(batch: &[(u64, StoreOp)]) -> Vec<bool> {
    let mut keep = alloc::vec![true; batch.len()];
    let mut later: std::collections::HashSet<RecordKey<'_>> = std::collections::HashSet::new();
    let mut deleted_sessions: BTreeSet<&MqttString> = BTreeSet::new();
    let mut cleared = false;
    for (i, (_, op)) in batch.iter().enumerate().rev() {
        if cleared {
            // Everything before a Clear is undone by it: only the Clear and what follows it
            // need applying.
            if let Some(k) = keep.get_mut(i) {
                *k = false;
            }
            continue;
        }
        let (key, put, client) = match op {
            StoreOp::Clear => {
                cleared = true;
                continue;
            }
            StoreOp::PutSession(s) => (RecordKey::Session(&s.client_id), true, Some(&s.client_id)),
            StoreOp::DeleteSession { client_id } => {
                deleted_sessions.insert(client_id);
                (RecordKey::Session(client_id), false, None)
            }
            StoreOp::PutMessage { id, .. } => (RecordKey::Message(*id), true, None),
            StoreOp::DeleteMessage { id } => (RecordKey::Message(*id), false, None),
            StoreOp::PutDelivery(d) => (
                RecordKey::Delivery(&d.client_id, d.seq),
                true,
                Some(&d.client_id),
            ),
            StoreOp::DeleteDelivery { client_id, seq } => {
                (RecordKey::Delivery(client_id, *seq), false, None)
            }
            StoreOp::PutReleaseId {
                client_id,
                packet_id,
            } => (
                RecordKey::ReleaseId(client_id, packet_id.get()),
                true,
                Some(client_id),
            ),
            StoreOp::DeleteReleaseId {
                client_id,
                packet_id,
            } => (
                RecordKey::ReleaseId(client_id, packet_id.get()),
                false,
                None,
            ),
            StoreOp::PutRetained(m) => (RecordKey::Retained(m.topic.as_str()), true, None),
            StoreOp::DeleteRetained { topic } => (RecordKey::Retained(topic.as_str()), false, None),
        };
        let overridden = !later.insert(key);
        let session_gone = client.is_some_and(|c| deleted_sessions.contains(c));
        if put
            && (overridden || session_gone)
            && let Some(k) = keep.get_mut(i)
        {
            *k = false;
        }
    }
    keep
}

/// The worker thread.
fn run(
    mut store: RedbStore,
    policy: CommitPolicy,
    shared: &Shared,
    on_done: impl Fn(StoreDone),
) -> Result<(), StoreError> {
    let interval = match policy {
        CommitPolicy::Every(d) if !d.is_zero() => Some(d),
        _ => None,
    };
    let mut batch: Vec<(u64, StoreOp)> = Vec::new();
    let mut last = Ok(());
    // After a failed commit nothing is committed until the broker's rewrite (which starts
    // with `StoreOp::Clear`) arrives: what came after the failed operations, committed alone,
    // would leave on disk a state the broker never had. It is then committed together with
    // the rewrite, which supersedes it.
    let mut failed = false;
    loop {
        let closing = {
            let mut pending = shared.lock();
            match interval {
                None => {
                    while pending.ops.is_empty() && !pending.closing {
                        pending = shared
                            .wake
                            .wait(pending)
                            .unwrap_or_else(PoisonError::into_inner);
                    }
                }
                Some(interval) => {
                    let deadline = std::time::Instant::now() + interval;
                    loop {
                        let now = std::time::Instant::now();
                        if pending.closing || now >= deadline {
                            break;
                        }
                        pending = shared
                            .wake
                            .wait_timeout(pending, deadline - now)
                            .unwrap_or_else(PoisonError::into_inner)
                            .0;
                    }
                }
            }
            batch.append(&mut pending.ops);
            pending.closing
        };
        let ready = !failed || batch.iter().any(|(_, op)| matches!(op, StoreOp::Clear));
        if ready && let Some(&(seq, _)) = batch.last() {
            let count = batch.len() as u64;
            let keep = superseded(&batch);
            let ops = batch.iter().zip(&keep).filter(|(_, k)| **k);
            let result = store.apply_all(ops.map(|((_, op), _)| op));
            let result = match result {
                Ok(_) => {
                    shared.commits.fetch_add(1, Ordering::Relaxed);
                    shared.ops.fetch_add(count, Ordering::Relaxed);
                    Ok(())
                }
                Err(e) => Err(e),
            };
            failed = result.is_err();
            last = result.clone();
            on_done(StoreDone { seq, result });
            batch.clear();
        }
        if closing {
            break;
        }
    }
    let closed = store.close();
    last.and(closed)
}
