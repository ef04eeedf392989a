//! Topics: validated names and filters, shared subscriptions, and the subscription trie.
//!
//! Owns every rule of MQTT 3.1.1 / 5.0 section 4.7 (topic names and filters) and the filter form
//! of 5.0 section 4.8.2 (`$share/{ShareName}/{filter}`):
//!
//! - [`TopicName`]: what a PUBLISH is sent to; non-empty, no wildcards.
//! - [`TopicFilter`]: what a SUBSCRIBE asks for, plain or shared ([`SharedFilter`]), with a naive
//!   reference matcher ([`TopicFilter::matches`]).
//! - [`SubscriptionTrie`]: the index that finds every subscription matching a name, agreeing with
//!   the reference matcher, in time independent of how many subscriptions it holds.
//!
//! Never: panic on untrusted input, normalise names or filters ([MQTT-4.7.3-4]), slice a topic by
//! byte index, or match a name by scanning every stored filter.
#![deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::panic)]

mod children;
mod error;
mod filter;
mod name;
mod trie;

pub use error::TopicError;
pub use filter::{SHARE_PREFIX, SharedFilter, TopicFilter};
pub use name::TopicName;
pub use trie::{Match, SubscriptionTrie};
