//! One allocation cycle at the scale of Mesos's allocator benchmarks
//! (`HierarchicalAllocator_BENCHMARK_Test.DeclineOffers`): agents × frameworks in
//! {1k×100, 5k×500, 10k×1k, 20k×2k}, one role, no filters, agents `cpus:24;mem:4GiB`
//! of which `cpus:1;mem:128MiB` is already in use, and frameworks that decline
//! every offer (with no filter) so every cycle offers every agent again.
//!
//! `allocate` times `Allocator::allocate` alone; `cycle` times a whole cycle as
//! the master would run it: allocate, then every framework declines its offers.
//!
//! Run: `cargo bench -p wasmos-allocator --bench allocator`.

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use wasmos_allocator::{AgentInfo, Allocation, Allocator, Config, Offer};
use wasmos_model::{AgentId, FrameworkId, Resources, Role};

const SIZES: [(usize, usize); 4] = [(1_000, 100), (5_000, 500), (10_000, 1_000), (20_000, 2_000)];

fn cluster(agents: usize, frameworks: usize) -> Allocator {
    let mut alloc = Allocator::new(Config { seed: 1, ..Config::default() });
    let role = Role::new("bench").unwrap();
    let fws: Vec<FrameworkId> = (0..frameworks).map(|i| FrameworkId::new(format!("fw-{i:05}")).unwrap()).collect();
    for f in &fws {
        alloc.add_framework(f.clone(), std::slice::from_ref(&role)).unwrap();
    }
    let total = Resources::parse("cpus:24;mem:4GiB").unwrap();
    let used = Allocation::from(Resources::parse("cpus:1;mem:128MiB").unwrap());
    for i in 0..agents {
        let id = AgentId::new(format!("agent-{i:06}")).unwrap();
        alloc.add_agent(id.clone(), AgentInfo::new(total.clone())).unwrap();
        alloc.add_allocation(&fws[i % frameworks], &id, &role, &used).unwrap();
    }
    alloc
}

fn decline_all(alloc: &mut Allocator, offers: &[Offer], now: Duration) {
    for o in offers {
        alloc.recover_resources(&o.framework, &o.agent, &o.role, &o.resources, None, now).unwrap();
    }
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("allocate");
    group.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    for (agents, frameworks) in SIZES {
        let mut alloc = cluster(agents, frameworks);
        let mut now = Duration::ZERO;
        group.bench_function(BenchmarkId::from_parameter(format!("{agents}x{frameworks}")), |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    let offers = alloc.allocate(now);
                    spent += start.elapsed();
                    assert_eq!(offers.len(), agents, "every agent is offered each cycle");
                    decline_all(&mut alloc, &offers, now);
                    now += Duration::from_secs(1);
                }
                spent
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("cycle");
    group.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    for (agents, frameworks) in SIZES {
        let mut alloc = cluster(agents, frameworks);
        let mut now = Duration::ZERO;
        group.bench_function(BenchmarkId::from_parameter(format!("{agents}x{frameworks}")), |b| {
            b.iter(|| {
                let offers = alloc.allocate(now);
                decline_all(&mut alloc, &offers, now);
                now += Duration::from_secs(1);
                offers.len()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
