//! The Kubernetes client: kube's default stack plus one layer that applies the
//! `--kube-api-qps`/`--kube-api-burst` limit (as client-go's token bucket does), gives
//! every request but a watch a deadline, counts every request by verb, resource and
//! response code, and tells the [`ApiLoad`] how long requests waited and took.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use http::{Method, Request, Response};
use kube::client::ClientBuilder;
use tower::{BoxError, Layer, Service};

use super::load::ApiLoad;
use crate::edge::health::WatchHealth;
use crate::edge::metrics::SharedMetrics;

/// Builds the controller's client from `config`: the request limit, the request deadline
/// and request metrics; the outcome of every list and watch request goes to `watches`,
/// the waits and response times of the others to `load`.
pub fn build(
    config: kube::Config,
    limit: Limit,
    watches: WatchHealth,
    metrics: SharedMetrics,
    load: Arc<ApiLoad>,
) -> anyhow::Result<kube::Client> {
    let limiter = rate_limiter(limit.qps, limit.burst)?;
    let layer = ApiLayer {
        limiter: limiter.map(|limiter| Arc::new(FairLimiter::new(limiter))),
        gate: Arc::default(),
        timeout: limit.timeout,
        watches: Some(watches),
        metrics,
        load: Some(load),
    };
    Ok(ClientBuilder::try_from(config)?.with_layer(&layer).build())
}

/// `--kube-api-qps`, `--kube-api-burst`, `--kube-api-timeout`.
#[derive(Debug, Clone, Copy)]
pub struct Limit {
    pub qps: f32,
    pub burst: u32,
    pub timeout: Duration,
}

/// A client of its own for leader election, with no request limit: a Lease renewal must
/// never wait behind pod writes for a token, or the leader's lease runs out while it is
/// busy. Its requests share nothing with the controller's but the metrics.
pub fn build_unlimited(
    config: kube::Config,
    timeout: Duration,
    metrics: SharedMetrics,
) -> anyhow::Result<kube::Client> {
    let layer = ApiLayer {
        limiter: None,
        gate: Arc::default(),
        timeout,
        watches: None,
        metrics,
        load: None,
    };
    Ok(ClientBuilder::try_from(config)?.with_layer(&layer).build())
}

/// A token bucket refilled at `qps` per second holding at most `burst`; `qps <= 0` means
/// no limit.
fn rate_limiter(qps: f32, burst: u32) -> anyhow::Result<Option<DefaultDirectRateLimiter>> {
    if qps <= 0.0 {
        return Ok(None);
    }
    let burst = NonZeroU32::new(burst.max(1)).expect("max(1) is non-zero");
    let quota = Quota::with_period(Duration::from_secs_f64(1.0 / f64::from(qps)))
        .ok_or_else(|| anyhow::anyhow!("--kube-api-qps {qps} is too large"))?
        .allow_burst(burst);
    Ok(Some(RateLimiter::direct(quota)))
}

/// The token bucket, handing out tokens in the order requests ask for them.
///
/// governor's own wait checks, sleeps until the next token and checks again: every waiter
/// wakes for each token, one takes it, and a request arriving just then takes it before
/// all of them. Under a saturated limit some requests (and the Jobs whose syncs made them)
/// then wait far longer than the queue is long. Here one request at a time waits on
/// governor, the others queue behind it in arrival order (tokio's mutex is FIFO), as
/// client-go's limiter reserves each caller the next free slot.
struct FairLimiter {
    limiter: DefaultDirectRateLimiter,
    turn: tokio::sync::Mutex<()>,
}

impl FairLimiter {
    fn new(limiter: DefaultDirectRateLimiter) -> Self {
        FairLimiter {
            limiter,
            turn: tokio::sync::Mutex::new(()),
        }
    }

    async fn until_ready(&self) {
        let _turn = self.turn.lock().await;
        self.limiter.until_ready().await;
    }
}

/// Holds events back while other requests wait for a token.
#[derive(Default)]
struct EventGate {
    /// Requests other than events waiting for a token.
    waiting: AtomicUsize,
    /// Signalled when the last of them got its token.
    idle: tokio::sync::Notify,
}

