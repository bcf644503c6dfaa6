//! `hermes-loadgen`: drives HTTP servers for the Hermes benchmarks.
//!
//! Open loop (`--rate`): requests are scheduled at a fixed total rate, spread over the
//! connections. When a connection is still busy at a request's intended send time, its latency is
//! measured from that intended time, so a stalled server shows as latency instead of silently
//! lowering the load (no coordinated omission); when the connection was idle, from the actual send,
//! so the generator's own timer slack (about a millisecond) is not charged to the server. Closed loop (no `--rate`): each connection sends its next request when the last
//! response is in. Latencies go to an HdrHistogram; results are printed, and written as JSON and
//! CSV on request.
mod workload;

use std::{
    collections::BTreeMap,
    io::Write as _,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use clap::Parser;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::Instant,
};
use workload::{Rng, Workload};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "HTTP load generator: open loop at a fixed rate, or closed loop"
)]
struct Args {
    /// Servers to load, HOST:PORT, comma-separated; connections are spread over them.
    #[arg(long, value_delimiter = ',', required = true)]
    targets: Vec<SocketAddr>,
    /// Kept-alive connections.
    #[arg(long, default_value_t = 32)]
    connections: u64,
    /// Total requests per second (open loop). Without it: closed loop.
    #[arg(long)]
    rate: Option<f64>,
    /// Measured time.
    #[arg(long, default_value = "10", value_parser = parse_seconds)]
    duration: Duration,
    /// Load before measuring, not counted.
    #[arg(long, default_value = "1", value_parser = parse_seconds)]
    warmup: Duration,
    /// Percentage of reads (the rest are writes).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=100))]
    read_ratio: u32,
    /// Bytes of payload per write (rounded to a multiple of 4).
    #[arg(long, default_value_t = 128)]
    body_bytes: usize,
    /// Reads pick a line in 1..=LINES.
    #[arg(long, default_value_t = 1000)]
    lines: u64,
    /// A read: METHOD PATH; `{line}` becomes a random line number.
    #[arg(long, default_value = "GET /line/{line}")]
    read: String,
    /// A write: METHOD PATH.
    #[arg(long, default_value = "POST /insert")]
    write: String,
    /// Body of a write: `{key}` becomes a unique key, `{value}` the payload (both base64
    /// characters). Default: the payload alone.
    #[arg(long, default_value = "")]
    write_body: String,
    /// Extra header for every request, e.g. "Content-Type: application/json" (repeatable).
    #[arg(long)]
    header: Vec<String>,
    /// Give up on a response after this long (counted as an error).
    #[arg(long, default_value = "10", value_parser = parse_seconds)]
    timeout: Duration,
    /// Label for the results (e.g. the setup's name).
    #[arg(long, default_value = "")]
    label: String,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Append the results as a CSV row here (with a header if the file is new).
    #[arg(long)]
    csv: Option<PathBuf>,
    /// No live progress line.
    #[arg(long)]
    quiet: bool,
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    let number = text.trim_end_matches('s');
    number
        .parse::<f64>()
        .ok()
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .ok_or_else(|| format!("`{text}` is not a number of seconds"))
}

/// The results of a run.
#[derive(Debug, Serialize)]
struct Report {
    label: String,
    mode: &'static str,
    offered_rate: Option<f64>,
    achieved_rate: f64,
    connections: u64,
    duration_s: f64,
    read_ratio: u32,
    body_bytes: usize,
    completed: u64,
    errors: BTreeMap<String, u64>,
    latency_ms: Latency,
}

#[derive(Debug, Serialize)]
struct Latency {
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    max: f64,
    mean: f64,
}

