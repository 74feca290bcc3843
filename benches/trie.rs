//! Benchmarks of the subscription trie's hot path, `TopicTrie::for_each_match`, against
//! 10k and 1M subscriptions of a wildcard-heavy IoT mix:
//!
//! * `sensors/<id>/temp`: exact topics,
//! * `sensors/<id>/#`: everything from one device,
//! * `sensors/+/m<j>`: one metric from every device (1000 metrics, many subscribers each),
//! * `site/<s>/+/+/temp`: two `+` levels deep.
//!
//! Each iteration matches a fixed batch of topics drawn from the same id space; throughput is
//! reported in topics matched per second, and the mean number of entries visited per topic
//! is printed once per size. Run with `cargo bench --bench trie`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sluice::router::trie::TopicTrie;

const METRICS: u64 = 1000;
const SITES: u64 = 100;
const TOPICS_PER_ITER: usize = 256;

/// A small deterministic generator, so the benchmark needs no `rand`.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, bound: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % bound
    }
}

fn build(subscriptions: u64) -> TopicTrie<u64, u8> {
    let mut trie = TopicTrie::new();
    for i in 0..subscriptions {
        let filter = match i % 4 {
            0 => format!("sensors/{i}/temp"),
            1 => format!("sensors/{i}/#"),
            2 => format!("sensors/+/m{}", i % METRICS),
            _ => format!("site/{}/+/+/temp", i % SITES),
        };
        trie.insert(&filter, i, 1);
    }
    trie
}

fn topics(subscriptions: u64) -> Vec<String> {
    let mut rng = Lcg(42);
    (0..TOPICS_PER_ITER)
        .map(|n| {
            let id = rng.next(subscriptions);
            match n % 3 {
                0 => format!("sensors/{id}/temp"),
                1 => format!("sensors/{id}/m{}", rng.next(METRICS)),
                _ => format!("site/{}/dev{id}/probe/temp", rng.next(SITES)),
            }
        })
        .collect()
}

fn match_topics(trie: &TopicTrie<u64, u8>, topics: &[String]) -> usize {
    let mut visited = 0usize;
    for topic in topics {
        trie.for_each_match(topic, |key, value| {
            black_box((key, value));
            visited += 1;
        });
    }
    visited
}

fn bench_match(c: &mut Criterion) {
    let mut group = c.benchmark_group("trie_match");
    group.sample_size(20);
    for subscriptions in [10_000u64, 1_000_000] {
        let trie = build(subscriptions);
        let topics = topics(subscriptions);
        let visited = match_topics(&trie, &topics);
        println!(
            "{subscriptions} subscriptions, {} nodes: {:.1} entries visited per topic",
            trie.node_count(),
            visited as f64 / topics.len() as f64
        );
        group.throughput(Throughput::Elements(topics.len() as u64));
        group.bench_with_input(
            BenchmarkId::from_parameter(subscriptions),
            &topics,
            |b, topics| b.iter(|| black_box(match_topics(&trie, topics))),
        );
    }
    group.finish();
}

criterion_group!(benches, bench_match);
criterion_main!(benches);