/// Counts one waiting request until dropped, even if its future is dropped while it waits.
struct Waiting<'a>(&'a EventGate);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.0.waiting.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl EventGate {
    fn enter(&self) -> Waiting<'_> {
        self.waiting.fetch_add(1, Ordering::AcqRel);
        Waiting(self)
    }

    async fn until_idle(&self) {
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.waiting.load(Ordering::Acquire) == 0 {
                return;
            }
            idle.await;
        }
    }
}

#[derive(Clone)]
struct ApiLayer {
    limiter: Option<Arc<FairLimiter>>,
    gate: Arc<EventGate>,
    /// How long a request (from when it got its token) may wait for its response
    /// headers. A watch's headers come at once and its body is a long poll, which
    /// kube-runtime's idle timeout guards; a plain request's body follows its headers.
    timeout: Duration,
    /// Told how each list and watch request went.
    watches: Option<WatchHealth>,
    metrics: SharedMetrics,
    /// Told the token waits and response times of the requests that make Jobs progress.
    load: Option<Arc<ApiLoad>>,
}

impl<S> Layer<S> for ApiLayer {
    type Service = ApiService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ApiService {
            inner,
            layer: self.clone(),
        }
    }
}

pub struct ApiService<S> {
    inner: S,
    layer: ApiLayer,
}

/// A request that got no response within its deadline.
#[derive(Debug, thiserror::Error)]
#[error("no response from the API server within {0:?}")]
pub struct RequestTimedOut(pub Duration);

impl<S, B, RB> Service<Request<B>> for ApiService<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
    S::Error: Into<BoxError> + Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let (verb, resource) = classify(req.method(), req.uri().path(), req.uri().query());
        let watch_target = (req.method() == Method::GET)
            .then_some(self.layer.watches.clone())
            .flatten()
            .map(|w| {
                let uri = req.uri();
                (w, uri.path().to_string(), uri.query().map(str::to_string))
            });
        // The inner future does nothing until polled, so waiting for a token before polling
        // it delays the request itself.
        let response = self.inner.call(req);
        let limiter = self.layer.limiter.clone();
        let gate = self.layer.gate.clone();
        let metrics = self.layer.metrics.clone();
        let timeout = self.layer.timeout;
        let event = resource == "events";
        // Events yield their turn and watches are long polls: neither says how busy the
        // apiserver is for a write.
        let load = self
            .layer
            .load
            .clone()
            .filter(|_| !event && verb != "watch");
        Box::pin(async move {
            if let Some(limiter) = limiter {
                let asked = Instant::now();
                if event {
                    // Events report progress; under the limit they yield their turn to the
                    // pod and status writes that make it, as client-go's event broadcaster
                    // lags behind its controller's writes.
                    gate.until_idle().await;
                    limiter.until_ready().await;
                } else {
                    let _waiting = gate.enter();
                    limiter.until_ready().await;
                }
                if let Some(load) = &load {
                    load.token_waited(asked.elapsed(), Instant::now());
                }
            }
            let started = Instant::now();
            // A request into a dead connection (a blackholed network, a hung apiserver)
            // would otherwise wait forever and hold its Job's sync with it.
            let result = match tokio::time::timeout(timeout, response).await {
                Ok(result) => result.map_err(Into::into),
                Err(_) => Err(Box::new(RequestTimedOut(timeout)) as BoxError),
            };
            let code = match &result {
                Ok(r) => r.status().as_u16(),
                Err(_) => 0,
            };
            let took = started.elapsed();
            metrics.observe_request(verb, &resource, code, took);
            if let Some(load) = &load {
                load.answered(took, Instant::now());
            }
            if let Some((watches, path, query)) = watch_target {
                let outcome = match &result {
                    Ok(r) if r.status().is_success() => Ok(()),
                    Ok(r) => Err(format!("HTTP {}", r.status())),
                    Err(e) => Err(e.to_string()),
                };
                watches.observe(&path, query.as_deref(), outcome);
            }
            result
        })
    }
}

