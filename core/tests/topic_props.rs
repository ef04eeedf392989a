//! Property tests for `surgemq_core::topic`: the subscription trie agrees with the naive
//! `TopicFilter::matches` reference, churn leaves nothing behind, and parsing never panics.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use proptest::prelude::*;
use std::collections::BTreeMap;
use surgemq_core::topic::{Match, SubscriptionTrie, TopicError, TopicFilter, TopicName};

/// Levels that exercise every rule: empty levels, `$` topics, wildcards.
const FILTER_LEVELS: &[&str] = &["", "$SYS", "$x", "a", "b", "+", "#"];
const NAME_LEVELS: &[&str] = &["", "$SYS", "$x", "a", "b"];

fn join(levels: Vec<&str>) -> String {
    levels.join("/")
}

/// Valid filters over the small alphabet, a fifth of them shared in one of two groups.
fn filter_strategy() -> impl Strategy<Value = TopicFilter> {
    let plain = prop::collection::vec(prop::sample::select(FILTER_LEVELS), 1..5).prop_map(join);
    (plain, 0u8..10).prop_filter_map("invalid filter", |(text, share)| {
        let text = match share {
            0 => format!("$share/g/{text}"),
            1 => format!("$share/h/{text}"),
            _ => text,
        };
        TopicFilter::parse(&text).ok()
    })
}

/// Deeper filters over a wider alphabet: nodes with many children, names past the level cache.
fn wide_filter_strategy() -> impl Strategy<Value = TopicFilter> {
    let level = prop_oneof![
        8 => (0u8..40).prop_map(|i| format!("w{i}")),
        1 => Just("+".to_owned()),
        1 => Just("#".to_owned()),
        1 => Just(String::new()),
    ];
    prop::collection::vec(level, 1..12).prop_filter_map("invalid filter", |levels| {
        TopicFilter::parse(&levels.join("/")).ok()
    })
}

fn wide_name_strategy() -> impl Strategy<Value = TopicName> {
    let level = prop_oneof![
        8 => (0u8..40).prop_map(|i| format!("w{i}")),
        1 => Just(String::new()),
        1 => Just("$w".to_owned()),
    ];
    prop::collection::vec(level, 1..12).prop_filter_map("empty name", |levels| {
        TopicName::parse(&levels.join("/")).ok()
    })
}

fn name_strategy() -> impl Strategy<Value = TopicName> {
    prop::collection::vec(prop::sample::select(NAME_LEVELS), 1..6)
        .prop_map(join)
        .prop_filter_map("empty name", |text| TopicName::parse(&text).ok())
}

/// (group, subscriber, filter) triples: one per matching subscription, sorted.
type Hits = Vec<(Option<String>, u8, String)>;

fn trie_hits(trie: &SubscriptionTrie<u8, TopicFilter>, name: &TopicName) -> Hits {
    let mut hits = Vec::new();
    trie.for_each_match(name, |m| match m {
        Match::Subscriber { subscriber, value } => {
            hits.push((None, *subscriber, value.as_str().to_owned()));
        }
        Match::SharedGroup { group, members } => {
            assert!(!members.is_empty());
            for (subscriber, value) in members {
                hits.push((
                    Some(group.to_owned()),
                    *subscriber,
                    value.as_str().to_owned(),
                ));
            }
        }
    });
    hits.sort();
    hits
}