/// What one connection measured.
struct Measured {
    histogram: Histogram<u64>,
    completed: u64,
    errors: BTreeMap<String, u64>,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let workload = Arc::new(Workload {
        read_ratio: args.read_ratio,
        read: args.read.clone(),
        write: args.write.clone(),
        write_body: args.write_body.clone(),
        headers: args.header.clone(),
        body_bytes: args.body_bytes / 4 * 4,
        lines: args.lines,
    });
    let start = Instant::now() + Duration::from_millis(100);
    let measure_from = start + args.warmup;
    let end = measure_from + args.duration;
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..args.connections)
        .map(|conn| {
            let target = args.targets[conn as usize % args.targets.len()];
            let plan = Plan {
                conn,
                target,
                // Each connection takes an equal share of the rate, staggered.
                interval: args
                    .rate
                    .map(|rate| Duration::from_secs_f64(args.connections as f64 / rate)),
                stagger: conn as f64 / args.connections as f64,
                first: start,
                measure_from,
                end,
                timeout: args.timeout,
            };
            let (workload, done, failed) = (
                Arc::clone(&workload),
                Arc::clone(&done),
                Arc::clone(&failed),
            );
            tokio::spawn(async move { connection(plan, &workload, &done, &failed).await })
        })
        .collect();
    let progress = (!args.quiet)
        .then(|| tokio::spawn(progress(start, end, Arc::clone(&done), Arc::clone(&failed))));

    let mut histogram = latency_histogram();
    let (mut completed, mut errors) = (0, BTreeMap::new());
    for task in tasks {
        let measured = task.await.expect("connection task");
        histogram
            .add(&measured.histogram)
            .expect("same histogram bounds");
        completed += measured.completed;
        for (kind, n) in measured.errors {
            *errors.entry(kind).or_default() += n;
        }
    }
    if let Some(progress) = progress {
        progress.abort();
        eprintln!();
    }
    let ms = |us: u64| us as f64 / 1000.0;
    let duration_s = args.duration.as_secs_f64();
    let report = Report {
        label: args.label.clone(),
        mode: if args.rate.is_some() {
            "open"
        } else {
            "closed"
        },
        offered_rate: args.rate,
        achieved_rate: completed as f64 / duration_s,
        connections: args.connections,
        duration_s,
        read_ratio: args.read_ratio,
        body_bytes: workload.body_bytes,
        completed,
        errors,
        latency_ms: Latency {
            p50: ms(histogram.value_at_quantile(0.5)),
            p90: ms(histogram.value_at_quantile(0.9)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p999: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
            mean: histogram.mean() / 1000.0,
        },
    };
    println!(
        "{} {}: offered {} achieved {:.0}/s, p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, max {:.3} ms, errors {:?}",
        report.label,
        report.mode,
        report
            .offered_rate
            .map_or("-".into(), |r| format!("{r:.0}/s")),
        report.achieved_rate,
        report.latency_ms.p50,
        report.latency_ms.p90,
        report.latency_ms.p99,
        report.latency_ms.max,
        report.errors
    );
    if let Err(error) = write_outputs(&args, &report) {
        eprintln!("hermes-loadgen: cannot write results: {error}");
        std::process::exit(1);
    }
}

fn write_outputs(args: &Args, report: &Report) -> std::io::Result<()> {
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(report)? + "\n")?;
    }
    if let Some(path) = &args.csv {
        let new = !path.exists();
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        if new {
            writeln!(
                file,
                "label,mode,offered_rate,achieved_rate,connections,duration_s,read_ratio,body_bytes,completed,errors,p50_ms,p90_ms,p99_ms,p999_ms,max_ms,mean_ms"
            )?;
        }
        let l = &report.latency_ms;
        writeln!(
            file,
            "{},{},{},{:.1},{},{},{},{},{},{},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3}",
            report.label,
            report.mode,
            report
                .offered_rate
                .map_or(String::new(), |r| format!("{r:.0}")),
            report.achieved_rate,
            report.connections,
            report.duration_s,
            report.read_ratio,
            report.body_bytes,
            report.completed,
            report.errors.values().sum::<u64>(),
            l.p50,
            l.p90,
            l.p99,
            l.p999,
            l.max,
            l.mean
        )?;
    }
    Ok(())
}

struct Plan {
    conn: u64,
    target: SocketAddr,
    /// Open loop: time between this connection's requests.
    interval: Option<Duration>,
    /// Fraction of an interval this connection starts after the first, to spread the load.
    stagger: f64,
    first: Instant,
    measure_from: Instant,
    end: Instant,
    timeout: Duration,
}

