//! [`Router`]: the routing state shared by all connections — the subscription trie and the
//! retained messages — and the rule that turns a topic into the set of sessions to deliver to.
//!
//! Knows nothing of connections or protocol state, so it can later be sharded across cores.
//! Never: deliver two copies of one message to one session ([MQTT-3.3.5-1]).

use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use alloc::vec::Vec;

use super::session::{Message, SessionKey};
use crate::codec::{QoS, SubscriptionOptions};
use crate::topic::{Match, SubscriptionTrie, TopicFilter, TopicName};

/// What [`Router::retain`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RetainChange {
    Stored,
    Cleared,
    Unchanged,
}

#[derive(Debug)]
pub(crate) struct Router {
    pub(crate) trie: SubscriptionTrie<SessionKey, SubscriptionOptions>,
    pub(crate) retained: BTreeMap<TopicName, Arc<Message>>,
    /// Reused between calls so that matching allocates nothing once warm.
    scratch: Vec<(SessionKey, QoS)>,
    /// Round-robin position for shared subscription groups.
    share_turn: usize,
}

impl Router {
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            trie: SubscriptionTrie::with_seed(seed),
            retained: BTreeMap::new(),
            scratch: Vec::new(),
            share_turn: 0,
        }
    }

    /// The sessions subscribed to `topic`, each once, with the highest QoS granted among its
    /// matching subscriptions ([MQTT-3.3.5-1]). Shared groups contribute one member each, in
    /// turn. The returned slice lives until the next call.
    pub(crate) fn subscribers(&mut self, topic: &TopicName) -> &[(SessionKey, QoS)] {
        let scratch = &mut self.scratch;
        let turn = &mut self.share_turn;
        scratch.clear();
        self.trie.for_each_match(topic, |m| match m {
            Match::Subscriber { subscriber, value } => scratch.push((*subscriber, value.qos)),
            Match::SharedGroup { members, .. } => {
                *turn = turn.wrapping_add(1);
                if let Some((subscriber, value)) = members.get(*turn % members.len()) {
                    scratch.push((*subscriber, value.qos));
                }
            }
        });
        if scratch.len() > 1 {
            // Highest QoS first within each session, then keep the first of each.
            scratch.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
            scratch.dedup_by_key(|e| e.0);
        }
        &self.scratch
    }

    pub(crate) fn subscribe(
        &mut self,
        session: SessionKey,
        filter: &TopicFilter,
        options: SubscriptionOptions,
    ) -> Option<SubscriptionOptions> {
        self.trie.insert(filter, session, options)
    }

    pub(crate) fn unsubscribe(&mut self, session: SessionKey, filter: &TopicFilter) -> bool {
        self.trie.remove(filter, &session).is_some()
    }

    /// Stores, replaces or (with an empty payload) clears the retained message of a topic
    /// ([MQTT-3.3.1-5], [MQTT-3.3.1-7], [MQTT-3.3.1-10], [MQTT-3.3.1-11]). Says what changed.
    pub(crate) fn retain(&mut self, message: &Arc<Message>, max: usize) -> RetainChange {
        if message.payload.is_empty() {
            match self.retained.remove(&message.topic) {
                Some(_) => RetainChange::Cleared,
                None => RetainChange::Unchanged,
            }
        } else if self.retained.len() < max || self.retained.contains_key(&message.topic) {
            self.retained
                .insert(message.topic.clone(), Arc::clone(message));
            RetainChange::Stored
        } else {
            RetainChange::Unchanged
        }
    }

    /// Retained messages whose topic matches `filter` (for a new subscription, [MQTT-3.3.1-6]).
    pub(crate) fn retained_matching<'a>(
        &'a self,
        filter: &'a TopicFilter,
    ) -> impl Iterator<Item = &'a Arc<Message>> + 'a {
        self.retained
            .values()
            .filter(move |m| filter.matches(&m.topic))
    }
}