fn naive_hits(model: &BTreeMap<(TopicFilter, u8), u32>, name: &TopicName) -> Hits {
    let mut hits: Hits = model
        .keys()
        .filter(|(filter, _)| filter.matches(name))
        .map(|(filter, subscriber)| {
            let group = filter.shared().map(|shared| shared.group.to_owned());
            (group, *subscriber, filter.as_str().to_owned())
        })
        .collect();
    hits.sort();
    hits
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn trie_matches_equal_naive_matches(
        subscriptions in prop::collection::vec((filter_strategy(), 0u8..4), 0..40),
        names in prop::collection::vec(name_strategy(), 1..20),
    ) {
        let mut trie = SubscriptionTrie::new();
        let mut model = BTreeMap::new();
        for (filter, subscriber) in subscriptions {
            trie.insert(&filter, subscriber, filter.clone());
            model.insert((filter, subscriber), 0);
        }
        prop_assert_eq!(trie.len(), model.len());
        for name in &names {
            prop_assert_eq!(trie_hits(&trie, name), naive_hits(&model, name), "name {}", name);
        }
    }

    #[test]
    fn churn_agrees_with_a_model_and_leaves_an_empty_trie(
        ops in prop::collection::vec((any::<bool>(), filter_strategy(), 0u8..3), 0..120),
        names in prop::collection::vec(name_strategy(), 1..8),
    ) {
        let mut trie = SubscriptionTrie::new();
        let mut values = SubscriptionTrie::<u8, TopicFilter>::new();
        let mut model: BTreeMap<(TopicFilter, u8), u32> = BTreeMap::new();
        for (step, (insert, filter, subscriber)) in (0u32..).zip(ops) {
            let key = (filter.clone(), subscriber);
            if insert {
                prop_assert_eq!(trie.insert(&filter, subscriber, step), model.insert(key, step));
                values.insert(&filter, subscriber, filter.clone());
            } else {
                prop_assert_eq!(trie.remove(&filter, &subscriber), model.remove(&key));
                values.remove(&filter, &subscriber);
            }
            prop_assert_eq!(trie.len(), model.len());
            prop_assert_eq!(trie.get(&filter, &subscriber), model.get(&(filter, subscriber)));
        }
        for name in &names {
            prop_assert_eq!(trie_hits(&values, name), naive_hits(&model, name));
        }
        for (filter, subscriber) in model.keys() {
            prop_assert!(trie.remove(filter, subscriber).is_some());
            prop_assert!(values.remove(filter, subscriber).is_some());
        }
        prop_assert!(trie.is_empty());
        prop_assert_eq!(trie.len(), 0);
        prop_assert_eq!(trie.node_count(), 1);
        prop_assert_eq!(values.node_count(), 1);
    }

    #[test]
    fn parse_never_panics_on_arbitrary_strings(text in any::<String>(), other in "[a-b$+#/]{0,12}") {
        for s in [text.as_str(), other.as_str()] {
            let name = TopicName::parse(s);
            let filter = TopicFilter::parse(s);
            if let Ok(name) = &name {
                prop_assert!(!name.as_str().contains(['+', '#']));
                prop_assert!(!name.is_empty());
            }
            if let Ok(filter) = &filter {
                prop_assert!(!filter.inner_filter().is_empty());
                // A filter without wildcards is also a name, and matches exactly itself.
                if !filter.has_wildcards() {
                    let as_name = TopicName::parse(filter.inner_filter()).unwrap();
                    prop_assert!(filter.matches(&as_name));
                }
            }
            if let (Ok(name), Ok(filter)) = (&name, &filter) {
                let _ = filter.matches(name);
            }
            if s.is_empty() {
                prop_assert_eq!(name, Err(TopicError::Empty));
            }
        }
    }

    #[test]
    fn parse_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        let bytes = bytes::Bytes::from(bytes);
        if let Ok(s) = surgemq_core::string::MqttString::from_bytes(bytes) {
            let _ = TopicName::new(s.clone());
            let _ = TopicFilter::new(s);
        }
    }
}

proptest! {
    // Bigger cases: fewer of them.
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn trie_matches_equal_naive_matches_on_wide_deep_topics(
        subscriptions in prop::collection::vec((wide_filter_strategy(), 0u8..4), 0..200),
        names in prop::collection::vec(wide_name_strategy(), 1..20),
    ) {
        let mut trie = SubscriptionTrie::with_seed(0x1234);
        let mut model = BTreeMap::new();
        for (filter, subscriber) in &subscriptions {
            trie.insert(filter, *subscriber, filter.clone());
            model.insert((filter.clone(), *subscriber), 0);
        }
        // Also name the subscribed exact filters, so that deep matches happen.
        let exact = subscriptions
            .iter()
            .filter(|(filter, _)| !filter.has_wildcards())
            .map(|(filter, _)| TopicName::parse(filter.inner_filter()).unwrap());
        for name in names.iter().cloned().chain(exact) {
            prop_assert_eq!(trie_hits(&trie, &name), naive_hits(&model, &name), "name {}", name);
        }
        for (filter, subscriber) in model.keys() {
            prop_assert!(trie.remove(filter, subscriber).is_some());
        }
        prop_assert_eq!(trie.node_count(), 1);
    }
}
