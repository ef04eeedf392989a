//! Fuzzes topic name and filter parsing and matching: never panic; a name matches a filter in
//! the trie exactly when the reference matcher says so.
#![no_main]
use libfuzzer_sys::fuzz_target;
use surgemq_core::topic::{Match, SubscriptionTrie, TopicFilter, TopicName};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // "filter\nname": parse both halves; match them through the trie and the reference matcher.
    let (filter, name) = text.split_once('\n').unwrap_or((text, text));
    let filter = TopicFilter::parse(filter);
    let name = TopicName::parse(name);
    if let (Ok(filter), Ok(name)) = (filter, name) {
        let mut trie = SubscriptionTrie::new();
        trie.insert(&filter, 1u32, ());
        let mut found = false;
        trie.for_each_match(&name, |m| {
            found |= matches!(m, Match::Subscriber { .. } | Match::SharedGroup { .. });
        });
        assert_eq!(found, filter.matches(&name), "{filter:?} vs {name:?}");
        assert_eq!(trie.remove(&filter, &1), Some(()));
        assert!(trie.is_empty());
    }
});
