//! [`SubscriptionTrie`]: routes a topic name to the subscriptions whose filters match it.
//!
//! One node per filter level: exact levels looked up by a seeded hash, the '+' level apart, and the
//! subscriptions of filters ending in '#' kept on the node the '#' hangs from. Shared
//! subscriptions (`$share/{group}/{filter}`) live at their inner filter's node, grouped by name.
//!
//! A match visits at most two children per level (the exact level and '+'), so its cost depends
//! on the topic's depth and the results, never on how many subscriptions are stored. It does not
//! allocate (unless more than 16 '+' branches are pending at once, which takes crafted filters).
//! Every walk (insert, remove, match, drop) is iterative, so a filter of 65,535 empty levels
//! cannot exhaust the stack.
//!
//! Never: allocate per ordinary match, normalise levels ([MQTT-4.7.3-4]), keep nodes nothing uses.

use super::children::{Children, Label, Labeled, Level};
use super::{TopicFilter, TopicName};
use alloc::boxed::Box;
use alloc::vec::Vec;
use core::fmt;

/// One result of [`SubscriptionTrie::for_each_match`].
#[derive(Debug, PartialEq, Eq)]
pub enum Match<'a, S, V> {
    /// A non-shared subscription whose filter matches.
    Subscriber {
        /// Who subscribed.
        subscriber: &'a S,
        /// The value stored with the subscription (e.g. its granted options).
        value: &'a V,
    },
    /// A shared subscription group whose filter matches; deliver to one of its members.
    SharedGroup {
        /// The ShareName.
        group: &'a str,
        /// The members and their values, sorted by subscriber (never empty).
        members: &'a [(S, V)],
    },
}

impl<S, V> Clone for Match<'_, S, V> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<S, V> Copy for Match<'_, S, V> {}

/// Subscriptions indexed by filter level, keyed by subscriber `S`, each carrying a value `V`.
pub struct SubscriptionTrie<S, V> {
    root: Node<S, V>,
    len: usize,
    seed: u64,
}

/// The level-hash seed of [`SubscriptionTrie::new`]; brokers pass their own to `with_seed`.
const DEFAULT_SEED: u64 = 0x5375_7267_654d_5121;

impl<S, V> Default for SubscriptionTrie<S, V> {
    fn default() -> Self {
        Self::with_seed(DEFAULT_SEED)
    }
}

impl<S, V> fmt::Debug for SubscriptionTrie<S, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscriptionTrie")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl<S, V> SubscriptionTrie<S, V> {
    /// An empty trie whose level hashes are keyed by `seed` (from the config: keep it secret).
    pub fn with_seed(seed: u64) -> Self {
        Self {
            root: Node::new(""),
            len: 0,
            seed,
        }
    }
}

impl<S: Ord, V> SubscriptionTrie<S, V> {
    /// An empty trie with a fixed level-hash seed (see [`with_seed`](Self::with_seed)).
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of stored (filter, subscriber) subscriptions, shared group members included.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no subscription is stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds `subscriber`'s subscription to `filter`; returns the value it replaces, if any ([MQTT-3.8.4-3]).
    pub fn insert(&mut self, filter: &TopicFilter, subscriber: S, value: V) -> Option<V> {
        let target = Target::of(filter);
        let mut node = &mut self.root;
        for level in target.levels() {
            // Never `None`: the child was just found or created.
            node = node.child_or_insert(self.seed, level)?;
        }
        let previous = node
            .list_or_insert(target.hash)
            .insert(target.group, subscriber, value);
        if previous.is_none() {
            self.len += 1;
        }
        previous
    }

    /// Removes `subscriber`'s subscription to exactly `filter` ([MQTT-3.10.4-1]) and prunes empty nodes.
    pub fn remove(&mut self, filter: &TopicFilter, subscriber: &S) -> Option<V> {
        let target = Target::of(filter);
        let mut node = &mut self.root;
        for level in target.levels() {
            node = node.child_mut(self.seed, level)?;
        }
        let removed = node.remove_subscription(target.hash, target.group, subscriber)?;
        self.len -= 1;
        if node.is_empty() {
            self.prune(&target);
        }
        Some(removed)
    }

