//! Subscription trie benchmarks: match rate over 100,000 subscriptions (exact, '+', '#' and
//! shared filters) for 5-level topics, and subscribe/unsubscribe churn.
//!
//! Baseline in the same run: `naive_scan`, the reference matcher `TopicFilter::matches` applied to
//! every stored filter (what the trie replaces). Target: at least 1 M matches/s for the trie.
#![allow(missing_docs, clippy::unwrap_used, clippy::indexing_slicing)]

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use surgemq_core::topic::{Match, SubscriptionTrie, TopicFilter, TopicName};

const SUBSCRIPTIONS: usize = 100_000;
const NAMES: usize = 1024;
/// Distinct values per level of the 5-level topic space (100 M topics).
const LEVEL_SIZES: [u64; 5] = [20, 50, 50, 100, 20];
const LEVEL_PREFIXES: [&str; 5] = ["site", "building", "floor", "room", "sensor"];

/// SplitMix64: a seeded generator so every run benchmarks the same data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn random_levels(rng: &mut Rng) -> Vec<String> {
    (0..5)
        .map(|i| format!("{}{}", LEVEL_PREFIXES[i], rng.below(LEVEL_SIZES[i])))
        .collect()
}

/// 100,000 filters: 60% exact, 20% one '+', 5% two '+', 10% '#' after 2-4 levels, 5% shared.
fn filters(rng: &mut Rng) -> Vec<TopicFilter> {
    (0..SUBSCRIPTIONS)
        .map(|_| {
            let mut levels = random_levels(rng);
            let kind = rng.below(100);
            let text = match kind {
                0..60 => levels.join("/"),
                60..80 => {
                    levels[rng.below(5) as usize] = "+".into();
                    levels.join("/")
                }
                80..85 => {
                    levels[rng.below(5) as usize] = "+".into();
                    levels[rng.below(5) as usize] = "+".into();
                    levels.join("/")
                }
                85..95 => {
                    levels.truncate(2 + rng.below(3) as usize);
                    levels.push("#".into());
                    levels.join("/")
                }
                _ => {
                    if rng.below(2) == 0 {
                        levels[3] = "+".into();
                    }
                    format!("$share/group{}/{}", rng.below(4), levels.join("/"))
                }
            };
            TopicFilter::parse(&text).unwrap()
        })
        .collect()
}

/// Half the names are subscribed exact filters (hits), half random topics.
fn names(rng: &mut Rng, filters: &[TopicFilter], count: usize) -> Vec<TopicName> {
    (0..count)
        .map(|i| {
            if i % 2 == 0 {
                loop {
                    let f = &filters[rng.below(filters.len() as u64) as usize];
                    if !f.has_wildcards() {
                        return TopicName::parse(f.inner_filter()).unwrap();
                    }
                }
            }
            TopicName::parse(&random_levels(rng).join("/")).unwrap()
        })
        .collect()
}

fn build_trie(filters: &[TopicFilter], rng: &mut Rng) -> SubscriptionTrie<u32, u8> {
    let mut trie = SubscriptionTrie::new();
    for f in filters {
        trie.insert(f, rng.below(20_000) as u32, (rng.below(3)) as u8);
    }
    trie
}

fn count_matches(trie: &SubscriptionTrie<u32, u8>, name: &TopicName) -> usize {
    let mut count = 0;
    trie.for_each_match(name, |m| match m {
        Match::Subscriber { value, .. } => {
            black_box(value);
            count += 1;
        }
        Match::SharedGroup { members, .. } => count += members.len(),
    });
    count
}

fn bench_match(c: &mut Criterion) {
    let mut rng = Rng(0x5eed);
    let filters = filters(&mut rng);
    let trie = build_trie(&filters, &mut rng);
    let names = names(&mut rng, &filters, NAMES);
    let results: usize = names.iter().map(|n| count_matches(&trie, n)).sum();
    eprintln!(
        "topic bench: {} subscriptions, {} nodes, {:.2} matches per name",
        trie.len(),
        trie.node_count(),
        results as f64 / NAMES as f64
    );

    let mut group = c.benchmark_group("topic_match_100k");
    group.throughput(Throughput::Elements(NAMES as u64));
    group.bench_function("trie", |b| {
        b.iter(|| {
            let mut total = 0;
            for name in &names {
                total += count_matches(&trie, black_box(name));
            }
            black_box(total)
        })
    });
    group.finish();

    // The baseline scans every filter, so it runs on fewer names per iteration.
    let few = &names[..8];
    let mut group = c.benchmark_group("topic_match_100k");
    group.throughput(Throughput::Elements(few.len() as u64));
    group.sample_size(10);
    group.bench_function("naive_scan", |b| {
        b.iter(|| {
            let mut total = 0;
            for name in few {
                total += filters
                    .iter()
                    .filter(|f| f.matches(black_box(name)))
                    .count();
            }
            black_box(total)
        })
    });
    group.finish();
}

fn bench_churn(c: &mut Criterion) {
    let mut rng = Rng(0xc0ffee);
    let filters = filters(&mut rng);
    let mut trie = build_trie(&filters, &mut rng);
    let before = trie.len();
    let batch = 1000;
    // Fresh subscribers (ids above the ones in use) on filters drawn from the same mix.
    let churn: Vec<(TopicFilter, u32)> = filters
        .iter()
        .take(batch)
        .zip(1_000_000..)
        .map(|(f, s)| (f.clone(), s))
        .collect();

    let mut group = c.benchmark_group("topic_churn_100k");
    group.throughput(Throughput::Elements(2 * batch as u64));
    group.bench_with_input(
        BenchmarkId::new("subscribe_unsubscribe", batch),
        &churn,
        |b, churn| {
            b.iter(|| {
                for (f, s) in churn {
                    trie.insert(f, *s, 1);
                }
                for (f, s) in churn {
                    black_box(trie.remove(f, s));
                }
            })
        },
    );
    group.finish();
    assert_eq!(trie.len(), before);
}

criterion_group!(benches, bench_match, bench_churn);
criterion_main!(benches);
