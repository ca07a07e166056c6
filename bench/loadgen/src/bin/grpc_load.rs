//! `grpc-load`: drives gRPC load at one service directly (no gateway), the way
//! ghz does: many concurrent calls multiplexed over a few HTTP/2 connections,
//! for a fixed time, with a progress bar on stderr and a summary at the end
//! (`--json`: one JSON object on stdout).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use mesh_proto::counter::v1::IncrementRequest;
use mesh_proto::counter::v1::counter_service_client::CounterServiceClient;
use mesh_proto::items::v1::GetItemRequest;
use mesh_proto::items::v1::item_service_client::ItemServiceClient;
use tonic::transport::{Channel, Endpoint};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Call {
    /// `mesh.items.v1.ItemService/GetItem` over ids 1..=--ids.
    GetItem,
    /// `mesh.counter.v1.CounterService/Increment` on one counter.
    Increment,
}

/// grpc-load: gRPC load against one service, no gateway in between.
#[derive(Parser, Debug)]
struct Args {
    /// The service, e.g. http://127.0.0.1:50051.
    #[arg(long)]
    target: String,
    #[arg(long, value_enum)]
    call: Call,
    /// Calls in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// HTTP/2 connections the calls share.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// How long to run.
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// GetItem asks for ids 1..=N in turn.
    #[arg(long, default_value_t = 10_000)]
    ids: i64,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

/// One worker: calls back to back until `until`, recording each latency.
async fn worker(
    call: Call,
    channel: Channel,
    ids: i64,
    seed: i64,
    until: Instant,
    done: Arc<AtomicU64>,
) -> (Vec<u32>, u64) {
    let mut items = ItemServiceClient::new(channel.clone());
    let mut counter = CounterServiceClient::new(channel);
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut n = seed;
    while Instant::now() < until {
        n += 1;
        let started = Instant::now();
        let ok = match call {
            Call::GetItem => items.get_item(GetItemRequest { id: n % ids.max(1) + 1 }).await.is_ok(),
            Call::Increment => counter
                .increment(IncrementRequest {
                    name: "grpc-load".into(),
                    delta: Some(1),
                    idempotency_key: String::new(),
                })
                .await
                .is_ok(),
        };
        latencies.push(started.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
        if !ok {
            errors += 1;
        }
        done.fetch_add(1, Ordering::Relaxed);
    }
    (latencies, errors)
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut channels = Vec::new();
    for _ in 0..args.connections.max(1) {
        channels.push(
            Endpoint::from_shared(args.target.clone())?
                .tcp_nodelay(true)
                .connect()
                .await?,
        );
    }
    let duration = Duration::from_secs(args.duration_secs.max(1));
    let started = Instant::now();
    let until = started + duration;
    let done = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..args.concurrency.max(1))
        .map(|w| {
            let channel = channels[w % channels.len()].clone();
            let seed = (w as i64) * 7919;
            tokio::spawn(worker(args.call, channel, args.ids, seed, until, done.clone()))
        })
        .collect();

    let bar = indicatif::ProgressBar::with_draw_target(
        Some(duration.as_millis() as u64),
        indicatif::ProgressDrawTarget::stderr(),
    );
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {elapsed}/{duration} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let elapsed = started.elapsed();
        bar.set_position(elapsed.as_millis() as u64);
        let calls = done.load(Ordering::Relaxed);
        bar.set_message(format!("{calls} calls, {:.0}/s", calls as f64 / elapsed.as_secs_f64()));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for w in workers {
        let (l, e) = w.await?;
        latencies.extend(l);
        errors += e;
    }
    bar.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let summary = serde_json::json!({
        "requests": latencies.len(),
        "errors": errors,
        "rps": latencies.len() as f64 / elapsed,
        "p50_ms": percentile(&latencies, 0.50),
        "p90_ms": percentile(&latencies, 0.90),
        "p99_ms": percentile(&latencies, 0.99),
        "max_ms": percentile(&latencies, 1.0),
    });
    if args.json {
        println!("{summary}");
    } else {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    }
    Ok(())
}