    /// The value of `subscriber`'s subscription to exactly `filter`.
    pub fn get(&self, filter: &TopicFilter, subscriber: &S) -> Option<&V> {
        let target = Target::of(filter);
        let mut node = &self.root;
        for level in target.levels() {
            node = node.child(self.seed, level)?;
        }
        node.list(target.hash)?.get(target.group, subscriber)
    }

    /// Removes every subscription.
    pub fn clear(&mut self) {
        self.root = Node::new("");
        self.len = 0;
    }

    /// Calls `f` once per subscription (or shared group) whose filter matches `name`.
    ///
    /// A subscriber with several matching filters is reported once per filter. Leading '+' and
    /// '#' skip names starting with '$' ([MQTT-4.7.2-1]); the alias-only empty name matches nothing.
    pub fn for_each_match<'a, F>(&'a self, name: &TopicName, mut f: F)
    where
        F: FnMut(Match<'a, S, V>),
    {
        let name = name.as_str();
        if name.is_empty() {
            return;
        }
        let system = name.starts_with('$');
        let mut levels = NameLevels::new(self.seed);
        let mut pending = Frontier::new();
        let mut start = Some(Cursor {
            node: &self.root,
            rest: Some(name),
            depth: 0,
        });
        while let Some(cursor) = start.take().or_else(|| pending.pop()) {
            let Cursor {
                mut node,
                mut rest,
                mut depth,
            } = cursor;
            loop {
                let wildcards = !(depth == 0 && system);
                if let Some(subscriptions) = &node.subscriptions {
                    if wildcards {
                        // '#' matches all remaining levels, even none: "sport/#" matches "sport".
                        subscriptions.hash.emit(&mut f);
                    }
                    if rest.is_none() {
                        subscriptions.exact.emit(&mut f);
                    }
                }
                let Some(remaining) = rest else {
                    break;
                };
                let plus = if wildcards {
                    node.plus.as_deref()
                } else {
                    None
                };
                if node.children.is_empty() && plus.is_none() {
                    break;
                }
                let (level, next) = levels.at(depth, remaining);
                let exact = if node.children.is_empty() {
                    None
                } else {
                    node.children.get(level)
                };
                depth += 1;
                node = match (exact, plus) {
                    (Some(exact), Some(plus)) => {
                        pending.push(Cursor {
                            node: plus,
                            rest: next,
                            depth,
                        });
                        exact
                    }
                    (Some(only), None) | (None, Some(only)) => only,
                    (None, None) => break,
                };
                rest = next;
            }
        }
    }

    /// Number of nodes, root included: memory in use grows with this, not with churn.
    pub fn node_count(&self) -> usize {
        let mut count = 0;
        let mut stack = alloc::vec![&self.root];
        while let Some(node) = stack.pop() {
            count += 1;
            stack.extend(node.children.values());
            stack.extend(node.plus.as_deref());
        }
        count
    }

    /// Cuts the chain of nodes that only led to the (now empty) node at the end of `target`.
    fn prune(&mut self, target: &Target<'_>) {
        // Depth of the first node of the trailing run of removable nodes; the root stays.
        let mut cut = None;
        let mut node = &self.root;
        for (depth, level) in (1..).zip(target.levels()) {
            let Some(next) = node.child(self.seed, level) else {
                return;
            };
            if next.is_chain_link() {
                cut.get_or_insert(depth);
            } else {
                cut = None;
            }
            node = next;
        }
        let Some(cut) = cut else { return };
        let mut node = &mut self.root;
        for (depth, level) in (1..).zip(target.levels()) {
            if depth == cut {
                node.remove_child(self.seed, level);
                return;
            }
            let Some(next) = node.child_mut(self.seed, level) else {
                return;
            };
            node = next;
        }
    }
}

/// Where a filter's subscriptions live: the node path, the '#' flag and the share group.
struct Target<'f> {
    group: Option<&'f str>,
    /// The levels before a trailing '#', or `None` for the filter "#" (no levels).
    path: Option<&'f str>,
    hash: bool,
}