/// Maps a request to a Kubernetes verb and resource (`pods`, `jobs/status`, …).
fn classify(method: &Method, path: &str, query: Option<&str>) -> (&'static str, String) {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    // /api/v1/... or /apis/group/version/...
    let rest = match segments.first() {
        Some(&"api") => segments.get(2..).unwrap_or_default(),
        Some(&"apis") => segments.get(3..).unwrap_or_default(),
        _ => return (verb_of(method, false, query), "other".to_string()),
    };
    let rest = match rest {
        ["namespaces", _ns, tail @ ..] if !tail.is_empty() => tail,
        other => other,
    };
    let resource = match rest {
        [resource] => (*resource).to_string(),
        [resource, _name] => (*resource).to_string(),
        [resource, _name, sub, ..] => format!("{resource}/{sub}"),
        [] => "other".to_string(),
    };
    (verb_of(method, rest.len() >= 2, query), resource)
}

fn verb_of(method: &Method, named: bool, query: Option<&str>) -> &'static str {
    match *method {
        Method::GET if query.is_some_and(|q| q.split('&').any(|kv| kv == "watch=true")) => "watch",
        Method::GET if named => "get",
        Method::GET => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_the_requests_a_job_controller_makes() {
        let cases = [
            (
                Method::GET,
                "/apis/batch/v1/jobs",
                Some("watch=true&resourceVersion=1"),
                "watch",
                "jobs",
            ),
            (
                Method::GET,
                "/api/v1/pods",
                Some("labelSelector=x"),
                "list",
                "pods",
            ),
            (
                Method::POST,
                "/api/v1/namespaces/a/pods",
                None,
                "create",
                "pods",
            ),
            (
                Method::PATCH,
                "/api/v1/namespaces/a/pods/p",
                None,
                "patch",
                "pods",
            ),
            (
                Method::DELETE,
                "/api/v1/namespaces/a/pods/p",
                None,
                "delete",
                "pods",
            ),
            (
                Method::PUT,
                "/apis/batch/v1/namespaces/a/jobs/j/status",
                None,
                "update",
                "jobs/status",
            ),
            (
                Method::GET,
                "/apis/batch/v1/namespaces/a/jobs/j",
                None,
                "get",
                "jobs",
            ),
            (
                Method::POST,
                "/apis/events.k8s.io/v1/namespaces/a/events",
                None,
                "create",
                "events",
            ),
            (
                Method::GET,
                "/apis/coordination.k8s.io/v1/namespaces/s/leases/l",
                None,
                "get",
                "leases",
            ),
        ];
        for (method, path, query, verb, resource) in cases {
            assert_eq!(
                classify(&method, path, query),
                (verb, resource.to_string()),
                "{method} {path}"
            );
        }
    }

    #[tokio::test]
    async fn events_wait_until_no_other_request_waits() {
        let gate = EventGate::default();
        let waiting = gate.enter();
        let held = tokio::time::timeout(Duration::from_millis(50), gate.until_idle()).await;
        assert!(held.is_err(), "an event went ahead of a waiting write");
        drop(waiting);
        tokio::time::timeout(Duration::from_millis(50), gate.until_idle())
            .await
            .expect("released once no write waits");
    }

    /// Twelve requests wait for tokens while others keep arriving; none of the later
    /// ones may take a token before the twelve have theirs.
    #[tokio::test]
    async fn tokens_go_out_in_the_order_they_were_asked_for() {
        let limiter = rate_limiter(200.0, 1).unwrap().unwrap();
        let limiter = Arc::new(FairLimiter::new(limiter));
        limiter.until_ready().await;
        let granted = Arc::new(std::sync::Mutex::new(Vec::new()));
        let ask = |i: usize| {
            let (limiter, granted) = (limiter.clone(), granted.clone());
            tokio::spawn(async move {
                limiter.until_ready().await;
                granted.lock().unwrap().push(i);
            })
        };
        let mut waiters: Vec<_> = (0..12).map(ask).collect();
        let mut tick = tokio::time::interval(Duration::from_micros(500));
        for late in 100..220 {
            tick.tick().await;
            waiters.push(ask(late));
        }
        for waiter in waiters {
            waiter.await.unwrap();
        }
        let granted = granted.lock().unwrap();
        assert_eq!(granted[..12], (0..12).collect::<Vec<_>>(), "{granted:?}");
    }

    #[test]
    fn no_limit_when_qps_is_zero() {
        assert!(rate_limiter(0.0, 10).unwrap().is_none());
        assert!(rate_limiter(20.0, 30).unwrap().is_some());
    }
}