async fn connection(
    plan: Plan,
    workload: &Workload,
    done: &AtomicU64,
    failed: &AtomicU64,
) -> Measured {
    let mut measured = Measured {
        histogram: latency_histogram(),
        completed: 0,
        errors: BTreeMap::new(),
    };
    let mut rng = Rng::new(plan.conn + 1);
    let host = plan.target.to_string();
    let mut stream: Option<TcpStream> = None;
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut next = match plan.interval {
        Some(interval) => plan.first + interval.mul_f64(plan.stagger),
        None => plan.first,
    };
    let mut free_at = plan.first;
    for seq in 0.. {
        if plan.interval.is_some() {
            tokio::time::sleep_until(next).await;
        }
        let now = Instant::now();
        if next >= plan.end || now >= plan.end {
            break;
        }
        let busy_past_schedule = plan.interval.is_some() && free_at > next;
        let intended = if busy_past_schedule { next } else { now };
        let (request, _) = workload.request(&mut rng, plan.conn, seq, &host);
        let result = tokio::time::timeout(
            plan.timeout,
            exchange(&mut stream, plan.target, &request, &mut buf),
        )
        .await;
        let outcome = match result {
            Ok(Ok(status)) if (200..300).contains(&status) => Ok(()),
            Ok(Ok(status)) => Err(format!("status {status}")),
            Ok(Err(kind)) => Err(kind),
            Err(_) => Err("timeout".to_owned()),
        };
        free_at = Instant::now();
        if outcome.is_err() {
            stream = None;
        }
        let measured_point = intended >= plan.measure_from;
        match outcome {
            Ok(()) => {
                if measured_point {
                    let micros = intended.elapsed().as_micros().max(1) as u64;
                    measured.histogram.saturating_record(micros);
                    measured.completed += 1;
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            Err(kind) => {
                if measured_point {
                    *measured.errors.entry(kind).or_default() += 1;
                }
                failed.fetch_add(1, Ordering::Relaxed);
                if plan.interval.is_none() {
                    // Closed loop against a failing server: do not spin.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        if let Some(interval) = plan.interval {
            next += interval;
        }
    }
    measured
}

/// Sends `request` on the kept-alive connection (opening one if needed) and reads the response;
/// returns its status, or the kind of failure.
async fn exchange(
    stream: &mut Option<TcpStream>,
    target: SocketAddr,
    request: &[u8],
    buf: &mut Vec<u8>,
) -> Result<u16, String> {
    if stream.is_none() {
        let connected = TcpStream::connect(target)
            .await
            .map_err(|e| format!("connect: {}", e.kind()))?;
        connected
            .set_nodelay(true)
            .map_err(|e| e.kind().to_string())?;
        *stream = Some(connected);
    }
    let connection = stream.as_mut().expect("connected above");
    connection
        .write_all(request)
        .await
        .map_err(|e| format!("write: {}", e.kind()))?;
    buf.clear();
    loop {
        read_more(connection, buf).await?;
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        let head = match response.parse(buf) {
            Ok(httparse::Status::Complete(head)) => head,
            Ok(httparse::Status::Partial) => continue,
            Err(_) => return Err("malformed response".into()),
        };
        let status = response.code.unwrap_or(0);
        let header = |name: &str| {
            response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| h.value)
        };
        let close = header("connection").is_some_and(|v| v.eq_ignore_ascii_case(b"close"));
        let length = header("content-length")
            .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse::<usize>().ok());
        let chunked =
            header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case(b"chunked"));
        if chunked {
            while !chunked_complete(&buf[head..]) {
                read_more(connection, buf).await?;
            }
        } else if let Some(length) = length {
            while buf.len() < head + length {
                read_more(connection, buf).await?;
            }
        } else if status != 204 && status != 304 {
            // Delimited by close.
            while connection
                .read_buf(buf)
                .await
                .map_err(|e| format!("read: {}", e.kind()))?
                != 0
            {}
            *stream = None;
            return Ok(status);
        }
        if close {
            *stream = None;
        }
        return Ok(status);
    }
}

/// Reads more of the response; the server closing before its end is a failure.
async fn read_more(connection: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(), String> {
    match connection.read_buf(buf).await {
        Ok(0) => Err("closed by server".into()),
        Ok(_) => Ok(()),
        Err(e) => Err(format!("read: {}", e.kind())),
    }
}

fn chunked_complete(mut buf: &[u8]) -> bool {
    loop {
        let Ok(httparse::Status::Complete((used, size))) = httparse::parse_chunk_size(buf) else {
            return false;
        };
        buf = &buf[used..];
        if size == 0 {
            return buf.starts_with(b"\r\n") || buf.windows(4).any(|w| w == b"\r\n\r\n");
        }
        let Some(rest) = buf.get(size as usize + 2..) else {
            return false;
        };
        buf = rest;
    }
}

async fn progress(start: Instant, end: Instant, done: Arc<AtomicU64>, failed: Arc<AtomicU64>) {
    let mut last = 0;
    let mut tick = tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
    loop {
        tick.tick().await;
        let now = done.load(Ordering::Relaxed);
        let remaining = end.saturating_duration_since(Instant::now()).as_secs();
        eprint!(
            "\r  {:>4}s left  {:>8} done  {:>7}/s  {:>6} errors   ",
            remaining,
            now,
            now - last,
            failed.load(Ordering::Relaxed)
        );
        last = now;
    }
}

/// Microseconds, from 1 µs to 100 s, 3 significant digits.
fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("valid bounds")
}