impl<'f> Target<'f> {
    fn of(filter: &'f TopicFilter) -> Self {
        let (group, inner) = match filter.shared() {
            Some(shared) => (Some(shared.group), shared.filter),
            None => (None, filter.as_str()),
        };
        let (path, hash) = if inner == "#" {
            (None, true)
        } else if let Some(path) = inner.strip_suffix("/#") {
            (Some(path), true)
        } else {
            (Some(inner), false)
        };
        Self { group, path, hash }
    }

    fn levels(&self) -> impl Iterator<Item = &'f str> + use<'f> {
        self.path.into_iter().flat_map(|path| path.split('/'))
    }
}

/// One filter level. Kept to about one cache line: subscriptions live behind one pointer.
struct Node<S, V> {
    /// The level this node is reached by (checked on lookup; "+" for a '+' child).
    label: Label,
    children: Children<Node<S, V>>,
    plus: Option<Box<Node<S, V>>>,
    subscriptions: Option<Box<NodeSubscriptions<S, V>>>,
}

struct NodeSubscriptions<S, V> {
    /// Subscriptions whose filter ends at this node.
    exact: Subscriptions<S, V>,
    /// Subscriptions whose filter ends with a '#' level below this node.
    hash: Subscriptions<S, V>,
}

impl<S, V> Labeled for Node<S, V> {
    fn label(&self) -> &Label {
        &self.label
    }
}

impl<S, V> Node<S, V> {
    fn new(level: &str) -> Self {
        Self {
            label: Label::new(level),
            children: Children::default(),
            plus: None,
            subscriptions: None,
        }
    }

    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.plus.is_none() && self.subscriptions.is_none()
    }

    /// No subscriptions and at most one child: removable once what is below it is gone.
    fn is_chain_link(&self) -> bool {
        self.subscriptions.is_none() && self.children.len() + usize::from(self.plus.is_some()) <= 1
    }

    fn child(&self, seed: u64, level: &str) -> Option<&Self> {
        if level == "+" {
            self.plus.as_deref()
        } else {
            self.children.get(Level::new(seed, level))
        }
    }

    fn child_mut(&mut self, seed: u64, level: &str) -> Option<&mut Self> {
        if level == "+" {
            self.plus.as_deref_mut()
        } else {
            self.children.get_mut(Level::new(seed, level))
        }
    }

    fn child_or_insert(&mut self, seed: u64, level: &str) -> Option<&mut Self> {
        if level == "+" {
            Some(self.plus.get_or_insert_with(|| Box::new(Self::new("+"))))
        } else {
            self.children
                .get_or_insert_with(Level::new(seed, level), Self::new)
        }
    }

    fn remove_child(&mut self, seed: u64, level: &str) {
        if level == "+" {
            self.plus = None;
        } else {
            self.children.remove(Level::new(seed, level));
        }
    }

    fn list(&self, hash: bool) -> Option<&Subscriptions<S, V>> {
        let subscriptions = self.subscriptions.as_deref()?;
        Some(if hash {
            &subscriptions.hash
        } else {
            &subscriptions.exact
        })
    }

    fn list_or_insert(&mut self, hash: bool) -> &mut Subscriptions<S, V> {
        let subscriptions = self.subscriptions.get_or_insert_with(|| {
            Box::new(NodeSubscriptions {
                exact: Subscriptions::default(),
                hash: Subscriptions::default(),
            })
        });
        if hash {
            &mut subscriptions.hash
        } else {
            &mut subscriptions.exact
        }
    }

    fn remove_subscription(&mut self, hash: bool, group: Option<&str>, subscriber: &S) -> Option<V>
    where
        S: Ord,
    {
        let subscriptions = self.subscriptions.as_deref_mut()?;
        let list = if hash {
            &mut subscriptions.hash
        } else {
            &mut subscriptions.exact
        };
        let removed = list.remove(group, subscriber)?;
        if subscriptions.exact.is_empty() && subscriptions.hash.is_empty() {
            self.subscriptions = None;
        }
        Some(removed)
    }

    // The children are boxed already: unboxing them only to drop them would copy each one.
    #[allow(clippy::vec_box)]
    fn detach_children(&mut self, into: &mut Vec<Box<Self>>) {
        self.children.drain_into(into);
        into.extend(self.plus.take());
    }
}

