//! The writes scenario: `POST /api/documents` of ~1 KB JSON documents over keep-alive
//! HTTP/1.1, every latency recorded, exact percentiles.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use serde_json::{Value, json};

use crate::round;

/// A ~1 KB JSON document with the unique `_id` `<tag>-<i>`.
pub(crate) fn document(tag: &str, i: usize) -> String {
    format!(
        r#"{{"_id":"{tag}-{i}","customer":"c-{}","total":{}.5,"currency":"EUR","items":[{{"sku":"A-1","qty":2,"price":19.9}},{{"sku":"B-7","qty":1,"price":89.7}}],"note":"{}"}}"#,
        i % 977,
        i % 1000,
        "n".repeat(820)
    )
}

/// The figures of one run.
pub(crate) struct Run {
    /// Requests sent.
    pub(crate) requests: usize,
    /// Answers other than 201 (or no answer).
    pub(crate) errors: usize,
    /// A few of the errors, for the report.
    pub(crate) error_samples: Vec<String>,
    /// Figures as JSON.
    pub(crate) json: Value,
}

/// Which request a run sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// `POST /api/documents` of a new document `<tag>-<i>` (201).
    Post,
    /// `PUT /api/documents/<tag>-<i>` replacing it (200).
    Put,
    /// `DELETE /api/documents/<tag>-<i>` (200).
    Delete,
}

/// Sends `n` writes from `concurrency` clients sharing one connection pool, and measures.
pub(crate) async fn run(
    http: &reqwest::Client,
    base: &str,
    tag: &str,
    n: usize,
    concurrency: usize,
) -> Run {
    run_op(http, base, tag, n, concurrency, Op::Post).await
}

/// Sends `n` requests of `op` on documents `<tag>-0..n` from `concurrency` clients.
pub(crate) async fn run_op(
    http: &reqwest::Client,
    base: &str,
    tag: &str,
    n: usize,
    concurrency: usize,
    op: Op,
) -> Run {
    let url = Arc::new(format!("{base}/api/documents"));
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let (http, url, next, tag) = (
            http.clone(),
            Arc::clone(&url),
            Arc::clone(&next),
            tag.to_owned(),
        );
        tasks.push(tokio::spawn(async move {
            let mut latencies_us: Vec<u64> = Vec::with_capacity(n / concurrency + 1);
            let mut errors = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let request = match op {
                    Op::Post => http.post(url.as_str()).body(document(&tag, i)),
                    Op::Put => {
                        http.put(format!("{url}/{tag}-{i}"))
                            .body(document(&tag, i).replacen(
                                "\"currency\":\"EUR\"",
                                "\"currency\":\"USD\"",
                                1,
                            ))
                    }
                    Op::Delete => http.delete(format!("{url}/{tag}-{i}")),
                };
                let expected = if op == Op::Post { 201 } else { 200 };
                let t = Instant::now();
                let outcome = request
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .send()
                    .await;
                let error = match outcome {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let body = r.bytes().await;
                        match (status, body) {
                            (s, Ok(_)) if s == expected => None,
                            (s, Ok(b)) => {
                                Some(format!("HTTP {s}: {}", String::from_utf8_lossy(&b)))
                            }
                            (s, Err(e)) => Some(format!("HTTP {s}, body unreadable: {e}")),
                        }
                    }
                    Err(e) => Some(format!("transport: {e}")),
                };
                latencies_us.push(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX));
                if let Some(e) = error {
                    errors.push(e);
                }
            }
            (latencies_us, errors)
        }));
    }
    let mut all: Vec<u64> = Vec::with_capacity(n);
    let mut errors = Vec::new();
    for t in tasks {
        match t.await {
            Ok((l, e)) => {
                all.extend(l);
                errors.extend(e);
            }
            Err(e) => errors.push(format!("client task failed: {e}")),
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let ms = |us: u64| round(us as f64 / 1000.0, 3);
    let mean_us = all.iter().sum::<u64>() as f64 / all.len().max(1) as f64;
    let error_count = errors.len();
    errors.truncate(5);
    let json = json!({
        "operation": format!("{op:?}").to_uppercase(),
        "concurrency": concurrency,
        "count": all.len(),
        "errors": error_count,
        "seconds": round(seconds, 3),
        "writes_per_sec": round(all.len() as f64 / seconds, 1),
        "latency_ms": {
            "p50": ms(percentile(&all, 50.0)),
            "p90": ms(percentile(&all, 90.0)),
            "p99": ms(percentile(&all, 99.0)),
            "p99.9": ms(percentile(&all, 99.9)),
            "max": ms(all.last().copied().unwrap_or(0)),
            "mean": round(mean_us / 1000.0, 3),
        },
    });
    Run {
        requests: n,
        errors: error_count,
        error_samples: errors,
        json,
    }
}

/// The exact `p`-th percentile of sorted values (nearest rank: the smallest value with at
/// least `p` % of the values at or below it).
pub(crate) fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let n = sorted.len();
    // Integer arithmetic on per-mille ranks avoids float rounding at exact boundaries.
    let per_mille = (p * 10.0).round() as usize;
    let rank = (n * per_mille).div_ceil(1000).clamp(1, n);
    sorted[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<u64> = (1..=1000).collect();
        assert_eq!(percentile(&v, 50.0), 500);
        assert_eq!(percentile(&v, 99.0), 990);
        assert_eq!(percentile(&v, 99.9), 999);
        assert_eq!(percentile(&v, 100.0), 1000);
        assert_eq!(percentile(&[7], 99.9), 7);
        assert_eq!(percentile(&[], 50.0), 0);
        let v: Vec<u64> = (1..=10).collect();
        assert_eq!(percentile(&v, 90.0), 9);
        assert_eq!(percentile(&v, 99.0), 10);
    }

    #[test]
    fn documents_are_about_a_kilobyte_of_valid_json() {
        let d = document("c16", 19_999);
        assert!((950..=1100).contains(&d.len()), "{}", d.len());
        let v: Value = serde_json::from_str(&d).unwrap();
        assert_eq!(v["_id"], "c16-19999");
    }
}
