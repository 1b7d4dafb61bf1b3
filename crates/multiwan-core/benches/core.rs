//! Microbenchmarks of the pure core (`cargo bench -p multiwan-core`): config validation and
//! planning at several sizes, the health monitor's per-round cost, and `explain`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use multiwan_core::explain::{explain, Health, Query};
use multiwan_core::health::{LinkStatus, Monitor};
use multiwan_core::plan::{assign_ids, plan};
use multiwan_core::{load, Facts};

fn config(uplinks: usize, rules: usize) -> String {
    let mut t = String::from("[lan]\ninterfaces = [\"lan0\"]\n");
    for i in 0..uplinks {
        t += &format!(
            "[[uplink]]\nname = \"u{i}\"\ninterface = \"wan{i}\"\ngateway = \"10.{}.{}.1\"\nweight = {}\n",
            i / 200,
            i % 200,
            1 + i % 3
        );
    }
    for r in 0..rules {
        t += &format!(
            "[[rule]]\nname = \"r{r}\"\nsrc = [\"192.168.{}.{}\"]\nproto = \"tcp\"\ndport = [\"{}\"]\nuplinks = [\"u{}\"]\n",
            r / 250,
            r % 250 + 1,
            1000 + r,
            r % uplinks
        );
    }
    t
}

fn bench_plan(c: &mut Criterion) {
    for (u, r) in [(2, 0), (16, 0), (64, 0), (2, 1000)] {
        let text = config(u, r);
        c.bench_function(&format!("load {u} uplinks {r} rules"), |b| {
            b.iter(|| load("bench.toml", black_box(&text)).expect("valid"))
        });
        let cfg = load("bench.toml", &text).expect("valid");
        let ids = assign_ids(&cfg, &BTreeMap::new()).expect("ids");
        let all: BTreeSet<String> = cfg.uplinks.iter().map(|u| u.name.clone()).collect();
        c.bench_function(&format!("plan {u} uplinks {r} rules"), |b| {
            b.iter(|| plan(black_box(&cfg), &ids, &all, &Facts::default()))
        });
    }
}

fn bench_health(c: &mut Criterion) {
    let cfg = load("bench.toml", &config(2, 0)).expect("valid");
    let check = cfg.uplinks[0].check.clone();
    let mut m = Monitor::new(&check, LinkStatus::Ok, Instant::now());
    let ok = [Some(Duration::from_millis(12))];
    let mut t = Instant::now();
    c.bench_function("monitor round", |b| {
        b.iter(|| {
            t += Duration::from_millis(100);
            m.round(black_box(&ok), t)
        })
    });
}

fn bench_explain(c: &mut Criterion) {
    let text = config(16, 1000).replace("[lan]", "[balance]\nmethod = \"src-hash\"\n[lan]");
    let cfg = load("bench.toml", &text).expect("valid");
    let q = Query {
        src: "10.1.2.3".parse().expect("ip"),
        dst: Some("192.0.2.1".parse().expect("ip")),
        proto: Some(multiwan_core::model::Proto::Tcp),
        sport: None,
        dport: Some(443),
    };
    let health = Health::from_states(&cfg, BTreeMap::new(), multiwan_core::net::Family::V4);
    c.bench_function("explain 16 uplinks 1000 rules src-hash", |b| {
        b.iter(|| {
            explain(
                black_box(&cfg),
                &health,
                &multiwan_core::Facts::default(),
                &q,
            )
        })
    });
}

criterion_group!(benches, bench_plan, bench_health, bench_explain);
criterion_main!(benches);