impl<S, V> Drop for Node<S, V> {
    // The default drop recurses once per level; a deep filter would overflow the stack.
    fn drop(&mut self) {
        if self.children.is_empty() && self.plus.is_none() {
            return;
        }
        let mut stack = Vec::new();
        self.detach_children(&mut stack);
        while let Some(mut node) = stack.pop() {
            node.detach_children(&mut stack);
            // `node` is dropped here without children: no recursion.
        }
    }
}

/// The subscriptions ending at one place: plain ones and shared groups, each sorted.
struct Subscriptions<S, V> {
    plain: Vec<(S, V)>,
    groups: Vec<Group<S, V>>,
}

struct Group<S, V> {
    name: Box<str>,
    members: Vec<(S, V)>,
}

impl<S, V> Default for Subscriptions<S, V> {
    fn default() -> Self {
        Self {
            plain: Vec::new(),
            groups: Vec::new(),
        }
    }
}

impl<S, V> Subscriptions<S, V> {
    fn is_empty(&self) -> bool {
        self.plain.is_empty() && self.groups.is_empty()
    }

    fn emit<'a, F: FnMut(Match<'a, S, V>)>(&'a self, f: &mut F) {
        for (subscriber, value) in &self.plain {
            f(Match::Subscriber { subscriber, value });
        }
        for group in &self.groups {
            f(Match::SharedGroup {
                group: &group.name,
                members: &group.members,
            });
        }
    }

    fn find_group(&self, name: &str) -> Result<usize, usize> {
        self.groups
            .binary_search_by(|group| (*group.name).cmp(name))
    }
}

impl<S: Ord, V> Subscriptions<S, V> {
    fn insert(&mut self, group: Option<&str>, subscriber: S, value: V) -> Option<V> {
        let Some(name) = group else {
            return insert_sorted(&mut self.plain, subscriber, value);
        };
        let index = match self.find_group(name) {
            Ok(index) => index,
            Err(index) => {
                let members = Vec::new();
                self.groups.insert(
                    index,
                    Group {
                        name: Box::from(name),
                        members,
                    },
                );
                index
            }
        };
        let group = self.groups.get_mut(index)?;
        insert_sorted(&mut group.members, subscriber, value)
    }

    fn remove(&mut self, group: Option<&str>, subscriber: &S) -> Option<V> {
        let Some(name) = group else {
            return remove_sorted(&mut self.plain, subscriber);
        };
        let index = self.find_group(name).ok()?;
        let group = self.groups.get_mut(index)?;
        let removed = remove_sorted(&mut group.members, subscriber)?;
        if group.members.is_empty() {
            self.groups.remove(index);
            if self.groups.is_empty() {
                self.groups = Vec::new();
            }
        }
        Some(removed)
    }

    fn get(&self, group: Option<&str>, subscriber: &S) -> Option<&V> {
        let list = match group {
            None => &self.plain,
            Some(name) => &self.groups.get(self.find_group(name).ok()?)?.members,
        };
        let index = list.binary_search_by(|(key, _)| key.cmp(subscriber)).ok()?;
        list.get(index).map(|(_, value)| value)
    }
}

fn insert_sorted<S: Ord, V>(list: &mut Vec<(S, V)>, subscriber: S, value: V) -> Option<V> {
    match list.binary_search_by(|(key, _)| key.cmp(&subscriber)) {
        Ok(index) => list
            .get_mut(index)
            .map(|(_, old)| core::mem::replace(old, value)),
        Err(index) => {
            list.insert(index, (subscriber, value));
            None
        }
    }
}

fn remove_sorted<S: Ord, V>(list: &mut Vec<(S, V)>, subscriber: &S) -> Option<V> {
    let index = list.binary_search_by(|(key, _)| key.cmp(subscriber)).ok()?;
    let (_, value) = list.remove(index);
    if list.is_empty() {
        // Give the buffer back: a node kept for other filters must not hold churned capacity.
        *list = Vec::new();
    }
    Some(value)
}

/// The first level of `rest` and what follows its '/', if anything does.
fn split_level(rest: &str) -> (&str, Option<&str>) {
    // A plain byte scan beats `split_once` on levels this short; '/' is ASCII, so both
    // indices are character boundaries and `get` always succeeds.
    match rest.bytes().position(|b| b == b'/') {
        Some(slash) => (rest.get(..slash).unwrap_or_default(), rest.get(slash + 1..)),
        None => (rest, None),
    }
}

/// A place in the trie still to visit during a match, with the part of the name left.
struct Cursor<'a, 'n, S, V> {
    node: &'a Node<S, V>,
    /// The levels not yet matched; `None` once the name is used up.
    rest: Option<&'n str>,
    /// Number of levels already matched.
    depth: usize,
}

/// Name levels kept split and hashed: every branch of a match reuses them.
const CACHED_LEVELS: usize = 8;

/// The name's levels by depth, each split and hashed once per match (deeper ones every time).
struct NameLevels<'n> {
    seed: u64,
    cached: [(Level<'n>, Option<&'n str>); CACHED_LEVELS],
    len: usize,
}

impl<'n> NameLevels<'n> {
    fn new(seed: u64) -> Self {
        Self {
            seed,
            cached: [(Level::new(0, ""), None); CACHED_LEVELS],
            len: 0,
        }
    }

    /// The level at `depth`, whose text starts `rest`, and the levels after it.
    fn at(&mut self, depth: usize, rest: &'n str) -> (Level<'n>, Option<&'n str>) {
        if depth < self.len
            && let Some(entry) = self.cached.get(depth)
        {
            return *entry;
        }
        let (text, next) = split_level(rest);
        let entry = (Level::new(self.seed, text), next);
        // Depths are first reached in order, so the cache fills from the front.
        if depth == self.len
            && let Some(slot) = self.cached.get_mut(depth)
        {
            *slot = entry;
            self.len += 1;
        }
        entry
    }
}

/// Inline slots for pending branches; deeper branching (hostile filter sets) spills to the heap.
const INLINE_BRANCHES: usize = 16;

/// The pending '+' branches of a match: a stack that allocates only past [`INLINE_BRANCHES`].
struct Frontier<'a, 'n, S, V> {
    inline: [Option<Cursor<'a, 'n, S, V>>; INLINE_BRANCHES],
    inline_len: usize,
    spill: Vec<Cursor<'a, 'n, S, V>>,
}

impl<'a, 'n, S, V> Frontier<'a, 'n, S, V> {
    fn new() -> Self {
        Self {
            inline: [const { None }; INLINE_BRANCHES],
            inline_len: 0,
            spill: Vec::new(),
        }
    }

    fn push(&mut self, cursor: Cursor<'a, 'n, S, V>) {
        match self.inline.get_mut(self.inline_len) {
            Some(slot) => {
                *slot = Some(cursor);
                self.inline_len += 1;
            }
            None => self.spill.push(cursor),
        }
    }

    fn pop(&mut self) -> Option<Cursor<'a, 'n, S, V>> {
        if let Some(cursor) = self.spill.pop() {
            return Some(cursor);
        }
        self.inline_len = self.inline_len.checked_sub(1)?;
        self.inline.get_mut(self.inline_len).and_then(Option::take)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use alloc::string::{String, ToString};
    use alloc::vec;

    type Trie = SubscriptionTrie<u32, &'static str>;

    fn filter(s: &str) -> TopicFilter {
        TopicFilter::parse(s).unwrap()
    }

    fn name(s: &str) -> TopicName {
        TopicName::parse(s).unwrap()
    }

    /// Builds a trie where subscriber `i` holds `filters[i]`, its value being the filter text.
    fn trie_of(filters: &[&'static str]) -> Trie {
        let mut trie = Trie::new();
        for (subscriber, f) in (0..).zip(filters) {
            assert_eq!(trie.insert(&filter(f), subscriber, f), None);
        }
        trie
    }

    /// The matched filters (values), shared groups as "group:member", sorted.
    fn matched(trie: &Trie, topic: &str) -> Vec<String> {
        let mut out = Vec::new();
        trie.for_each_match(&name(topic), |m| match m {
            Match::Subscriber { value, .. } => out.push(value.to_string()),
            Match::SharedGroup { group, members } => {
                for (subscriber, _) in members {
                    out.push(alloc::format!("{group}:{subscriber}"));
                }
            }
        });
        out.sort();
        out
    }

    #[test]
    fn multi_level_wildcard_matches_parent_and_children() {
        // Spec example (section 4.7.1.2). MQTT 3.1.1 [MQTT-4.7.1-2], MQTT 5.0 [MQTT-4.7.1-1]
        let trie = trie_of(&["sport/tennis/player1/#", "sport/#", "#", "sport/tennis/#"]);
        assert_eq!(
            matched(&trie, "sport/tennis/player1"),
            ["#", "sport/#", "sport/tennis/#", "sport/tennis/player1/#"]
        );
        assert_eq!(
            matched(&trie, "sport/tennis/player1/score/wimbledon"),
            ["#", "sport/#", "sport/tennis/#", "sport/tennis/player1/#"]
        );
        assert_eq!(matched(&trie, "sport"), ["#", "sport/#"]);
        assert_eq!(matched(&trie, "sport/"), ["#", "sport/#"]);
        assert_eq!(matched(&trie, "sports"), ["#"]);
    }

    #[test]
    fn single_level_wildcard_matches_one_level() {
        // Spec examples (section 4.7.1.3). MQTT 3.1.1 [MQTT-4.7.1-3], MQTT 5.0 [MQTT-4.7.1-2]
        let trie = trie_of(&["sport/tennis/+", "sport/+", "+/+", "/+", "+", "+/tennis/#"]);
        assert_eq!(
            matched(&trie, "sport/tennis/player1"),
            ["+/tennis/#", "sport/tennis/+"]
        );
        assert_eq!(
            matched(&trie, "sport/tennis/player1/ranking"),
            ["+/tennis/#"]
        );
        assert_eq!(matched(&trie, "sport"), ["+"]);
        assert_eq!(matched(&trie, "sport/"), ["+/+", "sport/+"]);
        assert_eq!(matched(&trie, "/finance"), ["+/+", "/+"]);
        assert_eq!(matched(&trie, "/"), ["+/+", "/+"]);
    }

    #[test]
    fn leading_wildcards_skip_dollar_topics() {
        // Spec examples (section 4.7.2). MQTT 3.1.1 [MQTT-4.7.2-1], MQTT 5.0 [MQTT-4.7.2-1]
        let trie = trie_of(&[
            "#",
            "+/monitor/Clients",
            "$SYS/#",
            "$SYS/monitor/+",
            "+",
            "+/#",
            "$share/g/#",
        ]);
        assert_eq!(
            matched(&trie, "$SYS/monitor/Clients"),
            ["$SYS/#", "$SYS/monitor/+"]
        );
        assert!(matched(&trie, "$").is_empty());
        assert_eq!(matched(&trie, "$SYS"), ["$SYS/#"]);
        assert_eq!(
            matched(&trie, "a/monitor/Clients"),
            ["#", "+/#", "+/monitor/Clients", "g:6"]
        );
    }

    #[test]
    fn matching_applies_no_normalisation() {
        // MQTT 3.1.1 [MQTT-4.7.3-4], MQTT 5.0 [MQTT-4.7.3-4]
        let trie = trie_of(&["ACCOUNTS", "a/b", "a//b", "/a", "a/", "a /b"]);
        assert!(matched(&trie, "Accounts").is_empty());
        assert_eq!(matched(&trie, "a//b"), ["a//b"]);
        assert_eq!(matched(&trie, "a/b"), ["a/b"]);
        assert_eq!(matched(&trie, "/a"), ["/a"]);
        assert_eq!(matched(&trie, "a/"), ["a/"]);
        assert!(matched(&trie, "a").is_empty());
        assert!(matched(&trie, "a/b/").is_empty());
    }

    #[test]
    fn alias_only_name_matches_nothing() {
        let trie = trie_of(&["#", "+"]);
        let mut calls = 0;
        trie.for_each_match(&TopicName::alias_only(), |_| calls += 1);
        assert_eq!(calls, 0);
    }

    #[test]
    fn identical_filter_replaces_the_subscription() {
        // MQTT 3.1.1 [MQTT-3.8.4-3], MQTT 5.0 [MQTT-3.8.4-3]
        let mut trie = SubscriptionTrie::new();
        assert_eq!(trie.insert(&filter("a/+"), 7, 0u8), None);
        assert_eq!(trie.insert(&filter("a/+"), 7, 1u8), Some(0));
        assert_eq!(trie.len(), 1);
        assert_eq!(trie.get(&filter("a/+"), &7), Some(&1));
        let mut seen = Vec::new();
        trie.for_each_match(&name("a/b"), |m| seen.push(m));
        assert_eq!(
            seen,
            [Match::Subscriber {
                subscriber: &7,
                value: &1
            }]
        );
    }

    #[test]
    fn overlapping_filters_are_each_reported() {
        let mut trie = SubscriptionTrie::new();
        trie.insert(&filter("a/+"), 1, "plus");
        trie.insert(&filter("a/#"), 1, "hash");
        trie.insert(&filter("a/b"), 1, "exact");
        assert_eq!(trie.len(), 3);
        let mut values = Vec::new();
        trie.for_each_match(&name("a/b"), |m| {
            if let Match::Subscriber { value, .. } = m {
                values.push(*value);
            }
        });
        values.sort_unstable();
        assert_eq!(values, ["exact", "hash", "plus"]);
    }

    #[test]
    fn unsubscribe_removes_only_the_identical_filter() {
        // MQTT 3.1.1 [MQTT-3.10.4-1], MQTT 5.0 [MQTT-3.10.4-1]
        let mut trie = trie_of(&["a/+", "a/#", "a/b", "$share/g/a/b"]);
        assert_eq!(trie.remove(&filter("a/+"), &1), None); // subscriber 1 holds "a/#"
        assert_eq!(trie.remove(&filter("a/b"), &3), None); // 3 holds the shared one
        assert_eq!(trie.remove(&filter("a/#"), &1), Some("a/#"));
        assert_eq!(trie.remove(&filter("a/#"), &1), None);
        assert_eq!(matched(&trie, "a/b"), ["a/+", "a/b", "g:3"]);
        assert_eq!(trie.len(), 3);
    }

    #[test]
    fn removing_everything_prunes_every_node() {
        let filters = [
            "sport/tennis/player1/#",
            "sport/+",
            "+/+",
            "/+",
            "#",
            "a//b/",
            "$SYS/#",
            "$share/g/a/b/c",
            "$share/h/+/#",
            "sport/tennis/player1",
        ];
        let mut trie = trie_of(&filters);
        assert!(trie.node_count() > 1);
        // Remove in an order that leaves deeper branches behind for a while.
        for (subscriber, f) in (0u32..10).zip(filters).rev() {
            assert_eq!(trie.remove(&filter(f), &subscriber), Some(f));
        }
        assert!(trie.is_empty());
        assert_eq!(trie.node_count(), 1);
    }

    #[test]
    fn pruning_keeps_nodes_still_in_use() {
        let mut trie = trie_of(&["a/b/c/d", "a/b"]);
        let before = trie.node_count();
        trie.insert(&filter("a/b/x/y/z"), 9, "deep");
        trie.remove(&filter("a/b/x/y/z"), &9);
        assert_eq!(trie.node_count(), before);
        assert_eq!(matched(&trie, "a/b/c/d"), ["a/b/c/d"]);
        assert_eq!(matched(&trie, "a/b"), ["a/b"]);
        trie.remove(&filter("a/b/c/d"), &0);
        assert_eq!(trie.node_count(), 3); // root, "a", "b"
        assert_eq!(matched(&trie, "a/b"), ["a/b"]);
    }

    #[test]
    fn shared_subscriptions_are_grouped_at_the_inner_filter() {
        // MQTT 5.0 [MQTT-4.8.2-1] [MQTT-4.8.2-2]: "$share/{ShareName}/{filter}" subscribes to {filter}.
        let mut trie = SubscriptionTrie::new();
        trie.insert(&filter("$share/consumer1/sport/tennis/+"), 2, 'b');
        trie.insert(&filter("$share/consumer1/sport/tennis/+"), 1, 'a');
        trie.insert(&filter("$share/consumer2/sport/tennis/+"), 1, 'c');
        trie.insert(&filter("sport/tennis/+"), 1, 'd');
        assert_eq!(trie.len(), 4);
        let mut seen = Vec::new();
        trie.for_each_match(&name("sport/tennis/player1"), |m| seen.push(m));
        assert_eq!(
            seen,
            [
                Match::Subscriber {
                    subscriber: &1,
                    value: &'d'
                },
                Match::SharedGroup {
                    group: "consumer1",
                    members: &[(1, 'a'), (2, 'b')]
                },
                Match::SharedGroup {
                    group: "consumer2",
                    members: &[(1, 'c')]
                },
            ]
        );
        assert_eq!(
            trie.get(&filter("$share/consumer2/sport/tennis/+"), &1),
            Some(&'c')
        );
        assert_eq!(
            trie.remove(&filter("$share/consumer2/sport/tennis/+"), &1),
            Some('c')
        );
        assert_eq!(
            trie.remove(&filter("$share/consumer1/sport/tennis/+"), &1),
            Some('a')
        );
        let mut groups = Vec::new();
        trie.for_each_match(&name("sport/tennis/x"), |m| {
            if let Match::SharedGroup { group, members } = m {
                groups.push((group, members.len()));
            }
        });
        assert_eq!(groups, [("consumer1", 1)]);
    }

    #[test]
    fn deep_filters_do_not_exhaust_the_stack() {
        // 65,535 empty levels: every walk must be iterative.
        let deep: String = core::iter::repeat_n('/', 65_534).collect();
        let mut trie = SubscriptionTrie::new();
        trie.insert(&filter(&deep), 1u32, ());
        let mut plus = String::from("+");
        for _ in 0..32_000 {
            plus.push_str("/+");
        }
        trie.insert(&filter(&plus), 2, ());
        let mut hits = Vec::new();
        trie.for_each_match(&name(&deep), |m| {
            if let Match::Subscriber { subscriber, .. } = m {
                hits.push(*subscriber);
            }
        });
        assert_eq!(hits, [1]);
        assert_eq!(trie.remove(&filter(&deep), &1), Some(()));
        assert_eq!(trie.node_count(), 32_002);
        drop(trie); // the '+' chain is dropped without recursion
    }

    #[test]
    fn many_pending_branches_spill_and_still_match() {
        // Filter i is i empty levels then '+': every level of the name "/.../" branches.
        let mut trie = SubscriptionTrie::new();
        let mut f = String::new();
        for i in 0..200u32 {
            let mut text = f.clone();
            text.push('+');
            trie.insert(&filter(&text), i, ());
            f.push('/');
        }
        trie.insert(&filter("#"), 999, ());
        for levels in [1usize, 17, 100, 200] {
            let topic: String = core::iter::repeat_n('/', levels - 1).collect();
            let topic = if topic.is_empty() {
                String::from("x")
            } else {
                topic
            };
            let mut hits = Vec::new();
            trie.for_each_match(&name(&topic), |m| {
                if let Match::Subscriber { subscriber, .. } = m {
                    hits.push(*subscriber);
                }
            });
            hits.sort_unstable();
            assert_eq!(
                hits,
                vec![u32::try_from(levels).unwrap() - 1, 999],
                "{levels}"
            );
        }
    }

    #[test]
    fn clear_empties_the_trie() {
        let mut trie = trie_of(&["a/b", "#"]);
        trie.clear();
        assert!(trie.is_empty());
        assert_eq!(trie.node_count(), 1);
        assert!(matched(&trie, "a/b").is_empty());
    }
}
